// Monotonic time in nanoseconds, the one clock the block core stamps I/O with.
#pragma once

#include <cstdint>
#include <ctime>

namespace blkstack {

inline uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace blkstack
