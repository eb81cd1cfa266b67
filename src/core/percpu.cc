#include "core/percpu.h"

#include <mutex>

namespace blkstack::percpu_internal {
namespace {

std::mutex slots_mu;
bool slot_taken[kPercpuSlots];

// Gives the slot back when its thread exits.
struct SlotOwner {
  unsigned index = kSharedSlot;
  ~SlotOwner() {
    if (index == kSharedSlot) return;
    // Thread-local objects destroyed after this one may still do I/O: from
    // now on they share, or two threads would write one slot as their own
    // (a lost count, or one clone of a per-thread cache taken twice).
    tls_slot = SlotRef{kSharedSlot, false};
    std::lock_guard lock(slots_mu);
    slot_taken[index] = false;
  }
};

}  // namespace

SlotRef acquire_slot() {
  thread_local SlotOwner owner;
  std::lock_guard lock(slots_mu);
  for (unsigned i = 0; i < kPercpuSlots; ++i) {
    if (!slot_taken[i]) {
      slot_taken[i] = true;
      owner.index = i;
      return {i, true};
    }
  }
  return {kSharedSlot, false};
}

}  // namespace blkstack::percpu_internal
