// Lru: the active and inactive lists of a cache's pages (the kernel's
// lruvec for file pages, mm/vmscan.c), for eviction under the budget.
//
// A new page starts on the inactive list. A hit only sets kReferenced (no
// lock); the scan from the inactive tail gives a referenced page a second
// chance on the active list and evicts the others that can go (clean,
// unlocked, unused). When the active list outgrows the inactive one, its
// tail is moved back to the inactive head, losing its reference bit.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>

#include "pagecache/page.h"

namespace blkstack::pagecache {

class Lru {
 public:
  void add(Page* p);
  void remove(Page* p);  // if on a list
  // Scans up to `scan` pages from the inactive tail; `try_evict` takes a
  // page off the index if it can go (then true: the page leaves the list
  // and `evicted` gets it). Returns how many were evicted.
  unsigned shrink(unsigned scan, const std::function<bool(Page*)>& try_evict,
                  const std::function<void(Page*)>& evicted);

 private:
  struct List {
    Page* head = nullptr;
    Page* tail = nullptr;
    uint64_t size = 0;
  };
  static void push_head(List& l, Page* p);
  static void unlink(List& l, Page* p);
  void balance_locked();

  std::mutex mu_;
  List active_, inactive_;
};

}  // namespace blkstack::pagecache
