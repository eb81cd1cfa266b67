// The multi-queue request path: the tag allocator, request-based disks from
// device specs, full queues and NOWAIT, shared tags, partial completion,
// requeue on kResource and kDeviceResource, stop/start, timeouts, freezing,
// removal with requests in flight, and the scheduler switch.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/queue.h"
#include "blkstack/error.h"
#include "blkstack/plug.h"
#include "core/percpu.h"
#include "mq_test_util.h"
#include "queue/tag_set.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Contains;
using testing_util::ErrorOf;

using namespace mq_testing;

// --- the tag allocator -----------------------------------------------------

TEST(MqTags, EveryTagIsHandedOutOnceUpToTheDepth) {
  // Depths around each word-size choice of the allocator (1, 4, 8, 64 bits
  // per word) and with partly used last words.
  for (unsigned depth :
       {1u, 2u, 3u, 4u, 5u, 31u, 32u, 33u, 63u, 64u, 100u, 255u, 256u, 257u, 1000u}) {
    SCOPED_TRACE("depth " + std::to_string(depth));
    TagAllocator tags(depth);
    EXPECT_EQ(tags.depth(), depth);
    EXPECT_EQ(tags.in_use(), 0u);
    std::set<int> got;
    for (unsigned i = 0; i < depth; ++i) {
      const int t = tags.try_get();
      ASSERT_GE(t, 0) << "a free tag exists";
      ASSERT_LT(t, static_cast<int>(depth));
      EXPECT_TRUE(got.insert(t).second) << "tag " << t << " handed out twice";
      EXPECT_EQ(tags.in_use(), i + 1);
    }
    EXPECT_EQ(tags.try_get(), -1) << "all taken";
    // Put one back: exactly that one comes out again.
    tags.put(*got.begin());
    EXPECT_EQ(tags.in_use(), depth - 1);
    EXPECT_EQ(tags.try_get(), *got.begin());
    EXPECT_EQ(tags.try_get(), -1);
    for (int t : got) tags.put(t);
    EXPECT_EQ(tags.in_use(), 0u);
    // And the whole depth is available again.
    std::set<int> again;
    for (unsigned i = 0; i < depth; ++i) again.insert(tags.try_get());
    EXPECT_EQ(again, got);
  }
}

