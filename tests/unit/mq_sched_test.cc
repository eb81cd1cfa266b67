// Two-level tags and the scheduler hooks, proven with a test-only
// scheduler registered at run time that dispatches in descending sector
// order: the order the driver sees is the scheduler's, not submission's.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "blkstack/driver/scheduler.h"
#include "blkstack/error.h"
#include "blkstack/io_context.h"
#include "blkstack/ioprio.h"
#include "mq_test_util.h"
#include "queue/tag_set.h"
#include "verified_workload.h"

namespace blkstack {
namespace {

using namespace mq_testing;

// What the scheduler keeps per request, in Request::sched_priv().
struct DescPriv {
  uint32_t magic;
  int prepared, completed, finished;
};
constexpr uint32_t kMagic = 0x5eed5eed;

struct DescCounts {
  std::atomic<int> prepared{0}, completed{0}, finished{0}, requeued{0};
  std::atomic<int> bio_merges{0}, requests_merged{0}, bad_priv{0};
};

// Holds requests sorted by sector; dispatches the highest first.
class DescScheduler final : public Scheduler {
 public:
  static inline DescCounts counts;

  void prepare_request(Request& rq) override {
    auto* p = rq.sched_priv_as<DescPriv>();
    *p = DescPriv{kMagic, 1, 0, 0};
    counts.prepared++;
  }
  void insert(HwQueue&, RequestList& list, bool) override {
    std::lock_guard lock(mu_);
    while (Request* rq = list.pop_front()) {
      seen_ioprio_.push_back(rq->ioprio());
      seen_issuer_.push_back(rq->issuer());
      held_.insert(std::upper_bound(held_.begin(), held_.end(), rq, ByPos), rq);
    }
    count_.store(held_.size());
  }
  Request* dispatch(HwQueue&) override {
    std::lock_guard lock(mu_);
    if (held_.empty()) return nullptr;
    Request* rq = held_.back();
    held_.pop_back();
    count_.store(held_.size());
    return rq;
  }
  bool has_work(const HwQueue&) const override { return count_.load() != 0; }
  void requeue_request(Request&) override { counts.requeued++; }
  void completed(Request& rq, uint64_t) override {
    auto* p = rq.sched_priv_as<DescPriv>();
    if (p->magic != kMagic || p->completed++ != 0) counts.bad_priv++;
    counts.completed++;
  }
  void finish_request(Request& rq) override {
    auto* p = rq.sched_priv_as<DescPriv>();
    if (p->magic != kMagic || p->finished++ != 0) counts.bad_priv++;
    p->magic = 0;
    counts.finished++;
  }
  bool bio_merge(Queue& q, HwQueue&, Bio& bio) override {
    Request* absorbed = nullptr;
    {
      std::lock_guard lock(mu_);
      auto it = std::find_if(held_.begin(), held_.end(), [&](Request* rq) {
        return q.can_merge(*rq, bio) != Queue::Merge::kNone;
      });
      if (it == held_.end()) return false;
      q.merge_bio(**it, bio, q.can_merge(**it, bio));
      counts.bio_merges++;
      // Sorted by sector: a grown request may now touch its neighbour.
      if (it + 1 != held_.end() && q.requests_mergeable(**it, **(it + 1))) {
        absorbed = *(it + 1);
        q.absorb_request(**it, *absorbed);  // calls requests_merged: erases it
      } else if (it != held_.begin() && q.requests_mergeable(**(it - 1), **it)) {
        absorbed = *it;
        q.absorb_request(**(it - 1), *absorbed);
      }
    }
    if (absorbed) q.free_request(*absorbed);
    return true;
  }
  void requests_merged(Request&, Request& next) override {
    held_.erase(std::find(held_.begin(), held_.end(), &next));
    count_.store(held_.size());
    counts.requests_merged++;
  }

  size_t held() const { return count_.load(); }
  std::vector<uint16_t> seen_ioprio() {
    std::lock_guard lock(mu_);
    return seen_ioprio_;
  }
  std::vector<IssuerId> seen_issuer() {
    std::lock_guard lock(mu_);
    return seen_issuer_;
  }

