// Block devices over disks: partitions (their range, flag and statistics,
// counted on the partition and on the whole disk), remapping a bio to a
// lower device (its accounting and in-flight reference move, so the lower
// disk's shutdown waits for it), and claims (holders).
#include "blkstack/block_device.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/completion.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/error.h"
#include "blkstack/submit.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Contains;
using testing_util::ErrorOf;

void wake(Bio& bio) { static_cast<Completion*>(bio.context())->complete(); }

// One bio to `bdev`, waited for.
Status io(BlockDevice& bdev, Op op, uint64_t sector, void* buf, uint32_t bytes) {
  Completion done;
  Bio bio;
  Segment seg(buf, bytes);
  if (op_has_data(op)) {
    bio.init(&bdev, op, sector, {&seg, 1}, wake, &done);
  } else {
    bio.init_nodata(&bdev, op, sector, bytes, wake, &done);
  }
  submit_bio(bio);
  done.wait();
  return bio.status();
}

QueueLimits plain_limits() {
  QueueLimits lim;
  lim.max_discard_sectors = lim.max_write_zeroes_sectors = 1u << 16;
  lim.discard_granularity = 512;
  return lim;
}

// Holds every bio until release_all(): I/O in flight on this disk.
class HoldingDriver final : public BioDriver {
 public:
  void submit(Bio& bio) override {
    std::lock_guard lock(mu_);
    held_.push_back(&bio);
  }
  size_t held() {
    std::lock_guard lock(mu_);
    return held_.size();
  }
  void release_all() {
    std::vector<Bio*> bios;
    {
      std::lock_guard lock(mu_);
      bios.swap(held_);
    }
    for (Bio* b : bios) b->complete(Status::kOk);
  }

 private:
  std::mutex mu_;
  std::vector<Bio*> held_;
};

// Remaps every bio in place to a lower device (a stacked driver's
// bio_set_dev and resubmit).
class RemapDriver final : public BioDriver {
 public:
  explicit RemapDriver(BlockDevice& lower) : lower_(lower) {}
  void submit(Bio& bio) override {
    bio.set_dev(lower_, bio.sector());
    submit_bio(bio);
  }

 private:
  BlockDevice& lower_;
};

TEST(Partition, IoCountsOnThePartitionAndOnTheWholeDisk) {
  DiskRegistry registry;
  auto disk = registry.create("ram:1M");
  BlockDevice& part = disk->add_partition(1, 256, 512);
  EXPECT_EQ(part.name(), "ram0p1");
  EXPECT_EQ(part.capacity(), 512u);
  EXPECT_EQ(part.minor(), disk->minor() + 1);

  std::vector<std::byte> buf(4096, std::byte{0x5a});
  ASSERT_EQ(io(part, Op::kWrite, 8, buf.data(), 4096), Status::kOk);
  // The bytes are at the partition's start plus the sector, on the disk.
  std::vector<std::byte> back(4096);
  BlockHandle whole(disk);
  ASSERT_EQ(whole.pread(back.data(), 4096, (256 + 8) * 512), Status::kOk);
  EXPECT_EQ(back, buf);
  ASSERT_EQ(io(part, Op::kRead, 8, back.data(), 4096), Status::kOk);

  const DiskStats ps = part.stats();
  EXPECT_EQ(ps.ios[kStatWrite], 1u);
  EXPECT_EQ(ps.sectors[kStatWrite], 8u);
  EXPECT_EQ(ps.ios[kStatRead], 1u);
  EXPECT_EQ(ps.in_flight, 0u);
  // The whole disk counts the partition's I/O and its own.
  const DiskStats ds = disk->stats();
  EXPECT_EQ(ds.ios[kStatWrite], 1u);
  EXPECT_EQ(ds.ios[kStatRead], 2u);
  EXPECT_EQ(ds.sectors[kStatRead], 16u);
  EXPECT_EQ(disk->part0().stats().ios[kStatRead], 2u);

  // /proc/diskstats: "major minor name reads merges sectors ms writes ...".
  EXPECT_TRUE(Contains(part.diskstats_line(),
                       fmt::format("{} ram0p1 1 0 8 ", disk->minor() + 1)));
  EXPECT_TRUE(
      Contains(disk->diskstats_line(), fmt::format("{} ram0 2 0 16 ", disk->minor())));
}

