// A mapped device whose clone pool runs dry (DESIGN.md invariant 4): a bio
// that needs more pieces than the pool's reserve is mapped a piece at a
// time, and waits for the device's own completions between pieces, holding
// no clone while it waits; many such bios from many threads on a pool held
// to its reserve all finish, with the data right.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/mempool.h"
#include "blkstack/submit.h"
#include "dm/mapped_device.h"

namespace blkstack {
namespace {

// Runs `fn` on a thread of its own and fails the test if it has not
// finished within `seconds`. A bio that can never get its clones spins or
// hangs where no test can interrupt it, so the process exits: a failure,
// never a hang of the test run.
void WithDeadline(int seconds, const std::function<void()>& fn) {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread t([&] {
    fn();
    std::lock_guard lock(mu);
    done = true;
    cv.notify_all();
  });
  std::unique_lock lock(mu);
  if (!cv.wait_for(lock, std::chrono::seconds(seconds), [&] { return done; })) {
    std::fprintf(stderr, "FAILED: the I/O did not finish within %d s (stuck)\n", seconds);
    std::fflush(stderr);
    _exit(1);
  }
  lock.unlock();
  t.join();
}

// Holds the device's clone pool to the elements it has: growing it from
// the heap fails as if memory had run out.
struct PoolHeldToReserve {
  MempoolBase& pool;
  explicit PoolHeldToReserve(MappedDevice& md) : pool(md.io_pool()) {
    pool.simulate_out_of_memory(true);
  }
  ~PoolHeldToReserve() { pool.simulate_out_of_memory(false); }
};

std::vector<std::byte> Random(size_t n, std::mt19937_64& rng) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i + 8 <= n; i += 8) {
    const uint64_t r = rng();
    std::memcpy(&v[i], &r, 8);
  }
  return v;
}

TEST(DmBackpressure, ABioOfMorePiecesThanTheReserveIsSentAPieceAtATime) {
  DiskRegistry registry;
  registry.create("ram:4M");
  registry.create("ram:4M");
  // 4 KiB chunks: a 1 MiB bio is 256 pieces, many more than the reserve.
  MappedDevice& md =
      MappedDevice::create(registry, "st", "", "0 16384 striped 2 8 ram0 0 ram1 0");
  const size_t reserve = md.io_pool().total();
  ASSERT_LT(reserve, 256u);
  PoolHeldToReserve held(md);
  std::mt19937_64 rng(1);
  const std::vector<std::byte> data = Random(1 << 20, rng);
  std::vector<std::byte> back(data.size());
  WithDeadline(10, [&] {
    BlockHandle h = BlockHandle::open(registry, "st");
    EXPECT_EQ(h.pwrite(data.data(), data.size(), 512 * 8 * 3), Status::kOk);
    EXPECT_EQ(h.pread(back.data(), back.size(), 512 * 8 * 3), Status::kOk);
  });
  EXPECT_TRUE(back == data);
  EXPECT_EQ(md.io_pool().total(), reserve);  // it never grew
}

TEST(DmBackpressure, ManyThreadsOfLargeBiosOnAPoolHeldToItsReserve) {
  DiskRegistry registry;
  registry.create("ram:8M");
  registry.create("ram:8M");
  // Lines of odd lengths over 4 KiB stripes: bios cut at lines and chunks.
  const std::string table =
      "0 7008 striped 2 8 ram0 0 ram1 0\n"
      "7008 5001 linear ram0 4096\n"
      "12009 12000 striped 2 8 ram0 9216 ram1 4096\n";
  MappedDevice& md = MappedDevice::create(registry, "mix", "", table);
  const size_t reserve = md.io_pool().total();
  PoolHeldToReserve held(md);
  constexpr int kThreads = 8;
  const uint64_t region = (md.disk().size_bytes() / kThreads) / 4096 * 4096;
  std::atomic<int> bad{0};
  WithDeadline(30, [&] {
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t) {
      ts.emplace_back([&, t] {
        BlockHandle h = BlockHandle::open(registry, "mix");
        std::mt19937_64 rng(100 + t);
        std::vector<std::byte> model(region);
        std::vector<std::byte> back;
        const uint64_t base = t * region;
        for (int i = 0; i < 40; ++i) {
          const uint64_t len = 512 * (1 + rng() % (region / 512 / 2));
          const uint64_t off = 512 * (rng() % ((region - len) / 512 + 1));
          if (rng() % 2 == 0) {
            const std::vector<std::byte> data = Random(len, rng);
            if (h.pwrite(data.data(), len, base + off) != Status::kOk) ++bad;
            std::memcpy(model.data() + off, data.data(), len);
          } else {
            back.resize(len);
            if (h.pread(back.data(), len, base + off) != Status::kOk ||
                std::memcmp(back.data(), model.data() + off, len) != 0) {
              ++bad;
            }
          }
        }
      });
    }
    for (auto& t : ts) t.join();
  });
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(md.io_pool().total(), reserve);
}

