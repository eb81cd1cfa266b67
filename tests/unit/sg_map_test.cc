// SgMapper: every bio within every limit, cut exactly at the limits, data
// round trips through a RAM disk, bounce exactly when the layout breaks the
// alignment rules, and the mempool rule (the debug check is on) with pools
// of one from several threads.
#include "blkstack/sg_map.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/limits.h"

namespace blkstack {
namespace {

constexpr uint64_t kDiskBytes = 8 << 20;

// What a bio looked like when the driver got it.
struct Seen {
  uint64_t sector;
  uint32_t bytes;
  unsigned segments;
};

// A RAM disk that checks each bio against its limits and that it came
// straight from the mapper's BioSet (so submit_bio split nothing). With
// `async`, a thread of its own completes the bios, so they are in flight
// while the mapper allocates the next.
class CheckingRam final : public BioDriver {
 public:
  CheckingRam(const QueueLimits& lim, bool async) : lim_(lim), mem_(kDiskBytes) {
    if (async) worker_ = std::thread([this] { run(); });
  }
  ~CheckingRam() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  void submit(Bio& bio) override {
    check(bio);
    if (!worker_.joinable()) return transfer(bio);
    {
      std::lock_guard lock(mu_);
      queue_.push_back(&bio);
    }
    cv_.notify_one();
  }

  BioSet* expect_pool = nullptr;
  std::mutex log_mu;
  std::vector<Seen> log;
  std::vector<std::string> errors;
  std::byte* mem() { return mem_.data(); }

 private:
  void fail(const std::string& what) {
    std::lock_guard lock(log_mu);
    errors.push_back(what);
  }

  void check(const Bio& bio) {
    const uint32_t lbs = lim_.logical_block_size;
    if (bio.pool() != expect_pool) fail("a bio not from the mapper's set (split below)");
    if (bio.size() % lbs != 0 || (bio.sector() << kSectorShift) % lbs != 0)
      fail("not on logical blocks");
    if (bio.size() > (uint64_t{lim_.max_io_sectors()} << kSectorShift))
      fail("over max_sectors");
    auto segs = bio.segments();
    if (segs.size() > lim_.max_segments) fail("over max_segments");
    const uint64_t mask = lim_.seg_boundary_mask;
    for (size_t i = 0; i < segs.size(); ++i) {
      const auto a = reinterpret_cast<uintptr_t>(segs[i].ptr);
      const uintptr_t end = a + segs[i].len;
      if (segs[i].len == 0) fail("empty segment");
      if (segs[i].len > lim_.max_segment_size) fail("over max_segment_size");
      if ((a & ~mask) != ((end - 1) & ~mask)) fail("segment crosses its boundary");
      if (((a | segs[i].len) & lim_.dma_alignment) != 0) fail("off dma_alignment");
      if (i > 0 && (a & lim_.virt_boundary_mask) != 0) fail("virt gap (start)");
      if (i + 1 < segs.size() && (end & lim_.virt_boundary_mask) != 0)
        fail("virt gap (end)");
    }
    std::lock_guard lock(log_mu);
    log.push_back({bio.sector(), bio.size(), static_cast<unsigned>(segs.size())});
  }

  void transfer(Bio& bio) {
    uint64_t at = bio.sector() << kSectorShift;
    bio.for_each_chunk([&](const BioChunk& c) {
      if (bio.op() == Op::kWrite)
        std::memcpy(mem_.data() + at, c.ptr, c.len);
      else
        std::memcpy(c.ptr, mem_.data() + at, c.len);
      at += c.len;
    });
    bio.complete(Status::kOk);
  }

  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      Bio* b = queue_.front();
      queue_.pop_front();
      lock.unlock();
      transfer(*b);
      lock.lock();
    }
  }

  QueueLimits lim_;
  std::vector<std::byte> mem_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Bio*> queue_;
  bool stop_ = false;
  std::thread worker_;
};

// Waits for a mapper callback.
struct Waiter {
  std::mutex mu;
  std::condition_variable cv;
  int calls = 0;
  Status status = Status::kOk;

