// Direct I/O coherence (seed 002; the kernel's kiocb_invalidate_pages and
// kiocb_invalidate_post_direct_write): a direct write writes back and
// drops the cached pages of its range before it goes, and drops them
// again when it is done, since a buffered reader may have read the old
// data in meanwhile. A page that cannot be dropped is an error for that
// write's event: the cache would otherwise serve data older than the
// device's.
#include <cerrno>
#include <thread>
#include <vector>

#include "blkstack/disk.h"
#include "pagecache/cache_state.h"

namespace blkstack {

using pagecache::kPageShift;
using pagecache::Page;

namespace {

// A page lock is mostly held for a moment (a write-back or a writer
// passing by); a read in flight holds it for the device's time. Without
// waiting (completion context) we look a few times only.
bool try_lock_briefly(Page* p) {
  for (int i = 0; i < 64; ++i) {
    if (p->trylock()) return true;
    std::this_thread::yield();
  }
  return false;
}

// Drops the pages of [first, last]; waits for page locks when `wait`.
// 0, or -EBUSY if one is dirty, under write-back or (without waiting)
// locked.
int drop_range(PageCache::State& s, uint64_t first, uint64_t last, bool wait) {
  int err = 0;
  auto drop = [&](Page* p) {
    if (wait) {
      p->lock();
    } else if (!try_lock_briefly(p)) {
      p->put();
      err = -EBUSY;
      return;
    }
    if (p->test(pagecache::kDirty | pagecache::kWriteback)) {
      p->unlock();
      p->put();
      err = -EBUSY;
      return;
    }
    s.lru.remove(p);
    // Ours and the index's: then no one else can reach it.
    if (s.index.remove_if_unused(
            p,
            [](const Page& q) {
              return !q.test(pagecache::kDirty | pagecache::kWriteback);
            },
            2)) {
      s.free_page(p);
      return;
    }
    // Someone holds a reference (a reader about to copy, the flusher
    // passing by): the page stays, but no longer uptodate, so whoever looks
    // next reads it from the device again (ClearPageUptodate).
    p->flags.fetch_and(~pagecache::kUptodate, std::memory_order_acq_rel);
    s.lru.add(p);
    p->unlock();
    p->put();
  };
  const uint64_t end_page = (s.size_bytes() + pagecache::kPageSize - 1) >> kPageShift;
  if (end_page == 0) return 0;
  last = std::min(last, end_page - 1);
  if (last - first > 4096) {
    std::vector<Page*> in_range;
    s.index.for_each([&](Page* p) {
      if (p->index >= first && p->index <= last)
        in_range.push_back(p);
      else
        p->put();
    });
    for (Page* p : in_range) drop(p);
    return err;
  }
  for (uint64_t i = first; i <= last; ++i) {
    if (Page* p = s.index.find_get(i)) drop(p);
  }
  return err;
}

}  // namespace

int PageCache::invalidate_for_direct_write(uint64_t offset, uint64_t len) {
  if (empty() || len == 0) return 0;
  const uint64_t first = offset >> kPageShift, last = (offset + len - 1) >> kPageShift;
  const Status st = s_->write_pages(first, last, 0, UINT64_MAX, true);
  s_->wait_writeback(first, last);
  if (st != Status::kOk) return -status_to_errno(st);
  return drop_range(*s_, first, last, true);
}

int PageCache::invalidate_after_direct_write(uint64_t offset, uint64_t len) {
  if (empty() || len == 0) return 0;
  const uint64_t first = offset >> kPageShift, last = (offset + len - 1) >> kPageShift;
  return drop_range(*s_, first, last, false);
}

}  // namespace blkstack
