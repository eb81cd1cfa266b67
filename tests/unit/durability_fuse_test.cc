// What each acknowledgement of the FUSE export promises across a host
// crash: the export mounted for real over a file disk whose host file is a
// CrashHost (crash_host.h), so a cut that keeps nothing of the host's page
// cache shows what an fsync, fdatasync, close, O_SYNC/O_DSYNC or RWF_DSYNC
// write made durable, and that a plain write is not. Needs root and
// /dev/fuse (skipped without them).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "crash_host.h"
#include "durability_model.h"
#include "export/export_table.h"
#include "export/fuse/fuse_export.h"
#include "export/log.h"
#include "file_test_util.h"

namespace blkstack {
namespace {

using durability::kSector;
using durability::stamp;
using durability::stamp_id;
using testing_util::CrashHost;

constexpr uint64_t kBytes = 1 << 20;

class DurabilityFuse : public ScratchDirTest {
 protected:
  void SetUp() override {
    if (getuid() != 0 || access("/dev/fuse", R_OK | W_OK) != 0)
      GTEST_SKIP() << "needs root and /dev/fuse";
    ScratchDirTest::SetUp();
    set_serve_log_enabled(false);
    host_ = std::make_unique<CrashHost>(std::vector<std::byte>(kBytes), 1);
    {
      ScopedHostIoFactory f(host_->factory());
      disk_ = registry_.create("file:" + path_ + ",size=1M,direct=off");
    }
    fuse::FuseOptions o;
    o.mountpoint = dir_ + "/mnt";
    o.threads = 2;
    o.grace = std::chrono::milliseconds(100);
    export_ = std::make_unique<fuse::FuseExport>(
        o, std::make_shared<const ExportTable>(std::vector<Export>{{"disk", "", disk_}}));
    export_->start();
    file_ = o.mountpoint + "/disk";
  }
  void TearDown() override {
    if (!host_) return;
    export_.reset();
    registry_.remove(disk_->name());
    disk_.reset();
    ScratchDirTest::TearDown();
  }

  // Sector `s` stamped with `id`, written at its place through `fd`.
  static ssize_t write_sector(int fd, uint64_t s, uint64_t id, int rwf = 0) {
    std::byte b[kSector];
    stamp(b, s, id);
    iovec v{b, kSector};
    return pwritev2(fd, &v, 1, static_cast<off_t>(s * kSector), rwf);
  }
  // What sector `s` holds after a cut that keeps nothing not made durable.
  std::optional<uint64_t> after_cut(uint64_t s) {
    if (cut_.empty()) cut_ = host_->crash(0.0);
    return stamp_id(&cut_[s * kSector], s);
  }

