#include "sched/bfq_wf2q.h"

#include <algorithm>

namespace blkstack::bfq {

void ServiceTree::unlink(BfqQueue*& head, BfqQueue& q) {
  if (q.tree_prev)
    q.tree_prev->tree_next = q.tree_next;
  else
    head = q.tree_next;
  if (q.tree_next) q.tree_next->tree_prev = q.tree_prev;
  q.tree_next = q.tree_prev = nullptr;
}

void ServiceTree::push(BfqQueue*& head, BfqQueue& q) {
  q.tree_prev = nullptr;
  q.tree_next = head;
  if (head) head->tree_prev = &q;
  head = &q;
}

void ServiceTree::update_weight(BfqQueue& q) {
  const uint32_t w = std::max<uint32_t>(1, q.new_weight * q.wr_coeff);
  q.orig_weight = q.new_weight;
  if (q.weight == w) return;
  wsum_ -= q.weight;  // 0 for a queue not counted yet
  q.weight = w;
  wsum_ += w;
}

void ServiceTree::activate(BfqQueue& q) {
  if (q.on == BfqQueue::Tree::kIdle) {
    // Still owed nothing: it starts where it left off, not earlier.
    unlink(idle_, q);
    q.start = std::max(vtime_, q.finish);
  } else {
    q.weight = 0;  // not in the sum yet
    q.start = vtime_;
  }
  update_weight(q);
  q.finish = q.start + delta(q.budget, q.weight);
  q.on = BfqQueue::Tree::kActive;
  push(active_, q);
}

void ServiceTree::requeue(BfqQueue& q) {
  q.start += delta(q.service, q.weight);
  update_weight(q);
  q.finish = q.start + delta(q.budget, q.weight);
  q.on = BfqQueue::Tree::kActive;
  push(active_, q);
}

void ServiceTree::deactivate(BfqQueue& q) {
  q.finish = q.start + delta(q.service, q.weight);
  if (q.finish > vtime_) {
    q.on = BfqQueue::Tree::kIdle;
    // Sorted by F: V passes them in order.
    BfqQueue* prev = nullptr;
    BfqQueue* at = idle_;
    while (at && at->finish <= q.finish) prev = at, at = at->tree_next;
    q.tree_prev = prev;
    q.tree_next = at;
    if (prev)
      prev->tree_next = &q;
    else
      idle_ = &q;
    if (at) at->tree_prev = &q;
  } else {
    q.on = BfqQueue::Tree::kNone;
    wsum_ -= q.weight;
    q.weight = 0;
  }
  forget_idle(/*system_idle=*/true);
}

void ServiceTree::forget(BfqQueue& q) {
  if (q.on == BfqQueue::Tree::kIdle) unlink(idle_, q);
  if (q.on != BfqQueue::Tree::kNone) wsum_ -= q.weight;
  q.weight = 0;
  q.on = BfqQueue::Tree::kNone;
}

void ServiceTree::forget_idle(bool system_idle) {
  // With nothing backlogged the system is idle: V moves to the last
  // finish and every idle entity is forgotten (bfq_forget_idle).
  const bool all = active_ == nullptr && system_idle;
  while (idle_ && (all || idle_->finish <= vtime_)) {
    BfqQueue* q = idle_;
    if (all) vtime_ = std::max(vtime_, q->finish);
    unlink(idle_, *q);
    q->on = BfqQueue::Tree::kNone;
    wsum_ -= q->weight;
    q->weight = 0;
  }
}

BfqQueue* ServiceTree::select() {
  if (!active_) return nullptr;
  uint64_t min_start = UINT64_MAX;
  for (BfqQueue* q = active_; q; q = q->tree_next)
    min_start = std::min(min_start, q->start);
  // No eligible entity: V jumps to the earliest start (bfq_update_vtime).
  if (min_start > vtime_) vtime_ = min_start;
  BfqQueue* best = nullptr;
  for (BfqQueue* q = active_; q; q = q->tree_next) {
    if (q->start <= vtime_ && (!best || q->finish < best->finish)) best = q;
  }
  unlink(active_, *best);
  best->on = BfqQueue::Tree::kService;
  forget_idle(/*system_idle=*/false);
  return best;
}

void ServiceTree::served(uint64_t sectors) {
  if (wsum_ == 0) return;
  vtime_ += delta(sectors, wsum_);
  if (idle_ && idle_->finish <= vtime_) forget_idle(/*system_idle=*/false);
}

}  // namespace blkstack::bfq
