// Hold points: places inside a scheduler where a test may run code of its
// own, to put the steps of a race in the one order that shows it (see
// tests/unit/mq_deadline_test.cc). Each point is off (nullptr) outside
// such a test; it costs one relaxed load and a branch, and only on paths
// that are not the per-I/O hot path.
#pragma once

#include <atomic>

namespace blkstack::sched_hold {

using Fn = void (*)();

// mq-deadline's dispatch() found nothing to send while requests wait (a
// lower class held back for a higher one in the driver), before it marks
// the queue as held back for a completion to run again.
inline std::atomic<Fn> deadline_held_back{nullptr};

inline void at(const std::atomic<Fn>& point) {
  if (Fn f = point.load(std::memory_order_relaxed)) [[unlikely]]
    f();
}

}  // namespace blkstack::sched_hold
