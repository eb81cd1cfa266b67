// PercpuRef: a count of users that can be killed (the kernel's percpu_ref, as
// used by q_usage_counter): cheap to take and drop on many threads, and once
// killed, no new user gets in while the old ones drain.
//
// Each thread slot counts the references it took and the ones it dropped;
// the live count is the difference of the sums. Taking a reference is one
// locked increment (it pairs with kill(), see tryget_live), dropping one is
// a plain store in an exclusively owned slot.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>

#include "core/percpu.h"

namespace blkstack {

class PercpuRef {
 public:
  PercpuRef();
  ~PercpuRef();

  // Takes a reference unless the ref is killed.
  bool tryget_live();
  void put();
  // No new references after this; existing ones stay until put.
  void kill() { dead_.store(true, std::memory_order_seq_cst); }
  void resurrect() { dead_.store(false, std::memory_order_seq_cst); }
  bool dead() const { return dead_.load(std::memory_order_acquire); }
  // References taken and not yet put.
  uint64_t count() const;
  // Blocks until count() is zero (not from a submit path).
  void wait_for_zero(std::string_view what) const;

 private:
  struct alignas(kCacheLine) Slot {
    std::atomic<uint64_t> taken{0};
    std::atomic<uint64_t> dropped{0};
  };
  void add_dropped(Slot& s, SlotRef ref);

  std::unique_ptr<Slot[]> slots_;
  std::atomic<bool> dead_{false};
};

}  // namespace blkstack
