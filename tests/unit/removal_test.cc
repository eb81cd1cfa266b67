// Removing a disk while other threads still use it: pollers inside the
// driver, reapers, and more submitting threads than there are per-thread
// slots. Removal (Disk::shutdown) must wait for every thread that is inside
// the disk's driver, and only for those: a thread that comes after it is
// refused and must not keep it waiting.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "aio_test_util.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/io_context.h"
#include "blkstack/status.h"
#include "blkstack/submit.h"
#include "core/percpu.h"
#include "test_wait.h"

namespace blkstack {
namespace {

using namespace std::chrono_literals;
using aio_testing::AtExit;
using testing_util::Eventually;
using testing_util::MustHappen;
using Clock = std::chrono::steady_clock;

// --- polled I/O racing removal --------------------------------------------------

// A bio-based driver with a poll queue: polled bios wait until poll()
// completes them. After completing, poll() can linger (as a real driver
// does: the io_uring driver advances its completion ring after the
// callbacks) and report whether its driver was destroyed meanwhile.
class LingeringPollDriver final : public BioDriver {
 public:
  struct Shared {
    std::atomic<bool> destroyed{false};
    std::atomic<bool> lingering{false};
    std::atomic<bool> destroyed_under_poller{false};
  };
  explicit LingeringPollDriver(std::shared_ptr<Shared> shared)
      : shared_(std::move(shared)) {}
  ~LingeringPollDriver() override { shared_->destroyed.store(true); }

  void submit(Bio& bio) override {
    if (!bio.has_flag(BioFlag::kPolled)) {
      bio.complete(Status::kOk);
      return;
    }
    std::lock_guard lock(mu_);
    held_.push_back(&bio);
  }
  bool can_poll() const override { return true; }
  int poll(uint64_t) override {
    std::deque<Bio*> done;
    {
      std::lock_guard lock(mu_);
      done.swap(held_);
    }
    // The driver may be gone once the last bio is complete: keep what the
    // lingering part needs on the stack.
    const std::shared_ptr<Shared> shared = shared_;
    for (Bio* b : done) b->complete(Status::kOk);
    if (done.empty()) return 0;
    shared->lingering.store(true);
    if (Eventually([&] { return shared->destroyed.load(); }, 300ms)) {
      shared->destroyed_under_poller.store(true);
      return static_cast<int>(done.size());  // touches nothing of the driver
    }
    std::lock_guard lock(mu_);  // the driver's own state, as a ring would be
    polls_ += done.size();
    return static_cast<int>(done.size());
  }

 private:
  std::shared_ptr<Shared> shared_;
  std::mutex mu_;
  std::deque<Bio*> held_;
  size_t polls_ = 0;
};

// Both tests start from one polled read in flight on a LingeringPollDriver
// disk. Members are in the order the tests declared them, so ctx still goes
// before the disk it submitted to.
class RemovalPoll : public ::testing::Test {
 protected:
  void SubmitPolledRead(const char* name) {
    disk = std::make_shared<Disk>(name, 8192, QueueLimits{},
                                  std::make_unique<LingeringPollDriver>(shared));
    cb = aio_testing::MakeIocb(IoOp::kPread, disk.get(), buf.data(), 4096, 0, 1,
                               kIocbHipri);
    ASSERT_EQ(aio_testing::SubmitOne(ctx, cb), 1);
  }

