// Busy is not an error for a bio-based driver (seed 000, BioGate): a driver
// that says busy, or a declared bio depth, parks bios in order and sends
// them again on resume(), on a counted completion or on the timer; nothing
// fails, nothing is reordered (so no flush passes a write or is passed),
// nothing waits in a submit path (debug check on), each bio completes once.
// Also: plugged batches with their last hint, the counters in the disk's
// statistics, stacking 4 deep, and every status through IoContext, busy
// ones sent again instead of reported.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/completion.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/io_context.h"
#include "blkstack/plug.h"
#include "blkstack/submit.h"
#include "test_wait.h"

namespace blkstack {
namespace {

using namespace std::chrono_literals;
using testing_util::MustHappen;

constexpr int kThreads = 8;
// Each submitting thread owns a range of sectors: a bio's sector says which
// thread sent it and its place in that thread's order.
constexpr uint64_t kThreadSectors = uint64_t{1} << 20;
constexpr uint64_t kDiskSectors = kThreads * kThreadSectors;

// How the test driver behaves when full.
enum class Room {
  kResume,     // says busy when full and resume() when a bio completes
  kNeverSays,  // says busy when full and never says room again (timer only)
  kCoreCounts  // declares its depth and lets the core count; never busy
};

// A bio-based driver with `depth` places, completing on a thread of its own
// a little later, that checks the order of each thread's bios.
class BusyDriver final : public BioDriver {
 public:
  BusyDriver(unsigned depth, Room room) : depth_(depth), room_(room) {
    thread_ = std::thread([this] { run(); });
  }
  ~BusyDriver() override {
    {
      std::lock_guard lock(lock_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  BioQueueConfig bio_queue_config() const override {
    return {room_ == Room::kCoreCounts ? depth_ : 0, false};
  }
  void submit(Bio& bio) override {
    std::unique_lock lock(lock_);
    if (held_.size() >= depth_) {
      if (room_ == Room::kCoreCounts) {
        ++overfilled_;  // the core let more in than declared
      } else {
        lock.unlock();
        busy(bio);
        return;
      }
    }
    const int t = static_cast<int>(bio.sector() / kThreadSectors);
    const uint64_t seq = bio.sector() % kThreadSectors;
    // A flush from IoContext (fsync) has no sector to say whose it is.
    const bool anonymous = bio.op() == Op::kFlush && bio.sector() == 0;
    if (t < kThreads && !anonymous) {
      if (seq < next_seq_[t]) ++reordered_;
      next_seq_[t] = seq + 1;
    }
    ++accepted_;
    held_.push_back(&bio);
    cv_.notify_all();
  }

  uint64_t reordered() const {
    std::lock_guard lock(lock_);
    return reordered_;
  }
  uint64_t overfilled() const {
    std::lock_guard lock(lock_);
    return overfilled_;
  }
  uint64_t accepted() const {
    std::lock_guard lock(lock_);
    return accepted_;
  }

 private:
  void run() {
    std::unique_lock lock(lock_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !held_.empty(); });
      if (stop_ && held_.empty()) return;
      lock.unlock();
      std::this_thread::sleep_for(20us);  // a device takes a moment
      lock.lock();
      Bio* b = held_.front();
      held_.pop_front();
      lock.unlock();
      b->complete(Status::kOk);
      if (room_ == Room::kResume) resume();
      lock.lock();
    }
  }

  const unsigned depth_;
  const Room room_;
  mutable std::mutex lock_;
  std::condition_variable cv_;
  std::deque<Bio*> held_;
  uint64_t next_seq_[kThreads] = {};
  uint64_t reordered_ = 0, overfilled_ = 0, accepted_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

std::shared_ptr<Disk> make_busy_disk(const std::string& name, unsigned depth, Room room) {
  QueueLimits lim;
  lim.volatile_write_cache = true;  // flushes reach the driver
  return std::make_shared<Disk>(name, kDiskSectors, lim,
                                std::make_unique<BusyDriver>(depth, room));
}

BusyDriver& driver_of(Disk& d) { return static_cast<BusyDriver&>(d.driver()); }

struct Counts {
  std::atomic<uint64_t> done{0}, failed{0};
};

void count_done(Bio& bio) {
  auto* c = static_cast<Counts*>(bio.context());
  if (bio.status() != Status::kOk) c->failed.fetch_add(1);
  c->done.fetch_add(1);
}

// 8 threads, each with `window` bios in flight: writes, every 8th a flush
// (an empty PREFLUSH), each thread's in its own order. Returns after all
// completed.
void hammer(Disk& disk, int per_thread, int window, bool plugged = false) {
  Counts counts;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<Bio> bios(window);
      std::vector<std::byte> buf(512);
      std::vector<Segment> segs(window, Segment(buf.data(), 512));
      uint64_t issued = 0;
      std::atomic<uint64_t> mine{0};
      struct Ctx {
        Counts* all;
        std::atomic<uint64_t>* mine;
      };
      Ctx ctx{&counts, &mine};
      auto done = [](Bio& bio) {
        auto* c = static_cast<Ctx*>(bio.context());
        if (bio.status() != Status::kOk) c->all->failed.fetch_add(1);
        c->all->done.fetch_add(1);
        c->mine->fetch_add(1, std::memory_order_release);
      };
      while (issued < static_cast<uint64_t>(per_thread)) {
        // Wait for the whole window: each slot is reused only when free.
        while (mine.load(std::memory_order_acquire) != issued) std::this_thread::yield();
        std::unique_ptr<Plug> plug;
        if (plugged) plug = std::make_unique<Plug>();
        for (int i = 0; i < window && issued < static_cast<uint64_t>(per_thread); ++i) {
          const uint64_t sector = t * kThreadSectors + issued;
          Bio& b = bios[i];
          if (issued % 8 == 7) {
            b.init_nodata(&disk, Op::kFlush, sector, 0, done, &ctx);
            b.set_flags(BioFlag::kPreflush);
          } else {
            b.init(&disk, Op::kWrite, sector, {&segs[i], 1}, done, &ctx);
          }
          ++issued;
          submit_bio(b);
        }
      }
      while (mine.load(std::memory_order_acquire) != issued) std::this_thread::yield();
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(counts.done.load(), uint64_t{kThreads} * per_thread);
  EXPECT_EQ(counts.failed.load(), 0u);
}

class BioBusy : public testing::TestWithParam<unsigned> {};

TEST_P(BioBusy, ADriverThatSaysBusyLosesNothingAndKeepsEachThreadsOrder) {
  auto disk = make_busy_disk("busy0", GetParam(), Room::kResume);
  hammer(*disk, 400, 16);
  EXPECT_EQ(driver_of(*disk).reordered(), 0u);
  const DiskStats st = disk->stats();
  EXPECT_GT(st.busy, 0u);
  EXPECT_GT(st.bios_parked, 0u);
  EXPECT_EQ(driver_of(*disk).accepted(), uint64_t{kThreads} * 400);
}

TEST_P(BioBusy, ADeclaredDepthIsNeverExceededAndKeepsOrder) {
  auto disk = make_busy_disk("depth0", GetParam(), Room::kCoreCounts);
  hammer(*disk, 400, 16);
  EXPECT_EQ(driver_of(*disk).overfilled(), 0u);
  EXPECT_EQ(driver_of(*disk).reordered(), 0u);
  EXPECT_EQ(disk->stats().bio_depth, GetParam());
  EXPECT_GT(disk->stats().bios_parked, 0u);
}

TEST_P(BioBusy, UnderAPlugBatchesStillKeepOrder) {
  auto disk = make_busy_disk("plugged0", GetParam(), Room::kResume);
  hammer(*disk, 200, 16, /*plugged=*/true);
  EXPECT_EQ(driver_of(*disk).reordered(), 0u);
}

TEST_P(BioBusy, StackedFourDeepOverABusyDevice) {
  DiskRegistry registry;
  registry.add(make_busy_disk("busy0", GetParam(), Room::kResume), "busy");
  std::string below = "busy0";
  for (int i = 0; i < 4; ++i) {
    const std::string name = fmt::format("pt{}", i);
    // partscan=0: a scan would read block 0 from this thread, out of the
    // per-thread order the driver checks.
    registry.create(fmt::format("passthrough:lower={},name={},partscan=0", below, name));
    below = name;
  }
  auto top = registry.get(below);
  hammer(*top, 200, 16);
  auto bottom = registry.get("busy0");
  EXPECT_EQ(driver_of(*bottom).reordered(), 0u);
  EXPECT_GT(bottom->stats().busy, 0u);
}

TEST_P(BioBusy, ThroughIoContextEveryEventSucceeds) {
  auto disk = make_busy_disk("aio0", GetParam(), Room::kResume);
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      IoContext ctx(32);
      std::vector<std::byte> buf(512);
      std::vector<Iocb> cbs(32);
      std::vector<Iocb*> ptrs(32);
      std::vector<IoEvent> ev(32);
      uint64_t seq = 0;
      for (int round = 0; round < 10; ++round) {
        for (int i = 0; i < 32; ++i, ++seq) {
          cbs[i] = (i == 31) ? Iocb::fsync(disk.get(), i)
                             : Iocb::pwrite(disk.get(), buf.data(), 512,
                                            (t * kThreadSectors + seq) * 512, i);
          ptrs[i] = &cbs[i];
        }
        if (ctx.submit(ptrs) != 32) bad.fetch_add(1);
        int got = 0;
        while (got < 32) {
          const int n = ctx.get_events(1, {ev.data() + got, ev.size() - got});
          for (int i = 0; i < n; ++i) {
            const IoEvent& e = ev[got + i];
            if (e.res != (e.user_data == 31 ? 0 : 512)) bad.fetch_add(1);
          }
          got += n;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(driver_of(*disk).reordered(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Depths, BioBusy, testing::Values(1u, 2u, 64u));

TEST(BioBusyTimer, ADriverThatNeverSaysRoomAgainStillProgresses) {
  auto disk = make_busy_disk("stuck0", 1, Room::kNeverSays);
  // Each stall costs up to kBusyRetryNs: few bios.
  hammer(*disk, 12, 4);
  EXPECT_EQ(driver_of(*disk).reordered(), 0u);
  EXPECT_GT(disk->stats().busy, 0u);
  EXPECT_GE(disk->stats().longest_park_ns, BioDriver::kBusyRetryNs / 2);
}

// Records the batches it gets: the bios of each, and which one was last.
class BatchDriver final : public BioDriver {
 public:
  explicit BatchDriver(unsigned depth) : depth_(depth) {}
  BioQueueConfig bio_queue_config() const override { return {depth_, true}; }
  void submit(Bio& bio) override { submit_batch(bio, true); }
  void submit_batch(Bio& bio, bool last) override {
    lasts.push_back(last);
    held.push_back(&bio);
  }
  void complete_all() {
    std::vector<Bio*> h;
    h.swap(held);
    for (Bio* b : h) b->complete(Status::kOk);
  }
  std::vector<bool> lasts;
  std::vector<Bio*> held;

 private:
  unsigned depth_;
};

TEST(BioBatch, BiosGatheredUnderAPlugArriveAsOneBatchWithTheLastMarked) {
  QueueLimits lim;
  auto disk = std::make_shared<Disk>("batch0", kDiskSectors, lim,
                                     std::make_unique<BatchDriver>(0));
  auto& drv = static_cast<BatchDriver&>(disk->driver());
  std::vector<Bio> bios(6);
  std::vector<std::byte> buf(512);
  Segment seg(buf.data(), 512);
  Counts c;
  {
    Plug plug;
    for (int i = 0; i < 6; ++i) {
      bios[i].init(disk.get(), Op::kWrite, i, {&seg, 1}, count_done, &c);
      submit_bio(bios[i]);
    }
    EXPECT_TRUE(drv.lasts.empty()) << "held in the plug until it ends";
  }
  EXPECT_EQ(drv.lasts, (std::vector<bool>{false, false, false, false, false, true}));
  drv.complete_all();
  EXPECT_EQ(c.done.load(), 6u);
}

TEST(BioBatch, ADepthCutsTheBatchAndMarksTheLastThatFits) {
  QueueLimits lim;
  auto disk = std::make_shared<Disk>("batch1", kDiskSectors, lim,
                                     std::make_unique<BatchDriver>(4));
  auto& drv = static_cast<BatchDriver&>(disk->driver());
  std::vector<Bio> bios(6);
  std::vector<std::byte> buf(512);
  Segment seg(buf.data(), 512);
  Counts c;
  {
    Plug plug;
    for (int i = 0; i < 6; ++i) {
      bios[i].init(disk.get(), Op::kWrite, i, {&seg, 1}, count_done, &c);
      submit_bio(bios[i]);
    }
  }
  EXPECT_EQ(drv.lasts, (std::vector<bool>{false, false, false, true}));
  EXPECT_EQ(disk->stats().bios_parked, 2u);
  drv.complete_all();  // room: the two parked go out, from this thread
  EXPECT_EQ(drv.held.size(), 2u);
  EXPECT_EQ(drv.held[0]->sector(), 4u);
  EXPECT_EQ(drv.held[1]->sector(), 5u);
  drv.complete_all();
  EXPECT_EQ(c.done.load(), 6u);
}

// As a request queue does when no tag is free (MqBasics.NowaitBiosGet...):
// a NOWAIT bio that would have to wait for room fails kAgain at once.
TEST(BioBusyNowait, ANowaitBioThatWouldParkGetsAgain) {
  QueueLimits lim;
  auto disk = std::make_shared<Disk>("nowait0", kDiskSectors, lim,
                                     std::make_unique<BatchDriver>(1));
  auto& drv = static_cast<BatchDriver&>(disk->driver());
  std::vector<std::byte> buf(512);
  Segment seg(buf.data(), 512);
  Bio a, nowait, waiting;
  Counts ca, cn, cw;
  a.init(disk.get(), Op::kWrite, 0, {&seg, 1}, count_done, &ca);
  submit_bio(a);
  ASSERT_EQ(drv.held.size(), 1u);
  nowait.init(disk.get(), Op::kWrite, 1, {&seg, 1}, count_done, &cn);
  nowait.set_flags(BioFlag::kNowait);
  submit_bio(nowait);
  ASSERT_TRUE(nowait.completed()) << "NOWAIT does not wait for room";
  EXPECT_EQ(nowait.status(), Status::kAgain);
  waiting.init(disk.get(), Op::kWrite, 2, {&seg, 1}, count_done, &cw);
  submit_bio(waiting);
  EXPECT_FALSE(waiting.completed()) << "without NOWAIT the bio waits";
  drv.complete_all();  // a's slot goes to `waiting`
  ASSERT_EQ(drv.held.size(), 1u);
  drv.complete_all();
  EXPECT_EQ(waiting.status(), Status::kOk);
  EXPECT_EQ(ca.done.load() + cn.done.load() + cw.done.load(), 3u);
}

TEST(BioBusyRemoval, ParkedBiosFailOfflineWhenTheDiskGoes) {
  QueueLimits lim;
  auto disk = std::make_shared<Disk>("gone0", kDiskSectors, lim,
                                     std::make_unique<BatchDriver>(1));
  auto& drv = static_cast<BatchDriver&>(disk->driver());
  std::vector<Bio> bios(3);
  std::vector<std::byte> buf(512);
  Segment seg(buf.data(), 512);
  Counts c;
  for (int i = 0; i < 3; ++i) {
    bios[i].init(disk.get(), Op::kWrite, i, {&seg, 1}, count_done, &c);
    submit_bio(bios[i]);
  }
  ASSERT_EQ(drv.held.size(), 1u);
  std::thread remover([&] { disk->shutdown(); });
  MustHappen([&] { return c.failed.load() == 2; }, "parked bios failed");
  drv.complete_all();
  remover.join();
  EXPECT_EQ(c.done.load(), 3u);
}

TEST(BioBusyStats, NullWithABioDepthReportsItsCounters) {
  DiskRegistry registry;
  auto disk = registry.create("null:4G,bio_depth=2,completion=deferred");
  EXPECT_EQ(disk->stats().bio_depth, 2u);
  hammer(*disk, 64, 8);
  const std::string report = disk->stats_report();
  EXPECT_NE(report.find("bio depth 2: busy 0 times"), std::string::npos) << report;
  EXPECT_GT(disk->stats().bios_parked, 0u) << report;
}

// Fails each bio's first attempt with `status`, then lets it through.
class FailOnceDriver final : public BioDriver {
 public:
  explicit FailOnceDriver(Status s) : status_(s) {}
  void submit(Bio& bio) override {
    const bool first = seen_.insert(&bio).second;  // one submitter at a time
    bio.complete(first ? status_ : Status::kOk);
  }

 private:
  Status status_;
  std::set<Bio*> seen_;
};

TEST(BusyStatus, IoContextSendsBusyAgainAndReportsEveryOtherStatus) {
  for (int i = 1; i < kStatusCount; ++i) {
    const auto s = static_cast<Status>(i);
    SCOPED_TRACE(std::string(status_name(s)));
    QueueLimits lim;
    auto disk = std::make_shared<Disk>("st0", kDiskSectors, lim,
                                       std::make_unique<FailOnceDriver>(s));
    IoContext ctx(1);
    std::vector<std::byte> buf(512);
    Iocb cb = Iocb::pwrite(disk.get(), buf.data(), 512, 0);
    Iocb* p = &cb;
    ASSERT_EQ(ctx.submit({&p, 1}), 1);
    IoEvent ev;
    ASSERT_EQ(ctx.get_events(1, {&ev, 1}), 1);
    if (status_is_busy(s))
      EXPECT_EQ(ev.res, 512);
    else
      EXPECT_EQ(ev.res, -status_to_errno(s));
  }
}

// BlockHandle is what tools and the exports' final flush (NBD and FUSE
// stop) use: a busy status must not reach them as an error either.
TEST(BusyStatus, BlockHandleSendsBusyAgainAndReportsEveryOtherStatus) {
  for (int i = 1; i < kStatusCount; ++i) {
    const auto s = static_cast<Status>(i);
    SCOPED_TRACE(std::string(status_name(s)));
    QueueLimits lim;
    lim.volatile_write_cache = true;  // the flush reaches the driver
    auto disk = std::make_shared<Disk>("st0", kDiskSectors, lim,
                                       std::make_unique<FailOnceDriver>(s));
    BlockHandle h(disk);
    std::vector<std::byte> buf(512);
    EXPECT_EQ(h.pwrite(buf.data(), 512, 0), status_is_busy(s) ? Status::kOk : s);
    EXPECT_EQ(h.flush(), status_is_busy(s) ? Status::kOk : s);
  }
}

// Completes every bio busy: a device that will never have room again.
class AlwaysBusyDriver final : public BioDriver {
 public:
  void submit(Bio& bio) override {
    ++attempts;
    bio.complete(Status::kResource);
  }
  std::atomic<int> attempts{0};
};

// Busy is retried, every kBusyRetryNs, for as long as the disk lives (as
// the kernel requeues BLK_STS_RESOURCE): what ends it is the driver failing
// the bio with a real error, or removal, which fails it kOffline.
TEST(BusyStatus, RetriesOfADeviceThatStaysBusyEndWhenTheDiskGoes) {
  QueueLimits lim;
  auto disk = std::make_shared<Disk>("stuck1", kDiskSectors, lim,
                                     std::make_unique<AlwaysBusyDriver>());
  auto& drv = static_cast<AlwaysBusyDriver&>(disk->driver());
  IoContext ctx(1);
  std::vector<std::byte> buf(512);
  Iocb cb = Iocb::pwrite(disk.get(), buf.data(), 512, 0);
  Iocb* p = &cb;
  ASSERT_EQ(ctx.submit({&p, 1}), 1);
  MustHappen([&] { return drv.attempts.load() >= 3; }, "busy bio sent again");
  IoEvent ev;
  EXPECT_EQ(ctx.get_events(0, {&ev, 1}), 0) << "busy is not reported";
  disk->shutdown();
  ASSERT_EQ(ctx.get_events(1, {&ev, 1}), 1);
  EXPECT_EQ(ev.res, -status_to_errno(Status::kOffline));
}

}  // namespace
}  // namespace blkstack