  static void done(void* ctx, Status s) {
    auto& w = *static_cast<Waiter*>(ctx);
    std::lock_guard lock(w.mu);
    ++w.calls;
    w.status = s;
    w.cv.notify_all();
  }
  // A mapper that never calls back (one spinning on limits it cannot cut,
  // or waiting on its own pool) fails the test here instead of hanging it.
  // Abort, not return: the I/O still in flight names this waiter.
  Status wait() {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, std::chrono::seconds(30), [&] { return calls > 0; })) {
      std::fprintf(stderr, "sg_map_test: no callback within 30 s: the mapper hangs\n");
      std::abort();
    }
    return status;
  }
};

struct Rig {
  std::shared_ptr<Disk> disk;
  CheckingRam* ram;
  std::unique_ptr<SgMapper> mapper;

  Rig(const QueueLimits& lim, bool async, const SgMapper::Options& o = {}) {
    auto drv = std::make_unique<CheckingRam>(lim, async);
    ram = drv.get();
    disk = std::make_shared<Disk>("sg0", kDiskBytes >> kSectorShift, lim, std::move(drv));
    mapper = std::make_unique<SgMapper>(disk->part0(), o);
    ram->expect_pool = &mapper->bioset();
  }
  ~Rig() {
    mapper.reset();
    disk->shutdown();
  }
  Status run(Op op, uint64_t sector, std::span<const Segment> sg) {
    Waiter w;
    mapper->submit(op, sector, sg, &Waiter::done, &w);
    Status s = w.wait();
    EXPECT_EQ(w.calls, 1);
    return s;
  }
};

QueueLimits random_limits(std::mt19937_64& rng) {
  for (;;) {
    auto pick = [&](auto... v) {
      const uint64_t all[] = {static_cast<uint64_t>(v)...};
      return all[rng() % sizeof...(v)];
    };
    QueueLimits lim;
    lim.logical_block_size = static_cast<uint32_t>(pick(512, 512, 1024, 4096));
    lim.physical_block_size = lim.logical_block_size;
    lim.max_sectors = static_cast<uint32_t>(lim.logical_block_size / 512 + rng() % 256);
    lim.max_hw_sectors = static_cast<uint32_t>(pick(65535, 65535, 128));
    lim.max_segments = static_cast<uint16_t>(1 + rng() % 16);
    lim.virt_boundary_mask = static_cast<uint32_t>(pick(0, 0, 0, 511, 4095));
    const uint32_t unit = lim.virt_boundary_mask + 1;
    lim.max_segment_size =
        static_cast<uint32_t>(std::max<uint64_t>(512, unit) * (1 + rng() % 32));
    lim.seg_boundary_mask = pick(UINT64_MAX, UINT64_MAX, 4095, 8191, 65535);
    lim.dma_alignment = static_cast<uint32_t>(pick(0, 3, 511, 511));
    if (lim.check().empty()) return lim;
  }
}

// A list over `arena` whose total is `total` bytes: entries in order, each
// after a random gap (often none, so neighbours merge). `aligned`: every
// address and length a multiple of dma_alignment + 1 and no gap that breaks
// the virtual boundary; lengths then also whole blocks, so cutting alone
// always fits.
std::vector<Segment> random_list(std::mt19937_64& rng, std::byte* arena,
                                 size_t arena_size, const QueueLimits& lim,
                                 uint64_t total, bool aligned) {
  std::vector<Segment> sg;
  const uint32_t unit =
      aligned ? std::max<uint32_t>(lim.logical_block_size, lim.virt_boundary_mask + 1)
              : 1;
  size_t at = aligned ? 0 : rng() % 8;
  uint64_t left = total;
  while (left > 0) {
    if (rng() % 3 == 0) {
      size_t gap = (rng() % 4) * (aligned ? 4096 : 1 + rng() % 700);
      at += gap;
    }
    uint64_t len = unit * (1 + rng() % (aligned ? 6 : 9000));
    len = std::min(len, left);
    if (at + len > arena_size) break;
    sg.emplace_back(arena + at, static_cast<uint32_t>(len));
    at += len;
    left -= len;
  }
  EXPECT_EQ(left, 0u) << "arena too small";
  return sg;
}

