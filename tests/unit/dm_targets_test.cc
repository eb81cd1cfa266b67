// The flakey, delay, log-writes and mirror targets against reference
// models: flakey's features, delay's delays, log-writes' logs replayed to
// every mark, and a mirror that loses a leg to flakey and resyncs it.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "dm/log_reader.h"
#include "dm/log_replay.h"
#include "dm/mapped_device.h"

namespace blkstack {
namespace {

using Clock = std::chrono::steady_clock;
using Bytes = std::vector<std::byte>;

Bytes fill(size_t n, uint8_t v) { return Bytes(n, std::byte{v}); }

std::string devt(DiskRegistry& r, const std::string& name) {
  auto d = r.get(name);
  return fmt::format("{}:{}", d->major(), d->minor());
}

Bytes read_all(DiskRegistry& r, const std::string& name, uint64_t bytes) {
  Bytes v(bytes);
  BlockHandle h(r.get(name));  // reading: held devices too
  EXPECT_EQ(h.pread(v.data(), bytes, 0), Status::kOk);
  return v;
}

// A file disk: unlike ram it has a volatile write cache, so flushes and
// FUA reach the targets above it (a device without one drops them, as
// Linux does).
struct CachedDisk {
  std::string path;
  std::string name;
  CachedDisk(DiskRegistry& r, uint64_t bytes) {
    char tmpl[] = "/tmp/dm_targets_test.XXXXXX";
    const int fd = mkstemp(tmpl);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(bytes)), 0);
    close(fd);
    path = tmpl;
    name = r.create("file:" + path)->name();
  }
  ~CachedDisk() { unlink(path.c_str()); }
};

void swap_table(MappedDevice& md, const std::string& table) {
  md.load(table);
  md.suspend();
  md.resume();
}

// --- flakey -----------------------------------------------------------------

TEST(Flakey, DownWithoutFeaturesFailsReadsAndWrites) {
  DiskRegistry r;
  r.create("ram:1M");
  MappedDevice& md = MappedDevice::create(r, "fl", "", "0 2048 flakey ram0 0 0 1");
  EXPECT_EQ(md.table_text(), fmt::format("0 2048 flakey {} 0 0 1 0\n", devt(r, "ram0")));
  BlockHandle h = BlockHandle::open(r, "fl");
  Bytes b = fill(4096, 1);
  EXPECT_EQ(h.pwrite(b.data(), b.size(), 0), Status::kIoError);
  EXPECT_EQ(h.pread(b.data(), b.size(), 0), Status::kIoError);
  swap_table(md, "0 2048 flakey ram0 0 1 0");  // up for good
  EXPECT_EQ(h.pwrite(b.data(), b.size(), 0), Status::kOk);
  EXPECT_EQ(h.pread(b.data(), b.size(), 0), Status::kOk);
}

TEST(Flakey, DropWritesAndErrorWritesLeaveReadsAlone) {
  DiskRegistry r;
  r.create("ram:1M");
  const Bytes old = fill(4096, 7);
  BlockHandle(r.get("ram0")).pwrite(old.data(), old.size(), 0);
  MappedDevice& md =
      MappedDevice::create(r, "fl", "", "0 2048 flakey ram0 0 0 1 1 drop_writes");
  EXPECT_EQ(md.table_text(),
            fmt::format("0 2048 flakey {} 0 0 1 1 drop_writes\n", devt(r, "ram0")));
  BlockHandle h = BlockHandle::open(r, "fl");
  Bytes b = fill(4096, 9);
  EXPECT_EQ(h.pwrite(b.data(), b.size(), 0), Status::kOk);  // said done, dropped
  EXPECT_EQ(h.pread(b.data(), b.size(), 0), Status::kOk);
  EXPECT_EQ(b, old);
  swap_table(md, "0 2048 flakey ram0 0 0 1 2 error_writes error_reads");
  EXPECT_EQ(md.table_text(),
            fmt::format("0 2048 flakey {} 0 0 1 2 error_reads error_writes\n",
                        devt(r, "ram0")));
  EXPECT_EQ(h.pwrite(b.data(), b.size(), 0), Status::kIoError);
  EXPECT_EQ(h.pread(b.data(), b.size(), 0), Status::kIoError);
}

