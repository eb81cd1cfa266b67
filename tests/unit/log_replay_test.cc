// The log-writes log format and replay-log: a log written entry by entry
// with the encoder, replayed to every entry and mark, must give exactly the
// model's data at that point; malformed logs give a clear error.
#include "dm/log_replay.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "dm/log_reader.h"
#include "dm/log_writes_format.h"

namespace blkstack::logwrites {
namespace {

constexpr uint32_t kBs = 512;
constexpr uint64_t kDevBlocks = 64;

struct MemFile {
  int fd;
  std::string path;
  MemFile() : fd(memfd_create("log_replay_test", 0)) {
    path = "/proc/self/fd/" + std::to_string(fd);
  }
  ~MemFile() { close(fd); }
  std::vector<std::byte> read_all(uint64_t bytes) const {
    std::vector<std::byte> v(bytes);
    EXPECT_EQ(pread(fd, v.data(), bytes, 0), static_cast<ssize_t>(bytes));
    return v;
  }
};

// Writes a log and keeps the device image after each entry.
struct LogBuilder {
  MemFile file;
  uint64_t pos = kBs;  // after the super block
  uint64_t entries = 0;
  std::vector<std::byte> image = std::vector<std::byte>(kDevBlocks * kBs);
  std::vector<std::vector<std::byte>> after;  // image after entry i