// Greedy hardware segments of stream bytes [from, from + len) of `sg`
// (contiguous entries merge), computed byte range by byte range as the
// limits read: the reference for "cut exactly at the limits".
unsigned segments_for(const std::vector<Segment>& sg, uint64_t from, uint64_t len,
                      const QueueLimits& lim) {
  unsigned n = 0;
  uintptr_t seg_start = 0, seg_end = 0;
  bool open = false;
  uint64_t pos = 0;
  for (const Segment& e : sg) {
    const uint64_t lo = std::max(pos, from), hi = std::min(pos + e.len, from + len);
    for (uint64_t b = lo; b < hi;) {
      const uintptr_t a = reinterpret_cast<uintptr_t>(e.ptr) + (b - pos);
      const uint64_t mask = lim.seg_boundary_mask;
      const bool same_region = (a & ~mask) == (seg_start & ~mask);
      if (open && a == seg_end && same_region &&
          seg_end - seg_start < lim.max_segment_size) {
        ++seg_end;  // one byte further
        ++b;
        continue;
      }
      ++n;
      open = true;
      seg_start = a;
      seg_end = a + 1;
      ++b;
    }
    pos += e.len;
  }
  return n;
}

void fill(std::mt19937_64& rng, std::span<const Segment> sg) {
  for (const Segment& e : sg)
    for (uint32_t i = 0; i < e.len; ++i) e.ptr[i] = static_cast<std::byte>(rng());
}

std::vector<std::byte> gather(std::span<const Segment> sg) {
  std::vector<std::byte> out;
  for (const Segment& e : sg) out.insert(out.end(), e.ptr, e.ptr + e.len);
  return out;
}

struct Arena {
  size_t size;
  std::byte* p;
  explicit Arena(size_t n)
      : size(n), p(static_cast<std::byte*>(std::aligned_alloc(4096, n))) {}
  ~Arena() { std::free(p); }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
};

// The property: random limits, random lists, aligned or not.
TEST(SgMap, RandomLimitsEveryBioFitsAndCutsAreExact) {
  std::mt19937_64 rng(1234);
  Arena src(4 << 20), dst(4 << 20);
  for (int round = 0; round < 100; ++round) {
    const QueueLimits lim = random_limits(rng);
    Rig rig(lim, /*async=*/round % 2 == 1);
    const bool aligned = round % 3 != 0;
    const uint32_t lbs = lim.logical_block_size;
    const uint64_t total = lbs * (1 + rng() % (512 * 1024 / lbs));
    const uint64_t sector = (rng() % ((kDiskBytes - total) / lbs)) * lbs / 512;
    auto wsg = random_list(rng, src.p, src.size, lim, total, aligned);
    fill(rng, wsg);
    const uint64_t bounced_before = rig.mapper->bios_bounced();
    ASSERT_EQ(rig.run(Op::kWrite, sector, wsg), Status::kOk);
    const bool bounced = rig.mapper->bios_bounced() != bounced_before;
    SCOPED_TRACE("round " + std::to_string(round) + " lbs " + std::to_string(lbs) +
                 " max_segments " + std::to_string(lim.max_segments) + " max_seg_size " +
                 std::to_string(lim.max_segment_size) + " max_sectors " +
                 std::to_string(lim.max_io_sectors()));
    // Bounced exactly when the layout breaks the rules: aligned lists of
    // whole blocks never need it; the others break dma_alignment (their
    // lengths are odd) whenever the disk has one.
    if (aligned) {
      EXPECT_FALSE(bounced);
    }
    if (!aligned && lim.dma_alignment != 0) {
      EXPECT_TRUE(bounced);
    }
    {
      std::lock_guard lock(rig.ram->log_mu);
      EXPECT_TRUE(rig.ram->errors.empty()) << rig.ram->errors.front();
      uint64_t off = 0;
      for (size_t i = 0; i < rig.ram->log.size(); ++i) {
        const Seen& s = rig.ram->log[i];
        EXPECT_EQ(s.sector, sector + off / 512);  // in order, nothing lost
        const bool last = i + 1 == rig.ram->log.size();
        if (!bounced && !last) {
          // Not a byte earlier than needed: one more block would break
          // max_sectors or max_segments.
          const uint64_t more = s.bytes + lbs;
          const bool too_long = more > (uint64_t{lim.max_io_sectors()} << kSectorShift);
          EXPECT_TRUE(too_long || segments_for(wsg, off, more, lim) > lim.max_segments)
              << "bio " << i << " of " << s.bytes << " bytes cut early";
        }
        off += s.bytes;
      }
      EXPECT_EQ(off, total);
    }
    EXPECT_EQ(std::memcmp(rig.ram->mem() + sector * 512, gather(wsg).data(), total), 0);
    // Back through a different layout.
    auto rsg = random_list(rng, dst.p, dst.size, lim, total, rng() % 2 == 0);
    for (const Segment& e : rsg) std::memset(e.ptr, 0, e.len);
    ASSERT_EQ(rig.run(Op::kRead, sector, rsg), Status::kOk);
    EXPECT_EQ(gather(rsg), gather(wsg));
    std::lock_guard lock(rig.ram->log_mu);
    EXPECT_TRUE(rig.ram->errors.empty());
  }
}

