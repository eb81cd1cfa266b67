// Power-of-two histograms of durations (aio-stress's view of latency):
// bucket k counts the values v with 2^(k-1) <= v < 2^k, bucket 0 the zeroes.
// The disk statistics keep one per operation; blkstack bench derives one
// from its finer histogram. Both print through format_pow2_histogram().
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace blkstack {

inline unsigned pow2_bucket(uint64_t v, unsigned buckets) {
  const unsigned k = v == 0 ? 0u : 64u - static_cast<unsigned>(__builtin_clzll(v));
  return k < buckets ? k : buckets - 1;
}

// "850ns", "1.02us", "12.5ms", "3.00s".
std::string format_duration_ns(double ns);

// The non-empty range of buckets, one per line with count, percentage and
// a bar ("< 2.05us:  1234  12.34%  ####"), or, without bars, all on one
// line ("1234 < 2.05us 17 < 4.10us ..."). Empty if every count is zero.
std::string format_pow2_histogram(std::span<const uint64_t> counts,
                                  std::string_view indent, bool bars);

}  // namespace blkstack
