// BlockHandle, the synchronous API: round trips, multi-MiB and multi-GiB
// requests, every refusal as a Status (never a crash, never a partial or
// truncated I/O), flush, discard and write-zeroes.
#include "blkstack/block_handle.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/error.h"

namespace blkstack {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kGiB = kMiB << 10;

std::vector<std::byte> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    for (size_t j = 0; j < 8 && i + j < n; ++j) out[i + j] = std::byte(v >> (8 * j));
  }
  return out;
}

bool AllZero(const std::vector<std::byte>& v) {
  for (std::byte b : v) {
    if (b != std::byte{0}) return false;
  }
  return true;
}

// Address space for huge requests to null, which never touches the data:
// reserved, never backed by memory.
class Reservation {
 public:
  explicit Reservation(size_t len) : len_(len) {
    p_ = mmap(nullptr, len, PROT_READ | PROT_WRITE,
              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  }
  ~Reservation() {
    if (p_ != MAP_FAILED) munmap(p_, len_);
  }
  void* get() const { return p_ == MAP_FAILED ? nullptr : p_; }

 private:
  size_t len_;
  void* p_;
};

TEST(BlockHandle, OpenBySizeAndName) {
  DiskRegistry r;
  auto d = r.create("ram:64M,name=scratch");
  BlockHandle h = BlockHandle::open(r, "scratch");
  EXPECT_EQ(&h.disk(), d.get());
  EXPECT_EQ(h.size(), 64 * kMiB);
  EXPECT_THROW(BlockHandle::open(r, "other"), Error);
}

TEST(BlockHandle, RoundTrip) {
  DiskRegistry r;
  BlockHandle h(r.create("ram:64M"));
  const std::vector<std::byte> data = RandomBytes(kMiB, 1);
  ASSERT_EQ(h.pwrite(data.data(), data.size(), 3 * kMiB + 512), Status::kOk);
  std::vector<std::byte> back(kMiB);
  ASSERT_EQ(h.pread(back.data(), back.size(), 3 * kMiB + 512), Status::kOk);
  EXPECT_EQ(back, data);
  // A read straddling the written range sees the hole before it.
  std::vector<std::byte> edge(1024);
  ASSERT_EQ(h.pread(edge.data(), edge.size(), 3 * kMiB), Status::kOk);
  EXPECT_TRUE(AllZero(std::vector<std::byte>(edge.begin(), edge.begin() + 512)));
  EXPECT_TRUE(std::equal(edge.begin() + 512, edge.end(), data.begin()));
}

// Larger than the disk's max_sectors (1.25 MiB): split inside the block
// layer, reassembled exactly.
TEST(BlockHandle, MultiMiBRequests) {
  DiskRegistry r;
  BlockHandle h(r.create("ram:64M"));
  const std::vector<std::byte> data = RandomBytes(24 * kMiB, 2);
  ASSERT_EQ(h.pwrite(data.data(), data.size(), 4 * kMiB), Status::kOk);
  // Read it back in pieces that do not line up with the write's splits.
  std::vector<std::byte> back(data.size());
  const uint64_t pieces[] = {3 * kMiB + 4096, 7 * kMiB - 512, 14 * kMiB - 3584};
  uint64_t at = 0;
  for (uint64_t n : pieces) {
    ASSERT_EQ(h.pread(back.data() + at, n, 4 * kMiB + at), Status::kOk);
    at += n;
  }
  ASSERT_EQ(at, data.size());
  EXPECT_EQ(back, data);
  EXPECT_EQ(h.disk().stats().sectors[kStatWrite], 24 * kMiB / 512);
  EXPECT_EQ(h.disk().stats().sectors[kStatRead], 24 * kMiB / 512);
}

// More than a bio can hold (4 GiB): the call is cut into pieces, none lost.
TEST(BlockHandle, RequestsBeyondFourGiB) {
  DiskRegistry r;
  BlockHandle h(r.create("null:8G"));
  const uint64_t len = 5 * kGiB + kMiB;
  Reservation buf(len);
  ASSERT_NE(buf.get(), nullptr);
  ASSERT_EQ(h.pwrite(buf.get(), len, 2 * kGiB), Status::kOk);
  ASSERT_EQ(h.pread(buf.get(), len, kGiB), Status::kOk);
  ASSERT_EQ(h.discard(0, len), Status::kOk);
  const DiskStats s = h.disk().stats();
  EXPECT_EQ(s.sectors[kStatWrite], len / 512);
  EXPECT_EQ(s.sectors[kStatRead], len / 512);
  EXPECT_EQ(s.sectors[kStatDiscard], len / 512);
  // Past the end by one block, or misaligned at its very end: refused as a
  // whole, not after the first gigabytes were written.
  EXPECT_EQ(h.pwrite(buf.get(), len, 3 * kGiB - kMiB + 512), Status::kOutOfRange);
  EXPECT_EQ(h.pwrite(buf.get(), len + 100, 0), Status::kInvalid);
  EXPECT_EQ(h.discard(3 * kGiB, len), Status::kOutOfRange);
  EXPECT_EQ(h.disk().stats().sectors[kStatWrite], len / 512);
  EXPECT_EQ(h.disk().stats().sectors[kStatDiscard], len / 512);
}

TEST(BlockHandle, OutOfRangeIsRefusedWhole) {
  DiskRegistry r;
  BlockHandle h(r.create("ram:1M"));
  std::vector<std::byte> buf(8192, std::byte{0x5C});
  EXPECT_EQ(h.pread(buf.data(), 512, kMiB), Status::kOutOfRange);
  EXPECT_EQ(h.pread(buf.data(), 4096, kMiB - 512), Status::kOutOfRange);
  EXPECT_EQ(h.pread(buf.data(), 512, uint64_t{1} << 62), Status::kOutOfRange);
  EXPECT_EQ(h.pread(buf.data(), 512, UINT64_MAX - 511), Status::kOutOfRange);
  EXPECT_EQ(h.discard(kMiB - 4096, 8192), Status::kOutOfRange);
  EXPECT_EQ(h.write_zeroes(kMiB, 512), Status::kOutOfRange);
  // A write straddling the end writes nothing, not the part that fits.
  EXPECT_EQ(h.pwrite(buf.data(), 8192, kMiB - 4096), Status::kOutOfRange);
  EXPECT_EQ(h.disk().allocated_bytes(), 0u);
  std::vector<std::byte> tail(4096);
  ASSERT_EQ(h.pread(tail.data(), tail.size(), kMiB - 4096), Status::kOk);
  EXPECT_TRUE(AllZero(tail));
  // The last block itself is fine.
  EXPECT_EQ(h.pwrite(buf.data(), 512, kMiB - 512), Status::kOk);
}

TEST(BlockHandle, MisalignedIsInvalid) {
  DiskRegistry r;
  BlockHandle h(r.create("ram:1M"));
  std::vector<std::byte> buf(8192);
  EXPECT_EQ(h.pread(buf.data(), 512, 100), Status::kInvalid);
  EXPECT_EQ(h.pread(buf.data(), 100, 0), Status::kInvalid);
  EXPECT_EQ(h.pwrite(buf.data(), 513, 0), Status::kInvalid);
  EXPECT_EQ(h.discard(1, 512), Status::kInvalid);
  EXPECT_EQ(h.write_zeroes(0, 511), Status::kInvalid);
  EXPECT_EQ(h.disk().allocated_bytes(), 0u);

  BlockHandle h4k(r.create("ram:1M,bs=4096"));
  EXPECT_EQ(h4k.pread(buf.data(), 4096, 512), Status::kInvalid);
  EXPECT_EQ(h4k.pread(buf.data(), 512, 0), Status::kInvalid);
  EXPECT_EQ(h4k.pwrite(buf.data(), 6144, 0), Status::kInvalid);
  EXPECT_EQ(h4k.discard(4096, 2048), Status::kInvalid);
  EXPECT_EQ(h4k.pread(buf.data(), 8192, 4096), Status::kOk);
}

TEST(BlockHandle, ZeroLengthIsANoOp) {
  DiskRegistry r;
  BlockHandle h(r.create("ram:1M"));
  std::vector<std::byte> buf(512);
  EXPECT_EQ(h.pread(buf.data(), 0, 0), Status::kOk);
  EXPECT_EQ(h.pwrite(buf.data(), 0, 4096), Status::kOk);
  EXPECT_EQ(h.disk().allocated_bytes(), 0u);
}

TEST(BlockHandle, ReadOnlyRefusesEveryWrite) {
  DiskRegistry r;
  BlockHandle h(r.create("ram:1M,ro=1"));
  std::vector<std::byte> buf(4096, std::byte{1});
  EXPECT_EQ(h.pwrite(buf.data(), buf.size(), 0), Status::kReadOnly);
  EXPECT_EQ(h.discard(0, 4096), Status::kReadOnly);
  EXPECT_EQ(h.write_zeroes(0, 4096), Status::kReadOnly);
  EXPECT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOk);
  EXPECT_TRUE(AllZero(buf));
  EXPECT_EQ(h.flush(), Status::kOk) << "a flush changes nothing";
}

