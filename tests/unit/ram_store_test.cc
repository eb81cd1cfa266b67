// RamStore on its own (src/mm/ram_store.h), as the ram driver and a page
// cache use it: holes read as zeroes and cost nothing, writes allocate
// whole pages, discard gives whole pages back and zeroes the edges, runs of
// pages alike stop at the end of the store, I/O across chunk boundaries and
// at the far end of a huge sparse store, writers racing to make one chunk,
// and full chunks moved into huge pages.
#include "mm/ram_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "test_util.h"

namespace blkstack {
namespace {

using namespace std::chrono_literals;
constexpr uint64_t kPage = RamStore::kPageSize;
constexpr uint64_t kChunk = RamStore::kChunkBytes;

std::vector<std::byte> Filled(size_t n, uint8_t v) {
  return std::vector<std::byte>(n, std::byte{v});
}

bool AllAre(const std::vector<std::byte>& b, size_t from, size_t n, uint8_t v) {
  return std::all_of(b.begin() + from, b.begin() + from + n,
                     [v](std::byte x) { return x == std::byte{v}; });
}

std::vector<std::byte> Read(const RamStore& s, uint64_t off, uint64_t len) {
  std::vector<std::byte> out = Filled(len, 0xEE);  // never what a store returns
  s.read(off, out.data(), len);
  return out;
}

TEST(RamStore, HolesReadAsZeroesAndCostNothing) {
  RamStore s(8 << 20, false);
  EXPECT_EQ(s.size(), 8u << 20);
  EXPECT_TRUE(AllAre(Read(s, 3 * kChunk - 100, 200), 0, 200, 0));
  EXPECT_EQ(s.allocated_bytes(), 0u);
  const RamStore::Run r = s.extent_at(0, 8 << 20);
  EXPECT_EQ(r.length, 8u << 20);
  EXPECT_FALSE(r.present);
}

TEST(RamStore, WritesAllocateWholePagesAndReadBack) {
  RamStore s(8 << 20, false);
  const auto data = Filled(100, 0x5A);
  ASSERT_TRUE(s.write(kPage + 10, data.data(), data.size()));
  EXPECT_EQ(s.allocated_bytes(), kPage);
  EXPECT_TRUE(s.page_present(1));
  EXPECT_FALSE(s.page_present(0));
  EXPECT_FALSE(s.page_present(2));
  const auto page = Read(s, kPage, kPage);
  EXPECT_TRUE(AllAre(page, 0, 10, 0)) << "the rest of a fresh page reads zeroes";
  EXPECT_TRUE(AllAre(page, 10, 100, 0x5A));
  EXPECT_TRUE(AllAre(page, 110, kPage - 110, 0));
  ASSERT_TRUE(s.write(kPage, data.data(), 1));  // same page: nothing new
  EXPECT_EQ(s.allocated_bytes(), kPage);
}

TEST(RamStore, DiscardFreesWholePagesAndZeroesTheEdges) {
  RamStore s(8 << 20, false);
  const auto data = Filled(4 * kPage, 0x66);
  ASSERT_TRUE(s.write(0, data.data(), data.size()));
  s.discard(100, 200);  // inside page 0
  EXPECT_EQ(s.allocated_bytes(), 4 * kPage);
  s.discard(kPage + kPage / 2, 2 * kPage);  // half of 1, all of 2, half of 3
  EXPECT_EQ(s.allocated_bytes(), 3 * kPage) << "only page 2 was whole";
  EXPECT_FALSE(s.page_present(2));
  const auto all = Read(s, 0, 4 * kPage);
  EXPECT_TRUE(AllAre(all, 0, 100, 0x66));
  EXPECT_TRUE(AllAre(all, 100, 200, 0));
  EXPECT_TRUE(AllAre(all, 300, kPage + kPage / 2 - 300, 0x66));
  EXPECT_TRUE(AllAre(all, kPage + kPage / 2, 2 * kPage, 0));
  EXPECT_TRUE(AllAre(all, 3 * kPage + kPage / 2, kPage / 2, 0x66));
  s.discard(0, 8 << 20);
  EXPECT_EQ(s.allocated_bytes(), 0u);
  s.discard(0, 8 << 20);  // holes again: nothing to do
  EXPECT_EQ(s.extent_at(0, 8 << 20).length, 8u << 20);
}

TEST(RamStore, RunsOfPagesAlikeStopAtTheEnd) {
  // Not a whole number of chunks: the last one is short.
  const uint64_t size = kChunk + 3 * kPage;
  RamStore s(size, false);
  const auto data = Filled(2 * kPage, 1);
  ASSERT_TRUE(s.write(kChunk - kPage, data.data(), data.size()));  // across chunks
  RamStore::Run r = s.extent_at(0, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(r.length, kChunk - kPage);
  EXPECT_FALSE(r.present);
  r = s.extent_at(kChunk - kPage, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(r.length, 2 * kPage) << "one run across the chunk boundary";
  EXPECT_TRUE(r.present);
  r = s.extent_at(kChunk + kPage, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(r.length, 2 * kPage) << "clamped to the end";
  EXPECT_FALSE(r.present);
  EXPECT_EQ(s.extent_at(kChunk - kPage + 100, 50).length, 50u);
  EXPECT_EQ(s.extent_at(size, kPage).length, 0u);
  EXPECT_EQ(s.extent_at(uint64_t{1} << 60, kPage).length, 0u);
  std::vector<std::byte> back = Read(s, kChunk - kPage, 2 * kPage);
  EXPECT_EQ(back, data);
}

TEST(RamStore, AHugeSparseStoreUsesOnlyWhatIsWritten) {
  RamStore s(RamStore::kMaxBytes, false);  // 1 PiB: a 4 GiB table, untouched
  const auto data = Filled(kPage, 0x42);
  const uint64_t far = RamStore::kMaxBytes - kPage;
  ASSERT_TRUE(s.write(far, data.data(), data.size()));
  EXPECT_EQ(Read(s, far, kPage), data);
  EXPECT_EQ(s.allocated_bytes(), kPage);
  EXPECT_TRUE(s.page_present(far / kPage));
}

// Threads write their own pages of chunks nobody has written yet, racing
// to map each chunk: every page lands, each is counted once.
TEST(RamStore, WritersRacingToMakeAChunkLoseNothing) {
  constexpr int kThreads = 4;
  constexpr uint64_t kChunks = 8;
  RamStore s(kChunks * kChunk, false);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&s, t] {
      const auto data = Filled(kPage, uint8_t(t + 1));
      for (uint64_t c = 0; c < kChunks; ++c)
        for (uint64_t p = t; p < RamStore::kPagesPerChunk; p += kThreads * 16)
          ASSERT_TRUE(s.write(c * kChunk + p * kPage, data.data(), kPage));
    });
  }
  for (auto& th : threads) th.join();
  uint64_t pages = 0;
  for (uint64_t c = 0; c < kChunks; ++c) {
    for (uint64_t p = 0; p < RamStore::kPagesPerChunk; ++p) {
      const bool written = p % (kThreads * 16) < kThreads;
      ASSERT_EQ(s.page_present(c * RamStore::kPagesPerChunk + p), written)
          << c << ":" << p;
      if (!written) continue;
      ++pages;
      EXPECT_TRUE(AllAre(Read(s, c * kChunk + p * kPage, kPage), 0, kPage,
                         uint8_t(p % (kThreads * 16) + 1)));
    }
  }
  EXPECT_EQ(s.allocated_bytes(), pages * kPage);
}

// A chunk whose every page holds data goes to the advice thread and into a
// huge page; its data stays.
TEST(RamStore, AFullChunkIsCollapsedIntoAHugePage) {
  if (!testing_util::HaveHugePages()) GTEST_SKIP() << "no transparent huge pages here";
  RamStore s(4 << 20, false);
  const auto data = Filled(kChunk, 0x77);
  ASSERT_TRUE(s.write(kChunk, data.data(), kPage));  // chunk 1: one page
  ASSERT_TRUE(s.write(0, data.data(), kChunk));      // chunk 0: full
  for (int i = 0; i < 500 && s.collapsed_chunks() < 1; ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(s.collapsed_chunks(), 1u);
  EXPECT_EQ(Read(s, 0, kChunk), data);
  EXPECT_EQ(s.allocated_bytes(), kChunk + kPage);
}

}  // namespace
}  // namespace blkstack
