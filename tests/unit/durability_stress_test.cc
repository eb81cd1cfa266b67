// A randomized stress of the whole request path against a reference
// model: a file disk in mq mode over a CrashHost (crash_host.h) that never
// crashes but misbehaves: transient EAGAIN (retried), short transfers
// (resumed), EIO on writes, a full ring (kResource: the request is
// requeued) and stalls past the 1 ms request timeout (the timer fires and
// is reset; a retry after it ends the request with kTimeout). max_sectors=8
// splits most bios. Eight threads keep eight bios each in flight (reads,
// writes, FUA writes, flushes, discards, write-zeroes) on their own
// sectors; every completion is checked exactly once, every successful
// read against the model, and every failure must be one a fault explains.
// A failed write or zeroing leaves each sector of it old or new (a short
// transfer stops on a sector boundary), which the model keeps as a set of
// possible contents until a read or a later write settles it.
//
// BLKSTACK_STRESS_OPS sets the number of operations (default 10^6, 10^5
// under a sanitizer; the slow run, durability.stress_long, asks for 10^8),
// BLKSTACK_SEED the seed; both are printed.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/status.h"
#include "blkstack/submit.h"
#include "crash_host.h"
#include "durability_model.h"
#include "file_test_util.h"

namespace blkstack {
namespace {

using durability::kSector;
using testing_util::CrashHost;

constexpr uint64_t kDefaultOps = durability::kSanitized ? 100'000 : 1'000'000;

constexpr unsigned kThreads = 8;
constexpr unsigned kLanes = 8;          // bios in flight per thread
constexpr uint64_t kLaneSectors = 64;   // each lane's own sectors
constexpr unsigned kMaxIoSectors = 32;  // four requests at max_sectors=8
constexpr uint64_t kSectors = uint64_t{kThreads} * kLanes * kLaneSectors;

uint64_t env_or(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : fallback;
}

// What a sector may hold: the ids of the writes that may be there (0:
// zeroes). One entry once a read or a successful write settled it.
using Possible = std::vector<uint64_t>;

struct Lane;

// One thread's bios: completions come back on any thread and are handed
// to the owner through `done`.
struct Worker {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Lane*> done;
};

struct Lane {
  Worker* worker = nullptr;
  uint64_t base = 0;  // first sector
  Bio bio;
  Segment seg;
  std::vector<std::byte> buf = std::vector<std::byte>(kMaxIoSectors * kSector);
  std::atomic<int> in_flight{0};
  std::atomic<int> extra_completions{0};
  // The operation in flight.
  Op op = Op::kRead;
  bool fua = false;
  uint64_t first = 0, n = 0, id = 0;
  std::vector<Possible> model = std::vector<Possible>(kLaneSectors, Possible{0});
};

void lane_done(Bio& bio) {
  Lane* l = static_cast<Lane*>(bio.context());
  if (l->in_flight.exchange(0) != 1) l->extra_completions.fetch_add(1);
  std::lock_guard g(l->worker->mu);
  l->worker->done.push_back(l);
  l->worker->cv.notify_one();
}

struct Counts {
  std::atomic<uint64_t> ops{0}, reads{0}, writes{0}, fua{0}, flushes{0}, discards{0},
      zeroes{0}, failed{0}, timeouts{0};
  std::mutex mu;
  std::string first_problem;
  void problem(const std::string& p) {
    std::lock_guard g(mu);
    if (first_problem.empty()) first_problem = p;
  }
};

class DurabilityStress : public ScratchDirTest {
 protected:
  DiskRegistry registry_;
};

// Checks the completed operation of `l` against its model and updates it.
void settle(Lane& l, Counts& c) {
  const Status st = l.bio.status();
  const bool okay = st == Status::kOk;
  if (!okay) {
    c.failed.fetch_add(1);
    if (st == Status::kTimeout) c.timeouts.fetch_add(1);
    // The faults explain only these: EIO from the host, and a request
    // retried after its timeout. A flush sees neither (no EIO is injected
    // on fdatasync) unless a write's retry ran out... so it too may fail
    // with kTimeout.
    if (st != Status::kIoError && st != Status::kTimeout)
      c.problem("unexpected status " + std::string(status_name(st)) + " for op " +
                std::to_string(static_cast<int>(l.op)));
  }
  switch (l.op) {
    case Op::kRead:
      if (!okay) return;
      for (uint64_t i = 0; i < l.n; ++i) {
        const uint64_t s = l.first + i;
        const auto id = durability::stamp_id(&l.buf[i * kSector], l.base + s);
        Possible& p = l.model[s];
        if (!id || std::find(p.begin(), p.end(), *id) == p.end()) {
          std::string want;
          for (uint64_t x : p) want += std::to_string(x) + " ";
          c.problem("sector " + std::to_string(l.base + s) + " read " +
                    (id ? "write " + std::to_string(*id) : std::string("torn data")) +
                    ", the model allows: " + want);
          return;
        }
        p = Possible{*id};
      }
      return;
    case Op::kWrite:
    case Op::kDiscard:
    case Op::kWriteZeroes: {
      const uint64_t id = l.op == Op::kWrite ? l.id : 0;
      for (uint64_t i = 0; i < l.n; ++i) {
        Possible& p = l.model[l.first + i];
        if (okay)
          p = Possible{id};
        else if (std::find(p.begin(), p.end(), id) == p.end())
          p.push_back(id);
      }
      return;
    }
    case Op::kFlush:
      return;
  }
}

// Prepares and submits the next operation on `l`.
void issue(Lane& l, Disk* disk, std::mt19937_64& rng, uint64_t& next_id, Counts& c) {
  const unsigned what = rng() % 100;
  l.n = 1 + rng() % kMaxIoSectors;
  if (l.n > kLaneSectors) l.n = kLaneSectors;
  l.first = rng() % (kLaneSectors - l.n + 1);
  l.fua = false;
  const uint64_t sector = l.base + l.first;
  l.in_flight.store(1);
  if (what < 35) {
    l.op = Op::kRead;
    l.seg = Segment(l.buf.data(), static_cast<uint32_t>(l.n * kSector));
    l.bio.init(disk, Op::kRead, sector, {&l.seg, 1}, lane_done, &l);
    c.reads.fetch_add(1);
  } else if (what < 80) {
    l.op = Op::kWrite;
    l.id = ++next_id;
    for (uint64_t i = 0; i < l.n; ++i)
      durability::stamp(&l.buf[i * kSector], sector + i, l.id);
    l.seg = Segment(l.buf.data(), static_cast<uint32_t>(l.n * kSector));
    l.bio.init(disk, Op::kWrite, sector, {&l.seg, 1}, lane_done, &l);
    l.fua = what < 50;
    if (l.fua) l.bio.set_flags(BioFlag::kFua);
    c.writes.fetch_add(1);
    if (l.fua) c.fua.fetch_add(1);
  } else if (what < 88) {
    l.op = Op::kFlush;
    l.n = 0;
    l.bio.init_nodata(disk, Op::kFlush, 0, 0, lane_done, &l);
    l.bio.set_flags(BioFlag::kPreflush);
    c.flushes.fetch_add(1);
  } else if (what < 94) {
    // Discards and zeroing in whole 4 KiB blocks (the discard granularity).
    const bool can_discard = disk->limits().max_discard_sectors != 0;
    l.op = what < 91 && can_discard ? Op::kDiscard : Op::kWriteZeroes;
    l.first &= ~uint64_t{7};
    l.n = std::max<uint64_t>(8, l.n & ~uint64_t{7});
    if (l.first + l.n > kLaneSectors) l.n = kLaneSectors - l.first;
    l.bio.init_nodata(disk, l.op, l.base + l.first, static_cast<uint32_t>(l.n * kSector),
                      lane_done, &l);
    (l.op == Op::kDiscard ? c.discards : c.zeroes).fetch_add(1);
  } else {
    l.op = Op::kRead;  // a read of one sector, to settle it often
    l.n = 1;
    l.seg = Segment(l.buf.data(), kSector);
    l.bio.init(disk, Op::kRead, sector, {&l.seg, 1}, lane_done, &l);
    c.reads.fetch_add(1);
  }
  submit_bio(l.bio);
}

void run_thread(Disk* disk, unsigned index, uint64_t seed, uint64_t ops, Counts& c) {
  Worker w;
  std::mt19937_64 rng(seed);
  std::vector<std::unique_ptr<Lane>> lanes;
  uint64_t next_id = uint64_t{index} << 48;  // ids unique across threads
  for (unsigned i = 0; i < kLanes; ++i) {
    lanes.push_back(std::make_unique<Lane>());
    lanes.back()->worker = &w;
    lanes.back()->base = (uint64_t{index} * kLanes + i) * kLaneSectors;
  }
  uint64_t issued = 0, completed = 0;
  for (auto& l : lanes) {
    issue(*l, disk, rng, next_id, c);
    ++issued;
  }
  while (completed < issued) {
    Lane* l;
    {
      std::unique_lock g(w.mu);
      w.cv.wait(g, [&] { return !w.done.empty(); });
      l = w.done.front();
      w.done.pop_front();
    }
    ++completed;
    c.ops.fetch_add(1);
    settle(*l, c);
    if (issued < ops) {
      issue(*l, disk, rng, next_id, c);
      ++issued;
    }
  }
  // A bio that completed twice would show up here, or as a lane in the
  // queue twice (completed > issued would end the loop early).
  for (auto& l : lanes)
    if (l->extra_completions.load() != 0 || l->in_flight.load() != 0)
      c.problem("a bio completed more than once, or never");
}

TEST_F(DurabilityStress, MixedOperationsWithFaultsAgainstAModel) {
  const uint64_t total = env_or("BLKSTACK_STRESS_OPS", kDefaultOps);
  const uint64_t seed = env_or("BLKSTACK_SEED", std::random_device{}());
  std::mt19937_64 rng(seed);
  CrashHost host(std::vector<std::byte>(kSectors * kSector), rng());
  host.faults.eagain = 0.01;
  host.faults.short_io = 0.02;
  host.faults.write_eio = 0.002;
  host.faults.ring_full = 0.01;
  host.faults.stall = 0.001;  // of the tenth left to the queue threads
  host.inline_share = 0.9;
  std::shared_ptr<Disk> disk;
  {
    ScopedHostIoFactory f(host.factory());
    disk =
        registry_.create("file:" + path_ + ",size=" + std::to_string(kSectors * kSector) +
                         ",direct=off,queue_mode=mq,hw_queues=2,depth=16,max_sectors=8,"
                         "timeout=1ms");
  }
  Counts c;
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < kThreads; ++i) {
    const uint64_t s = rng();
    threads.emplace_back(
        [&, i, s] { run_thread(disk.get(), i, s, total / kThreads, c); });
  }
  for (auto& t : threads) t.join();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "durability.stress: %llu operations (%llu reads, %llu writes of which %llu FUA, "
      "%llu flushes, %llu discards, %llu write-zeroes; %llu failed by injected faults, "
      "%llu of them timed out) "
      "in %.1f s, seed %llu\n",
      static_cast<unsigned long long>(c.ops.load()),
      static_cast<unsigned long long>(c.reads.load()),
      static_cast<unsigned long long>(c.writes.load()),
      static_cast<unsigned long long>(c.fua.load()),
      static_cast<unsigned long long>(c.flushes.load()),
      static_cast<unsigned long long>(c.discards.load()),
      static_cast<unsigned long long>(c.zeroes.load()),
      static_cast<unsigned long long>(c.failed.load()),
      static_cast<unsigned long long>(c.timeouts.load()), secs,
      static_cast<unsigned long long>(seed));
  EXPECT_EQ(c.first_problem, "") << "seed " << seed;
  EXPECT_EQ(c.ops.load(), total / kThreads * kThreads);
  registry_.remove(disk->name());
}

}  // namespace
}  // namespace blkstack
