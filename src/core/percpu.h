// Per-thread slots: the user-space stand-in for per-CPU data.
//
// Each thread gets a slot index on first use (round robin), so counters that
// every I/O touches live in a slot of their own and threads do not bounce one
// cache line between cores. Readers sum all slots.
#pragma once

#include <atomic>
#include <cstddef>

namespace blkstack {

inline constexpr unsigned kPercpuSlots = 16;  // power of two
inline constexpr size_t kCacheLine = 64;

inline unsigned this_slot() {
  static std::atomic<unsigned> next{0};
  thread_local unsigned slot = next.fetch_add(1, std::memory_order_relaxed) % kPercpuSlots;
  return slot;
}

}  // namespace blkstack