  std::unique_ptr<CrashHost> host_;
  DiskRegistry registry_;
  std::shared_ptr<Disk> disk_;
  std::unique_ptr<fuse::FuseExport> export_;
  std::string file_;
  std::vector<std::byte> cut_;
};

TEST_F(DurabilityFuse, FdatasyncAndFsyncMakeCompletedWritesDurable) {
  const int fd = open(file_.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write_sector(fd, 0, 1), static_cast<ssize_t>(kSector));
  ASSERT_EQ(fdatasync(fd), 0);
  ASSERT_EQ(write_sector(fd, 1, 2), static_cast<ssize_t>(kSector));
  ASSERT_EQ(fsync(fd), 0);
  ASSERT_EQ(write_sector(fd, 2, 3), static_cast<ssize_t>(kSector));  // not synced
  EXPECT_EQ(after_cut(0), 1u);
  EXPECT_EQ(after_cut(1), 2u);
  EXPECT_EQ(after_cut(2), 0u)
      << "a write no fsync covered survived a cut that kept nothing";
  close(fd);
}

TEST_F(DurabilityFuse, ODsyncAndOSyncWritesAreDurableWhenTheyReturn) {
  const int dsync = open(file_.c_str(), O_RDWR | O_DSYNC);
  const int sync = open(file_.c_str(), O_RDWR | O_SYNC);
  ASSERT_GE(dsync, 0);
  ASSERT_GE(sync, 0);
  ASSERT_EQ(write_sector(dsync, 4, 1), static_cast<ssize_t>(kSector));
  ASSERT_EQ(write_sector(sync, 5, 2), static_cast<ssize_t>(kSector));
  // Not on a block boundary: the read-modify-write path.
  const char text[] = "unaligned and synchronous";
  ASSERT_EQ(pwrite(dsync, text, sizeof text, 6 * kSector + 100),
            static_cast<ssize_t>(sizeof text));
  EXPECT_EQ(after_cut(4), 1u);
  EXPECT_EQ(after_cut(5), 2u);
  EXPECT_EQ(std::memcmp(&cut_[6 * kSector + 100], text, sizeof text), 0);
  close(dsync);
  close(sync);
}

// An unaligned synchronous write across blocks, over flushed contents: the
// whole read-modify-write (the kept edges, the new middle) is durable when
// it returns, not only the bytes written.
TEST_F(DurabilityFuse, AnUnalignedODsyncWriteIsDurableWholeWhenItReturns) {
  const int plain = open(file_.c_str(), O_RDWR);
  const int dsync = open(file_.c_str(), O_RDWR | O_DSYNC);
  ASSERT_GE(plain, 0);
  ASSERT_GE(dsync, 0);
  std::byte old[3 * kSector];
  for (uint64_t i = 0; i < 3; ++i) stamp(old + i * kSector, 12 + i, 3);
  ASSERT_EQ(pwrite(plain, old, sizeof old, 12 * kSector),
            static_cast<ssize_t>(sizeof old));
  ASSERT_EQ(fdatasync(plain), 0);
  const std::vector<char> text(2 * kSector, 'x');  // 12:100 to 14:100
  ASSERT_EQ(pwrite(dsync, text.data(), text.size(), 12 * kSector + 100),
            static_cast<ssize_t>(text.size()));
  after_cut(0);
  const std::byte* at = &cut_[12 * kSector];
  EXPECT_EQ(std::memcmp(at, old, 100), 0) << "the head edge";
  EXPECT_EQ(std::memcmp(at + 100, text.data(), text.size()), 0) << "the new bytes";
  EXPECT_EQ(std::memcmp(at + 100 + text.size(), old + 100 + text.size(),
                        sizeof old - 100 - text.size()),
            0)
      << "the tail edge";
  close(plain);
  close(dsync);
}

TEST_F(DurabilityFuse, RwfDsyncWritesAreDurableWhenTheyReturn) {
  const int fd = open(file_.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write_sector(fd, 7, 1, RWF_DSYNC), static_cast<ssize_t>(kSector));
  ASSERT_EQ(write_sector(fd, 8, 2, RWF_SYNC), static_cast<ssize_t>(kSector));
  EXPECT_EQ(after_cut(7), 1u);
  EXPECT_EQ(after_cut(8), 2u);
  close(fd);
}

TEST_F(DurabilityFuse, CloseFlushesWhatTheHandleWrote) {
  const int fd = open(file_.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write_sector(fd, 9, 1), static_cast<ssize_t>(kSector));
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(after_cut(9), 1u);
}

// O_DIRECT through the FUSE file promises what it promises on a disk: the
// write reached the device (its cache), not stable storage.
TEST_F(DurabilityFuse, ODirectWritesNeedAFlushToBeDurable) {
  const int fd = open(file_.c_str(), O_RDWR | O_DIRECT);
  ASSERT_GE(fd, 0);
  void* mem = nullptr;
  ASSERT_EQ(posix_memalign(&mem, 4096, 4096), 0);
  auto* b = static_cast<std::byte*>(mem);
  for (uint64_t i = 0; i < 8; ++i) stamp(b + i * kSector, 16 + i, 5);
  ASSERT_EQ(pwrite(fd, b, 4096, 16 * kSector), 4096);
  for (uint64_t i = 0; i < 8; ++i) stamp(b + i * kSector, 24 + i, 6);
  ASSERT_EQ(pwrite(fd, b, 4096, 24 * kSector), 4096);
  ASSERT_EQ(fdatasync(fd), 0);
  for (uint64_t i = 0; i < 8; ++i) stamp(b + i * kSector, 32 + i, 7);
  ASSERT_EQ(pwrite(fd, b, 4096, 32 * kSector), 4096);
  for (uint64_t i = 0; i < 8; ++i) {
    EXPECT_EQ(after_cut(16 + i), 5u);
    EXPECT_EQ(after_cut(24 + i), 6u);
    EXPECT_EQ(after_cut(32 + i), 0u);
  }
  free(mem);
  close(fd);
}

// Stopping the export (SIGTERM to blkstack serve) flushes every device,
// also under a handle still open.
TEST_F(DurabilityFuse, StoppingTheExportFlushes) {
  const int fd = open(file_.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write_sector(fd, 10, 1), static_cast<ssize_t>(kSector));
  export_->stop();
  EXPECT_EQ(after_cut(10), 1u);
  close(fd);
}

}  // namespace
}  // namespace blkstack
