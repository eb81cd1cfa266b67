#include "sched/bfq_queue.h"

namespace blkstack::bfq {

void add_request(BfqQueue& q, Request& rq, bool at_head) {
  // Sorted by sector; a sequential stream appends, so look from the tail.
  Request* at = q.sorted.back();
  while (at && at->pos() > rq.pos()) at = at->prev;
  if (!at) {
    q.sorted.push_front(&rq);
  } else if (at == q.sorted.back()) {
    q.sorted.push_back(&rq);
  } else {
    // Between `at` and its successor: RequestList has no insert, so split.
    RequestList tail;
    while (q.sorted.back() != at) {
      Request* r = q.sorted.back();
      q.sorted.remove(r);
      tail.push_front(r);
    }
    q.sorted.push_back(&rq);
    q.sorted.splice_back(tail);
  }

  RqPriv* p = priv(rq);
  if (at_head) {
    p->fifo_prev = nullptr;
    p->fifo_next = q.fifo_head;
    if (q.fifo_head)
      priv(*q.fifo_head)->fifo_prev = &rq;
    else
      q.fifo_tail = &rq;
    q.fifo_head = &rq;
  } else {
    p->fifo_next = nullptr;
    p->fifo_prev = q.fifo_tail;
    if (q.fifo_tail)
      priv(*q.fifo_tail)->fifo_next = &rq;
    else
      q.fifo_head = &rq;
    q.fifo_tail = &rq;
  }
}

namespace {
// Takes `rq` out of its queue's FIFO; its own links are left as they were.
void fifo_unlink(BfqQueue& q, Request& rq) {
  RqPriv* p = priv(rq);
  if (p->fifo_prev)
    priv(*p->fifo_prev)->fifo_next = p->fifo_next;
  else
    q.fifo_head = p->fifo_next;
  if (p->fifo_next)
    priv(*p->fifo_next)->fifo_prev = p->fifo_prev;
  else
    q.fifo_tail = p->fifo_prev;
}
}  // namespace

void remove_request(BfqQueue& q, Request& rq) {
  q.sorted.remove(&rq);
  fifo_unlink(q, rq);
  RqPriv* p = priv(rq);
  p->fifo_next = p->fifo_prev = nullptr;
}

void take_fifo_place(BfqQueue& q, Request& rq, Request& other) {
  RqPriv* p = priv(rq);
  RqPriv* o = priv(other);
  if (o->fifo_time >= p->fifo_time) return;
  // Unlink rq, then put it just before `other` (which is leaving).
  fifo_unlink(q, rq);
  p->fifo_next = &other;
  p->fifo_prev = o->fifo_prev;
  if (o->fifo_prev)
    priv(*o->fifo_prev)->fifo_next = &rq;
  else
    q.fifo_head = &rq;
  o->fifo_prev = &rq;
  p->fifo_time = o->fifo_time;
}

Request* choose_next(const BfqQueue& q, uint64_t head, uint64_t back_max,
                     uint32_t back_penalty) {
  // The first request at or after the head, and the one before it.
  Request* after = q.sorted.front();
  Request* before = nullptr;
  while (after && after->pos() < head) before = after, after = after->next;
  if (!before) return after;  // nothing behind the head: forward (or none)
  const uint64_t back = (head - before->pos()) * back_penalty;
  const bool back_ok = head - before->pos() <= back_max;
  if (!after) {
    // Only behind: within reach, the nearest; else wrap to the lowest.
    return back_ok ? before : q.sorted.front();
  }
  if (!back_ok) return after;
  const uint64_t fwd = after->pos() - head;
  // A tie goes forward, as the elevator runs.
  return back < fwd ? before : after;
}

}  // namespace blkstack::bfq
