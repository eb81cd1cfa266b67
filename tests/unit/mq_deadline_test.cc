// mq-deadline's rules, each shown by the order a one-tag driver receives
// requests in: sector-ordered batches, fifo_batch, FIFO expiry, write
// starvation, priority classes and their aging, async depth, merges, and
// the tunables with their ranges. Time is the test's (sched_clock).
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <vector>

#include "blkstack/driver/scheduler.h"
#include "blkstack/error.h"
#include "blkstack/ioprio.h"
#include "mq_test_util.h"
#include "queue/tag_set.h"
#include "sched/sched_clock.h"
#include "sched/sched_hold.h"

namespace blkstack {
namespace {

using namespace mq_testing;

constexpr uint64_t kMs = 1'000'000;
std::atomic<uint64_t> g_now{1'000 * kMs};

class MqDeadline : public ::testing::Test {
 protected:
  void SetUp() override {
    g_now = 1'000 * kMs;
    sched_clock::test_clock = [] { return g_now.load(); };
  }
  void TearDown() override { sched_clock::test_clock = nullptr; }

  // One driver tag, so the scheduler orders everything after the first.
  static MqDisk DdDisk(unsigned nr_requests = 64) {
    TagSetConfig config;
    config.queue_depth = 1;
    MqDisk d = MakeMqDisk(config, TestLimits(), TestDriver::Mode::kHold, 1 << 14);
    d.queue().set_nr_requests(nr_requests);
    d.queue().set_scheduler("mq-deadline");
    return d;
  }
  TestBio& Submit(MqDisk& d, Op op, uint64_t sector, uint16_t ioprio = 0) {
    TestBio& b = AddBio(bios_);
    b.init_data(*d.disk, op, sector, 8);
    b.bio.set_ioprio(ioprio);
    b.submit();
    return b;
  }
  // Completes everything, one at a time; the sectors the driver saw.
  static std::vector<uint64_t> Order(MqDisk& d) {
    d.driver->drain();
    std::vector<uint64_t> order;
    for (const Seen& s : d.driver->calls()) order.push_back(s.pos);
    return order;
  }
  static void Set(MqDisk& d, const char* name, const char* value) {
    d.queue().scheduler()->set_tunable(name, value);
  }

  TestBios bios_;
};

using V = std::vector<uint64_t>;

TEST_F(MqDeadline, DispatchesABatchInSectorOrder) {
  MqDisk d = DdDisk();
  Submit(d, Op::kRead, 0);  // to the driver
  for (uint64_t s : {500, 100, 300, 200, 400}) Submit(d, Op::kRead, s);
  EXPECT_EQ(Order(d), (V{0, 100, 200, 300, 400, 500}));
  ASSERT_TRUE(AllDone(bios_));
}

// A batch ends after fifo_batch requests; with writes_starved 0 the next
// batch is writes, and after them the reads go on where they were.
TEST_F(MqDeadline, FifoBatchEndsABatch) {
  MqDisk d = DdDisk();
  Set(d, "fifo_batch", "2");
  Set(d, "writes_starved", "0");
  Submit(d, Op::kRead, 0);
  for (uint64_t s : {100, 200, 300, 400}) Submit(d, Op::kRead, s);
  for (uint64_t s : {1100, 1200, 1300, 1400}) Submit(d, Op::kWrite, s);
  EXPECT_EQ(Order(d), (V{0, 100, 1100, 1200, 1300, 1400, 200, 300, 400}));
}

// Reads are preferred, but after writes_starved (2) read batches passed
// writes over, writes go.
TEST_F(MqDeadline, WritesGoAfterWritesStarvedReadBatches) {
  MqDisk d = DdDisk();
  Set(d, "fifo_batch", "1");
  Submit(d, Op::kRead, 0);
  Submit(d, Op::kWrite, 5000);
  for (uint64_t s : {100, 200, 300, 400, 500, 600}) Submit(d, Op::kRead, s);
  EXPECT_EQ(Order(d), (V{0, 100, 200, 5000, 300, 400, 500, 600}));
}

// A new batch starts from the FIFO head once its read_expire has passed,
// not from the next sector.
TEST_F(MqDeadline, AnExpiredReadGoesBeforeTheSectorOrder) {
  MqDisk d = DdDisk();
  Set(d, "fifo_batch", "1");
  Submit(d, Op::kRead, 0);
  Submit(d, Op::kRead, 5000);  // deadline: now + 500 ms
  g_now += 100 * kMs;
  for (uint64_t s : {100, 200, 300}) Submit(d, Op::kRead, s);
  g_now += 450 * kMs;  // 5000 expired, the others not
  EXPECT_EQ(Order(d), (V{0, 5000, 100, 200, 300}));
}

TEST_F(MqDeadline, AnUnexpiredReadWaitsForTheSectorOrder) {
  MqDisk d = DdDisk();
  Set(d, "fifo_batch", "1");
  Set(d, "read_expire", "1000");
  Submit(d, Op::kRead, 0);
  Submit(d, Op::kRead, 5000);
  g_now += 100 * kMs;
  for (uint64_t s : {100, 200, 300}) Submit(d, Op::kRead, s);
  g_now += 450 * kMs;
  EXPECT_EQ(Order(d), (V{0, 100, 200, 300, 5000}));
}

TEST_F(MqDeadline, AnExpiredWriteGoesFirstAmongWrites) {
  MqDisk d = DdDisk();
  Set(d, "fifo_batch", "1");
  Submit(d, Op::kWrite, 0);
  Submit(d, Op::kWrite, 9000);
  g_now += 100 * kMs;
  for (uint64_t s : {100, 200}) Submit(d, Op::kWrite, s);
  g_now += 4950 * kMs;  // 9000 past write_expire (5 s)
  EXPECT_EQ(Order(d), (V{0, 9000, 100, 200}));
}

// RT before BE; BE waits while RT is in the driver; IDLE last.
TEST_F(MqDeadline, HigherClassesGoFirst) {
  MqDisk d = DdDisk();
  Submit(d, Op::kRead, 0);
  Submit(d, Op::kRead, 100, ioprio_value(IoprioClass::kIdle, 0));
  Submit(d, Op::kRead, 200);  // no class: best effort
  Submit(d, Op::kRead, 300, ioprio_value(IoprioClass::kRealtime, 0));
  EXPECT_EQ(Order(d), (V{0, 300, 200, 100}));
}

// A best-effort request older than prio_aging_expire goes before a
// real-time one.
TEST_F(MqDeadline, PriorityAgingLetsAnOldLowerClassRequestGo) {
  MqDisk d = DdDisk();
  Set(d, "prio_aging_expire", "10");
  Submit(d, Op::kRead, 0);
  Submit(d, Op::kRead, 200);  // BE, at t
  g_now += 1 * kMs;
  Submit(d, Op::kRead, 300, ioprio_value(IoprioClass::kRealtime, 0));
  g_now += 20 * kMs;  // the BE one has waited 21 ms > 10 ms
  EXPECT_EQ(Order(d), (V{0, 200, 300}));
}

TEST_F(MqDeadline, WithoutAgingTheHigherClassStillGoesFirst) {
  MqDisk d = DdDisk();
  Set(d, "prio_aging_expire", "100");
  Submit(d, Op::kRead, 0);
  Submit(d, Op::kRead, 200);
  g_now += 1 * kMs;
  Submit(d, Op::kRead, 300, ioprio_value(IoprioClass::kRealtime, 0));
  g_now += 20 * kMs;
  EXPECT_EQ(Order(d), (V{0, 300, 200}));
}

// The run a held-back class waits for is not lost. dispatch() holds a
// best-effort read back while a real-time one is in the driver, and marks
// the queue so that the real-time one's completion runs it again. Here that
// completion comes in between: after dispatch() saw the real-time read in
// the driver and before it marked the queue (sched_hold), so the
// completion sees no mark and runs nothing. dispatch() must then send the
// best-effort read itself; before the fix it returned nothing and the read
// waited for I/O that never came.
TestDriver* g_driver = nullptr;
TEST_F(MqDeadline, AHeldBackClassIsNotStrandedByACompletionInBetween) {
  TagSetConfig config;
  config.queue_depth = 2;  // a driver tag for the run after the real-time read's
  MqDisk d = MakeMqDisk(config, TestLimits(), TestDriver::Mode::kHold, 1 << 14);
  d.queue().set_scheduler("mq-deadline");
  Submit(d, Op::kRead, 0, ioprio_value(IoprioClass::kRealtime, 0));
  ASSERT_EQ(d.driver->held(), 1u);
  g_driver = d.driver;
  sched_hold::deadline_held_back = [] {
    sched_hold::deadline_held_back = nullptr;  // once
    ASSERT_TRUE(g_driver->complete_next());    // the real-time read ends
  };
  TestBio& be = Submit(d, Op::kRead, 100);  // held back, then the completion
  const bool fired = sched_hold::deadline_held_back.load() == nullptr;
  sched_hold::deadline_held_back = nullptr;
  ASSERT_TRUE(fired) << "dispatch() never held the best-effort read back";
  EXPECT_TRUE(Eventually([&] { return d.driver->held() == 1; }, 500ms))
      << "the best-effort read was left in the scheduler";
  d.hctx().run();  // what the lost run would have done, so that the test ends
  d.driver->drain();
  EXPECT_TRUE(be.done());
  EXPECT_EQ(d.driver->nr_calls(), 2u);
}

// Writes hold at most async_depth scheduler tags (3/4 of nr_requests by
// default); a read finds one of the rest free while writes wait.
TEST_F(MqDeadline, AsyncDepthKeepsTagsForReads) {
  MqDisk d = DdDisk(8);
  EXPECT_EQ(d.queue().scheduler()->tunables()[0],
            (std::pair<std::string, std::string>{"async_depth", "6"}));
  for (int i = 0; i < 10; ++i) Submit(d, Op::kWrite, 1000 * i);
  EXPECT_EQ(d.hctx().sched_tags()->alloc.in_use(), 6u);  // 4 writes wait
  TestBio& r = Submit(d, Op::kRead, 12000);
  EXPECT_EQ(d.hctx().sched_tags()->alloc.in_use(), 7u);  // the read did not wait
  EXPECT_EQ(Order(d).size(), 11u);
  ASSERT_TRUE(AllDone(bios_));
  EXPECT_TRUE(r.done());
  for (auto& b : bios_) EXPECT_EQ(b->status.load(), Status::kOk);
  EXPECT_EQ(d.hctx().sched_tags()->alloc.in_use(), 0u);

  Set(d, "async_depth", "2");
  for (int i = 0; i < 5; ++i) Submit(d, Op::kWrite, 1000 * i);
  EXPECT_EQ(d.hctx().sched_tags()->alloc.in_use(), 2u);
  Order(d);
  ASSERT_TRUE(AllDone(bios_));
}

TEST_F(MqDeadline, MergesBiosAtBothEndsUnlessFrontMergesIsOff) {
  MqDisk d = DdDisk();
  Submit(d, Op::kWrite, 10000);  // holds the driver
  Submit(d, Op::kWrite, 100);
  Submit(d, Op::kWrite, 108);  // back merge
  Submit(d, Op::kWrite, 92);   // front merge
  Submit(d, Op::kWrite, 300);
  Submit(d, Op::kWrite, 116);  // back merge
  Set(d, "front_merges", "0");
  Submit(d, Op::kWrite, 292);  // not merged: a request of its own
  std::vector<Seen> calls;
  d.driver->drain();
  calls = d.driver->calls();
  ASSERT_TRUE(AllDone(bios_));
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_EQ(calls[1].pos, 92u);
  EXPECT_EQ(calls[1].nr_bios, 4u);
  EXPECT_EQ(calls[2].pos, 292u);
  EXPECT_EQ(calls[3].pos, 300u);
  EXPECT_TRUE(d.driver->violations().empty());
}

// A bio that fills the gap between two held requests joins them into one.
TEST_F(MqDeadline, ABackMergeThatTouchesTheNextRequestJoinsIt) {
  MqDisk d = DdDisk();
  Submit(d, Op::kWrite, 10000);
  Submit(d, Op::kWrite, 100);
  Submit(d, Op::kWrite, 116);
  Submit(d, Op::kWrite, 108);
  d.driver->drain();
  auto calls = d.driver->calls();
  ASSERT_TRUE(AllDone(bios_));
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].pos, 100u);
  EXPECT_EQ(calls[1].nr_bios, 3u);
  EXPECT_EQ(calls[1].bytes, 24u * kSectorSize);
}

TEST_F(MqDeadline, TunablesHaveTheKernelsDefaultsAndRanges) {
  MqDisk d = DdDisk(256);
  using P = std::pair<std::string, std::string>;
  EXPECT_EQ(d.queue().scheduler()->tunables(),
            (std::vector<P>{{"async_depth", "192"},
                            {"fifo_batch", "16"},
                            {"front_merges", "1"},
                            {"prio_aging_expire", "10000"},
                            {"read_expire", "500"},
                            {"write_expire", "5000"},
                            {"writes_starved", "2"}}));
  Set(d, "read_expire", "250");
  EXPECT_EQ(d.queue().scheduler()->tunables()[4], (P{"read_expire", "250"}));
  try {
    Set(d, "front_merges", "2");
    FAIL() << "front_merges=2 taken";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("from 0 to 1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Set(d, "read_expire", "-1"), Error);
  EXPECT_THROW(Set(d, "fifo_batch", "x"), Error);
  EXPECT_THROW(Set(d, "async_depth", "0"), Error);
  EXPECT_THROW(Set(d, "slice_idle", "1"), Error);
}

TEST(SchedulerAliases, OldNamesMapToTodays) {
  EXPECT_EQ(find_scheduler_type("noop").name, "none");
  EXPECT_EQ(find_scheduler_type("deadline").name, "mq-deadline");
  bool have_bfq = false;
  for (const SchedulerType* t : scheduler_types()) have_bfq |= t->name == "bfq";
  if (have_bfq) {
    EXPECT_EQ(find_scheduler_type("cfq").name, "bfq");
  } else {
    try {
      find_scheduler_type("cfq");
      FAIL() << "cfq resolved without bfq";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("old name of 'bfq'"), std::string::npos)
          << e.what();
    }
  }
  TagSetConfig config;
  MqDisk d = MakeMqDisk(config);
  d.queue().set_scheduler("deadline");
  EXPECT_EQ(d.queue().scheduler_name(), "mq-deadline");
}

}  // namespace
}  // namespace blkstack
