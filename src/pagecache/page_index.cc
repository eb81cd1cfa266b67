#include "pagecache/page_index.h"

#include <mutex>
#include <vector>

namespace blkstack::pagecache {

Page* PageIndex::find_get(uint64_t index) const {
  Shard& s = shard(index);
  std::shared_lock lock(s.mu);
  auto it = s.map.find(index);
  if (it == s.map.end()) return nullptr;
  it->second->get();
  return it->second;
}

Page* PageIndex::insert_or_get(Page* page) {
  Shard& s = shard(page->index);
  std::unique_lock lock(s.mu);
  auto [it, inserted] = s.map.try_emplace(page->index, page);
  if (inserted) return nullptr;
  it->second->get();
  return it->second;
}

bool PageIndex::remove_if_unused(Page* page,
                                 const std::function<bool(const Page&)>& can_drop,
                                 uint32_t refs) {
  Shard& s = shard(page->index);
  std::unique_lock lock(s.mu);
  // Flags before references: a holder clears kDirty or kWriteback only
  // after taking its reference, so a clean page seen here with one
  // reference has no holder that could still reach it.
  if (!can_drop(*page)) return false;
  if (page->refs.load(std::memory_order_acquire) != refs) return false;
  s.map.erase(page->index);
  return true;
}

void PageIndex::for_each(const std::function<void(Page*)>& fn) const {
  std::vector<Page*> pages;
  for (Shard& s : shards_) {
    pages.clear();
    {
      std::shared_lock lock(s.mu);
      for (auto& [i, p] : s.map) {
        p->get();
        pages.push_back(p);
      }
    }
    for (Page* p : pages) fn(p);
  }
}

}  // namespace blkstack::pagecache
