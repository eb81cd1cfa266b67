// The driver surface: what a driver reports (DiskReports) is given to the
// disk once and answered by the disk in either queue mode; a TransferDriver
// written once runs bio-based and multi-queue (make_disk), sees each bio or
// request as one IoCmd with every bio's data, its hardware queue and a word
// of its own, and may complete later on a CompletionThread; a blocking wait
// flushes the thread's plug through the hook the queue layer registers.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/queue_mode.h"
#include "blkstack/driver/reports.h"
#include "blkstack/driver/transfer.h"
#include "blkstack/plug.h"
#include "blkstack/submit.h"
#include "core/clock.h"
#include "core/wait.h"
#include "drivers/completion_thread.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Contains;

// Reports that say who they are, with a hole in the first 4 KiB.
class FakeReports final : public DiskReports {
 public:
  std::string describe() const override { return "fake reports"; }
  Extent extent_at(uint64_t offset, uint64_t max_length) const override {
    if (offset < 4096)
      return {std::min<uint64_t>(4096 - offset, max_length), false, true};
    return {max_length, true, false};
  }
  uint64_t allocated_bytes() const override { return 12345; }
};

class NoopDriver final : public BioDriver {
 public:
  void submit(Bio& bio) override { bio.complete(Status::kOk); }
};

TEST(DiskReports, TheDiskAnswersFromTheReportsItWasGiven) {
  Disk disk("r0", 2048, QueueLimits{}, std::make_unique<NoopDriver>(),
            std::make_unique<FakeReports>());
  EXPECT_EQ(disk.describe(), "fake reports");
  EXPECT_EQ(disk.allocated_bytes(), 12345u);
  const Extent hole = disk.extent_at(512, 1 << 20);
  EXPECT_EQ(hole.length, 4096u - 512);
  EXPECT_FALSE(hole.allocated);
  EXPECT_TRUE(hole.zero);
  EXPECT_TRUE(disk.extent_at(4096, 8192).allocated);
}

TEST(DiskReports, ADiskWithoutReportsReportsAllData) {
  Disk disk("r1", 2048, QueueLimits{}, std::make_unique<NoopDriver>());
  EXPECT_EQ(disk.describe(), "");
  EXPECT_EQ(disk.allocated_bytes(), 0u);
  const Extent e = disk.extent_at(0, 1 << 20);
  EXPECT_EQ(e.length, 1u << 20);
  EXPECT_TRUE(e.allocated);
  EXPECT_FALSE(e.zero);
}

// What a TransferDriver saw of one command.
struct Seen {
  Op op;
  uint64_t sector;
  uint32_t bytes;
  unsigned nr_bios;
  uint32_t bio_bytes;  // the sum over its bios
  unsigned queue;
  bool request;
};

// Keeps what it sees; completes inline, or on a CompletionThread per queue.
class RecordingDriver final : public TransferDriver {
 public:
  RecordingDriver(std::vector<Seen>* seen, std::mutex* mu, unsigned nr_queues,
                  bool deferred)
      : seen_(seen), mu_(mu) {
    if (deferred)
      for (unsigned i = 0; i < nr_queues; ++i)
        completers_.push_back(std::make_unique<CompletionThread>());
  }
  void queue_cmd(IoCmd cmd) override {
    Seen s{cmd.op(), cmd.sector(),      cmd.bytes(),     0,
           0,        cmd.queue_index(), cmd.is_request()};
    cmd.for_each_bio([&](const Bio& b) {
      ++s.nr_bios;
      s.bio_bytes += b.size();
    });
    EXPECT_EQ(cmd.is_request(), cmd.as_request() != nullptr);
    EXPECT_EQ(!cmd.is_request(), cmd.as_bio() != nullptr);
    {
      std::lock_guard lock(*mu_);
      seen_->push_back(s);
    }
    if (completers_.empty()) {
      cmd.complete(Status::kOk);
      return;
    }
    // 200 us from now: the driver's word carries the deadline.
    completers_.at(cmd.queue_index())->push(cmd, now_ns() + 200'000);
  }

 private:
  std::vector<Seen>* seen_;
  std::mutex* mu_;
  std::vector<std::unique_ptr<CompletionThread>> completers_;
};

QueueMode Mode(bool mq, unsigned hw_queues = 1) {
  QueueMode m;
  m.mq = mq;
  m.tags.nr_hw_queues = hw_queues;
  m.tags.queue_depth = 16;
  return m;
}

std::shared_ptr<Disk> MakeRecording(const QueueMode& mode, std::vector<Seen>* seen,
                                    std::mutex* mu, bool deferred) {
  QueueLimits lim;
  lim.max_discard_sectors = 1 << 16;
  return make_disk<RecordingDriver>("t0", 1 << 16, lim, mode,
                                    std::make_unique<FakeReports>(), seen, mu,
                                    mode.nr_queues(), deferred);
}

TEST(TransferDriver, RunsBioBasedWithOneBioPerCommand) {
  std::vector<Seen> seen;
  std::mutex mu;
  auto disk = MakeRecording(Mode(false), &seen, &mu, false);
  EXPECT_FALSE(disk->driver().accounts_requests()) << "bio-based: no Queue";
  EXPECT_EQ(disk->describe(), "fake reports");
  BlockHandle h(disk);
  std::vector<std::byte> buf(8192);
  ASSERT_EQ(h.pwrite(buf.data(), buf.size(), 4096), Status::kOk);
  ASSERT_EQ(h.discard(1 << 20, 65536), Status::kOk);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].op, Op::kWrite);
  EXPECT_EQ(seen[0].sector, 8u);
  EXPECT_EQ(seen[0].bytes, 8192u);
  EXPECT_EQ(seen[0].nr_bios, 1u);
  EXPECT_EQ(seen[0].bio_bytes, 8192u);
  EXPECT_EQ(seen[0].queue, 0u);
  EXPECT_FALSE(seen[0].request);
  EXPECT_EQ(seen[1].op, Op::kDiscard);
  EXPECT_EQ(seen[1].bytes, 65536u);
}

