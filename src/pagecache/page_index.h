// PageIndex: page number -> Page, the cache's index (the kernel's
// i_pages xarray). Sharded by page number: 64 shards, each a hash map
// under a reader-writer lock, so lookups on different pages rarely meet
// and a hit takes only a reader lock; inserts and removals (misses and
// eviction) take a shard's writer lock.
#pragma once

#include <cstdint>
#include <functional>
#include <shared_mutex>
#include <unordered_map>

#include "pagecache/page.h"

namespace blkstack::pagecache {

class PageIndex {
 public:
  static constexpr unsigned kShards = 64;

  // The page with a reference taken (put() it), or null.
  Page* find_get(uint64_t index) const;
  // Inserts `page` (one reference, the index's, already counted) unless
  // one is there: returns the one there with a reference taken, or null
  // if `page` went in.
  Page* insert_or_get(Page* page);
  // Removes `page` if `refs` references are all it has (the index's, and
  // the caller's if it holds one) and `can_drop` agrees, under the shard's
  // writer lock. True if removed (the caller frees it).
  bool remove_if_unused(Page* page, const std::function<bool(const Page&)>& can_drop,
                        uint32_t refs = 1);
  // Calls fn on every page with a reference taken (fn must put() it);
  // for fsync of a whole disk and teardown.
  void for_each(const std::function<void(Page*)>& fn) const;

 private:
  struct alignas(64) Shard {
    mutable std::shared_mutex mu;
    std::unordered_map<uint64_t, Page*> map;
  };
  // Consecutive pages go to different shards: a sequential reader spreads.
  Shard& shard(uint64_t index) const { return shards_[index % kShards]; }
  mutable Shard shards_[kShards];
};

}  // namespace blkstack::pagecache