  std::shared_ptr<LingeringPollDriver::Shared> shared =
      std::make_shared<LingeringPollDriver::Shared>();
  std::shared_ptr<Disk> disk;
  IoContext ctx{4};
  std::vector<std::byte> buf = std::vector<std::byte>(4096);
  Iocb cb{};
};

// One thread polls (get_events) and completes the last polled iocb from
// inside the driver; another reaps that event at once and removes the
// disk. Removal must wait until the poller has left the driver.
TEST_F(RemovalPoll, RemovalWaitsForAPollerStillInsideTheDriver) {
  ASSERT_NO_FATAL_FAILURE(SubmitPolledRead("poll-linger"));

  std::thread poller([&] {
    IoEvent ev;
    ctx.get_events(1, {&ev, 1}, 1s);  // polls; the event is reaped below
  });
  MustHappen([&] { return shared->lingering.load(); }, "the poller completed the iocb");
  IoEvent ev;
  ASSERT_EQ(ctx.get_events(1, {&ev, 1}, 1s), 1) << "posted by the poller";
  EXPECT_EQ(ev.res, 4096);
  disk->shutdown();  // what DiskRegistry::remove does, then the last share goes
  disk.reset();
  poller.join();
  EXPECT_TRUE(shared->destroyed.load());
  EXPECT_FALSE(shared->destroyed_under_poller.load())
      << "the disk and its driver were destroyed while a poller was inside the driver";
}

// Polled I/O completes only when polled, and an IoContext whose owner
// never reaps it (nor destroys it) never polls again. Removal must not
// wait for it forever: it polls the driver itself while it waits for the
// I/O in flight, and the iocb's event is posted for whoever reaps later.
TEST_F(RemovalPoll, RemovalCompletesPolledIoThatNobodyPolls) {
  ASSERT_NO_FATAL_FAILURE(SubmitPolledRead("poll-unreaped"));
  std::atomic<bool> removed{false};
  std::thread remover([&] {
    disk->shutdown();
    removed.store(true);
  });
  const bool in_time = Eventually([&] { return removed.load(); }, 2s);
  IoEvent ev{};
  // Reaping polls too: this lets a removal that waits for us finish.
  EXPECT_EQ(ctx.get_events(1, {&ev, 1}, 5s), 1);
  remover.join();
  EXPECT_TRUE(in_time) << "removal waited for a poller that never comes";
  EXPECT_EQ(ev.res, 4096);
}

// --- more submitting threads than per-thread slots ------------------------------

// Threads beyond the per-thread slots share one. Runs `fn` on a thread that
// is on the shared slot; Holder keeps the exclusive slots taken meanwhile.
class SharedSlotThreads {
 public:
  SharedSlotThreads() {
    // Take every free exclusive slot with a parked thread.
    for (unsigned i = 0; i < kPercpuSlots; ++i) {
      std::atomic<int> state{0};  // 1: exclusive, 2: shared
      fillers_.emplace_back([this, &state] {
        state.store(this_slot().exclusive ? 1 : 2);
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stop_; });
      });
      while (state.load() == 0) std::this_thread::yield();
      if (state.load() == 2) break;
    }
  }
  ~SharedSlotThreads() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : fillers_) t.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::vector<std::thread> fillers_;
};

