// The flush machinery of the multi-queue path (blk-flush): empty flushes,
// PREFLUSH before the data, FUA done natively or emulated with a flush after
// the data, coalescing of concurrent flushes, errors, and the ordering rule
// under concurrency: a flush completes only after every write that had
// completed before it was submitted is durable, and an emulated FUA write
// completes only once it is durable.
//
// The test driver keeps a volatile store and a durable copy: a flush makes
// durable what the store held when the driver received it.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/disk.h"
#include "blkstack/driver/queue.h"
#include "mq_test_util.h"

namespace blkstack {
namespace {

using namespace mq_testing;

QueueLimits CacheLimits(bool native_fua) {
  QueueLimits lim = TestLimits();
  lim.volatile_write_cache = true;
  lim.fua = native_fua;
  return lim;
}

bool AllBytes(const std::vector<std::byte>& v, uint8_t x) {
  for (std::byte b : v)
    if (b != std::byte{x}) return false;
  return true;
}

TEST(MqFlush, AnEmptyFlushReachesTheDriverOnlyWithAVolatileCache) {
  {
    MqDisk d = MakeMqDisk();  // no volatile cache: nothing to flush
    TestBio f;
    f.init_range(*d.disk, Op::kFlush, 0, 0);
    f.submit();
    ASSERT_TRUE(f.done());
    EXPECT_EQ(f.status.load(), Status::kOk);
    EXPECT_EQ(d.driver->nr_calls(), 0u);
  }
  MqDisk d = MakeMqDisk({}, CacheLimits(false));
  TestBio f;
  f.init_range(*d.disk, Op::kFlush, 0, 0);
  f.submit();
  ASSERT_EQ(d.driver->nr_calls(Op::kFlush), 1u);
  EXPECT_FALSE(f.done());
  d.driver->drain();
  EXPECT_EQ(f.calls.load(), 1);
  EXPECT_EQ(f.status.load(), Status::kOk);
  EXPECT_EQ(d.driver->nr_calls(), 1u);
  EXPECT_EQ(d.disk->stats().ios[kStatFlush], 1u);
  EXPECT_EQ(d.tags_in_use(), 0u);
  EXPECT_TRUE(d.driver->violations().empty());
}

TEST(MqFlush, PreflushWriteFlushesBeforeTheData) {
  MqDisk d = MakeMqDisk({}, CacheLimits(false));
  // An earlier write, completed: the PREFLUSH must make it durable.
  TestBio w;
  w.init_data(*d.disk, Op::kWrite, 0, 8, 0x11);
  w.submit();
  d.driver->drain();
  ASSERT_TRUE(w.done());

  TestBio p;
  p.init_data(*d.disk, Op::kWrite, 8, 8, 0x22);
  p.bio.set_flags(BioFlag::kPreflush);
  TestDriver* drv = d.driver;
  bool earlier_durable = false;
  p.on_done = [&](TestBio&) {
    earlier_durable = AllBytes(drv->read_durable(0, 4096), 0x11);
  };
  p.submit();
  auto calls = d.driver->calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].op, Op::kFlush) << "the flush goes first, alone";
  d.driver->complete_next();
  calls = d.driver->calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[2].op, Op::kWrite) << "then the data";
  EXPECT_EQ(calls[2].pos, 8u);
  EXPECT_FALSE(any(calls[2].flags & BioFlag::kPreflush))
      << "the driver never sees PREFLUSH";
  EXPECT_FALSE(p.done());
  d.driver->complete_next();
  ASSERT_TRUE(p.done());
  EXPECT_EQ(p.calls.load(), 1);
  EXPECT_EQ(p.status.load(), Status::kOk);
  EXPECT_TRUE(earlier_durable);
  EXPECT_EQ(d.driver->nr_calls(), 3u) << "no flush after the data: it is not FUA";
  EXPECT_TRUE(d.driver->violations().empty());
}