TEST(Flakey, CorruptBioByteOnReadsAndOnACopyOfWrites) {
  DiskRegistry r;
  r.create("ram:1M");
  MappedDevice& md = MappedDevice::create(
      r, "fl", "", "0 2048 flakey ram0 0 0 1 5 corrupt_bio_byte 32 r 171 0");
  EXPECT_EQ(md.table_text(),
            fmt::format("0 2048 flakey {} 0 0 1 5 corrupt_bio_byte 32 r 171 0\n",
                        devt(r, "ram0")));
  BlockHandle h = BlockHandle::open(r, "fl");
  Bytes b = fill(4096, 1);
  ASSERT_EQ(h.pwrite(b.data(), b.size(), 0), Status::kOk);
  Bytes back(4096);
  ASSERT_EQ(h.pread(back.data(), back.size(), 0), Status::kOk);
  Bytes want = b;
  want[31] = std::byte{171};
  EXPECT_EQ(back, want);
  EXPECT_EQ(read_all(r, "ram0", 4096), b);  // the device itself is intact

  swap_table(md, "0 2048 flakey ram0 0 0 1 5 corrupt_bio_byte 1 w 0 0");
  ASSERT_EQ(h.pwrite(b.data(), b.size(), 0), Status::kOk);
  EXPECT_EQ(b, fill(4096, 1));  // the caller's buffer is left alone
  want = b;
  want[0] = std::byte{0};
  EXPECT_EQ(read_all(r, "ram0", 4096), want);
}

TEST(Flakey, RandomWorkloadWhileUpMatchesTheModel) {
  DiskRegistry r;
  r.create("ram:4M");
  MappedDevice::create(r, "fl", "", "0 8192 flakey ram0 0 1 0 2 random_read_corrupt 0");
  Bytes model(4 << 20);
  std::mutex mu;
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      BlockHandle h = BlockHandle::open(r, "fl");
      std::mt19937 rng(t);
      for (int i = 0; i < 200; ++i) {
        // Each thread owns its own quarter: the model needs no ordering.
        const uint64_t off = (uint64_t(t) << 20) + (rng() % 250) * 4096;
        Bytes b = fill(4096, static_cast<uint8_t>(rng()));
        ASSERT_EQ(h.pwrite(b.data(), b.size(), off), Status::kOk);
        std::lock_guard lock(mu);
        std::memcpy(model.data() + off, b.data(), b.size());
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(read_all(r, "fl", model.size()), model);
}

// --- delay ------------------------------------------------------------------

TEST(Delay, ReadsWritesAndFlushesWaitTheirOwnDelays) {
  DiskRegistry r;
  r.create("ram:1M");
  r.create("ram:1M");
  MappedDevice& md =
      MappedDevice::create(r, "dl", "", "0 2048 delay ram0 0 0 ram1 0 150");
  EXPECT_EQ(md.table_text(), fmt::format("0 2048 delay {} 0 0 {} 0 150\n",
                                         devt(r, "ram0"), devt(r, "ram1")));
  EXPECT_EQ(md.status_text(), "0 2048 delay 0 0 0\n");
  BlockHandle h = BlockHandle::open(r, "dl");
  Bytes b = fill(4096, 3);
  auto t0 = Clock::now();
  ASSERT_EQ(h.pwrite(b.data(), b.size(), 0), Status::kOk);
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(150));
  EXPECT_EQ(read_all(r, "ram1", 4096), b);  // writes go to the write device
  t0 = Clock::now();
  ASSERT_EQ(h.pread(b.data(), b.size(), 0), Status::kOk);  // from ram0: zeroes
  EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(100));
  EXPECT_EQ(b, fill(4096, 0));
}

TEST(Delay, FlushesHaveTheirOwnDelay) {
  DiskRegistry r;
  CachedDisk f(r, 1 << 20);  // flushes reach only devices with a write cache
  MappedDevice& md = MappedDevice::create(
      r, "dl", "", fmt::format("0 2048 delay {0} 0 0 {0} 0 0 {0} 0 120", f.name));
  EXPECT_EQ(md.table_text(),
            fmt::format("0 2048 delay {0} 0 0 {0} 0 0 {0} 0 120\n", devt(r, f.name)));
  BlockHandle h = BlockHandle::open(r, "dl");
  Bytes b = fill(4096, 3);
  auto t0 = Clock::now();
  ASSERT_EQ(h.flush(), Status::kOk);
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(120));
  t0 = Clock::now();
  ASSERT_EQ(h.pwrite(b.data(), b.size(), 0), Status::kOk);
  EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(100));
}

