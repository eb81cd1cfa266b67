// Plugging and merging on the multi-queue path: the plug holds requests
// until it ends or 32 have gathered and sends them as one batch (last, and
// commit_rqs when a batch ends early); bios merge at the back and front of
// requests in the plug and in the software queues, requests merge with
// their neighbours, nomerges 0/1/2 behave as in Linux, FUA and PREFLUSH
// bios never merge, and no merge makes a request exceed max_sectors or
// max_segments. Merges show in the disk statistics.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/queue.h"
#include "blkstack/plug.h"
#include "mq_test_util.h"
#include "queue/software_queue.h"
#include "queue/tag_set.h"

namespace blkstack {
namespace {

using namespace mq_testing;

std::string Layout(const std::vector<Seen>& calls) {
  std::string s;
  for (const Seen& c : calls) {
    s += (s.empty() ? "" : " ") + std::string(op_name(c.op)) + "@" +
         std::to_string(c.pos) + "+" + std::to_string(c.bytes >> kSectorShift) + "/" +
         std::to_string(c.nr_bios);
  }
  return s;
}

void ExpectFill(const TestDriver& drv, uint64_t sector, uint32_t sectors, uint8_t fill) {
  const auto got =
      drv.read_store(sector << kSectorShift, size_t{sectors} << kSectorShift);
  EXPECT_TRUE(std::all_of(got.begin(), got.end(),
                          [&](std::byte b) { return b == std::byte{fill}; }))
      << "sectors " << sector << "+" << sectors << " should hold " << int(fill);
}

// --- the plug ----------------------------------------------------------------

TEST(MqPlug, HoldsRequestsUntilThePlugEnds) {
  MqDisk d = MakeMqDisk();
  TestBios bios;
  {
    Plug plug;
    EXPECT_EQ(Plug::current(), &plug);
    for (int i = 0; i < 5; ++i) {
      AddBio(bios).init_data(*d.disk, Op::kWrite, uint64_t(i) * 100, 8, 1);
      bios.back()->submit();
    }
    {
      Plug nested;  // only the outermost plug collects; ending this sends nothing
      EXPECT_EQ(Plug::current(), &plug);
    }
    EXPECT_EQ(plug.count(), 5u);
    EXPECT_EQ(d.driver->nr_calls(), 0u) << "held in the plug";
  }
  EXPECT_EQ(Plug::current(), nullptr);
  auto calls = d.driver->calls();
  ASSERT_EQ(calls.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(calls[i].pos, uint64_t(i) * 100);
    EXPECT_EQ(calls[i].last, i == 4) << "one batch: last on the final request only";
  }
  EXPECT_EQ(d.driver->commits(), 0u) << "the batch ended with last=true";
  d.driver->drain();
  EXPECT_TRUE(AllDone(bios));
}

TEST(MqPlug, SendsABatchWhenThirtyTwoHaveGathered) {
  MqDisk d = MakeMqDisk();
  TestBios bios;
  Plug plug;
  for (int i = 0; i < 31; ++i) {
    AddBio(bios).init_data(*d.disk, Op::kRead, uint64_t(i) * 16, 8);
    bios.back()->submit();
  }
  EXPECT_EQ(d.driver->nr_calls(), 0u);
  AddBio(bios).init_data(*d.disk, Op::kRead, 31 * 16, 8);
  bios.back()->submit();
  auto calls = d.driver->calls();
  EXPECT_EQ(calls.size(), size_t{Plug::kMaxRequests})
      << "the 32nd request sends the batch";
  for (size_t i = 0; i < calls.size(); ++i)
    EXPECT_EQ(calls[i].last, i + 1 == calls.size());
  EXPECT_EQ(plug.count(), 0u);
  AddBio(bios).init_data(*d.disk, Op::kRead, 40 * 16, 8);
  bios.back()->submit();
  EXPECT_EQ(d.driver->nr_calls(), 32u) << "the 33rd waits in the plug again";
  plug.flush();
  ASSERT_EQ(d.driver->nr_calls(), 33u);
  EXPECT_TRUE(d.driver->calls().back().last);
  d.driver->drain();
  EXPECT_TRUE(AllDone(bios));
}

TEST(MqPlug, CommitRqsWhenABatchEndsEarly) {
  MqDisk d = MakeMqDisk();
  // The device fills up at the 4th request and stays full until the test
  // lets it drain. A kResource refusal also schedules a re-run after 3 ms
  // (Linux's BLK_MQ_RESOURCE_DELAY): on a busy machine it can come before
  // the test completes a request, and must then meet a full device again,
  // not a different order of events.
  std::atomic<int> n{0};
  std::atomic<bool> full{false};
  d.driver->set_hook([&](HwQueue&, Request&, bool) {
    if (full.load()) return Status::kResource;
    if (n.fetch_add(1) + 1 != 4) return Status::kOk;
    full.store(true);
    return Status::kResource;
  });
  TestBios bios;
  {
    Plug plug;
    for (int i = 0; i < 8; ++i) {
      AddBio(bios).init_data(*d.disk, Op::kWrite, uint64_t(i) * 100, 8, 1);
      bios.back()->submit();
    }
  }
  auto seen = d.driver->seen();
  ASSERT_GE(seen.size(), 5u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_FALSE(seen[i].commit);
    EXPECT_FALSE(seen[i].last);
    EXPECT_EQ(seen[i].returned, Status::kOk);
  }
  EXPECT_EQ(seen[3].returned, Status::kResource);
  EXPECT_TRUE(seen[4].commit) << "three went with last=false: the driver must ring now";
  for (size_t i = 5; i < seen.size(); ++i) {
    EXPECT_TRUE(seen[i].commit ||
                (seen[i].returned == Status::kResource && seen[i].pos == 300))
        << "a delayed re-run only meets the full device";
  }
  EXPECT_EQ(d.driver->held(), 3u);

  // A completion restarts the queue; the rest go as one batch (perhaps
  // sent by the delayed re-run rather than by the completion).
  full.store(false);
  d.driver->complete_next();
  auto accepted = [&] {
    std::vector<Seen> ok;
    for (const Seen& c : d.driver->calls())
      if (c.returned == Status::kOk) ok.push_back(c);
    return ok;
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (accepted().size() < 8 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const auto ok = accepted();
  ASSERT_EQ(ok.size(), 8u);
  for (size_t i = 0; i < ok.size(); ++i)
    EXPECT_EQ(ok[i].pos, i * 100) << "in order, the refused one first";
  for (size_t i = 3; i < ok.size(); ++i) EXPECT_EQ(ok[i].last, i == 7);
  EXPECT_GE(d.driver->commits(), 1u);
  d.driver->drain();
  ASSERT_TRUE(AllDone(bios));
  for (auto& b : bios) EXPECT_EQ(b->calls.load(), 1);
}

TEST(MqPlug, AWaitInsideThePlugSendsItFirst) {
  // A synchronous call under a plug waits for a request the plug holds;
  // the wait flushes the plug (as schedule() does), so it does not hang.
  DiskRegistry r;
  auto disk = r.create("ram:4M,queue_mode=mq");
  BlockHandle h(disk);
  const auto data = Pattern(16384, 7);
  std::vector<std::byte> back(data.size());
  {
    Plug plug;
    ASSERT_EQ(h.pwrite(data.data(), data.size(), 8192), Status::kOk);
    ASSERT_EQ(h.pread(back.data(), back.size(), 8192), Status::kOk);
  }
  EXPECT_EQ(back, data);
}

TEST(MqPlug, APlugMayOutliveADiskItTookTagsFrom) {
  // A plug takes tags in batches. When its request goes to the flush
  // machinery instead of into the plug, and completes, nothing of the plug
  // holds the disk any more: the disk may be destroyed while the plug is
  // still active, and ending the plug must not touch it (ASan shows a use
  // after free otherwise).
  Plug plug;
  {
    QueueLimits lim = TestLimits();
    lim.volatile_write_cache = true;  // FUA emulated: a flush sequence
    MqDisk d = MakeMqDisk({}, lim, TestDriver::Mode::kInline);
    TestBio f;
    f.init_data(*d.disk, Op::kWrite, 0, 8, 1);
    f.bio.set_flags(BioFlag::kFua);
    f.submit();
    ASSERT_TRUE(f.done());
    EXPECT_EQ(f.status.load(), Status::kOk);
    EXPECT_EQ(d.tags_in_use(), 0u)
        << "the plug kept spare tags of a queue it holds no request for";
  }
  plug.flush();
}

// --- merging -----------------------------------------------------------------

TEST(MqMerge, BackAndFrontMergesInThePlug) {
  MqDisk d = MakeMqDisk();
  TestBio a, b, c, r1, r2;
  {
    Plug plug;
    a.init_data(*d.disk, Op::kWrite, 8, 8, 0xa);
    b.init_data(*d.disk, Op::kWrite, 16, 8, 0xb);  // back of a
    c.init_data(*d.disk, Op::kWrite, 0, 8, 0xc);   // front of a
    a.submit();
    b.submit();
    c.submit();
    EXPECT_EQ(plug.count(), 1u);
    // A read touching the write does not merge with it.
    r1.init_data(*d.disk, Op::kRead, 24, 8);
    r2.init_data(*d.disk, Op::kRead, 32, 8);  // but reads merge with reads
    r1.submit();
    r2.submit();
  }
  EXPECT_EQ(Layout(d.driver->calls()), "write@0+24/3 read@24+16/2");
  d.driver->drain();
  for (TestBio* t : {&a, &b, &c, &r1, &r2}) {
    EXPECT_EQ(t->calls.load(), 1);
    EXPECT_EQ(t->status.load(), Status::kOk);
  }
  // The bios went in device order: c, a, b.
  ExpectFill(*d.driver, 0, 8, 0xc);
  ExpectFill(*d.driver, 8, 8, 0xa);
  ExpectFill(*d.driver, 16, 8, 0xb);
  const DiskStats st = d.disk->stats();
  EXPECT_EQ(st.merges[kStatWrite], 2u);
  EXPECT_EQ(st.merges[kStatRead], 1u);
  EXPECT_EQ(st.ios[kStatWrite], 1u);
  EXPECT_EQ(st.ios[kStatRead], 1u);
  EXPECT_EQ(st.sectors[kStatWrite], 24u);
  EXPECT_TRUE(d.driver->violations().empty());
}

// Five writes in an order that exercises back, front and request merges:
// A 8+8, B 16+8 (back of A), C 0+8 (front of A), D 40+8, E 24+16 (front of
// D, and then D touches A).
struct FiveWrites {
  TestBio bio[5];
  void submit(Disk& disk) {
    const uint64_t at[5] = {8, 16, 0, 40, 24};
    const uint32_t len[5] = {8, 8, 8, 8, 16};
    for (int i = 0; i < 5; ++i) {
      bio[i].init_data(disk, Op::kWrite, at[i], len[i], uint8_t(0xa + i));
      bio[i].submit();
    }
  }
  void check(const TestDriver& drv) {
    for (auto& b : bio) {
      EXPECT_EQ(b.calls.load(), 1);
      EXPECT_EQ(b.status.load(), Status::kOk);
    }
    ExpectFill(drv, 0, 8, 0xc);
    ExpectFill(drv, 8, 8, 0xa);
    ExpectFill(drv, 16, 8, 0xb);
    ExpectFill(drv, 24, 16, 0xe);
    ExpectFill(drv, 40, 8, 0xd);
  }
};

// The writes wait in the software queue while the hardware queue is stopped.
void RunInSoftwareQueue(MqDisk& d, FiveWrites& w) {
  d.queue().stop_hw_queues();
  w.submit(*d.disk);
  EXPECT_EQ(d.driver->nr_calls(), 0u);
  d.queue().start_stopped_hw_queues();
  d.driver->drain();
  w.check(*d.driver);
  EXPECT_TRUE(d.driver->violations().empty());
}

TEST(MqMerge, MergesInTheSoftwareQueueAndJoinsNeighbouringRequests) {
  MqDisk d = MakeMqDisk();
  FiveWrites w;
  RunInSoftwareQueue(d, w);
  EXPECT_EQ(Layout(d.driver->calls()), "write@0+48/5")
      << "E joins D at the front, then A and D become one request";
  EXPECT_EQ(d.disk->stats().merges[kStatWrite], 4u);
  EXPECT_EQ(d.disk->stats().ios[kStatWrite], 1u);
}

TEST(MqMerge, ARequestMergeThatFreesATagForAParkedBioDoesNotDeadlock) {
  // Merging two queued requests frees one's tag; a bio parked for a tag
  // gets it at once and its request goes into the same software queue
  // whose lock the merge was holding.
  TagSetConfig cfg;
  cfg.queue_depth = 2;
  MqDisk d = MakeMqDisk(cfg);
  d.queue().stop_hw_queues();
  TestBio a, b, parked, x;
  std::atomic<bool> returned{false};
  // One thread does it all: the software queue is per thread.
  std::thread submitter([&] {
    a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
    b.init_data(*d.disk, Op::kWrite, 16, 8, 2);
    parked.init_data(*d.disk, Op::kWrite, 100, 8, 3);
    x.init_data(*d.disk, Op::kWrite, 8, 8, 4);  // joins b at the front, then a joins b
    a.submit();
    b.submit();
    parked.submit();  // no tag left: parked
    x.submit();
    returned = true;
  });
  MustHappen([&] { return returned.load(); }, "the merging submit returns", 5s);
  submitter.join();
  EXPECT_EQ(d.tags_in_use(), 2u) << "the parked bio has the freed tag";
  d.queue().start_stopped_hw_queues();
  d.driver->drain();
  EXPECT_EQ(Layout(d.driver->calls()), "write@0+24/3 write@100+8/1");
  for (TestBio* t : {&a, &b, &parked, &x}) EXPECT_EQ(t->status.load(), Status::kOk);
  ExpectFill(*d.driver, 8, 8, 4);
}

TEST(MqMerge, Nomerges2MergesNothing) {
  MqDisk d = MakeMqDisk();
  d.queue().set_nomerges(2);
  FiveWrites w;
  RunInSoftwareQueue(d, w);
  EXPECT_EQ(Layout(d.driver->calls()),
            "write@8+8/1 write@16+8/1 write@0+8/1 write@40+8/1 write@24+16/1");
  // Nor in the plug.
  TestBio p[3];
  {
    Plug plug;
    for (int i = 0; i < 3; ++i) {
      p[i].init_data(*d.disk, Op::kWrite, 100 + uint64_t(i) * 8, 8, 1);
      p[i].submit();
    }
  }
  d.driver->drain();
  EXPECT_EQ(d.driver->nr_calls(), 8u);
  EXPECT_EQ(d.disk->stats().merges[kStatWrite], 0u);
}

TEST(MqMerge, Nomerges1TriesOnlyTheMostRecentRequest) {
  {
    MqDisk d = MakeMqDisk();
    d.queue().set_nomerges(1);
    FiveWrites w;
    RunInSoftwareQueue(d, w);
    // B and C hit A, the most recent then; E hits D; but the requests
    // A and D are not merged with each other.
    EXPECT_EQ(Layout(d.driver->calls()), "write@0+24/3 write@24+24/2");
    EXPECT_EQ(d.disk->stats().merges[kStatWrite], 3u);
  }
  for (unsigned nomerges : {0u, 1u}) {
    SCOPED_TRACE("nomerges=" + std::to_string(nomerges));
    MqDisk d = MakeMqDisk();
    d.queue().set_nomerges(nomerges);
    EXPECT_EQ(d.queue().nomerges(), nomerges);
    d.queue().stop_hw_queues();
    TestBio a, b, x, y;
    a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
    b.init_data(*d.disk, Op::kWrite, 100, 8, 2);
    y.init_data(*d.disk, Op::kWrite, 108, 8, 4);  // touches b, the most recent
    x.init_data(*d.disk, Op::kWrite, 8, 8, 3);    // touches a, no longer the most recent
    for (TestBio* t : {&a, &b, &y, &x}) t->submit();
    d.queue().start_stopped_hw_queues();
    d.driver->drain();
    EXPECT_EQ(Layout(d.driver->calls()), nomerges == 0
                                             ? "write@0+16/2 write@100+16/2"
                                             : "write@0+8/1 write@100+16/2 write@8+8/1");
  }
  // The plug's one-request merge still works with nomerges=1.
  MqDisk d = MakeMqDisk();
  d.queue().set_nomerges(1);
  TestBio p[3];
  {
    Plug plug;
    for (int i = 0; i < 3; ++i) {
      p[i].init_data(*d.disk, Op::kWrite, uint64_t(i) * 8, 8, 1);
      p[i].submit();
    }
  }
  d.driver->drain();
  EXPECT_EQ(Layout(d.driver->calls()), "write@0+24/3");
}

TEST(MqMerge, NeverMergesFuaOrPreflushBios) {
  QueueLimits lim = TestLimits();
  lim.volatile_write_cache = true;
  lim.fua = true;  // FUA writes are plain requests (with FUA), so could merge
  {
    SCOPED_TRACE("in the plug");
    MqDisk d = MakeMqDisk({}, lim);
    TestBio a, f, b, p, c;
    {
      Plug plug;
      a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
      f.init_data(*d.disk, Op::kWrite, 8, 8, 2);
      f.bio.set_flags(BioFlag::kFua);
      b.init_data(*d.disk, Op::kWrite, 16, 8, 3);
      p.init_data(*d.disk, Op::kWrite, 24, 8, 4);
      p.bio.set_flags(BioFlag::kPreflush);
      c.init_data(*d.disk, Op::kWrite, 32, 8, 5);
      for (TestBio* t : {&a, &f, &b, &p, &c}) t->submit();
      // The PREFLUSH write went to the flush machinery, not into the plug.
      EXPECT_EQ(Layout(d.driver->calls()), "flush@0+0/0");
    }
    EXPECT_EQ(Layout(d.driver->calls()),
              "flush@0+0/0 write@0+8/1 write@8+8/1 write@16+8/1 write@32+8/1");
    EXPECT_TRUE(d.driver->calls()[2].flags == BioFlag::kFua);
    d.driver->drain();  // the flush, then p's data
    auto calls = d.driver->calls();
    ASSERT_EQ(calls.size(), 6u);
    EXPECT_EQ(calls[5].pos, 24u);
    EXPECT_EQ(calls[5].nr_bios, 1u);
    for (TestBio* t : {&a, &f, &b, &p, &c}) EXPECT_EQ(t->status.load(), Status::kOk);
    EXPECT_EQ(d.disk->stats().merges[kStatWrite], 0u);
    EXPECT_TRUE(d.driver->violations().empty());
  }
  {
    SCOPED_TRACE("in the software queue");
    MqDisk d = MakeMqDisk({}, lim);
    d.queue().stop_hw_queues();
    TestBio a, f, b;
    a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
    f.init_data(*d.disk, Op::kWrite, 8, 8, 2);
    f.bio.set_flags(BioFlag::kFua);
    b.init_data(*d.disk, Op::kWrite, 16, 8, 3);
    for (TestBio* t : {&a, &f, &b}) t->submit();
    d.queue().start_stopped_hw_queues();
    d.driver->drain();
    EXPECT_EQ(Layout(d.driver->calls()), "write@0+8/1 write@8+8/1 write@16+8/1");
    EXPECT_EQ(d.disk->stats().merges[kStatWrite], 0u);
  }
}

TEST(MqMerge, DiscardsWriteZeroesAndMixedOpsDoNotMerge) {
  MqDisk d = MakeMqDisk();
  TestBio d1, d2, z1, z2, w, r;
  {
    Plug plug;
    d1.init_range(*d.disk, Op::kDiscard, 0, 8);
    d2.init_range(*d.disk, Op::kDiscard, 8, 8);
    z1.init_range(*d.disk, Op::kWriteZeroes, 16, 8);
    z2.init_range(*d.disk, Op::kWriteZeroes, 24, 8);
    w.init_data(*d.disk, Op::kWrite, 32, 8, 1);
    r.init_data(*d.disk, Op::kRead, 40, 8);
    for (TestBio* t : {&d1, &d2, &z1, &z2, &w, &r}) t->submit();
  }
  EXPECT_EQ(
      Layout(d.driver->calls()),
      "discard@0+8/1 discard@8+8/1 write-zeroes@16+8/1 write-zeroes@24+8/1 write@32+8/1 "
      "read@40+8/1");
  d.driver->drain();
  for (TestBio* t : {&d1, &d2, &z1, &z2, &w, &r})
    EXPECT_EQ(t->status.load(), Status::kOk);
}

// Sequential bios under the given limits, merged in the plug or in the
// software queue: what requests the driver sees.
std::string MergeUnder(const QueueLimits& lim, bool plug,
                       const std::vector<uint32_t>& seg_bytes, int nbios,
                       int segs_per_bio = 1) {
  MqDisk d = MakeMqDisk({}, lim);
  TestBios bios;
  std::unique_ptr<Plug> p;
  if (plug)
    p = std::make_unique<Plug>();
  else
    d.queue().stop_hw_queues();
  uint64_t sector = 0;
  for (int i = 0; i < nbios; ++i) {
    const uint32_t bytes = seg_bytes[i % seg_bytes.size()];
    TestBio& b = AddBio(bios);
    b.init_data(*d.disk, Op::kWrite, sector, bytes >> kSectorShift, uint8_t(i),
                segs_per_bio);
    b.submit();
    sector += bytes >> kSectorShift;
  }
  if (plug)
    p.reset();
  else
    d.queue().start_stopped_hw_queues();
  d.driver->drain();
  EXPECT_TRUE(AllDone(bios));
  const auto bad = d.driver->violations();
  EXPECT_TRUE(bad.empty()) << bad.front();
  // The data went where it belongs.
  sector = 0;
  for (int i = 0; i < nbios; ++i) {
    const uint32_t bytes = seg_bytes[i % seg_bytes.size()];
    ExpectFill(*d.driver, sector, bytes >> kSectorShift, uint8_t(i));
    sector += bytes >> kSectorShift;
  }
  return Layout(d.driver->calls());
}

TEST(MqMerge, NeverExceedsMaxSectorsOrMaxSegments) {
  for (bool plug : {true, false}) {
    SCOPED_TRACE(plug ? "plug" : "software queue");
    QueueLimits lim = TestLimits();
    lim.max_sectors = 16;
    EXPECT_EQ(MergeUnder(lim, plug, {2048}, 8), "write@0+16/4 write@16+16/4");
    // 4+6+4 sectors fit in 16, another 6 would not.
    EXPECT_EQ(MergeUnder(lim, plug, {2048, 3072}, 5), "write@0+14/3 write@14+10/2");
    lim = TestLimits();
    lim.max_segments = 3;
    EXPECT_EQ(MergeUnder(lim, plug, {512}, 7), "write@0+3/3 write@3+3/3 write@6+1/1");
    EXPECT_EQ(MergeUnder(lim, plug, {1024}, 3, 2), "write@0+2/1 write@2+2/1 write@4+2/1")
        << "two segments each: a pair would be four";
    // Segments longer than max_segment_size count as several.
    lim = TestLimits();
    lim.max_segments = 4;
    lim.max_segment_size = 1024;
    EXPECT_EQ(MergeUnder(lim, plug, {2048, 1024, 2048}, 3), "write@0+6/2 write@6+4/1");
  }
}

TEST(MqMerge, RandomMergesRespectTheLimitsAndKeepTheData) {
  QueueLimits lim = TestLimits();
  lim.max_sectors = 24;
  lim.max_segments = 5;
  lim.max_segment_size = 2048;
  std::mt19937 rng(2024);
  for (int round = 0; round < 60; ++round) {
    const bool plug = round % 2 == 0;
    const unsigned nomerges = round % 5 == 4 ? 1 : 0;
    SCOPED_TRACE("round " + std::to_string(round));
    MqDisk d = MakeMqDisk({}, lim);
    d.queue().set_nomerges(nomerges);
    // Cut [0, 400) sectors into pieces, submit them in a lightly shuffled
    // order so that back and front neighbours both come up.
    struct Piece {
      uint64_t at;
      uint32_t len;
    };
    std::vector<Piece> pieces;
    for (uint64_t at = 0; at < 400;) {
      uint32_t len = std::uniform_int_distribution<uint32_t>(1, 12)(rng);
      len = std::min<uint32_t>(len, 400 - at);
      pieces.push_back({at, len});
      at += len;
    }
    for (size_t i = 0; i + 1 < pieces.size(); ++i) {
      if (rng() % 3 == 0) std::swap(pieces[i], pieces[i + 1]);
    }
    if (rng() % 2) std::reverse(pieces.begin(), pieces.end());
    TestBios bios;
    std::unique_ptr<Plug> p;
    if (plug)
      p = std::make_unique<Plug>();
    else
      d.queue().stop_hw_queues();
    for (size_t i = 0; i < pieces.size(); ++i) {
      TestBio& b = AddBio(bios);
      b.init_data(*d.disk, Op::kWrite, pieces[i].at, pieces[i].len, uint8_t(i + 1),
                  1 + rng() % 3);
      b.submit();
    }
    if (plug)
      p.reset();
    else
      d.queue().start_stopped_hw_queues();
    d.driver->drain();
    ASSERT_TRUE(AllDone(bios));
    for (auto& b : bios) ASSERT_EQ(b->calls.load(), 1);
    const auto bad = d.driver->violations();
    ASSERT_TRUE(bad.empty()) << bad.front();
    for (size_t i = 0; i < pieces.size(); ++i)
      ExpectFill(*d.driver, pieces[i].at, pieces[i].len, uint8_t(i + 1));
    const DiskStats st = d.disk->stats();
    EXPECT_EQ(st.ios[kStatWrite] + st.merges[kStatWrite], pieces.size())
        << "every bio is either a request or a merge";
    EXPECT_EQ(st.sectors[kStatWrite], 400u);
    EXPECT_EQ(st.ios[kStatWrite], d.driver->nr_calls());
  }
}

// --- the plugged and the direct path agree -----------------------------------

TEST(MqPaths, PluggedAndDirectSubmissionGiveTheSameResults) {
  DiskRegistry r;
  auto direct = r.create("ram:4M,queue_mode=mq,max_sectors=32,name=direct");
  auto plugged = r.create("ram:4M,queue_mode=mq,max_sectors=32,name=plugged");
  const uint64_t sectors = direct->capacity();
  std::mt19937 rng(77);
  std::vector<Status> statuses[2];
  for (int batch = 0; batch < 40; ++batch) {
    // One batch: non-overlapping bios (order within a batch is not
    // defined), many of them neighbours so that they merge.
    struct Op1 {
      Op op;
      uint64_t at;
      uint32_t len;
      unsigned segs;
    };
    std::vector<Op1> ops;
    uint64_t at = rng() % (sectors - 2000);
    for (int i = 0; i < 40; ++i) {
      const uint32_t len = 1 + rng() % 16;
      const unsigned kind = rng() % 10;
      const Op op = kind < 5   ? Op::kWrite
                    : kind < 8 ? Op::kRead
                    : kind < 9 ? Op::kDiscard
                               : Op::kWriteZeroes;
      ops.push_back({op, at, len, 1 + unsigned(rng() % 3)});
      at += len + (rng() % 4 == 0 ? rng() % 8 : 0);
    }
    if (rng() % 2) std::reverse(ops.begin(), ops.end());
    for (int which = 0; which < 2; ++which) {
      Disk& disk = which ? *plugged : *direct;
      TestBios bios;
      std::unique_ptr<Plug> p;
      if (which) p = std::make_unique<Plug>();
      for (size_t i = 0; i < ops.size(); ++i) {
        TestBio& b = AddBio(bios);
        if (op_has_data(ops[i].op)) {
          b.init_data(disk, ops[i].op, ops[i].at, ops[i].len, 0, ops[i].segs);
          if (ops[i].op == Op::kWrite) {
            // Same size: the segments still point into buf.
            const auto data = Pattern(b.buf.size(), batch * 1000 + unsigned(i));
            std::copy(data.begin(), data.end(), b.buf.begin());
          }
        } else {
          b.init_range(disk, ops[i].op, ops[i].at, ops[i].len);
        }
        b.submit();
      }
      p.reset();
      MustHappen([&] { return AllDone(bios); }, "batch completes");
      for (auto& b : bios) {
        ASSERT_EQ(b->calls.load(), 1);
        statuses[which].push_back(b->status.load());
      }
    }
  }
  EXPECT_EQ(statuses[0], statuses[1]);
  EXPECT_TRUE(std::all_of(statuses[0].begin(), statuses[0].end(),
                          [](Status s) { return s == Status::kOk; }));
  BlockHandle a(direct), b(plugged);
  std::vector<std::byte> x(direct->size_bytes()), y(plugged->size_bytes());
  ASSERT_EQ(a.pread(x.data(), x.size(), 0), Status::kOk);
  ASSERT_EQ(b.pread(y.data(), y.size(), 0), Status::kOk);
  EXPECT_TRUE(x == y) << "the two disks differ";
  EXPECT_GT(plugged->stats().merges[kStatWrite], 0u);
  EXPECT_EQ(direct->stats().merges[kStatWrite], 0u)
      << "an inline driver is always idle: nothing waits long enough to merge";
}

}  // namespace
}  // namespace blkstack
