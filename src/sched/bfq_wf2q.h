// ServiceTree: B-WF2Q+ (budget worst-case fair weighted fair queueing
// plus), the virtual-time scheduler bfq uses to pick the next queue
// (block/bfq-wf2q.c's bfq_service_tree), for one I/O priority class.
//
// Each backlogged queue (an "entity") has a virtual start time S and finish
// time F = S + budget / weight. The tree's virtual time V grows by
// served / (sum of the weights) as the device serves sectors. An entity is
// eligible when S <= V; the next one served is the eligible entity with the
// smallest F (if none is eligible, V jumps to the smallest S). An entity that
// goes idle keeps its weight in the sum until V passes its F (the idle
// list), so a queue cannot gain by leaving and coming back.
//
// The kernel keeps the active entities in an augmented red-black tree; here
// they are a list scanned at each selection: one scan per service round (a
// budget's worth of requests), over the queues that have requests.
#pragma once

#include <cstdint>

#include "sched/bfq_queue.h"

namespace blkstack::bfq {

class ServiceTree {
 public:
  // Virtual time is kept in sectors << kServiceShift / weight
  // (WFQ_SERVICE_SHIFT).
  static constexpr unsigned kServiceShift = 22;
  static uint64_t delta(uint64_t service, uint64_t weight) {
    return (service << kServiceShift) / weight;
  }

  uint64_t vtime() const { return vtime_; }
  uint64_t wsum() const { return wsum_; }
  bool has_active() const { return active_ != nullptr; }
  // Calls fn(const BfqQueue&) for each waiting backlogged queue.
  template <class Fn>
  void for_each_active(Fn&& fn) const {
    for (const BfqQueue* q = active_; q; q = q->tree_next) fn(*q);
  }

  // A queue that was not backlogged gets requests: S = V, or its old F if
  // it is still on the idle list with F > V; F = S + budget / weight.
  void activate(BfqQueue& q);
  // The in-service queue still has requests after its round: charged what
  // it received (S = S + service / weight), it waits again with a new F.
  void requeue(BfqQueue& q);
  // The in-service queue has no requests after its round: F = S + service /
  // weight; kept on the idle list while F > V.
  void deactivate(BfqQueue& q);
  // Takes the next queue to serve off the active list (it stays in the
  // weight sum while in service), or nullptr.
  BfqQueue* select();
  // V grows with what the device served.
  void served(uint64_t sectors);
  // A queue leaves for good (reused for another issuer).
  void forget(BfqQueue& q);

 private:
  void unlink(BfqQueue*& head, BfqQueue& q);
  void push(BfqQueue*& head, BfqQueue& q);
  // Updates the queue's weight (new_weight, raising) if it changed, in the sum.
  void update_weight(BfqQueue& q);
  // Drops idle entities whose F <= V; with `system_idle` (nothing in
  // service) and nothing backlogged, all of them.
  void forget_idle(bool system_idle);

  uint64_t vtime_ = 0;
  uint64_t wsum_ = 0;
  BfqQueue* active_ = nullptr;
  BfqQueue* idle_ = nullptr;  // ascending F
};

}  // namespace blkstack::bfq
