// Switching a live queue among every registered scheduler (none,
// mq-deadline, kyber, and bfq when it is there) while four threads write
// and read back against a model of the data, with FUA writes, flushes and
// driver refusals, on one and two hardware queues and on shared tags:
// nothing is lost, corrupted or failed.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/driver/scheduler.h"
#include "mq_test_util.h"
#include "verified_workload.h"

namespace blkstack {
namespace {

using namespace mq_testing;

struct Shape {
  const char* name;
  unsigned hw_queues;
  bool shared_tags;
};

class SchedSwitch : public ::testing::TestWithParam<Shape> {};

TEST_P(SchedSwitch, UnderAVerifiedWorkloadLosesNothing) {
  const Shape shape = GetParam();
  QueueLimits lim = TestLimits();
  lim.volatile_write_cache = true;  // PREFLUSH/FUA through the flush machine
  TagSetConfig config;
  config.queue_depth = 4;
  config.nr_hw_queues = shape.hw_queues;
  config.shared_tags = shape.shared_tags;
  MqDisk d = MakeMqDisk(config, lim, TestDriver::Mode::kThread);
  d.driver->set_max_delay(std::chrono::microseconds(20));
  d.queue().set_nr_requests(16);
  std::vector<std::string> names;
  for (const SchedulerType* t : scheduler_types()) names.emplace_back(t->name);
  ASSERT_GE(names.size(), 3u);

  VerifiedWorkload load(*d.disk);
  for (unsigned i = 0; i < 8 * names.size(); ++i) {
    if (i % 4 == 1) d.driver->resource_next = 3;
    d.queue().set_scheduler(names[i % names.size()]);
    EXPECT_EQ(d.queue().scheduler_name(), names[i % names.size()]);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // Progress: on a loaded machine the switches may leave little room for
  // I/O, so give the workload a moment more to show it was not stuck.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (load.ios() <= 100 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  load.stop();
  EXPECT_EQ(load.failures(), 0);
  EXPECT_GT(load.ios(), 100);
  EXPECT_TRUE(d.driver->violations().empty());
  d.queue().set_scheduler("none");
  EXPECT_EQ(d.tags_in_use(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SchedSwitch,
                         ::testing::Values(Shape{"one", 1, false}, Shape{"two", 2, false},
                                           Shape{"shared", 2, true}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace blkstack