TEST(BlockHandle, Flush) {
  DiskRegistry r;
  BlockHandle ram(r.create("ram:1M"));
  EXPECT_EQ(ram.flush(), Status::kOk);
  BlockHandle cached(r.create("null:1M,wc=1,fua=1"));
  std::vector<std::byte> buf(4096);
  EXPECT_EQ(cached.pwrite(buf.data(), buf.size(), 0, BioFlag::kFua), Status::kOk);
  EXPECT_EQ(cached.pwrite(buf.data(), buf.size(), 0, BioFlag::kPreflush), Status::kOk);
  EXPECT_EQ(cached.flush(), Status::kOk);
  EXPECT_EQ(cached.disk().stats().ios[kStatFlush], 1u);
  EXPECT_EQ(cached.disk().stats().ios[kStatWrite], 2u);
}

TEST(BlockHandle, DiscardAndWriteZeroes) {
  DiskRegistry r;
  BlockHandle h(r.create("ram:4M"));
  const std::vector<std::byte> data = RandomBytes(kMiB, 3);
  std::vector<std::byte> back(kMiB);

  ASSERT_EQ(h.pwrite(data.data(), data.size(), 0), Status::kOk);
  ASSERT_EQ(h.discard(0, kMiB), Status::kOk);
  ASSERT_EQ(h.pread(back.data(), back.size(), 0), Status::kOk);
  EXPECT_TRUE(AllZero(back));
  EXPECT_EQ(h.disk().allocated_bytes(), 0u);

  ASSERT_EQ(h.pwrite(data.data(), data.size(), kMiB), Status::kOk);
  ASSERT_EQ(h.write_zeroes(kMiB + 4096, kMiB - 8192), Status::kOk);
  ASSERT_EQ(h.pread(back.data(), back.size(), kMiB), Status::kOk);
  EXPECT_TRUE(std::equal(back.begin(), back.begin() + 4096, data.begin()));
  EXPECT_TRUE(AllZero(std::vector<std::byte>(back.begin() + 4096, back.end() - 4096)));
  EXPECT_TRUE(std::equal(back.end() - 4096, back.end(), data.end() - 4096));
}