TEST(MqTags, ConcurrentGetAndPutNeverShareATag) {
  constexpr unsigned kDepth = 24;
  constexpr int kThreads = 8;
  constexpr int kRounds = 20000;
  TagAllocator tags(kDepth);
  std::atomic<int> owner[kDepth];
  for (auto& o : owner) o.store(-1);
  std::atomic<int> conflicts{0}, out_of_range{0}, gets{0};
  std::vector<std::thread> threads;
  for (int id = 0; id < kThreads; ++id) {
    threads.emplace_back([&, id] {
      std::vector<int> mine;
      for (int r = 0; r < kRounds; ++r) {
        // Hold up to 3 tags at a time, so the space runs out now and then.
        if (mine.size() < 3) {
          const int t = tags.try_get();
          if (t >= 0) {
            if (t >= static_cast<int>(kDepth)) {
              ++out_of_range;
              continue;
            }
            int expected = -1;
            if (!owner[t].compare_exchange_strong(expected, id)) ++conflicts;
            mine.push_back(t);
            ++gets;
          }
        }
        if (!mine.empty() && (mine.size() == 3 || r % 2 == 0)) {
          const int t = mine.front();
          mine.erase(mine.begin());
          owner[t].store(-1);
          tags.put(t);
        }
      }
      for (int t : mine) {
        owner[t].store(-1);
        tags.put(t);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(conflicts.load(), 0) << "a tag was held by two threads at once";
  EXPECT_EQ(out_of_range.load(), 0);
  EXPECT_GT(gets.load(), kRounds) << "the threads did get tags";
  EXPECT_EQ(tags.in_use(), 0u);
}

// --- disks in mq mode from device specs --------------------------------------

TEST(MqBasics, RamInMqModeRoundTripsEveryOp) {
  DiskRegistry r;
  auto d = r.create("ram:16M,queue_mode=mq,hw_queues=2,depth=4");
  EXPECT_TRUE(Contains(d->describe(), "mq hw_queues=2 depth=4"));
  EXPECT_TRUE(Contains(d->describe(), "sched=none"));
  BlockHandle h(d);
  const auto data = Pattern(256 * 1024, 1);
  ASSERT_EQ(h.pwrite(data.data(), data.size(), 1 << 20), Status::kOk);
  std::vector<std::byte> back(data.size());
  ASSERT_EQ(h.pread(back.data(), back.size(), 1 << 20), Status::kOk);
  EXPECT_EQ(back, data);
  EXPECT_EQ(h.flush(), Status::kOk);
  ASSERT_EQ(h.discard((1 << 20) + 8192, 16384), Status::kOk);
  ASSERT_EQ(h.write_zeroes((1 << 20) + 65536, 4096), Status::kOk);
  ASSERT_EQ(h.pread(back.data(), back.size(), 1 << 20), Status::kOk);
  for (size_t i = 0; i < back.size(); ++i) {
    const bool zeroed =
        (i >= 8192 && i < 8192 + 16384) || (i >= 65536 && i < 65536 + 4096);
    ASSERT_EQ(back[i], zeroed ? std::byte{0} : data[i]) << "byte " << i;
  }
  const DiskStats st = d->stats();
  // 256 KiB at max_sectors=2560 is one request each way.
  EXPECT_GE(st.ios[kStatWrite], 2u);
  EXPECT_GE(st.ios[kStatRead], 2u);
  EXPECT_EQ(st.ios[kStatDiscard], 1u);
  EXPECT_EQ(d->in_flight(), 0u);
}

TEST(MqBasics, NullInMqModeCompletesInEveryMode) {
  for (const char* spec :
       {"null:16M,queue_mode=mq", "null:16M,queue_mode=mq,completion=deferred",
        "null:16M,queue_mode=2,completion=timer,completion_nsec=100us,hw_queues=3"}) {
    SCOPED_TRACE(spec);
    DiskRegistry r;
    auto d = r.create(spec);
    EXPECT_TRUE(Contains(d->describe(), "mq "));
    BlockHandle h(d);
    std::vector<std::byte> buf(8192);
    for (int i = 0; i < 20; ++i)
      ASSERT_EQ(h.pread(buf.data(), buf.size(), i * 8192), Status::kOk);
    EXPECT_EQ(d->stats().ios[kStatRead], 20u);
  }
}

TEST(MqBasics, AFullQueueMakesBiosWaitAndNeverFails) {
  for (unsigned depth : {1u, 2u}) {
    SCOPED_TRACE("depth " + std::to_string(depth));
    TagSetConfig cfg;
    cfg.queue_depth = depth;
    MqDisk d = MakeMqDisk(cfg);
    TestBios bios;
    // Not adjacent, so nothing merges: 100 requests for `depth` tags.
    for (int i = 0; i < 100; ++i) {
      AddBio(bios).init_data(*d.disk, Op::kWrite, uint64_t(i) * 16, 8, uint8_t(i));
      bios.back()->submit();
    }
    EXPECT_EQ(d.driver->held(), depth) << "the rest wait for tags";
    EXPECT_EQ(d.tags_in_use(), depth);
    // Each completion hands its tag to the oldest waiting bio.
    d.driver->drain();
    ASSERT_TRUE(AllDone(bios));
    for (auto& b : bios) {
      EXPECT_EQ(b->calls.load(), 1);
      EXPECT_EQ(b->status.load(), Status::kOk);
    }
    EXPECT_EQ(d.driver->nr_calls(), 100u);
    EXPECT_LE(d.driver->max_held(), depth);
    EXPECT_EQ(d.tags_in_use(), 0u);
    // FIFO hand-off: the driver saw them in submission order.
    auto calls = d.driver->calls();
    for (size_t i = 0; i < calls.size(); ++i) EXPECT_EQ(calls[i].pos, i * 16);
    EXPECT_TRUE(d.driver->violations().empty());
  }
}

TEST(MqBasics, AFullQueueNeverFailsWithManyThreads) {
  for (unsigned depth : {1u, 2u}) {
    SCOPED_TRACE("depth " + std::to_string(depth));
    TagSetConfig cfg;
    cfg.queue_depth = depth;
    cfg.nr_hw_queues = 2;
    MqDisk d = MakeMqDisk(cfg, TestLimits(), TestDriver::Mode::kThread);
    d.driver->set_max_delay(20us);
    constexpr int kThreads = 6, kPerThread = 150;
    std::vector<TestBios> bios(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kPerThread; ++i) {
          TestBio& b = AddBio(bios[t]);
          b.init_data(*d.disk, i % 3 ? Op::kWrite : Op::kRead,
                      uint64_t(t * kPerThread + i) * 2, 1, uint8_t(i));
          b.submit();
        }
      });
    }
    for (auto& t : threads) t.join();
    MustHappen([&] { return std::all_of(bios.begin(), bios.end(), AllDone); },
               "every bio completes on a full queue");
    for (auto& per : bios) {
      for (auto& b : per) {
        EXPECT_EQ(b->calls.load(), 1);
        EXPECT_EQ(b->status.load(), Status::kOk);
      }
    }
    EXPECT_LE(d.driver->max_held(), 2 * depth) << "two hardware queues of `depth` tags";
    EXPECT_TRUE(d.driver->violations().empty());
  }
}

TEST(MqBasics, ATagFreedJustBeforeABioParksIsNotLost) {
  // The window between a failed tag allocation and the bio being on the
  // wait list: a tag freed there sees no waiter to hand it to. Here the
  // submitter's plug is flushed in that window (its requests may be what
  // holds the tags) and the device completes another request meanwhile.
  TagSetConfig cfg;
  cfg.queue_depth = 2;
  MqDisk d = MakeMqDisk(cfg);
  TestBio a, p, b;
  a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  a.submit();  // in the driver, one tag
  TestDriver* drv = d.driver;
  d.driver->set_hook([drv](HwQueue&, Request& rq, bool) {
    if (rq.pos() == 100) drv->finish(*drv->take(0), Status::kOk);  // a completes now
    return Status::kOk;
  });
  {
    Plug plug;
    p.init_data(*d.disk, Op::kWrite, 100, 8, 2);
    p.submit();  // plugged, the other tag
    b.init_data(*d.disk, Op::kWrite, 200, 8, 3);
    b.submit();  // no tag: flushes the plug (p goes, a completes), parks
    EXPECT_TRUE(a.done());
    EXPECT_EQ(d.driver->held(), 2u) << "b waits although a's tag is free: a lost wake-up";
  }
  d.driver->drain();
  MustHappen([&] { return b.done(); }, "b completes");
  for (TestBio* t : {&a, &p, &b}) {
    EXPECT_EQ(t->calls.load(), 1);
    EXPECT_EQ(t->status.load(), Status::kOk);
  }
}

TEST(MqBasics, NowaitBiosGetAgainWhenNoTagIsFree) {
  TagSetConfig cfg;
  cfg.queue_depth = 1;
  MqDisk d = MakeMqDisk(cfg);
  TestBio a, nowait, waiting, nowait_later;
  a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  a.submit();
  ASSERT_EQ(d.driver->held(), 1u);

  nowait.init_data(*d.disk, Op::kWrite, 100, 8, 2);
  nowait.bio.set_flags(BioFlag::kNowait);
  nowait.submit();
  ASSERT_TRUE(nowait.done()) << "NOWAIT does not wait for a tag";
  EXPECT_EQ(nowait.status.load(), Status::kAgain);

  waiting.init_data(*d.disk, Op::kWrite, 200, 8, 3);
  waiting.submit();
  EXPECT_FALSE(waiting.done()) << "without NOWAIT the bio waits";

  d.driver->complete_next();  // a's tag goes to `waiting`
  EXPECT_EQ(d.driver->held(), 1u);
  d.driver->complete_next();
  EXPECT_EQ(waiting.status.load(), Status::kOk);

  nowait_later.init_data(*d.disk, Op::kWrite, 300, 8, 4);
  nowait_later.bio.set_flags(BioFlag::kNowait);
  nowait_later.submit();
  EXPECT_EQ(d.driver->held(), 1u) << "with a free tag NOWAIT goes through";
  d.driver->drain();
  EXPECT_EQ(nowait_later.status.load(), Status::kOk);
  for (TestBio* b : {&a, &nowait, &waiting, &nowait_later}) EXPECT_EQ(b->calls.load(), 1);
  EXPECT_EQ(d.driver->nr_calls(), 3u)
      << "the refused NOWAIT bio never reached the driver";
  EXPECT_EQ(d.tags_in_use(), 0u);
}

// Two threads that map to different hardware queues (slot parity decides
// with two queues), kept alive so their slots stay theirs.
struct TwoQueueThreads {
  std::vector<std::unique_ptr<Worker>> workers;
  Worker* on[2] = {nullptr, nullptr};
  TwoQueueThreads() {
    while ((!on[0] || !on[1]) && workers.size() < kPercpuSlots - 2) {
      workers.push_back(std::make_unique<Worker>());
      unsigned slot = kSharedSlot;
      workers.back()->run([&] { slot = this_slot().index; });
      if (slot < kSharedSlot && !on[slot % 2]) on[slot % 2] = workers.back().get();
    }
  }
};

TEST(MqBasics, SharedTagsAreOneTagSpaceForAllHwQueues) {
  TwoQueueThreads threads;
  if (!threads.on[0] || !threads.on[1])
    GTEST_SKIP() << "no free thread slots of both parities";
  for (bool shared : {true, false}) {
    SCOPED_TRACE(shared ? "shared tags" : "a tag space per hardware queue");
    TagSetConfig cfg;
    cfg.nr_hw_queues = 2;
    cfg.queue_depth = 2;
    cfg.shared_tags = shared;
    MqDisk d = MakeMqDisk(cfg);
    EXPECT_EQ(d.queue().tag_set().nr_tag_spaces(), shared ? 1u : 2u);
    EXPECT_EQ(&d.hctx(0).tags() == &d.hctx(1).tags(), shared);
    TestBios bios;
    for (int q = 0; q < 2; ++q) {
      threads.on[q]->run([&] {
        for (int i = 0; i < 3; ++i) {
          AddBio(bios).init_data(*d.disk, Op::kWrite, uint64_t(q * 100 + i * 10), 4, 1);
          bios.back()->submit();
        }
      });
    }
    // Shared: two tags between both queues; otherwise two each.
    EXPECT_EQ(d.driver->held(), shared ? 2u : 4u);
    d.driver->drain();
    ASSERT_TRUE(AllDone(bios));
    for (auto& b : bios) EXPECT_EQ(b->status.load(), Status::kOk);
    EXPECT_EQ(d.driver->max_held(), shared ? 2u : 4u);
    std::set<unsigned> hctxs;
    for (const Seen& s : d.driver->calls()) {
      hctxs.insert(s.hctx);
      EXPECT_LT(s.tag, 2);
    }
    EXPECT_EQ(hctxs, (std::set<unsigned>{0, 1})) << "both hardware queues were used";
    EXPECT_EQ(d.tags_in_use(0), 0u);
  }
}

// --- completion --------------------------------------------------------------

TEST(MqCompletion, PartialCompletionEndsBioByBioAndReportsWhatRemains) {
  MqDisk d = MakeMqDisk();
  TestBio a, b, c;
  {
    Plug plug;  // three adjacent writes become one request
    a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
    b.init_data(*d.disk, Op::kWrite, 8, 8, 2);
    c.init_data(*d.disk, Op::kWrite, 16, 8, 3);
    a.submit();
    b.submit();
    c.submit();
  }
  ASSERT_EQ(d.driver->held(), 1u);
  Request* rq = d.driver->take();
  ASSERT_EQ(rq->bytes(), 3u * 4096);
  EXPECT_EQ(rq->pos(), 0u);
  EXPECT_EQ(rq->cur_bytes(), 4096u);

  EXPECT_TRUE(rq->end_request(Status::kOk, 4096)) << "bytes remain";
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(a.status.load(), Status::kOk);
  EXPECT_FALSE(b.done());
  EXPECT_EQ(rq->bytes(), 8192u);
  EXPECT_EQ(rq->pos(), 8u);

  // Half of b, with an error: b is not done yet but keeps the error.
  EXPECT_TRUE(rq->end_request(Status::kMedium, 2048));
  EXPECT_FALSE(b.done());
  EXPECT_EQ(rq->bytes(), 6144u);
  EXPECT_EQ(rq->pos(), 12u);
  EXPECT_EQ(rq->cur_bytes(), 2048u) << "what is left of b's segment";

  EXPECT_TRUE(rq->end_request(Status::kOk, 2048));
  EXPECT_EQ(b.calls.load(), 1);
  EXPECT_EQ(b.status.load(), Status::kMedium);
  EXPECT_FALSE(c.done());
  EXPECT_EQ(d.tags_in_use(), 1u) << "the request still holds its tag";

  // More than is left: the rest completes and the request is finished.
  EXPECT_FALSE(rq->end_request(Status::kOk, 1 << 20));
  EXPECT_EQ(c.calls.load(), 1);
  EXPECT_EQ(c.status.load(), Status::kOk);
  EXPECT_EQ(d.tags_in_use(), 0u);
  const DiskStats st = d.disk->stats();
  EXPECT_EQ(st.ios[kStatWrite], 1u) << "one request";
  EXPECT_EQ(st.merges[kStatWrite], 2u);
  EXPECT_EQ(st.sectors[kStatWrite], 24u);
  EXPECT_EQ(d.disk->in_flight(), 0u);
}

TEST(MqCompletion, BiosEndAfterTheirRequestIsAccountedAndItsTagFreed) {
  // Once its last bio has ended, the submitter may free the disk: nothing
  // of the request may be left to do then.
  MqDisk d = MakeMqDisk();
  TestBio a, b;
  uint64_t ios_seen[2] = {0, 0};
  unsigned tags_seen[2] = {9, 9};
  int i = 0;
  auto look = [&](TestBio&) {
    ios_seen[i] = d.disk->stats().ios[kStatWrite];
    tags_seen[i] = d.tags_in_use();
    ++i;
  };
  a.on_done = look;
  b.on_done = look;
  {
    Plug plug;
    a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
    b.init_data(*d.disk, Op::kWrite, 8, 8, 2);
    a.submit();
    b.submit();
  }
  ASSERT_EQ(d.driver->held(), 1u);
  d.driver->complete_next();
  ASSERT_EQ(i, 2);
  for (int k = 0; k < 2; ++k) {
    EXPECT_EQ(ios_seen[k], 1u) << "bio " << k
                               << " ended before the request was accounted";
    EXPECT_EQ(tags_seen[k], 0u) << "bio " << k << " ended before the tag was freed";
  }
}

TEST(MqCompletion, AnErrorFromQueueRqFailsTheRequest) {
  MqDisk d = MakeMqDisk();
  d.driver->set_hook([](HwQueue&, Request&, bool) { return Status::kMedium; });
  TestBio a;
  a.init_data(*d.disk, Op::kRead, 0, 8);
  a.submit();
  ASSERT_TRUE(a.done());
  EXPECT_EQ(a.status.load(), Status::kMedium);
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(d.tags_in_use(), 0u);
}

// --- requeue, busy, stop and start -------------------------------------------

TEST(MqRequeue, ResourceRetriesWhenAnotherRequestCompletes) {
  MqDisk d = MakeMqDisk();
  TestBio a, b;
  a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  a.submit();
  ASSERT_EQ(d.driver->held(), 1u);
  d.driver->resource_next = 1;
  b.init_data(*d.disk, Op::kWrite, 100, 8, 2);
  b.submit();
  ASSERT_EQ(d.driver->nr_calls(), 2u);
  EXPECT_EQ(d.driver->calls()[1].returned, Status::kResource);
  EXPECT_FALSE(b.done()) << "kResource is not an error";
  EXPECT_EQ(d.driver->held(), 1u);

  // The completion of a restarts the queue (b goes out from that very
  // call, unless the queue's short retry delay was quicker).
  d.driver->complete_next();
  MustHappen([&] { return d.driver->held() == 1; }, "b is dispatched again");
  const Seen again = d.driver->calls().back();
  EXPECT_EQ(again.pos, 100u);
  EXPECT_EQ(again.returned, Status::kOk);
  d.driver->drain();
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(b.calls.load(), 1);
  EXPECT_EQ(b.status.load(), Status::kOk);
}

TEST(MqRequeue, ResourceWithNothingInFlightRetriesOnItsOwn) {
  MqDisk d = MakeMqDisk();
  d.driver->resource_next = 3;
  TestBio a;
  a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  a.submit();
  EXPECT_FALSE(a.done());
  // Nothing in flight will complete to restart the queue: it retries after a
  // delay by itself.
  MustHappen([&] { return d.driver->held() == 1; }, "the refused request is retried");
  EXPECT_EQ(d.driver->nr_calls(), 4u) << "three refusals, then taken";
  EXPECT_NE(d.driver->calls().back().thread, std::this_thread::get_id())
      << "retried by the queue's worker";
  d.driver->drain();
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(a.status.load(), Status::kOk);
}

TEST(MqRequeue, BusyStopsTheHwQueueUntilTheDriverStartsIt) {
  MqDisk d = MakeMqDisk();
  d.driver->busy_next = 1;
  TestBio a, b, c;
  a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  a.submit();
  EXPECT_TRUE(d.hctx().stopped()) << "kDeviceResource stops the hardware queue";
  EXPECT_FALSE(a.done());
  b.init_data(*d.disk, Op::kWrite, 100, 8, 2);
  c.init_data(*d.disk, Op::kWrite, 200, 8, 3);
  b.submit();
  c.submit();
  EXPECT_EQ(d.driver->nr_calls(), 1u) << "a stopped queue dispatches nothing";
  EXPECT_EQ(d.driver->held(), 0u);

  d.hctx().start();  // what the driver does when the device has room again
  EXPECT_FALSE(d.hctx().stopped());
  ASSERT_EQ(d.driver->held(), 3u);
  auto calls = d.driver->calls();
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_EQ(calls[1].pos, 0u) << "the refused request goes first";
  EXPECT_EQ(calls[2].pos, 100u);
  EXPECT_EQ(calls[3].pos, 200u);
  d.driver->drain();
  for (TestBio* t : {&a, &b, &c}) {
    EXPECT_EQ(t->calls.load(), 1);
    EXPECT_EQ(t->status.load(), Status::kOk);
  }
}

TEST(MqRequeue, AStartThatRacesWithTheBusyReturnIsNotLost) {
  // The device frees room on another CPU between queue_rq deciding it is
  // busy and returning kDeviceResource; the driver starts the queue at that
  // moment. The queue must not end up stopped for good.
  MqDisk d = MakeMqDisk();
  std::atomic<int> n{0};
  d.driver->set_hook([&](HwQueue& hctx, Request&, bool) {
    if (n++ > 0) return Status::kOk;
    std::thread room_again([&hctx] { hctx.start(); });
    room_again.join();
    return Status::kDeviceResource;
  });
  TestBio a;
  a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  a.submit();
  const bool dispatched = Eventually([&] { return d.driver->held() == 1; }, 3s);
  if (!dispatched) d.hctx().start();  // unstick it so the test can end
  EXPECT_TRUE(dispatched) << "the request stayed on a queue nobody will start";
  MustHappen([&] { return d.driver->held() == 1; }, "dispatch after start");
  d.driver->drain();
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(a.status.load(), Status::kOk);
}

TEST(MqRequeue, RequeueRequestDispatchesItAgain) {
  MqDisk d = MakeMqDisk();
  TestBio a;
  a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  a.submit();
  Request* rq = d.driver->take();
  ASSERT_NE(rq, nullptr);
  d.queue().requeue_request(*rq);
  MustHappen([&] { return d.driver->held() == 1; }, "the requeued request comes back");
  EXPECT_EQ(d.driver->nr_calls(), 2u);
  EXPECT_EQ(d.driver->calls()[1].pos, 0u);
  EXPECT_FALSE(a.done()) << "requeueing does not complete";
  d.driver->drain();
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(a.status.load(), Status::kOk);
}

TEST(MqStop, StoppedQueuesHoldRequestsUntilStarted) {
  TagSetConfig cfg;
  cfg.nr_hw_queues = 2;
  MqDisk d = MakeMqDisk(cfg);
  d.queue().stop_hw_queues();
  EXPECT_TRUE(d.hctx(0).stopped());
  EXPECT_TRUE(d.hctx(1).stopped());
  TestBios bios;
  for (int i = 0; i < 5; ++i) {
    AddBio(bios).init_data(*d.disk, Op::kWrite, uint64_t(i) * 100, 8, 1);
    bios.back()->submit();
  }
  EXPECT_EQ(d.driver->nr_calls(), 0u);
  d.queue().run_hw_queues();
  EXPECT_EQ(d.driver->nr_calls(), 0u) << "running a stopped queue dispatches nothing";
  d.queue().start_stopped_hw_queues();
  ASSERT_EQ(d.driver->held(), 5u);
  auto calls = d.driver->calls();
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(calls[i].pos, uint64_t(i) * 100) << "in submission order";
    EXPECT_EQ(calls[i].last, i == 4) << "one batch";
  }
  d.driver->drain();
  EXPECT_TRUE(AllDone(bios));
}

