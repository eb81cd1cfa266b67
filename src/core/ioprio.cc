#include "blkstack/ioprio.h"

#include <atomic>

namespace blkstack {

IssuerId new_issuer_id() {
  static std::atomic<IssuerId> next{1};
  IssuerId id = next.fetch_add(1, std::memory_order_relaxed);
  if (id == 0) id = next.fetch_add(1, std::memory_order_relaxed);  // wrapped
  return id;
}

IssuerId this_thread_issuer() {
  thread_local const IssuerId id = new_issuer_id();
  return id;
}

}  // namespace blkstack
