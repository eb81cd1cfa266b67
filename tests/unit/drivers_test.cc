// The null and ram drivers: null's three completion modes and its latency,
// ram's sparse pages, holes, discard, extents, write-zeroes, 4 KiB blocks,
// and a concurrent stress whose data can be checked exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/block_handle.h"
#include "blkstack/completion.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/error.h"
#include "blkstack/submit.h"
#include "test_util.h"

namespace blkstack {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kPage = 4096;

std::vector<std::byte> Filled(size_t n, uint8_t v) {
  return std::vector<std::byte>(n, std::byte{v});
}

bool AllAre(const std::byte* p, size_t n, uint8_t v) {
  return std::all_of(p, p + n, [v](std::byte b) { return b == std::byte{v}; });
}

// One asynchronous bio with what its callback observed.
struct Tracked {
  Bio bio;
  Completion done;
  std::thread::id completed_on;
  Clock::time_point submitted_at;
  Clock::time_point completed_at;
  int order = -1;
  std::atomic<int>* sequence = nullptr;
};

void TrackedDone(Bio& bio) {
  auto* t = static_cast<Tracked*>(bio.context());
  t->completed_on = std::this_thread::get_id();
  t->completed_at = Clock::now();
  if (t->sequence) t->order = t->sequence->fetch_add(1);
  t->done.complete();
}

void SubmitRead(Tracked& t, Disk& disk, uint64_t sector, Segment& seg) {
  t.bio.init(&disk, Op::kRead, sector, {&seg, 1}, TrackedDone, &t);
  t.submitted_at = Clock::now();
  submit_bio(t.bio);
}

// --- null ---------------------------------------------------------------------

TEST(NullDriver, InlineCompletesInTheSubmitterBeforeSubmitReturns) {
  DiskRegistry r;
  auto d = r.create("null:16M");
  std::vector<std::byte> buf(4096);
  Segment seg(buf.data(), 4096);
  Tracked t;
  SubmitRead(t, *d, 0, seg);
  EXPECT_TRUE(t.bio.completed()) << "inline: done when submit_bio returns";
  EXPECT_EQ(t.completed_on, std::this_thread::get_id());
  EXPECT_EQ(t.bio.status(), Status::kOk);
  EXPECT_NE(d->describe().find("completion=inline"), std::string::npos);
}

TEST(NullDriver, DeferredCompletesOnAnotherThreadInSubmissionOrder) {
  DiskRegistry r;
  auto d = r.create("null:16M,completion=deferred");
  EXPECT_NE(d->describe().find("completion=deferred"), std::string::npos);
  constexpr int kBios = 200;
  std::vector<std::byte> buf(4096);
  Segment seg(buf.data(), 4096);
  std::atomic<int> sequence{0};
  auto bios = std::make_unique<Tracked[]>(kBios);
  for (int i = 0; i < kBios; ++i) {
    bios[i].sequence = &sequence;
    SubmitRead(bios[i], *d, uint64_t(i) * 8, seg);
  }
  for (int i = 0; i < kBios; ++i) {
    bios[i].done.wait();
    EXPECT_EQ(bios[i].bio.status(), Status::kOk);
    EXPECT_NE(bios[i].completed_on, std::this_thread::get_id());
    EXPECT_EQ(bios[i].order, i) << "one submitter: completions keep its order";
  }
  EXPECT_EQ(d->stats().ios[kStatRead], uint64_t(kBios));
}

TEST(NullDriver, TimerHonoursTheLatency) {
  DiskRegistry r;
  auto d = r.create("null:16M,completion=timer,latency_ns=5ms");
  const std::string about = d->describe();
  EXPECT_NE(about.find("completion=timer"), std::string::npos) << about;
  EXPECT_NE(about.find("5000000"), std::string::npos) << "the latency, in ns: " << about;
  BlockHandle h(d);
  std::vector<std::byte> buf(4096);
  for (int i = 0; i < 3; ++i) {
    const auto start = Clock::now();
    ASSERT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOk);
    const auto took = Clock::now() - start;
    EXPECT_GE(took, 5ms);
    EXPECT_LT(took, 1s) << "roughly the latency, not much more";
  }
}

