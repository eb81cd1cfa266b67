// Latency statistics: min/max/mean/stdev of a stream of values, and fio's
// log-linear histogram for percentiles, with the aio-stress style
// power-of-two view and fio's latency distribution derived from it.
//
// All values are nanoseconds. Both types are per thread and lock-free: a
// worker adds to its own, and the reports merge them afterwards.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

namespace blkstack::bench {

// min, max, mean and standard deviation (n-1, as fio reports it), exactly:
// the sum of squares is kept in 128 bits.
class LatencyStat {
 public:
  void add(uint64_t v) {
    ++n_;
    if (v < min_) min_ = v;
    if (v > max_) max_ = v;
    sum_ += v;
    sumsq_ += static_cast<unsigned __int128>(v) * v;
  }
  void merge(const LatencyStat& o);

  uint64_t count() const { return n_; }
  uint64_t min() const { return n_ ? min_ : 0; }
  uint64_t max() const { return max_; }
  uint64_t sum() const { return sum_; }
  double mean() const;
  double stdev() const;

 private:
  uint64_t n_ = 0;
  uint64_t min_ = UINT64_MAX;
  uint64_t max_ = 0;
  uint64_t sum_ = 0;
  unsigned __int128 sumsq_ = 0;
};

// fio's latency histogram (stat.h: FIO_IO_U_PLAT_BITS 6, 29 groups): values
// below 128 ns have a bucket each; above, every power-of-two range
// [2^m, 2^(m+1)) is cut into 64 equal buckets, so a bucket is at most 1/64
// of its value wide. Values from 2^34 ns (17 s) on share the last bucket.
class LatencyHistogram {
 public:
  static constexpr unsigned kBits = 6;
  static constexpr unsigned kPerGroup = 1u << kBits;  // 64
  static constexpr unsigned kGroups = 29;
  static constexpr unsigned kBuckets = kGroups * kPerGroup;  // 1856

  static unsigned index(uint64_t ns) {
    if (ns < 2 * kPerGroup) return static_cast<unsigned>(ns);
    const unsigned msb = 63u - static_cast<unsigned>(__builtin_clzll(ns));
    const unsigned error_bits = msb - kBits;
    const unsigned idx = ((error_bits + 1) << kBits) +
                         static_cast<unsigned>((ns >> error_bits) & (kPerGroup - 1));
    return idx < kBuckets ? idx : kBuckets - 1;
  }
  // The smallest value that lands in bucket `idx`, and one past the largest.
  static uint64_t bucket_low(unsigned idx);
  static uint64_t bucket_high(unsigned idx);
  // The value fio reports for a bucket: its midpoint (exact below 128 ns).
  static uint64_t bucket_value(unsigned idx);

  void add(uint64_t ns) { ++counts_[index(ns)]; }
  void merge(const LatencyHistogram& o);
  uint64_t total() const;
  uint64_t count(unsigned idx) const { return counts_[idx]; }

  // fio's percentile: the value of the first bucket at which the running
  // count reaches pct% of the total, clamped to [lo, hi] (pass the exact
  // min and max when known). 0 for an empty histogram.
  uint64_t percentile(double pct, uint64_t lo = 0, uint64_t hi = UINT64_MAX) const;
  std::vector<uint64_t> percentiles(std::span<const double> pcts, uint64_t lo = 0,
                                    uint64_t hi = UINT64_MAX) const;

  // The aio-stress style view: counts[k] is the number of values v with
  // 2^(k-1) <= v < 2^k (counts[0]: v == 0). Exact: every power of two is a
  // bucket boundary.
  std::array<uint64_t, 64> pow2_counts() const;

  // How many values are below `ns`: exact when `ns` is a bucket boundary
  // (any value below 128, any power of two), otherwise buckets are counted
  // by their midpoint.
  uint64_t count_below(uint64_t ns) const;

 private:
  std::array<uint64_t, kBuckets> counts_{};
};

// fio's default percentile list: 1, 5, 10, 20, ... 99.95, 99.99.
std::span<const double> default_percentiles();

// fio's latency distribution ("lat (usec) : 250=1.2%, 500=..."): the upper
// bounds, in ns, of its buckets (2 ns ... 2000 ms; the last is ">=2000 ms").
std::span<const uint64_t> fio_lat_bounds_ns();

}  // namespace blkstack::bench
