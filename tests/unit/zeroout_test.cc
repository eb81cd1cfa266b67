// issue_zeroout() and zeroout() (the kernel's blk-lib): the method chosen
// from the disk's limits and the caller's flags (native write-zeroes, a
// discard that zeroes, zeroes written as data, or kNotSupported), the bytes
// left zero and nothing outside them touched, splitting to the limits,
// lengths up to and past the largest bio, and errors.
#include "blkstack/zeroout.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <set>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Done;
using testing_util::record_done;

struct Seen {
  Op op;
  uint64_t sector;
  uint32_t size;
  BioFlag flags;
};

// A RAM disk model that records every bio it is given. With `keep_data`
// off it stores nothing (for ranges of many GiB) and instead checks that
// every written byte comes from memory that reads as zeroes.
class ModelDriver final : public BioDriver {
 public:
  ModelDriver(uint64_t bytes, bool keep_data) {
    if (keep_data) data.assign(bytes, std::byte{0xab});
  }

  void submit(Bio& bio) override {
    seen.push_back({bio.op(), bio.sector(), bio.size(), bio.flags()});
    uint64_t pos = bio.sector() << kSectorShift;
    switch (bio.op()) {
      case Op::kWrite:
        bio.for_each_chunk([&](const BioChunk& c) {
          if (!data.empty()) {
            std::memcpy(data.data() + pos, c.ptr, c.len);
          } else if (sources.insert(c.ptr).second) {
            nonzero_sources += std::any_of(c.ptr, c.ptr + c.len,
                                           [](std::byte b) { return b != std::byte{0}; });
          }
          pos += c.len;
        });
        break;
      case Op::kWriteZeroes:
      case Op::kDiscard:
        if (!data.empty()) std::memset(data.data() + pos, 0, bio.size());
        break;
      default:
        break;
    }
    bytes_by_op[static_cast<int>(bio.op())] += bio.size();
    bio.complete(Status::kOk);
  }

  std::vector<std::byte> data;
  std::vector<Seen> seen;
  std::set<const std::byte*> sources;  // distinct chunk addresses written from
  int nonzero_sources = 0;
  uint64_t bytes_by_op[kOpCount] = {};
};

QueueLimits no_zeroing() {
  QueueLimits lim;
  lim.max_discard_sectors = 0;
  lim.max_write_zeroes_sectors = 0;
  return lim;
}

QueueLimits native(uint32_t max_write_zeroes_sectors) {
  QueueLimits lim;
  lim.max_write_zeroes_sectors = max_write_zeroes_sectors;
  return lim;
}

struct TestDisk {
  std::shared_ptr<Disk> disk;
  ModelDriver* driver;
};

TestDisk make_disk(QueueLimits lim, uint64_t bytes, bool keep_data = true) {
  auto d = std::make_unique<ModelDriver>(bytes, keep_data);
  ModelDriver* raw = d.get();
  return {std::make_shared<Disk>("zero", bytes >> kSectorShift, lim, std::move(d)), raw};
}

// [from, to) of the model's bytes all equal `v`.
bool all_equal(const ModelDriver& m, uint64_t from, uint64_t to, uint8_t v) {
  return std::all_of(m.data.begin() + static_cast<ptrdiff_t>(from),
                     m.data.begin() + static_cast<ptrdiff_t>(to),
                     [v](std::byte b) { return b == std::byte{v}; });
}

// issue_zeroout() of [offset, offset + len) on `t`, which completes inline.
Done zero(TestDisk& t, uint64_t offset, uint32_t len, ZeroFlag flags = ZeroFlag::kNone,
          BioFlag bio_flags = BioFlag::kNone) {
  Done done;
  Bio bio;
  issue_zeroout(bio, t.disk.get(), offset >> kSectorShift, len, flags, record_done, &done,
                bio_flags);
  return done;
}

constexpr uint64_t kMiB = 1u << 20;

void zero_one(Disk* disk) {
  Done done;
  Bio bio;
  issue_zeroout(bio, disk, 0, 4096, ZeroFlag::kNone, record_done, &done);
}

TEST(Zeroout, WithoutWriteZeroesWritesZeroesAsData) {
  TestDisk t = make_disk(no_zeroing(), 8 * kMiB);
  EXPECT_EQ(zeroout_method(*t.disk, ZeroFlag::kNone), ZeroMethod::kWriteData);
  // 3 MiB and a bit from an odd sector: more than one zero segment, and a
  // last one cut short.
  const uint64_t off = 512 * 7;
  const uint32_t len = 3 * kMiB + 4096;
  const Done d = zero(t, off, len);
  EXPECT_EQ(d.calls, 1);
  EXPECT_EQ(d.status, Status::kOk);
  ASSERT_FALSE(t.driver->seen.empty());
  for (const Seen& s : t.driver->seen) EXPECT_EQ(s.op, Op::kWrite);
  EXPECT_EQ(t.driver->bytes_by_op[static_cast<int>(Op::kWrite)], len);
  EXPECT_TRUE(all_equal(*t.driver, 0, off, 0xab)) << "zeroed before the range";
  EXPECT_TRUE(all_equal(*t.driver, off, off + len, 0));
  EXPECT_TRUE(all_equal(*t.driver, off + len, 8 * kMiB, 0xab)) << "zeroed past the range";
}