// --- timeouts ----------------------------------------------------------------

TEST(MqTimeout, ARequestThatNeverCompletesFailsWithTimeout) {
  TagSetConfig cfg;
  cfg.timeout_ns = 50'000'000;
  MqDisk d = MakeMqDisk(cfg);
  TestBio a;
  a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  const auto start = Clock::now();
  a.submit();
  MustHappen([&] { return a.done(); }, "the timeout fails the request", 5s);
  EXPECT_GE(Clock::now() - start, 50ms);
  EXPECT_EQ(a.status.load(), Status::kTimeout);
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(d.driver->timeouts(), 1);
  EXPECT_EQ(d.tags_in_use(), 0u);
  // The queue goes on working.
  TestBio b;
  b.init_data(*d.disk, Op::kRead, 0, 8);
  b.submit();
  d.driver->drain();
  EXPECT_EQ(b.status.load(), Status::kOk);
}

TEST(MqTimeout, ResetTimerGivesTheRequestAnotherPeriod) {
  TagSetConfig cfg;
  cfg.timeout_ns = 50'000'000;
  MqDisk d = MakeMqDisk(cfg);
  std::atomic<int> expired{0};
  TestDriver* drv = d.driver;
  d.driver->set_timeout_hook([&, drv](Request& rq) {
    if (++expired < 3) return TimeoutAction::kResetTimer;
    drv->forget(&rq);
    rq.end_request_all(Status::kTransport);  // the driver gives up itself
    return TimeoutAction::kDone;
  });
  TestBio a;
  a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  const auto start = Clock::now();
  a.submit();
  MustHappen([&] { return a.done(); }, "the third timeout ends the request", 5s);
  EXPECT_GE(Clock::now() - start, 150ms) << "three full periods";
  EXPECT_EQ(expired.load(), 3);
  EXPECT_EQ(a.status.load(), Status::kTransport);
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(d.tags_in_use(), 0u);
}

