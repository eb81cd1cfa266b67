// Stacked drivers: the pass-through (src/drivers/passthrough.cc) 16 deep over
// a RAM disk against a reference model from 4 threads, flushes forwarded,
// and bad specs refused with nothing changed.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/error.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Contains;
using testing_util::ErrorOf;

constexpr uint64_t kDiskBytes = 8 << 20;
constexpr uint64_t kStep = 64 << 10;  // each level starts this far into the one below
constexpr int kLevels = 16;

TEST(Stack, Passthrough16DeepPassesAReferenceModelFrom4Threads) {
  DiskRegistry registry;
  registry.create(fmt::format("ram:{}", kDiskBytes));
  std::string below = "ram0";
  for (int i = 0; i < kLevels; ++i) {
    const std::string name = fmt::format("pt{}", i);
    registry.create(
        fmt::format("passthrough:lower={},offset={},name={}", below, kStep, name));
    below = name;
  }
  auto top = registry.get(below);
  const uint64_t top_bytes = kDiskBytes - kLevels * kStep;
  ASSERT_EQ(top->size_bytes(), top_bytes);
  EXPECT_EQ(top->describe(), "lower=pt14 offset=64 KiB");

  // Each thread owns a quarter of the top device and models its bytes.
  constexpr int kThreads = 4;
  constexpr int kOps = 1500;
  const uint64_t region = top_bytes / kThreads;
  std::vector<std::vector<std::byte>> model(kThreads, std::vector<std::byte>(region));
  std::vector<uint64_t> writes(kThreads), failures(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      BlockHandle h = BlockHandle::open(registry, below);
      std::mt19937_64 rng(1234 + t);
      std::vector<std::byte> buf(64 << 10), back(64 << 10);
      std::vector<std::byte>& m = model[t];
      const uint64_t base = t * region;
      for (int i = 0; i < kOps; ++i) {
        const uint64_t len = 512 * (1 + rng() % 128);
        const uint64_t off = 512 * (rng() % ((region - len) / 512 + 1));
        Status s = Status::kOk;
        switch (rng() % 10) {
          case 0:
          case 1:
          case 2: {
            const auto fill = static_cast<std::byte>(rng());
            for (uint64_t k = 0; k < len; ++k)
              buf[k] = fill ^ static_cast<std::byte>(k * 7);
            s = h.pwrite(buf.data(), len, base + off);
            std::memcpy(m.data() + off, buf.data(), len);
            ++writes[t];
            break;
          }
          case 3:
          case 4:
          case 5:
            s = h.pread(back.data(), len, base + off);
            if (std::memcmp(back.data(), m.data() + off, len) != 0) ++failures[t];
            break;
          case 6:
            s = h.flush();
            break;
          case 7:
            s = h.discard(base + off, len);
            std::memset(m.data() + off, 0, len);  // RAM discards read as zeroes
            break;
          default:
            s = h.write_zeroes(base + off, len);
            std::memset(m.data() + off, 0, len);
            break;
        }
        if (s != Status::kOk) ++failures[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], 0u) << "thread " << t;

  // Every byte, through the top and on the bottom disk at the sum of the
  // offsets (the bottom opened for reading: the stack holds it).
  std::vector<std::byte> all(top_bytes);
  ASSERT_EQ(BlockHandle(top).pread(all.data(), top_bytes, 0), Status::kOk);
  std::vector<std::byte> bottom(top_bytes);
  auto ram = registry.open("ram0", OpenMode::kRead);
  ASSERT_EQ(
      BlockHandle(registry.get("ram0")).pread(bottom.data(), top_bytes, kLevels * kStep),
      Status::kOk);
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(std::memcmp(all.data() + t * region, model[t].data(), region), 0) << t;
    EXPECT_EQ(std::memcmp(bottom.data() + t * region, model[t].data(), region), 0) << t;
  }

  // The bottom disk counted the I/O that went down the stack.
  const DiskStats st = ram->stats();
  uint64_t total_writes = 0;
  for (uint64_t w : writes) total_writes += w;
  EXPECT_GE(st.ios[kStatWrite], total_writes);
  EXPECT_GT(st.ios[kStatRead], 0u);
  EXPECT_GT(st.ios[kStatDiscard], 0u);
  EXPECT_EQ(st.in_flight, 0u);
  EXPECT_GE(top->stats().ios[kStatWrite], total_writes);
  // Each level holds the one below; none can go first.
  EXPECT_EQ(ram->holder(), "pt0");
  EXPECT_THROW(registry.remove("pt7"), BusyError);
}

TEST(Stack, FlushIsForwardedToTheLowerDevice) {
  DiskRegistry registry;
  auto lower = registry.create("null:1M,wc=1");
  auto upper = registry.create("passthrough:null0,offset=4K");
  EXPECT_TRUE(upper->limits().volatile_write_cache);
  ASSERT_EQ(BlockHandle(upper).flush(), Status::kOk);
  EXPECT_EQ(lower->stats().ios[kStatFlush], 1u);
}

TEST(Stack, BadSpecsAreRefusedAndChangeNothing) {
  DiskRegistry registry;
  registry.create("ram:1M");
  registry.create("passthrough:lower=ram0,name=top,size=512K");
  auto refused = [&](const std::string& spec) {
    const size_t before = registry.list().size();
    const std::string holder = registry.open("top", OpenMode::kRead)->holder();
    std::string why = ErrorOf([&] { registry.create(spec); });
    EXPECT_EQ(registry.list().size(), before) << spec;
    EXPECT_EQ(registry.open("top", OpenMode::kRead)->holder(), holder) << spec;
    return why;
  };
  EXPECT_TRUE(
      Contains(refused("passthrough:lower=top,offset=512K"), "beyond the end of top"));
  EXPECT_TRUE(Contains(refused("passthrough:lower=top,offset=1M"), "beyond the end"));
  EXPECT_TRUE(Contains(refused("passthrough:lower=nope"), "no disk named 'nope'"));
  EXPECT_TRUE(Contains(refused("passthrough:offset=4K"), "lower=NAME"));
  EXPECT_TRUE(Contains(refused("passthrough:lower=loop,name=loop"),
                       "cannot stack loop on itself"));
  EXPECT_TRUE(Contains(refused("passthrough:lower=top,offset=4K,size=512K"),
                       "does not fit in top"));
  EXPECT_TRUE(Contains(refused("passthrough:lower=top,offset=100"),
                       "not a multiple of the block size"));
  EXPECT_TRUE(Contains(refused("passthrough:lower=ram0"), "ram0 is held by top"));
  // The spec is named in each message.
  EXPECT_TRUE(Contains(refused("passthrough:lower=nope"),
                       "device spec 'passthrough:lower=nope'"));
  // And a good one still works afterwards: the claim on top was dropped.
  EXPECT_NO_THROW(registry.create("passthrough:lower=top,offset=4K,size=256K"));
}

}  // namespace
}  // namespace blkstack
