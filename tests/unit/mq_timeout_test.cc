// Request timeouts (DESIGN.md invariant 9): a request is owned by exactly one
// of completion, timeout and requeue at a time. The timeout claims a request
// before its handler runs, a completion or requeue that arrives meanwhile is
// held back (and dropped if the handler ended the request), a refused issue
// is not mistaken for a request in the driver, the queue never gives a
// submitter its memory back while the driver may still use it, the internal
// flush request times out too, and timeout= is checked at setup.
//
// The torture test at the end drives all of it at once from several threads
// with a 1 ms timeout and checks every bio ends exactly once.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/queue.h"
#include "blkstack/error.h"
#include "blkstack/plug.h"
#include "core/clock.h"
#include "mq_test_util.h"
#include "queue/tag_set.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Contains;
using testing_util::ErrorOf;

using namespace mq_testing;

constexpr uint64_t kMs = 1'000'000;

// --- setup ---------------------------------------------------------------------

TEST(MqTimeoutConfig, ZeroAndOverflowingTimeoutsAreRefusedWithTheRange) {
  for (uint64_t t : {uint64_t{0}, uint64_t{999'999}, UINT64_MAX, UINT64_MAX / 2}) {
    TagSetConfig cfg;
    cfg.timeout_ns = t;
    TestDriver drv(TestDriver::Mode::kHold, TestLimits(), 8);
    const std::string msg = ErrorOf([&] { TagSet tags(cfg, drv); });
    EXPECT_TRUE(Contains(msg, "timeout")) << t << ": '" << msg << "'";
    EXPECT_TRUE(Contains(msg, "1ms"))
        << t << ": the message gives the range: '" << msg << "'";
  }
  DiskRegistry r;
  EXPECT_TRUE(
      Contains(ErrorOf([&] { r.create("null:1G,queue_mode=mq,timeout=0"); }), "timeout"));
  EXPECT_TRUE(Contains(
      ErrorOf([&] { r.create("null:1G,queue_mode=mq,timeout=9000000000000000000"); }),
      "timeout"));
  EXPECT_TRUE(r.list().empty());
  // The ends of the range are accepted.
  EXPECT_NO_THROW(r.create("null:1G,queue_mode=mq,timeout=1ms"));
}

// The 64-bit owner word must not cost the hot path a bigger request: a
// tag's request stays within two cache lines' worth of bytes.
TEST(MqTimeoutConfig, TheStateWordDoesNotGrowTheRequest) {
  EXPECT_LE(sizeof(Request), 128u);
}

// --- the default handler ----------------------------------------------------------

// A driver that keeps every request until the test ends it and has no timeout
// handler of its own: it only counts the default handler's calls.
class KeepingDriver final : public RequestDriver {
 public:
  TimeoutAction timeout(Request& rq) override {
    timeouts.fetch_add(1, std::memory_order_acq_rel);
    return RequestDriver::timeout(rq);
  }
  std::atomic<int> timeouts{0};
  Status queue_rq(HwQueue&, Request& rq, bool) override {
    std::lock_guard lock(mu_);
    held_.push_back(&rq);
    return Status::kOk;
  }
  Request* take() {
    std::lock_guard lock(mu_);
    if (held_.empty()) return nullptr;
    Request* rq = held_.front();
    held_.erase(held_.begin());
    return rq;
  }

 private:
  std::mutex mu_;
  std::vector<Request*> held_;
};

TEST(MqTimeout, TheDefaultHandlerFailsARequestOnlyWhenTheDriverGivesItBack) {
  TagSetConfig cfg;
  cfg.timeout_ns = 5 * kMs;
  auto owned = std::make_unique<KeepingDriver>();
  KeepingDriver* drv = owned.get();
  auto disk = std::make_shared<Disk>("mq0", 8192, TestLimits(),
                                     std::make_unique<Queue>(cfg, std::move(owned)));
  TestBio a;
  a.init_data(*disk, Op::kRead, 0, 8);
  a.submit();
  // It times out (counted in handler calls, not in time: a loaded machine
  // runs the scan late), and for several periods after, the driver still
  // has the request (and may still be writing into the bio's memory), so
  // the bio must not end yet.
  MustHappen([&] { return drv->timeouts.load() >= 1; }, "the request times out");
  std::this_thread::sleep_for(30ms);
  EXPECT_FALSE(a.done())
      << "the queue gave a bio back while its driver still held the request";
  Request* rq = drv->take();
  ASSERT_NE(rq, nullptr);
  if (!a.done()) rq->end_request_all(Status::kOk);
  MustHappen([&] { return a.done(); }, "the late completion ends the request");
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(a.status.load(), Status::kTimeout) << "it had timed out";
  // The queue goes on working. (On a slow machine b may time out too
  // before the test ends it: then it fails, once, like a.)
  TestBio b;
  b.init_data(*disk, Op::kRead, 0, 8);
  b.submit();
  Request* rq2 = nullptr;
  MustHappen([&] { return (rq2 = drv->take()) != nullptr; }, "b reaches the driver");
  rq2->end_request_all(Status::kOk);
  MustHappen([&] { return b.done(); }, "b completes");
  EXPECT_EQ(b.calls.load(), 1);
  EXPECT_TRUE(b.status.load() == Status::kOk || b.status.load() == Status::kTimeout);
}

// --- races with the handler, made deterministic --------------------------------------

TEST(MqTimeout, ARequeueWhileTheHandlerRunsDoesNotDispatchAnEndedRequest) {
  TagSetConfig cfg;
  cfg.timeout_ns = 5 * kMs;
  MqDisk d = MakeMqDisk(cfg);
  TestDriver* drv = d.driver;
  Queue* q = &d.queue();
  d.driver->set_timeout_hook([drv, q](Request& rq) {
    // The driver's completion side gives the request back for a retry while
    // its timeout side gives up on it: only one of them may win.
    if (!drv->forget(&rq)) return TimeoutAction::kResetTimer;  // queue_rq still runs
    std::thread([&] { q->requeue_request(rq); }).join();
    rq.end_request_all(Status::kTimeout);
    return TimeoutAction::kDone;
  });
  TestBio a;
  a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  a.submit();
  MustHappen([&] { return a.done(); }, "the handler ends the request");
  std::this_thread::sleep_for(30ms);  // room for a wrong second dispatch
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(a.status.load(), Status::kTimeout);
  EXPECT_EQ(d.driver->nr_calls(), 1u) << "the ended request was dispatched again";
  EXPECT_TRUE(d.driver->violations().empty()) << d.driver->violations().front();
  EXPECT_EQ(d.tags_in_use(), 0u);
}

TEST(MqTimeout, ACompletionWhileTheHandlerRunsIsIgnoredWhenTheHandlerEndsTheRequest) {
  TagSetConfig cfg;
  cfg.timeout_ns = 5 * kMs;
  MqDisk d = MakeMqDisk(cfg);
  TestDriver* drv = d.driver;
  d.driver->set_timeout_hook([drv](Request& rq) {
    if (!drv->forget(&rq)) return TimeoutAction::kResetTimer;  // queue_rq still runs
    // The device answers late, while the handler is aborting the request.
    std::thread([&] { drv->finish(rq, Status::kOk); }).join();
    rq.end_request_all(Status::kTimeout);
    return TimeoutAction::kDone;
  });
  TestBio a;
  a.init_data(*d.disk, Op::kRead, 0, 8);
  a.submit();
  MustHappen([&] { return a.done(); }, "the request ends");
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(a.status.load(), Status::kTimeout) << "the timeout had claimed the request";
  EXPECT_EQ(d.tags_in_use(), 0u);
}

TEST(MqTimeout, ACompletionWhileTheHandlerResetsTheTimerIsNotLost) {
  TagSetConfig cfg;
  cfg.timeout_ns = 5 * kMs;
  MqDisk d = MakeMqDisk(cfg);
  TestDriver* drv = d.driver;
  std::atomic<int> calls{0};
  d.driver->set_timeout_hook([drv, &calls](Request& rq) {
    const bool held = drv->forget(&rq);
    if (!held && calls.load() == 0)
      return TimeoutAction::kResetTimer;  // queue_rq still runs
    ++calls;
    EXPECT_TRUE(held) << "timed out again after its completion";
    if (!held) return TimeoutAction::kResetTimer;
    std::thread([&] { drv->finish(rq, Status::kOk); }).join();
    return TimeoutAction::kResetTimer;  // the handler did not see it complete
  });
  TestBio a;
  a.init_data(*d.disk, Op::kRead, 0, 8);
  a.submit();
  MustHappen([&] { return a.done(); },
             "the completion that came during the handler ends it", 5s);
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(a.status.load(), Status::kOk);
  EXPECT_EQ(calls.load(), 1) << "a completed request timed out again";
  EXPECT_EQ(d.tags_in_use(), 0u);
}

TEST(MqTimeout, ARefusedIssueIsNotTimedOutAsIfTheDriverHadIt) {
  TagSetConfig cfg;
  cfg.timeout_ns = 1 * kMs;
  MqDisk d = MakeMqDisk(cfg);
  TestDriver* drv = d.driver;
  std::atomic<bool> in_handler{false}, refused{false};
  std::atomic<int> refusals{1};
  d.driver->set_hook([&](HwQueue&, Request&, bool) {
    if (refusals.fetch_sub(1) <= 0) return Status::kOk;
    // queue_rq outlives the timeout, then refuses: the request was never
    // the driver's.
    Eventually([&] { return in_handler.load(); }, 2000ms);
    refused = true;
    return Status::kResource;
  });
  d.driver->set_timeout_hook([&, drv](Request& rq) {
    in_handler = true;
    Eventually([&] { return refused.load(); }, 2000ms);
    std::this_thread::sleep_for(2ms);  // the refusal lands while the handler owns it
    if (drv->forget(&rq)) {
      rq.end_request_all(Status::kTimeout);
      return TimeoutAction::kDone;
    }
    return drv->RequestDriver::timeout(rq);  // not ours: the queue's default
  });
  TestBio a;
  a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  std::thread submitter([&] { a.submit(); });
  submitter.join();
  MustHappen([&] { return d.driver->held() == 1 || a.done(); }, "the request is retried");
  d.driver->set_timeout_hook(nullptr);
  d.driver->drain();
  MustHappen([&] { return a.done(); }, "the retried request completes");
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_TRUE(d.driver->violations().empty()) << d.driver->violations().front();
  EXPECT_EQ(d.tags_in_use(), 0u);
}

// The last request of a batch is refused (the device is busy) while the
// timeout owns it. The ones before it went with last == false: the driver
// must be told the batch is over (commit_rqs), or a driver that rings its
// doorbell at `last` never starts them, never completes anything, and never
// restarts the stopped queue.
TEST(MqTimeout, ARefusalTheTimeoutTakesAtTheEndOfABatchStillCommitsIt) {
  TagSetConfig cfg;
  cfg.timeout_ns = 1 * kMs;
  MqDisk d = MakeMqDisk(cfg);
  TestDriver* drv = d.driver;
  std::atomic<bool> in_handler{false}, refused{false};
  std::atomic<int> n{0};
  drv->set_hook([&](HwQueue&, Request&, bool last) {
    if (++n != 2) return Status::kOk;
    EXPECT_TRUE(last);
    // queue_rq of the last one outlives the timeout, then the device is busy.
    Eventually([&] { return in_handler.load(); }, 2000ms);
    refused = true;
    return Status::kDeviceResource;
  });
  drv->set_timeout_hook([&, drv](Request& rq) {
    if (rq.pos() == 0) return TimeoutAction::kResetTimer;  // the first one
    in_handler = true;
    Eventually([&] { return refused.load(); }, 2000ms);
    std::this_thread::sleep_for(2ms);  // the refusal lands while the handler owns it
    return drv->RequestDriver::timeout(rq);
  });
  TestBios bios;
  {
    Plug plug;
    for (int i = 0; i < 2; ++i) {
      AddBio(bios).init_data(*d.disk, Op::kWrite, uint64_t(i) * 100, 8, 1);
      bios.back()->submit();
    }
  }
  MustHappen([&] { return refused.load(); }, "the last request is refused");
  std::this_thread::sleep_for(30ms);  // the handler returns; the queue stays stopped
  auto seen = drv->seen();
  ASSERT_GE(seen.size(), 2u);
  EXPECT_FALSE(seen[0].last);
  EXPECT_EQ(seen[1].returned, Status::kDeviceResource);
  EXPECT_EQ(drv->commits(), 1u) << "the batch ended at a refusal: the driver must ring";
  drv->set_timeout_hook([](Request&) { return TimeoutAction::kResetTimer; });
  d.queue().start_stopped_hw_queues();
  MustHappen([&] { return drv->held() == 2; }, "the refused one goes again");
  drv->drain();
  MustHappen([&] { return AllDone(bios); }, "both end");
  for (auto& b : bios) EXPECT_EQ(b->calls.load(), 1);
  EXPECT_EQ(d.tags_in_use(), 0u);
}

// A handler that ends its request lets the tag go at once: the request may be
// reissued (here from inside the handler, as a completion callback that
// resubmits would) and time out again under another queue's worker (shared
// tags). A completion of that new issue on the first handler's thread is a
// completion like any other: held back while the other handler owns it, not
// taken for the first handler's own.
TEST(MqTimeout, AReissueEndedOnTheThreadOfAnEarlierHandlerWaitsForItsOwnHandler) {
  TagSetConfig cfg;
  cfg.shared_tags = true;
  cfg.queue_depth = 1;  // one request: the reissue is the same object
  cfg.timeout_ns = 5 * kMs;
  TestDriver drv(TestDriver::Mode::kHold, TestLimits(), 8192);
  auto tags = std::make_shared<TagSet>(cfg, drv);
  std::vector<std::shared_ptr<Disk>> disks;
  for (const char* name : {"mq0", "mq1"})
    disks.push_back(
        std::make_shared<Disk>(name, 8192, TestLimits(), std::make_unique<Queue>(tags)));
  TestBio a, b;
  std::atomic<int> calls{0};
  std::atomic<bool> second_running{false}, b_answered{false}, b_done_in_second{false};
  drv.set_timeout_hook([&](Request& rq) {
    if (calls.load() == 0) {
      if (!drv.forget(&rq)) return TimeoutAction::kResetTimer;  // queue_rq still runs
      ++calls;
      // a's handler aborts it; then the tag goes to b, on this thread.
      rq.end_request_all(Status::kTimeout);
      b.init_data(*disks[0], Op::kRead, 0, 8);
      b.submit();
      // The other queue's worker times b out; the device answers b here.
      Eventually([&] { return second_running.load(); }, 2000ms);
      if (Request* held = drv.take()) drv.finish(*held, Status::kOk);
      b_answered = true;
      return TimeoutAction::kDone;
    }
    ++calls;
    second_running = true;
    Eventually([&] { return b_answered.load(); }, 2000ms);
    b_done_in_second = b.done();
    return TimeoutAction::kFailWhenDone;
  });
  a.init_data(*disks[1], Op::kRead, 0, 8);
  a.submit();
  MustHappen([&] { return a.done() && b.done(); }, "a and b end", 10s);
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(a.status.load(), Status::kTimeout);
  EXPECT_FALSE(b_done_in_second.load()) << "b ended while its timeout handler owned it";
  EXPECT_EQ(b.calls.load(), 1);
  EXPECT_EQ(b.status.load(), Status::kTimeout) << "b's handler said kFailWhenDone";
  EXPECT_EQ(tags->tag_space(0).alloc.in_use(), 0u);
  disks.clear();  // the queues go before the driver they use
}

// --- the internal flush request ---------------------------------------------------

TEST(MqTimeout, TheFlushRequestTimesOut) {
  QueueLimits lim = TestLimits();
  lim.volatile_write_cache = true;
  TagSetConfig cfg;
  cfg.timeout_ns = 5 * kMs;
  MqDisk d = MakeMqDisk(cfg, lim);
  TestDriver* drv = d.driver;
  d.driver->set_timeout_hook([drv](Request& rq) {
    if (!drv->forget(&rq)) return TimeoutAction::kResetTimer;  // queue_rq still runs
    rq.end_request_all(Status::kTimeout);
    return TimeoutAction::kDone;
  });
  TestBio f;
  f.init_range(*d.disk, Op::kFlush, 0, 0);
  f.submit();
  ASSERT_EQ(d.driver->nr_calls(Op::kFlush), 1u);
  MustHappen([&] { return f.done(); }, "the flush times out", 5s);
  EXPECT_EQ(f.calls.load(), 1);
  EXPECT_EQ(f.status.load(), Status::kTimeout);
  EXPECT_GE(d.driver->timeouts(), 1);
  EXPECT_EQ(d.tags_in_use(), 0u);
  // The flush machine is free again: the next flush goes through (and is
  // not timed out meanwhile, however slow the machine).
  d.driver->set_timeout_hook([](Request&) { return TimeoutAction::kResetTimer; });
  TestBio g;
  g.init_range(*d.disk, Op::kFlush, 0, 0);
  g.submit();
  MustHappen([&] { return d.driver->held() == 1; }, "the next flush reaches the driver");
  d.driver->drain();
  MustHappen([&] { return g.done(); }, "the next flush completes");
  EXPECT_EQ(g.status.load(), Status::kOk);
  EXPECT_EQ(d.tags_in_use(), 0u);
}

// --- torture ------------------------------------------------------------------------

// A driver that does everything a timeout can race with: it refuses some
// requests (kResource), completes some inline, and gives the rest to a
// completion thread that ends or requeues each at a random time, often after
// the timeout. Its timeout handler resets the timer or ends the request
// when the request is still in its list, and leaves it to the queue's
// default when the completion thread has it. It checks that no request is
// dispatched while it is already in the driver, that every request has bios,
// and that it never touches a bio its submitter already has back.
class TortureDriver final : public RequestDriver {
 public:
  struct Cmd {
    std::atomic<bool> in_driver{false};
    uint64_t due_ns = 0;
    bool requeue = false;
  };
  // Per bio: set while its submitter waits for it.
  struct Slot {
    Bio bio;
    std::vector<std::byte> buf;
    std::vector<Segment> seg;
    std::atomic<bool> in_flight{false};
    std::atomic<int> ended{0};
    std::atomic<int> timed_out{0};
    class TortureDriver* drv = nullptr;
  };

  TortureDriver() : thread_([this] { complete_loop(); }) {}
  ~TortureDriver() override {
    stop_ = true;
    thread_.join();
  }

  Status queue_rq(HwQueue&, Request& rq, bool) override {
    if (rq.bio() == nullptr) violation("a request without bios reached the driver");
    check_bios(rq, "queue_rq");
    thread_local std::mt19937 rng(std::random_device{}());
    const unsigned r = rng() % 100;
    if (r < 10) return Status::kResource;
    Cmd& c = *rq.pdu_as<Cmd>();
    if (c.in_driver.exchange(true))
      violation("a request was dispatched while in the driver");
    if (r < 25) {
      c.in_driver = false;
      rq.end_request_all(Status::kOk);
      return Status::kOk;
    }
    c.due_ns = now_ns() + rng() % (3 * kMs);
    c.requeue = r < 35;
    std::lock_guard lock(mu_);
    held_.push_back(&rq);
    return Status::kOk;
  }

  TimeoutAction timeout(Request& rq) override {
    ++timeouts;
    thread_local std::mt19937 rng(std::random_device{}());
    {
      std::lock_guard lock(mu_);
      auto it = std::find(held_.begin(), held_.end(), &rq);
      if (it != held_.end()) {
        if (rng() % 3 == 0) return TimeoutAction::kResetTimer;  // stays in the list
        held_.erase(it);
      } else {
        // The completion thread has it (or it was refused): it is not ours
        // to end.
        return RequestDriver::timeout(rq);
      }
    }
    check_bios(rq, "the timeout handler");
    rq.pdu_as<Cmd>()->in_driver = false;
    rq.end_request_all(Status::kTimeout);
    return TimeoutAction::kDone;
  }

  void violation(const std::string& what) {
    std::lock_guard lock(violations_mu_);
    if (violations.size() < 10) violations.push_back(what);
  }

  std::atomic<uint64_t> timeouts{0};
  std::vector<std::string> violations;  // read after the run

 private:
  void check_bios(const Request& rq, const char* where) {
    rq.for_each_bio([&](const Bio& b) {
      if (!static_cast<Slot*>(b.context())->in_flight.load())
        violation(std::string(where) + " saw a bio its submitter already has back");
    });
  }

  void complete_loop() {
    std::vector<Request*> due;
    while (!stop_) {
      {
        std::lock_guard lock(mu_);
        const uint64_t now = now_ns();
        for (size_t i = 0; i < held_.size();) {
          if (held_[i]->pdu_as<Cmd>()->due_ns <= now) {
            due.push_back(held_[i]);
            held_[i] = held_.back();
            held_.pop_back();
          } else {
            ++i;
          }
        }
      }
      for (Request* rq : due) {
        Cmd& c = *rq->pdu_as<Cmd>();
        check_bios(*rq, "the completion thread");
        const bool requeue = c.requeue;
        c.in_driver = false;
        if (requeue) {
          rq->queue().requeue_request(*rq);
        } else {
          rq->end_request_all(Status::kOk);
        }
      }
      due.clear();
      std::this_thread::sleep_for(50us);
    }
  }

  std::mutex mu_;
  std::vector<Request*> held_;
  std::mutex violations_mu_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

void TortureDone(Bio& b) {
  auto* s = static_cast<TortureDriver::Slot*>(b.context());
  if (b.status() != Status::kOk && b.status() != Status::kTimeout)
    s->drv->violation(std::string("a bio ended with ") +
                      std::string(status_name(b.status())));
  if (b.status() == Status::kTimeout) ++s->timed_out;
  ++s->ended;
  if (!s->in_flight.exchange(false)) s->drv->violation("a bio's end_io ran twice");
}

TagSetConfig TortureConfig() {
  TagSetConfig cfg;
  cfg.nr_hw_queues = 2;
  cfg.queue_depth = 8;
  cfg.cmd_size = sizeof(TortureDriver::Cmd);
  cfg.timeout_ns = 1 * kMs;
  return cfg;
}

constexpr uint64_t kTortureSectors = 1 << 16;

// Three threads keep 12 bios each in flight on `disks` (thread t on disk
// t % n) until 30000 have been submitted, then check each ended once.
void Torture(const std::vector<std::shared_ptr<Disk>>& disks, TortureDriver& drv,
             TagSet& tags) {
  constexpr int kThreads = 3, kSlotsPerThread = 12;
  constexpr int kRounds = 30000;  // bios, over all threads
  const auto time_limit = Clock::now() + 8s;
  std::vector<std::unique_ptr<TortureDriver::Slot>> slots;
  for (int i = 0; i < kThreads * kSlotsPerThread; ++i) {
    auto s = std::make_unique<TortureDriver::Slot>();
    s->buf.resize(4096);
    s->seg = {Segment(s->buf.data(), 4096)};
    s->drv = &drv;
    slots.push_back(std::move(s));
  }
  std::atomic<int> submitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Disk* disk = disks[static_cast<size_t>(t) % disks.size()].get();
      std::mt19937 rng(static_cast<unsigned>(t) * 7919u + 1);
      while (submitted.load() < kRounds && Clock::now() < time_limit) {
        bool any = false;
        for (int i = 0; i < kSlotsPerThread; ++i) {
          TortureDriver::Slot& s = *slots[static_cast<size_t>(t * kSlotsPerThread + i)];
          if (s.in_flight.load()) continue;
          any = true;
          const Op op = rng() % 2 ? Op::kRead : Op::kWrite;
          const uint64_t sector = (rng() % (kTortureSectors / 8)) * 8;
          s.in_flight = true;
          s.bio.init(disk, op, sector, s.seg, TortureDone, &s);
          submit_bio(s.bio);
          ++submitted;
        }
        if (!any) std::this_thread::sleep_for(20us);
      }
    });
  }
  for (auto& th : threads) th.join();
  MustHappen(
      [&] {
        for (auto& s : slots)
          if (s->in_flight.load()) return false;
        return true;
      },
      "every bio ends", 20s);
  int ended = 0, timed_out = 0;
  for (auto& s : slots) {
    ended += s->ended.load();
    timed_out += s->timed_out.load();
  }
  EXPECT_EQ(ended, submitted.load()) << "every bio ended exactly once";
  EXPECT_TRUE(drv.violations.empty()) << drv.violations.front();
  EXPECT_GT(drv.timeouts.load(), 0u) << "the run had timeouts";
  EXPECT_GT(timed_out, 0);
  EXPECT_GT(ended - timed_out, 0);
  std::printf("torture: %d bios, %d timed out, %llu handler calls\n", ended, timed_out,
              static_cast<unsigned long long>(drv.timeouts.load()));
  for (unsigned s = 0; s < tags.nr_tag_spaces(); ++s)
    EXPECT_EQ(tags.tag_space(s).alloc.in_use(), 0u);
}