// Empty entries (a null pointer among them) anywhere in the list are
// skipped, on the direct path and through a bounce buffer both ways.
TEST(SgMap, EmptyEntriesAnywhereAreSkipped) {
  QueueLimits lim;
  lim.dma_alignment = 3;
  Rig rig(lim, /*async=*/false);
  Arena src(64 * 1024), dst(64 * 1024);
  for (uint32_t shift : {0u, 1u}) {  // aligned, then bounced (odd address)
    std::mt19937_64 rng(shift);
    Segment w[] = {{nullptr, 0},      {src.p + shift, 1024},        {nullptr, 0},
                   {src.p + 8192, 0}, {src.p + 8192 + shift, 3072}, {nullptr, 0}};
    fill(rng, w);
    ASSERT_EQ(rig.run(Op::kWrite, 8, w), Status::kOk);
    Segment r[] = {{nullptr, 0},
                   {dst.p + shift, 2048},
                   {nullptr, 0},
                   {dst.p + 16384 + shift, 2048},
                   {nullptr, 0}};
    std::memset(dst.p, 0, dst.size);
    ASSERT_EQ(rig.run(Op::kRead, 8, r), Status::kOk);
    EXPECT_EQ(gather(r), gather(w));
    EXPECT_EQ(rig.mapper->bios_bounced() != 0, shift != 0);
  }
  Segment none[] = {{nullptr, 0}, {nullptr, 0}};
  EXPECT_EQ(rig.run(Op::kWrite, 0, none), Status::kOk);
}

TEST(SgMap, AlignedListIsNotBouncedMisalignedIs) {
  QueueLimits lim;
  lim.dma_alignment = 511;
  Rig rig(lim, false);
  Arena a(1 << 20);
  std::memset(a.p, 7, 8192);
  Segment ok[] = {{a.p, 4096}, {a.p + 8192, 4096}};
  ASSERT_EQ(rig.run(Op::kWrite, 0, ok), Status::kOk);
  EXPECT_EQ(rig.mapper->bios_bounced(), 0u);
  Segment off[] = {{a.p + 1, 4096}, {a.p + 8192, 4096}};
  ASSERT_EQ(rig.run(Op::kWrite, 0, off), Status::kOk);
  EXPECT_EQ(rig.mapper->bios_bounced(), 1u);
  EXPECT_EQ(std::memcmp(rig.ram->mem(), a.p + 1, 4096), 0);
  // A gap at the virtual boundary bounces too.
  QueueLimits vlim;
  vlim.virt_boundary_mask = 4095;
  Rig vrig(vlim, false);
  Segment gap[] = {{a.p, 2048}, {a.p + 8192, 2048}};
  ASSERT_EQ(vrig.run(Op::kWrite, 0, gap), Status::kOk);
  EXPECT_EQ(vrig.mapper->bios_bounced(), 1u);
  Segment nogap[] = {{a.p, 4096}, {a.p + 8192, 2048}};
  ASSERT_EQ(vrig.run(Op::kWrite, 0, nogap), Status::kOk);
  EXPECT_EQ(vrig.mapper->bios_bounced(), 1u);
}