// A disk that cannot discard says so; it does not pretend.
TEST(BlockHandle, UnsupportedOpsAreNotSupported) {
  class Instant final : public BioDriver {
   public:
    void submit(Bio& bio) override { bio.complete(Status::kOk); }
  };
  DiskRegistry r;
  auto d = r.add(
      std::make_shared<Disk>("plain0", 2048, QueueLimits{}, std::make_unique<Instant>()),
      "plain");
  BlockHandle h(d);
  EXPECT_EQ(h.discard(0, 4096), Status::kNotSupported);
  EXPECT_EQ(h.write_zeroes(0, 4096), Status::kNotSupported);
  std::vector<std::byte> buf(4096);
  EXPECT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOk);
}

TEST(BlockHandle, RemovedDiskIsOffline) {
  DiskRegistry r;
  BlockHandle h(r.create("null:1M,wc=1"));
  std::vector<std::byte> buf(4096);
  ASSERT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOk);
  r.remove(h.disk().name());
  EXPECT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOffline);
  EXPECT_EQ(h.pwrite(buf.data(), buf.size(), 0), Status::kOffline);
  EXPECT_EQ(h.discard(0, 4096), Status::kOffline);
  EXPECT_EQ(h.write_zeroes(0, 4096), Status::kOffline);
  EXPECT_EQ(h.flush(), Status::kOffline) << "a flush that must reach the device";
}

// One handle shared by several threads, each with its own region: every
// call waits for its own bios only.
TEST(BlockHandle, ConcurrentCallersOnOneHandle) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 200;
  DiskRegistry r;
  BlockHandle h(r.create("ram:16M"));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const uint64_t base = uint64_t(t) * 4 * kMiB;
      std::vector<std::byte> back(64 << 10);
      for (int i = 0; i < kRounds; ++i) {
        const std::vector<std::byte> data = RandomBytes(back.size(), t * 1000 + i);
        const uint64_t off = base + uint64_t(i % 32) * back.size();
        if (h.pwrite(data.data(), data.size(), off) != Status::kOk) ++failures;
        if (h.pread(back.data(), back.size(), off) != Status::kOk) ++failures;
        if (back != data) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures, 0);
}

// Synchronous I/O from inside a driver's submit path can never finish (the
// bios it submits wait for the submit to return); the check aborts with a
// message naming the device instead of hanging (seed 001).
TEST(BlockHandleDeathTest, SyncIoInsideASubmitPathAbortsNamingTheDevice) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  class Stacked final : public BioDriver {
   public:
    explicit Stacked(std::shared_ptr<Disk> lower) : lower_(std::move(lower)) {}
    void submit(Bio& bio) override {
      std::vector<std::byte> buf(bio.size());
      Status s = BlockHandle(lower_).pread(buf.data(), buf.size(), 0);  // never returns
      bio.complete(s);
    }

   private:
    std::shared_ptr<Disk> lower_;
  };
  EXPECT_DEATH(
      {
        DiskRegistry r;
        auto lower = r.create("ram:1M");
        auto upper = r.add(std::make_shared<Disk>("stacked0", 2048, QueueLimits{},
                                                  std::make_unique<Stacked>(lower)),
                           "stacked");
        std::vector<std::byte> buf(512);
        BlockHandle(upper).pread(buf.data(), buf.size(), 0);
      },
      "inside the submit path of device 'stacked0'");
}

}  // namespace
}  // namespace blkstack
