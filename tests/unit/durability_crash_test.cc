// Host-crash simulation: the file driver over CrashHost (crash_host.h), a
// host file that keeps what was not yet fdatasynced in a volatile page
// cache and loses all, none or a random part of it (each sector whole) at a
// power cut. Clients mix writes, FUA writes and flushes from several
// threads, the cut comes after a random number of operations, and the
// image left must keep every write acknowledged as durable
// (durability_model.h). The next round starts from that image.
//
// BLKSTACK_CRASH_POINTS sets the number of crash points (default 150, 20
// under a sanitizer; the slow run, durability.crash_long, asks for 2000),
// BLKSTACK_SEED the seed.
// The mutation tests make the host answer fdatasync before doing it, or
// ignore RWF_DSYNC, and require the same check to fail.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "crash_host.h"
#include "durability_model.h"
#include "file_test_util.h"

namespace blkstack {
namespace {

using durability::DurabilityModel;
using durability::kSector;
using testing_util::CrashHost;

constexpr unsigned kThreads = 4;
constexpr uint64_t kSectorsPerThread = 256;
constexpr uint64_t kSectors = kThreads * kSectorsPerThread;
constexpr unsigned kMaxWriteSectors = 16;
// Crash points of each mutation test: most of them catch it.
constexpr uint64_t kMutationRounds = durability::kSanitized ? 12 : 40;

uint64_t env_or(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : fallback;
}

struct Mutation {
  bool early_fdatasync = false;
  bool ignore_dsync = false;
};

struct Totals {
  uint64_t rounds = 0, writes = 0, flushes = 0, failed_rounds = 0;
  std::string first_failure;
};

class DurabilityCrash : public ScratchDirTest {
 protected:
  // `rounds` crash points from one seed. Each: a file disk over a CrashHost
  // holding the last image, kThreads clients until the cut, the check.
  Totals run(uint64_t rounds, uint64_t seed, Mutation m) {
    Totals t;
    std::mt19937_64 rng(seed);
    std::vector<std::byte> image(kSectors * kSector);
    DurabilityModel model(kSectors);
    for (uint64_t r = 0; r < rounds; ++r) {
      CrashHost host(image, rng());
      host.early_fdatasync = m.early_fdatasync;
      host.ignore_dsync = m.ignore_dsync;
      host.faults.writeback = 0.05;
      host.faults.eagain = 0.02;
      host.faults.short_io = 0.05;
      // The cut after this many completed operations (some rounds at once).
      const uint64_t cut_after = rng() % 400;
      // How much of the page cache survives: none, all, or a random part.
      const int mode = static_cast<int>(rng() % 3);
      const double keep = mode == 0 ? 0.0 : mode == 1 ? 1.0 : 0.5;
      std::shared_ptr<Disk> disk;
      {
        ScopedHostIoFactory f(host.factory());
        disk = registry_.create("file:" + path_ +
                                ",size=" + std::to_string(kSectors * kSector) +
                                ",direct=off,queue_mode=mq,hw_queues=2,max_sectors=8");
      }
      std::atomic<uint64_t> done{0};
      std::atomic<bool> cut{false};
      std::vector<std::byte> left;
      std::vector<std::thread> clients;
      for (unsigned i = 0; i < kThreads; ++i) {
        const uint64_t tseed = rng();
        clients.emplace_back([&, i, tseed] { client(disk, model, i, tseed, done, cut); });
      }
      while (done.load() < cut_after && !cut.load()) std::this_thread::yield();
      left = host.crash(keep);
      cut.store(true);
      for (auto& c : clients) c.join();
      registry_.remove(disk->name());
      disk.reset();
      ++t.rounds;
      const std::string bad = model.check(left.data(), /*acked_is_floor=*/false);
      if (!bad.empty()) {
        ++t.failed_rounds;
        if (t.first_failure.empty())
          t.first_failure = "round " + std::to_string(r) + " (cut after " +
                            std::to_string(cut_after) + " ops, keep " +
                            std::to_string(keep) + "):\n" + bad;
      }
      model.restart_from(left.data());
      image = std::move(left);
    }
    t.writes = model.writes();
    t.flushes = model.flushes();
    return t;
  }