TEST(SgMap, MisalignedRangeAndOpsFailOnce) {
  Rig rig(QueueLimits{}, false);
  Arena a(8192);
  Segment half[] = {{a.p, 100}};
  EXPECT_EQ(rig.run(Op::kWrite, 0, half), Status::kInvalid);
  Segment one[] = {{a.p, 512}};
  EXPECT_EQ(rig.run(Op::kFlush, 0, one), Status::kInvalid);
  EXPECT_EQ(rig.run(Op::kRead, (kDiskBytes >> kSectorShift), one), Status::kOutOfRange);
}

// The first error reaches the callback, once.
TEST(SgMap, FirstErrorReachesTheCallbackOnce) {
  QueueLimits lim;
  lim.max_sectors = 8;
  Rig rig(lim, false);
  Arena a(1 << 20);
  Segment big[] = {{a.p, 64 * 1024}};
  // Past the end from the middle on: the later bios fail.
  const uint64_t sector = (kDiskBytes >> kSectorShift) - 64;
  EXPECT_EQ(rig.run(Op::kWrite, sector, big), Status::kOutOfRange);
}

// A disk that allows more segments than a bio should carry (a bio-based
// one, 65535) gets bios of kMaxSegments: correct, and small to pool.
TEST(SgMap, BioTablesAreCappedAtKMaxSegments) {
  QueueLimits lim;
  lim.max_segments = UINT16_MAX;
  lim.max_segment_size = 512;
  Rig rig(lim, /*async=*/false);
  Bio* bio = rig.mapper->bioset().alloc();
  EXPECT_EQ(BioSet::inline_segments(*bio).size(), SgMapper::kMaxSegments);
  bio->put();
  // 1 MiB of 512-byte pieces (none contiguous): bios of 256 segments each.
  Arena a(4 << 20);
  std::vector<Segment> sg;
  for (size_t i = 0; i < 2048; ++i) sg.emplace_back(a.p + i * 1024, 512);
  ASSERT_EQ(rig.run(Op::kWrite, 0, sg), Status::kOk);
  EXPECT_EQ(rig.mapper->bios_submitted(), 2048u / SgMapper::kMaxSegments);
  std::lock_guard lock(rig.ram->log_mu);
  EXPECT_TRUE(rig.ram->errors.empty());
}

// A bounced read that fails copies nothing out: the pieces that failed
// leave the caller's memory as it was, the ones that worked fill theirs.
TEST(SgMap, AFailedBouncedReadLeavesTheCallersMemoryAlone) {
  QueueLimits lim;
  lim.max_sectors = 8;
  lim.dma_alignment = 511;
  Rig rig(lim, /*async=*/true);
  Arena a(1 << 20);
  std::memset(rig.ram->mem() + kDiskBytes - 32 * 1024, 0x11, 32 * 1024);
  std::memset(a.p, 0x55, 64 * 1024 + 1);
  Segment sg[] = {{a.p + 1, 64 * 1024}};                      // odd: bounced
  const uint64_t sector = (kDiskBytes >> kSectorShift) - 64;  // half past the end
  EXPECT_EQ(rig.run(Op::kRead, sector, sg), Status::kOutOfRange);
  EXPECT_GT(rig.mapper->bios_bounced(), 0u);
  for (size_t i = 0; i < 32 * 1024; ++i) ASSERT_EQ(a.p[1 + i], std::byte{0x11}) << i;
  for (size_t i = 32 * 1024; i < 64 * 1024; ++i)
    ASSERT_EQ(a.p[1 + i], std::byte{0x55}) << i;
}

