// The workload generator: where each I/O goes, how large it is, and whether
// it reads or writes — fio's semantics, computed without allocation or
// locks (one generator per thread).
//
//   sequential   each direction walks the region from its start, wrapping
//   random       uniform; by default every block once per pass (fio's random
//                map), as a keyed permutation instead of a bitmap; with
//                norandommap, independent draws
//   zipf:THETA   fio's zipf (Gray et al.): rank r is drawn with probability
//                ~ 1/r^THETA; ranks are scattered over the region by the
//                same permutation, so hot blocks are not all at the front
//   pareto:H     fio's pareto: rank = (n-1) * u^(log H / log(1-H))
#pragma once

#include <cstdint>
#include <vector>

#include "job_options.h"

namespace blkstack::bench {

// xoshiro256**, seeded through splitmix64.
class Rng {
 public:
  explicit Rng(uint64_t seed = 1);
  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, n) (Lemire's multiply-shift; n > 0).
  uint64_t below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
  }
  // Uniform in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

// A keyed bijection of [0, n): a 4-round Feistel network on the smallest
// even number of bits that covers n, with cycle walking.
class Permutation {
 public:
  Permutation() = default;
  Permutation(uint64_t n, uint64_t key);
  uint64_t operator()(uint64_t i) const {
    uint64_t x = encrypt(i);
    while (x >= n_) x = encrypt(x);
    return x;
  }
  uint64_t size() const { return n_; }

 private:
  uint64_t encrypt(uint64_t x) const;
  uint64_t n_ = 1;
  unsigned half_bits_ = 1;
  uint64_t mask_ = 1;
  uint64_t keys_[4] = {};
};

// Ranks in [0, n), 0 the most popular.
class Zipf {
 public:
  Zipf() = default;
  Zipf(uint64_t n, double theta);
  uint64_t next(Rng& rng) const;
  // sum_{i=1..n} 1/i^theta (exact to 10M terms, Euler-Maclaurin beyond).
  static double zeta(uint64_t n, double theta);
  double zetan() const { return zetan_; }

 private:
  uint64_t n_ = 1;
  double theta_ = 0, zetan_ = 1, alpha_ = 0, eta_ = 0, half_pow_theta_ = 0;
};

class Pareto {
 public:
  Pareto() = default;
  Pareto(uint64_t n, double h);
  uint64_t next(Rng& rng) const;

 private:
  uint64_t n_ = 1;
  double pow_ = 1;
};

// Offsets for one thread over its region [start, start + len).
class OffsetGenerator {
 public:
  // `align`: offsets are multiples of it from `start` (the smallest block
  // size); `len` must be at least the largest block size.
  OffsetGenerator(const JobOptions& job, uint64_t start, uint64_t len, uint32_t align,
                  uint64_t seed);
  uint64_t next(Dir dir, uint32_t len);
  // The block (in units of `align`) the next random draw lands on; for tests.
  uint64_t next_block();
  uint64_t blocks() const { return blocks_; }

 private:
  bool random_;
  Distribution dist_;
  bool randommap_;
  uint64_t start_, len_;
  uint32_t align_;
  uint64_t blocks_;
  uint64_t seq_[kDirs] = {0, 0};
  Rng rng_;
  Permutation perm_;
  uint64_t pass_index_ = 0, pass_ = 0;
  uint64_t key_;
  Zipf zipf_;
  Pareto pareto_;
};

// Block sizes (bs or bssplit) and the read/write choice of mixed jobs.
class SizePicker {
 public:
  SizePicker(const JobOptions& job, uint64_t seed);
  uint32_t next(Dir dir) {
    const auto& t = table_[dir];
    if (t.size() == 1) return t[0].bs;
    const unsigned r = static_cast<unsigned>(rng_.below(100));
    for (const BsSplit& s : t) {
      if (r < s.percent) return s.bs;  // cumulative percentages
    }
    return t.back().bs;
  }
  Dir next_dir() {
    if (fixed_dir_ >= 0) return static_cast<Dir>(fixed_dir_);
    return rng_.below(100) < rwmixread_ ? kDirRead : kDirWrite;
  }

 private:
  std::vector<BsSplit> table_[kDirs];
  int fixed_dir_;
  unsigned rwmixread_;
  Rng rng_;
};

}  // namespace blkstack::bench
