#include "sched/bfq_pool.h"

#include <bit>

namespace blkstack::bfq {

void QueuePool::reset(size_t size) {
  storage_ = std::make_unique<BfqQueue[]>(size);
  queues_.clear();
  slots_.assign(std::bit_ceil(size * 2), nullptr);
  mask_ = slots_.size() - 1;
  lru_head_ = lru_tail_ = nullptr;
  for (size_t i = 0; i < size; ++i) {
    BfqQueue& q = storage_[i];
    q.pooled = true;
    q.issuer = 0;
    queues_.push_back(&q);
    release(q);
  }
}

size_t QueuePool::slot_of(IssuerId issuer) const {
  return (issuer * 0x9e3779b1u) & mask_;  // Fibonacci hashing
}

BfqQueue* QueuePool::find(IssuerId issuer) const {
  for (size_t i = slot_of(issuer);; i = (i + 1) & mask_) {
    BfqQueue* q = slots_[i];
    if (q == nullptr) return nullptr;
    if (q->issuer == issuer) return q;
  }
}

void QueuePool::unhash(BfqQueue& q) {
  size_t i = slot_of(q.issuer);
  while (slots_[i] != &q) {
    if (slots_[i] == nullptr) return;  // never bound
    i = (i + 1) & mask_;
  }
  // Backward-shift deletion: keep every later entry reachable from its slot.
  size_t hole = i;
  for (size_t j = (i + 1) & mask_; slots_[j] != nullptr; j = (j + 1) & mask_) {
    const size_t home = slot_of(slots_[j]->issuer);
    // Movable into the hole if its home is not in (hole, j], cyclically.
    const bool between =
        hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (!between) {
      slots_[hole] = slots_[j];
      hole = j;
    }
  }
  slots_[hole] = nullptr;
}

void QueuePool::bind(BfqQueue& q, IssuerId issuer) {
  unhash(q);
  const bool on_lru = q.on_lru;
  BfqQueue* const next = q.lru_next;
  BfqQueue* const prev = q.lru_prev;
  q = BfqQueue{};
  q.pooled = true;
  q.on_lru = on_lru;
  q.lru_next = next;
  q.lru_prev = prev;
  q.issuer = issuer;
  size_t i = slot_of(issuer);
  while (slots_[i] != nullptr) i = (i + 1) & mask_;
  slots_[i] = &q;
}

void QueuePool::hold(BfqQueue& q) {
  if (!q.on_lru) return;
  if (q.lru_prev)
    q.lru_prev->lru_next = q.lru_next;
  else
    lru_head_ = q.lru_next;
  if (q.lru_next)
    q.lru_next->lru_prev = q.lru_prev;
  else
    lru_tail_ = q.lru_prev;
  q.lru_next = q.lru_prev = nullptr;
  q.on_lru = false;
}

void QueuePool::release(BfqQueue& q) {
  if (q.on_lru) return;
  q.lru_prev = lru_tail_;
  q.lru_next = nullptr;
  if (lru_tail_)
    lru_tail_->lru_next = &q;
  else
    lru_head_ = &q;
  lru_tail_ = &q;
  q.on_lru = true;
}

}  // namespace blkstack::bfq