TEST(MqTimeoutTorture, CompletionTimeoutRequeueAndRefusalRaceExactlyOnce) {
  auto owned = std::make_unique<TortureDriver>();
  TortureDriver* drv = owned.get();
  auto disk =
      std::make_shared<Disk>("mq0", kTortureSectors, TestLimits(),
                             std::make_unique<Queue>(TortureConfig(), std::move(owned)));
  Torture({disk}, *drv, static_cast<Queue&>(disk->driver()).tag_set());
}

// Two disks over one tag set with shared tags: each queue's worker scans
// the other's requests too, and the claim decides which times one out.
TEST(MqTimeoutTorture, TwoQueuesSharingTagsRaceExactlyOnce) {
  TortureDriver drv;
  TagSetConfig cfg = TortureConfig();
  cfg.shared_tags = true;
  auto tags = std::make_shared<TagSet>(cfg, drv);
  std::vector<std::shared_ptr<Disk>> disks;
  for (const char* name : {"mq0", "mq1"}) {
    disks.push_back(std::make_shared<Disk>(name, kTortureSectors, TestLimits(),
                                           std::make_unique<Queue>(tags)));
  }
  Torture(disks, drv, *tags);
  disks.clear();  // the queues go before the driver they use
}

}  // namespace
}  // namespace blkstack
