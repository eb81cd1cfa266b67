// Detects the deadlock of seed 001: a thread that waits for I/O while it is
// inside a device's submit path (Target::map, Driver::submit/queue_rq).
//
// Bios submitted from inside a submit path are only queued on the thread's
// bio list and are dispatched after the current submit returns (that is what
// keeps stacking iterative). A submit path that then waits for them waits
// forever. Every blocking wait in blkstack (synchronous I/O, mempool waits,
// IoContext::get_events) calls check_may_wait() first, which aborts with a
// message naming the device instead of hanging. The check costs one
// thread-local load, so it is always on.
#pragma once

#include <string_view>

namespace blkstack::debug {

// RAII marker: the calling thread is inside `device`'s submit path.
class SubmitScope {
 public:
  explicit SubmitScope(const char* device);
  ~SubmitScope();
  SubmitScope(const SubmitScope&) = delete;
  SubmitScope& operator=(const SubmitScope&) = delete;

 private:
  const char* saved_;
};

// The device whose submit path the calling thread is in, or nullptr.
const char* current_submit_device();

// Aborts with a diagnostic if the calling thread is inside a submit path.
// `what` names the wait ("synchronous read", "mempool bio-0").
void check_may_wait(std::string_view what);

// Prints "blkstack: fatal: <message>" to stderr and aborts.
[[noreturn]] void fatal(std::string_view message);

}  // namespace blkstack::debug