// --- freezing ----------------------------------------------------------------

TEST(MqFreeze, FreezeWaitsForRequestsInFlight) {
  MqDisk d = MakeMqDisk();
  TestBio a;
  a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  a.submit();
  ASSERT_EQ(d.driver->held(), 1u);
  std::atomic<bool> frozen{false};
  std::thread freezer([&] {
    d.queue().freeze();
    frozen = true;
  });
  // A negative check needs a window: freeze must not return while a is out.
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(frozen.load()) << "freeze returned with a request in flight";
  d.driver->complete_next();
  MustHappen([&] { return frozen.load(); }, "freeze returns once the request is done");
  freezer.join();
  EXPECT_EQ(a.calls.load(), 1);
  d.queue().unfreeze();
}

TEST(MqFreeze, BiosWaitWhileFrozenAndGoOnUnfreeze) {
  MqDisk d = MakeMqDisk();
  d.queue().freeze();
  TestBio a, b;
  a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  b.init_data(*d.disk, Op::kWrite, 8, 8, 2);
  a.submit();
  b.submit();
  EXPECT_EQ(d.driver->nr_calls(), 0u) << "a frozen queue makes no requests";
  EXPECT_FALSE(a.done());
  d.queue().unfreeze();
  EXPECT_GE(d.driver->held(), 1u);
  d.driver->drain();
  EXPECT_EQ(a.status.load(), Status::kOk);
  EXPECT_EQ(b.status.load(), Status::kOk);
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(b.calls.load(), 1);
}

