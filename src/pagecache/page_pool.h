// PagePool: where a cache's pages come from and go back to (the kernel's
// page allocator and its per-cpu free lists, for one cache).
//
// Pages are made 512 at a time: one 2 MiB block of data, asked to be a
// transparent huge page, and one array of Page structs. So a miss costs
// no heap allocation (a page off the free list) and filling the cache
// costs one page fault per 2 MiB rather than one per 4 KiB; a freed page
// goes back on the list with its memory touched already. The memory goes
// back to the system only when the pool is destroyed, with its cache:
// what a cache has once held under its budget it may hold again.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "pagecache/page.h"

namespace blkstack::pagecache {

class PagePool {
 public:
  static constexpr uint64_t kChunkPages = 512;  // 2 MiB of data

  PagePool() = default;
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;
  ~PagePool();

  // A page in a new page's state (Page::reset), not reachable by anyone.
  Page* get();
  // Back to the free list; no one may reach `p` any more.
  void put(Page* p);

 private:
  struct Chunk {
    std::byte* data;
    std::unique_ptr<Page[]> pages;
  };
  void grow_locked();

  std::mutex mu_;
  Page* free_ = nullptr;  // linked through lru_next
  std::vector<Chunk> chunks_;
};

}  // namespace blkstack::pagecache
