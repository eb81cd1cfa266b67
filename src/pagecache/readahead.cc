// Readahead (mm/readahead.c): on a miss, read a window from the missed
// page; the window starts small and doubles while the reader goes on
// sequentially, up to queue/read_ahead_kb. A page near the end of each
// window is marked kReadahead: a hit on it reads the next window without
// waiting, so a sequential reader finds its pages read before it needs
// them.
#include <algorithm>
#include <bit>
#include <memory>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/submit.h"
#include "pagecache/cache_state.h"

namespace blkstack {

using pagecache::kPageShift;
using pagecache::Page;

namespace {

// One read bio over a run of new, locked pages.
struct ReadBatch {
  PageCache::State* cache;
  Bio bio;
  BioStart start;
  std::vector<Page*> pages;
  std::vector<Segment> segs;
};

void read_done(Bio& bio) {
  auto* b = static_cast<ReadBatch*>(bio.context());
  if (status_is_busy(bio.status())) [[unlikely]] {
    resubmit_busy(bio, b->start);
    return;
  }
  const bool ok = bio.status() == Status::kOk;
  for (Page* p : b->pages) {
    p->set(ok ? pagecache::kUptodate : pagecache::kError);
    p->unlock();  // readers waiting for it go on (or retry on error)
  }
  PageCache::State* s = b->cache;
  delete b;
  s->reads_in_flight.fetch_sub(1, std::memory_order_release);  // the last touch
}

// get_init_ra_size: a first window of 4x a small request, 2x a larger one.
uint64_t init_ra_size(uint64_t req, uint64_t max) {
  uint64_t size = std::bit_ceil(std::max<uint64_t>(req, 1));
  if (size <= max / 32)
    size *= 4;
  else if (size <= max / 4)
    size *= 2;
  else
    size = max;
  return std::min(size, max);
}

}  // namespace

void PageCache::State::read_pages_async(uint64_t first, uint64_t nr, uint64_t mark) {
  const uint64_t end_page = (size_bytes() + pagecache::kPageSize - 1) >> kPageShift;
  if (first >= end_page) return;
  nr = std::min(nr, end_page - first);
  reserve_pages(nr);  // before locking any: eviction may write back
  const QueueLimits& lim = disk.limits();
  const uint64_t max_bio_pages = std::max<uint64_t>(
      1, std::min<uint64_t>(lim.max_segments,
                            (uint64_t{lim.max_sectors} << kSectorShift) >> kPageShift));
  std::unique_ptr<ReadBatch> batch;
  auto submit = [&] {
    if (!batch) return;
    ReadBatch* b = batch.release();
    uint64_t bytes = 0;
    for (Page* p : b->pages) {
      const uint64_t n = page_bytes(p->index);
      b->segs.emplace_back(p->data, static_cast<uint32_t>(n));
      bytes += n;
    }
    b->bio.init(&disk, Op::kRead, (b->pages[0]->index << kPageShift) >> kSectorShift,
                b->segs, read_done, b);
    b->start = b->bio.start();
    reads_in_flight.fetch_add(1, std::memory_order_relaxed);
    submit_bio(b->bio);
  };
  for (uint64_t idx = first; idx < first + nr; ++idx) {
    if (Page* p = index.find_get(idx)) {
      p->put();
      submit();  // a run ends at a page already cached
      continue;
    }
    Page* p =
        alloc_page(idx, pagecache::kLocked | (idx == mark ? pagecache::kReadahead : 0u));
    if (Page* other = index.insert_or_get(p)) {
      other->put();
      free_page(p);
      submit();
      continue;
    }
    lru.add(p);
    if (idx != first) readahead.fetch_add(1, std::memory_order_relaxed);
    if (!batch) {
      batch = std::make_unique<ReadBatch>();
      batch->cache = this;
    }
    batch->pages.push_back(p);
    if (batch->pages.size() >= max_bio_pages) submit();
  }
  submit();
}

void PageCache::State::sync_readahead(uint64_t idx, uint64_t req_pages) {
  const uint64_t max = ra_max_pages.load(std::memory_order_relaxed);
  if (max == 0) {
    read_pages_async(idx, std::max<uint64_t>(req_pages, 1), UINT64_MAX);
    return;
  }
  uint64_t start, size, mark;
  {
    std::lock_guard lock(ra_mu);
    // Sequential: the miss is where the last window ended (or inside it).
    const bool sequential = ra_size > 0 && idx >= ra_start && idx <= ra_start + ra_size;
    if (sequential) {
      size = std::min(ra_size * 2, max);
    } else {
      size = init_ra_size(req_pages, max);
    }
    size = std::max(size, std::min(req_pages, max));
    ra_start = idx;
    ra_size = size;
    ra_async = size > req_pages ? size - req_pages : 0;
    start = ra_start;
    mark = ra_async > 0 ? ra_start + ra_size - ra_async : UINT64_MAX;
  }
  read_pages_async(start, std::max(size, req_pages), mark);
}

void PageCache::State::async_readahead(uint64_t idx) {
  const uint64_t max = ra_max_pages.load(std::memory_order_relaxed);
  if (max == 0) return;
  uint64_t start, size;
  {
    std::lock_guard lock(ra_mu);
    // Only the marker of the current window moves it on; a stale marker
    // (another reader's) starts a window of its own from here.
    if (ra_size > 0 && idx == ra_start + ra_size - ra_async) {
      start = ra_start + ra_size;
      size = std::min(ra_size * 2, max);
    } else {
      start = idx + 1;
      size = init_ra_size(1, max);
    }
    ra_start = start;
    ra_size = size;
    ra_async = size;
  }
  read_pages_async(start, size, start);
}

}  // namespace blkstack
