#include "workload.h"

#include <algorithm>
#include <cmath>

namespace blkstack::bench {
namespace {

uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

Rng::Rng(uint64_t seed) {
  uint64_t st = seed;
  for (uint64_t& s : s_) s = splitmix(st);
}

Permutation::Permutation(uint64_t n, uint64_t key) : n_(n == 0 ? 1 : n) {
  unsigned bits = 2;
  while (bits < 64 && (uint64_t{1} << bits) < n_) bits += 2;
  half_bits_ = bits / 2;
  mask_ = (uint64_t{1} << half_bits_) - 1;
  uint64_t st = key;
  for (uint64_t& k : keys_) k = splitmix(st);
}

uint64_t Permutation::encrypt(uint64_t x) const {
  uint64_t l = (x >> half_bits_) & mask_, r = x & mask_;
  for (uint64_t k : keys_) {
    // A cheap round function is enough to scatter offsets: a multiply
    // and a shift (the rounds and keys do the rest).
    uint64_t f = (r ^ k) * 0xbf58476d1ce4e5b9ull;
    f = (f ^ (f >> 29)) & mask_;
    const uint64_t nl = r;
    r = l ^ f;
    l = nl;
  }
  return (l << half_bits_) | r;
}

double Zipf::zeta(uint64_t n, double theta) {
  constexpr uint64_t kExact = 10'000'000;  // fio's ZIPF_MAX_GEN
  const uint64_t m = std::min(n, kExact);
  double z = 0;
  for (uint64_t i = m; i >= 1; --i)
    z += std::pow(static_cast<double>(i), -theta);  // small first
  if (n > m) {
    // The tail sum_{m+1..n} i^-theta by Euler-Maclaurin: the integral plus
    // the end corrections.
    const double a = static_cast<double>(m), b = static_cast<double>(n);
    const double integral =
        (std::pow(b, 1 - theta) - std::pow(a, 1 - theta)) / (1 - theta);
    z += integral + (std::pow(b, -theta) - std::pow(a, -theta)) / 2 +
         theta / 12 * (std::pow(a, -theta - 1) - std::pow(b, -theta - 1));
  }
  return z;
}

Zipf::Zipf(uint64_t n, double theta) : n_(n == 0 ? 1 : n), theta_(theta) {
  zetan_ = zeta(n_, theta_);
  const double zeta2 = 1.0 + std::pow(0.5, theta_);
  half_pow_theta_ = std::pow(0.5, theta_);
  alpha_ = 1.0 / (1.0 - theta_);
  eta_ = (1.0 - std::pow(2.0 / static_cast<double>(n_), 1.0 - theta_)) /
         (1.0 - zeta2 / zetan_);
}

uint64_t Zipf::next(Rng& rng) const {
  // fio's zipf_next (lib/zipf.c), after Gray et al., "Quickly generating
  // billion-record synthetic databases".
  const double u = rng.uniform();
  const double uz = u * zetan_;
  uint64_t val;
  if (uz < 1.0) {
    val = 1;
  } else if (uz < 1.0 + half_pow_theta_) {
    val = 2;
  } else {
    const double v = static_cast<double>(n_) * std::pow(eta_ * u - eta_ + 1.0, alpha_);
    val = 1 + (v >= static_cast<double>(n_) ? n_ : static_cast<uint64_t>(v));
  }
  return std::min(val - 1, n_ - 1);
}

Pareto::Pareto(uint64_t n, double h)
    : n_(n == 0 ? 1 : n), pow_(std::log(h) / std::log(1.0 - h)) {}

uint64_t Pareto::next(Rng& rng) const {
  // fio's pareto_next: rank = (n - 1) * u^(log h / log(1 - h)).
  const double v = static_cast<double>(n_ - 1) * std::pow(rng.uniform(), pow_);
  return std::min(static_cast<uint64_t>(v), n_ - 1);
}

OffsetGenerator::OffsetGenerator(const JobOptions& job, uint64_t start, uint64_t len,
                                 uint32_t align, uint64_t seed)
    : random_(rw_random(job.rw)),
      dist_(job.distribution),
      randommap_(!job.norandommap),
      start_(start),
      len_(len),
      align_(align),
      blocks_(std::max<uint64_t>(1, len / align)),
      rng_(seed),
      key_(seed ^ 0x5bd1e9955bd1e995ull) {
  perm_ = Permutation(blocks_, key_);
  if (dist_ == Distribution::kZipf) zipf_ = Zipf(blocks_, job.dist_param);
  if (dist_ == Distribution::kPareto) pareto_ = Pareto(blocks_, job.dist_param);
}

uint64_t OffsetGenerator::next_block() {
  switch (dist_) {
    case Distribution::kZipf:
      return perm_(zipf_.next(rng_));
    case Distribution::kPareto:
      return perm_(pareto_.next(rng_));
    case Distribution::kRandom:
      break;
  }
  if (!randommap_) return rng_.below(blocks_);
  // Every block once per pass, a new order each pass.
  if (pass_index_ == blocks_) {
    pass_index_ = 0;
    ++pass_;
    perm_ = Permutation(blocks_, key_ + pass_);
  }
  return perm_(pass_index_++);
}

uint64_t OffsetGenerator::next(Dir dir, uint32_t len) {
  if (!random_) {
    uint64_t& pos = seq_[dir];
    if (pos + len > len_) pos = 0;  // wrap
    const uint64_t off = start_ + pos;
    pos += len;
    return off;
  }
  uint64_t rel = next_block() * align_;
  if (rel + len > len_) rel = (len_ - len) / align_ * align_;  // a large I/O near the end
  return start_ + rel;
}

SizePicker::SizePicker(const JobOptions& job, uint64_t seed)
    : fixed_dir_(!rw_writes(job.rw)  ? kDirRead
                 : !rw_reads(job.rw) ? kDirWrite
                                     : -1),
      rwmixread_(job.rwmixread),
      rng_(seed ^ 0x2545f4914f6cdd1dull) {
  for (int d = 0; d < kDirs; ++d) {
    if (job.bssplit[d].empty()) {
      table_[d].push_back({job.bs[d], 100});
      continue;
    }
    unsigned cum = 0;
    for (const BsSplit& s : job.bssplit[d]) {
      cum += s.percent;
      table_[d].push_back({s.bs, cum});
    }
  }
}

}  // namespace blkstack::bench