// A bio submitted asynchronously; remembers how it ended.
struct AsyncBio {
  Bio bio;
  std::vector<std::byte> buf;
  Segment seg;
  std::atomic<int> ends{0};
  std::atomic<Status> status{Status::kOk};
  AsyncBio(Disk& disk, Op op, uint64_t sector, size_t bytes) : buf(bytes) {
    seg = Segment(buf.data(), static_cast<uint32_t>(bytes));
    bio.init(&disk, op, sector, std::span<Segment>(&seg, 1), &AsyncBio::done, this);
  }
  static void done(Bio& b) {
    auto* self = static_cast<AsyncBio*>(b.context());
    self->status.store(b.status());
    self->ends.fetch_add(1);
  }
};

// Takes every element the (held) pool has, so that only the thread's own
// clone is left: a bio of two pieces sends one and parks with the other.
struct PoolDrained {
  MempoolBase& pool;
  std::vector<void*> taken;
  explicit PoolDrained(MempoolBase& p) : pool(p) {
    while (void* e = pool.alloc_raw(Wait::kNoWait)) taken.push_back(e);
  }
  void give_back_one() {
    pool.free_raw(taken.back());
    taken.pop_back();
  }
  ~PoolDrained() {
    for (void* e : taken) pool.free_raw(e);
  }
};

TEST(DmBackpressure, ABioParkedPartWayGoesOnWhenItsDiskTurnsReadOnlyMeanwhile) {
  DiskRegistry registry;
  registry.create("ram:4M");
  registry.create("ram:4M");
  MappedDevice& md =
      MappedDevice::create(registry, "st", "", "0 16384 striped 2 8 ram0 0 ram1 0");
  const size_t reserve = md.io_pool().total();
  PoolHeldToReserve held(md);
  WithDeadline(10, [&] {
    Disk& disk = md.disk();
    // Two 4 KiB pieces: the first goes with this thread's own clone, the
    // second finds the pool empty and the write parks part way.
    AsyncBio write(disk, Op::kWrite, 0, 8192);
    std::memset(write.buf.data(), 0x5a, write.buf.size());
    {
      PoolDrained drained(md.io_pool());
      submit_bio(write.bio);
      ASSERT_EQ(write.ends.load(), 0) << "the write did not park";
      // Admitted before: a write already on its way is not refused for it.
      disk.set_read_only(true);
      drained.give_back_one();
      // A read comes in behind the parked write and wakes it with the clone.
      AsyncBio read(disk, Op::kRead, 64, 4096);
      submit_bio(read.bio);
      EXPECT_EQ(write.ends.load(), 1);
      EXPECT_EQ(write.status.load(), Status::kOk);
      EXPECT_EQ(read.ends.load(), 1);
      EXPECT_EQ(read.status.load(), Status::kOk);
    }
    disk.set_read_only(false);
    std::vector<std::byte> back(8192);
    BlockHandle h = BlockHandle::open(registry, "st");
    EXPECT_EQ(h.pread(back.data(), back.size(), 0), Status::kOk);
    EXPECT_TRUE(back == write.buf);
  });
  // Every clone came back, none is left handed to a bio that is gone.
  EXPECT_EQ(md.io_pool().available(), md.io_pool().total());
  EXPECT_EQ(md.io_pool().total(), reserve);
}

}  // namespace
}  // namespace blkstack