  void add(uint64_t flags, uint64_t sector, uint64_t nr, std::byte fill,
           const std::string& mark = "") {
    std::vector<std::byte> block(kBs);
    encode(Entry{sector, nr, flags, mark.size()}, block.data());
    std::memcpy(block.data() + kEntryBytes, mark.data(), mark.size());
    pwrite(file.fd, block.data(), kBs, pos);
    pos += kBs;
    if (flags & kDiscard) {
      std::fill_n(image.begin() + sector * kBs, nr * kBs, std::byte{0});
    } else if (nr) {
      std::vector<std::byte> data(nr * kBs, fill);
      pwrite(file.fd, data.data(), data.size(), pos);
      pos += data.size();
      std::fill_n(image.begin() + sector * kBs, nr * kBs, fill);
    }
    after.push_back(image);
    ++entries;
  }
  void finish() {
    std::vector<std::byte> block(kBs);
    encode(Super{kMagic, kVersion, entries, kBs}, block.data());
    pwrite(file.fd, block.data(), kBs, 0);
  }
};

LogBuilder sample() {
  LogBuilder b;
  b.add(0, 0, 4, std::byte{0x11});                 // 0
  b.add(kFua | kMetadata, 8, 2, std::byte{0x22});  // 1
  b.add(kMark, 0, 0, {}, "one");                   // 2
  b.add(0, 2, 4, std::byte{0x33});                 // 3
  b.add(kDiscard, 0, 3, {});                       // 4
  b.add(kFlush, 0, 0, {});                         // 5
  b.add(0, 60, 4, std::byte{0x44});                // 6
  b.add(kMark, 0, 0, {}, "two");                   // 7
  b.finish();
  return b;
}

int replay(ReplayOptions o, std::string* out = nullptr) {
  char* buf = nullptr;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  const int rc = replay_log(o, f, stderr);
  fclose(f);
  if (out) *out = std::string(buf, len);
  free(buf);
  return rc;
}

TEST(LogReplay, EveryEntryGivesTheDataAtThatPoint) {
  LogBuilder b = sample();
  for (uint64_t n = 1; n <= b.entries; ++n) {
    MemFile dev;
    ASSERT_EQ(ftruncate(dev.fd, kDevBlocks * kBs), 0);
    ReplayOptions o;
    o.log = b.file.path;
    o.replay = dev.path;
    o.limit = n;
    ASSERT_EQ(replay(o), 0);
    EXPECT_EQ(dev.read_all(kDevBlocks * kBs), b.after[n - 1]) << "after entry " << n - 1;
  }
}

TEST(LogReplay, EndMarkStopsAfterTheMark) {
  LogBuilder b = sample();
  for (auto [mark, entry] : {std::pair{"one", 2}, std::pair{"two", 7}}) {
    MemFile dev;
    ASSERT_EQ(ftruncate(dev.fd, kDevBlocks * kBs), 0);
    ReplayOptions o;
    o.log = b.file.path;
    o.replay = dev.path;
    o.end_mark = mark;
    ASSERT_EQ(replay(o), 0);
    EXPECT_EQ(dev.read_all(kDevBlocks * kBs), b.after[entry]) << mark;
  }
  MemFile dev;
  ReplayOptions o;
  o.log = b.file.path;
  o.replay = dev.path;
  o.end_mark = "three";
  EXPECT_EQ(replay(o), 1);  // not in the log: said, not silently replayed whole
}

TEST(LogReplay, FindNumEntriesAndInfoPrintAsReplayLogDoes) {
  LogBuilder b = sample();
  ReplayOptions o;
  o.log = b.file.path;
  std::string out;
  ASSERT_EQ(replay(o, &out), 0);
  EXPECT_EQ(out, "Log version=1, sectorsize=512, entries=8\n");
  o.num_entries = true;
  ASSERT_EQ(replay(o, &out), 0);
  EXPECT_EQ(out, "8\n");
  o.num_entries = false;
  o.find = true;
  o.end_mark = "one";
  ASSERT_EQ(replay(o, &out), 0);
  // Entry 2, and the log block after it: super, 1+4, 1+2, 1.
  EXPECT_EQ(out, "2@10\n");
  o.end_mark.clear();
  o.next_fua = true;
  ASSERT_EQ(replay(o, &out), 0);
  EXPECT_EQ(out, "1@9\n");
}

TEST(LogReplay, StartEntryAndStartMarkSkipTheStart) {
  LogBuilder b = sample();
  MemFile dev;
  ASSERT_EQ(ftruncate(dev.fd, kDevBlocks * kBs), 0);
  ReplayOptions o;
  o.log = b.file.path;
  o.replay = dev.path;
  o.start_mark = "one";  // entries 3.. only
  ASSERT_EQ(replay(o), 0);
  std::vector<std::byte> want(kDevBlocks * kBs);
  std::fill_n(want.begin() + 3 * kBs, 3 * kBs, std::byte{0x33});
  std::fill_n(want.begin() + 60 * kBs, 4 * kBs, std::byte{0x44});
  EXPECT_EQ(dev.read_all(kDevBlocks * kBs), want);
}

TEST(LogReplay, CheckRunsFsckAtEachFlushAndStopsWhenItFails) {
  LogBuilder b = sample();
  MemFile dev;
  ASSERT_EQ(ftruncate(dev.fd, kDevBlocks * kBs), 0);
  ReplayOptions o;
  o.log = b.file.path;
  o.replay = dev.path;
  o.check = "flush";
  o.fsck = "true";
  EXPECT_EQ(replay(o), 0);
  o.fsck = "false";
  EXPECT_EQ(replay(o), 1);
  o.check = "0";
  EXPECT_EQ(replay(o), 1);  // refused: a count from 1
}

TEST(LogReplay, MalformedLogsGiveAClearError) {
  {
    MemFile f;  // empty
    ReplayOptions o;
    o.log = f.path;
    EXPECT_EQ(replay(o), 1);
  }
  LogBuilder b = sample();
  std::vector<std::byte> block(kBs);
  encode(Super{kMagic, 2, 8, kBs}, block.data());  // bad version
  pwrite(b.file.fd, block.data(), kBs, 0);
  ReplayOptions o;
  o.log = b.file.path;
  EXPECT_EQ(replay(o), 1);
  encode(Super{kMagic, kVersion, 100, kBs}, block.data());  // more entries than there are
  pwrite(b.file.fd, block.data(), kBs, 0);
  MemFile dev;
  o.replay = dev.path;
  EXPECT_EQ(replay(o), 1);
  encode(Super{kMagic, kVersion, 8, 1000}, block.data());  // not a block size
  pwrite(b.file.fd, block.data(), kBs, 0);
  EXPECT_EQ(replay(o), 1);
}

TEST(LogFormat, FlagNamesAreReplayLogs) {
  EXPECT_EQ(flags_name(0), "NONE");
  EXPECT_EQ(flags_name(kFlush | kFua), "FLUSH|FUA");
  EXPECT_EQ(flags_name(kMark | 0x40), "MARK|UNKNOWN.0x40");
}

}  // namespace
}  // namespace blkstack::logwrites
