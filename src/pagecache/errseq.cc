#include "pagecache/errseq.h"

namespace blkstack::pagecache {

void Errseq::set(Status s) {
  const uint32_t err = static_cast<uint32_t>(s) & kErrMask;
  uint32_t old = v_.load(std::memory_order_acquire);
  for (;;) {
    uint32_t next = (old & ~(kErrMask | kSeen)) | err;
    // Bump the counter only if the last error was seen: unseen errors
    // collapse into one report, as Linux's.
    if (old & kSeen) next += kCtrInc;
    if (next == old || v_.compare_exchange_weak(old, next, std::memory_order_acq_rel))
      return;
  }
}

uint32_t Errseq::sample() const {
  const uint32_t old = v_.load(std::memory_order_acquire);
  // No error, or one already seen: start from now. An unseen one: start
  // before it, so this opener reports it too.
  return (old & kSeen) || (old & kErrMask) == 0 ? old : 0;
}

Status Errseq::check_and_advance(uint32_t* since) {
  uint32_t old = v_.load(std::memory_order_acquire);
  if (old == *since) return Status::kOk;
  // Mark it seen, so a new error after this bumps the counter.
  uint32_t next = old | kSeen;
  while (!(old & kSeen)) {
    if (v_.compare_exchange_weak(old, next, std::memory_order_acq_rel)) break;
    next = old | kSeen;
  }
  *since = next;
  const Status s = static_cast<Status>(next & kErrMask);
  return s;
}

}  // namespace blkstack::pagecache
