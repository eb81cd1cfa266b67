#include "core/percpu_ref.h"

#include <chrono>
#include <string>
#include <thread>

#include "core/wait.h"

namespace blkstack {

PercpuRef::PercpuRef() : slots_(new Slot[kSlotCount]) {}
PercpuRef::~PercpuRef() = default;

void PercpuRef::add_dropped(Slot& s, SlotRef ref) {
  // Release: whoever sees the drop also sees what the user did before it.
  if (ref.exclusive) {
    s.dropped.store(s.dropped.load(std::memory_order_relaxed) + 1,
                    std::memory_order_release);
  } else {
    s.dropped.fetch_add(1, std::memory_order_release);
  }
}

bool PercpuRef::tryget_live() {
  // Once the kill is visible, refuse without touching the count: a stream
  // of refused callers must not keep wait_for_zero() from seeing zero.
  if (dead_.load(std::memory_order_acquire)) [[unlikely]]
    return false;
  const SlotRef ref = this_slot();
  Slot& s = slots_[ref.index];
  // Dekker with kill() + count(): either the killer's sum sees this
  // increment, or this load sees the kill. Both are sequentially consistent.
  s.taken.fetch_add(1, std::memory_order_seq_cst);
  if (dead_.load(std::memory_order_seq_cst)) [[unlikely]] {
    add_dropped(s, ref);
    return false;
  }
  return true;
}

void PercpuRef::put() {
  const SlotRef ref = this_slot();
  add_dropped(slots_[ref.index], ref);
}

uint64_t PercpuRef::count() const {
  // Dropped first: a reference counted there was taken before, so the
  // difference cannot go negative while both move.
  uint64_t dropped = 0, taken = 0;
  for (unsigned i = 0; i < kSlotCount; ++i)
    dropped += slots_[i].dropped.load(std::memory_order_acquire);
  for (unsigned i = 0; i < kSlotCount; ++i)
    taken += slots_[i].taken.load(std::memory_order_seq_cst);
  return taken - dropped;
}

void PercpuRef::wait_for_zero(std::string_view what) const {
  if (count() == 0) return;
  prepare_to_wait(what);
  // Rare and possibly long (slow devices): poll rather than make every put
  // check for a waiter.
  auto delay = std::chrono::microseconds(10);
  while (count() != 0) {
    std::this_thread::sleep_for(delay);
    if (delay < std::chrono::milliseconds(2)) delay *= 2;
  }
}

}  // namespace blkstack
