// The inside of a PageCache, shared by the files of src/pagecache/:
// page_cache.cc (lookup, read, write, budget), readahead.cc, writeback.cc
// (the flusher, write-back, balance_dirty_pages, fsync) and
// invalidate.cc (direct I/O coherence).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "blkstack/page_cache.h"
#include "pagecache/errseq.h"
#include "pagecache/lru.h"
#include "pagecache/page_index.h"
#include "pagecache/page_pool.h"

namespace blkstack {

struct PageCache::State {
  explicit State(Disk& d) : disk(d) {}

  Disk& disk;
  pagecache::PagePool pool;  // before the index: it owns the pages
  pagecache::PageIndex index;
  pagecache::Lru lru;
  pagecache::Errseq wb_err;  // write-back errors (mapping->wb_err)

  mutable std::mutex settings_mu;
  VmSettings settings;  // under settings_mu; the atomics below mirror it
  std::atomic<uint64_t> max_pages{0};
  std::atomic<uint64_t> dirty_thresh{0};   // dirty_ratio of max_pages
  std::atomic<uint64_t> bg_thresh{0};      // dirty_background_ratio of it
  std::atomic<uint32_t> ra_max_pages{32};  // read_ahead_kb / 4

  std::atomic<uint64_t> nr_pages{0};
  std::atomic<uint64_t> nr_dirty{0};
  std::atomic<uint64_t> nr_writeback{0};
  std::atomic<uint64_t> misses{0}, readahead{0}, evicted{0}, written_back{0},
      throttled{0};

  // Dirty pages, oldest first (the flusher writes by age from the head).
  std::mutex dirty_mu;
  pagecache::Page* dirty_head = nullptr;
  pagecache::Page* dirty_tail = nullptr;

  // Readahead state (the kernel's file_ra_state), one per cache: touched
  // only on a miss or a hit on a kReadahead page.
  std::mutex ra_mu;
  uint64_t ra_start = 0, ra_size = 0, ra_async = 0;
  // Read bios in flight (readahead is not waited for): ~PageCache waits
  // for none before it frees the pages they read into.
  std::atomic<uint32_t> reads_in_flight{0};

  // The flusher (wb_workfn) and the writers throttled in
  // balance_dirty_pages, woken as write-back completes.
  std::mutex wb_mu;
  std::condition_variable wb_kick;  // the flusher waits here
  std::condition_variable wb_done;  // throttled writers wait here
  bool wb_stop = false;
  bool wb_kicked = false;
  std::atomic<bool> wb_kicked_fast{false};  // a kick is pending: skip the lock
  std::atomic<bool> wb_stop_fast{false};
  std::atomic<uint32_t> nr_throttled{0};  // writers in balance_dirty_pages now
  // Write-back bios in flight; the last thing their completion touches, so
  // teardown waits for it to reach 0 (the flusher does not wait for its own).
  std::atomic<uint64_t> wb_bios{0};
  std::thread flusher;

  uint64_t size_bytes() const;
  uint64_t page_bytes(uint64_t index) const;  // short for the disk's last page

  // page_cache.cc
  pagecache::Page* find_or_create_locked(uint64_t index, bool* created);
  void reserve_pages(uint64_t n);  // evicts to make room under the budget
  // A page for `index` with `flags`, counted in nr_pages, not yet indexed.
  pagecache::Page* alloc_page(uint64_t index, uint32_t flags);
  void free_page(pagecache::Page* p);         // undoes alloc_page
  Status read_page_sync(pagecache::Page* p);  // p locked, and stays so
  void apply_settings(const VmSettings& s);

  // readahead.cc
  // Reads pages [index, index+nr) that are missing, without waiting;
  // marks page `mark` (if inside) kReadahead.
  void read_pages_async(uint64_t index, uint64_t nr, uint64_t mark);
  void sync_readahead(uint64_t index, uint64_t req_pages);
  void async_readahead(uint64_t index);

  // writeback.cc
  void account_dirty(pagecache::Page* p);  // p locked, newly dirty
  void unlink_dirty_locked(pagecache::Page* p);
  // Writes back dirty pages in [first, last] (by index) older than
  // `older_than_ns` (0: any), at most `max` of them; waits when `wait`.
  // Returns the first write-back error of this call.
  Status write_pages(uint64_t first, uint64_t last, uint64_t older_than_ns, uint64_t max,
                     bool wait);
  void wait_writeback(uint64_t first, uint64_t last);
  void balance_dirty_pages();
  void kick_flusher();
  void flusher_main();
  void stop_flusher();
  Status flush_device();
};

}  // namespace blkstack
