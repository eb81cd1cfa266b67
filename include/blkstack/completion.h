// Completion: a one-shot event one thread waits for and another signals (the
// kernel's struct completion), on a futex.
//
// complete() may run before wait(); then wait() returns at once without a
// system call, which is what makes synchronous I/O on inline-completing
// devices cheap. wait() checks that the thread is not inside a submit path
// (see debug/submit_context.h).
#pragma once

#include <atomic>
#include <cstdint>
#include <string_view>

namespace blkstack {

class Completion {
 public:
  void complete();
  // Blocks until complete(); `what` names the wait in diagnostics.
  void wait(std::string_view what = "I/O completion");
  bool done() const { return state_.load(std::memory_order_acquire) == kDone; }
  void reinit() { state_.store(kPending, std::memory_order_relaxed); }

 private:
  static constexpr uint32_t kPending = 0, kDone = 1, kSleeping = 2;
  std::atomic<uint32_t> state_{kPending};
};

}  // namespace blkstack