// Many bios in flight at once each wait the latency, but not for each
// other: a timer device is not a serial one.
TEST(NullDriver, TimerLatenciesOverlap) {
  DiskRegistry r;
  auto d = r.create("null:16M,completion=timer,latency_ns=20ms");
  constexpr int kBios = 20;
  std::vector<std::byte> buf(4096);
  Segment seg(buf.data(), 4096);
  auto bios = std::make_unique<Tracked[]>(kBios);
  for (int i = 0; i < kBios; ++i) SubmitRead(bios[i], *d, uint64_t(i) * 8, seg);
  auto first = Clock::time_point::max(), last = Clock::time_point::min();
  for (int i = 0; i < kBios; ++i) {
    bios[i].done.wait();
    EXPECT_GE(bios[i].completed_at - bios[i].submitted_at, 20ms) << i;
    EXPECT_NE(bios[i].completed_on, std::this_thread::get_id());
    first = std::min(first, bios[i].completed_at);
    last = std::max(last, bios[i].completed_at);
  }
  // Serialised, the completions would spread over 19 x 20 ms; overlapping,
  // they come together. Measured between completions, not from the start,
  // so a slow submitting thread on a busy machine does not count.
  EXPECT_LT(last - first, 190ms) << "the timer device serialised its bios";
}

TEST(NullDriver, ReadsLeaveTheBufferAndWritesAreDropped) {
  for (const char* spec : {"null:16M", "null:16M,completion=deferred",
                           "null:16M,completion=timer,latency_ns=100us"}) {
    SCOPED_TRACE(spec);
    DiskRegistry r;
    BlockHandle h(r.create(spec));
    std::vector<std::byte> data = Filled(64 << 10, 0x5A);
    ASSERT_EQ(h.pwrite(data.data(), data.size(), 0), Status::kOk);
    std::vector<std::byte> buf = Filled(64 << 10, 0xAB);
    ASSERT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOk);
    EXPECT_TRUE(AllAre(buf.data(), buf.size(), 0xAB))
        << "null must not touch read buffers";
    ASSERT_EQ(h.discard(0, 4096), Status::kOk);
    ASSERT_EQ(h.write_zeroes(0, 4096), Status::kOk);
    EXPECT_EQ(h.disk().allocated_bytes(), 0u);
    const Extent e = h.disk().extent_at(0, 1 << 20);
    EXPECT_EQ(e.length, 1u << 20);
    EXPECT_TRUE(e.allocated) << "drivers that cannot tell report data";
  }
}

TEST(NullDriver, BlockSizeIsEnforced) {
  DiskRegistry r;
  BlockHandle h(r.create("null:16M,bs=4096"));
  std::vector<std::byte> buf(8192);
  EXPECT_EQ(h.pread(buf.data(), 512, 0), Status::kInvalid);
  EXPECT_EQ(h.pread(buf.data(), 4096, 512), Status::kInvalid);
  EXPECT_EQ(h.pread(buf.data(), 4096, 4096), Status::kOk);
}

// --- ram ------------------------------------------------------------------------

struct RamDisk {
  explicit RamDisk(const char* spec) : disk(registry.create(spec)), h(disk) {}
  uint64_t allocated() const { return disk->allocated_bytes(); }
  Extent extent(uint64_t off, uint64_t len) const { return disk->extent_at(off, len); }
  std::vector<std::byte> read(uint64_t off, size_t len) {
    std::vector<std::byte> buf = Filled(len, 0xEE);  // never what ram returns
    EXPECT_EQ(h.pread(buf.data(), len, off), Status::kOk);
    return buf;
  }
  void write(uint64_t off, size_t len, uint8_t v) {
    std::vector<std::byte> buf = Filled(len, v);
    ASSERT_EQ(h.pwrite(buf.data(), len, off), Status::kOk);
  }

  DiskRegistry registry;
  std::shared_ptr<Disk> disk;
  BlockHandle h;
};