TEST(MqFlush, EmulatedFuaIsDurableOnlyAfterTheFlushThatFollowsIt) {
  MqDisk d = MakeMqDisk({}, CacheLimits(/*native_fua=*/false));
  TestBio f;
  f.init_data(*d.disk, Op::kWrite, 16, 8, 0x5f);
  f.bio.set_flags(BioFlag::kFua);
  TestDriver* drv = d.driver;
  bool durable_at_completion = false;
  f.on_done = [&](TestBio&) {
    durable_at_completion = AllBytes(drv->read_durable(16 * 512, 4096), 0x5f);
  };
  f.submit();
  auto calls = d.driver->calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].op, Op::kWrite);
  EXPECT_FALSE(any(calls[0].flags & BioFlag::kFua))
      << "FUA is emulated: the driver has none";
  d.driver->complete_next();  // the data is in the volatile cache
  EXPECT_FALSE(f.done()) << "not durable yet: the write waits for a flush";
  calls = d.driver->calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].op, Op::kFlush) << "the post-flush";
  d.driver->complete_next();
  ASSERT_TRUE(f.done());
  EXPECT_EQ(f.calls.load(), 1);
  EXPECT_EQ(f.status.load(), Status::kOk);
  EXPECT_TRUE(durable_at_completion);
  const DiskStats st = d.disk->stats();
  EXPECT_EQ(st.ios[kStatWrite], 1u) << "one write I/O for the statistics";
  EXPECT_EQ(st.ios[kStatFlush], 0u)
      << "the internal flush is not a flush I/O of the user";
  EXPECT_TRUE(d.driver->violations().empty());
}

TEST(MqFlush, NativeFuaGoesToTheDriverWithoutAFlush) {
  MqDisk d = MakeMqDisk({}, CacheLimits(/*native_fua=*/true));
  TestBio f;
  f.init_data(*d.disk, Op::kWrite, 16, 8, 0x5f);
  f.bio.set_flags(BioFlag::kFua);
  TestDriver* drv = d.driver;
  bool durable_at_completion = false;
  f.on_done = [&](TestBio&) {
    durable_at_completion = AllBytes(drv->read_durable(16 * 512, 4096), 0x5f);
  };
  f.submit();
  auto calls = d.driver->calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_TRUE(any(calls[0].flags & BioFlag::kFua)) << "the device does FUA itself";
  d.driver->drain();
  EXPECT_EQ(d.driver->nr_calls(), 1u) << "no flush";
  EXPECT_EQ(f.status.load(), Status::kOk);
  EXPECT_TRUE(durable_at_completion);
}

TEST(MqFlush, PreflushWithEmulatedFuaIsFlushWriteFlush) {
  MqDisk d = MakeMqDisk({}, CacheLimits(false));
  TestBio f;
  f.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  f.bio.set_flags(BioFlag::kPreflush | BioFlag::kFua);
  f.submit();
  std::string order;
  while (d.driver->held() > 0) {
    order += std::string(op_name(d.driver->held_at(0)->op())) + " ";
    EXPECT_FALSE(f.done());
    d.driver->complete_next();
  }
  EXPECT_EQ(order, "flush write flush ");
  EXPECT_EQ(f.calls.load(), 1);
  EXPECT_EQ(f.status.load(), Status::kOk);
  EXPECT_TRUE(d.driver->violations().empty());
}

TEST(MqFlush, ConcurrentFlushesCoalesce) {
  MqDisk d = MakeMqDisk({}, CacheLimits(false));
  TestBio first;
  first.init_range(*d.disk, Op::kFlush, 0, 0);
  first.submit();
  ASSERT_EQ(d.driver->nr_calls(Op::kFlush), 1u);
  TestBios more;
  for (int i = 0; i < 10; ++i) {
    AddBio(more).init_range(*d.disk, Op::kFlush, 0, 0);
    more.back()->submit();
  }
  EXPECT_EQ(d.driver->nr_calls(), 1u) << "they wait for the flush in flight to end";
  d.driver->complete_next();
  EXPECT_TRUE(first.done());
  // The flush in flight may have started before writes that completed
  // before these were submitted: they need one more, shared by all ten.
  for (auto& b : more) EXPECT_FALSE(b->done());
  EXPECT_EQ(d.driver->nr_calls(Op::kFlush), 2u);
  d.driver->complete_next();
  ASSERT_TRUE(AllDone(more));
  for (auto& b : more) {
    EXPECT_EQ(b->calls.load(), 1);
    EXPECT_EQ(b->status.load(), Status::kOk);
  }
  EXPECT_EQ(d.driver->nr_calls(), 2u) << "eleven flush bios, two flushes";
  EXPECT_EQ(d.disk->stats().ios[kStatFlush], 11u);
  EXPECT_EQ(d.tags_in_use(), 0u);
}