TEST(Zeroout, WithWriteZeroesUsesItSplitToTheLimit) {
  TestDisk t = make_disk(native(64), 8 * kMiB);  // 32 KiB per write-zeroes
  EXPECT_EQ(zeroout_method(*t.disk, ZeroFlag::kNone), ZeroMethod::kWriteZeroes);
  const Done d = zero(t, kMiB, kMiB);
  EXPECT_EQ(d.calls, 1);
  EXPECT_EQ(d.status, Status::kOk);
  ASSERT_EQ(t.driver->seen.size(), 32u);
  uint64_t sector = kMiB >> kSectorShift;
  for (const Seen& s : t.driver->seen) {
    EXPECT_EQ(s.op, Op::kWriteZeroes);
    EXPECT_EQ(s.sector, sector);
    EXPECT_EQ(s.size, 32u << 10);
    EXPECT_FALSE(any(s.flags & BioFlag::kNoUnmap));
    sector += s.size >> kSectorShift;
  }
  EXPECT_TRUE(all_equal(*t.driver, 0, kMiB, 0xab));
  EXPECT_TRUE(all_equal(*t.driver, kMiB, 2 * kMiB, 0));
  EXPECT_TRUE(all_equal(*t.driver, 2 * kMiB, 8 * kMiB, 0xab));
}

TEST(Zeroout, NoUnmapWritesDataUnlessWriteZeroesHonoursIt) {
  QueueLimits lim = native(~uint32_t{0} >> kSectorShift);
  TestDisk unmaps = make_disk(lim, kMiB);
  EXPECT_EQ(zeroout_method(*unmaps.disk, ZeroFlag::kNoUnmap), ZeroMethod::kWriteData);
  EXPECT_EQ(zero(unmaps, 0, 64 << 10, ZeroFlag::kNoUnmap).status, Status::kOk);
  ASSERT_FALSE(unmaps.driver->seen.empty());
  EXPECT_EQ(unmaps.driver->seen[0].op, Op::kWrite);
  EXPECT_TRUE(all_equal(*unmaps.driver, 0, 64 << 10, 0));

  lim.write_zeroes_nounmap = true;
  TestDisk keeps = make_disk(lim, kMiB);
  EXPECT_EQ(zeroout_method(*keeps.disk, ZeroFlag::kNoUnmap), ZeroMethod::kWriteZeroes);
  EXPECT_EQ(zero(keeps, 0, 64 << 10, ZeroFlag::kNoUnmap).status, Status::kOk);
  ASSERT_EQ(keeps.driver->seen.size(), 1u);
  EXPECT_EQ(keeps.driver->seen[0].op, Op::kWriteZeroes);
  EXPECT_TRUE(any(keeps.driver->seen[0].flags & BioFlag::kNoUnmap));
}

TEST(Zeroout, DiscardOnlyWhereItZeroesAndUnmappingIsAllowed) {
  QueueLimits lim = no_zeroing();
  lim.max_discard_sectors = 128;
  TestDisk plain = make_disk(lim, kMiB);  // a discard may leave old data
  EXPECT_EQ(zeroout_method(*plain.disk, ZeroFlag::kNone), ZeroMethod::kWriteData);

  lim.discard_zeroes_data = true;
  TestDisk t = make_disk(lim, kMiB);
  EXPECT_EQ(zeroout_method(*t.disk, ZeroFlag::kNone), ZeroMethod::kDiscard);
  EXPECT_EQ(zero(t, 0, 128 << 10).status, Status::kOk);
  ASSERT_EQ(t.driver->seen.size(), 2u);  // split to max_discard_sectors
  EXPECT_EQ(t.driver->seen[0].op, Op::kDiscard);
  EXPECT_TRUE(all_equal(*t.driver, 0, 128 << 10, 0));

  EXPECT_EQ(zeroout_method(*t.disk, ZeroFlag::kNoUnmap), ZeroMethod::kWriteData);
  // Native write-zeroes comes first.
  lim.max_write_zeroes_sectors = 8;
  TestDisk both = make_disk(lim, kMiB);
  EXPECT_EQ(zeroout_method(*both.disk, ZeroFlag::kNone), ZeroMethod::kWriteZeroes);
}

TEST(Zeroout, NoFallbackFailsInsteadOfWritingData) {
  TestDisk t = make_disk(no_zeroing(), kMiB);
  EXPECT_EQ(zeroout_method(*t.disk, ZeroFlag::kNoFallback), ZeroMethod::kNone);
  const Done d = zero(t, 0, 4096, ZeroFlag::kNoFallback);
  EXPECT_EQ(d.calls, 1);
  EXPECT_EQ(d.status, Status::kNotSupported);
  EXPECT_TRUE(t.driver->seen.empty());
  EXPECT_TRUE(all_equal(*t.driver, 0, kMiB, 0xab));
  EXPECT_EQ(zeroout(t.disk.get(), 0, 4096, ZeroFlag::kNoFallback), Status::kNotSupported);

  TestDisk n = make_disk(native(8), kMiB);
  EXPECT_EQ(zero(n, 0, 4096, ZeroFlag::kNoFallback).status, Status::kOk);
  // Unmapping forbidden and write-zeroes might unmap: only data would do.
  EXPECT_EQ(zero(n, 0, 4096, ZeroFlag::kNoUnmap | ZeroFlag::kNoFallback).status,
            Status::kNotSupported);
}