TEST(Delay, ManyThreadsKeepOrderAndData) {
  DiskRegistry r;
  r.create("ram:4M");
  MappedDevice& md = MappedDevice::create(r, "dl", "", "0 8192 delay ram0 0 20");
  Bytes model(4 << 20);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      BlockHandle h = BlockHandle::open(r, "dl");
      std::mt19937 rng(t);
      for (int i = 0; i < 20; ++i) {
        const uint64_t off = (uint64_t(t) << 20) + (rng() % 250) * 4096;
        Bytes b = fill(4096, static_cast<uint8_t>(rng()));
        ASSERT_EQ(h.pwrite(b.data(), b.size(), off), Status::kOk);
        std::memcpy(model.data() + off, b.data(), b.size());
      }
    });
  // Bios are held while the threads run.
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_NE(md.status_text(), "0 8192 delay 0 0 0\n");
  for (auto& t : ts) t.join();
  EXPECT_EQ(read_all(r, "dl", model.size()), model);
}

// --- log-writes ---------------------------------------------------------------

// The log device's bytes in a memfd, for the replay tool.
struct MemFd {
  int fd = memfd_create("dm_targets_test", 0);
  std::string path = "/proc/self/fd/" + std::to_string(fd);
  ~MemFd() { close(fd); }
};

void copy_to_memfd(DiskRegistry& r, const std::string& name, uint64_t bytes, MemFd& f) {
  Bytes v = read_all(r, name, bytes);
  ASSERT_EQ(pwrite(f.fd, v.data(), v.size(), 0), static_cast<ssize_t>(v.size()));
}

