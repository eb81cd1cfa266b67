#include "blkstack/completion.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/wait.h"

namespace blkstack {
namespace {
long futex(std::atomic<uint32_t>* addr, int op, uint32_t val) {
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), op | FUTEX_PRIVATE_FLAG,
                 val, nullptr, nullptr, 0);
}
}  // namespace

void Completion::complete() {
  // A wake on an address whose waiter already returned is harmless: futex
  // users tolerate spurious wake-ups, so the waiter may free us right away.
  if (state_.exchange(kDone, std::memory_order_acq_rel) == kSleeping) {
    futex(&state_, FUTEX_WAKE, 1);
  }
}

void Completion::wait(std::string_view what) {
  uint32_t s = kPending;
  if (state_.load(std::memory_order_acquire) == kDone) return;
  prepare_to_wait(what);
  if (!state_.compare_exchange_strong(s, kSleeping, std::memory_order_acq_rel)) return;
  while (state_.load(std::memory_order_acquire) == kSleeping) {
    futex(&state_, FUTEX_WAIT, kSleeping);
  }
}

}  // namespace blkstack