  // Writes (a fifth of them FUA) and flushes on the thread's own sectors
  // until the cut (then every operation fails).
  static void client(const std::shared_ptr<Disk>& disk, DurabilityModel& model,
                     unsigned index, uint64_t seed, std::atomic<uint64_t>& done,
                     std::atomic<bool>& cut) {
    BlockHandle h(disk);
    std::mt19937_64 rng(seed);
    std::vector<std::byte> buf(kMaxWriteSectors * kSector);
    const uint64_t base = index * kSectorsPerThread;
    while (!cut.load()) {
      const unsigned what = rng() % 10;
      if (what == 0) {
        const size_t covers = model.begin_flush();
        if (h.flush() == Status::kOk) model.flush_acked(covers);
      } else {
        const uint64_t n = 1 + rng() % kMaxWriteSectors;
        const uint64_t first = base + rng() % (kSectorsPerThread - n + 1);
        const uint64_t id = model.begin_write(first, n);
        for (uint64_t s = 0; s < n; ++s)
          durability::stamp(&buf[s * kSector], first + s, id);
        const bool fua = what <= 2;
        const Status st = h.pwrite(buf.data(), n * kSector, first * kSector,
                                   fua ? BioFlag::kFua : BioFlag::kNone);
        if (st == Status::kOk) model.write_acked(first, n, id, fua);
      }
      done.fetch_add(1);
    }
  }