TEST(Partition, RangeAndReadOnlyAreThePartitions) {
  DiskRegistry registry;
  auto disk = registry.create("ram:1M");
  BlockDevice& p1 = disk->add_partition(1, 0, 256);
  BlockDevice& p2 = disk->add_partition(2, 256, 256, /*read_only=*/true);
  std::vector<std::byte> buf(4096);
  EXPECT_EQ(io(p1, Op::kWrite, 256 - 8, buf.data(), 4096), Status::kOk);
  EXPECT_EQ(io(p1, Op::kWrite, 256 - 4, buf.data(), 4096), Status::kOutOfRange);
  EXPECT_EQ(io(p1, Op::kRead, 256, buf.data(), 4096), Status::kOutOfRange);
  EXPECT_EQ(io(p2, Op::kWrite, 0, buf.data(), 4096), Status::kReadOnly);
  EXPECT_EQ(io(p2, Op::kDiscard, 0, nullptr, 4096), Status::kReadOnly);
  EXPECT_EQ(io(p2, Op::kRead, 0, buf.data(), 4096), Status::kOk);
  EXPECT_EQ(p1.stats().ios[kStatWrite], 1u);  // refused bios are not counted

  EXPECT_TRUE(
      Contains(ErrorOf([&] { disk->add_partition(2, 600, 8); }), "exists already"));
  EXPECT_TRUE(
      Contains(ErrorOf([&] { disk->add_partition(3, 2000, 100); }), "not inside"));
  EXPECT_TRUE(Contains(ErrorOf([&] { disk->add_partition(16, 0, 8); }), "1 to 15"));
  EXPECT_EQ(disk->partitions().size(), 2u);
}