TEST(MqFreeze, FreezesNestAndSetSchedulerKeepsAFrozenQueueFrozen) {
  // As blk_mq_freeze_queue: a depth count, so a scheduler switch (which
  // freezes and unfreezes) inside a frozen section does not thaw it.
  MqDisk d = MakeMqDisk();
  d.queue().freeze();
  d.queue().set_scheduler("none");
  TestBio a;
  a.init_data(*d.disk, Op::kWrite, 0, 8, 1);
  a.submit();
  EXPECT_EQ(d.driver->nr_calls(), 0u) << "still frozen after set_scheduler";
  d.queue().freeze();
  d.queue().unfreeze();
  EXPECT_EQ(d.driver->nr_calls(), 0u) << "still frozen: one freeze is left";
  d.queue().unfreeze();
  EXPECT_EQ(d.driver->held(), 1u);
  d.driver->drain();
  EXPECT_EQ(a.calls.load(), 1);
  EXPECT_EQ(a.status.load(), Status::kOk);
}

// --- removal -----------------------------------------------------------------

TEST(MqRemoval, RequestsInFlightCompleteOnceAndLaterBiosAreOffline) {
  TagSetConfig cfg;
  cfg.queue_depth = 2;
  MqDisk d = MakeMqDisk(cfg);
  TestBios bios;
  for (int i = 0; i < 6; ++i) {
    AddBio(bios).init_data(*d.disk, Op::kWrite, uint64_t(i) * 100, 8, uint8_t(i));
    bios.back()->submit();
  }
  ASSERT_EQ(d.driver->held(), 2u) << "four wait for tags";
  std::atomic<bool> removed{false};
  std::thread remover([&] {
    d.disk->shutdown();
    removed = true;
  });
  MustHappen([&] { return d.disk->dying(); }, "removal begins");
  TestBio late;
  late.init_data(*d.disk, Op::kRead, 0, 8);
  late.submit();
  ASSERT_TRUE(late.done());
  EXPECT_EQ(late.status.load(), Status::kOffline);
  EXPECT_FALSE(removed.load()) << "removal waits for the requests in flight";
  // The waiting bios get tags as the first ones complete, and complete too.
  MustHappen(
      [&] {
        d.driver->drain();
        return AllDone(bios);
      },
      "every bio in flight at removal completes");
  MustHappen([&] { return removed.load(); }, "removal finishes");
  remover.join();
  for (auto& b : bios) {
    EXPECT_EQ(b->calls.load(), 1);
    EXPECT_EQ(b->status.load(), Status::kOk);
  }
  EXPECT_EQ(d.driver->nr_calls(), 6u);
  TestBio after;
  after.init_data(*d.disk, Op::kWrite, 0, 8);
  after.submit();
  ASSERT_TRUE(after.done());
  EXPECT_EQ(after.status.load(), Status::kOffline);
  EXPECT_EQ(d.driver->nr_calls(), 6u);
}