TEST(LogWrites, LogsInTheKernelsOrderFuaBeforeUnflushedWrites) {
  DiskRegistry r;
  CachedDisk f(r, 1 << 20);
  r.create("ram:4M");
  MappedDevice& md =
      MappedDevice::create(r, "lw", "", fmt::format("0 2048 log-writes {} ram0", f.name));
  EXPECT_EQ(md.table_text(),
            fmt::format("0 2048 log-writes {} {}\n", devt(r, f.name), devt(r, "ram0")));
  {
    BlockHandle h = BlockHandle::open(r, "lw");
    Bytes a = fill(4096, 0xa), b = fill(4096, 0xb);
    ASSERT_EQ(h.pwrite(a.data(), a.size(), 0), Status::kOk);
    ASSERT_EQ(h.pwrite(b.data(), b.size(), 8192, BioFlag::kFua), Status::kOk);
    ASSERT_EQ(h.flush(), Status::kOk);
    md.message(0, std::vector<std::string>{"mark", "one"});
  }
  // The log is written behind: wait for it. 4 entries: the last block used is 20 (super,
  // 1+8, 1+8, 1, 1).
  for (int i = 0; i < 1000 && md.status_text() != "0 2048 log-writes 4 20\n"; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_EQ(md.status_text(), "0 2048 log-writes 4 20\n");
  r.remove("lw");  // logs the end mark
  MemFd log;
  copy_to_memfd(r, "ram0", 4 << 20, log);
  logwrites::LogReader rd(log.fd, "log");
  EXPECT_EQ(rd.sectorsize(), 512u);
  std::vector<std::pair<uint64_t, uint64_t>> got;  // flags, sector
  logwrites::Entry e;
  std::string mark;
  while (rd.next(e, mark)) got.emplace_back(e.flags, e.sector);
  using namespace logwrites;
  const std::vector<std::pair<uint64_t, uint64_t>> want = {
      {kFua, 16}, {0, 0}, {kFlush, 0}, {kMark, 0}, {kMark, 0}};
  EXPECT_EQ(got, want);
}

TEST(LogWrites, ARecordedWorkloadReplaysToEachMarkExactly) {
  DiskRegistry r;
  CachedDisk f(r, 2 << 20);
  r.create("ram:16M");
  MappedDevice& md =
      MappedDevice::create(r, "lw", "", fmt::format("0 4096 log-writes {} ram0", f.name));
  constexpr uint64_t kBytes = 2 << 20;
  Bytes model(kBytes);
  std::vector<Bytes> at_mark;
  for (int round = 0; round < 6; ++round) {
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
      ts.emplace_back([&, t, round] {
        BlockHandle h = BlockHandle::open(r, "lw");
        std::mt19937 rng(round * 10 + t);
        for (int i = 0; i < 25; ++i) {
          // A FUA write is logged when it completes, before earlier writes
          // no flush has covered yet (the kernel's order): as a file
          // system would, keep FUA writes off blocks written unflushed.
          const BioFlag f = rng() % 5 == 0 ? BioFlag::kFua : BioFlag::kNone;
          const uint64_t half = f == BioFlag::kFua ? 64 : 0;
          const uint64_t off = uint64_t(t) * (kBytes / 4) + (half + rng() % 60) * 4096;
          const uint32_t len = 4096 * (1 + rng() % 4);
          Bytes b = fill(len, static_cast<uint8_t>(rng()));
          ASSERT_EQ(h.pwrite(b.data(), len, off, f), Status::kOk);
          std::memcpy(model.data() + off, b.data(), len);
        }
      });
    for (auto& t : ts) t.join();
    // What a file system does before a mark: sync, then mark.
    ASSERT_EQ(BlockHandle::open(r, "lw").flush(), Status::kOk);
    md.message(0, std::vector<std::string>{"mark", fmt::format("m{}", round)});
    at_mark.push_back(model);
  }
  r.remove("lw");
  MemFd log;
  copy_to_memfd(r, "ram0", 16 << 20, log);
  for (size_t m = 0; m < at_mark.size(); ++m) {
    MemFd dev;
    ASSERT_EQ(ftruncate(dev.fd, kBytes), 0);
    logwrites::ReplayOptions o;
    o.log = log.path;
    o.replay = dev.path;
    o.end_mark = fmt::format("m{}", m);
    ASSERT_EQ(logwrites::replay_log(o, stdout, stderr), 0);
    Bytes back(kBytes);
    ASSERT_EQ(pread(dev.fd, back.data(), kBytes, 0), static_cast<ssize_t>(kBytes));
    size_t diff = 0;
    while (diff < kBytes && back[diff] == at_mark[m][diff]) ++diff;
    EXPECT_EQ(diff, kBytes) << "at mark m" << m << ": first difference";
  }
}

// --- mirror -------------------------------------------------------------------

void wait_in_sync(MappedDevice& md, const std::string& regions) {
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (md.status_text().find(" " + regions + "/") == std::string::npos) {
    ASSERT_LT(Clock::now(), until) << md.status_text();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

TEST(Mirror, WritesReachEveryLegAndReadsMatchTheModel) {
  DiskRegistry r;
  r.create("ram:4M");
  r.create("ram:4M");
  MappedDevice& md =
      MappedDevice::create(r, "mi", "", "0 8192 mirror core 1 1024 2 ram0 0 ram1 0");
  EXPECT_EQ(md.table_text(), fmt::format("0 8192 mirror core 1 1024 2 {} 0 {} 0\n",
                                         devt(r, "ram0"), devt(r, "ram1")));
  wait_in_sync(md, "8");
  EXPECT_EQ(md.status_text(), fmt::format("0 8192 mirror 2 {} {} 8/8 1 AA 1 core\n",
                                          devt(r, "ram0"), devt(r, "ram1")));
  Bytes model(4 << 20);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      BlockHandle h = BlockHandle::open(r, "mi");
      std::mt19937 rng(t);
      for (int i = 0; i < 150; ++i) {
        const uint64_t off = (uint64_t(t) << 20) + (rng() % 250) * 4096;
        Bytes b = fill(4096, static_cast<uint8_t>(rng()));
        ASSERT_EQ(h.pwrite(b.data(), b.size(), off), Status::kOk);
        std::memcpy(model.data() + off, b.data(), b.size());
        Bytes back(4096);
        ASSERT_EQ(h.pread(back.data(), back.size(), off), Status::kOk);
        ASSERT_EQ(back, b);
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(read_all(r, "mi", model.size()), model);
  EXPECT_EQ(read_all(r, "ram0", model.size()), model);
  EXPECT_EQ(read_all(r, "ram1", model.size()), model);
}

TEST(Mirror, ALegFailedByFlakeyIsTakenOutAndResynchronised) {
  DiskRegistry r;
  r.create("ram:4M");
  r.create("ram:4M");
  MappedDevice& fl = MappedDevice::create(r, "fl", "", "0 8192 flakey ram1 0 1 0");
  const std::string table = "0 8192 mirror core 1 512 2 ram0 0 fl 0 1 handle_errors";
  MappedDevice& md = MappedDevice::create(r, "mi", "", table);
  wait_in_sync(md, "16");
  const uint32_t ev = md.event_nr();
  swap_table(fl, "0 8192 flakey ram1 0 0 1");  // the leg fails
  Bytes model(4 << 20);
  {
    BlockHandle h = BlockHandle::open(r, "mi");
    std::mt19937 rng(1);
    for (int i = 0; i < 200; ++i) {
      const uint64_t off = (rng() % 1000) * 4096;
      Bytes b = fill(4096, static_cast<uint8_t>(rng()));
      ASSERT_EQ(h.pwrite(b.data(), b.size(), off), Status::kOk);  // one leg did
      std::memcpy(model.data() + off, b.data(), b.size());
    }
  }
  EXPECT_GT(md.event_nr(), ev);
  EXPECT_NE(md.status_text().find(" AD 1 core"), std::string::npos) << md.status_text();
  EXPECT_NE(read_all(r, "ram1", model.size()), model);
  // The leg comes back: the flakey device up, the mirror's table loaded
  // again (the good leg first), and it is copied in the background.
  swap_table(fl, "0 8192 flakey ram1 0 1 0");
  swap_table(md, table);
  wait_in_sync(md, "16");
  EXPECT_NE(md.status_text().find(" AA 1 core"), std::string::npos) << md.status_text();
  EXPECT_EQ(read_all(r, "ram0", model.size()), model);
  EXPECT_EQ(read_all(r, "ram1", model.size()), model);
}

TEST(Mirror, WritesDuringResyncLandOnEveryLeg) {
  DiskRegistry r;
  r.create("ram:8M");
  r.create("ram:8M");
  const Bytes junk = fill(8 << 20, 0x5a);
  BlockHandle(r.get("ram1")).pwrite(junk.data(), junk.size(), 0);
  MappedDevice& md =
      MappedDevice::create(r, "mi", "", "0 16384 mirror core 1 64 2 ram0 0 ram1 0");
  Bytes model(8 << 20);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      BlockHandle h = BlockHandle::open(r, "mi");
      std::mt19937 rng(t);
      for (int i = 0; i < 300; ++i) {
        const uint64_t off = (uint64_t(t) << 21) + (rng() % 500) * 4096;
        Bytes b = fill(4096, static_cast<uint8_t>(1 + rng() % 255));
        ASSERT_EQ(h.pwrite(b.data(), b.size(), off), Status::kOk);
        std::memcpy(model.data() + off, b.data(), b.size());
      }
    });
  for (auto& t : ts) t.join();
  wait_in_sync(md, "256");
  EXPECT_EQ(read_all(r, "ram0", model.size()), model);
  EXPECT_EQ(read_all(r, "ram1", model.size()), model);
}

// A loaded table is not live: its resync must not copy while the old table
// still writes to the legs (nor before the core has set its length: region
// 0 was then skipped). dm-raid1 starts recovery in its resume hook too.
TEST(Mirror, ALoadedTableCopiesNothingUntilResumed) {
  DiskRegistry r;
  r.create("ram:1M");
  r.create("ram:1M");
  const Bytes junk = fill(1 << 20, 0x5a);
  BlockHandle(r.get("ram1")).pwrite(junk.data(), junk.size(), 0);
  MappedDevice& md = MappedDevice::create(r, "mi", "", "0 2048 linear ram0 0");
  md.load("0 2048 mirror core 1 64 2 ram0 0 ram1 0");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(read_all(r, "ram1", junk.size()), junk);
  md.suspend();
  md.resume();
  wait_in_sync(md, "32");
  EXPECT_EQ(read_all(r, "ram1", junk.size()), Bytes(1 << 20));
}

}  // namespace
}  // namespace blkstack
