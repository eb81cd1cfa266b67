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
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "aio_test_util.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/io_context.h"
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

// One thread polls (get_events) and completes the last polled iocb from
// inside the driver; another reaps that event at once and removes the
// disk. Removal must wait until the poller has left the driver.
TEST(RemovalPoll, RemovalWaitsForAPollerStillInsideTheDriver) {
  auto shared = std::make_shared<LingeringPollDriver::Shared>();
  auto disk = std::make_shared<Disk>("poll-linger", 8192, QueueLimits{},
                                     std::make_unique<LingeringPollDriver>(shared));
  IoContext ctx(4);
  std::vector<std::byte> buf(4096);
  Iocb cb =
      aio_testing::MakeIocb(IoOp::kPread, disk.get(), buf.data(), 4096, 0, 1, kIocbHipri);
  ASSERT_EQ(aio_testing::SubmitOne(ctx, cb), 1);

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

}  // namespace
}  // namespace blkstack