 private:
  static bool ByPos(const Request* a, const Request* b) { return a->pos() < b->pos(); }
  std::mutex mu_;
  std::vector<Request*> held_;  // ascending sector
  std::atomic<size_t> count_{0};
  std::vector<uint16_t> seen_ioprio_;
  std::vector<IssuerId> seen_issuer_;
};

const SchedulerType kDesc{"test-desc", "tests: highest sector first",
                          [](Queue&) -> std::unique_ptr<Scheduler> {
                            return std::make_unique<DescScheduler>();
                          },
                          sizeof(DescPriv)};

void RegisterOnce() {
  static const bool done = [] {
    register_scheduler_type(kDesc);
    return true;
  }();
  (void)done;
}

void ResetCounts() {
  auto& c = DescScheduler::counts;
  c.prepared = c.completed = c.finished = c.requeued = 0;
  c.bio_merges = c.requests_merged = c.bad_priv = 0;
}

MqDisk DescDisk(unsigned depth, unsigned nr_requests,
                TestDriver::Mode mode = TestDriver::Mode::kHold,
                unsigned nr_hw_queues = 1, QueueLimits lim = TestLimits()) {
  RegisterOnce();
  ResetCounts();
  TagSetConfig config;
  config.queue_depth = depth;
  config.nr_hw_queues = nr_hw_queues;
  MqDisk d = MakeMqDisk(config, lim, mode);
  d.queue().set_nr_requests(nr_requests);
  d.queue().set_scheduler("test-desc");
  return d;
}

DescScheduler& Sched(const MqDisk& d) {
  return *static_cast<DescScheduler*>(d.queue().scheduler());
}

// Every one of `requests` scheduler requests was prepared and finished
// once, with its private area intact, and no tag of either level is held.
void ExpectAllFinishedAndTagsFree(MqDisk& d, int requests) {
  const auto& c = DescScheduler::counts;
  EXPECT_EQ(c.prepared, requests);
  EXPECT_EQ(c.finished, requests);
  EXPECT_EQ(c.bad_priv, 0);
  EXPECT_EQ(d.hctx().sched_tags()->alloc.in_use(), 0u);
  EXPECT_EQ(d.tags_in_use(), 0u);
}

TEST(MqSched, RegisteredAtRunTimeAndNamesAreUnique) {
  RegisterOnce();
  EXPECT_EQ(&find_scheduler_type("test-desc"), &kDesc);
  EXPECT_THROW(register_scheduler_type(kDesc), Error);
  EXPECT_THROW(find_scheduler_type("nope"), Error);
}

TEST(MqSched, NrRequestsDefaultsAndRange) {
  TagSetConfig config;
  config.queue_depth = 4;
  MqDisk d = MakeMqDisk(config);
  EXPECT_EQ(d.queue().nr_requests(), 8u);
  EXPECT_THROW(d.queue().set_nr_requests(0), Error);
  EXPECT_THROW(d.queue().set_nr_requests(Queue::kMaxNrRequests + 1), Error);
}

// Driver depth 4, nr_requests 64: the driver holds 4, the scheduler 60,
// and after release the driver sees them in the scheduler's order.
TEST(MqSched, HoldsSixtyRequestsAndDecidesTheirOrder) {
  MqDisk d = DescDisk(4, 64);
  TestBios bios;
  for (unsigned i = 0; i < 64; ++i)
    AddBio(bios).init_data(*d.disk, Op::kWrite, i * 16, 4, 1);
  for (auto& b : bios) b->submit();
  EXPECT_EQ(d.driver->held(), 4u);
  EXPECT_EQ(Sched(d).held(), 60u);
  EXPECT_EQ(d.hctx().sched_tags()->alloc.in_use(), 64u);
  EXPECT_EQ(d.tags_in_use(), 4u);
  // The 65th request has no scheduler tag: NOWAIT fails, else it parks.
  TestBio& nowait = AddBio(bios);
  nowait.init_data(*d.disk, Op::kWrite, 8, 4, 2);
  nowait.bio.set_flags(BioFlag::kNowait);
  nowait.submit();
  ASSERT_TRUE(nowait.done());
  EXPECT_EQ(nowait.status.load(), Status::kAgain);
  bios.pop_back();
  TestBio& parked = AddBio(bios);
  parked.init_data(*d.disk, Op::kWrite, 8, 4, 2);
  parked.submit();
  EXPECT_FALSE(parked.done());
  EXPECT_EQ(Sched(d).held(), 60u);

  while (d.driver->complete_next()) {
  }
  ASSERT_TRUE(AllDone(bios));
  std::vector<uint64_t> order;
  for (const Seen& s : d.driver->calls()) order.push_back(s.pos);
  ASSERT_EQ(order.size(), 65u);
  std::vector<uint64_t> want = {0, 16, 32, 48};
  for (unsigned i = 63; i >= 4; --i) want.push_back(i * 16);
  want.push_back(8);  // resumed after the first completion, lowest
  EXPECT_EQ(order, want);
  for (auto& b : bios) EXPECT_EQ(b->status.load(), Status::kOk);
  EXPECT_EQ(DescScheduler::counts.completed, 65);
  ExpectAllFinishedAndTagsFree(d, 65);
}

TEST(MqSched, MergesRequeuesAndCallsEveryHookOnce) {
  MqDisk d = DescDisk(1, 16);
  TestBios bios;
  auto write = [&](uint64_t sector, uint8_t fill) {
    TestBio& b = AddBio(bios);
    b.init_data(*d.disk, Op::kWrite, sector, 4, fill);
    b.submit();
  };
  write(100, 1);  // A: to the driver, held
  write(0, 2);    // B: in the scheduler
  write(4, 3);    // back merge into B
  write(12, 4);   // D: a request of its own
  EXPECT_EQ(Sched(d).held(), 2u);
  write(8, 5);  // into B, which then joins D
  EXPECT_EQ(Sched(d).held(), 1u);
  auto& c = DescScheduler::counts;
  EXPECT_EQ(c.bio_merges, 2);
  EXPECT_EQ(c.requests_merged, 1);
  EXPECT_EQ(c.finished, 1);  // D, freed by the merge

  // The driver refuses the merged request once, then takes it; the test
  // requeues it, and it comes back through the scheduler.
  d.driver->resource_next = 1;
  ASSERT_TRUE(d.driver->complete_next());  // A
  ASSERT_TRUE(Eventually([&] { return d.driver->held() == 1; }));
  Request* rq = d.driver->take();
  ASSERT_NE(rq, nullptr);
  EXPECT_EQ(rq->pos(), 0u);
  EXPECT_EQ(rq->bytes(), 16u << kSectorShift);
  EXPECT_GE(rq->tag(), 0);
  d.queue().requeue_request(*rq);
  ASSERT_TRUE(Eventually([&] { return d.driver->held() == 1; }));
  EXPECT_EQ(c.requeued, 1);
  d.driver->drain();
  ASSERT_TRUE(AllDone(bios));
  for (auto& b : bios) {
    EXPECT_EQ(b->calls.load(), 1);
    EXPECT_EQ(b->status.load(), Status::kOk);
  }
  auto data = d.driver->read_store(0, 16 << kSectorShift);
  const uint8_t fills[4] = {2, 3, 5, 4};  // sectors 0, 4, 8, 12
  for (unsigned i = 0; i < 16 * kSectorSize; ++i) {
    ASSERT_EQ(data[i], std::byte{fills[i / (4 * kSectorSize)]}) << i;
  }
  EXPECT_EQ(c.prepared, 3);
  EXPECT_EQ(c.completed, 2);
  EXPECT_EQ(c.finished, 3);
  EXPECT_EQ(c.bad_priv, 0);
}

TEST(MqSched, IoprioAndIssuerReachTheSchedulerAndDifferentPriosDoNotMerge) {
  MqDisk d = DescDisk(1, 16);
  TestBios bios;
  TestBio& first = AddBio(bios);
  first.init_data(*d.disk, Op::kWrite, 1000, 4);
  first.submit();  // holds the one driver tag
  TestBio& rt = AddBio(bios);
  rt.init_data(*d.disk, Op::kWrite, 0, 4);
  rt.bio.set_ioprio(ioprio_value(IoprioClass::kRealtime, 2));
  rt.submit();
  TestBio& be = AddBio(bios);
  be.init_data(*d.disk, Op::kWrite, 4, 4);  // adjacent, but best effort
  be.bio.set_ioprio(ioprio_value(IoprioClass::kBestEffort, 2));
  be.submit();
  EXPECT_EQ(Sched(d).held(), 2u);
  EXPECT_EQ(DescScheduler::counts.bio_merges, 0);

  IoContext ctx(4), other(4);
  std::vector<std::byte> buf(4096);
  Iocb cb = Iocb::pwrite(d.disk.get(), buf.data(), buf.size(), 1 << 20);
  cb.flags = kIocbIoprio;
  cb.reqprio = ioprio_value(IoprioClass::kIdle, 7);
  Iocb* list[] = {&cb};
  ASSERT_EQ(ctx.submit(list), 1);
  Iocb cb2 = Iocb::pwrite(d.disk.get(), buf.data(), buf.size(), 2 << 20);
  Iocb* list2[] = {&cb2};
  ASSERT_EQ(other.submit(list2), 1);
  Iocb bad = cb;
  bad.reqprio = 0xffff;
  Iocb* list3[] = {&bad};
  EXPECT_EQ(ctx.submit(list3), -EINVAL);

  auto prios = Sched(d).seen_ioprio();
  auto issuers = Sched(d).seen_issuer();
  // The first request went through the scheduler too.
  EXPECT_EQ(prios.size(), 5u);
  if (prios.size() == 5) {
    EXPECT_EQ(ioprio_class(prios[1]), IoprioClass::kRealtime);
    EXPECT_EQ(ioprio_level(prios[1]), 2u);
    EXPECT_EQ(ioprio_class(prios[2]), IoprioClass::kBestEffort);
    EXPECT_EQ(prios[3], ioprio_value(IoprioClass::kIdle, 7));
    EXPECT_EQ(prios[4], 0);
    EXPECT_EQ(issuers[1], this_thread_issuer());
    EXPECT_EQ(issuers[2], this_thread_issuer());
    EXPECT_NE(issuers[3], this_thread_issuer());
    EXPECT_NE(issuers[4], issuers[3]);
    EXPECT_NE(issuers[3], 0u);
  }

  d.driver->drain();
  IoEvent ev[2];
  EXPECT_EQ(ctx.get_events(1, ev), 1);
  EXPECT_EQ(other.get_events(1, ev), 1);
  ASSERT_TRUE(AllDone(bios));
}

// Four threads write and read back against a model (with FUA writes and
// flushes through the flush machine, and refusals the queue retries) while
// the scheduler switches none <-> test-desc 40 times.
TEST(MqSched, SwitchingSchedulersUnderLoadLosesNothing) {
  QueueLimits lim = TestLimits();
  lim.volatile_write_cache = true;  // PREFLUSH/FUA go through the flush machine
  MqDisk d = DescDisk(4, 32, TestDriver::Mode::kThread, /*nr_hw_queues=*/2, lim);
  d.driver->set_max_delay(std::chrono::microseconds(20));
  VerifiedWorkload load(*d.disk);
  for (int i = 0; i < 40; ++i) {
    if (i % 4 == 1) d.driver->resource_next = 3;
    d.queue().set_scheduler(i % 2 ? "test-desc" : "none");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  load.stop();
  EXPECT_EQ(load.failures(), 0);
  EXPECT_GT(load.ios(), 100);
  EXPECT_TRUE(d.driver->violations().empty());
  EXPECT_EQ(DescScheduler::counts.bad_priv, 0);
  EXPECT_GT(DescScheduler::counts.prepared.load(), 0);  // the scheduler did run
  EXPECT_EQ(DescScheduler::counts.prepared.load(), DescScheduler::counts.finished.load());
}

// --- timeouts on scheduler requests --------------------------------------------

constexpr uint64_t kMs = 1'000'000;

MqDisk DescTimeoutDisk(unsigned depth, unsigned nr_requests,
                       QueueLimits lim = TestLimits()) {
  RegisterOnce();
  ResetCounts();
  TagSetConfig config;
  config.queue_depth = depth;
  config.timeout_ns = 5 * kMs;
  MqDisk d = MakeMqDisk(config, lim, TestDriver::Mode::kHold);
  d.queue().set_nr_requests(nr_requests);
  d.queue().set_scheduler("test-desc");
  return d;
}

// The request the driver holds past its deadline is a scheduler request:
// the scan finds it, it fails once, and both its tags go back, so the one
// the scheduler held reaches the driver.
TEST(MqSchedTimeout, AHeldSchedulerRequestTimesOutAndGivesBothTagsBack) {
  MqDisk d = DescTimeoutDisk(1, 4);
  TestBios bios;
  TestBio& a = AddBio(bios);
  a.init_data(*d.disk, Op::kWrite, 0, 4, 1);
  a.submit();
  TestBio& b = AddBio(bios);
  b.init_data(*d.disk, Op::kWrite, 100, 4, 2);
  b.submit();
  ASSERT_EQ(d.driver->held(), 1u);
  ASSERT_EQ(Sched(d).held(), 1u);
  ASSERT_TRUE(Eventually([&] { return a.done(); }))
      << "the scheduler request never timed out";
  EXPECT_EQ(a.status.load(), Status::kTimeout);
  // (b may time out too on a slow machine: then it is ended, not held.)
  ASSERT_TRUE(Eventually([&] {
    return Sched(d).held() == 0 && (d.driver->held() == 1 || b.done());
  })) << "the timed-out request kept its driver tag";
  d.driver->drain();
  ASSERT_TRUE(Eventually([&] { return b.done(); }));
  EXPECT_TRUE(b.status.load() == Status::kOk || b.status.load() == Status::kTimeout);
  for (auto& x : bios) EXPECT_EQ(x->calls.load(), 1);
  ExpectAllFinishedAndTagsFree(d, 2);
}

// kFailWhenDone: the bio fails only when the driver gives the request
// back, and then both tags are free.
TEST(MqSchedTimeout, FailWhenDoneEndsTheSchedulerRequestOnTheLateCompletion) {
  MqDisk d = DescTimeoutDisk(1, 4);
  std::atomic<int> timeouts{0};
  d.driver->set_timeout_hook([&](Request&) {
    timeouts++;
    return TimeoutAction::kFailWhenDone;
  });
  TestBio a;
  a.init_data(*d.disk, Op::kRead, 0, 4);
  a.submit();
  ASSERT_TRUE(Eventually([&] { return timeouts.load() > 0; }));
  EXPECT_FALSE(a.done());
  ASSERT_TRUE(d.driver->complete_next());
  ASSERT_TRUE(a.done());
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(a.status.load(), Status::kTimeout);
  EXPECT_EQ(DescScheduler::counts.finished, 1);
  EXPECT_EQ(d.hctx().sched_tags()->alloc.in_use(), 0u);
  EXPECT_EQ(d.tags_in_use(), 0u);
}

// A handler that requeues: the driver tag goes back and the request goes
// through the scheduler again (requeue_request), then completes once.
TEST(MqSchedTimeout, AHandlerThatRequeuesSendsItBackThroughTheScheduler) {
  MqDisk d = DescTimeoutDisk(1, 4);
  std::atomic<int> timeouts{0};
  TestDriver* drv = d.driver;
  Queue* q = &d.queue();
  d.driver->set_timeout_hook([&, drv, q](Request& rq) {
    if (timeouts++ == 0 && drv->forget(&rq)) {
      q->requeue_request(rq);
      return TimeoutAction::kDone;
    }
    return TimeoutAction::kResetTimer;
  });
  TestBio a;
  a.init_data(*d.disk, Op::kWrite, 0, 4, 7);
  a.submit();
  ASSERT_TRUE(Eventually([&] { return DescScheduler::counts.requeued.load() == 1; }));
  ASSERT_TRUE(Eventually([&] { return d.driver->held() == 1; }));
  d.driver->drain();
  ASSERT_TRUE(a.done());
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(a.status.load(), Status::kOk);
  EXPECT_EQ(d.driver->nr_calls(Op::kWrite), 2u);
  EXPECT_EQ(DescScheduler::counts.finished, 1);
  EXPECT_EQ(d.hctx().sched_tags()->alloc.in_use(), 0u);
  EXPECT_EQ(d.tags_in_use(), 0u);
}

// The flush request of a scheduler queue times out too, and gives its
// driver tag back: the data that waits behind it goes out.
TEST(MqSchedTimeout, TheFlushRequestTimesOutAndGivesItsDriverTagBack) {
  QueueLimits lim = TestLimits();
  lim.volatile_write_cache = true;
  MqDisk d = DescTimeoutDisk(1, 4, lim);
  TestBios bios;
  TestBio& f = AddBio(bios);
  f.init_range(*d.disk, Op::kFlush, 0, 0);
  f.submit();
  ASSERT_EQ(d.driver->held(), 1u);
  TestBio& w = AddBio(bios);
  w.init_data(*d.disk, Op::kWrite, 8, 4, 3);
  w.submit();
  ASSERT_TRUE(Eventually([&] { return f.done(); })) << "the flush never timed out";
  EXPECT_EQ(f.status.load(), Status::kTimeout);
  ASSERT_TRUE(Eventually([&] { return d.driver->held() == 1 || w.done(); }))
      << "the write never got the flush's driver tag";
  d.driver->drain();
  ASSERT_TRUE(Eventually([&] { return w.done(); }));
  EXPECT_TRUE(w.status.load() == Status::kOk || w.status.load() == Status::kTimeout);
  for (auto& x : bios) EXPECT_EQ(x->calls.load(), 1);
  EXPECT_EQ(d.hctx().sched_tags()->alloc.in_use(), 0u);
  EXPECT_EQ(d.tags_in_use(), 0u);
}

// --- nr_requests while bios are parked for a scheduler tag ----------------------

TEST(MqSched, SetNrRequestsWhileBiosAreParkedLosesNone) {
  MqDisk d = DescDisk(1, 2);
  TestBios bios;
  for (unsigned i = 0; i < 6; ++i) {
    AddBio(bios).init_data(*d.disk, Op::kWrite, i * 16, 4, static_cast<uint8_t>(i + 1));
  }
  for (auto& b : bios) b->submit();  // 1 in the driver, 1 in the scheduler, 4 parked
  ASSERT_EQ(d.driver->held(), 1u);
  ASSERT_EQ(Sched(d).held(), 1u);
  std::atomic<bool> resized{false};
  std::thread t([&] {
    d.queue().set_nr_requests(8);
    resized = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(resized.load()) << "resized under parked bios without waiting for them";
  while (!AllDone(bios)) {
    if (!d.driver->complete_next()) std::this_thread::yield();
  }
  t.join();
  for (auto& b : bios) {
    EXPECT_EQ(b->calls.load(), 1);
    EXPECT_EQ(b->status.load(), Status::kOk);
  }
  EXPECT_EQ(d.queue().nr_requests(), 8u);
  EXPECT_EQ(d.hctx().sched_tags()->depth, 8u);
  TestBios more;
  for (unsigned i = 0; i < 8; ++i) AddBio(more).init_data(*d.disk, Op::kWrite, i * 16, 4);
  for (auto& b : more) b->submit();
  EXPECT_EQ(Sched(d).held(), 7u);
  d.driver->drain();
  ASSERT_TRUE(AllDone(more));
  EXPECT_EQ(DescScheduler::counts.bad_priv, 0);
}

// A completion thread hands freed scheduler tags to parked bios; a resumed
// bio may end right there (the driver fails it in queue_rq), and then a
// resize waiting for the queue to drain may free those tags while that
// thread is still in its hand-out loop. Under ASan a use after free shows.
TEST(MqSched, ResizingWhileCompletionsResumeParkedBiosIsSafe) {
  MqDisk d = DescDisk(2, 2, TestDriver::Mode::kThread);
  d.driver->set_hook([](HwQueue&, Request& rq, bool) {
    return rq.pos() / 16 % 3 == 0 ? Status::kIoError : Status::kOk;
  });
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0}, ios{0};
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      unsigned i = 0;
      while (!stop.load()) {
        TestBios bios;
        std::vector<Status> want;
        for (unsigned k = 0; k < 4; ++k, ++i) {
          // Apart, so that none merge: each fails or succeeds by its sector.
          const uint64_t sector = (t * 64 + i % 64) * 16;
          AddBio(bios).init_data(*d.disk, Op::kWrite, sector, 8);
          want.push_back(sector / 16 % 3 == 0 ? Status::kIoError : Status::kOk);
        }
        for (auto& b : bios) b->submit();
        while (!AllDone(bios)) std::this_thread::yield();
        for (size_t k = 0; k < bios.size(); ++k) {
          if (bios[k]->calls.load() != 1 || bios[k]->status.load() != want[k]) bad++;
        }
        ios += 4;
      }
    });
  }
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  for (unsigned n = 0; std::chrono::steady_clock::now() < end; ++n) {
    d.queue().set_nr_requests(1 + n % 3);
    if (n % 8 == 7) d.queue().set_scheduler(n % 16 == 7 ? "none" : "test-desc");
  }
  stop = true;
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(ios.load(), 100);
}

#ifdef BLKSTACK_DEBUG_CHECKS
// With tags shared by two disks, a driver tag freed by one disk's request
// is handed to the other disk's hardware queue, which waited for one. If
// that queue's disk is removed meanwhile (its request went out through
// another run and completed), the removal must wait for the thread about
// to run that hardware queue: else it runs freed memory.
TEST(MqSched, RemovalWaitsForAThreadAboutToRunAWaitingHardwareQueue) {
  RegisterOnce();
  ResetCounts();
  TagSetConfig cfg;
  cfg.shared_tags = true;
  cfg.queue_depth = 1;
  TestDriver drv(TestDriver::Mode::kHold, TestLimits(), 8192);
  auto tags = std::make_shared<TagSet>(cfg, drv);
  auto sched_disk =
      std::make_shared<Disk>("mq0", 8192, TestLimits(), std::make_unique<Queue>(tags));
  auto none_disk =
      std::make_shared<Disk>("mq1", 8192, TestLimits(), std::make_unique<Queue>(tags));
  static_cast<Queue&>(sched_disk->driver()).set_scheduler("test-desc");
  TestBio x, y;
  x.init_data(*none_disk, Op::kWrite, 0, 4);
  x.submit();  // holds the one driver tag
  y.init_data(*sched_disk, Op::kWrite, 0, 4);
  y.submit();  // in the scheduler; its hardware queue waits for a driver tag
  ASSERT_EQ(drv.held(), 1u);
  ASSERT_FALSE(y.done());

  static std::atomic<bool> removed{false}, removed_before_run{false};
  static std::function<void(HwQueue&)> on_wake;
  removed = false;
  removed_before_run = false;
  std::thread remover;
  static std::atomic<bool> fired{false};
  fired = false;
  on_wake = [&](HwQueue& h) {
    if (fired.exchange(true)) return;  // once
    // Another thread runs the queue, y goes out on the freed tag and
    // completes, and the disk is removed.
    remover = std::thread([&, hp = &h] {
      hp->run();
      ASSERT_TRUE(drv.complete_next());
      sched_disk.reset();
      removed = true;
    });
    Eventually([&] { return y.done(); }, std::chrono::seconds(2));
    Eventually([&] { return removed.load(); }, std::chrono::milliseconds(200));
    removed_before_run = removed.load();
  };
  Queue::hctx_wake_hook.store(+[](HwQueue& h) {
    if (on_wake) on_wake(h);
  });
  struct NoHook {
    ~NoHook() { Queue::hctx_wake_hook.store(nullptr); }
  } no_hook;
  ASSERT_TRUE(drv.complete_next());  // x: its tag wakes y's hardware queue
  Queue::hctx_wake_hook.store(nullptr);
  on_wake = nullptr;
  ASSERT_TRUE(remover.joinable());
  remover.join();
  EXPECT_FALSE(removed_before_run.load())
      << "the disk was removed under a thread about to run its hardware queue";
  EXPECT_TRUE(x.done() && y.done());
  EXPECT_EQ(y.calls.load(), 1);
  none_disk.reset();  // the queues go before the driver they use
}
#endif

}  // namespace
}  // namespace blkstack
