// The model device: its spec and defaults (rotational: mq-deadline by
// default, flash: none; sched= overrides), its data (a RAM disk), and its
// timing: on the rotational model a sequential stream costs transfer time
// alone while scattered reads pay seeks and rotation; on the flash model
// channels work in parallel and garbage collection stalls writes.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/queue.h"
#include "blkstack/error.h"

namespace blkstack {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::string SchedOf(const std::shared_ptr<Disk>& d) {
  return static_cast<Queue&>(d->driver()).scheduler_name();
}

TEST(ModelDevice, SpecDefaultsAndTheDefaultScheduler) {
  DiskRegistry r;
  auto rot = r.create("model:64M");
  EXPECT_TRUE(rot->rotational());
  EXPECT_EQ(SchedOf(rot), "mq-deadline");
  EXPECT_NE(rot->describe().find("kind=rotational rpm=7200 seek_ms=8"), std::string::npos)
      << rot->describe();
  auto flash = r.create("model:64M,kind=flash");
  EXPECT_FALSE(flash->rotational());
  EXPECT_EQ(SchedOf(flash), "none");
  EXPECT_NE(flash->describe().find("channels=8"), std::string::npos);
  EXPECT_EQ(SchedOf(r.create("model:64M,sched=kyber")), "kyber");
  EXPECT_EQ(SchedOf(r.create("model:64M,kind=flash,sched=deadline")), "mq-deadline");
  EXPECT_EQ(SchedOf(r.create("ram:64M,queue_mode=mq")), "none");
  EXPECT_THROW(r.create("model:64M,queue_mode=bio"), Error);
  EXPECT_THROW(r.create("model:64M,kind=tape"), Error);
  EXPECT_THROW(r.create("model:64M,sched=cfq2"), Error);
}

TEST(ModelDevice, KeepsItsData) {
  DiskRegistry r;
  BlockHandle h(r.create("model:16M,kind=flash,read_us=1,write_us=1"));
  std::vector<std::byte> w(64 << 10), back(64 << 10);
  for (size_t i = 0; i < w.size(); ++i) w[i] = std::byte(i * 7);
  ASSERT_EQ(h.pwrite(w.data(), w.size(), 1 << 20), Status::kOk);
  ASSERT_EQ(h.pread(back.data(), back.size(), 1 << 20), Status::kOk);
  EXPECT_EQ(w, back);
}

// 32 reads of 4 KiB: one after the other they stream (about 27 us of
// transfer each at 150 MB/s); scattered, each pays a seek and rotation
// (at least track_to_track_ms).
TEST(ModelDevice, RotationalSeeksCostAndStreamsDoNot) {
  DiskRegistry r;
  BlockHandle h(r.create("model:1G,queue=1,sched=none"));
  std::vector<std::byte> buf(4096);
  ASSERT_EQ(h.pread(buf.data(), 4096, 0), Status::kOk);
  auto t = Clock::now();
  for (int i = 1; i <= 32; ++i)
    ASSERT_EQ(h.pread(buf.data(), 4096, i * 4096), Status::kOk);
  const double seq = MsSince(t);
  t = Clock::now();
  for (int i = 1; i <= 32; ++i) {
    ASSERT_EQ(h.pread(buf.data(), 4096, (uint64_t(i) * 7919 % 256) << 22), Status::kOk);
  }
  const double rnd = MsSince(t);
  EXPECT_GT(rnd, 32.0) << "each scattered read seeks >= 1 ms";
  EXPECT_LT(seq * 2, rnd) << "seq " << seq << " ms, random " << rnd << " ms";
}

// Garbage collection: 2 MiB written with gc every 1 MiB stalls twice (the
// stall is long so that a loaded machine does not blur it).
TEST(ModelDevice, FlashGarbageCollectionStallsWrites) {
  DiskRegistry r;
  BlockHandle fast(r.create("model:64M,kind=flash,read_us=1,write_us=1,gc_every_mb=0"));
  BlockHandle gc(
      r.create("model:64M,kind=flash,read_us=1,write_us=1,gc_every_mb=1,gc_ms=200"));
  std::vector<std::byte> buf(256 << 10);
  auto write2m = [&](BlockHandle& h) {
    auto t = Clock::now();
    for (int i = 0; i < 8; ++i)
      EXPECT_EQ(h.pwrite(buf.data(), buf.size(), i * buf.size()), Status::kOk);
    return MsSince(t);
  };
  const double without = write2m(fast);
  const double with = write2m(gc);
  EXPECT_GT(with, 400.0);
  EXPECT_LT(without, with - 300.0) << without << " vs " << with;
}

}  // namespace
}  // namespace blkstack
