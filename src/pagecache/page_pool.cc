#include "pagecache/page_pool.h"

#include <sys/mman.h>

#include <cstdlib>
#include <new>

namespace blkstack::pagecache {

PagePool::~PagePool() {
  for (Chunk& c : chunks_) std::free(c.data);
}

void PagePool::grow_locked() {
  constexpr size_t bytes = kChunkPages * kPageSize;
  auto* data = static_cast<std::byte*>(std::aligned_alloc(bytes, bytes));
  if (data == nullptr) throw std::bad_alloc();
  // A hint only: without huge pages each 4 KiB faults in on first touch.
  (void)madvise(data, bytes, MADV_HUGEPAGE);
  Chunk c{data, std::make_unique<Page[]>(kChunkPages)};
  for (uint64_t i = kChunkPages; i-- > 0;) {
    Page* p = &c.pages[i];
    p->data = data + i * kPageSize;
    p->lru_next = free_;
    free_ = p;
  }
  chunks_.push_back(std::move(c));
}

Page* PagePool::get() {
  Page* p;
  {
    std::lock_guard lock(mu_);
    if (free_ == nullptr) grow_locked();
    p = free_;
    free_ = p->lru_next;
  }
  p->reset();
  return p;
}

void PagePool::put(Page* p) {
  std::lock_guard lock(mu_);
  p->lru_next = free_;
  free_ = p;
}

}  // namespace blkstack::pagecache
