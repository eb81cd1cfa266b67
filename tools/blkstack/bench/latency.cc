#include "latency.h"

#include <algorithm>
#include <cmath>

namespace blkstack::bench {

void LatencyStat::merge(const LatencyStat& o) {
  if (o.n_ == 0) return;
  n_ += o.n_;
  min_ = std::min(min_, o.min_);
  max_ = std::max(max_, o.max_);
  sum_ += o.sum_;
  sumsq_ += o.sumsq_;
}

double LatencyStat::mean() const {
  return n_ ? static_cast<double>(sum_) / static_cast<double>(n_) : 0.0;
}

double LatencyStat::stdev() const {
  if (n_ < 2) return 0.0;
  // n * sumsq - sum^2 exactly, then scaled: var = that / (n (n-1)).
  const unsigned __int128 s = sum_;
  const unsigned __int128 nss = sumsq_ * n_;
  const unsigned __int128 s2 = s * s;
  if (nss <= s2) return 0.0;
  const long double num = static_cast<long double>(nss - s2);
  const long double n = static_cast<long double>(n_);
  return static_cast<double>(std::sqrt(num / (n * (n - 1))));
}

uint64_t LatencyHistogram::bucket_low(unsigned idx) {
  if (idx < 2 * kPerGroup) return idx;
  const unsigned error_bits = (idx >> kBits) - 1;
  const uint64_t k = idx & (kPerGroup - 1);
  return (uint64_t{kPerGroup} + k) << error_bits;
}

uint64_t LatencyHistogram::bucket_high(unsigned idx) {
  if (idx < 2 * kPerGroup) return idx + 1;
  const unsigned error_bits = (idx >> kBits) - 1;
  return bucket_low(idx) + (uint64_t{1} << error_bits);
}

uint64_t LatencyHistogram::bucket_value(unsigned idx) {
  if (idx < 2 * kPerGroup) return idx;
  // fio's plat_idx_to_val: base + (k + 0.5) * width.
  const unsigned error_bits = (idx >> kBits) - 1;
  return bucket_low(idx) + ((uint64_t{1} << error_bits) >> 1);
}

void LatencyHistogram::merge(const LatencyHistogram& o) {
  for (unsigned i = 0; i < kBuckets; ++i) counts_[i] += o.counts_[i];
}

uint64_t LatencyHistogram::total() const {
  uint64_t t = 0;
  for (uint64_t c : counts_) t += c;
  return t;
}

uint64_t LatencyHistogram::percentile(double pct, uint64_t lo, uint64_t hi) const {
  const double p = pct;
  std::vector<uint64_t> v = percentiles({&p, 1}, lo, hi);
  return v[0];
}

std::vector<uint64_t> LatencyHistogram::percentiles(std::span<const double> pcts,
                                                    uint64_t lo, uint64_t hi) const {
  std::vector<uint64_t> out(pcts.size(), 0);
  const uint64_t n = total();
  if (n == 0) return out;
  // Percentiles in increasing order, answered in one pass (calc_clat_percentiles).
  std::vector<size_t> order(pcts.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return pcts[a] < pcts[b]; });
  size_t j = 0;
  uint64_t sum = 0;
  for (unsigned i = 0; i < kBuckets && j < order.size(); ++i) {
    sum += counts_[i];
    // sum >= pct% of n, with a little slack so that 99.9% of 10000 is 9990
    // despite 99.9 having no exact binary form.
    while (j < order.size() && static_cast<double>(sum) * 100.0 >=
                                   pcts[order[j]] * static_cast<double>(n) - 1e-6) {
      out[order[j]] = std::clamp(bucket_value(i), lo, std::max(lo, hi));
      ++j;
    }
  }
  // Only reachable for percentiles above 100.
  for (; j < order.size(); ++j)
    out[order[j]] = std::clamp(bucket_value(kBuckets - 1), lo, std::max(lo, hi));
  return out;
}

std::array<uint64_t, 64> LatencyHistogram::pow2_counts() const {
  std::array<uint64_t, 64> out{};
  for (unsigned i = 0; i < kBuckets; ++i) {
    if (counts_[i] == 0) continue;
    const uint64_t low = bucket_low(i);
    const unsigned k = low == 0 ? 0 : 64u - static_cast<unsigned>(__builtin_clzll(low));
    out[k] += counts_[i];
  }
  return out;
}

uint64_t LatencyHistogram::count_below(uint64_t ns) const {
  uint64_t c = 0;
  for (unsigned i = 0; i < kBuckets; ++i) {
    if (bucket_high(i) <= ns) {
      c += counts_[i];
    } else if (bucket_low(i) < ns) {  // straddles: go by the midpoint
      if (bucket_value(i) < ns) c += counts_[i];
      break;
    } else {
      break;
    }
  }
  return c;
}

std::span<const double> default_percentiles() {
  static constexpr double kList[] = {1.0,  5.0,  10.0, 20.0,  30.0, 40.0,
                                     50.0, 60.0, 70.0, 80.0,  90.0, 95.0,
                                     99.0, 99.5, 99.9, 99.95, 99.99};
  return kList;
}

std::span<const uint64_t> fio_lat_bounds_ns() {
  static constexpr uint64_t kNs = 1, kUs = 1000, kMs = 1000 * 1000;
  static constexpr uint64_t kBounds[] = {
      2 * kNs,   4 * kNs,    10 * kNs,   20 * kNs,  50 * kNs,  100 * kNs,  250 * kNs,
      500 * kNs, 750 * kNs,  1000 * kNs, 2 * kUs,   4 * kUs,   10 * kUs,   20 * kUs,
      50 * kUs,  100 * kUs,  250 * kUs,  500 * kUs, 750 * kUs, 1000 * kUs, 2 * kMs,
      4 * kMs,   10 * kMs,   20 * kMs,   50 * kMs,  100 * kMs, 250 * kMs,  500 * kMs,
      750 * kMs, 1000 * kMs, 2000 * kMs};
  return kBounds;
}

}  // namespace blkstack::bench
