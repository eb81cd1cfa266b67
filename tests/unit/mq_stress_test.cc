// Stress of the multi-queue path against a reference model:
//  - eight threads send a random mix of reads, writes, flushes, discards and
//    write-zeroes, plugged or not, to a RAM disk in mq mode with merges on;
//    every bio completes exactly once, reads see what the model says, and
//    (through a checking driver in front of the same RAM store) no request
//    exceeds a limit, also while the driver refuses requests now and then;
//  - a queue of depth 1 with eight submitters never loses a wake-up.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/queue.h"
#include "blkstack/plug.h"
#include "mq_test_util.h"
#include "queue/tag_set.h"

namespace blkstack {
namespace {

using namespace mq_testing;

// In front of another request driver (the RAM disk's): checks every request
// against the limits, and refuses some with kResource, or kDeviceResource
// (then starts the hardware queue again shortly after, from another thread,
// as a driver whose device got room would).
class CheckingDriver final : public RequestDriver {
 public:
  CheckingDriver(RequestDriver& inner, const QueueLimits& lim, bool refuse)
      : inner_(inner),
        lim_(lim),
        refuse_(refuse),
        restarter_([this] { restart_loop(); }) {}
  ~CheckingDriver() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    restarter_.join();
  }

  Status queue_rq(HwQueue& hctx, Request& rq, bool last) override {
    std::string bad = CheckRequest(rq, lim_);
    if (!bad.empty()) {
      std::lock_guard lock(mu_);
      violations_.push_back(bad);
    }
    ++requests_;
    if (refuse_) {
      thread_local std::minstd_rand rng(
          std::hash<std::thread::id>()(std::this_thread::get_id()));
      const unsigned x = rng() % 64;
      if (x == 0) {
        ++refusals_;
        return Status::kResource;
      }
      if (x == 1) {
        ++refusals_;
        {
          std::lock_guard lock(mu_);
          to_start_.push_back(&hctx);
        }
        cv_.notify_one();
        return Status::kDeviceResource;
      }
    }
    return inner_.queue_rq(hctx, rq, last);
  }

  std::vector<std::string> violations() const {
    std::lock_guard lock(mu_);
    return violations_;
  }
  uint64_t requests() const { return requests_.load(); }
  uint64_t refusals() const { return refusals_.load(); }

 private:
  void restart_loop() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !to_start_.empty(); });
      if (stop_) return;
      HwQueue* h = to_start_.front();
      to_start_.pop_front();
      lock.unlock();
      std::this_thread::sleep_for(20us);
      h->start();
      lock.lock();
    }
  }

  RequestDriver& inner_;
  const QueueLimits lim_;
  const bool refuse_;
  std::atomic<uint64_t> requests_{0}, refusals_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<HwQueue*> to_start_;
  std::vector<std::string> violations_;
  bool stop_ = false;
  std::thread restarter_;
};

struct ModelRun {
  Disk* disk;
  int threads = 8;
  std::chrono::milliseconds budget = 3s;
  int max_rounds = 400;
};

struct ModelResult {
  int bad = 0;
  uint64_t bios = 0;
  std::vector<std::string> notes;
};