TEST(MqRemoval, RemovingARamDiskUnderLoadCompletesEveryBioOnce) {
  DiskRegistry r;
  auto disk = r.create("ram:8M,queue_mode=mq,hw_queues=2,depth=4,name=victim");
  constexpr int kThreads = 4, kInFlight = 6;
  std::atomic<bool> saw_offline[kThreads] = {};
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  std::atomic<int> started{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::unique_ptr<TestBio>> ring(kInFlight);
      for (auto& b : ring) b = std::make_unique<TestBio>();
      uint64_t n = 0;
      ++started;
      // Keep kInFlight bios going until removal answers kOffline.
      while (!saw_offline[t]) {
        TestBio& b = *ring[n % kInFlight];
        if (n >= kInFlight) {
          while (!b.done()) std::this_thread::yield();
          if (b.calls.load() != 1) ++bad;
          if (b.status.load() == Status::kOffline)
            saw_offline[t] = true;
          else if (b.status.load() != Status::kOk)
            ++bad;
          b.calls = 0;
        }
        b.init_data(*disk, n % 2 ? Op::kWrite : Op::kRead, (t * 500 + n % 400) * 8, 8,
                    uint8_t(n));
        b.submit();
        ++n;
      }
      for (auto& b : ring) {
        while (!b->done()) std::this_thread::yield();
      }
    });
  }
  MustHappen([&] { return started.load() == kThreads; }, "submitters start");
  std::this_thread::sleep_for(20ms);  // let them run; any moment of removal will do
  r.remove("victim");
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0) << "a bio completed twice, never, or with an error";
  EXPECT_EQ(disk->in_flight(), 0u);
  BlockHandle h(disk);
  std::vector<std::byte> buf(4096);
  EXPECT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOffline);
}

