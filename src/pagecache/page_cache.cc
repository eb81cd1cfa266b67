// PageCache: attaching a cache to a disk, lookups, buffered read and write
// (generic_perform_write's write_begin/write_end), and the budget.
#include "blkstack/page_cache.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

#include "blkstack/completion.h"
#include "blkstack/disk.h"
#include "blkstack/error.h"
#include "blkstack/submit.h"
#include "pagecache/cache_state.h"

namespace blkstack {

using pagecache::kPageShift;
using pagecache::kPageSize;
using pagecache::Page;

PageCache& PageCache::attach(Disk& disk) {
  if (PageCache* c = disk.page_cache()) return *c;
  static std::mutex attach_mu;  // only while a cache is being made
  std::lock_guard lock(attach_mu);
  if (PageCache* c = disk.page_cache()) return *c;
  std::unique_ptr<PageCache> cache(new PageCache(disk));
  PageCache* raw = cache.get();
  disk.set_page_cache(std::move(cache));
  return *raw;
}

PageCache::PageCache(Disk& disk) : s_(std::make_unique<State>(disk)) {
  s_->apply_settings(VmSettings{});
  s_->flusher = std::thread([st = s_.get()] { st->flusher_main(); });
}

PageCache::~PageCache() {
  // Like the last close of a block device (blkdev_put syncs it): what is
  // dirty goes to the device (a removed disk's fails, and is logged).
  if (s_->nr_dirty.load(std::memory_order_acquire) != 0) write_back_for_removal();
  s_->stop_flusher();
  // Readahead is not waited for by its reader: its bios may still be
  // filling pages (and will unlock them) after the last user let go.
  while (s_->reads_in_flight.load(std::memory_order_acquire) != 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  s_->index.for_each([&](Page* p) {
    p->put();
    s_->lru.remove(p);  // the pool frees it, with the State
  });
}

PageCache::Opener PageCache::open() const { return Opener{s_->wb_err.sample()}; }

bool PageCache::empty() const {
  return s_->nr_pages.load(std::memory_order_acquire) == 0;
}

Status PageCache::write_back_for_removal() {
  State& s = *s_;
  const uint64_t dirty = s.nr_dirty.load(std::memory_order_acquire);
  Status st = writeback_range(0, 0);  // failed pages are in errseq already
  if (st == Status::kOk) {
    st = s.flush_device();
    if (st != Status::kOk) s.wb_err.set(st);  // the written pages may be lost
  }
  if (st != Status::kOk) {
    std::fprintf(stderr,
                 "blkstack: disk '%s': %llu dirty page(s) not made durable at "
                 "removal: %s\n",
                 s.disk.name().c_str(), static_cast<unsigned long long>(dirty),
                 std::string(status_name(st)).c_str());
  }
  return st;
}

uint64_t PageCache::State::size_bytes() const { return disk.size_bytes(); }

uint64_t PageCache::State::page_bytes(uint64_t index) const {
  const uint64_t start = index << kPageShift;
  const uint64_t size = size_bytes();
  return start >= size ? 0 : std::min<uint64_t>(kPageSize, size - start);
}

Page* PageCache::State::alloc_page(uint64_t idx, uint32_t flags) {
  Page* p = pool.get();
  p->index = idx;
  p->flags.store(flags, std::memory_order_relaxed);
  nr_pages.fetch_add(1, std::memory_order_acq_rel);
  return p;
}

void PageCache::State::free_page(Page* p) {
  nr_pages.fetch_sub(1, std::memory_order_acq_rel);
  pool.put(p);
}

void PageCache::State::reserve_pages(uint64_t n) {
  const uint64_t max = max_pages.load(std::memory_order_relaxed);
  auto over = [&] { return nr_pages.load(std::memory_order_relaxed) + n > max; };
  for (int round = 0; round < 3 && over(); ++round) {
    const uint64_t want = nr_pages.load(std::memory_order_relaxed) + n - max;
    const unsigned scan = static_cast<unsigned>(std::min<uint64_t>(want * 4 + 32, 4096));
    lru.shrink(
        scan,
        [&](Page* p) {
          return index.remove_if_unused(p, [](const Page& q) {
            return !q.test(pagecache::kDirty | pagecache::kWriteback |
                           pagecache::kLocked);
          });
        },
        [&](Page* p) {
          evicted.fetch_add(1, std::memory_order_relaxed);
          free_page(p);
        });
    // Only dirty pages left to take: write the oldest back and try again.
    // Past that the budget is exceeded for a moment rather than waited on
    // forever: the pages in the way may be this very request's.
    // A batch at a time (and the flusher told), not a page per page.
    if (over() && round == 1) {
      kick_flusher();
      write_pages(0, UINT64_MAX, 0, std::max<uint64_t>(want, 256), true);
    }
  }
}

Page* PageCache::State::find_or_create_locked(uint64_t idx, bool* created) {
  *created = false;
  for (;;) {
    if (Page* p = index.find_get(idx)) {
      p->lock();
      return p;
    }
    reserve_pages(1);
    Page* p = alloc_page(idx, pagecache::kLocked);
    if (Page* other = index.insert_or_get(p)) {
      free_page(p);
      other->lock();
      return other;
    }
    p->get();  // the caller's reference
    lru.add(p);
    *created = true;
    return p;
  }
}

namespace {
void wake_waiter(Bio& bio) { static_cast<Completion*>(bio.context())->complete(); }
}  // namespace

Status PageCache::State::read_page_sync(Page* p) {
  const uint64_t n = page_bytes(p->index);
  Completion done;
  Bio bio;
  Segment seg(p->data, static_cast<uint32_t>(n));
  bio.init(&disk, Op::kRead, (p->index << kPageShift) >> kSectorShift, {&seg, 1},
           wake_waiter, &done);
  const BioStart start = bio.start();
  submit_bio(bio);
  done.wait("page cache read");
  while (status_is_busy(bio.status())) {
    done.reinit();
    bio.restart(start);
    submit_bio(bio);
    done.wait("page cache read");
  }
  if (bio.status() != Status::kOk) return bio.status();
  p->flags.fetch_and(~pagecache::kError, std::memory_order_acq_rel);
  p->set(pagecache::kUptodate);
  return Status::kOk;
}

Status PageCache::read(void* buf, size_t len, uint64_t offset) {
  State& s = *s_;
  const uint64_t size = s.size_bytes();
  if (offset > size || len > size - offset) return Status::kOutOfRange;
  auto* out = static_cast<std::byte*>(buf);
  while (len > 0) {
    const uint64_t idx = offset >> kPageShift;
    const uint64_t in_page = offset & (kPageSize - 1);
    const uint64_t n = std::min<uint64_t>(len, kPageSize - in_page);
    Page* p = s.index.find_get(idx);
    if (p == nullptr || !p->test(pagecache::kUptodate)) [[unlikely]] {
      // A miss: read ahead from here (sync readahead), then wait for the
      // page to be read.
      if (p == nullptr) {
        s.misses.fetch_add(1, std::memory_order_relaxed);
        s.sync_readahead(idx, (len + in_page + kPageSize - 1) >> kPageShift);
        p = s.index.find_get(idx);
        if (p == nullptr) continue;  // evicted already: again
      }
      p->wait_clear(pagecache::kLocked);
      if (!p->test(pagecache::kUptodate)) {
        // The read failed (or the page was just made by a writer that
        // gave up): read it once more here, and report what that says.
        p->lock();
        Status st = p->test(pagecache::kUptodate) ? Status::kOk : s.read_page_sync(p);
        p->unlock();
        if (st != Status::kOk) {
          p->put();
          return st;
        }
      }
    }
    if (p->test(pagecache::kReadahead)) [[unlikely]] {
      p->clear_and_wake(pagecache::kReadahead);
      s.async_readahead(idx);
    }
    // mark_page_accessed: a bit, set once; the LRU promotes on its scan.
    if (!p->test(pagecache::kReferenced)) p->set(pagecache::kReferenced);
    std::memcpy(out, p->data + in_page, n);
    p->put();
    out += n;
    offset += n;
    len -= n;
  }
  return Status::kOk;
}

Status PageCache::write(const void* buf, size_t len, uint64_t offset) {
  State& s = *s_;
  const uint64_t size = s.size_bytes();
  if (offset > size || len > size - offset) return Status::kOutOfRange;
  // Refused now, as a direct write is: never accepted into the cache only
  // to fail at write-back, where no caller hears of it.
  if (s.disk.read_only()) return Status::kReadOnly;
  auto* in = static_cast<const std::byte*>(buf);
  while (len > 0) {
    const uint64_t idx = offset >> kPageShift;
    const uint64_t in_page = offset & (kPageSize - 1);
    const uint64_t n = std::min<uint64_t>(len, kPageSize - in_page);
    // write_begin: the page, locked, with the device's data around the
    // part written unless the write covers all of it.
    bool created;
    Page* p = s.find_or_create_locked(idx, &created);
    // Stable pages: no change under a write-back in flight, so what the
    // device gets is what the page held when it was cleaned.
    p->wait_clear(pagecache::kWriteback);
    const uint64_t valid = s.page_bytes(idx);
    if (!p->test(pagecache::kUptodate)) {
      if (in_page == 0 && n >= valid) {
        std::memset(p->data + valid, 0, kPageSize - valid);
      } else if (Status st = s.read_page_sync(p); st != Status::kOk) {
        p->unlock();
        p->put();
        return st;
      }
    }
    std::memcpy(p->data + in_page, in, n);
    // write_end: uptodate and dirty.
    p->set(pagecache::kUptodate);
    if (!p->test(pagecache::kDirty)) s.account_dirty(p);
    p->unlock();
    p->put();
    in += n;
    offset += n;
    len -= n;
    s.balance_dirty_pages();
  }
  return Status::kOk;
}

void PageCache::State::apply_settings(const VmSettings& v) {
  std::lock_guard lock(settings_mu);
  settings = v;
  const uint64_t pages = v.cache_budget_kb / (kPageSize / 1024);
  max_pages.store(pages, std::memory_order_relaxed);
  dirty_thresh.store(std::max<uint64_t>(1, pages * v.dirty_ratio / 100),
                     std::memory_order_relaxed);
  bg_thresh.store(pages * v.dirty_background_ratio / 100, std::memory_order_relaxed);
  ra_max_pages.store(v.read_ahead_kb / (kPageSize / 1024), std::memory_order_relaxed);
}

VmSettings PageCache::settings() const {
  std::lock_guard lock(s_->settings_mu);
  return s_->settings;
}

void PageCache::set_settings(const VmSettings& v) {
  auto check = [](std::string_view name, uint64_t value, uint64_t min, uint64_t max) {
    if (value < min || value > max) {
      throw Error(fmt::format("{}: {} is not from {} to {}", name, value, min, max));
    }
  };
  check("dirty_expire_centisecs", v.dirty_expire_centisecs, 1, 8640000);
  check("dirty_writeback_centisecs", v.dirty_writeback_centisecs, 1, 8640000);
  check("dirty_ratio", v.dirty_ratio, 1, 100);
  check("dirty_background_ratio", v.dirty_background_ratio, 1, 100);
  if (v.dirty_background_ratio >= v.dirty_ratio) {
    throw Error(fmt::format("dirty_background_ratio ({}) must be below dirty_ratio ({})",
                            v.dirty_background_ratio, v.dirty_ratio));
  }
  check("read_ahead_kb", v.read_ahead_kb, 0, 65536);
  check("cache_budget_kb", v.cache_budget_kb, 1024, uint64_t{1} << 32);
  s_->apply_settings(v);
  s_->kick_flusher();  // new thresholds or periods apply now
}

PageCacheStats PageCache::stats() const {
  const State& s = *s_;
  PageCacheStats st;
  st.pages = s.nr_pages.load();
  st.dirty = s.nr_dirty.load();
  st.writeback = s.nr_writeback.load();
  st.misses = s.misses.load();
  st.readahead = s.readahead.load();
  st.evicted = s.evicted.load();
  st.written_back = s.written_back.load();
  st.throttled = s.throttled.load();
  {
    std::lock_guard lock(s_->ra_mu);
    st.ra_window = static_cast<uint32_t>(s.ra_size);
  }
  return st;
}

}  // namespace blkstack
