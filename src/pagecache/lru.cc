#include "pagecache/lru.h"

namespace blkstack::pagecache {

void Lru::push_head(List& l, Page* p) {
  p->lru_prev = nullptr;
  p->lru_next = l.head;
  if (l.head) l.head->lru_prev = p;
  l.head = p;
  if (!l.tail) l.tail = p;
  ++l.size;
}

void Lru::unlink(List& l, Page* p) {
  (p->lru_prev ? p->lru_prev->lru_next : l.head) = p->lru_next;
  (p->lru_next ? p->lru_next->lru_prev : l.tail) = p->lru_prev;
  p->lru_prev = p->lru_next = nullptr;
  --l.size;
}

void Lru::add(Page* p) {
  std::lock_guard lock(mu_);
  push_head(inactive_, p);
  p->on_lru = true;
}

void Lru::remove(Page* p) {
  std::lock_guard lock(mu_);
  if (!p->on_lru) return;
  unlink(p->test(kActive) ? active_ : inactive_, p);
  p->on_lru = false;
  p->clear_and_wake(kActive);
}

void Lru::balance_locked() {
  // Keep the inactive list at least as long as the active one
  // (inactive_is_low), so a page must be hit twice to stay long.
  while (active_.size > inactive_.size && active_.tail) {
    Page* p = active_.tail;
    unlink(active_, p);
    p->flags.fetch_and(~(kActive | kReferenced), std::memory_order_acq_rel);
    push_head(inactive_, p);
  }
}

unsigned Lru::shrink(unsigned scan, const std::function<bool(Page*)>& try_evict,
                     const std::function<void(Page*)>& evicted) {
  unsigned n = 0;
  std::lock_guard lock(mu_);
  balance_locked();
  for (unsigned i = 0; i < scan && inactive_.tail; ++i) {
    Page* p = inactive_.tail;
    unlink(inactive_, p);
    if (p->test(kReferenced)) {
      // Second chance: hit while inactive, so it is promoted.
      p->flags.fetch_and(~kReferenced, std::memory_order_acq_rel);
      p->set(kActive);
      push_head(active_, p);
      continue;
    }
    if (try_evict(p)) {
      p->on_lru = false;
      evicted(p);
      ++n;
    } else {
      push_head(inactive_, p);  // dirty or busy: look again later
    }
  }
  return n;
}

}  // namespace blkstack::pagecache