// Each thread owns a window of the disk and keeps a model of it. A round is
// a batch of non-overlapping bios (their order within the batch is not
// defined) sent at once, plugged or not; reads are checked against the
// model as it was before the batch, then the batch's writes, discards and
// write-zeroes are applied to the model. At the end each thread reads its
// whole window back.
ModelResult RunModel(const ModelRun& run) {
  constexpr uint64_t kWindowSectors = 2048;  // 1 MiB
  const uint64_t stride = run.disk->capacity() / uint64_t(run.threads);
  const uint32_t lbs_sectors = run.disk->limits().logical_block_size >> kSectorShift;
  ModelResult result;
  std::mutex result_mu;
  std::atomic<uint64_t> bios{0};
  const auto end = Clock::now() + run.budget;
  std::vector<std::thread> threads;
  for (int t = 0; t < run.threads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1000 + t);
      const uint64_t base = uint64_t(t) * stride;
      std::vector<std::byte> model(kWindowSectors << kSectorShift);
      int bad = 0;
      std::string note;
      auto fail = [&](const std::string& what) {
        if (bad++ == 0) note = what;
      };
      for (int round = 0; round < run.max_rounds && Clock::now() < end; ++round) {
        struct Item {
          Op op;
          uint64_t at;  // sector within the window
          uint32_t len;
        };
        std::vector<Item> items;
        uint64_t at = (rng() % (kWindowSectors / 2)) / lbs_sectors * lbs_sectors;
        const int n = 1 + int(rng() % 40);
        for (int i = 0; i < n; ++i) {
          // Mostly small, sometimes larger than max_sectors (then split).
          uint32_t len = rng() % 8 == 0 ? 1 + rng() % 160 : 1 + rng() % 24;
          len = (len + lbs_sectors - 1) / lbs_sectors * lbs_sectors;
          if (at + len > kWindowSectors) break;
          const unsigned k = rng() % 20;
          const Op op = k < 9    ? Op::kWrite
                        : k < 15 ? Op::kRead
                        : k < 17 ? Op::kDiscard
                        : k < 18 ? Op::kWriteZeroes
                                 : Op::kFlush;
          items.push_back({op, at, len});
          if (op != Op::kFlush) at += len;
          if (rng() % 4 == 0) at += (rng() % 8) * lbs_sectors;  // a gap now and then
        }
        // Neighbours in both orders: some runs reversed.
        for (size_t i = 0; i + 1 < items.size(); ++i)
          if (rng() % 4 == 0) std::swap(items[i], items[i + 1]);
        TestBios batch;
        {
          std::unique_ptr<Plug> plug;
          if (rng() % 2) plug = std::make_unique<Plug>();
          for (const Item& it : items) {
            TestBio& b = AddBio(batch);
            const uint64_t sector = base + it.at;
            if (it.op == Op::kFlush) {
              b.init_range(*run.disk, Op::kFlush, 0, 0);
            } else if (op_has_data(it.op)) {
              b.init_data(*run.disk, it.op, sector, it.len, 0, 1 + rng() % 4);
              if (it.op == Op::kWrite) {
                const auto data = Pattern(b.buf.size(), rng());
                std::copy(data.begin(), data.end(), b.buf.begin());
              }
            } else {
              b.init_range(*run.disk, it.op, sector, it.len);
            }
            b.submit();
          }
        }
        MustHappen([&] { return AllDone(batch); }, "a batch of the model test completes");
        bios += batch.size();
        for (size_t i = 0; i < items.size(); ++i) {
          const TestBio& b = *batch[i];
          const Item& it = items[i];
          if (b.calls.load() != 1) fail("a bio completed more than once");
          if (b.status.load() != Status::kOk) {
            fail(std::string(op_name(it.op)) +
                 " failed: " + std::string(status_name(b.status.load())));
            continue;
          }
          if (it.op == Op::kRead &&
              !std::equal(b.buf.begin(), b.buf.end(),
                          model.begin() + long(it.at << kSectorShift))) {
            fail("read at window sector " + std::to_string(it.at) +
                 " differs from the model");
          }
        }
        for (size_t i = 0; i < items.size(); ++i) {
          const Item& it = items[i];
          auto dst = model.begin() + long(it.at << kSectorShift);
          if (it.op == Op::kWrite)
            std::copy(batch[i]->buf.begin(), batch[i]->buf.end(), dst);
          if (it.op == Op::kDiscard || it.op == Op::kWriteZeroes)
            std::fill(dst, dst + long(uint64_t{it.len} << kSectorShift), std::byte{0});
        }
      }
      // The whole window, in one bio of many segments.
      TestBio all;
      all.init_data(*run.disk, Op::kRead, base, kWindowSectors, 0, 64);
      all.submit();
      MustHappen([&] { return all.done(); }, "the final read completes");
      if (all.status.load() != Status::kOk || all.buf != model)
        fail("the window differs from the model at the end");
      std::lock_guard lock(result_mu);
      result.bad += bad;
      if (!note.empty())
        result.notes.push_back("thread " + std::to_string(t) + ": " + note);
    });
  }
  for (auto& t : threads) t.join();
  result.bios = bios.load();
  return result;
}

TEST(MqStress, RandomMixFromEightThreadsMatchesTheModel) {
  DiskRegistry r;
  auto disk = r.create("ram:64M,queue_mode=mq,hw_queues=4,depth=8,max_sectors=64");
  const ModelResult res = RunModel({disk.get()});
  EXPECT_EQ(res.bad, 0) << (res.notes.empty() ? "" : res.notes.front());
  EXPECT_GT(res.bios, 10000u);
  const DiskStats st = disk->stats();
  EXPECT_GT(st.merges[kStatWrite] + st.merges[kStatRead], 0u) << "merging was exercised";
  EXPECT_EQ(disk->in_flight(), 0u);
  EXPECT_EQ(static_cast<Queue&>(disk->driver()).tag_set().tag_space(0).alloc.in_use(),
            0u);
}

