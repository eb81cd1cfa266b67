// Monotonic time in nanoseconds, the one clock the block core stamps I/O with.
//
// Every accounted I/O reads the clock twice, so it must be cheap. On x86 with
// an invariant TSC (constant_tsc and nonstop_tsc) the clock is the TSC scaled
// to nanoseconds, calibrated once against CLOCK_MONOTONIC: about half the
// cost of clock_gettime() through the vDSO on the machines measured here.
// Elsewhere it is CLOCK_MONOTONIC. Values are comparable only with each other.
#pragma once

#include <cstdint>
#include <ctime>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

namespace blkstack {

namespace clock_internal {
struct TscScale {
  bool usable;
  uint64_t tsc0;
  uint64_t ns0;
  uint64_t mult;  // ns per tick, 32.32 fixed point
};
const TscScale& tsc_scale();
inline uint64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u +
         static_cast<uint64_t>(ts.tv_nsec);
}
}  // namespace clock_internal

inline uint64_t now_ns() {
#if defined(__x86_64__)
  const clock_internal::TscScale& s = clock_internal::tsc_scale();
  if (s.usable) [[likely]] {
    unsigned __int128 ticks = __rdtsc() - s.tsc0;
    return s.ns0 + static_cast<uint64_t>((ticks * s.mult) >> 32);
  }
#endif
  return clock_internal::monotonic_ns();
}

}  // namespace blkstack