TEST(Zeroout, BioFlagsReachTheDriver) {
  QueueLimits lim = no_zeroing();
  lim.volatile_write_cache = true;  // else submit_bio strips FUA
  lim.fua = true;
  TestDisk t = make_disk(lim, kMiB);
  EXPECT_EQ(zero(t, 0, 4096, ZeroFlag::kNone, BioFlag::kFua).status, Status::kOk);
  ASSERT_EQ(t.driver->seen.size(), 1u);
  EXPECT_TRUE(any(t.driver->seen[0].flags & BioFlag::kFua));
}

TEST(Zeroout, BadRangesFailAsSubmitBioFailsThem) {
  QueueLimits lim = no_zeroing();
  lim.logical_block_size = lim.physical_block_size = 4096;
  TestDisk t = make_disk(lim, kMiB);
  EXPECT_EQ(zero(t, 0, 512).status, Status::kInvalid);         // part of a block
  EXPECT_EQ(zero(t, kMiB, 4096).status, Status::kOutOfRange);  // past the end
  EXPECT_EQ(zero(t, 0, ~uint32_t{0}).status, Status::kInvalid);
  t.disk->set_read_only(true);
  EXPECT_EQ(zero(t, 0, 4096).status, Status::kReadOnly);
  EXPECT_TRUE(t.driver->seen.empty());
  EXPECT_TRUE(all_equal(*t.driver, 0, kMiB, 0xab));
}

TEST(Zeroout, TheLargestBioIsOneZeroWriteFromOneBuffer) {
  const uint64_t size = 8ull << 30;  // nothing stored: chunks are checked
  QueueLimits lim = no_zeroing();
  lim.max_sectors = lim.max_hw_sectors = ~uint32_t{0};  // whole bios
  lim.max_segments = 8192;
  lim.max_segment_size = 1u << 20;
  TestDisk t = make_disk(lim, size, /*keep_data=*/false);
  const Done d = zero(t, 4096, kMaxZeroBytes);
  EXPECT_EQ(d.status, Status::kOk);
  ASSERT_EQ(t.driver->seen.size(), 1u);
  EXPECT_EQ(t.driver->seen[0].size, kMaxZeroBytes);
  EXPECT_EQ(t.driver->sources.size(), 1u) << "every segment points at the one buffer";
  EXPECT_EQ(t.driver->nonzero_sources, 0);
}

TEST(Zeroout, SyncZeroesPastTheLargestBioPieceByPiece) {
  const uint64_t size = 10ull << 30;
  TestDisk t = make_disk(no_zeroing(), size, /*keep_data=*/false);
  const uint64_t len = 9ull << 30;
  EXPECT_EQ(zeroout(t.disk.get(), 8, len, ZeroFlag::kNone), Status::kOk);
  EXPECT_EQ(t.driver->bytes_by_op[static_cast<int>(Op::kWrite)], len);
  EXPECT_EQ(t.driver->nonzero_sources, 0);
  // Contiguous, in order, from sector 8.
  uint64_t next = 8;
  for (const Seen& s : t.driver->seen) {
    ASSERT_EQ(s.sector, next);
    next += s.size >> kSectorShift;
  }
  EXPECT_EQ(next, 8 + (len >> kSectorShift));

  TestDisk n = make_disk(native(~uint32_t{0} >> kSectorShift), size, false);
  EXPECT_EQ(zeroout(n.disk.get(), 0, len, ZeroFlag::kNone), Status::kOk);
  EXPECT_EQ(n.driver->bytes_by_op[static_cast<int>(Op::kWriteZeroes)], len);
  EXPECT_EQ(n.driver->seen.size(), 3u);  // 4 GiB less a block, twice, and the rest
  // An error stops it.
  EXPECT_EQ(zeroout(n.disk.get(), 0, size + 4096, ZeroFlag::kNone), Status::kOutOfRange);
}

// A driver that writes into a write bio's memory: a bug, which must not
// turn every later zeroing into garbage.
class ScribblingDriver final : public BioDriver {
 public:
  void submit(Bio& bio) override {
    bio.for_each_chunk([](const BioChunk& c) { c.ptr[0] = std::byte{1}; });
    bio.complete(Status::kOk);
  }
};

TEST(ZerooutDeathTest, TheSharedZeroBufferIsReadOnly) {
  auto disk = std::make_shared<Disk>("scribble", 2048, no_zeroing(),
                                     std::make_unique<ScribblingDriver>());
  EXPECT_DEATH(zero_one(disk.get()), "");
}

}  // namespace
}  // namespace blkstack
