// A file disk touches only its own bytes (DESIGN invariant 7): whatever
// limits its range — size= below the file's length, a length that is not a
// multiple of the block size, bs=, read-only — the bytes of the backing
// file or block device outside that range are the same after the disk was
// opened, used to the full (writes, discards, write-zeroes, flushes over
// all of it) and closed as they were before. The same for a loop device
// given a smaller size=.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "file_test_util.h"

namespace blkstack {
namespace {

constexpr std::byte kFill{0xab};

// The whole content of `path` (a regular file).
std::vector<std::byte> read_all(const std::string& path) {
  std::vector<std::byte> data;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return data;
  struct stat st;
  if (fstat(fd, &st) == 0) {
    data.resize(static_cast<size_t>(st.st_size));
    if (pread(fd, data.data(), data.size(), 0) != static_cast<ssize_t>(data.size()))
      data.clear();
  }
  close(fd);
  return data;
}

void write_file(const std::string& path, size_t len) {
  std::vector<std::byte> data(len, kFill);
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), 0), static_cast<ssize_t>(len));
  close(fd);
}

// Fails the test at the first byte at or after `from` that differs between
// `before` and `after` (which must be as long).
void expect_same_from(const std::vector<std::byte>& before,
                      const std::vector<std::byte>& after, uint64_t from) {
  ASSERT_EQ(after.size(), before.size()) << "the backing file changed length";
  for (uint64_t i = from; i < before.size(); ++i) {
    if (after[i] != before[i]) {
      ADD_FAILURE() << "byte " << i << " outside the device (which ends at " << from
                    << ") changed from 0x" << std::hex << static_cast<int>(before[i])
                    << " to 0x" << static_cast<int>(after[i]);
      return;
    }
  }
}

// Uses every byte of the disk as a writer would: data everywhere, then a
// discard and a write-zeroes of all of it where the disk offers them, and
// a flush. Read-only disks are only read.
void use_all_of(const std::shared_ptr<Disk>& disk) {
  BlockHandle h(disk);
  const uint64_t size = disk->size_bytes();
  std::vector<std::byte> buf(size, std::byte{0x5c});
  if (disk->read_only()) {
    ASSERT_EQ(h.pread(buf.data(), size, 0), Status::kOk);
    return;
  }
  ASSERT_EQ(h.pwrite(buf.data(), size, 0), Status::kOk);
  if (disk->limits().max_discard_sectors > 0) {
    ASSERT_EQ(h.discard(0, size), Status::kOk);
  }
  ASSERT_EQ(h.write_zeroes(0, size), Status::kOk);
  ASSERT_EQ(h.flush(), Status::kOk);
  ASSERT_EQ(h.pread(buf.data(), size, 0), Status::kOk);
  EXPECT_EQ(buf, std::vector<std::byte>(size)) << "write-zeroes did not zero the device";
}

class FileIntegrity : public ScratchDirTest {};

TEST_F(FileIntegrity, BytesOutsideTheDeviceAreKeptUnderEveryRangeOption) {
  struct Case {
    size_t file_len;
    const char* options;
    uint64_t device_len;  // where the disk must end
  };
  const Case cases[] = {
      {2 << 20, ",size=1M", 1 << 20},               // size= below the file's length
      {2 << 20, ",size=1M,direct=off", 1 << 20},    // through the page cache
      {2 << 20, ",size=1M,zeroes=unmap", 1 << 20},  // write-zeroes punches
      {2 << 20, ",size=1M,ro=1", 1 << 20},          // read-only
      {10000, "", 9728},                            // a length not a block multiple
      {10000, ",direct=off", 9728},                 //
      {10000, ",bs=4096", 8192},                    // bs= cuts more off
      {10000, ",ro=1", 9728},                       //
      {(2 << 20) + 1000, ",size=1M,bs=4096", 1 << 20},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::to_string(c.file_len) + " byte file, options '" + c.options + "'");
    write_file(path_, c.file_len);
    const std::vector<std::byte> before = read_all(path_);
    {
      DiskRegistry r;
      auto disk = r.create("file:" + path_ + c.options);
      ASSERT_EQ(disk->size_bytes(), c.device_len);
      // Opening alone must not have touched anything.
      expect_same_from(before, read_all(path_), c.device_len);
      use_all_of(disk);
    }
    expect_same_from(before, read_all(path_), c.device_len);
  }
}

// Runs `command` in a shell and returns the first line it prints ("" if
// it fails).
std::string first_line_of(const std::string& command) {
  FILE* p = popen(command.c_str(), "r");
  if (!p) return {};
  char line[256] = {};
  const bool got = fgets(line, sizeof line, p) != nullptr;
  const int rc = pclose(p);
  if (!got || rc != 0) return {};
  std::string s(line);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// A block device bigger than size=: the bytes past size= on the device (the
// backing file of a loop device here) are kept.
TEST_F(FileIntegrity, LoopDeviceBytesPastSizeAreKept) {
  if (access("/dev/loop-control", F_OK) != 0) {
    GTEST_SKIP()
        << "/dev/loop-control is missing: no loop devices to test a block device on";
  }
  write_file(path_, 2 << 20);
  const std::string loop =
      first_line_of("losetup --find --show '" + path_ + "' 2>/dev/null");
  if (loop.empty())
    GTEST_SKIP() << "losetup --find --show failed (not root, or no util-linux)";
  const std::vector<std::byte> before = read_all(path_);
  for (const char* options : {",size=1M", ",size=1M,direct=off", ",size=1M,ro=1"}) {
    SCOPED_TRACE(loop + options);
    {
      DiskRegistry r;
      auto disk = r.create("file:" + loop + options);
      ASSERT_EQ(disk->size_bytes(), 1u << 20);
      use_all_of(disk);
    }
    // The loop device writes through the backing file's page cache, where
    // read_all() looks.
    expect_same_from(before, read_all(path_), 1 << 20);
  }
  EXPECT_EQ(system(("losetup -d " + loop).c_str()), 0);
}

}  // namespace
}  // namespace blkstack