TEST(MqStress, RandomMixRespectsTheLimitsWhileTheDriverRefusesRequests) {
  // The RAM disk's own request driver, reused behind a checking one with
  // tighter limits, more hardware queues and small shared tags.
  DiskRegistry r;
  auto ram = r.create("ram:64M,queue_mode=mq");
  RequestDriver& ram_driver = static_cast<Queue&>(ram->driver()).driver();
  for (bool shared : {false, true}) {
    SCOPED_TRACE(shared ? "shared tags" : "tags per hardware queue");
    // The model starts from zeroes: so must the store the rounds share.
    ASSERT_EQ(BlockHandle(ram).write_zeroes(0, ram->size_bytes()), Status::kOk);
    QueueLimits lim = ram->limits();
    lim.max_sectors = 48;
    lim.max_segments = 6;
    lim.max_segment_size = 8192;
    TagSetConfig cfg;
    cfg.nr_hw_queues = 3;
    cfg.queue_depth = 4;
    cfg.shared_tags = shared;
    auto checker = std::make_unique<CheckingDriver>(ram_driver, lim, /*refuse=*/true);
    CheckingDriver* chk = checker.get();
    auto disk = std::make_shared<Disk>("checked", ram->capacity(), lim,
                                       std::make_unique<Queue>(cfg, std::move(checker)));
    const ModelResult res = RunModel({disk.get(), 8, 2s});
    EXPECT_EQ(res.bad, 0) << (res.notes.empty() ? "" : res.notes.front());
    const auto bad = chk->violations();
    EXPECT_TRUE(bad.empty()) << bad.size() << " requests broke a limit, e.g. "
                             << bad.front();
    EXPECT_GT(chk->refusals(), 10u) << "refusals were exercised";
    EXPECT_GT(disk->stats().merges[kStatWrite], 0u);
    EXPECT_EQ(disk->in_flight(), 0u);
  }
}

// Eight threads, each keeping several bios in flight on a queue with one
// tag: every completion must hand the tag on; a lost wake-up leaves a bio
// waiting forever (and the test aborts when its deadline passes).
void DepthOneEightSubmitters(Disk& disk, int per_thread) {
  constexpr int kThreads = 8, kInFlight = 4;
  std::atomic<uint64_t> completed{0};
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::unique_ptr<TestBio>> ring(kInFlight);
      for (auto& b : ring) b = std::make_unique<TestBio>();
      for (int n = 0; n < per_thread; ++n) {
        TestBio& b = *ring[n % kInFlight];
        if (n >= kInFlight) {
          MustHappen([&] { return b.done(); }, "a bio waiting for the only tag gets it");
          if (b.calls.load() != 1 || b.status.load() != Status::kOk) ++bad;
          ++completed;
          b.calls = 0;
        }
        // Scattered, so that few merge and most need the tag.
        const uint64_t sector =
            (uint64_t(t) * 4096 + uint64_t(n % 512) * 8) % (disk.capacity() - 8);
        b.init_data(disk, n % 3 ? Op::kRead : Op::kWrite, sector / 8 * 8, 8, uint8_t(n));
        b.submit();
      }
      for (auto& b : ring) {
        MustHappen([&] { return b->done(); }, "the last bios complete");
        if (b->calls.load() != 1 || b->status.load() != Status::kOk) ++bad;
        ++completed;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(completed.load(), uint64_t(kThreads) * uint64_t(per_thread));
  EXPECT_EQ(disk.in_flight(), 0u);
}

TEST(MqStress, DepthOneWithEightSubmittersNeverLosesAWakeup) {
  DiskRegistry r;
  {
    SCOPED_TRACE("ram, inline completion");
    auto d = r.create("ram:16M,queue_mode=mq,depth=1,name=r1");
    DepthOneEightSubmitters(*d, 20000);
  }
  {
    SCOPED_TRACE("null, completion thread");
    auto d = r.create("null:16M,queue_mode=mq,depth=1,completion=deferred,name=n1");
    DepthOneEightSubmitters(*d, 5000);
  }
  {
    SCOPED_TRACE("null, completion thread, shared tag over two hardware queues");
    auto d = r.create(
        "null:16M,queue_mode=mq,depth=1,hw_queues=2,shared_tags=1,"
        "completion=deferred,name=n2");
    DepthOneEightSubmitters(*d, 5000);
  }
  {
    SCOPED_TRACE("random completion order and kResource refusals");
    TagSetConfig cfg;
    cfg.queue_depth = 1;
    MqDisk d = MakeMqDisk(cfg, TestLimits(), TestDriver::Mode::kThread, 32768);
    d.driver->set_max_delay(5us);
    std::atomic<unsigned> n{0};
    d.driver->set_hook([&](HwQueue&, Request&, bool) {
      return n.fetch_add(1) % 32 == 0 ? Status::kResource : Status::kOk;
    });
    DepthOneEightSubmitters(*d.disk, 1500);
    EXPECT_LE(d.driver->max_held(), 1u);
  }
}

}  // namespace
}  // namespace blkstack
