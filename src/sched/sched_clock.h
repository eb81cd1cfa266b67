// The clock the built-in schedulers read (FIFO deadlines, priority aging,
// latency windows): now_ns(), unless a test has put a clock of its own in,
// so that expiry and timer rules can be driven step by step. Costs one
// relaxed load and a branch that is always taken the same way.
#pragma once

#include <atomic>
#include <cstdint>

#include "core/clock.h"

namespace blkstack::sched_clock {

using Fn = uint64_t (*)();
// Tests only: set before the scheduler is made, reset after it is gone.
inline std::atomic<Fn> test_clock{nullptr};

inline uint64_t now() {
  if (Fn f = test_clock.load(std::memory_order_relaxed)) [[unlikely]]
    return f();
  return now_ns();
}

}  // namespace blkstack::sched_clock
