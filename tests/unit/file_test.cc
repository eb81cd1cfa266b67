// The file driver against the real file: what blkstack writes, pread sees,
// and the other way round; holes, zeroes, full file systems, read-only.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/completion.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/error.h"
#include "blkstack/submit.h"
#include "blkstack/zeroout.h"
#include "file_test_util.h"

namespace blkstack {
namespace {

namespace fs = std::filesystem;

class FileDisk : public ScratchDirTest {
 protected:
  static uint64_t blocks_allocated(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_blocks) : ~uint64_t{0};
  }
};

TEST_F(FileDisk, WritesReachTheFileAndFileContentsReadBack) {
  DiskRegistry r;
  auto disk = r.create("file:" + path_ + ",size=16M");
  EXPECT_EQ(disk->size_bytes(), 16u << 20);
  BlockHandle h(disk);
  auto data = pattern(1 << 20, 1);
  ASSERT_EQ(h.pwrite(data.data(), data.size(), 4096), Status::kOk);
  ASSERT_EQ(h.flush(), Status::kOk);

  int fd = open(path_.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::vector<std::byte> seen(data.size());
  ASSERT_EQ(pread(fd, seen.data(), seen.size(), 4096), static_cast<ssize_t>(seen.size()));
  EXPECT_EQ(seen, data);
  close(fd);

  // And the other way: bytes written to the file with pwrite read back.
  auto other = pattern(64 << 10, 2);
  fd = open(path_.c_str(), O_WRONLY);
  ASSERT_EQ(pwrite(fd, other.data(), other.size(), 8 << 20),
            static_cast<ssize_t>(other.size()));
  close(fd);
  std::vector<std::byte> got(other.size());
  ASSERT_EQ(h.pread(got.data(), got.size(), 8 << 20), Status::kOk);
  EXPECT_EQ(got, other);
}

TEST_F(FileDisk, ManySegmentsAndFuaWrites) {
  DiskRegistry r;
  auto disk = r.create("file:" + path_ + ",size=4M,direct=off");
  auto data = pattern(64 * 512, 3);
  std::vector<Segment> segs;
  for (size_t i = 0; i < 64; ++i) segs.emplace_back(&data[i * 512], 512);
  Bio bio;
  Completion done;
  bio.init(
      disk.get(), Op::kWrite, 16, segs,
      [](Bio& b) { static_cast<Completion*>(b.context())->complete(); }, &done);
  bio.set_flags(BioFlag::kFua);
  submit_bio(bio);
  done.wait();
  ASSERT_EQ(bio.status(), Status::kOk);
  std::vector<std::byte> seen(data.size());
  int fd = open(path_.c_str(), O_RDONLY);
  ASSERT_EQ(pread(fd, seen.data(), seen.size(), 16 * 512),
            static_cast<ssize_t>(seen.size()));
  close(fd);
  EXPECT_EQ(seen, data);
}

TEST_F(FileDisk, DiscardPunchesHolesAndWriteZeroesReadsZero) {
  DiskRegistry r;
  auto disk = r.create("file:" + path_ + ",size=8M");
  ASSERT_GT(disk->limits().max_discard_sectors, 0u)
      << "the file system cannot punch holes";
  BlockHandle h(disk);
  auto data = pattern(4 << 20, 4);
  ASSERT_EQ(h.pwrite(data.data(), data.size(), 0), Status::kOk);
  ASSERT_EQ(h.flush(), Status::kOk);
  const uint64_t before = blocks_allocated(path_);
  ASSERT_EQ(h.discard(0, 2 << 20), Status::kOk);
  const uint64_t after = blocks_allocated(path_);
  EXPECT_LT(after, before) << "st_blocks did not fall: nothing was deallocated";
  EXPECT_LE(after, before - (2 << 20) / 512 + 64);

  ASSERT_EQ(h.write_zeroes(2 << 20, 1 << 20), Status::kOk);
  std::vector<std::byte> got(1 << 20, std::byte{0x5a});
  ASSERT_EQ(h.pread(got.data(), got.size(), 2 << 20), Status::kOk);
  EXPECT_EQ(got, std::vector<std::byte>(got.size()));
  // The bytes after the zeroed range are untouched.
  ASSERT_EQ(h.pread(got.data(), got.size(), 3 << 20), Status::kOk);
  EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin() + (3 << 20)));
  // A hole is reported as one.
  Extent e = disk->extent_at(0, 1 << 20);
  EXPECT_FALSE(e.allocated);
}

