// PageCache: the buffered I/O path of a disk (the kernel's page cache for
// a block device: mm/filemap.c, mm/readahead.c, mm/page-writeback.c).
//
//   PageCache& cache = PageCache::attach(*disk);   // one per disk, shared
//   PageCache::Opener f = cache.open();            // samples write-back errors
//   cache.write(buf, 100, 7);                      // any bytes: write_begin
//                                                  // reads the rest of a page
//   cache.read(buf, 4096, 0);                      // hits copy, misses read ahead
//   Status s = cache.fsync(f);                     // write back, flush, errseq
//
// Data is kept in 4 KiB pages found through a sharded index: a hit takes
// one shard's reader lock, copies and lets go, with no allocation and no
// system call. Dirty pages go to the device by a flusher thread, by age
// (dirty_expire_centisecs) and by amount (dirty_background_ratio of the
// budget); a writer that takes the dirty pages past dirty_ratio sleeps
// until the flusher brings them down (balance_dirty_pages). Clean pages
// are evicted under the budget from an inactive list; a page hit while on
// it goes to the active list instead (second chance). Settings are named
// as Linux's vm sysctls; docs/page-cache.md lists them.
//
// Coherence with direct I/O (seed 002): IoContext calls
// invalidate_for_direct_write() before a direct write and
// invalidate_after_direct_write() when it completes, and
// writeback_range() before a direct read; their errors go to that iocb's
// event.
//
// Write-back errors follow errseq (Linux >= 4.13): each Opener samples the
// error sequence when opened, and its next fsync after a failed write-back
// reports that error once; every opener sees it once.
//
// Thread-safe. A cache lives as long as its disk. Removal (Disk::shutdown)
// writes back what is dirty and flushes while the disk still takes I/O;
// ~Disk does the same for what was dirtied since, and stops the flusher.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "blkstack/status.h"

namespace blkstack {

class Disk;

// The cache's settings. Names and defaults as Linux's (vm sysctls and
// queue/read_ahead_kb); cache_budget_kb is blkstack's own: the memory the
// cache's pages may use, which the ratios are taken of.
struct VmSettings {
  uint32_t dirty_expire_centisecs = 3000;    // a dirty page this old is written
  uint32_t dirty_writeback_centisecs = 500;  // how often the flusher wakes
  uint32_t dirty_background_ratio = 10;      // % of budget: the flusher starts
  uint32_t dirty_ratio = 20;                 // % of budget: writers are throttled
  uint32_t read_ahead_kb = 128;              // the largest readahead window
  uint64_t cache_budget_kb = 64 * 1024;      // 64 MiB of pages
};

// What the cache did, for tests and `blkstack bench`.
struct PageCacheStats {
  uint64_t pages = 0;      // in the cache now
  uint64_t dirty = 0;      // of which dirty
  uint64_t writeback = 0;  // of which under write-back
  uint64_t misses = 0;     // pages a read had to wait for the device for
  uint64_t readahead = 0;  // pages read ahead of the reader
  uint64_t evicted = 0;
  uint64_t written_back = 0;  // pages written back
  uint64_t throttled = 0;     // times a writer slept in balance_dirty_pages
  uint32_t ra_window = 0;     // the current readahead window, in pages
};

class PageCache {
 public:
  // The disk's cache, made on first use. Not from a submit path.
  static PageCache& attach(Disk& disk);
  ~PageCache();
  PageCache(const PageCache&) = delete;
  PageCache& operator=(const PageCache&) = delete;

  // A user of the cache: its sample of the write-back error sequence.
  class Opener {
   public:
    uint32_t since = 0;
  };
  Opener open() const;

  // Buffered reads and writes at any byte offset inside the disk. A read
  // error or a failed read of the rest of a page for a partial write is
  // returned; write-back errors go to fsync (errseq).
  Status read(void* buf, size_t len, uint64_t offset);
  Status write(const void* buf, size_t len, uint64_t offset);
  // Writes back [offset, offset+len) (len 0: everything), waits for it,
  // flushes the device, and returns the first of: a write-back error since
  // `opener` last looked (then advanced), the flush's error. fdatasync is
  // the same here: a block device has no metadata of its own.
  Status fsync(Opener& opener, uint64_t offset = 0, uint64_t len = 0);

  // Writes back the dirty pages of the range and waits for them; returns
  // this write-back's error (filemap_write_and_wait_range).
  Status writeback_range(uint64_t offset, uint64_t len);
  // Before a direct write: write back and drop the cached pages of the
  // range. 0, or -errno: the write-back's error, or -EBUSY when a page is
  // under I/O and cannot be dropped.
  int invalidate_for_direct_write(uint64_t offset, uint64_t len);
  // When a direct write completes: drops the range's pages again (a reader
  // may have brought old data in meanwhile). Never waits (completion
  // context): -EBUSY if a page is locked, dirty or under write-back.
  int invalidate_after_direct_write(uint64_t offset, uint64_t len);
  // Whether any page is cached: lets the direct path skip the above.
  bool empty() const;
  // Removal (Disk::shutdown, before the queue stops): writes back all that
  // is dirty and flushes the device. What cannot be made durable is not
  // dropped silently: the error goes to every opener's next fsync
  // (errseq) and to stderr, and is returned.
  Status write_back_for_removal();

  VmSettings settings() const;
  // Throws Error naming the valid range for an absurd value (a ratio past
  // 100, dirty_background_ratio >= dirty_ratio, a budget under 1 MiB, ...).
  void set_settings(const VmSettings& s);
  PageCacheStats stats() const;

  struct State;  // src/pagecache/cache_state.h

 private:
  explicit PageCache(Disk& disk);
  std::unique_ptr<State> s_;
};

}  // namespace blkstack
