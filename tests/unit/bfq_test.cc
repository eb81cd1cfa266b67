// bfq, rule by rule, on a recording driver with a fake clock: each test
// breaks if its rule does (weights, budgets and their timeout, idling for a
// synchronous sequential queue and not for an async one, weight raising,
// FIFO expiry, the back-seek rules, tunables), and switching to and from
// bfq under a verified load loses nothing.
#include "sched/bfq.h"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/error.h"
#include "blkstack/plug.h"
#include "core/clock.h"
#include "mq_test_util.h"
#include "queue/tag_set.h"
#include "verified_workload.h"

namespace blkstack {
namespace {

using namespace mq_testing;
using bfq::BfqScheduler;
using bfq::Expire;

constexpr uint64_t kMs = 1'000'000;
constexpr uint64_t kCapacity = 1 << 15;  // sectors: 16 MiB
std::atomic<uint64_t> fake_now{1'000'000'000};
uint64_t FakeClock() { return fake_now.load(); }
void Advance(uint64_t ns) { fake_now += ns; }

struct BfqDisk {
  MqDisk d;
  BfqScheduler& sched() const {
    return *static_cast<BfqScheduler*>(d.queue().scheduler());
  }
  void set(std::string_view name, std::string_view value) const {
    sched().set_tunable(name, value);
  }
};

BfqDisk MakeBfq(unsigned depth, bool low_latency = false,
                TestDriver::Mode mode = TestDriver::Mode::kHold) {
  TagSetConfig config;
  config.queue_depth = depth;
  BfqDisk b{MakeMqDisk(config, TestLimits(), mode, kCapacity)};
  b.d.queue().set_nr_requests(128);
  b.d.queue().set_scheduler("bfq");
  b.sched().set_clock(FakeClock);
  b.set("low_latency", low_latency ? "1" : "0");
  return b;
}

// A bio of `issuer` (an IssuerId picked by the test).
TestBio& Submit(BfqDisk& b, TestBios& bios, IssuerId issuer, Op op, uint64_t sector,
                uint32_t sectors = 8) {
  TestBio& t = AddBio(bios);
  t.init_data(*b.d.disk, op, sector, sectors);
  t.bio.set_issuer(issuer);
  t.submit();
  return t;
}

// Completes everything, moving the fake clock on so that idling ends.
void Finish(BfqDisk& b, TestBios& bios) {
  for (int i = 0; i < 20000 && !AllDone(bios); ++i) {
    Advance(10 * kMs);
    b.d.hctx().run();
    b.d.driver->drain();
  }
  ASSERT_TRUE(AllDone(bios));
}

// Who the driver got requests from, in order.
struct IssuerLog {
  std::mutex mu;
  std::vector<IssuerId> order;
  std::vector<uint64_t> pos;
  std::map<IssuerId, uint64_t> sectors;
  void attach(BfqDisk& b) {
    b.d.driver->set_hook([this](HwQueue&, Request& rq, bool) {
      std::lock_guard lock(mu);
      order.push_back(rq.issuer());
      pos.push_back(rq.pos());
      sectors[rq.issuer()] += rq.sectors();
      return Status::kOk;
    });
  }
  std::vector<IssuerId> snapshot() {
    std::lock_guard lock(mu);
    return order;
  }
};

TEST(Bfq, IsRegisteredWithTheKernelsTunablesAndDefaults) {
  BfqDisk b = MakeBfq(4, /*low_latency=*/true);
  EXPECT_EQ(b.d.queue().scheduler_name(), "bfq");
  std::map<std::string, std::string> t;
  for (auto& [k, v] : b.sched().tunables()) t[k] = v;
  EXPECT_EQ(t["slice_idle"], "8");
  EXPECT_EQ(t["slice_idle_us"], "8000");
  EXPECT_EQ(t["timeout_sync"], "125");
  EXPECT_EQ(t["back_seek_max"], "16384");
  EXPECT_EQ(t["back_seek_penalty"], "2");
  EXPECT_EQ(t["fifo_expire_sync"], "125");
  EXPECT_EQ(t["fifo_expire_async"], "250");
  EXPECT_EQ(t["low_latency"], "1");
  EXPECT_EQ(t["strict_guarantees"], "0");
  EXPECT_EQ(t["max_budget"], "16384");
  EXPECT_EQ(t["weights"], "100");
  b.set("slice_idle_us", "3000");
  b.set("weights", "7:300");
  t.clear();
  for (auto& [k, v] : b.sched().tunables()) t[k] = v;
  EXPECT_EQ(t["slice_idle"], "3");
  EXPECT_EQ(t["weights"], "100 7:300");
  // Bad values are refused with the range.
  try {
    b.set("slice_idle", "5000");
    ADD_FAILURE() << "accepted slice_idle=5000";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("from 0 to 1000 ms"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(b.set("back_seek_penalty", "0"), Error);
  EXPECT_THROW(b.set("timeout_sync", "x"), Error);
  EXPECT_THROW(b.set("low_latency", "2"), Error);
  EXPECT_THROW(b.set("weights", "7:1001"), Error);
  EXPECT_THROW(b.set("weights", "0"), Error);
  EXPECT_THROW(b.set("nope", "1"), Error);
  // strict_guarantees brings slice_idle up to 8 ms.
  b.set("strict_guarantees", "1");
  for (auto& [k, v] : b.sched().tunables()) t[k] = v;
  EXPECT_EQ(t["slice_idle"], "8");
}

// Two issuers, always backlogged with sequential reads, weights 100 and
// 200: the device serves them 1:2 (within 15%).
TEST(Bfq, BackloggedIssuersGetServiceInProportionToTheirWeights) {
  BfqDisk b = MakeBfq(1);
  b.set("max_budget", "512");
  b.set("weights", "11:100");
  b.set("weights", "22:200");
  IssuerLog log;
  log.attach(b);
  TestBios bios;
  // Each in its half of the disk, sequentially, wrapping around.
  std::map<IssuerId, uint64_t> next = {{11, 0}, {22, 0}};
  auto refill = [&](IssuerId id) {
    const uint64_t base = id == 11 ? 0 : kCapacity / 2;
    Submit(b, bios, id, Op::kRead, base + next[id] % (kCapacity / 2), 64);
    next[id] += 64;
  };
  for (int i = 0; i < 4; ++i) refill(11), refill(22);
  for (int n = 0; n < 1500; ++n) {
    Advance(100'000);
    // A refill may reach the driver from the queue's worker rather than
    // inside submit (a run that found the queue busy): wait for it.
    bool completed = b.d.driver->complete_next();
    for (int w = 0; !completed && w < 5000; ++w) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      completed = b.d.driver->complete_next();
    }
    ASSERT_TRUE(completed) << n;
    // Each issuer keeps 4 bios outstanding.
    std::map<IssuerId, int> pending;
    for (auto& t : bios) {
      if (!t->done()) pending[t->bio.issuer()]++;
    }
    std::erase_if(bios, [](const auto& t) { return t->done(); });
    for (IssuerId id : {11u, 22u}) {
      for (int k = pending[id]; k < 4; ++k) refill(id);
    }
  }
  const double ratio = static_cast<double>(log.sectors[22]) / log.sectors[11];
  EXPECT_NEAR(ratio, 2.0, 0.3) << log.sectors[11] << " vs " << log.sectors[22];
  Finish(b, bios);
}

// A queue is served until the next request does not fit in its budget.
TEST(Bfq, AQueueIsExpiredWhenItsBudgetIsSpent) {
  BfqDisk b = MakeBfq(1);
  b.set("max_budget", "256");  // a new queue starts at 2/3: 170 sectors
  IssuerLog log;
  log.attach(b);
  TestBios bios;
  for (int i = 0; i < 32; ++i) Submit(b, bios, 1, Op::kRead, i * 16);
  for (int i = 0; i < 32; ++i) Submit(b, bios, 2, Op::kRead, 20000 + i * 16);
  while (b.d.driver->complete_next()) Advance(10'000);
  Finish(b, bios);
  auto order = log.snapshot();
  ASSERT_EQ(order.size(), 64u);
  size_t run = 0;
  while (run < order.size() && order[run] == 1) ++run;
  EXPECT_EQ(run, 170u / 8) << "issuer 1 ran past its budget";
  EXPECT_GE(b.sched().expirations(Expire::kBudgetExhausted), 1u);
}

// ... or once it has held the device for timeout_sync.
TEST(Bfq, AQueueIsExpiredAfterTimeoutSync) {
  BfqDisk b = MakeBfq(1);
  IssuerLog log;
  log.attach(b);
  TestBios bios;
  for (int i = 0; i < 8; ++i) Submit(b, bios, 1, Op::kRead, i * 16);
  for (int i = 0; i < 8; ++i) Submit(b, bios, 2, Op::kRead, 20000 + i * 16);
  do Advance(60 * kMs);  // a slow device
  while (b.d.driver->complete_next());
  Finish(b, bios);
  auto order = log.snapshot();
  size_t run = 0;
  while (run < order.size() && order[run] == 1) ++run;
  // Dispatched at 0, 60 and 120 ms; at 180 ms its 125 ms are over.
  EXPECT_EQ(run, 3u) << "issuer 1 kept the device past timeout_sync";
  EXPECT_GE(b.sched().expirations(Expire::kBudgetTimeout), 1u);
}

// After its last request completes, a synchronous sequential queue is
// waited for (slice_idle): another issuer's request waits meanwhile, and
// its own next request goes at once.
TEST(Bfq, ASyncSequentialQueueIsIdledOnForSliceIdle) {
  BfqDisk b = MakeBfq(1);
  IssuerLog log;
  log.attach(b);
  TestBios bios;
  Submit(b, bios, 1, Op::kRead, 0);
  ASSERT_TRUE(b.d.driver->complete_next());
  EXPECT_TRUE(b.sched().idling());
  Submit(b, bios, 2, Op::kRead, 20000);
  EXPECT_EQ(b.d.driver->held(), 0u) << "did not idle for the sequential reader";
  Advance(4 * kMs);
  b.d.hctx().run();
  EXPECT_EQ(b.d.driver->held(), 0u) << "stopped idling before slice_idle";
  Submit(b, bios, 1, Op::kRead, 8);  // its next request: served at once
  ASSERT_EQ(b.d.driver->held(), 1u);
  EXPECT_EQ(log.snapshot().back(), 1u);
  ASSERT_TRUE(b.d.driver->complete_next());
  EXPECT_TRUE(b.sched().idling());
  Advance(9 * kMs);  // past slice_idle: the idle timer's run expires it
  b.d.hctx().run();
  ASSERT_EQ(b.d.driver->held(), 1u);
  EXPECT_EQ(log.snapshot().back(), 2u);
  EXPECT_EQ(b.sched().expirations(Expire::kTooIdle), 1u);
  Finish(b, bios);
}

// The timer itself runs the queue: with the real clock, the waiting
// request goes out about slice_idle later without anyone running it.
TEST(Bfq, TheIdleTimerRunsTheQueue) {
  BfqDisk b = MakeBfq(1);
  b.sched().set_clock(+[] { return now_ns(); });
  TestBios bios;
  Submit(b, bios, 1, Op::kRead, 0);
  ASSERT_TRUE(b.d.driver->complete_next());
  Submit(b, bios, 2, Op::kRead, 20000);
  EXPECT_EQ(b.d.driver->held(), 0u);
  ASSERT_TRUE(Eventually([&] { return b.d.driver->held() == 1; }))
      << "the idle timer never ran the queue";
  Finish(b, bios);
}

// On an otherwise idle device the idle timer's run ends the wait too
// (bfq_idle_slice_timer): the queue is not left in service to resume its
// old round, charged for the time it thought, when it comes back.
TEST(Bfq, TheIdleTimerExpiresAQueueWithNothingElseQueued) {
  BfqDisk b = MakeBfq(1);
  TestBios bios;
  Submit(b, bios, 1, Op::kRead, 0);
  ASSERT_TRUE(b.d.driver->complete_next());
  ASSERT_TRUE(b.sched().idling());
  Advance(9 * kMs);
  b.d.hctx().run();  // what the timer does
  EXPECT_FALSE(b.sched().idling());
  EXPECT_EQ(b.sched().expirations(Expire::kTooIdle), 1u);
  Advance(200 * kMs);  // past timeout_sync: it must not count as its time
  Submit(b, bios, 1, Op::kRead, 8);
  Finish(b, bios);
  EXPECT_EQ(b.sched().expirations(Expire::kBudgetTimeout), 0u);
}

TEST(Bfq, AnAsyncQueueIsNotIdledOn) {
  BfqDisk b = MakeBfq(1);
  TestBios bios;
  Submit(b, bios, 1, Op::kWrite, 0);  // a plain write: async
  ASSERT_TRUE(b.d.driver->complete_next());
  EXPECT_FALSE(b.sched().idling());
  Submit(b, bios, 2, Op::kRead, 20000);
  EXPECT_EQ(b.d.driver->held(), 1u) << "idled on an async queue";
  Finish(b, bios);
}

// strict_guarantees: one request at a time in the device, so that it
// cannot reorder bfq's schedule; without it the queue fills the device.
size_t HeldWithStrictGuarantees(const char* strict) {
  BfqDisk b = MakeBfq(4);
  b.set("strict_guarantees", strict);
  TestBios bios;
  for (int i = 0; i < 4; ++i) Submit(b, bios, 1, Op::kRead, i * 64);
  const size_t held = b.d.driver->held();
  Finish(b, bios);
  return held;
}

TEST(Bfq, StrictGuaranteesSendsOneRequestAtATime) {
  EXPECT_EQ(HeldWithStrictGuarantees("1"), 1u);
  EXPECT_EQ(HeldWithStrictGuarantees("0"), 4u);
}

// Queue::set_nr_requests rebuilds bfq's trees: a queue left on the idle
// list before it (it expired while another waited) must start over too, or
// its weight is missing from the new tree's sum and every virtual time after
// is wrong. The same depth keeps the pool's size, so only the trees change.
TEST(Bfq, ChangingNrRequestsStartsEveryQueueOver) {
  BfqDisk b = MakeBfq(1);
  b.set("strict_guarantees", "1");  // idles after each queue's last request
  TestBios bios;
  Submit(b, bios, 1, Op::kRead, 0);
  Submit(b, bios, 2, Op::kRead, 20000);
  Submit(b, bios, 2, Op::kRead, 20008);
  // The first queue served idles, expires while the other waits (idle
  // list), then the other is served and idles.
  Finish(b, bios);
  ASSERT_EQ(b.sched().expirations(Expire::kTooIdle), 1u);
  b.d.queue().set_nr_requests(128);
  b.sched().set_clock(FakeClock);
  Submit(b, bios, 1, Op::kRead, 8);
  Submit(b, bios, 2, Op::kRead, 20016);
  EXPECT_EQ(b.sched().weight_sum(bfq::kClassBe), 200u)
      << "a queue kept its old tree state across the rebuild";
  Finish(b, bios);
}

// low_latency raises a new (interactive) queue's weight 30 times; off, not.
TEST(Bfq, LowLatencyRaisesANewInteractiveQueue) {
  BfqDisk b = MakeBfq(1, /*low_latency=*/false);
  b.set("max_budget", "64");  // the hog's rounds: 42 sectors
  TestBios bios;
  for (int i = 0; i < 16; ++i) Submit(b, bios, 1, Op::kRead, i * 16);
  EXPECT_EQ(b.sched().sync_queue_info(1).wr_coeff, 1u);
  b.set("low_latency", "1");
  Submit(b, bios, 2, Op::kRead, 20000);
  auto info = b.sched().sync_queue_info(2);
  EXPECT_EQ(info.wr_coeff, 30u);
  EXPECT_EQ(info.weight, 3000u);
  // Raised, it is served right after the hog's round, before the hog's
  // next one.
  IssuerLog log;
  log.attach(b);
  Finish(b, bios);
  auto order = log.snapshot();
  auto first2 = std::find(order.begin(), order.end(), 2u);
  ASSERT_NE(first2, order.end());
  EXPECT_NE(std::find(first2, order.end(), 1u), order.end())
      << "the raised queue waited for all of the hog's requests";
  Finish(b, bios);
}

// The oldest request goes first once its fifo_expire_sync has passed, at
// the start of the queue's round; else sector order from the head.
uint64_t FirstOfIssuerTwo(uint64_t fifo_expire_ms) {
  BfqDisk b = MakeBfq(1);
  b.set("fifo_expire_sync", std::to_string(fifo_expire_ms));
  IssuerLog log;
  log.attach(b);
  TestBios bios;
  Submit(b, bios, 9, Op::kWrite, 0);  // async: holds the device, no idling
  Submit(b, bios, 2, Op::kRead, 5000);
  Advance(200 * kMs);
  Submit(b, bios, 2, Op::kRead, 1008);
  Submit(b, bios, 2, Op::kRead, 1024);
  Finish(b, bios);
  auto pos = [&] {
    std::lock_guard lock(log.mu);
    return log.pos;
  }();
  return pos.size() > 1 ? pos[1] : 0;
}

TEST(Bfq, AnExpiredFifoHeadGoesFirst) {
  EXPECT_EQ(FirstOfIssuerTwo(125), 5000u);
  EXPECT_EQ(FirstOfIssuerTwo(600'000), 1008u);
}

// From the head at 10008: a request 1008 sectors behind or 1492 ahead.
uint64_t FirstAfterHead(const char* penalty, const char* back_max_kib) {
  BfqDisk b = MakeBfq(1);
  b.set("back_seek_penalty", penalty);
  b.set("back_seek_max", back_max_kib);
  IssuerLog log;
  log.attach(b);
  TestBios bios;
  Submit(b, bios, 9, Op::kWrite, 10000);  // async, holds the device
  Submit(b, bios, 2, Op::kRead, 9000);
  Submit(b, bios, 2, Op::kRead, 11500);
  Finish(b, bios);
  std::lock_guard lock(log.mu);
  return log.pos.size() > 1 ? log.pos[1] : 0;
}

TEST(Bfq, BackSeeksCostThePenaltyAndReachOnlyBackSeekMax) {
  EXPECT_EQ(FirstAfterHead("2", "16384"), 11500u);  // 2 x 1008 > 1492
  EXPECT_EQ(FirstAfterHead("1", "16384"), 9000u);   // 1008 < 1492
  EXPECT_EQ(FirstAfterHead("1", "256"), 11500u);    // 512 sectors: out of reach
}

// Two threads on two hardware queues submit batches of 32 random reads
// under a plug to a driver that completes inline (the null device's
// shape): every bio ends exactly once.
TEST(Bfq, PluggedBatchesOnTwoHardwareQueuesEndOnce) {
  TagSetConfig config;
  config.queue_depth = 64;
  config.nr_hw_queues = 2;
  MqDisk d = MakeMqDisk(config, TestLimits(), TestDriver::Mode::kInline, kCapacity);
  d.queue().set_scheduler("bfq");
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int round = 0; round < 300; ++round) {
        TestBios bios;
        {
          Plug plug;
          for (int i = 0; i < 32; ++i) {
            TestBio& b = AddBio(bios);
            b.init_data(*d.disk, Op::kRead, (rng() % (kCapacity / 8)) * 8, 8);
            b.submit();
          }
        }
        for (int spin = 0; !AllDone(bios) && spin < 1000000; ++spin)
          std::this_thread::yield();
        for (auto& b : bios) bad += b->calls.load() != 1;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

// Four threads write and read back, each as its own issuer, while the
// queue switches between bfq and none: nothing lost, nothing failed.
TEST(Bfq, SwitchingToAndFromBfqUnderLoadLosesNothing) {
  TagSetConfig config;
  config.queue_depth = 4;
  config.nr_hw_queues = 2;
  MqDisk d = MakeMqDisk(config, TestLimits(), TestDriver::Mode::kThread);
  d.driver->set_max_delay(std::chrono::microseconds(20));
  d.queue().set_scheduler("bfq");
  VerifiedWorkload load(*d.disk, {.flushes = false, .seed_stride = 200000});
  for (int i = 0; i < 20; ++i) {
    d.queue().set_scheduler(i % 2 ? "none" : "bfq");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  load.stop();
  EXPECT_EQ(load.failures(), 0);
  EXPECT_GT(load.ios(), 100);
  EXPECT_TRUE(d.driver->violations().empty());
}

}  // namespace
}  // namespace blkstack