TEST(MqFlush, AFlushSubmittedDuringAFlushCoversWritesThatCompletedMeanwhile) {
  MqDisk d = MakeMqDisk({}, CacheLimits(false));
  TestDriver* drv = d.driver;
  TestBio w, f1, f2;
  w.init_data(*d.disk, Op::kWrite, 0, 8, 0x77);
  w.submit();
  f1.init_range(*d.disk, Op::kFlush, 0, 0);
  f1.submit();  // received by the driver before w completed
  ASSERT_EQ(d.driver->held(), 2u);
  Request* wr = d.driver->take(0);
  ASSERT_EQ(wr->op(), Op::kWrite);
  d.driver->finish(*wr, Status::kOk);
  ASSERT_TRUE(w.done());
  bool w_durable = false;
  f2.on_done = [&](TestBio&) { w_durable = AllBytes(drv->read_durable(0, 4096), 0x77); };
  f2.init_range(*d.disk, Op::kFlush, 0, 0);
  f2.submit();
  d.driver->complete_next();  // the first flush
  EXPECT_TRUE(f1.done());
  EXPECT_FALSE(f2.done()) << "the first flush did not cover w";
  d.driver->drain();
  ASSERT_TRUE(f2.done());
  EXPECT_TRUE(w_durable) << "f2 completed before w was durable";
}

TEST(MqFlush, FlushErrorsReachEveryWaiter) {
  MqDisk d = MakeMqDisk({}, CacheLimits(false));
  TestBio first, f, fua, pre;
  first.init_range(*d.disk, Op::kFlush, 0, 0);
  first.submit();  // flush #1 in flight
  ASSERT_EQ(d.driver->held(), 1u);
  fua.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  fua.bio.set_flags(BioFlag::kFua);
  fua.submit();
  ASSERT_EQ(d.driver->held(), 2u);
  Request* data = d.driver->take(1);
  d.driver->finish(*data, Status::kOk);  // fua now waits for a post-flush
  f.init_range(*d.disk, Op::kFlush, 0, 0);
  f.submit();
  pre.init_data(*d.disk, Op::kWrite, 8, 8, 2);
  pre.bio.set_flags(BioFlag::kPreflush);
  pre.submit();
  EXPECT_EQ(d.driver->held(), 1u) << "all three wait behind flush #1";
  d.driver->complete_next();  // flush #1 succeeds
  EXPECT_EQ(first.status.load(), Status::kOk);
  ASSERT_EQ(d.driver->held(), 1u);
  ASSERT_EQ(d.driver->held_at(0)->op(), Op::kFlush);
  d.driver->complete_next(Status::kIoError);  // flush #2 fails
  for (TestBio* t : {&f, &fua, &pre}) {
    ASSERT_TRUE(t->done());
    EXPECT_EQ(t->calls.load(), 1);
    EXPECT_EQ(t->status.load(), Status::kIoError);
  }
  EXPECT_EQ(d.driver->held(), 0u)
      << "pre's data is not written after its preflush failed";
  EXPECT_EQ(d.tags_in_use(), 0u);
}

TEST(MqFlush, TheDiskMayGoAsSoonAsTheLastFlushBioHasEnded) {
  // Once every bio has ended, the submitter may destroy the disk. The
  // completion thread that ended the flush bio must by then be done with
  // the queue (under ASan a use after free shows here).
  MqDisk d = MakeMqDisk({}, CacheLimits(false), TestDriver::Mode::kThread);
  std::atomic<bool> ended{false};
  TestBio f;
  // A slow callback keeps the completion thread inside the flush
  // machinery while the disk goes away.
  f.on_done = [&](TestBio&) {
    ended = true;
    std::this_thread::sleep_for(50ms);
  };
  f.init_range(*d.disk, Op::kFlush, 0, 0);
  f.submit();
  MustHappen([&] { return ended.load(); }, "the flush bio ends");
  d.disk.reset();
  MustHappen([&] { return f.done(); }, "the callback returns");
  EXPECT_EQ(f.status.load(), Status::kOk);
}

// Versions in the first 8 bytes of each 4 KiB block.
constexpr int kBlocks = 64;

uint64_t VersionIn(const std::vector<std::byte>& block) {
  uint64_t v;
  std::memcpy(&v, block.data(), sizeof v);
  return v;
}

