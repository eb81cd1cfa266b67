// The page cache (page_cache.h): partial-page writes, readahead, eviction
// under a tiny budget, dirty throttling, errseq write-back errors, direct
// I/O coherence and its failures reaching the event once, fsync and a
// crash, and a reference model mixing buffered and direct I/O.
#include "blkstack/page_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "aio_test_util.h"
#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/io_context.h"

namespace blkstack {
namespace {

using aio_testing::AlignedBuf;
using aio_testing::FillPattern;
using aio_testing::Pattern;
using namespace std::chrono_literals;

// A RAM device with a volatile write cache: writes land in `volatile_`,
// a flush makes them durable (what survives a crash). It can fail writes
// a test picks, complete on a thread of its own after a delay, or hold
// bios until released.
class MemDriver final : public BioDriver {
 public:
  explicit MemDriver(uint64_t bytes) : volatile_(bytes), durable_(bytes) {}
  ~MemDriver() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  void submit(Bio& bio) override {
    std::unique_lock lock(mu_);
    if (hold_) {
      held_.push_back(&bio);
      return;
    }
    if (delay_.count() > 0) {
      queue_.push_back(&bio);
      cv_.notify_all();
      return;
    }
    lock.unlock();
    complete(bio);
  }

  void complete(Bio& bio) {
    Status s = Status::kOk;
    const uint64_t off = bio.sector() << kSectorShift;
    {
      std::lock_guard lock(data_mu_);
      if (bio.op() == Op::kWrite) {
        ++writes_;
        if (fail_writes_ > 0) {
          --fail_writes_;
          s = Status::kIoError;
        } else {
          bio.copy_to(volatile_.data() + off, bio.size());
        }
      } else if (bio.op() == Op::kRead) {
        ++reads_;
        bio.copy_from(volatile_.data() + off, bio.size());
      } else if (bio.op() == Op::kFlush) {
        durable_ = volatile_;
      }
      if (bio.has_flag(BioFlag::kPreflush)) durable_ = volatile_;
    }
    bio.complete(s);
  }

  void start_delayed(std::chrono::microseconds d) {
    delay_ = d;
    worker_ = std::thread([this] {
      std::unique_lock lock(mu_);
      for (;;) {
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        Bio* b = queue_.front();
        queue_.pop_front();
        lock.unlock();
        std::this_thread::sleep_for(delay_);
        complete(*b);
        lock.lock();
      }
    });
  }
  void set_hold(bool h) {
    std::vector<Bio*> go;
    {
      std::lock_guard lock(mu_);
      hold_ = h;
      if (!h) go.swap(held_);
    }
    for (Bio* b : go) complete(*b);
  }
  size_t held() {
    std::lock_guard lock(mu_);
    return held_.size();
  }
  void fail_next_writes(int n) {
    std::lock_guard lock(data_mu_);
    fail_writes_ = n;
  }
  std::vector<std::byte> durable(uint64_t off, uint64_t n) {
    std::lock_guard lock(data_mu_);
    return {durable_.begin() + off, durable_.begin() + off + n};
  }
  std::vector<std::byte> current(uint64_t off, uint64_t n) {
    std::lock_guard lock(data_mu_);
    return {volatile_.begin() + off, volatile_.begin() + off + n};
  }
  void fill(uint64_t off, const std::vector<std::byte>& v) {
    std::lock_guard lock(data_mu_);
    std::memcpy(volatile_.data() + off, v.data(), v.size());
    std::memcpy(durable_.data() + off, v.data(), v.size());
  }
  uint64_t reads() {
    std::lock_guard lock(data_mu_);
    return reads_;
  }