TEST(Partition, ShutdownWaitsForPartitionIoInFlight) {
  auto disk = std::make_shared<Disk>("held", 2048, plain_limits(),
                                     std::make_unique<HoldingDriver>());
  auto& drv = static_cast<HoldingDriver&>(disk->driver());
  BlockDevice& part = disk->add_partition(1, 1024, 1024);
  std::vector<std::byte> buf(4096);
  Completion done;
  Bio bio;
  Segment seg(buf.data(), 4096);
  bio.init(&part, Op::kWrite, 0, {&seg, 1}, wake, &done);
  submit_bio(bio);
  ASSERT_EQ(drv.held(), 1u);
  EXPECT_EQ(part.stats().in_flight, 1u);
  EXPECT_EQ(disk->in_flight(), 1u);
  auto shut = std::async(std::launch::async, [&] { disk->shutdown(); });
  EXPECT_EQ(shut.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  drv.release_all();
  shut.get();
  done.wait();
  EXPECT_EQ(part.stats().ios[kStatWrite], 1u);
  EXPECT_EQ(part.stats().in_flight, 0u);
}

TEST(Remap, AccountingAndTheInFlightReferenceMoveToTheLowerDisk) {
  auto lower = std::make_shared<Disk>("lower", 2048, plain_limits(),
                                      std::make_unique<HoldingDriver>());
  auto& held = static_cast<HoldingDriver&>(lower->driver());
  auto upper = std::make_shared<Disk>("upper", 2048, plain_limits(),
                                      std::make_unique<RemapDriver>(lower->part0()));
  std::vector<std::byte> buf(4096);
  Completion done;
  Bio bio;
  Segment seg(buf.data(), 4096);
  bio.init(upper.get(), Op::kWrite, 8, {&seg, 1}, wake, &done);
  submit_bio(bio);
  ASSERT_EQ(held.held(), 1u);
  EXPECT_EQ(bio.bdev(), &lower->part0());
  EXPECT_EQ(lower->in_flight(), 1u);  // the lower disk holds it now
  EXPECT_EQ(upper->in_flight(), 0u);
  EXPECT_EQ(upper->stats().ios[kStatWrite], 1u);  // the upper's part is done

  // The lower disk's shutdown waits for the remapped bio.
  auto shut = std::async(std::launch::async, [&] { lower->shutdown(); });
  EXPECT_EQ(shut.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  held.release_all();
  shut.get();
  done.wait();
  EXPECT_EQ(bio.status(), Status::kOk);
  EXPECT_EQ(lower->stats().ios[kStatWrite], 1u);
  EXPECT_EQ(lower->stats().sectors[kStatWrite], 8u);
  EXPECT_EQ(lower->in_flight(), 0u);
}

// The pieces a split cuts from a bio come from the upper disk's split set;
// remapped, they are in flight on the lower disk only, and the upper disk's
// accounting of their parent ends when its last piece is remapped. The
// upper disk must still not go (and free its split set) before they are back.
TEST(Remap, UpperDiskOutlivesTheSplitPiecesItRemapped) {
  QueueLimits lim = plain_limits();
  lim.max_sectors = 8;  // 4 KiB: a 16 KiB bio becomes four pieces
  auto lower =
      std::make_shared<Disk>("lower", 2048, lim, std::make_unique<HoldingDriver>());
  auto& held = static_cast<HoldingDriver&>(lower->driver());
  auto upper = std::make_shared<Disk>("upper", 2048, lim,
                                      std::make_unique<RemapDriver>(lower->part0()));
  std::vector<std::byte> buf(16384);
  Completion done;
  Bio bio;
  Segment seg(buf.data(), buf.size());
  bio.init(upper.get(), Op::kWrite, 0, {&seg, 1}, wake, &done);
  submit_bio(bio);
  ASSERT_EQ(held.held(), 4u);
  EXPECT_EQ(upper->in_flight(), 0u);  // all of it moved to the lower disk
  EXPECT_EQ(lower->in_flight(), 4u);

  // The last reference goes: its destructor shuts it down, and that waits.
  auto gone = std::async(std::launch::async, [&] { upper.reset(); });
  EXPECT_EQ(gone.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  held.release_all();
  gone.get();
  done.wait();
  EXPECT_EQ(bio.status(), Status::kOk);
  EXPECT_EQ(lower->stats().ios[kStatWrite], 4u);
  EXPECT_EQ(lower->in_flight(), 0u);
}

TEST(Remap, ToAPartitionCountsOnThePartitionAndItsDisk) {
  DiskRegistry registry;
  auto lower = registry.create("ram:1M");
  BlockDevice& part = lower->add_partition(1, 1024, 1024);
  auto upper = std::make_shared<Disk>("upper", 1024, plain_limits(),
                                      std::make_unique<RemapDriver>(part));
  std::vector<std::byte> buf(4096, std::byte{7});
  BlockHandle h(upper);
  ASSERT_EQ(h.pwrite(buf.data(), 4096, 0), Status::kOk);
  ASSERT_EQ(h.pread(buf.data(), 4096, 1024 * 512 - 4096), Status::kOk);
  EXPECT_EQ(part.stats().ios[kStatWrite], 1u);
  EXPECT_EQ(part.stats().ios[kStatRead], 1u);
  EXPECT_EQ(lower->stats().ios[kStatWrite], 1u);
  EXPECT_EQ(lower->stats().ios[kStatRead], 1u);
  std::vector<std::byte> back(4096);
  ASSERT_EQ(BlockHandle(lower).pread(back.data(), 4096, 1024 * 512), Status::kOk);
  EXPECT_EQ(back, std::vector<std::byte>(4096, std::byte{7}));
}

TEST(Claim, RefusesASecondWriterAndRemovalNamingTheHolder) {
  DiskRegistry registry;
  registry.create("ram:1M");
  registry.create("passthrough:lower=ram0,name=stack0");

  std::string why = ErrorOf([&] { BlockHandle::open(registry, "ram0"); });
  EXPECT_TRUE(Contains(why, "ram0 is held by stack0")) << why;
  EXPECT_THROW(BlockHandle::open(registry, "ram0"), BusyError);
  EXPECT_THROW(registry.open("ram0", OpenMode::kWrite), BusyError);
  why = ErrorOf([&] { registry.remove("ram0"); });
  EXPECT_TRUE(Contains(why, "cannot remove ram0: ram0 is held by stack0")) << why;
  ASSERT_NE(registry.find("ram0"), nullptr);
  // Another stacked disk may not claim it either; nothing is added.
  why = ErrorOf([&] { registry.create("passthrough:lower=ram0,name=stack1"); });
  EXPECT_TRUE(Contains(why, "ram0 is held by stack0")) << why;
  EXPECT_EQ(registry.find("stack1"), nullptr);

  // Reading is allowed, and the disk still works.
  auto ro = registry.open("ram0", OpenMode::kRead);
  EXPECT_EQ(ro->holder(), "stack0");
  std::vector<std::byte> buf(4096);
  EXPECT_EQ(BlockHandle(registry.get("ram0")).pread(buf.data(), 4096, 0), Status::kOk);
  EXPECT_EQ(BlockHandle::open(registry, "stack0").pwrite(buf.data(), 4096, 0),
            Status::kOk);

  // The claim goes away with the holder.
  registry.remove("stack0");
  EXPECT_EQ(ro->holder(), "");
  EXPECT_NO_THROW(BlockHandle::open(registry, "ram0"));
  EXPECT_NO_THROW(registry.remove("ram0"));
}

// Two creates of one name racing (or one driver opening a device twice)
// claim the device twice for the same holder; the loser lets its claim go.
// The winner's claim must stay: claims count, as the kernel's bd_holders.
TEST(Claim, ReleasingOneOfTwoClaimsOfAHolderKeepsTheOther) {
  DiskRegistry registry;
  registry.create("ram:1M");
  auto bdev = registry.open("ram0", OpenMode::kRead);
  Claim winner(bdev, "stack0");
  { Claim loser(bdev, "stack0"); }
  EXPECT_EQ(bdev->holder(), "stack0");
  EXPECT_THROW(registry.open("ram0", OpenMode::kWrite), BusyError);
  EXPECT_THROW(registry.remove("ram0"), BusyError);
  winner.reset();
  EXPECT_EQ(bdev->holder(), "");
  EXPECT_NO_THROW(registry.open("ram0", OpenMode::kWrite));
}

TEST(Claim, APartitionsClaimCoversTheWholeDiskAndReadOnlyOpensPass) {
  DiskRegistry registry;
  auto disk = registry.create("ram:1M");
  disk->add_partition(1, 0, 1024);
  disk->add_partition(2, 1024, 1024);
  registry.create("passthrough:lower=ram0p1,name=stack0");
  EXPECT_THROW(registry.open("ram0p1", OpenMode::kWrite), BusyError);
  std::string why = ErrorOf([&] { registry.open("ram0", OpenMode::kWrite); });
  EXPECT_TRUE(Contains(why, "ram0 is held by stack0")) << why;
  EXPECT_NO_THROW(registry.open("ram0p2", OpenMode::kWrite));  // no overlap
  EXPECT_THROW(registry.remove("ram0"), BusyError);
  // A read-only disk is not written whatever the mode.
  disk->set_read_only(true);
  EXPECT_NO_THROW(registry.open("ram0", OpenMode::kWrite));
  disk->set_read_only(false);
  registry.remove("stack0");
  EXPECT_NO_THROW(registry.open("ram0", OpenMode::kWrite));
}

}  // namespace
}  // namespace blkstack