void RunOrderingStress(unsigned depth, bool native_fua) {
  TagSetConfig cfg;
  cfg.queue_depth = depth;
  cfg.nr_hw_queues = 2;
  MqDisk d =
      MakeMqDisk(cfg, CacheLimits(native_fua), TestDriver::Mode::kThread, kBlocks * 8);
  d.driver->set_max_delay(100us);
  TestDriver* drv = d.driver;
  std::array<std::atomic<uint64_t>, kBlocks> completed{};  // version completed per block
  std::atomic<int> violations{0};
  std::atomic<int> flush_bios{0};
  auto durable_version = [&](int block) {
    return VersionIn(drv->read_durable(uint64_t(block) * 4096, 8));
  };
  // Every block's completed version, now.
  auto snapshot = [&] {
    std::array<uint64_t, kBlocks> s;
    for (int b = 0; b < kBlocks; ++b) s[b] = completed[b].load();
    return s;
  };
  auto covers = [&](const std::array<uint64_t, kBlocks>& s) {
    for (int b = 0; b < kBlocks; ++b)
      if (durable_version(b) < s[b]) return false;
    return true;
  };
  constexpr int kWriters = 4, kFlushers = 2;
  const auto end = Clock::now() + 1s;
  std::vector<std::thread> threads;
  for (int t = 0; t < kWriters; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::vector<uint64_t> version(kBlocks / kWriters, 0);
      constexpr int kBatch = 4;
      std::vector<std::unique_ptr<TestBio>> batch(kBatch);
      std::vector<std::array<uint64_t, kBlocks>> before(kBatch);
      while (Clock::now() < end) {
        // Up to kBatch writes to distinct blocks of this writer at once.
        for (int i = 0; i < kBatch; ++i) {
          batch[i] = std::make_unique<TestBio>();
          TestBio& b = *batch[i];
          const int mine = (i * (kBlocks / kWriters / kBatch)) +
                           int(rng() % (kBlocks / kWriters / kBatch));
          const int block = t * (kBlocks / kWriters) + mine;
          const uint64_t v = ++version[mine];
          b.init_data(*d.disk, Op::kWrite, uint64_t(block) * 8, 8, uint8_t(v));
          std::memcpy(b.buf.data(), &v, sizeof v);
          const unsigned kind = rng() % 4;
          if (kind == 0) b.bio.set_flags(BioFlag::kFua);
          if (kind == 1) b.bio.set_flags(BioFlag::kPreflush);
          if (kind == 1) before[i] = snapshot();
          b.on_done = [&, block, v, kind, i](TestBio& done) {
            if (done.status.load() != Status::kOk) ++violations;
            // FUA: durable when it completes. PREFLUSH: everything that
            // completed before it was submitted is durable.
            if (kind == 0 && durable_version(block) < v) ++violations;
            if (kind == 1 && !covers(before[i])) ++violations;
            uint64_t cur = completed[block].load();
            while (cur < v && !completed[block].compare_exchange_weak(cur, v)) {
            }
          };
          b.submit();
        }
        MustHappen(
            [&] {
              return std::all_of(batch.begin(), batch.end(),
                                 [](auto& b) { return b->done(); });
            },
            "a batch of writes completes");
        for (auto& b : batch)
          if (b->calls.load() != 1) ++violations;
      }
    });
  }
  for (int t = 0; t < kFlushers; ++t) {
    threads.emplace_back([&] {
      while (Clock::now() < end) {
        TestBio f;
        const auto s = snapshot();
        f.on_done = [&](TestBio&) {
          if (!covers(s)) ++violations;
        };
        f.init_range(*d.disk, Op::kFlush, 0, 0);
        f.submit();
        ++flush_bios;
        MustHappen([&] { return f.done(); }, "a flush completes");
        if (f.status.load() != Status::kOk || f.calls.load() != 1) ++violations;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(violations.load(), 0)
      << "a flush, PREFLUSH or FUA write completed before the "
         "writes it covers were durable";
  EXPECT_GT(flush_bios.load(), 10);
  const auto bad = d.driver->violations();
  EXPECT_TRUE(bad.empty()) << bad.front();
}

TEST(MqFlush, FlushesAreOrderedAfterEveryCompletedWriteUnderConcurrency) {
  RunOrderingStress(/*depth=*/16, /*native_fua=*/false);
}

TEST(MqFlush, FlushOrderingWithNativeFua) { RunOrderingStress(16, true); }

TEST(MqFlush, FlushesAndFuaOnADepthOneQueue) { RunOrderingStress(1, false); }

}  // namespace
}  // namespace blkstack
