// Write-back (mm/page-writeback.c, fs/fs-writeback.c): the dirty list,
// bios built from runs of contiguous dirty pages, the flusher thread
// (wb_workfn: by age and by amount), balance_dirty_pages, and fsync.
#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "blkstack/completion.h"
#include "blkstack/disk.h"
#include "blkstack/submit.h"
#include "pagecache/cache_state.h"

namespace blkstack {

using pagecache::kPageShift;
using pagecache::Page;

namespace {

uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

// One call's write-back. A caller that waits for all its bios keeps it on
// its stack; one that does not (the flusher: it issues bios and goes on,
// as wb_writeback does) gives it to the bios, and the last one frees it.
struct WbWait {
  explicit WbWait(bool owned_by_bios) : owned(owned_by_bios) {}
  const bool owned;
  std::atomic<uint32_t> pending{1};  // bios in flight, plus the caller's
  std::atomic<Status> first_error{Status::kOk};
  Completion done;
  void put() {
    if (pending.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    if (owned) {
      delete this;
    } else {
      done.complete();
    }
  }
};

struct WbBio {
  PageCache::State* cache;
  WbWait* wait;
  Bio bio;
  BioStart start;
  std::vector<Page*> pages;
  std::vector<Segment> segs;
};

void write_done(Bio& bio) {
  auto* b = static_cast<WbBio*>(bio.context());
  if (status_is_busy(bio.status())) [[unlikely]] {
    resubmit_busy(bio, b->start);
    return;
  }
  PageCache::State& s = *b->cache;
  const Status st = bio.status();
  if (st != Status::kOk) {
    // The pages stay clean: the error is the device's to report, once to
    // every opener's next fsync (mapping_set_error).
    s.wb_err.set(st);
    Status none = Status::kOk;
    b->wait->first_error.compare_exchange_strong(none, st);
  }
  for (Page* p : b->pages) {
    p->clear_and_wake(pagecache::kWriteback);
    p->put();
  }
  s.nr_writeback.fetch_sub(b->pages.size(), std::memory_order_acq_rel);
  s.written_back.fetch_add(b->pages.size(), std::memory_order_relaxed);
  // A throttled writer may go on once the count is under the limit; a
  // wake before that would only put it back to sleep (a context switch
  // per bio), and with no writer throttled there is no lock per bio. The
  // writer's timed pause covers a wake missed in between.
  if (s.nr_throttled.load() != 0 && s.nr_dirty.load() + s.nr_writeback.load() <=
                                        s.dirty_thresh.load(std::memory_order_relaxed)) {
    { std::lock_guard lock(s.wb_mu); }
    s.wb_done.notify_all();
  }
  WbWait* w = b->wait;
  delete b;
  w->put();
  s.wb_bios.fetch_sub(1, std::memory_order_release);  // s may go from here on
}

}  // namespace

void PageCache::State::account_dirty(Page* p) {
  std::lock_guard lock(dirty_mu);
  p->set(pagecache::kDirty);
  p->dirtied_ns = now_ns();
  p->dirty_next = nullptr;
  p->dirty_prev = dirty_tail;
  (dirty_tail ? dirty_tail->dirty_next : dirty_head) = p;
  dirty_tail = p;
  nr_dirty.fetch_add(1, std::memory_order_acq_rel);
}

void PageCache::State::unlink_dirty_locked(Page* p) {
  (p->dirty_prev ? p->dirty_prev->dirty_next : dirty_head) = p->dirty_next;
  (p->dirty_next ? p->dirty_next->dirty_prev : dirty_tail) = p->dirty_prev;
  p->dirty_prev = p->dirty_next = nullptr;
  p->flags.fetch_and(~pagecache::kDirty, std::memory_order_acq_rel);
  nr_dirty.fetch_sub(1, std::memory_order_acq_rel);
}

Status PageCache::State::write_pages(uint64_t first, uint64_t last,
                                     uint64_t older_than_ns, uint64_t max, bool wait) {
  std::vector<Page*> pages;
  {
    std::lock_guard lock(dirty_mu);
    for (Page* p = dirty_head; p && pages.size() < max; p = p->dirty_next) {
      if (older_than_ns != 0 && p->dirtied_ns > older_than_ns) break;  // oldest first
      if (p->index < first || p->index > last) continue;
      p->get();  // dirty pages are never evicted: safe to take here
      pages.push_back(p);
    }
  }
  if (pages.empty()) return Status::kOk;
  std::sort(pages.begin(), pages.end(),
            [](const Page* a, const Page* b) { return a->index < b->index; });

  const QueueLimits& lim = disk.limits();
  const uint64_t max_bio_pages = std::max<uint64_t>(
      1, std::min<uint64_t>(lim.max_segments,
                            (uint64_t{lim.max_sectors} << kSectorShift) >> kPageShift));
  // Many bios in flight at once, each as large as the limits allow; this
  // call waits, if it does, once for all of them at the end.
  std::optional<WbWait> local;
  WbWait* w = wait ? &local.emplace(false) : new WbWait(true);
  std::unique_ptr<WbBio> run;
  auto submit = [&] {
    if (!run) return;
    WbBio* b = run.release();
    for (Page* p : b->pages) {
      b->segs.emplace_back(p->data, static_cast<uint32_t>(page_bytes(p->index)));
    }
    b->bio.init(&disk, Op::kWrite, (b->pages[0]->index << kPageShift) >> kSectorShift,
                b->segs, write_done, b);
    b->start = b->bio.start();
    w->pending.fetch_add(1, std::memory_order_acq_rel);
    wb_bios.fetch_add(1, std::memory_order_relaxed);
    submit_bio(b->bio);  // the submit path never waits; we wait below
  };
  for (Page* p : pages) {
    if (!p->test(pagecache::kDirty)) {  // cleaned meanwhile: leave it be
      p->put();
      continue;
    }
    // clear_page_dirty_for_io under the page lock; a write-back already in
    // flight for it finishes first (one at a time per page).
    // Our run goes out before we may block: its pages are under
    // write-back, and whoever waits on one of them may hold the page we
    // wait for.
    if (!p->trylock()) {
      submit();
      p->lock();
    }
    if (p->test(pagecache::kWriteback)) {
      submit();
      p->wait_clear(pagecache::kWriteback);
    }
    if (!p->test(pagecache::kDirty)) {
      p->unlock();
      p->put();
      continue;
    }
    {
      std::lock_guard lock(dirty_mu);
      unlink_dirty_locked(p);
    }
    p->set(pagecache::kWriteback);
    nr_writeback.fetch_add(1, std::memory_order_acq_rel);
    p->unlock();
    if (run && (run->pages.back()->index + 1 != p->index ||
                run->pages.size() >= max_bio_pages)) {
      submit();
    }
    if (!run) {
      run = std::make_unique<WbBio>();
      run->cache = this;
      run->wait = w;
    }
    run->pages.push_back(p);  // its reference goes with the bio
  }
  submit();
  w->put();  // unowned: the bios' now; their errors go to wb_err (fsync)
  if (!wait) return Status::kOk;
  w->done.wait("page cache write-back");
  return w->first_error.load();
}

void PageCache::State::wait_writeback(uint64_t first, uint64_t last) {
  const uint64_t end_page = (size_bytes() + pagecache::kPageSize - 1) >> kPageShift;
  last = std::min(last, end_page == 0 ? 0 : end_page - 1);
  if (last - first > 4096) {
    index.for_each([&](Page* p) {
      if (p->index >= first && p->index <= last) p->wait_clear(pagecache::kWriteback);
      p->put();
    });
    return;
  }
  for (uint64_t i = first; i <= last; ++i) {
    if (Page* p = index.find_get(i)) {
      p->wait_clear(pagecache::kWriteback);
      p->put();
    }
  }
}

void PageCache::State::kick_flusher() {
  if (wb_kicked_fast.exchange(true, std::memory_order_acq_rel)) return;
  {
    std::lock_guard lock(wb_mu);
    wb_kicked = true;
  }
  wb_kick.notify_one();
}

void PageCache::State::balance_dirty_pages() {
  const uint64_t dirty = nr_dirty.load(std::memory_order_relaxed);
  if (dirty <= bg_thresh.load(std::memory_order_relaxed)) return;
  // Past the background threshold a writer only wakes the flusher (a
  // flag it sees set costs nothing more) and goes on.
  kick_flusher();
  // Against the limit count the pages on their way to the device too (as
  // the kernel adds NR_WRITEBACK): the flusher does not wait for its bios,
  // so this is what bounds the write-back in flight.
  auto dirtied = [&] { return nr_dirty.load() + nr_writeback.load(); };
  if (dirtied() <= dirty_thresh.load(std::memory_order_relaxed)) return;
  // Past the limit: pause, in proportion to how far past (the kernel's
  // balance_dirty_pages pause), woken early by every write-back completion,
  // until the count is back under the limit. The pause is short: a page
  // past is 100 us, a tenth of the limit past is the most, 10 ms. No page
  // lock is held here, so the flusher can always go on.
  constexpr uint64_t kMinPauseUs = 100, kMaxPauseUs = 10'000;
  throttled.fetch_add(1, std::memory_order_relaxed);
  nr_throttled.fetch_add(1);  // seq_cst: write_done reads it after its counts
  std::unique_lock lock(wb_mu);
  for (;;) {
    const uint64_t d = dirtied();
    const uint64_t t = dirty_thresh.load(std::memory_order_relaxed);
    if (d <= t || wb_stop) break;
    const uint64_t pause_us = std::min<uint64_t>(
        kMaxPauseUs, kMinPauseUs + (d - t) * 10 * kMaxPauseUs / std::max<uint64_t>(t, 1));
    lock.unlock();
    kick_flusher();
    lock.lock();
    wb_done.wait_for(lock, std::chrono::microseconds(pause_us));
  }
  nr_throttled.fetch_sub(1);
}

void PageCache::State::flusher_main() {
  std::unique_lock lock(wb_mu);
  while (!wb_stop) {
    uint64_t period_cs;
    {
      std::lock_guard sl(settings_mu);
      period_cs = settings.dirty_writeback_centisecs;
    }
    wb_kick.wait_for(lock, std::chrono::milliseconds(period_cs * 10),
                     [&] { return wb_stop || wb_kicked; });
    if (wb_stop) break;
    wb_kicked = false;
    wb_kicked_fast.store(false, std::memory_order_release);
    lock.unlock();
    // By amount: down to the background threshold. The bios go out
    // without a wait for each batch (their pages leave the dirty count as
    // they go): the device gets them back to back, and a writer throttled
    // on the dirty count is let go as soon as they are issued.
    while (nr_dirty.load(std::memory_order_relaxed) >
           bg_thresh.load(std::memory_order_relaxed)) {
      const uint64_t over = nr_dirty.load(std::memory_order_relaxed) -
                            bg_thresh.load(std::memory_order_relaxed);
      write_pages(0, UINT64_MAX, 0, std::max<uint64_t>(over, 256), false);
      if (wb_stop_fast.load(std::memory_order_acquire)) break;
    }
    // By age: what has been dirty longer than dirty_expire_centisecs.
    uint64_t expire_cs;
    {
      std::lock_guard sl(settings_mu);
      expire_cs = settings.dirty_expire_centisecs;
    }
    const uint64_t now = now_ns();
    const uint64_t age = expire_cs * 10'000'000;
    if (now > age) write_pages(0, UINT64_MAX, now - age, UINT64_MAX, true);
    lock.lock();
  }
}

void PageCache::State::stop_flusher() {
  {
    std::lock_guard lock(wb_mu);
    wb_stop = true;
    wb_stop_fast.store(true, std::memory_order_release);
  }
  wb_kick.notify_all();
  wb_done.notify_all();
  if (flusher.joinable()) flusher.join();
  // The flusher's last bios may still be completing; they touch this State.
  while (wb_bios.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

Status PageCache::State::flush_device() {
  Completion done;
  Bio bio;
  bio.init_nodata(
      &disk, Op::kFlush, 0, 0,
      [](Bio& b) { static_cast<Completion*>(b.context())->complete(); }, &done);
  const BioStart start = bio.start();
  submit_bio(bio);
  done.wait("page cache fsync flush");
  while (status_is_busy(bio.status())) {
    done.reinit();
    bio.restart(start);
    submit_bio(bio);
    done.wait("page cache fsync flush");
  }
  return bio.status();
}

namespace {
// [first, last] pages of a byte range; len 0 is everything.
std::pair<uint64_t, uint64_t> page_range(uint64_t offset, uint64_t len) {
  if (len == 0) return {0, UINT64_MAX};
  return {offset >> kPageShift, (offset + len - 1) >> kPageShift};
}
}  // namespace

Status PageCache::writeback_range(uint64_t offset, uint64_t len) {
  auto [first, last] = page_range(offset, len);
  Status st = s_->write_pages(first, last, 0, UINT64_MAX, true);
  s_->wait_writeback(first, last);
  return st;
}

Status PageCache::fsync(Opener& opener, uint64_t offset, uint64_t len) {
  auto [first, last] = page_range(offset, len);
  s_->write_pages(first, last, 0, UINT64_MAX, true);
  s_->wait_writeback(first, last);  // the flusher's, too
  const Status flushed = s_->flush_device();
  // The write-back errors since this opener last looked (errseq), once.
  const Status wb = s_->wb_err.check_and_advance(&opener.since);
  return wb != Status::kOk ? wb : flushed;
}

}  // namespace blkstack
