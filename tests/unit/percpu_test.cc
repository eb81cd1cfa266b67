// Per-thread slots (core/percpu.h): a slot is one thread's alone while it
// holds it, including while the thread exits.
#include "core/percpu.h"

#include <gtest/gtest.h>

#include <thread>

namespace blkstack {
namespace {

// Made before the thread's first this_slot(), so destroyed after the slot's
// owner: it looks at the slot as a thread-local object of an application
// that does I/O in its destructor would.
struct LooksAtSlotOnExit {
  SlotRef* out = nullptr;
  ~LooksAtSlotOnExit() {
    if (out) *out = this_slot();
  }
};
thread_local LooksAtSlotOnExit looks_on_exit;

TEST(Percpu, AnExitingThreadNoLongerUsesTheSlotItGaveBack) {
  SlotRef during{};
  SlotRef on_exit{};
  std::thread t([&] {
    looks_on_exit.out = &on_exit;  // constructed here, before the slot is taken
    during = this_slot();
  });
  t.join();
  ASSERT_TRUE(during.exclusive);
  // The slot went back when the thread's slot owner was destroyed; another
  // thread may own it already, so this one must not write it as its own.
  EXPECT_FALSE(on_exit.exclusive && on_exit.index == during.index)
      << "slot " << during.index << " still used as exclusive after it was given back";
}

}  // namespace
}  // namespace blkstack