// Seed 004: pools of one bio and one bounce buffer, several threads each
// mapping lists that need many bios, completed on another thread. With the
// debug check on, a mapper that allocated its next bio (or buffer) before
// submitting the one it holds would abort here; one that waited holding it
// would hang.
TEST(SgMap, PoolsOfOneFromManyThreadsNeverHoldWhileWaiting) {
  QueueLimits lim;
  lim.max_sectors = 8;  // 4 KiB a bio
  lim.max_segments = 2;
  lim.dma_alignment = 511;
  SgMapper::Options o;
  o.bios = o.max_bios = 1;
  o.bounce_buffers = o.max_bounce_buffers = 1;
  o.jobs = 1;
  Rig rig(lim, /*async=*/true, o);
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  std::vector<std::unique_ptr<Arena>> arenas;
  for (int t = 0; t < kThreads; ++t)
    arenas.push_back(std::make_unique<Arena>(256 * 1024));
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (int i = 0; i < 20; ++i) {
        const uint64_t sector = uint64_t(t) * 1024;
        // Even rounds direct, odd ones bounced (odd offset).
        std::byte* base = arenas[t]->p + (i % 2);
        Segment sg[] = {{base, 16 * 1024}, {base + 32 * 1024, 48 * 1024}};
        fill(rng, sg);
        Waiter w;
        rig.mapper->submit(Op::kWrite, sector, sg, &Waiter::done, &w);
        ASSERT_EQ(w.wait(), Status::kOk);
        ASSERT_EQ(
            std::memcmp(rig.ram->mem() + sector * 512, gather(sg).data(), 64 * 1024), 0);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_GT(rig.mapper->bios_bounced(), 0u);
  EXPECT_EQ(rig.mapper->bioset().mempool().total(), 1u);
  std::lock_guard lock(rig.ram->log_mu);
  EXPECT_TRUE(rig.ram->errors.empty());
}

#ifdef BLKSTACK_DEBUG_CHECKS
// The check the test above relies on is in this build: holding a bio of a
// pool of one and asking for another aborts.
TEST(SgMapDeathTest, TheDebugCheckCatchesAHolder) {
  BioSet set("one", 1, 1);
  EXPECT_DEATH(
      {
        Bio* a = set.alloc();
        Bio* b = set.alloc();  // waits for itself
        (void)a;
        (void)b;
      },
      "seed 004");
}
#endif

// Fuzz-like: random limits and lists from several threads at once on one
// mapper, reads and writes to disjoint ranges, under ASan in make test.
TEST(SgMap, RandomConcurrentRoundTrips) {
  std::mt19937_64 rng(99);
  for (int round = 0; round < 6; ++round) {
    const QueueLimits lim = random_limits(rng);
    SgMapper::Options o;
    o.bios = o.max_bios = 2;
    o.bounce_buffers = o.max_bounce_buffers = 1;
    Rig rig(lim, true, o);
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
      threads.emplace_back([&, t, seed = rng()] {
        std::mt19937_64 r(seed);
        Arena src(1 << 20), dst(1 << 20);
        const uint32_t lbs = lim.logical_block_size;
        for (int i = 0; i < 10; ++i) {
          const uint64_t total = lbs * (1 + r() % (128 * 1024 / lbs));
          const uint64_t sector = uint64_t(t) * (2 << 20) / 512;
          auto wsg = random_list(r, src.p, src.size, lim, total, r() % 2 == 0);
          fill(r, wsg);
          ASSERT_EQ(rig.run(Op::kWrite, sector, wsg), Status::kOk);
          auto rsg = random_list(r, dst.p, dst.size, lim, total, r() % 2 == 0);
          ASSERT_EQ(rig.run(Op::kRead, sector, rsg), Status::kOk);
          ASSERT_EQ(gather(rsg), gather(wsg));
        }
      });
    }
    for (auto& th : threads) th.join();
    std::lock_guard lock(rig.ram->log_mu);
    EXPECT_TRUE(rig.ram->errors.empty()) << rig.ram->errors.front();
  }
}

}  // namespace
}  // namespace blkstack