// --- schedulers --------------------------------------------------------------

TEST(MqScheduler, NoneWorksAndUnknownNamesAreErrors) {
  MqDisk d = MakeMqDisk();
  d.queue().set_scheduler("none");
  EXPECT_EQ(d.queue().scheduler_name(), "none");
  EXPECT_EQ(d.queue().scheduler(), nullptr);
  const std::string msg = ErrorOf([&] { d.queue().set_scheduler("no-such-elevator"); });
  EXPECT_TRUE(Contains(msg, "no-such-elevator"));
  EXPECT_TRUE(Contains(msg, "none")) << "the message lists the known ones";
  EXPECT_EQ(d.queue().scheduler_name(), "none");
  EXPECT_THROW(d.queue().set_nomerges(3), Error);
  // And the queue still works (set_scheduler froze and unfroze it).
  TestBio a;
  a.init_data(*d.disk, Op::kRead, 0, 8);
  a.submit();
  d.driver->drain();
  EXPECT_EQ(a.status.load(), Status::kOk);

  DiskRegistry r;
  EXPECT_TRUE(
      Contains(ErrorOf([&] { r.create("ram:1M,queue_mode=mq,sched=no-such-elevator"); }),
               "no-such-elevator"));
  EXPECT_THROW(r.create("ram:1M,queue_mode=mq,nomerges=3"), Error);
  EXPECT_TRUE(r.list().empty()) << "a failed create leaves no disk behind";
}

}  // namespace
}  // namespace blkstack