// Write-zeroes as FALLOC_FL_ZERO_RANGE leaves the range allocated, so
// zeroing that must keep the space (FUSE ZERO_RANGE, NBD NO_HOLE) uses it
// instead of writing zeroes as data; with zeroes=unmap it punches a hole,
// so such zeroing goes as data.
TEST_F(FileDisk, ZeroRangeIsWriteZeroesThatKeepsTheSpace) {
  DiskRegistry r;
  auto keep = r.create("file:" + path_ + ",size=8M");
  {
    const int fd = open(path_.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    const bool zero_range =
        fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 0, 4096) == 0;
    close(fd);
    if (!zero_range) GTEST_SKIP() << "the file system has no FALLOC_FL_ZERO_RANGE";
  }
  EXPECT_TRUE(keep->limits().write_zeroes_nounmap);
  EXPECT_EQ(zeroout_method(*keep, ZeroFlag::kNoUnmap), ZeroMethod::kWriteZeroes);
  // A hole zeroed with kNoUnmap is allocated afterwards and reads zeroes.
  BlockHandle h(keep);
  ASSERT_EQ(h.discard(0, 4 << 20), Status::kOk);
  const uint64_t before = blocks_allocated(path_);
  ASSERT_EQ(zeroout(keep.get(), 0, 2 << 20, ZeroFlag::kNoUnmap), Status::kOk);
  EXPECT_GE(blocks_allocated(path_), before + (2 << 20) / 512)
      << "the range was not allocated";
  std::vector<std::byte> got(2 << 20, std::byte{0x5a});
  ASSERT_EQ(h.pread(got.data(), got.size(), 0), Status::kOk);
  EXPECT_EQ(got, std::vector<std::byte>(got.size()));

  auto unmap = r.create("file:" + path_ + ",size=8M,zeroes=unmap,direct=on");
  EXPECT_FALSE(unmap->limits().write_zeroes_nounmap);
  EXPECT_EQ(zeroout_method(*unmap, ZeroFlag::kNoUnmap), ZeroMethod::kWriteData);
  // As data: direct I/O from the shared, read-only zero buffer.
  BlockHandle u(unmap);
  auto data = pattern(3 << 20, 9);
  ASSERT_EQ(u.pwrite(data.data(), data.size(), 0), Status::kOk);
  ASSERT_EQ(
      zeroout(unmap.get(), 1024 >> kSectorShift, (2 << 20) + 4096, ZeroFlag::kNoUnmap),
      Status::kOk);
  std::vector<std::byte> all(3 << 20);
  ASSERT_EQ(u.pread(all.data(), all.size(), 0), Status::kOk);
  EXPECT_TRUE(std::equal(all.begin(), all.begin() + 1024, data.begin()));
  EXPECT_TRUE(std::all_of(all.begin() + 1024, all.begin() + 1024 + (2 << 20) + 4096,
                          [](std::byte b) { return b == std::byte{0}; }));
  EXPECT_TRUE(std::equal(all.begin() + 1024 + (2 << 20) + 4096, all.end(),
                         data.begin() + 1024 + (2 << 20) + 4096));
}

TEST_F(FileDisk, ReadOnlyFileRefusesWrites) {
  {
    DiskRegistry r;
    r.create("file:" + path_ + ",size=1M");
  }
  DiskRegistry r;
  auto disk = r.create("file:" + path_ + ",ro=1");
  EXPECT_TRUE(disk->read_only());
  BlockHandle h(disk);
  std::vector<std::byte> buf(4096);
  EXPECT_EQ(h.pwrite(buf.data(), buf.size(), 0), Status::kReadOnly);
  EXPECT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOk);
}

TEST_F(FileDisk, BadSpecsSayWhatIsWrong) {
  DiskRegistry r;
  try {
    r.create("file:" + dir_ + "/missing.img");
    FAIL() << "opened a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.img"), std::string::npos) << e.what();
  }
  EXPECT_THROW(r.create("file:" + dir_), Error);  // a directory
  EXPECT_THROW(r.create("file:" + path_ + ",size=1M,queue_mode=bio"), Error);
  {
    int fd = open(path_.c_str(), O_CREAT | O_WRONLY, 0644);
    close(fd);
  }
  EXPECT_THROW(r.create("file:" + path_), Error);  // empty, no size=
}

// A full file system gives kNoSpace on exactly the writes that did not fit.
TEST_F(FileDisk, FullFileSystemIsNoSpaceOnTheFailedWrite) {
  const std::string mnt = dir_ + "/small";
  fs::create_directory(mnt);
  if (mount("blkstack-test", mnt.c_str(), "tmpfs", 0, "size=1m") != 0) {
    GTEST_SKIP() << "cannot mount a small tmpfs here (not root?)";
  }
  {
    DiskRegistry r;
    // 8 MiB of sparse file on a 1 MiB file system: writes beyond ~1 MiB fail.
    auto disk = r.create("file:" + mnt + "/disk.img,size=8M,direct=off");
    BlockHandle h(disk);
    auto data = pattern(256 << 10, 5);
    int ok = 0, nospace = 0, other = 0;
    for (uint64_t off = 0; off < (8u << 20); off += data.size()) {
      Status s = h.pwrite(data.data(), data.size(), off);
      if (s == Status::kOk) {
        ++ok;
      } else if (s == Status::kNoSpace) {
        ++nospace;
      } else {
        ++other;
        ADD_FAILURE() << "offset " << off << ": " << status_name(s);
      }
    }
    EXPECT_GE(ok, 1);
    EXPECT_GE(nospace, 1);
    EXPECT_EQ(other, 0);
    // What did fit reads back.
    std::vector<std::byte> got(data.size());
    ASSERT_EQ(h.pread(got.data(), got.size(), 0), Status::kOk);
    EXPECT_EQ(got, data);
  }
  umount2(mnt.c_str(), MNT_DETACH);
}

// Reads past the end of a file that shrank under the disk read zeroes
// instead of spinning or failing.
TEST_F(FileDisk, FileThatShrankReadsZeroesPastItsEnd) {
  DiskRegistry r;
  auto disk = r.create("file:" + path_ + ",size=2M,direct=off");
  BlockHandle h(disk);
  auto data = pattern(1 << 20, 6);
  ASSERT_EQ(h.pwrite(data.data(), data.size(), 1 << 20), Status::kOk);
  ASSERT_EQ(truncate(path_.c_str(), (1 << 20) + 4096), 0);
  std::vector<std::byte> got(64 << 10, std::byte{0x77});
  ASSERT_EQ(h.pread(got.data(), got.size(), 1 << 20), Status::kOk);
  EXPECT_TRUE(std::equal(got.begin(), got.begin() + 4096, data.begin()));
  EXPECT_TRUE(std::all_of(got.begin() + 4096, got.end(),
                          [](std::byte b) { return b == std::byte{0}; }));
}

}  // namespace
}  // namespace blkstack
