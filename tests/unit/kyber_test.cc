// kyber: the timer's rules on their own (congestion shrinks the domains
// under target, a domain over target grows, too few samples change
// nothing, the timer arms on a completion and fires 100 ms later), then on
// a live queue: token depths cap what the driver holds per domain, and a
// slow read domain throttles the writes through completions alone. Time
// is the test's (sched_clock).
#include "sched/kyber.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "blkstack/error.h"
#include "mq_test_util.h"
#include "queue/tag_set.h"
#include "sched/sched_clock.h"

namespace blkstack {
namespace {

using namespace mq_testing;

constexpr uint64_t kMs = 1'000'000;

// `n` samples of a domain, each with the same total and I/O latency.
void Add(KyberLatency& k, unsigned domain, unsigned n, uint64_t ns) {
  for (unsigned i = 0; i < n; ++i) k.add(domain, ns, ns);
}

TEST(KyberLatency, StartsAtTheMaximumDepthsAndTargets) {
  KyberLatency k;
  EXPECT_EQ(k.depth(kKyberRead), 256u);
  EXPECT_EQ(k.depth(kKyberWrite), 128u);
  EXPECT_EQ(k.depth(kKyberDiscard), 64u);
  EXPECT_EQ(k.depth(kKyberOther), 16u);
  EXPECT_EQ(k.target(kKyberRead), 2 * kMs);
  EXPECT_EQ(k.target(kKyberWrite), 10 * kMs);
}

TEST(KyberLatency, CongestionThrottlesTheDomainsUnderTarget) {
  KyberLatency k;
  Add(k, kKyberRead, 500, 3 * kMs);   // p90 and p99 over 2 ms: bucket 5
  Add(k, kKyberWrite, 500, 1 * kMs);  // p99 under 10 ms: bucket 0
  k.run_timer(0);
  EXPECT_EQ(k.depth(kKyberWrite), 32u);  // 128 * (0 + 1) / 4
  EXPECT_EQ(k.depth(kKyberRead), 256u);  // grows, capped at 256
  // Still congested, writes at 3/4 of target: 3/4 of the depth.
  Add(k, kKyberRead, 500, 3 * kMs);
  Add(k, kKyberWrite, 500, 7 * kMs);  // (7 ms - 1) / 2.5 ms: bucket 2
  k.run_timer(0);
  EXPECT_EQ(k.depth(kKyberWrite), 24u);
}

TEST(KyberLatency, ADomainOverItsTargetGrowsBack) {
  KyberLatency k;
  Add(k, kKyberRead, 500, 3 * kMs);
  Add(k, kKyberWrite, 500, 1 * kMs);
  k.run_timer(0);
  ASSERT_EQ(k.depth(kKyberWrite), 32u);
  Add(k, kKyberRead, 500, 1 * kMs);
  Add(k, kKyberWrite, 500, 15 * kMs);  // bucket 5: (5 + 1) / 4
  k.run_timer(0);
  EXPECT_EQ(k.depth(kKyberWrite), 48u);
  // Fast everywhere: no congestion, nothing over target, no change.
  Add(k, kKyberRead, 500, 1 * kMs);
  Add(k, kKyberWrite, 500, 1 * kMs);
  k.run_timer(0);
  EXPECT_EQ(k.depth(kKyberWrite), 48u);
  EXPECT_EQ(k.depth(kKyberRead), 128u);  // throttled in the round before
}

TEST(KyberLatency, FewSamplesWaitForASecond) {
  KyberLatency k;
  Add(k, kKyberRead, 100, 3 * kMs);
  Add(k, kKyberWrite, 100, 1 * kMs);
  k.run_timer(0);  // 100 samples, no second yet: no percentiles
  EXPECT_EQ(k.depth(kKyberWrite), 128u);
  EXPECT_EQ(k.depth(kKyberRead), 256u);
  Add(k, kKyberRead, 100, 3 * kMs);
  k.run_timer(int64_t{1100} * 1'000'000);  // the second is over
  // Reads are over target (congestion), but a domain's p99 is taken in
  // the round its p90 was only with 500 samples: nothing to act on.
  EXPECT_EQ(k.depth(kKyberRead), 256u);
  EXPECT_EQ(k.depth(kKyberWrite), 128u);
}

TEST(KyberLatency, TheTimerFires100msAfterACompletion) {
  KyberLatency k;
  EXPECT_FALSE(k.due(1000));                       // arms
  EXPECT_FALSE(k.due(1000 + 50 * int64_t(kMs)));   // not yet
  EXPECT_TRUE(k.due(1000 + 100 * int64_t(kMs)));   // fires, once
  EXPECT_FALSE(k.due(1000 + 101 * int64_t(kMs)));  // arms again
}

std::atomic<uint64_t> g_now{1'000 * kMs};

class KyberQueue : public ::testing::Test {
 protected:
  void SetUp() override {
    g_now = 1'000 * kMs;
    sched_clock::test_clock = [] { return g_now.load(); };
  }
  void TearDown() override { sched_clock::test_clock = nullptr; }
  static MqDisk KyberDisk(unsigned depth) {
    TagSetConfig config;
    config.queue_depth = depth;
    MqDisk d = MakeMqDisk(config, TestLimits(), TestDriver::Mode::kHold, 1 << 15);
    d.queue().set_nr_requests(256);
    d.queue().set_scheduler("kyber");
    return d;
  }
  static KyberScheduler& Kyber(MqDisk& d) {
    return *static_cast<KyberScheduler*>(d.queue().scheduler());
  }
  TestBio& Submit(MqDisk& d, Op op, uint64_t sector) {
    TestBio& b = AddBio(bios_);
    if (op_has_data(op))
      b.init_data(*d.disk, op, sector, 8);
    else
      b.init_range(*d.disk, op, sector, 8);
    b.submit();
    return b;
  }
  TestBios bios_;
};

// The "other" domain has 16 tokens: with 64 driver tags free, the driver
// gets 16 write-zeroes requests, and one more for each that completes.
TEST_F(KyberQueue, TokensCapWhatADomainHasInTheDriver) {
  MqDisk d = KyberDisk(64);
  for (int i = 0; i < 20; ++i) Submit(d, Op::kWriteZeroes, 100 * i);
  EXPECT_EQ(d.driver->held(), 16u);
  EXPECT_EQ(Kyber(d).tokens_in_use(kKyberOther), 16u);
  // Reads have tokens of their own.
  Submit(d, Op::kRead, 30000);
  EXPECT_EQ(d.driver->held(), 17u);
  ASSERT_TRUE(d.driver->complete_next());
  EXPECT_EQ(d.driver->held(), 17u);  // the 17th write-zeroes went
  d.driver->drain();
  ASSERT_TRUE(AllDone(bios_));
  for (auto& b : bios_) EXPECT_EQ(b->status.load(), Status::kOk);
  EXPECT_EQ(Kyber(d).tokens_in_use(kKyberOther), 0u);
  EXPECT_EQ(d.hctx().sched_tags()->alloc.in_use(), 0u);
}

// Tokens go back whatever way a request leaves the driver: refused
// (kResource), requeued, merged into another; once idle, none is in use.
TEST_F(KyberQueue, TokensAllComeBackAfterRefusalsRequeuesAndMerges) {
  MqDisk d = KyberDisk(64);
  d.driver->resource_next = 3;
  for (int i = 0; i < 8; ++i) Submit(d, Op::kRead, 100 * i);
  for (int i = 0; i < 8; ++i) Submit(d, Op::kWrite, 10000 + 100 * i);
  // Back merges into a queued or held write: bios, not requests.
  Submit(d, Op::kWrite, 10000 + 8);
  for (int i = 0; i < 20; ++i) Submit(d, Op::kWriteZeroes, 20000 + 100 * i);
  // Three held requests requeued: they go through kyber again, first.
  for (int i = 0; i < 3; ++i) {
    Request* rq = d.driver->take(0);
    ASSERT_NE(rq, nullptr);
    d.queue().requeue_request(*rq, /*kick=*/true);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!AllDone(bios_) && std::chrono::steady_clock::now() < deadline) {
    if (!d.driver->complete_next())
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(AllDone(bios_));
  for (auto& b : bios_) EXPECT_EQ(b->status.load(), Status::kOk);
  for (unsigned dom = 0; dom < kKyberDomains; ++dom)
    EXPECT_EQ(Kyber(d).tokens_in_use(dom), 0u) << "domain " << dom;
  EXPECT_EQ(d.hctx().sched_tags()->alloc.in_use(), 0u);
}

// Reads take 3 ms in the driver (over their 2 ms target), writes no time:
// the first completion 100 ms after the timer was armed runs it, and the
// write domain is throttled to a quarter.
TEST_F(KyberQueue, SlowReadsThrottleWritesThroughCompletions) {
  MqDisk d = KyberDisk(64);
  uint64_t sector = 0;
  for (int round = 0; round < 9; ++round) {  // 576 reads, 576 writes
    for (int i = 0; i < 64; ++i) Submit(d, Op::kRead, sector += 16);
    g_now += 3 * kMs;
    d.driver->drain();
    for (int i = 0; i < 64; ++i) Submit(d, Op::kWrite, sector += 16);
    d.driver->drain();
  }
  EXPECT_EQ(Kyber(d).depth(kKyberWrite), 128u);  // 27 ms: the timer is not due
  g_now += 100 * kMs;
  Submit(d, Op::kWrite, sector += 16);
  d.driver->drain();
  EXPECT_EQ(Kyber(d).depth(kKyberWrite), 32u);
  // Now at most 32 writes are in the driver at once.
  for (int i = 0; i < 40; ++i) Submit(d, Op::kWrite, sector += 16);
  EXPECT_EQ(d.driver->held(), 32u);
  d.driver->drain();
  ASSERT_TRUE(AllDone(bios_));
}

TEST_F(KyberQueue, TunablesAndTheirRange) {
  MqDisk d = KyberDisk(4);
  using P = std::pair<std::string, std::string>;
  EXPECT_EQ(
      d.queue().scheduler()->tunables(),
      (std::vector<P>{{"read_lat_nsec", "2000000"}, {"write_lat_nsec", "10000000"}}));
  d.queue().scheduler()->set_tunable("read_lat_nsec", "500000");
  EXPECT_EQ(Kyber(d).latency().target(kKyberRead), 500000u);
  EXPECT_THROW(d.queue().scheduler()->set_tunable("read_lat_nsec", "0"), Error);
  EXPECT_THROW(d.queue().scheduler()->set_tunable("read_lat_nsec", "2ms"), Error);
  EXPECT_THROW(d.queue().scheduler()->set_tunable("fifo_batch", "1"), Error);
}

}  // namespace
}  // namespace blkstack
