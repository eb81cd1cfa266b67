#include "blkstack/debug/submit_context.h"

#include <cstdio>
#include <cstdlib>
#include <string>

namespace blkstack::debug {
namespace {
thread_local const char* tls_submit_device = nullptr;
}  // namespace

SubmitScope::SubmitScope(const char* device) : saved_(tls_submit_device) {
  tls_submit_device = device;
}
SubmitScope::~SubmitScope() { tls_submit_device = saved_; }

const char* current_submit_device() { return tls_submit_device; }

void fatal(std::string_view message) {
  std::fprintf(stderr, "blkstack: fatal: %.*s\n", static_cast<int>(message.size()),
               message.data());
  std::fflush(stderr);
  std::abort();
}

void check_may_wait(std::string_view what) {
  const char* dev = tls_submit_device;
  if (dev == nullptr) [[likely]]
    return;
  std::string msg = "thread waits (";
  msg += what;
  msg += ") inside the submit path of device '";
  msg += dev;
  msg +=
      "'; bios submitted from a submit path only run after it returns, so this "
      "wait can never end. Continue the work from a completion callback instead.";
  fatal(msg);
}

}  // namespace blkstack::debug