  DiskRegistry registry_;
};

TEST_F(DurabilityCrash, EveryWriteAcknowledgedAsDurableSurvivesTheCut) {
  const uint64_t points =
      env_or("BLKSTACK_CRASH_POINTS", durability::kSanitized ? 20 : 150);
  const uint64_t seed = env_or("BLKSTACK_SEED", std::random_device{}());
  const auto start = std::chrono::steady_clock::now();
  const Totals t = run(points, seed, {});
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "durability.crash: %llu crash points, %llu writes, %llu flushes, %.1f s, seed "
      "%llu\n",
      static_cast<unsigned long long>(t.rounds),
      static_cast<unsigned long long>(t.writes),
      static_cast<unsigned long long>(t.flushes), secs,
      static_cast<unsigned long long>(seed));
  EXPECT_EQ(t.failed_rounds, 0u) << "seed " << seed << ": " << t.first_failure;
  EXPECT_GT(t.flushes, 0u);
}

// The mutation: a flush that returns before its fdatasync is done. The
// same workload and check must catch it.
TEST_F(DurabilityCrash, AFlushAnsweredBeforeFdatasyncIsCaught) {
  const uint64_t seed = env_or("BLKSTACK_SEED", std::random_device{}());
  const Totals t = run(40, seed, {.early_fdatasync = true});
  EXPECT_GT(t.failed_rounds, 0u)
      << "seed " << seed << ": no crash point lost a flushed write";
}

// The mutation: FUA writes that do not reach the durable image.
TEST_F(DurabilityCrash, AFuaWriteWithoutDsyncIsCaught) {
  const uint64_t seed = env_or("BLKSTACK_SEED", std::random_device{}());
  const Totals t = run(kMutationRounds, seed, {.ignore_dsync = true});
  std::printf("RWF_DSYNC ignored: %llu of %llu crash points lost a FUA write\n",
              static_cast<unsigned long long>(t.failed_rounds),
              static_cast<unsigned long long>(t.rounds));
  EXPECT_GT(t.failed_rounds, 0u)
      << "seed " << seed << ": no crash point lost a FUA write";
}

// The double bites without a mutation too: a plain write, neither FUA nor
// flushed, is gone after a cut that keeps nothing of the page cache.
TEST_F(DurabilityCrash, AWriteNotCoveredByAFlushIsLostToACut) {
  CrashHost host(std::vector<std::byte>(kSectors * kSector), 1);
  std::shared_ptr<Disk> disk;
  {
    ScopedHostIoFactory f(host.factory());
    disk = registry_.create("file:" + path_ + ",size=512K,direct=off");
  }
  BlockHandle h(disk);
  std::vector<std::byte> a(kSector), b(kSector);
  durability::stamp(a.data(), 0, 1);
  durability::stamp(b.data(), 1, 2);
  ASSERT_EQ(h.pwrite(a.data(), kSector, 0), Status::kOk);
  ASSERT_EQ(h.pwrite(b.data(), kSector, kSector, BioFlag::kFua), Status::kOk);
  const std::vector<std::byte> left = host.crash(0.0);
  EXPECT_EQ(durability::stamp_id(&left[0], 0), 0u) << "the plain write survived";
  EXPECT_EQ(durability::stamp_id(&left[kSector], 1), 2u) << "the FUA write was lost";
  registry_.remove(disk->name());
}

// queue/write_cache set to "write through" on a device with a volatile
// cache: flushes and FUA complete at once, as the kernel does, and promise
// nothing across a host crash (the one who set it vouches for the cache).
TEST_F(DurabilityCrash, WriteThroughOnAVolatileCacheMakesFlushesNoOps) {
  CrashHost host(std::vector<std::byte>(kSectors * kSector), 1);
  std::shared_ptr<Disk> disk;
  {
    ScopedHostIoFactory f(host.factory());
    disk = registry_.create("file:" + path_ + ",size=512K,direct=off");
  }
  ASSERT_TRUE(disk->write_cache());
  disk->set_write_cache(false);
  BlockHandle h(disk);
  std::vector<std::byte> a(kSector);
  durability::stamp(a.data(), 0, 1);
  ASSERT_EQ(h.pwrite(a.data(), kSector, 0, BioFlag::kFua), Status::kOk);
  ASSERT_EQ(h.flush(), Status::kOk);
  EXPECT_EQ(host.fdatasyncs(), 0u);
  const std::vector<std::byte> left = host.crash(0.0);
  EXPECT_EQ(durability::stamp_id(&left[0], 0), 0u);
  registry_.remove(disk->name());
}

// Which drivers have a volatile write cache: file always, null when asked
// (wc=1, FUA with fua=1), ram never (and it cannot be switched on).
TEST_F(DurabilityCrash, WhichDriversHaveAWriteCache) {
  auto ram = registry_.create("ram:1M");
  EXPECT_FALSE(ram->write_cache());
  EXPECT_ANY_THROW(ram->set_write_cache(true));
  auto null = registry_.create("null:1M");
  EXPECT_FALSE(null->write_cache());
  auto null_wc = registry_.create("null:1M,wc=1,fua=1");
  EXPECT_TRUE(null_wc->write_cache());
  EXPECT_TRUE(null_wc->limits().fua);
  auto file = registry_.create("file:" + path_ + ",size=1M");
  EXPECT_TRUE(file->write_cache());
  EXPECT_TRUE(file->limits().fua);
  for (const char* kind : {"rotational", "flash"}) {
    auto model = registry_.create(std::string("model:16M,kind=") + kind);
    EXPECT_FALSE(model->write_cache()) << kind << ": the model writes through";
  }
}

// A stacked passthrough disk has its lower device's cache: flush and FUA
// through it reach the file's fdatasync and RWF_DSYNC.
TEST_F(DurabilityCrash, PassthroughPassesFlushAndFuaToTheFile) {
  CrashHost host(std::vector<std::byte>(kSectors * kSector), 1);
  std::shared_ptr<Disk> lower;
  {
    ScopedHostIoFactory f(host.factory());
    lower = registry_.create("file:" + path_ + ",size=512K,direct=off,name=low");
  }
  auto upper = registry_.create("passthrough:lower=low,offset=64K");
  EXPECT_TRUE(upper->write_cache());
  BlockHandle h(upper);
  std::vector<std::byte> a(kSector), b(kSector), c(kSector);
  durability::stamp(a.data(), 128, 1);
  durability::stamp(b.data(), 129, 2);
  durability::stamp(c.data(), 130, 3);
  ASSERT_EQ(h.pwrite(a.data(), kSector, 0), Status::kOk);  // lower sector 128
  ASSERT_EQ(h.flush(), Status::kOk);
  ASSERT_EQ(h.pwrite(b.data(), kSector, kSector, BioFlag::kFua), Status::kOk);
  ASSERT_EQ(h.pwrite(c.data(), kSector, 2 * kSector), Status::kOk);
  const std::vector<std::byte> left = host.crash(0.0);
  EXPECT_EQ(durability::stamp_id(&left[128 * kSector], 128), 1u);
  EXPECT_EQ(durability::stamp_id(&left[129 * kSector], 129), 2u);
  EXPECT_EQ(durability::stamp_id(&left[130 * kSector], 130), 0u);
  registry_.remove("passthrough0");
  registry_.remove("low");
}

}  // namespace
}  // namespace blkstack
