// Per-thread slots: the user-space stand-in for per-CPU data.
//
// Counters that every I/O touches live in one slot per thread, so threads do
// not bounce a cache line between cores, and a slot owned by one thread is
// updated with a plain load and store instead of a locked instruction (like
// this_cpu_add with preemption off). The first kPercpuSlots live threads each
// own a slot; a slot is handed back when its thread exits (what that thread
// still does while it exits goes to the shared slot). Any further
// threads share the last slot, kSharedSlot, and update it atomically.
// Readers sum all slots.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace blkstack {

inline constexpr unsigned kPercpuSlots = 16;
inline constexpr unsigned kSharedSlot = kPercpuSlots;  // index of the shared slot
inline constexpr unsigned kSlotCount = kPercpuSlots + 1;
inline constexpr size_t kCacheLine = 64;

struct SlotRef {
  unsigned index;
  bool exclusive;  // only this thread writes the slot
};

namespace percpu_internal {
SlotRef acquire_slot();
// Constant-initialised, so reading it is one thread-pointer-relative load
// (a thread_local with a dynamic initialiser would check a guard first).
inline constinit thread_local SlotRef tls_slot{~0u, false};
}  // namespace percpu_internal

// The calling thread's slot.
inline SlotRef this_slot() {
  SlotRef s = percpu_internal::tls_slot;
  if (s.index == ~0u) [[unlikely]] {
    s = percpu_internal::acquire_slot();
    percpu_internal::tls_slot = s;
  }
  return s;
}

// Adds to a counter of the calling thread's slot.
inline void slot_add(std::atomic<uint64_t>& counter, uint64_t v, SlotRef slot) {
  if (slot.exclusive) {
    counter.store(counter.load(std::memory_order_relaxed) + v, std::memory_order_relaxed);
  } else {
    counter.fetch_add(v, std::memory_order_relaxed);
  }
}

}  // namespace blkstack
