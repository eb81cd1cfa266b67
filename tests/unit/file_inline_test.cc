// The file driver's in-line reads: a read alone on an idle ring is done on
// the submitting thread (tmpfs, a page-cache hit), a batch of 32 goes
// through the ring, and a read that would block (-EAGAIN from RWF_NOWAIT)
// falls back to the ring with the right data. A host I/O queue that wraps
// the real io_uring one counts which way each read went.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/io_context.h"
#include "blkstack/plug.h"
#include "drivers/host_io.h"
#include "drivers/uring_queue.h"
#include "file_test_util.h"

namespace blkstack {
namespace {

struct Counts {
  std::atomic<int> inline_reads{0};  // read_now did it
  std::atomic<int> inline_again{0};  // read_now said -EAGAIN
  std::atomic<int> ring_reads{0};    // reads prepared on the ring
};

// The real io_uring queue, counting.
class CountingRing final : public HostIoQueue {
 public:
  CountingRing(const HostIoSetup& s, Counts& counts)
      : ring_(
            s.fd, s.alt_fd,
            [&] {
              UringQueue::Options o;
              o.completion_thread = !s.polled;
              return o;
            }(),
            s.on_complete),
        counts_(counts) {}
  bool queue(const HostIo& io, void* ctx) override {
    if (io.kind == HostIo::kRead) ++counts_.ring_reads;
    return ring_.queue(io, ctx);
  }
  void submit() override { ring_.submit(); }
  int poll(uint64_t wait_ns) override { return ring_.poll(wait_ns); }
  int read_now(const HostIo& io) override {
    const int r = ring_.read_now(io);
    ++(r == -EAGAIN ? counts_.inline_again : counts_.inline_reads);
    return r;
  }

 private:
  UringQueue ring_;
  Counts& counts_;
};

bool swap_active() {
  std::ifstream f("/proc/swaps");
  std::string line;
  int n = 0;
  while (std::getline(f, line)) ++n;
  return n > 1;
}

class FileInline : public ScratchDirTest {
 protected:
  void TearDown() override {
    disk_.reset();
    ScratchDirTest::TearDown();
  }
  void make_disk(const std::string& path, const std::string& options) {
    ScopedHostIoFactory factory(
        [&](const HostIoSetup& s) -> std::unique_ptr<HostIoQueue> {
          return std::make_unique<CountingRing>(s, counts_);
        });
    disk_ = registry_.create("file:" + path + ",size=8M,partscan=0" + options);
  }

  Counts counts_;
  DiskRegistry registry_;
  std::shared_ptr<Disk> disk_;
};

TEST_F(FileInline, TmpfsReadsInLineAtDepthOneAndThroughTheRingAtDepth32) {
  struct statfs fs;
  if (statfs("/dev/shm", &fs) != 0 || fs.f_type != TMPFS_MAGIC || swap_active())
    GTEST_SKIP() << "needs /dev/shm on tmpfs and no swap";
  char tmpl[] = "/dev/shm/blkstack-inline-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  make_disk(dir + "/disk.img", ",inline_read=1");
  auto data = pattern(8 << 20, 3);
  BlockHandle h(disk_);
  ASSERT_EQ(h.pwrite(data.data(), data.size(), 0), Status::kOk);

  // Depth 1: every read in line, none on the ring.
  std::mt19937 rng(1);
  std::vector<std::byte> buf(32 * 4096);
  for (int i = 0; i < 200; ++i) {
    const uint64_t off = (rng() % (data.size() / 4096)) * 4096;
    ASSERT_EQ(h.pread(buf.data(), 4096, off), Status::kOk);
    ASSERT_EQ(std::memcmp(buf.data(), &data[off], 4096), 0);
  }
  EXPECT_EQ(counts_.inline_reads.load(), 200);
  EXPECT_EQ(counts_.ring_reads.load(), 0);

  // Depth 32, submitted as one batch: the ring takes them.
  const int before = counts_.inline_reads.load();
  IoContext ctx(32);
  std::vector<Iocb> cbs(32);
  constexpr int kRounds = 20;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<Iocb*> list;
    for (unsigned i = 0; i < 32; ++i) {
      const uint64_t block = rng() % (data.size() / 4096);
      cbs[i] = Iocb::pread(disk_.get(), &buf[i * 4096], 4096, block * 4096, i);
      list.push_back(&cbs[i]);
    }
    {
      Plug plug;
      ASSERT_EQ(ctx.submit(list), 32);
    }
    IoEvent ev[32];
    int got = 0;
    while (got < 32) {
      const int n = ctx.get_events(1, {ev + got, 32 - static_cast<size_t>(got)},
                                   std::chrono::seconds(10));
      ASSERT_GT(n, 0);
      got += n;
    }
    for (const Iocb& cb : cbs) ASSERT_EQ(std::memcmp(cb.buf, &data[cb.offset], 4096), 0);
  }
  // At most the first of a batch (the ring idle) could go in line.
  EXPECT_LE(counts_.inline_reads.load() - before, kRounds);
  EXPECT_GE(counts_.ring_reads.load(), 31 * kRounds);
  disk_.reset();
  std::filesystem::remove_all(dir);
}

// A file shorter than the disk (it shrank): a read in line that stops at
// the end of the file finishes on the ring, the rest read as zeroes, as the
// ring path does; a read wholly past the end is zeroes at once.
TEST_F(FileInline, AShortReadAtTheEndOfTheFileEndsWithZeroes) {
  struct statfs fs;
  if (statfs("/dev/shm", &fs) != 0 || fs.f_type != TMPFS_MAGIC || swap_active())
    GTEST_SKIP() << "needs /dev/shm on tmpfs and no swap";
  char tmpl[] = "/dev/shm/blkstack-inline-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  struct Cleanup {
    std::string dir;
    ~Cleanup() { std::filesystem::remove_all(dir); }
  } cleanup{dir};
  make_disk(dir + "/disk.img", ",inline_read=1");
  const auto data = pattern(2 << 20, 5);
  BlockHandle h(disk_);
  ASSERT_EQ(h.pwrite(data.data(), data.size(), 0), Status::kOk);
  constexpr uint64_t kEnd = (1 << 20) + 2048;
  ASSERT_EQ(truncate((dir + "/disk.img").c_str(), kEnd), 0);