TEST(RamDriver, StartsEmptyAndReadsZeroes) {
  RamDisk ram("ram:64M");
  EXPECT_EQ(ram.allocated(), 0u);
  const Extent e = ram.extent(0, 64 << 20);
  EXPECT_EQ(e.length, 64u << 20);
  EXPECT_FALSE(e.allocated);
  EXPECT_TRUE(e.zero);
  std::vector<std::byte> buf = ram.read(10 << 20, 1 << 20);
  EXPECT_TRUE(AllAre(buf.data(), buf.size(), 0));
  EXPECT_EQ(ram.allocated(), 0u) << "reading a hole must not allocate";
}

TEST(RamDriver, FirstWriteAllocatesOnePageAndTheRestOfItReadsZero) {
  RamDisk ram("ram:64M");
  ram.write(10 * kPage + 512, 512, 0x11);
  EXPECT_EQ(ram.allocated(), kPage);
  std::vector<std::byte> page = ram.read(10 * kPage, kPage);
  EXPECT_TRUE(AllAre(page.data(), 512, 0));
  EXPECT_TRUE(AllAre(page.data() + 512, 512, 0x11));
  EXPECT_TRUE(AllAre(page.data() + 1024, kPage - 1024, 0));

  ram.write(10 * kPage, 512, 0x22);  // same page: no new allocation
  EXPECT_EQ(ram.allocated(), kPage);
  EXPECT_TRUE(ram.disk->describe().find("allocated=4 KiB") != std::string::npos)
      << ram.disk->describe();
}

TEST(RamDriver, ExtentsDescribeHolesAndData) {
  RamDisk ram("ram:64M");
  ram.write(10 * kPage, 2 * kPage, 0x33);  // pages 10 and 11
  ram.write(20 * kPage, 512, 0x44);        // page 20
  struct Run {
    uint64_t offset, length;
    bool allocated;
  };
  std::vector<Run> runs;
  const uint64_t size = ram.h.size();
  for (uint64_t off = 0; off < size;) {
    const Extent e = ram.extent(off, size - off);
    ASSERT_GT(e.length, 0u);
    EXPECT_EQ(e.zero, !e.allocated);
    runs.push_back({off, e.length, e.allocated});
    off += e.length;
  }
  ASSERT_EQ(runs.size(), 5u);
  EXPECT_EQ(runs[0].length, 10 * kPage);
  EXPECT_FALSE(runs[0].allocated);
  EXPECT_EQ(runs[1].length, 2 * kPage);
  EXPECT_TRUE(runs[1].allocated);
  EXPECT_EQ(runs[2].length, 8 * kPage);
  EXPECT_FALSE(runs[2].allocated);
  EXPECT_EQ(runs[3].offset, 20 * kPage);
  EXPECT_EQ(runs[3].length, kPage);
  EXPECT_TRUE(runs[3].allocated);
  EXPECT_EQ(runs[4].offset + runs[4].length, size);
  EXPECT_FALSE(runs[4].allocated);

  // From the middle of a page, and capped by max_length.
  Extent e = ram.extent(10 * kPage + 100, 10000);
  EXPECT_EQ(e.length, 2 * kPage - 100);
  EXPECT_TRUE(e.allocated);
  e = ram.extent(100, 1000);
  EXPECT_EQ(e.length, 1000u);
  EXPECT_FALSE(e.allocated);
}