// A relay of threads on the shared slot keeps at least one of them in the
// disk's submit path at every instant: each stays in its bio's callback
// (which runs inside submit_bio, inline) until another has entered. Removal
// begun meanwhile must not wait for the relay to pause: it waits for the
// threads that were inside when it looked, and those that come after are
// refused. (With one count for the whole shared slot it waited for the
// count to be zero, which more than 16 busy threads may never let happen.)
TEST(RemovalSharedSlot, RemovalIsNotStarvedByThreadsThatKeepArriving) {
  SharedSlotThreads others;
  DiskRegistry reg;
  auto disk = reg.create("null:16M");
  constexpr int kRelay = 3;
  struct Relay {
    std::atomic<uint64_t> entries{0};
    std::atomic<bool> stop{false};
    // The callback: stay until another thread has entered after us.
    static void hold(Bio& b) {
      auto& r = *static_cast<Relay*>(b.context());
      const uint64_t me = r.entries.fetch_add(1) + 1;
      while (r.entries.load() == me && !r.stop.load()) std::this_thread::yield();
    }
  } relay_state;
  std::atomic<uint64_t>& entries = relay_state.entries;
  std::atomic<bool>& stop = relay_state.stop;
  std::atomic<int> not_shared{0}, offline{0};
  std::vector<std::thread> relay;
  for (int t = 0; t < kRelay; ++t) {
    relay.emplace_back([&] {
      if (this_slot().exclusive) not_shared.fetch_add(1);
      std::vector<std::byte> buf(4096);
      Segment seg(buf.data(), 4096);
      while (!stop.load()) {
        Bio bio;
        bio.init(disk.get(), Op::kRead, 0, {&seg, 1}, &Relay::hold, &relay_state);
        submit_bio(bio);
        if (bio.status() == Status::kOffline) offline.fetch_add(1);
      }
    });
  }
  MustHappen([&] { return entries.load() > 100; }, "the relay runs");
  const auto start = Clock::now();
  std::atomic<bool> removed{false};
  std::thread remover([&] {
    reg.remove(disk->name());
    removed.store(true);
  });
  const bool in_time = Eventually([&] { return removed.load(); }, 2s);
  const auto took = Clock::now() - start;
  stop.store(true);
  remover.join();
  for (auto& t : relay) t.join();
  ASSERT_EQ(not_shared.load(), 0) << "the relay must run on the shared slot";
  EXPECT_TRUE(in_time) << "removal waited for a relay of late arrivals to pause";
  EXPECT_GT(offline.load(), 0) << "arrivals after removal began were refused";
  std::printf("removal took %lld ms under the relay\n",
              static_cast<long long>(
                  std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
}

#ifdef BLKSTACK_DEBUG_CHECKS
// A driver that completes each bio inline and then stays inside submit()
// until told to leave (as a real driver touches its own state after the
// callback): whoever waits for the disk to be idle must wait for it.
class LingeringSubmitDriver final : public BioDriver {
 public:
  std::atomic<bool> inside{false};
  std::atomic<bool> leave{false};
  void submit(Bio& bio) override {
    bio.complete(Status::kOk);
    inside.store(true);
    while (!leave.load()) std::this_thread::yield();
    inside.store(false);
  }
};

// A thread on the shared slot reads the epoch, and is held there (the hook:
// a preemption) while a whole freeze/unfreeze flips the epoch. It then
// counts itself in the half it read, which is now the half new arrivals
// count in, gets into the driver and stays there. The next freeze must
// still wait for it: the driver is in use.
TEST(RemovalSharedSlot, AThreadThatReadTheEpochBeforeAFlipIsWaitedFor) {
  SharedSlotThreads others;
  auto driver_owned = std::make_unique<LingeringSubmitDriver>();
  LingeringSubmitDriver& driver = *driver_owned;
  auto disk =
      std::make_shared<Disk>("epoch-stale", 8192, QueueLimits{}, std::move(driver_owned));
  static std::atomic<int> held{0};  // 1: in the hook, 2: let go
  held.store(0);
  Disk::shared_slot_entry_hook.store(+[](Disk&) {
    int expected = 0;
    if (!held.compare_exchange_strong(expected, 1)) return;
    while (held.load() != 2) std::this_thread::yield();
  });
  AtExit no_hook([] { Disk::shared_slot_entry_hook.store(nullptr); });
  std::atomic<bool> on_shared{false};
  std::thread submitter([&] {
    on_shared.store(!this_slot().exclusive);
    std::vector<std::byte> buf(4096);
    Segment seg(buf.data(), 4096);
    Bio bio;
    bio.init(disk.get(), Op::kRead, 0, {&seg, 1}, nullptr, nullptr);
    submit_bio(bio);
  });
  MustHappen([&] { return held.load() == 1; }, "the submitter read the epoch");
  disk->freeze();  // flips the epoch; nobody counted in the old half yet
  disk->unfreeze();
  held.store(2);
  MustHappen([&] { return driver.inside.load(); }, "the submitter is inside the driver");
  std::atomic<bool> frozen{false};
  std::thread freezer([&] {
    disk->freeze();
    frozen.store(true);
  });
  const bool frozen_while_inside = Eventually([&] { return frozen.load(); }, 300ms);
  driver.leave.store(true);
  submitter.join();
  freezer.join();
  disk->unfreeze();
  ASSERT_TRUE(on_shared.load()) << "the submitter must run on the shared slot";
  EXPECT_FALSE(frozen_while_inside)
      << "freeze returned while a thread on the shared slot was inside the driver";
}
#endif

// --- the guard: removal under load ------------------------------------------------

// Disks are created and removed over and over while 18 threads (more than
// the per-thread slots) submit to them, through one IoContext, and two
// reapers poll and reap; one of the reapers also does the removing, as the
// serve loop does. Polled I/O goes to a file disk with a poll queue (an
// io_uring completed only by pollers), the rest to null and ram disks in
// mq mode, some split. Every iocb gets exactly one event: its byte count,
// or the removed disk's -ENXIO. Meant for ASan (a use-after-free of a
// disk, a queue or a ring is the failure this looks for).
TEST(RemovalRaces, DisksRemovedUnderPollersReapersAndManySubmitters) {
  char tmpl[] = "/var/tmp/blkstack-removal-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  AtExit rm{[&] { std::filesystem::remove_all(dir); }};

  constexpr int kSubmitters = 18;
  constexpr uint32_t kLen = 8192;
  const auto run_for = 3s;
  DiskRegistry reg;
  IoContext ctx(64);
  std::mutex disks_mu;
  std::vector<std::shared_ptr<Disk>> disks;  // the current generation
  int generation = 0;
  auto make_generation = [&] {
    const std::string g = std::to_string(generation++);
    return std::vector<std::shared_ptr<Disk>>{
        reg.create("file:" + dir + "/img" + g + ",size=4M,poll_queues=1,name=f" + g),
        reg.create("null:16M,queue_mode=mq,depth=4,name=n" + g),
        reg.create("ram:4M,queue_mode=mq,depth=2,max_sectors=8,name=r" + g),
    };
  };
  disks = make_generation();

  struct Slot {
    std::shared_ptr<Disk> disk;  // held until the event is reaped
    Iocb cb;
    std::atomic<bool> done{true};
    std::vector<std::byte> buf = std::vector<std::byte>(kLen);
  };
  std::vector<Slot> slots(kSubmitters);
  std::atomic<bool> stop{false};
  // Set once every submitter has returned: a submitter past its check of
  // `stop` still counts and submits one more iocb, and a reaper that left
  // on stop && reaped == submitted before that would leave it unreaped.
  std::atomic<bool> submitters_done{false};
  std::atomic<uint64_t> submitted{0}, reaped{0}, bad{0}, offline{0}, removals{0};
  const int64_t offline_res = -status_to_errno(Status::kOffline);
  std::mutex bad_mu;
  std::string bad_seen;  // the first few bad events, for the failure message
  auto note_bad = [&](const std::string& what) {
    bad.fetch_add(1);
    std::lock_guard lock(bad_mu);
    if (bad_seen.size() < 2000) bad_seen += what + "\n";
  };

  std::vector<std::thread> threads;
  for (int t = 0; t < kSubmitters; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      Slot& slot = slots[t];
      while (!stop.load()) {
        if (!slot.done.load(std::memory_order_acquire)) {
          std::this_thread::yield();
          continue;
        }
        slot.disk.reset();  // may be the last share of a removed disk
        {
          std::lock_guard lock(disks_mu);
          slot.disk = disks[rng() % disks.size()];
        }
        Disk* d = slot.disk.get();
        const uint64_t off = (rng() % 256) * kLen;
        const bool write = rng() % 2;
        slot.cb = write ? Iocb::pwrite(d, slot.buf.data(), kLen, off, uint64_t(t))
                        : Iocb::pread(d, slot.buf.data(), kLen, off, uint64_t(t));
        slot.cb.flags = kIocbHipri;  // polled where the disk can be
        slot.done.store(false, std::memory_order_relaxed);
        // Counted before it can be reaped: the reapers stop only once
        // every iocb counted here has its event.
        submitted.fetch_add(1);
        int r;
        while ((r = aio_testing::SubmitOne(ctx, slot.cb)) == -EAGAIN)
          std::this_thread::yield();
        if (r != 1) {
          note_bad("submit of " + d->name() + " returned " + std::to_string(r));
          submitted.fetch_sub(1);
          slot.done.store(true);
        }
      }
      // The disk is held until the last event is reaped, as above.
      while (!slot.done.load(std::memory_order_acquire)) std::this_thread::yield();
      slot.disk.reset();
    });
  }
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      IoEvent ev[16];
      uint64_t since_removal = 0;
      auto remove_generation = [&] {
        std::vector<std::shared_ptr<Disk>> old;
        {
          auto fresh = make_generation();
          std::lock_guard lock(disks_mu);
          old.swap(disks);
          disks = std::move(fresh);
        }
        for (auto& d : old) reg.remove(d->name());  // waits for what is in flight
        removals.fetch_add(1);
      };
      while (!submitters_done.load() || reaped.load() < submitted.load()) {
        const int n = ctx.get_events(1, ev, 20ms);
        for (int k = 0; k < n; ++k) {
          const IoEvent& e = ev[k];
          if (e.user_data >= kSubmitters || e.obj != &slots[e.user_data].cb) {
            note_bad("an event of no iocb of ours");
            continue;
          }
          if (e.res == offline_res) {
            offline.fetch_add(1);
          } else if (e.res != kLen) {
            const Slot& s = slots[e.user_data];
            note_bad(std::string(s.cb.op == IoOp::kPwrite ? "write" : "read") + " of " +
                     s.disk->name() + " ended with " + std::to_string(e.res));
          }
          slots[e.user_data].done.store(true, std::memory_order_release);
        }
        reaped.fetch_add(uint64_t(n));
        since_removal += uint64_t(n);
        if (r == 0 && !stop.load() && since_removal >= 200) {
          since_removal = 0;
          remove_generation();  // the reaper removes, as in the issue
        }
      }
    });
  }
  // At least run_for, and on until a few removals happened under load: a
  // busy machine (a build beside the tests) may need longer for them.
  std::this_thread::sleep_for(run_for);
  Eventually([&] { return removals.load() > 3; }, 30s);
  stop.store(true);
  for (int t = 0; t < kSubmitters; ++t) threads[t].join();
  submitters_done.store(true);
  for (auto& t : threads)
    if (t.joinable()) t.join();
  {
    std::lock_guard lock(disks_mu);
    for (auto& d : disks) reg.remove(d->name());
    disks.clear();
  }
  EXPECT_EQ(bad.load(), 0u) << bad_seen;
  EXPECT_EQ(reaped.load(), submitted.load()) << "one event per iocb";
  EXPECT_EQ(ctx.in_flight(), 0u);
  EXPECT_GT(removals.load(), 3u) << "removal under load happened";
  std::printf("%llu iocbs, %llu removals, %llu refused as removed\n",
              static_cast<unsigned long long>(submitted.load()),
              static_cast<unsigned long long>(removals.load()),
              static_cast<unsigned long long>(offline.load()));
}

}  // namespace
}  // namespace blkstack