TEST(TransferDriver, RunsMultiQueueWithMergedBiosInOneCommand) {
  std::vector<Seen> seen;
  std::mutex mu;
  auto disk = MakeRecording(Mode(true, 2), &seen, &mu, false);
  EXPECT_TRUE(disk->driver().accounts_requests()) << "multi-queue: a Queue";
  EXPECT_TRUE(Contains(disk->describe(), "mq hw_queues=2 depth=16 sched=none"))
      << disk->describe();
  EXPECT_TRUE(Contains(disk->describe(), "fake reports"))
      << "the driver's after the queue's";
  EXPECT_EQ(disk->allocated_bytes(), 12345u) << "the same reports in either mode";
  EXPECT_FALSE(disk->extent_at(0, 8192).allocated);
  // Three adjacent writes under a plug become one request of three bios.
  std::vector<std::byte> buf(3 * 4096);
  Bio bios[3];
  Segment segs[3];
  std::atomic<int> done{0};
  {
    Plug plug;
    for (int i = 0; i < 3; ++i) {
      segs[i] = Segment(buf.data() + i * 4096, 4096);
      bios[i].init(
          disk.get(), Op::kWrite, uint64_t(i) * 8, {&segs[i], 1},
          [](Bio& b) { static_cast<std::atomic<int>*>(b.context())->fetch_add(1); },
          &done);
      submit_bio(bios[i]);
    }
  }
  EXPECT_EQ(done.load(), 3);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_TRUE(seen[0].request);
  EXPECT_EQ(seen[0].nr_bios, 3u);
  EXPECT_EQ(seen[0].bytes, 3u * 4096);
  EXPECT_EQ(seen[0].bio_bytes, 3u * 4096);
  EXPECT_EQ(seen[0].sector, 0u);
  EXPECT_LT(seen[0].queue, 2u);
}

// Completing later, on a thread per queue, in both modes: the driver's
// word holds each command's deadline and the link goes through the bio
// or the request.
TEST(TransferDriver, CompletesLaterOnACompletionThreadInBothModes) {
  for (bool mq : {false, true}) {
    SCOPED_TRACE(mq ? "mq" : "bio");
    std::vector<Seen> seen;
    std::mutex mu;
    auto disk = MakeRecording(Mode(mq, 2), &seen, &mu, true);
    BlockHandle h(disk);
    std::vector<std::byte> buf(4096);
    const uint64_t start = now_ns();
    for (int i = 0; i < 50; ++i)
      ASSERT_EQ(h.pread(buf.data(), buf.size(), uint64_t(i) * 4096), Status::kOk);
    EXPECT_GE(now_ns() - start, 50u * 200'000) << "each waited for its deadline";
    EXPECT_EQ(seen.size(), 50u);
    EXPECT_EQ(disk->stats().ios[kStatRead], 50u);
    EXPECT_EQ(disk->in_flight(), 0u);
  }
}

// A wait flushes the thread's plug (core/wait.h), through the hook the
// queue layer registered: the core itself knows no plug.
TEST(PlugFlushHook, AWaitSendsWhatThePlugHolds) {
  std::vector<Seen> seen;
  std::mutex mu;
  auto disk = MakeRecording(Mode(true), &seen, &mu, false);
  std::vector<std::byte> buf(4096);
  Segment seg(buf.data(), 4096);
  Bio bio;
  bio.init(disk.get(), Op::kRead, 0, {&seg, 1});
  Plug plug;
  submit_bio(bio);
  EXPECT_EQ(plug.count(), 1u);
  EXPECT_TRUE(seen.empty()) << "held in the plug";
  prepare_to_wait("a test");
  EXPECT_EQ(plug.count(), 0u);
  EXPECT_EQ(seen.size(), 1u) << "the wait sent it";
  EXPECT_TRUE(bio.completed());
}

}  // namespace
}  // namespace blkstack