  std::vector<std::byte> buf(8192, std::byte{0x55});
  ASSERT_EQ(h.pread(buf.data(), buf.size(), 1 << 20), Status::kOk);
  EXPECT_EQ(std::memcmp(buf.data(), &data[1 << 20], 2048), 0);
  EXPECT_TRUE(std::all_of(buf.begin() + 2048, buf.end(),
                          [](std::byte b) { return b == std::byte{0}; }));
  std::fill(buf.begin(), buf.end(), std::byte{0x55});
  ASSERT_EQ(h.pread(buf.data(), buf.size(), 4 << 20), Status::kOk);
  EXPECT_TRUE(
      std::all_of(buf.begin(), buf.end(), [](std::byte b) { return b == std::byte{0}; }));
  EXPECT_EQ(counts_.inline_reads.load(), 2);
  EXPECT_EQ(counts_.ring_reads.load(), 1);  // the rest of the short one
  disk_.reset();
}

// A buffered file on a disk file system: a read the page cache cannot
// serve gets -EAGAIN from RWF_NOWAIT and goes through the ring; once
// cached, the same read is done in line.
TEST_F(FileInline, ACacheMissFallsBackToTheRingAndAHitIsInLine) {
  make_disk(path_, ",direct=off,inline_read=1");
  auto data = pattern(1 << 20, 4);
  BlockHandle h(disk_);
  ASSERT_EQ(h.pwrite(data.data(), data.size(), 0), Status::kOk);
  ASSERT_EQ(h.flush(), Status::kOk);
  int fd = open(path_.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  close(fd);

  std::vector<std::byte> back(64 << 10);
  ASSERT_EQ(h.pread(back.data(), back.size(), 128 << 10), Status::kOk);
  EXPECT_EQ(std::memcmp(back.data(), &data[128 << 10], back.size()), 0);
  EXPECT_EQ(counts_.inline_again.load(), 1) << "the miss was tried in line first";
  EXPECT_EQ(counts_.ring_reads.load(), 1) << "then sent through the ring";

  const int inline_before = counts_.inline_reads.load();
  ASSERT_EQ(h.pread(back.data(), back.size(), 128 << 10), Status::kOk);
  EXPECT_EQ(std::memcmp(back.data(), &data[128 << 10], back.size()), 0);
  EXPECT_EQ(counts_.inline_reads.load(), inline_before + 1);
  EXPECT_EQ(counts_.ring_reads.load(), 1);
}

// With O_DIRECT on a disk file system a read waits for the device: never
// in line.
TEST_F(FileInline, DirectIoOnADiskFileSystemAlwaysTakesTheRing) {
  make_disk(path_, ",direct=on,inline_read=1");
  std::vector<std::byte> buf(4096);
  BlockHandle h(disk_);
  for (int i = 0; i < 4; ++i) ASSERT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOk);
  EXPECT_EQ(counts_.inline_reads.load(), 0);
  EXPECT_EQ(counts_.ring_reads.load(), 4);
}

// Off by default: not even tried.
TEST_F(FileInline, OffUnlessAskedFor) {
  make_disk(path_, ",direct=off,inline_read=0");
  std::vector<std::byte> buf(4096);
  BlockHandle h(disk_);
  for (int i = 0; i < 4; ++i) ASSERT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOk);
  EXPECT_EQ(counts_.inline_reads.load() + counts_.inline_again.load(), 0);
  EXPECT_EQ(counts_.ring_reads.load(), 4);
}

}  // namespace
}  // namespace blkstack