 private:
  std::mutex data_mu_;
  std::vector<std::byte> volatile_, durable_;
  int fail_writes_ = 0;
  uint64_t writes_ = 0, reads_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false, hold_ = false;
  std::chrono::microseconds delay_{0};
  std::deque<Bio*> queue_;
  std::vector<Bio*> held_;
  std::thread worker_;
};

struct TestDisk {
  MemDriver* drv;
  std::shared_ptr<Disk> disk;
};

TestDisk MakeDisk(uint64_t bytes) {
  auto d = std::make_unique<MemDriver>(bytes);
  MemDriver* raw = d.get();
  QueueLimits lim;
  lim.logical_block_size = 512;
  lim.volatile_write_cache = true;
  lim.fua = false;
  return {raw, std::make_shared<Disk>("pc0", bytes >> kSectorShift, lim, std::move(d))};
}

VmSettings Small(uint64_t budget_kb) {
  VmSettings v;
  v.cache_budget_kb = budget_kb;
  return v;
}

TEST(PageCache, PartialWritesReadTheRestOfThePage) {
  auto t = MakeDisk(1 << 20);
  const auto base = Pattern(1 << 20, 1);
  t.drv->fill(0, base);
  PageCache& c = PageCache::attach(*t.disk);
  auto f = c.open();
  std::vector<std::byte> model = base;
  const auto a = Pattern(100, 2);
  ASSERT_EQ(c.write(a.data(), a.size(), 7), Status::kOk);
  std::memcpy(model.data() + 7, a.data(), a.size());
  const auto b = Pattern(300, 3);  // across a page boundary
  ASSERT_EQ(c.write(b.data(), b.size(), 8192 - 150), Status::kOk);
  std::memcpy(model.data() + 8192 - 150, b.data(), b.size());
  std::vector<std::byte> got(3 * 4096);
  ASSERT_EQ(c.read(got.data(), got.size(), 0), Status::kOk);
  EXPECT_EQ(0, std::memcmp(got.data(), model.data(), got.size()));
  ASSERT_EQ(c.fsync(f), Status::kOk);
  EXPECT_EQ(t.drv->durable(0, 3 * 4096),
            std::vector<std::byte>(model.begin(), model.begin() + 3 * 4096));
}

// A read-only disk refuses a buffered write at once (invariant 6), as it
// refuses a direct one, rather than failing it at write-back unheard.
TEST(PageCache, ABufferedWriteToAReadOnlyDiskIsRefusedAtOnce) {
  auto t = MakeDisk(1 << 20);
  PageCache& c = PageCache::attach(*t.disk);
  auto f = c.open();
  t.disk->set_read_only(true);
  const auto a = Pattern(4096, 5);
  EXPECT_EQ(c.write(a.data(), a.size(), 0), Status::kReadOnly);
  EXPECT_EQ(c.fsync(f), Status::kOk) << "nothing was accepted, so nothing failed";
  std::vector<std::byte> got(4096);
  ASSERT_EQ(c.read(got.data(), got.size(), 0), Status::kOk);
  EXPECT_NE(got, a);
}

TEST(PageCache, ReadaheadWindowGrowsOnSequentialReads) {
  auto t = MakeDisk(4 << 20);
  t.drv->fill(0, Pattern(4 << 20, 4));
  PageCache& c = PageCache::attach(*t.disk);
  std::vector<uint32_t> windows;
  std::vector<std::byte> buf(4096);
  for (uint64_t off = 0; off < (2u << 20); off += 4096) {
    ASSERT_EQ(c.read(buf.data(), buf.size(), off), Status::kOk);
    const uint32_t w = c.stats().ra_window;
    if (windows.empty() || windows.back() != w) windows.push_back(w);
  }
  // 4 pages, doubling to read_ahead_kb (128 KiB = 32 pages).
  ASSERT_GE(windows.size(), 4u);
  EXPECT_EQ(windows[0], 4u);
  EXPECT_EQ(windows[1], 8u);
  EXPECT_EQ(windows[2], 16u);
  EXPECT_EQ(windows[3], 32u);
  EXPECT_EQ(windows.back(), 32u);
  // Only the first page waited for the device; the rest was read ahead.
  const PageCacheStats st = c.stats();
  EXPECT_LE(st.misses, 2u);
  EXPECT_GE(st.readahead, 500u);
  // A random reader gets small windows.
  for (uint64_t off : {3u << 20, (3u << 20) + 409600u}) {
    ASSERT_EQ(c.read(buf.data(), buf.size(), off), Status::kOk);
    EXPECT_EQ(c.stats().ra_window, 4u);
  }
}

TEST(PageCache, EvictsCleanPagesUnderATinyBudget) {
  const uint64_t size = 8 << 20;
  auto t = MakeDisk(size);
  PageCache& c = PageCache::attach(*t.disk);
  c.set_settings(Small(1024));  // 256 pages
  auto f = c.open();
  std::vector<std::byte> model(size);
  FillPattern(model.data(), size, 5);
  for (uint64_t off = 0; off < size; off += 64 << 10) {
    ASSERT_EQ(c.write(model.data() + off, 64 << 10, off), Status::kOk);
    EXPECT_LE(c.stats().pages, 256u + 64u);
  }
  std::mt19937_64 rng(6);
  std::vector<std::byte> got(8192);
  for (int i = 0; i < 2000; ++i) {
    const uint64_t off = rng() % (size - got.size());
    ASSERT_EQ(c.read(got.data(), got.size(), off), Status::kOk);
    ASSERT_EQ(0, std::memcmp(got.data(), model.data() + off, got.size())) << off;
  }
  const PageCacheStats st = c.stats();
  EXPECT_LE(st.pages, 256u + 64u);
  EXPECT_GT(st.evicted, 1000u);
  ASSERT_EQ(c.fsync(f), Status::kOk);
  EXPECT_EQ(t.drv->durable(0, size), model);
}

TEST(PageCache, WritersAreThrottledPastDirtyRatioAndResume) {
  const uint64_t size = 16 << 20;
  auto t = MakeDisk(size);
  t.drv->start_delayed(200us);  // a slow device: the flusher lags
  PageCache& c = PageCache::attach(*t.disk);
  c.set_settings(Small(2048));  // 512 pages: dirty_ratio 20% = 102
  std::atomic<uint64_t> max_dirty{0};
  std::atomic<bool> done{false};
  std::thread watch([&] {
    while (!done) {
      uint64_t d = c.stats().dirty, m = max_dirty.load();
      if (d > m) max_dirty = d;
      std::this_thread::sleep_for(100us);
    }
  });
  std::vector<std::thread> writers;
  for (int w = 0; w < 2; ++w) {
    writers.emplace_back([&, w] {
      const auto data = Pattern(4096, 7 + w);
      for (uint64_t i = 0; i < 600; ++i) {
        ASSERT_EQ(c.write(data.data(), 4096, (w * 600 + i) * 4096), Status::kOk);
      }
    });
  }
  for (auto& th : writers) th.join();
  done = true;
  watch.join();
  const PageCacheStats st = c.stats();
  EXPECT_GT(st.throttled, 0u);
  EXPECT_GT(st.written_back, 800u);  // the flusher went on meanwhile
  // Each writer passes the limit by at most the page it just dirtied.
  EXPECT_LE(max_dirty.load(), 102u + 8u);
}

TEST(PageCache, WritebackErrorReachesTheNextFsyncOfEachOpenerOnce) {
  auto t = MakeDisk(1 << 20);
  PageCache& c = PageCache::attach(*t.disk);
  auto a = c.open();
  auto b = c.open();
  const auto data = Pattern(8192, 8);
  ASSERT_EQ(c.write(data.data(), data.size(), 0), Status::kOk);
  t.drv->fail_next_writes(1);
  EXPECT_EQ(c.fsync(a), Status::kIoError);
  EXPECT_EQ(c.fsync(a), Status::kOk);  // once
  auto late = c.open();                // opened after it was seen
  EXPECT_EQ(c.fsync(b), Status::kIoError);
  EXPECT_EQ(c.fsync(b), Status::kOk);
  EXPECT_EQ(c.fsync(late), Status::kOk);
  // A second error is new to everyone.
  ASSERT_EQ(c.write(data.data(), data.size(), 0), Status::kOk);
  t.drv->fail_next_writes(1);
  EXPECT_EQ(c.fsync(late), Status::kIoError);
  EXPECT_EQ(c.fsync(b), Status::kIoError);
  EXPECT_EQ(c.fsync(a), Status::kIoError);
  EXPECT_EQ(c.fsync(a), Status::kOk);
  // Through BlockHandle: each handle is an opener.
  auto h1 = BlockHandle::buffered(t.disk);
  auto h2 = BlockHandle::buffered(t.disk);
  ASSERT_EQ(h1.pwrite(data.data(), 100, 3), Status::kOk);
  t.drv->fail_next_writes(1);
  EXPECT_EQ(h1.flush(), Status::kIoError);
  EXPECT_EQ(h2.flush(), Status::kIoError);
  EXPECT_EQ(h1.flush(), Status::kOk);
  EXPECT_EQ(h2.flush(), Status::kOk);
}

TEST(PageCache, FsyncMakesDataDurableBeforeACrash) {
  auto t = MakeDisk(1 << 20);
  PageCache& c = PageCache::attach(*t.disk);
  auto f = c.open();
  const auto data = Pattern(20000, 9);
  ASSERT_EQ(c.write(data.data(), data.size(), 1000), Status::kOk);
  // Not yet: the flusher waits dirty_expire_centisecs (30 s).
  EXPECT_NE(t.drv->durable(1000, data.size()), data);
  ASSERT_EQ(c.fsync(f), Status::kOk);
  // "Crash" now: what the device made durable is all there is.
  EXPECT_EQ(t.drv->durable(1000, data.size()), data);
}

TEST(PageCache, FlusherWritesBackByAge) {
  auto t = MakeDisk(1 << 20);
  PageCache& c = PageCache::attach(*t.disk);
  VmSettings v;
  v.dirty_expire_centisecs = 5;
  v.dirty_writeback_centisecs = 2;
  c.set_settings(v);
  const auto data = Pattern(4096, 10);
  ASSERT_EQ(c.write(data.data(), data.size(), 4096), Status::kOk);
  EXPECT_TRUE(testing_util::Eventually(
      [&] {
        const PageCacheStats st = c.stats();
        return st.written_back >= 1 && st.dirty == 0 && st.writeback == 0;
      },
      5s));
  EXPECT_EQ(t.drv->current(4096, 4096), data);
}

Iocb DirectIocb(IoOp op, Disk* d, void* buf, uint64_t len, uint64_t off) {
  Iocb cb =
      op == IoOp::kPread ? Iocb::pread(d, buf, len, off) : Iocb::pwrite(d, buf, len, off);
  cb.flags = kIocbDirect;
  return cb;
}

int RunOne(IoContext& ctx, Iocb& cb) {
  Iocb* list[] = {&cb};
  if (int r = ctx.submit(list); r != 1) return r;
  IoEvent ev[2];
  if (ctx.get_events(1, ev) != 1) return -9999;
  return static_cast<int>(ev[0].res);
}

TEST(PageCache, DirectWriteSeesCoherentCache) {
  auto t = MakeDisk(1 << 20);
  PageCache::attach(*t.disk);
  IoContext ctx(8);
  AlignedBuf buf(8192), got(8192);
  FillPattern(buf.data(), 8192, 11);
  // Buffered write (dirty), then a direct read sees it (written back).
  Iocb w = Iocb::pwrite(t.disk.get(), buf.data(), 8192, 0);
  ASSERT_EQ(RunOne(ctx, w), 8192);
  Iocb dr = DirectIocb(IoOp::kPread, t.disk.get(), got.data(), 8192, 0);
  ASSERT_EQ(RunOne(ctx, dr), 8192);
  EXPECT_EQ(0, std::memcmp(got.data(), buf.data(), 8192));
  // Cached read, then a direct write: the next buffered read sees it.
  Iocb r = Iocb::pread(t.disk.get(), got.data(), 8192, 0);
  ASSERT_EQ(RunOne(ctx, r), 8192);
  FillPattern(buf.data(), 8192, 12);
  Iocb dw = DirectIocb(IoOp::kPwrite, t.disk.get(), buf.data(), 8192, 0);
  ASSERT_EQ(RunOne(ctx, dw), 8192);
  ASSERT_EQ(RunOne(ctx, r), 8192);
  EXPECT_EQ(0, std::memcmp(got.data(), buf.data(), 8192));
}

TEST(PageCache, DirectWriteInvalidationFailureReachesTheEventOnce) {
  auto t = MakeDisk(1 << 20);
  PageCache& c = PageCache::attach(*t.disk);
  IoContext ctx(8);
  AlignedBuf buf(4096);
  // 1. The write-back before the direct write fails: its event says so.
  ASSERT_EQ(c.write(buf.data(), 4096, 0), Status::kOk);
  t.drv->fail_next_writes(1);
  Iocb dw = DirectIocb(IoOp::kPwrite, t.disk.get(), buf.data(), 4096, 0);
  Iocb* list[] = {&dw};
  ASSERT_EQ(ctx.submit(list), 1);
  IoEvent ev[4];
  ASSERT_EQ(ctx.get_events(1, ev), 1);
  EXPECT_EQ(ev[0].res, -EIO);
  EXPECT_EQ(ctx.get_events(0, ev, 50ms), 0);  // never doubled
  // 2. A page dirtied while the direct write is under way cannot be
  // dropped after it: -EBUSY in the event, once.
  t.drv->set_hold(true);
  ASSERT_EQ(ctx.submit(list), 1);
  ASSERT_TRUE(testing_util::Eventually([&] { return t.drv->held() == 1; }, 5s));
  ASSERT_EQ(c.write(buf.data(), 4096, 0), Status::kOk);  // whole: no read
  t.drv->set_hold(false);
  ASSERT_EQ(ctx.get_events(1, ev), 1);
  EXPECT_EQ(ev[0].res, -EBUSY);
  EXPECT_EQ(ctx.get_events(0, ev, 50ms), 0);
}

// Threads each own a region and mix buffered and direct reads and writes
// on it through one IoContext each, fsyncs now and then, with a budget
// small enough that eviction and the flusher run all the time. Every read
// must see the latest acknowledged write.
TEST(PageCache, ReferenceModelMixesBufferedAndDirectIo) {
  constexpr uint64_t kRegion = 512 << 10, kGap = 256 << 10;
  constexpr int kThreads = 4;
  const uint64_t size = kThreads * (kRegion + kGap);
  auto t = MakeDisk(size);
  PageCache& c = PageCache::attach(*t.disk);
  VmSettings v = Small(1024);
  v.dirty_expire_centisecs = 1;
  v.dirty_writeback_centisecs = 1;
  c.set_settings(v);
  std::vector<std::thread> threads;
  for (int th = 0; th < kThreads; ++th) {
    threads.emplace_back([&, th] {
      const uint64_t base = th * (kRegion + kGap);
      std::vector<std::byte> model(kRegion);
      std::mt19937_64 rng(100 + th);
      IoContext ctx(4);
      AlignedBuf buf(64 << 10), got(64 << 10);
      for (int i = 0; i < 600; ++i) {
        const bool direct = rng() % 3 == 0;
        const uint64_t unit = direct ? 512 : 1;
        uint64_t len = (1 + rng() % (16 << 10)) / unit * unit;
        if (len == 0) len = unit;
        const uint64_t off = rng() % ((kRegion - len) / unit + 1) * unit;
        const int kind = static_cast<int>(rng() % 10);
        Iocb cb;
        if (kind < 4) {
          FillPattern(buf.data(), len, rng());
          cb = direct
                   ? DirectIocb(IoOp::kPwrite, t.disk.get(), buf.data(), len, base + off)
                   : Iocb::pwrite(t.disk.get(), buf.data(), len, base + off);
          ASSERT_EQ(RunOne(ctx, cb), static_cast<int>(len)) << i;
          std::memcpy(model.data() + off, buf.data(), len);
        } else if (kind < 9) {
          cb = direct
                   ? DirectIocb(IoOp::kPread, t.disk.get(), got.data(), len, base + off)
                   : Iocb::pread(t.disk.get(), got.data(), len, base + off);
          ASSERT_EQ(RunOne(ctx, cb), static_cast<int>(len)) << i;
          ASSERT_EQ(0, std::memcmp(got.data(), model.data() + off, len))
              << "op " << i << (direct ? " direct" : " buffered") << " off " << off;
        } else {
          cb = Iocb::fsync(t.disk.get());
          ASSERT_EQ(RunOne(ctx, cb), 0);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_GT(c.stats().evicted, 0u);
}
TEST(PageCache, RemovalWritesBackDirtyPagesBeforeTheQueueStops) {
  auto t = MakeDisk(1 << 20);
  PageCache& c = PageCache::attach(*t.disk);
  const auto data = Pattern(3 * 4096 + 100, 21);
  ASSERT_EQ(c.write(data.data(), data.size(), 512), Status::kOk);
  ASSERT_GT(c.stats().dirty, 0u);
  // Removal (DiskRegistry::remove) shuts the disk down before the last
  // reference goes: acknowledged buffered writes must reach the device,
  // and be made durable, before it stops taking I/O.
  t.disk->shutdown();
  EXPECT_EQ(c.stats().dirty, 0u);
  EXPECT_EQ(t.drv->durable(512, data.size()), data);
}

TEST(PageCache, RemovalThatCannotWriteBackReportsIt) {
  auto t = MakeDisk(1 << 20);
  PageCache& c = PageCache::attach(*t.disk);
  auto f = c.open();
  const auto data = Pattern(8192, 22);
  ASSERT_EQ(c.write(data.data(), data.size(), 0), Status::kOk);
  t.drv->fail_next_writes(100);
  t.disk->shutdown();
  // Not silent: every opener's next fsync learns the pages were lost.
  EXPECT_EQ(c.fsync(f), Status::kIoError);
  EXPECT_EQ(c.stats().dirty, 0u);
}

TEST(PageCache, DestroyingTheDiskWaitsForReadaheadInFlight) {
  for (int round = 0; round < 5; ++round) {
    auto t = MakeDisk(4 << 20);
    t.drv->start_delayed(2ms);  // readahead still in flight below
    PageCache& c = PageCache::attach(*t.disk);
    std::vector<std::byte> buf(4096);
    ASSERT_EQ(c.read(buf.data(), buf.size(), 0), Status::kOk);
    // A hit on the window's marker reads the next window without waiting.
    ASSERT_EQ(c.read(buf.data(), buf.size(), 4096), Status::kOk);
    ASSERT_GT(c.stats().readahead, 3u);
    // The last reference goes while those pages are being read into:
    // they must outlive their bio (ASan sees a use after free otherwise).
    t.disk.reset();
  }
}

TEST(PageCache, IoContextKeepsItsErrseqSampleForEveryDisk) {
  // A context opens each disk it uses buffered; the ninth as well as the
  // first must keep its sample, or an error another opener saw first is
  // never reported to it.
  std::vector<TestDisk> disks;
  IoContext ctx(8);
  AlignedBuf buf(4096);
  for (int i = 0; i < 9; ++i) {
    disks.push_back(MakeDisk(1 << 20));
    PageCache::attach(*disks.back().disk);
    Iocb w = Iocb::pwrite(disks.back().disk.get(), buf.data(), 4096, 0);
    ASSERT_EQ(RunOne(ctx, w), 4096);
  }
  TestDisk& last = disks.back();
  auto other = BlockHandle::buffered(last.disk);
  last.drv->fail_next_writes(1);
  EXPECT_EQ(other.flush(), Status::kIoError);  // seen there first
  Iocb f = Iocb::fsync(last.disk.get());
  EXPECT_EQ(RunOne(ctx, f), -EIO);
  EXPECT_EQ(RunOne(ctx, f), 0);  // once
}

}  // namespace
}  // namespace blkstack