// A range running past the device is clamped to it.
TEST(RamDriver, ExtentsStopAtTheEndOfTheDevice) {
  RamDisk ram("ram:1M");
  const uint64_t size = ram.h.size();
  Extent e = ram.extent(0, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(e.length, size);
  EXPECT_FALSE(e.allocated);
  ram.write(size - kPage, kPage, 1);
  e = ram.extent(size - kPage, uint64_t{1} << 40);
  EXPECT_EQ(e.length, kPage);
  EXPECT_TRUE(e.allocated);
  EXPECT_EQ(ram.extent(size, 4096).length, 0u);
  EXPECT_EQ(ram.extent(uint64_t{1} << 50, 4096).length, 0u);
}

TEST(RamDriver, DiscardFreesWholePages) {
  RamDisk ram("ram:64M");
  ram.write(0, 16 * kPage, 0x55);
  EXPECT_EQ(ram.allocated(), 16 * kPage);
  ASSERT_EQ(ram.h.discard(4 * kPage, 8 * kPage), Status::kOk);
  EXPECT_EQ(ram.allocated(), 8 * kPage);
  std::vector<std::byte> all = ram.read(0, 16 * kPage);
  EXPECT_TRUE(AllAre(all.data(), 4 * kPage, 0x55));
  EXPECT_TRUE(AllAre(all.data() + 4 * kPage, 8 * kPage, 0));
  EXPECT_TRUE(AllAre(all.data() + 12 * kPage, 4 * kPage, 0x55));
  const Extent hole = ram.extent(4 * kPage, 64 << 20);
  EXPECT_EQ(hole.length, 8 * kPage);
  EXPECT_FALSE(hole.allocated);

  ASSERT_EQ(ram.h.discard(0, 64 << 20), Status::kOk);  // the whole disk
  EXPECT_EQ(ram.allocated(), 0u);
  EXPECT_EQ(ram.extent(0, 64 << 20).length, 64u << 20);
  ASSERT_EQ(ram.h.discard(0, 64 << 20), Status::kOk) << "discarding holes is fine";
}

TEST(RamDriver, PartialDiscardZeroesOnlyTheRange) {
  RamDisk ram("ram:64M");
  ram.write(0, 4 * kPage, 0x66);
  // Inside one page: nothing freed, only [1024, 2048) zeroed.
  ASSERT_EQ(ram.h.discard(1024, 1024), Status::kOk);
  EXPECT_EQ(ram.allocated(), 4 * kPage);
  std::vector<std::byte> p = ram.read(0, kPage);
  EXPECT_TRUE(AllAre(p.data(), 1024, 0x66));
  EXPECT_TRUE(AllAre(p.data() + 1024, 1024, 0));
  EXPECT_TRUE(AllAre(p.data() + 2048, 2048, 0x66));

  // Across pages [6 KiB, 14 KiB): the tail of page 1, all of page 2 (freed)
  // and the head of page 3.
  ASSERT_EQ(ram.h.discard(6144, 8192), Status::kOk);
  EXPECT_EQ(ram.allocated(), 3 * kPage);
  std::vector<std::byte> all = ram.read(0, 4 * kPage);
  EXPECT_TRUE(AllAre(all.data() + kPage, 2048, 0x66));
  EXPECT_TRUE(AllAre(all.data() + 6144, 8192, 0));
  EXPECT_TRUE(AllAre(all.data() + 14336, 2048, 0x66));
  EXPECT_FALSE(ram.extent(2 * kPage, kPage).allocated);
  EXPECT_TRUE(ram.extent(kPage, kPage).allocated);
  EXPECT_TRUE(ram.extent(3 * kPage, kPage).allocated);
}

TEST(RamDriver, WriteZeroesReadsZeroAndFreesWholePages) {
  RamDisk ram("ram:64M");
  ram.write(0, 4 * kPage, 0x77);
  ASSERT_EQ(ram.h.write_zeroes(kPage + 512, 2 * kPage), Status::kOk);
  std::vector<std::byte> all = ram.read(0, 4 * kPage);
  EXPECT_TRUE(AllAre(all.data(), kPage + 512, 0x77));
  EXPECT_TRUE(AllAre(all.data() + kPage + 512, 2 * kPage, 0));
  EXPECT_TRUE(AllAre(all.data() + 3 * kPage + 512, kPage - 512, 0x77));
  EXPECT_EQ(ram.allocated(), 3 * kPage) << "page 2 is wholly zero: freed";
  // Write-zeroes over holes allocates nothing.
  ASSERT_EQ(ram.h.write_zeroes(1 << 20, 1 << 20), Status::kOk);
  EXPECT_EQ(ram.allocated(), 3 * kPage);
}

// Runs of data and holes across the 2 MiB chunk boundary: one read sees
// them all, in place.
TEST(RamDriver, ReadsAcrossChunksAndHoles) {
  RamDisk ram("ram:8M");
  constexpr uint64_t kChunk = 2 << 20;
  ram.write(kChunk - 2 * kPage, kPage, 0x31);  // the last page but one of chunk 0
  ram.write(kChunk, 3 * kPage, 0x32);          // the first three of chunk 1
  ram.write(2 * kChunk + kPage, kPage, 0x33);  // the second of chunk 2
  std::vector<std::byte> all = ram.read(kChunk - 4 * kPage, kChunk + 8 * kPage);
  const std::byte* p = all.data();
  EXPECT_TRUE(AllAre(p, 2 * kPage, 0));
  EXPECT_TRUE(AllAre(p + 2 * kPage, kPage, 0x31));
  EXPECT_TRUE(AllAre(p + 3 * kPage, kPage, 0));
  EXPECT_TRUE(AllAre(p + 4 * kPage, 3 * kPage, 0x32));
  EXPECT_TRUE(AllAre(p + 7 * kPage, kChunk - 3 * kPage, 0));
  EXPECT_TRUE(AllAre(p + 4 * kPage + kChunk, kPage, 0));
  EXPECT_TRUE(AllAre(p + 5 * kPage + kChunk, kPage, 0x33));
  EXPECT_TRUE(AllAre(p + 6 * kPage + kChunk, 2 * kPage, 0));
  EXPECT_EQ(ram.allocated(), 5 * kPage);
  // A write across the boundary lands in both chunks.
  ram.write(kChunk - kPage - 512, 2 * kPage, 0x34);
  std::vector<std::byte> w = ram.read(kChunk - 2 * kPage, 4 * kPage);
  EXPECT_TRUE(AllAre(w.data(), kPage - 512, 0x31));
  EXPECT_TRUE(AllAre(w.data() + kPage - 512, 2 * kPage, 0x34));
  EXPECT_TRUE(AllAre(w.data() + 3 * kPage - 512, kPage + 512, 0x32));
  EXPECT_EQ(ram.allocated(), 6 * kPage);
}

// Resident memory of this process, from /proc/self/statm.
uint64_t resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  unsigned long size = 0, resident = 0;
  if (f) {
    if (std::fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return uint64_t{resident} * 4096;
}

TEST(RamDriver, DiscardGivesMemoryBackAndReadingHolesTakesNone) {
  RamDisk ram("ram:256M");
  const uint64_t before = resident_bytes();
  std::vector<std::byte> buf(1 << 20);
  for (uint64_t off = 0; off < (128u << 20); off += buf.size())
    ASSERT_EQ(ram.h.pread(buf.data(), buf.size(), off), Status::kOk);
  EXPECT_LT(resident_bytes(), before + (16u << 20)) << "reading holes allocated memory";
  // 1 MiB at a time from one buffer: a 64 MiB temporary, once freed, would
  // stay resident in ASan's quarantine and spoil the count below.
  std::fill(buf.begin(), buf.end(), std::byte{0x41});
  for (uint64_t off = 0; off < (64u << 20); off += buf.size())
    ASSERT_EQ(ram.h.pwrite(buf.data(), buf.size(), off), Status::kOk);
  EXPECT_GE(resident_bytes(), before + (64u << 20) - (8u << 20));
  ASSERT_EQ(ram.h.discard(0, 64 << 20), Status::kOk);
  EXPECT_LT(resident_bytes(), before + (16u << 20)) << "discard kept the memory";
  EXPECT_EQ(ram.allocated(), 0u);
}

// Writers, discards and readers on the same pages at once: no crash, no
// read of anything but zeroes or a value some writer wrote, and the
// accounting ends where the last operations on each page leave it.
TEST(RamDriver, ConcurrentWriteDiscardAndRead) {
  RamDisk ram("ram:4M");
  constexpr int kPages = 64;
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  auto writer = [&](uint8_t v) {
    std::vector<std::byte> b = Filled(kPage, v);
    for (int i = 0; !stop; i = (i + 7) % kPages)
      if (ram.h.pwrite(b.data(), kPage, i * kPage) != Status::kOk) ++bad;
  };
  auto discarder = [&] {
    for (int i = 0; !stop; i = (i + 5) % kPages)
      if (ram.h.discard(i * kPage, 2 * kPage) != Status::kOk) ++bad;
  };
  auto reader = [&] {
    std::vector<std::byte> b(kPage);
    for (int i = 0; !stop; i = (i + 3) % kPages) {
      if (ram.h.pread(b.data(), kPage, i * kPage) != Status::kOk) ++bad;
      for (std::byte x : b)
        if (x != std::byte{0} && x != std::byte{0x51} && x != std::byte{0x52}) ++bad;
    }
  };
  std::vector<std::thread> ts;
  ts.emplace_back(writer, 0x51);
  ts.emplace_back(writer, 0x52);
  ts.emplace_back(discarder);
  ts.emplace_back(reader);
  std::this_thread::sleep_for(300ms);
  stop = true;
  for (auto& t : ts) t.join();
  EXPECT_EQ(bad, 0);
  EXPECT_LE(ram.allocated(), kPages * kPage);
  ASSERT_EQ(ram.h.discard(0, 4 << 20), Status::kOk);
  EXPECT_EQ(ram.allocated(), 0u);
  ram.write(0, kPages * kPage, 0x53);
  EXPECT_EQ(ram.allocated(), kPages * kPage);
}

// The ram device's count of chunks given huge pages, from describe().
uint64_t huge_chunks(RamDisk& ram) {
  const std::string d = ram.disk->describe();
  const size_t at = d.find("huge_chunks=");
  return at == std::string::npos ? ~uint64_t{0} : std::stoull(d.substr(at + 12));
}

// huge=auto: chunks a stream fills get huge pages from their first write,
// a chunk of one page does not; reads, discards and writes go on as before.
TEST(RamDriver, StreamedChunksAreHugeAndKeepTheirData) {
  RamDisk ram("ram:8M");
  EXPECT_EQ(huge_chunks(ram), 0u);
  ram.write(4 << 20, kPage, 0x72);  // chunk 2: one page, stays small
  ram.write(0, 4 << 20, 0x71);      // chunks 0 and 1, streamed
  EXPECT_EQ(huge_chunks(ram), 2u) << ram.disk->describe();
  EXPECT_TRUE(AllAre(ram.read(0, 4 << 20).data(), 4 << 20, 0x71));
  EXPECT_EQ(ram.allocated(), (4u << 20) + kPage);
  // A hole in a huge chunk reads zeroes, its neighbours keep their data.
  ASSERT_EQ(ram.h.discard(kPage, kPage), Status::kOk);
  std::vector<std::byte> head = ram.read(0, 3 * kPage);
  EXPECT_TRUE(AllAre(head.data(), kPage, 0x71));
  EXPECT_TRUE(AllAre(head.data() + kPage, kPage, 0));
  EXPECT_TRUE(AllAre(head.data() + 2 * kPage, kPage, 0x71));
  EXPECT_EQ(ram.allocated(), 4u << 20);
  ram.write(kPage, kPage, 0x73);
  EXPECT_TRUE(AllAre(ram.read(kPage, kPage).data(), kPage, 0x73));
  EXPECT_EQ(huge_chunks(ram), 2u);
}

// huge=always and huge=never change where the memory comes from, not what
// the disk says.
TEST(RamDriver, HugePagesKeepTheSameSemantics) {
  for (const char* spec : {"ram:8M,huge=always", "ram:8M,huge=never"}) {
    SCOPED_TRACE(spec);
    RamDisk ram(spec);
    ram.write(kPage, 2 * kPage, 0x61);
    EXPECT_EQ(ram.allocated(), 2 * kPage) << "pages holding data are counted, not memory";
    std::vector<std::byte> all = ram.read(0, 4 * kPage);
    EXPECT_TRUE(AllAre(all.data(), kPage, 0));
    EXPECT_TRUE(AllAre(all.data() + kPage, 2 * kPage, 0x61));
    EXPECT_TRUE(AllAre(all.data() + 3 * kPage, kPage, 0));
    EXPECT_FALSE(ram.extent(0, kPage).allocated);
    EXPECT_TRUE(ram.extent(kPage, 2 * kPage).allocated);
    ASSERT_EQ(ram.h.discard(kPage, kPage), Status::kOk);
    EXPECT_EQ(ram.allocated(), kPage);
    EXPECT_TRUE(AllAre(ram.read(kPage, kPage).data(), kPage, 0));
    EXPECT_TRUE(AllAre(ram.read(2 * kPage, kPage).data(), kPage, 0x61));
  }
  DiskRegistry r;
  EXPECT_THROW(r.create("ram:8M,huge=maybe"), Error);
  EXPECT_THROW(r.create("ram:8M,huge=1"), Error);
}

TEST(RamDriver, FourKiBBlocks) {
  RamDisk ram("ram:1M,bs=4096");
  std::vector<std::byte> buf = Filled(8192, 0x12);
  EXPECT_EQ(ram.h.pwrite(buf.data(), 512, 0), Status::kInvalid);
  EXPECT_EQ(ram.h.pwrite(buf.data(), 4096, 512), Status::kInvalid);
  EXPECT_EQ(ram.h.discard(0, 512), Status::kInvalid);
  EXPECT_EQ(ram.allocated(), 0u) << "refused I/O allocates nothing";
  ASSERT_EQ(ram.h.pwrite(buf.data(), 8192, 4096), Status::kOk);
  EXPECT_EQ(ram.allocated(), 2 * kPage);
  std::vector<std::byte> back = ram.read(4096, 8192);
  EXPECT_EQ(back, buf);
  ASSERT_EQ(ram.h.discard(4096, 4096), Status::kOk);
  EXPECT_EQ(ram.allocated(), kPage);
}

// Pages live in 2 MiB chunks: I/O across a chunk boundary, and a large
// sparse disk whose far end is used.
TEST(RamDriver, AcrossChunksAndFarAway) {
  RamDisk ram("ram:1T");
  std::vector<std::byte> data(1 << 20);
  for (size_t i = 0; i < data.size(); ++i) data[i] = std::byte(i * 7 + i / 4096);
  const uint64_t boundary = 2 << 20;
  ASSERT_EQ(ram.h.pwrite(data.data(), data.size(), boundary - (512 << 10)), Status::kOk);
  EXPECT_EQ(ram.read(boundary - (512 << 10), data.size()), data);
  const uint64_t end = ram.h.size();
  ASSERT_EQ(ram.h.pwrite(data.data(), 4096, end - 4096), Status::kOk);
  EXPECT_EQ(ram.read(end - 4096, 4096),
            std::vector<std::byte>(data.begin(), data.begin() + 4096));
  EXPECT_EQ(ram.allocated(), (1u << 20) + kPage);
  EXPECT_EQ(ram.h.pread(data.data(), 4096, end), Status::kOutOfRange);
}

// Several threads write, read, discard and zero their own blocks (block b
// belongs to thread b % kWriters), keeping a model per 512-byte sector, so
// every read can be checked exactly; another thread reads and asks for
// extents anywhere, to race page frees against readers.
TEST(RamDriver, ConcurrentStressStaysConsistent) {
  constexpr int kWriters = 4;
  constexpr int kOps = 40'000;
  constexpr uint64_t kBlocks = 512;  // 4 KiB each: 2 MiB, one chunk
  constexpr int kSectors = kPage / 512;
  RamDisk ram("ram:2M");

  // The content of sector `lba` at version `v` (0: zeroes).
  auto fill = [](std::byte* p, uint64_t lba, uint32_t v) {
    for (int w = 0; w < 64; ++w) {
      uint64_t word = (lba << 40) ^ (uint64_t(v) << 8) ^ uint64_t(w);
      std::memcpy(p + w * 8, &word, 8);
    }
  };

  struct Model {
    uint32_t version[kBlocks][kSectors] = {};
    bool allocated[kBlocks] = {};
  };
  auto model = std::make_unique<Model>();  // blocks are disjoint per thread
  std::atomic<bool> stop{false};
  std::atomic<int> mismatches{0}, errors{0};

  std::thread reader([&] {
    std::mt19937_64 rng(99);
    std::vector<std::byte> buf(kPage * 4);
    while (!stop.load()) {
      const uint64_t block = rng() % (kBlocks - 4);
      if (ram.h.pread(buf.data(), buf.size(), block * kPage) != Status::kOk) ++errors;
      const Extent e = ram.disk->extent_at(block * kPage, 64 * kPage);
      if (e.length == 0 || e.length > 64 * kPage) ++errors;
      (void)ram.allocated();
    }
  });

  std::vector<std::thread> writers;
  for (int t = 0; t < kWriters; ++t) {
    writers.emplace_back([&, t] {
      std::mt19937_64 rng(t + 1);
      std::vector<std::byte> buf(kPage), back(kPage);
      uint32_t next_version = 1;
      for (int op = 0; op < kOps; ++op) {
        const uint64_t block = (rng() % (kBlocks / kWriters)) * kWriters + t;
        const uint64_t off = block * kPage;
        auto& ver = model->version[block];
        const unsigned kind = rng() % 100;
        Status s = Status::kOk;
        if (kind < 35) {  // write the whole block
          const uint32_t v = next_version++;
          for (int i = 0; i < kSectors; ++i) fill(buf.data() + i * 512, off / 512 + i, v);
          s = ram.h.pwrite(buf.data(), kPage, off);
          std::fill(std::begin(ver), std::end(ver), v);
          model->allocated[block] = true;
        } else if (kind < 50) {  // write one sector
          const int i = int(rng() % kSectors);
          const uint32_t v = next_version++;
          fill(buf.data(), off / 512 + i, v);
          s = ram.h.pwrite(buf.data(), 512, off + i * 512);
          ver[i] = v;
          model->allocated[block] = true;
        } else if (kind < 60) {  // discard or zero the whole block: freed
          s = kind < 55 ? ram.h.discard(off, kPage) : ram.h.write_zeroes(off, kPage);
          std::fill(std::begin(ver), std::end(ver), 0u);
          model->allocated[block] = false;
        } else if (kind < 70) {  // discard some sectors: zeroed, kept
          const int first = int(rng() % kSectors);
          const int count = 1 + int(rng() % (kSectors - first));
          s = ram.h.discard(off + first * 512, count * 512);
          if (count == kSectors) model->allocated[block] = false;
          for (int i = first; i < first + count; ++i) ver[i] = 0;
        } else {  // read and check
          s = ram.h.pread(back.data(), kPage, off);
          for (int i = 0; i < kSectors; ++i) {
            if (ver[i] == 0) {
              if (!AllAre(back.data() + i * 512, 512, 0)) ++mismatches;
            } else {
              fill(buf.data(), off / 512 + i, ver[i]);
              if (std::memcmp(buf.data(), back.data() + i * 512, 512) != 0) ++mismatches;
            }
          }
        }
        if (s != Status::kOk) ++errors;
      }
    });
  }
  for (auto& w : writers) w.join();
  stop = true;
  reader.join();

  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(errors, 0);
  // The final image matches the model, and so does the memory in use.
  std::vector<std::byte> all = ram.read(0, kBlocks * kPage);
  std::vector<std::byte> want(512);
  uint64_t allocated_pages = 0;
  int bad_sectors = 0;
  for (uint64_t b = 0; b < kBlocks; ++b) {
    allocated_pages += model->allocated[b];
    for (int i = 0; i < kSectors; ++i) {
      const std::byte* got = all.data() + b * kPage + i * 512;
      if (model->version[b][i] == 0) {
        bad_sectors += !AllAre(got, 512, 0);
      } else {
        fill(want.data(), b * kSectors + i, model->version[b][i]);
        bad_sectors += std::memcmp(want.data(), got, 512) != 0;
      }
    }
  }
  EXPECT_EQ(bad_sectors, 0);
  EXPECT_EQ(ram.allocated(), allocated_pages * kPage);
}

}  // namespace
}  // namespace blkstack
