// QueuePool: bfq's per-issuer synchronous queues, made once with the
// scheduler tags and reused, so that no queue is allocated per I/O (the
// kernel allocates a bfq_queue per process's io_context from a slab).
//
// A queue is in use while requests point at it or it is in service; then
// it cannot be taken. A queue nothing points at stays bound to its issuer
// (its weight-raising and think-time history survive short pauses) on a
// least-recently-used list, and is taken for a new issuer only when no
// free queue is left. The pool has one queue per scheduler tag and some
// spare, so a queue for a new request always exists.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "sched/bfq_queue.h"

namespace blkstack::bfq {

class QueuePool {
 public:
  // Makes `size` queues, forgetting every binding (nothing may be in use).
  void reset(size_t size);
  size_t size() const { return queues_.size(); }

  // The queue bound to `issuer`, or nullptr.
  BfqQueue* find(IssuerId issuer) const;
  // The queue to bind to a new issuer: the least recently used unused one
  // (still bound to its old issuer and perhaps on a service tree: the
  // caller forgets it there, then calls bind()).
  BfqQueue* victim() const { return lru_head_; }
  // Resets `q` and binds it to `issuer`.
  void bind(BfqQueue& q, IssuerId issuer);
  // `q` is in use (off the reuse list) or unused (at its tail).
  void hold(BfqQueue& q);
  void release(BfqQueue& q);

 private:
  size_t slot_of(IssuerId issuer) const;
  void unhash(BfqQueue& q);

  std::unique_ptr<BfqQueue[]> storage_;
  std::vector<BfqQueue*> queues_;
  // Open addressing, linear probing, twice the queues: issuer -> queue.
  std::vector<BfqQueue*> slots_;
  size_t mask_ = 0;
  BfqQueue* lru_head_ = nullptr;
  BfqQueue* lru_tail_ = nullptr;
};

}  // namespace blkstack::bfq
