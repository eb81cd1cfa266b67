// IoContext (Linux AIO) through its API: submit's partial acceptance and
// errors, get_events' minimum and timeouts, cancellation of parked bios,
// destruction, DSYNC/NOWAIT/direct flags, vectored I/O, flushes, discard,
// write-zeroes, MAX_RW_COUNT, eventfd signalling, many threads on one
// context, late and split errors (seed 002), the coroutine wrapper and
// SyncIo.
#include "blkstack/io_context.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "aio_test_util.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/io_coro.h"

namespace blkstack {
namespace {

using namespace aio_testing;

constexpr int64_t kMaxRwCount = 0x7ffff000;  // INT_MAX rounded down to 4 KiB

bool AllZero(const std::byte* p, size_t n) {
  return std::all_of(p, p + n, [](std::byte b) { return b == std::byte{0}; });
}

// --- submit and get_events ------------------------------------------------------

TEST(IoContext, WriteThenReadRoundTripsAndTheEventNamesTheIocb) {
  DiskRegistry reg;
  auto d = reg.create("ram:4M");
  IoContext ctx(8);
  auto w = Pattern(8192, 1);
  std::vector<std::byte> r(8192);
  Iocb wcb = Iocb::pwrite(d.get(), w.data(), w.size(), 4096, 11);
  ASSERT_EQ(SubmitOne(ctx, wcb), 1);
  IoEvent ev = WaitOne(ctx);
  EXPECT_EQ(ev.user_data, 11u);
  EXPECT_EQ(ev.obj, &wcb);
  EXPECT_EQ(ev.res, 8192);
  EXPECT_EQ(ev.res2, 0);

  Iocb rcb = Iocb::pread(d.get(), r.data(), r.size(), 4096, 12);
  ASSERT_EQ(SubmitOne(ctx, rcb), 1);
  ev = WaitOne(ctx);
  EXPECT_EQ(ev.user_data, 12u);
  EXPECT_EQ(ev.obj, &rcb);
  EXPECT_EQ(ev.res, 8192);
  EXPECT_EQ(r, w);
  EXPECT_EQ(ctx.in_flight(), 0u);
}

TEST(IoContext, SubmitAcceptsAsManyAsFitThenRefusesWithEagain) {
  DiskRegistry reg;
  auto d = reg.create("null:16M");  // inline: events are ready at once
  IoContext ctx(4);
  EXPECT_EQ(ctx.max_events(), 4u);
  std::vector<std::byte> buf(512);
  std::vector<Iocb> cbs;
  for (uint64_t i = 0; i < 6; ++i)
    cbs.push_back(Iocb::pread(d.get(), buf.data(), 512, 0, i));
  std::vector<Iocb*> ptrs;
  for (Iocb& cb : cbs) ptrs.push_back(&cb);

  EXPECT_EQ(ctx.submit(ptrs), 4) << "room for four: the count accepted";
  EXPECT_EQ(ctx.in_flight(), 4u) << "unreaped events hold their slots";
  EXPECT_EQ(ctx.submit({ptrs.data() + 4, 2}), -EAGAIN) << "none fits: -EAGAIN";

  IoEvent ev[8];
  ASSERT_EQ(ctx.get_events(0, ev, 0ns), 4);
  for (int i = 0; i < 4; ++i) EXPECT_LT(ev[i].user_data, 4u) << "only accepted iocbs";
  EXPECT_EQ(ctx.get_events(0, ev, 20ms), 0) << "no event for refused iocbs";
  EXPECT_EQ(ctx.in_flight(), 0u);

  EXPECT_EQ(ctx.submit({ptrs.data() + 4, 2}), 2) << "reaping frees the slots";
  ASSERT_EQ(ctx.get_events(2, ev, 5s), 2);
  EXPECT_EQ(ctx.submit(std::span<Iocb* const>()), 0) << "nothing to submit: 0";
}

TEST(IoContext, AContextOfZeroEventsStillHoldsOne) {
  DiskRegistry reg;
  auto d = reg.create("null:16M");
  IoContext ctx(0);
  EXPECT_EQ(ctx.max_events(), 1u);
  std::vector<std::byte> buf(512);
  Iocb a = Iocb::pread(d.get(), buf.data(), 512, 0, 1);
  Iocb b = Iocb::pread(d.get(), buf.data(), 512, 0, 2);
  Iocb* list[] = {&a, &b};
  EXPECT_EQ(ctx.submit(list), 1);
  EXPECT_EQ(WaitOne(ctx).user_data, 1u);
}

TEST(IoContext, SubmitStopsAtTheFirstInvalidIocbAndReportsItsErrorWhenFirst) {
  DiskRegistry reg;
  auto d = reg.create("ram:1M");
  auto ro = reg.create("ram:1M,ro=1");
  IoContext ctx(16);
  AlignedBuf buf(8192);
  Iocb good1 = Iocb::pread(d.get(), buf.data(), 512, 0, 1);
  Iocb misaligned = Iocb::pread(d.get(), buf.data(), 512, 100, 2);
  Iocb good2 = Iocb::pread(d.get(), buf.data(), 512, 512, 3);
  Iocb* list[] = {&good1, &misaligned, &good2};
  EXPECT_EQ(ctx.submit(list), 1) << "accepted up to the invalid one";

  auto first = [&](Iocb cb) {
    Iocb* one[] = {&cb, &good2};
    return ctx.submit(one);
  };
  EXPECT_EQ(first(misaligned), -EINVAL);
  EXPECT_EQ(first(Iocb::pread(d.get(), buf.data(), 500, 0)), -EINVAL) << "length";
  EXPECT_EQ(first(Iocb::pread(nullptr, buf.data(), 512, 0)), -EBADF);
  EXPECT_EQ(first(Iocb::pread(d.get(), nullptr, 512, 0)), -EFAULT);
  EXPECT_EQ(first(Iocb::pwrite(ro.get(), buf.data(), 512, 0)), -EROFS);
  Iocb bad_op = Iocb::pread(d.get(), buf.data(), 512, 0);
  bad_op.op = static_cast<IoOp>(99);
  EXPECT_EQ(first(bad_op), -EINVAL);
  std::vector<iovec> many(IOV_MAX + 1, iovec{buf.data(), 512});
  EXPECT_EQ(first(MakeVec(IoOp::kPreadv, d.get(), many.data(), IOV_MAX + 1, 0)), -EINVAL);
  EXPECT_EQ(first(MakeVec(IoOp::kPreadv, d.get(), nullptr, 2, 0)), -EINVAL);
  EXPECT_EQ(first(MakeIocb(IoOp::kDiscard, d.get(), nullptr, 1000, 0)), -EINVAL);

  IoEvent ev[4];
  ASSERT_EQ(ctx.get_events(1, ev, 5s), 1);
  EXPECT_EQ(ev[0].user_data, 1u);
  EXPECT_EQ(ctx.get_events(0, ev, 20ms), 0) << "refused iocbs leave no event";
  EXPECT_EQ(ctx.in_flight(), 0u);

  // A read-only disk still reads.
  Iocb ro_read = Iocb::pread(ro.get(), buf.data(), 512, 0, 9);
  ASSERT_EQ(SubmitOne(ctx, ro_read), 1);
  EXPECT_EQ(WaitOne(ctx).res, 512);
}

TEST(IoContext, ErrorsFoundByTheBlockLayerArriveInTheEvent) {
  DiskRegistry reg;
  auto d = reg.create("ram:1M");
  auto ro = reg.create("ram:1M,ro=1");
  IoContext ctx(4);
  std::vector<std::byte> buf(4096);
  Iocb past_end = Iocb::pread(d.get(), buf.data(), 4096, (1 << 20) - 2048, 1);
  ASSERT_EQ(SubmitOne(ctx, past_end), 1);
  EXPECT_EQ(WaitOne(ctx).res, -ERANGE);
  Iocb discard_ro = MakeIocb(IoOp::kDiscard, ro.get(), nullptr, 4096, 0, 2);
  ASSERT_EQ(SubmitOne(ctx, discard_ro), 1);
  EXPECT_EQ(WaitOne(ctx).res, -EROFS);
  reg.remove(d->name());
  Iocb gone = Iocb::pread(d.get(), buf.data(), 4096, 0, 3);
  ASSERT_EQ(SubmitOne(ctx, gone), 1);
  EXPECT_EQ(WaitOne(ctx).res, -ENODEV) << "a removed disk";
}

TEST(IoContext, GetEventsReturnsFewerWhenTheTimeoutPasses) {
  auto drv = std::make_unique<ScriptedBioDriver>(/*hold=*/true);
  ScriptedBioDriver& held = *drv;
  auto slow = BioDisk(std::move(drv));
  DiskRegistry reg;
  auto fast = reg.create("null:16M");
  IoContext ctx(4);
  AtExit release{[&] { held.release_all(); }};  // before ~IoContext waits
  std::vector<std::byte> buf(512);
  Iocb a = Iocb::pread(fast.get(), buf.data(), 512, 0, 1);
  Iocb b = Iocb::pread(slow.get(), buf.data(), 512, 0, 2);
  Iocb* list[] = {&a, &b};
  ASSERT_EQ(ctx.submit(list), 2);

  IoEvent ev[4];
  auto start = Clock::now();
  EXPECT_EQ(ctx.get_events(2, ev, 50ms), 1) << "one of the two, when the time is up";
  EXPECT_GE(Clock::now() - start, 45ms);
  EXPECT_EQ(ev[0].user_data, 1u);
  start = Clock::now();
  EXPECT_EQ(ctx.get_events(1, ev, 0ns), 0) << "a zero timeout does not wait";
  EXPECT_EQ(ctx.get_events(1, ev, -5ms), 0) << "nor does a past one";
  EXPECT_EQ(ctx.get_events(0, ev), 0) << "min 0 without a timeout returns at once";
  EXPECT_LT(Clock::now() - start, 1s);

  held.release_all();
  EXPECT_EQ(WaitOne(ctx).user_data, 2u);
}

TEST(IoContext, GetEventsWithoutTimeoutOrAHugeOneWaitsForTheMinimum) {
  auto drv = std::make_unique<ScriptedBioDriver>(/*hold=*/true);
  ScriptedBioDriver& held = *drv;
  auto d = BioDisk(std::move(drv));
  IoContext ctx(8);
  AtExit release{[&] { held.release_all(); }};  // before ~IoContext waits
  std::vector<std::byte> buf(512);
  std::vector<Iocb> cbs;
  for (uint64_t i = 0; i < 3; ++i)
    cbs.push_back(Iocb::pread(d.get(), buf.data(), 512, 0, i));
  for (Iocb& cb : cbs) ASSERT_EQ(SubmitOne(ctx, cb), 1);
  MustHappen([&] { return held.held() == 3; }, "three bios held");

  // Completions trickle in from another thread, one by one.
  std::thread releaser([&] {
    for (int i = 0; i < 3; ++i) {
      std::this_thread::sleep_for(5ms);
      held.release_one();
    }
  });
  IoEvent ev[8];
  EXPECT_EQ(ctx.get_events(3, ev), 3) << "waits for all three";
  releaser.join();

  // nanoseconds::max() must mean "a long time", not overflow into "now".
  for (Iocb& cb : cbs) ASSERT_EQ(SubmitOne(ctx, cb), 1);
  std::thread late([&] {
    std::this_thread::sleep_for(20ms);
    held.release_all();
  });
  int got = 0;
  while (got < 3) {
    int n = ctx.get_events(1, ev, std::chrono::nanoseconds::max());
    if (n < 1) {
      ADD_FAILURE() << "a huge timeout returned without an event";
      break;
    }
    got += n;
  }
  late.join();
}

TEST(IoContext, GetEventsMovesAtMostTheSpaceGiven) {
  DiskRegistry reg;
  auto d = reg.create("null:16M");
  IoContext ctx(8);
  std::vector<std::byte> buf(512);
  std::vector<Iocb> cbs;
  for (uint64_t i = 0; i < 5; ++i)
    cbs.push_back(Iocb::pread(d.get(), buf.data(), 512, 0, i));
  std::vector<Iocb*> ptrs;
  for (Iocb& cb : cbs) ptrs.push_back(&cb);
  ASSERT_EQ(ctx.submit(ptrs), 5);
  IoEvent ev[8];
  EXPECT_EQ(ctx.get_events(1, {ev, 2}), 2);
  EXPECT_EQ(ctx.get_events(5, {ev, 8}, 10ms), 3)
      << "the rest; min capped by what remains";
  EXPECT_EQ(ctx.get_events(1, {ev, 0}), 0) << "no room: nothing moved, no wait";
  EXPECT_EQ(ctx.in_flight(), 0u);
}

// --- cancel -------------------------------------------------------------------

TEST(IoContextCancel, ABioParkedOnAFrozenDiskIsCancelledWithECANCELED) {
  auto drv = std::make_unique<ScriptedBioDriver>();
  ScriptedBioDriver& rec = *drv;
  auto d = BioDisk(std::move(drv));
  IoContext ctx(4);
  AtExit thaw{[&] { d->unfreeze(); }};  // a no-op once unfrozen
  auto w = Pattern(4096, 3);
  // Freeze while idle: freeze() waits for I/O in flight.
  d->freeze();
  Iocb cancelled = Iocb::pwrite(d.get(), w.data(), 4096, 0, 1);
  Iocb kept = Iocb::pwrite(d.get(), w.data(), 4096, 8192, 2);
  Iocb* list[] = {&cancelled, &kept};
  ASSERT_EQ(ctx.submit(list), 2);
  IoEvent ev[4];
  EXPECT_EQ(ctx.get_events(1, ev, 20ms), 0) << "parked while frozen";

  EXPECT_EQ(ctx.cancel(cancelled), 0);
  ev[0] = WaitOne(ctx, 1s);  // at once, while still frozen
  EXPECT_EQ(ev[0].user_data, 1u);
  EXPECT_EQ(ev[0].res, -ECANCELED);
  EXPECT_EQ(ctx.cancel(cancelled), -EINVAL) << "reaped: not in flight any more";

  d->unfreeze();
  ev[0] = WaitOne(ctx);
  EXPECT_EQ(ev[0].user_data, 2u);
  EXPECT_EQ(ev[0].res, 4096);
  auto calls = rec.calls();
  ASSERT_EQ(calls.size(), 1u) << "the cancelled write never reached the driver";
  EXPECT_EQ(calls[0].sector, 16u);
}

// One tag, and a driver that holds each request until drained: what it
// takes to leave iocbs waiting for the tag behind one in the driver.
// max_sectors, when not 0, splits iocbs into pieces of that size.
struct OneTagHeldDisk {
  explicit OneTagHeldDisk(uint32_t max_sectors = 0) {
    auto drv = std::make_unique<HoldRqDriver>();
    held = drv.get();
    TagSetConfig cfg;
    cfg.queue_depth = 1;
    QueueLimits lim;
    if (max_sectors != 0) lim.max_sectors = max_sectors;
    d = MqDisk(std::move(drv), cfg, lim);
  }
  HoldRqDriver* held;
  std::shared_ptr<Disk> d;
};

TEST(IoContextCancel, ABioWaitingForATagIsCancelledOneInTheDriverIsNot) {
  OneTagHeldDisk disk;
  HoldRqDriver& held = *disk.held;
  auto& d = disk.d;
  IoContext ctx(4), other(4);
  AtExit release{[&] { held.drain(); }};  // before ~IoContext waits
  std::vector<std::byte> buf(8192);
  Iocb in_driver = Iocb::pread(d.get(), buf.data(), 4096, 0, 1);
  Iocb waiting = Iocb::pread(d.get(), buf.data() + 4096, 4096, 65536, 2);
  ASSERT_EQ(SubmitOne(ctx, in_driver), 1);
  ASSERT_EQ(held.held(), 1u) << "the only tag is taken";
  ASSERT_EQ(SubmitOne(ctx, waiting), 1);

  Iocb stranger = Iocb::pread(d.get(), buf.data(), 4096, 0, 3);
  EXPECT_EQ(ctx.cancel(stranger), -EINVAL) << "never submitted";
  EXPECT_EQ(other.cancel(waiting), -EINVAL) << "another context's iocb";
  EXPECT_EQ(ctx.cancel(in_driver), -EINPROGRESS) << "in the driver: under way";

  EXPECT_EQ(ctx.cancel(waiting), 0);
  IoEvent ev = WaitOne(ctx, 1s);
  EXPECT_EQ(ev.user_data, 2u);
  EXPECT_EQ(ev.res, -ECANCELED);

  held.drain();
  ev = WaitOne(ctx);
  EXPECT_EQ(ev.user_data, 1u);
  EXPECT_EQ(ev.res, 4096) << "an iocb cancel could not stop completes as usual";
  EXPECT_EQ(held.calls().size(), 1u) << "the cancelled read never reached the driver";
}

// Linux AIO's rule: cancel succeeds only while nothing of the iocb was
// done. Once pieces split off an iocb went their own way (here the first is
// written), what is left waiting must not turn the event into -ECANCELED:
// the iocb completes with its real result.
TEST(IoContextCancel, ASplitIocbWhoseFirstPieceWasWrittenIsNotCancelled) {
  OneTagHeldDisk disk(/*max_sectors=*/8);  // 4 KiB pieces
  HoldRqDriver& held = *disk.held;
  auto& d = disk.d;
  IoContext ctx(4);
  AtExit release{[&] { held.drain(); }};  // before ~IoContext waits
  std::vector<std::byte> buf(4 * 4096);
  Iocb split = Iocb::pwrite(d.get(), buf.data(), 4 * 4096, 65536, 2);
  ASSERT_EQ(SubmitOne(ctx, split), 1);  // four pieces: one in the driver, three waiting
  ASSERT_EQ(held.held(), 1u);
  ASSERT_TRUE(held.release_one()) << "the first piece is written";
  ASSERT_EQ(held.held(), 1u) << "the second took the tag";

  EXPECT_EQ(ctx.cancel(split), -EINPROGRESS) << "part of it is written: under way";
  held.drain();
  IoEvent ev[2];
  ASSERT_EQ(ctx.get_events(1, ev, 10s), 1);
  EXPECT_EQ(ctx.get_events(0, {ev + 1, 1}, 20ms), 0) << "one event, no more";
  EXPECT_EQ(ev[0].res, 4 * 4096) << "the iocb completes with what it did";
  EXPECT_EQ(held.calls().size(), 4u) << "every piece reached the device";
}

// The same while no piece has reached the device yet: pieces were issued
// (they wait for the tag on their own), so the iocb is under way too.
TEST(IoContextCancel, ASplitIocbWithPiecesIssuedIsUnderWayEvenIfNoneWasWritten) {
  OneTagHeldDisk disk(/*max_sectors=*/8);  // 4 KiB pieces
  HoldRqDriver& held = *disk.held;
  auto& d = disk.d;
  IoContext ctx(4);
  AtExit release{[&] { held.drain(); }};  // before ~IoContext waits
  std::vector<std::byte> buf(5 * 4096);
  Iocb first = Iocb::pwrite(d.get(), buf.data(), 4096, 0, 1);
  Iocb split = Iocb::pwrite(d.get(), buf.data() + 4096, 4 * 4096, 65536, 2);
  ASSERT_EQ(SubmitOne(ctx, first), 1);
  ASSERT_EQ(SubmitOne(ctx, split), 1);  // four pieces, all waiting for the tag

  EXPECT_EQ(ctx.cancel(split), -EINPROGRESS) << "its pieces are on their way";
  held.drain();
  IoEvent ev[4];
  ASSERT_EQ(ctx.get_events(2, ev, 10s), 2);
  EXPECT_EQ(ctx.get_events(0, {ev + 2, 2}, 20ms), 0) << "one event each, no more";
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(ev[i].res, ev[i].user_data == 1 ? 4096 : 4 * 4096) << ev[i].user_data;
  }
  EXPECT_EQ(held.calls().size(), 5u) << "the first write and all four pieces";
}

TEST(IoContextCancel, AnIocbWhoseEventIsPostedCannotBeCancelled) {
  DiskRegistry reg;
  auto d = reg.create("null:16M");
  IoContext ctx(2);
  std::vector<std::byte> buf(512);
  Iocb cb = Iocb::pread(d.get(), buf.data(), 512, 0, 1);
  ASSERT_EQ(SubmitOne(ctx, cb), 1);  // done inline, event not reaped yet
  EXPECT_EQ(ctx.cancel(cb), -EINVAL);
  IoEvent ev = WaitOne(ctx);
  EXPECT_EQ(ev.res, 512) << "the event is untouched by the refused cancel";
}

// --- destruction ---------------------------------------------------------------

TEST(IoContext, DestructionWaitsForIoInFlight) {
  auto drv = std::make_unique<ScriptedBioDriver>(/*hold=*/true);
  ScriptedBioDriver& held = *drv;
  auto d = BioDisk(std::move(drv));
  auto ctx = std::make_unique<IoContext>(4);
  std::vector<std::byte> buf(1024);
  Iocb a = Iocb::pread(d.get(), buf.data(), 512, 0, 1);
  Iocb b = Iocb::pread(d.get(), buf.data() + 512, 512, 512, 2);
  ASSERT_EQ(SubmitOne(*ctx, a), 1);
  ASSERT_EQ(SubmitOne(*ctx, b), 1);
  std::atomic<bool> destroyed{false};
  std::thread t([&] {
    ctx.reset();
    destroyed = true;
  });
  // Showing that something does not happen takes a little time.
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(destroyed.load()) << "io_destroy returned with I/O in flight";
  held.release_all();
  MustHappen([&] { return destroyed.load(); }, "the context is destroyed");
  t.join();
}

// Completions from two threads at once while the reaper destroys the
// context right after the last event: nothing may touch the context (its
// condition variable, its lock) once the last event is visible. A stress
// (best under ASan): the window is a few instructions wide, so
// IoContextEventfd.AnEventIsReapableOnlyOnceItsSignalIsWritten pins the
// same ordering down deterministically.
TEST(IoContext, DestroyingRightAfterTheLastEventIsSafe) {
  DiskRegistry reg;
  auto a = reg.create("null:16M,completion=deferred");
  auto b = reg.create("null:16M,completion=deferred");
  std::vector<std::byte> buf(1024);
  for (int i = 0; i < 2000; ++i) {
    auto ctx = std::make_unique<IoContext>(2);
    Iocb x = Iocb::pread(a.get(), buf.data(), 512, 0, 1);
    Iocb y = Iocb::pread(b.get(), buf.data() + 512, 512, 0, 2);
    Iocb* list[] = {&x, &y};
    ASSERT_EQ(ctx->submit(list), 2);
    IoEvent ev[2];
    int got = 0;
    // Short timeouts: the reaper wakes by itself, not only when notified.
    while (got < 2) got += ctx->get_events(1, {ev + got, size_t(2 - got)}, 20us);
    ctx.reset();
  }
}

// --- flags -------------------------------------------------------------------------

TEST(IoContextFlags, DsyncWritesReachTheDeviceAsFua) {
  auto drv = std::make_unique<ScriptedBioDriver>();
  ScriptedBioDriver& rec = *drv;
  auto d = BioDisk(std::move(drv), CacheLimits(/*wc=*/true, /*fua=*/true));
  IoContext ctx(4);
  AlignedBuf buf(4096);
  iovec iov[2] = {{buf.data(), 2048}, {buf.data() + 2048, 2048}};
  Iocb dsync = MakeIocb(IoOp::kPwrite, d.get(), buf.data(), 4096, 0, 1, kIocbDsync);
  Iocb plain = MakeIocb(IoOp::kPwrite, d.get(), buf.data(), 4096, 4096, 2);
  Iocb dsyncv = MakeVec(IoOp::kPwritev, d.get(), iov, 2, 8192, 3, kIocbDsync);
  Iocb dsync_read = MakeIocb(IoOp::kPread, d.get(), buf.data(), 4096, 0, 4, kIocbDsync);
  for (Iocb* cb : {&dsync, &plain, &dsyncv, &dsync_read}) {
    ASSERT_EQ(SubmitOne(ctx, *cb), 1);
    EXPECT_EQ(WaitOne(ctx).res, 4096);
  }
  auto calls = rec.calls();
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_TRUE(any(calls[0].flags & BioFlag::kFua)) << "RWF_DSYNC write -> FUA";
  EXPECT_FALSE(any(calls[1].flags & BioFlag::kFua));
  EXPECT_TRUE(any(calls[2].flags & BioFlag::kFua)) << "pwritev too";
  EXPECT_FALSE(any(calls[3].flags & BioFlag::kFua))
      << "a read has nothing to make durable";
}

TEST(IoContextFlags, DsyncOnACachedDiskWithoutFuaAddsAFlushAfterTheWriteOnly) {
  auto drv = std::make_unique<HoldRqDriver>();
  HoldRqDriver& held = *drv;
  auto d =
      MqDisk(std::move(drv), TagSetConfig{}, CacheLimits(/*wc=*/true, /*fua=*/false));
  IoContext ctx(4);
  AtExit release{[&] { held.drain(); }};  // before ~IoContext waits
  AlignedBuf buf(4096);
  Iocb w = MakeIocb(IoOp::kPwrite, d.get(), buf.data(), 4096, 0, 1, kIocbDsync);
  Iocb r = MakeIocb(IoOp::kPread, d.get(), buf.data(), 4096, 0, 2, kIocbDsync);
  for (Iocb* cb : {&w, &r}) {
    ASSERT_EQ(SubmitOne(ctx, *cb), 1);
    IoEvent ev;
    // Each stage of the flush sequence reaches the driver in turn.
    MustHappen(
        [&] {
          held.drain();
          return ctx.get_events(0, {&ev, 1}, 0ns) == 1;
        },
        "the DSYNC iocb completes");
    EXPECT_EQ(ev.res, 4096);
  }
  auto calls = held.calls();
  ASSERT_EQ(calls.size(), 3u) << "write, flush, read";
  EXPECT_EQ(calls[0].op, Op::kWrite);
  EXPECT_EQ(calls[1].op, Op::kFlush) << "the write made durable by a flush after it";
  EXPECT_EQ(calls[2].op, Op::kRead);
}

TEST(IoContextFlags, DsyncWithoutAVolatileCacheNeedsNothingMore) {
  auto drv = std::make_unique<ScriptedBioDriver>();
  ScriptedBioDriver& rec = *drv;
  auto d = BioDisk(std::move(drv), CacheLimits(/*wc=*/false, /*fua=*/false));
  IoContext ctx(2);
  AlignedBuf buf(4096);
  Iocb dsync = MakeIocb(IoOp::kPwrite, d.get(), buf.data(), 4096, 0, 1, kIocbDsync);
  ASSERT_EQ(SubmitOne(ctx, dsync), 1);
  EXPECT_EQ(WaitOne(ctx).res, 4096);
  ASSERT_EQ(rec.calls().size(), 1u);
  EXPECT_FALSE(any(rec.calls()[0].flags & BioFlag::kFua));
}

TEST(IoContextFlags, NowaitGetsEagainInsteadOfWaitingForATag) {
  OneTagHeldDisk disk;
  HoldRqDriver& held = *disk.held;
  auto& d = disk.d;
  IoContext ctx(4);
  AtExit release{[&] { held.drain(); }};  // before ~IoContext waits
  std::vector<std::byte> buf(3 * 4096);
  Iocb first = Iocb::pread(d.get(), buf.data(), 4096, 0, 1);
  Iocb nowait =
      MakeIocb(IoOp::kPread, d.get(), buf.data() + 4096, 4096, 8192, 2, kIocbNowait);
  Iocb waits = Iocb::pread(d.get(), buf.data() + 8192, 4096, 16384, 3);
  ASSERT_EQ(SubmitOne(ctx, first), 1);
  ASSERT_EQ(SubmitOne(ctx, nowait), 1);
  IoEvent ev = WaitOne(ctx, 1s);
  EXPECT_EQ(ev.user_data, 2u);
  EXPECT_EQ(ev.res, -EAGAIN) << "RWF_NOWAIT: the tag is taken";
  ASSERT_EQ(SubmitOne(ctx, waits), 1);
  IoEvent evs[2];
  EXPECT_EQ(ctx.get_events(1, evs, 20ms), 0) << "without NOWAIT it waits";
  held.drain();
  ASSERT_EQ(ctx.get_events(2, evs, 10s), 2);
  EXPECT_EQ(evs[0].res, 4096);
  EXPECT_EQ(evs[1].res, 4096);
  EXPECT_EQ(held.calls().size(), 2u)
      << "the refused NOWAIT read never reached the driver";

  // With a tag free, NOWAIT changes nothing.
  Iocb free_tag = MakeIocb(IoOp::kPread, d.get(), buf.data(), 4096, 0, 4, kIocbNowait);
  ASSERT_EQ(SubmitOne(ctx, free_tag), 1);
  held.drain();
  EXPECT_EQ(WaitOne(ctx).res, 4096);
}

TEST(IoContextFlags, NowaitOnAFrozenDiskGetsEagainInsteadOfParking) {
  DiskRegistry reg;
  auto d = reg.create("ram:1M");
  IoContext ctx(4);
  std::vector<std::byte> buf(4096);
  d->freeze();
  Iocb nowait = MakeIocb(IoOp::kPread, d.get(), buf.data(), 4096, 0, 1, kIocbNowait);
  ASSERT_EQ(SubmitOne(ctx, nowait), 1);
  IoEvent ev;
  const int n = ctx.get_events(1, {&ev, 1}, 1s);
  d->unfreeze();  // before any assertion can return with the disk frozen
  ASSERT_EQ(n, 1) << "a NOWAIT iocb waited for a frozen disk";
  EXPECT_EQ(ev.res, -EAGAIN);
}

TEST(IoContextFlags, DirectIoMustBeAlignedInOffsetLengthAndMemory) {
  DiskRegistry reg;
  auto d = reg.create("ram:1M");
  IoContext ctx(4);
  AlignedBuf buf(16384);
  std::byte* p = buf.data();
  auto direct = [&](IoOp op, void* b, uint64_t len, uint64_t off) {
    return MakeIocb(op, d.get(), b, len, off, 0, kIocbDirect);
  };
  auto submit = [&](Iocb cb) { return SubmitOne(ctx, cb); };
  EXPECT_EQ(submit(direct(IoOp::kPread, p, 4096, 100)), -EINVAL) << "offset";
  EXPECT_EQ(submit(direct(IoOp::kPread, p, 1000, 0)), -EINVAL) << "length";
  EXPECT_EQ(submit(direct(IoOp::kPread, p + 8, 4096, 0)), -EINVAL) << "memory";
  EXPECT_EQ(submit(direct(IoOp::kPwrite, p + 1, 512, 0)), -EINVAL) << "memory";
  iovec bad_base[2] = {{p, 512}, {p + 1024 + 3, 512}};
  iovec bad_len[2] = {{p, 256}, {p + 4096, 256}};
  EXPECT_EQ(submit(MakeVec(IoOp::kPreadv, d.get(), bad_base, 2, 0, 0, kIocbDirect)),
            -EINVAL);
  EXPECT_EQ(submit(MakeVec(IoOp::kPwritev, d.get(), bad_len, 2, 0, 0, kIocbDirect)),
            -EINVAL);
  EXPECT_EQ(ctx.in_flight(), 0u) << "refusals take no slot";

  // Aligned direct I/O goes through.
  FillPattern(p, 4096, 7);
  ASSERT_EQ(submit(direct(IoOp::kPwrite, p, 4096, 8192)), 1);
  EXPECT_EQ(WaitOne(ctx).res, 4096);

  // Buffered (not direct) I/O may use any memory and segment lengths.
  std::byte* odd = p + 8192 + 3;
  ASSERT_EQ(submit(Iocb::pread(d.get(), odd, 4096, 8192)), 1);
  EXPECT_EQ(WaitOne(ctx).res, 4096);
  EXPECT_EQ(std::memcmp(odd, p, 4096), 0);
  std::vector<std::byte> back(512);
  iovec halves[2] = {{back.data(), 256}, {back.data() + 256, 256}};
  ASSERT_EQ(submit(MakeVec(IoOp::kPreadv, d.get(), halves, 2, 8192)), 1);
  EXPECT_EQ(WaitOne(ctx).res, 512);
  EXPECT_EQ(std::memcmp(back.data(), p, 512), 0);
}

TEST(IoContextFlags, AFourKiBBlockDiskRefusesSmallerUnitsEvenBuffered) {
  DiskRegistry reg;
  auto d = reg.create("ram:1M,bs=4096");
  IoContext ctx(4);
  AlignedBuf buf(8192);
  auto submit = [&](Iocb cb) { return SubmitOne(ctx, cb); };
  EXPECT_EQ(submit(Iocb::pread(d.get(), buf.data(), 4096, 512)), -EINVAL);
  EXPECT_EQ(submit(Iocb::pread(d.get(), buf.data(), 512, 0)), -EINVAL);
  EXPECT_EQ(submit(MakeIocb(IoOp::kDiscard, d.get(), nullptr, 512, 0)), -EINVAL);
  ASSERT_EQ(submit(Iocb::pread(d.get(), buf.data(), 4096, 4096)), 1);
  EXPECT_EQ(WaitOne(ctx).res, 4096);
}

TEST(IoContextFlags, HipriIsAcceptedAndIgnored) {
  DiskRegistry reg;
  auto d = reg.create("ram:1M");
  IoContext ctx(2);
  std::vector<std::byte> buf(512);
  Iocb cb = MakeIocb(IoOp::kPread, d.get(), buf.data(), 512, 0, 1, kIocbHipri);
  ASSERT_EQ(SubmitOne(ctx, cb), 1);
  EXPECT_EQ(WaitOne(ctx).res, 512);
}

// --- vectored I/O, flush, discard, write-zeroes, MAX_RW_COUNT ---------------------

// Writes with pwritev in `n` pieces and reads back with preadv in a
// different cut; both must see the bytes in order.
void VectoredRoundTrip(Disk* d, unsigned n, bool odd_lengths, uint64_t off) {
  SCOPED_TRACE(testing::Message() << "iovecs: " << n << (odd_lengths ? " odd" : ""));
  IoContext ctx(4);
  const size_t total = size_t{n} * 512;
  auto data = Pattern(total, n);
  std::mt19937 rng(n);
  // Cut points: whole sectors, or any byte when odd lengths are allowed.
  auto cut = [&](std::byte* base) {
    std::vector<iovec> v;
    size_t at = 0;
    for (unsigned i = 0; i < n; ++i) {
      size_t len = 512;
      if (odd_lengths && i + 1 < n) len = 1 + rng() % 1023;
      if (i + 1 == n || at + len > total) len = total - at;
      v.push_back({base + at, len});
      at += len;
    }
    return v;
  };
  auto wv = cut(data.data());
  Iocb w =
      MakeVec(IoOp::kPwritev, d, wv.data(), static_cast<unsigned>(wv.size()), off, 1);
  ASSERT_EQ(SubmitOne(ctx, w), 1);
  EXPECT_EQ(WaitOne(ctx).res, int64_t(total));
  std::vector<std::byte> back(total, std::byte{0xee});
  auto rv = cut(back.data());
  std::reverse(rv.begin(), rv.end());  // a different cut: lengths reversed,
  size_t at = 0;                       // laid out again in order
  for (iovec& v : rv) {
    v.iov_base = back.data() + at;
    at += v.iov_len;
  }
  Iocb r = MakeVec(IoOp::kPreadv, d, rv.data(), static_cast<unsigned>(rv.size()), off, 2);
  ASSERT_EQ(SubmitOne(ctx, r), 1);
  EXPECT_EQ(WaitOne(ctx).res, int64_t(total));
  EXPECT_EQ(back, data);
}

TEST(IoContextVectored, ManyIovecsRoundTripOnRamInBothQueueModes) {
  DiskRegistry reg;
  for (const char* spec : {"ram:8M", "ram:8M,queue_mode=mq,depth=4"}) {
    SCOPED_TRACE(spec);
    auto d = reg.create(spec);
    // 8 fit inline in the kiocb, 9 do not; 200 is more than max_segments
    // (128), so the bio is split by segments.
    for (unsigned n : {1u, 3u, 8u, 9u, 200u, 1024u}) {
      VectoredRoundTrip(d.get(), n, false, 1 << 20);
      VectoredRoundTrip(d.get(), n, true, 3 << 20);
    }
  }
}

TEST(IoContextVectored, ZeroLengthIovecsAndEmptyVectorsAreFine) {
  DiskRegistry reg;
  auto d = reg.create("ram:1M");
  IoContext ctx(2);
  auto data = Pattern(1024, 5);
  iovec w[4] = {
      {data.data(), 0}, {data.data(), 512}, {nullptr, 0}, {data.data() + 512, 512}};
  Iocb wcb = MakeVec(IoOp::kPwritev, d.get(), w, 4, 4096, 1);
  ASSERT_EQ(SubmitOne(ctx, wcb), 1);
  EXPECT_EQ(WaitOne(ctx).res, 1024);
  std::vector<std::byte> back(1024);
  Iocb rcb = Iocb::pread(d.get(), back.data(), 1024, 4096);
  ASSERT_EQ(SubmitOne(ctx, rcb), 1);
  EXPECT_EQ(WaitOne(ctx).res, 1024);
  EXPECT_EQ(back, data);
  Iocb empty = MakeVec(IoOp::kPreadv, d.get(), nullptr, 0, 0, 2);
  ASSERT_EQ(SubmitOne(ctx, empty), 1);
  EXPECT_EQ(WaitOne(ctx).res, 0);
}

TEST(IoContextVectored, IovecLengthsThatOverflowOrExceedMaxRwCountAreRefused) {
  DiskRegistry reg;
  auto d = reg.create("null:4G");
  IoContext ctx(2);
  std::vector<std::byte> buf(4096);
  // Lengths whose sum wraps around 2^64 to a small, aligned total.
  iovec wrap[2] = {{buf.data(), SIZE_MAX - 511}, {buf.data(), 1024}};
  Iocb cb = MakeVec(IoOp::kPreadv, d.get(), wrap, 2, 0);
  EXPECT_EQ(SubmitOne(ctx, cb), -EINVAL);
  iovec huge[2] = {{buf.data(), size_t{1} << 31}, {buf.data(), size_t{1} << 31}};
  cb = MakeVec(IoOp::kPreadv, d.get(), huge, 2, 0);
  EXPECT_EQ(SubmitOne(ctx, cb), -EINVAL) << "vectored I/O beyond MAX_RW_COUNT";
  iovec big[1] = {{buf.data(), size_t{1} << 33}};
  cb = MakeVec(IoOp::kPwritev, d.get(), big, 1, 0);
  EXPECT_EQ(SubmitOne(ctx, cb), -EINVAL);
  EXPECT_EQ(ctx.in_flight(), 0u);
}

TEST(IoContextOps, FsyncAndFdatasyncReachACachedDeviceAsAFlush) {
  auto drv = std::make_unique<ScriptedBioDriver>();
  ScriptedBioDriver& rec = *drv;
  auto d = BioDisk(std::move(drv), CacheLimits(/*wc=*/true, /*fua=*/false));
  IoContext ctx(4);
  Iocb fsync = Iocb::fsync(d.get(), 1);
  Iocb fdsync = MakeIocb(IoOp::kFdsync, d.get(), nullptr, 0, 0, 2);
  for (Iocb* cb : {&fsync, &fdsync}) {
    ASSERT_EQ(SubmitOne(ctx, *cb), 1);
    EXPECT_EQ(WaitOne(ctx).res, 0);
  }
  auto calls = rec.calls();
  ASSERT_EQ(calls.size(), 2u);
  for (const Call& c : calls) {
    EXPECT_EQ(c.op, Op::kFlush);
    EXPECT_EQ(c.bytes, 0u);
  }

  // Without a volatile cache there is nothing to flush: done at once.
  auto drv2 = std::make_unique<ScriptedBioDriver>();
  ScriptedBioDriver& rec2 = *drv2;
  auto plain = BioDisk(std::move(drv2), CacheLimits(false, false));
  Iocb f2 = Iocb::fsync(plain.get(), 3);
  ASSERT_EQ(SubmitOne(ctx, f2), 1);
  EXPECT_EQ(WaitOne(ctx).res, 0);
  EXPECT_TRUE(rec2.calls().empty());
}

TEST(IoContextOps, FsyncOnAnMqDiskGoesThroughTheFlushMachinery) {
  auto drv = std::make_unique<HoldRqDriver>();
  HoldRqDriver& held = *drv;
  auto d = MqDisk(std::move(drv), TagSetConfig{}, CacheLimits(true, true));
  IoContext ctx(2);
  AtExit release{[&] { held.drain(); }};  // before ~IoContext waits
  Iocb f = Iocb::fsync(d.get(), 1);
  ASSERT_EQ(SubmitOne(ctx, f), 1);
  MustHappen([&] { return held.held() == 1; }, "the flush reaches the driver");
  held.drain();
  EXPECT_EQ(WaitOne(ctx).res, 0);
  ASSERT_EQ(held.calls().size(), 1u);
  EXPECT_EQ(held.calls()[0].op, Op::kFlush);
}

TEST(IoContextOps, DiscardAndWriteZeroesReadBackAsZeroes) {
  DiskRegistry reg;
  for (const char* spec : {"ram:4M", "ram:4M,queue_mode=mq"}) {
    SCOPED_TRACE(spec);
    auto d = reg.create(spec);
    IoContext ctx(4);
    auto data = Pattern(65536, 9);
    Iocb w = Iocb::pwrite(d.get(), data.data(), data.size(), 0, 1);
    ASSERT_EQ(SubmitOne(ctx, w), 1);
    ASSERT_EQ(WaitOne(ctx).res, 65536);
    Iocb discard = MakeIocb(IoOp::kDiscard, d.get(), nullptr, 16384, 8192, 2);
    Iocb zeroes = MakeIocb(IoOp::kWriteZeroes, d.get(), nullptr, 4608, 40960, 3);
    Iocb* list[] = {&discard, &zeroes};
    ASSERT_EQ(ctx.submit(list), 2);
    IoEvent ev[2];
    ASSERT_EQ(ctx.get_events(2, ev, 10s), 2);
    EXPECT_EQ(ev[0].res, 0);
    EXPECT_EQ(ev[1].res, 0);
    std::vector<std::byte> back(65536);
    Iocb r = Iocb::pread(d.get(), back.data(), back.size(), 0, 4);
    ASSERT_EQ(SubmitOne(ctx, r), 1);
    ASSERT_EQ(WaitOne(ctx).res, 65536);
    EXPECT_EQ(std::memcmp(back.data(), data.data(), 8192), 0);
    EXPECT_TRUE(AllZero(back.data() + 8192, 16384)) << "discarded";
    EXPECT_EQ(std::memcmp(back.data() + 24576, data.data() + 24576, 16384), 0);
    EXPECT_TRUE(AllZero(back.data() + 40960, 4608)) << "written as zeroes";
    EXPECT_EQ(std::memcmp(back.data() + 45568, data.data() + 45568, 65536 - 45568), 0);
  }
}

TEST(IoContextOps, DiscardOnADiskWithoutItFailsInTheEvent) {
  auto d = BioDisk(std::make_unique<ScriptedBioDriver>());  // no discard limits
  IoContext ctx(2);
  Iocb discard = MakeIocb(IoOp::kDiscard, d.get(), nullptr, 4096, 0, 1);
  Iocb zeroes = MakeIocb(IoOp::kWriteZeroes, d.get(), nullptr, 4096, 0, 2);
  for (Iocb* cb : {&discard, &zeroes}) {
    ASSERT_EQ(SubmitOne(ctx, *cb), 1);
    EXPECT_EQ(WaitOne(ctx).res, -EOPNOTSUPP);
  }
}

TEST(IoContextOps, ReadsAndWritesLongerThanMaxRwCountAreCutShort) {
  DiskRegistry reg;
  // null never touches the memory: a small buffer stands for a big one.
  for (const char* spec : {"null:4G", "null:4G,queue_mode=mq"}) {
    SCOPED_TRACE(spec);
    auto d = reg.create(spec);
    IoContext ctx(4);
    std::vector<std::byte> small(4096);
    const uint64_t three_gib = uint64_t{3} << 30;
    Iocb r = Iocb::pread(d.get(), small.data(), three_gib, 0, 1);
    Iocb w = Iocb::pwrite(d.get(), small.data(), three_gib, 0, 2);
    Iocb exact = Iocb::pread(d.get(), small.data(), kMaxRwCount, 4096, 3);
    Iocb* list[] = {&r, &w, &exact};
    const DiskStats before = d->stats();
    ASSERT_EQ(ctx.submit(list), 3);
    IoEvent ev[3];
    ASSERT_EQ(ctx.get_events(3, ev, 60s), 3);
    for (const IoEvent& e : ev) EXPECT_EQ(e.res, kMaxRwCount) << e.user_data;
    const DiskStats after = d->stats();
    EXPECT_EQ(after.sectors[kStatRead] - before.sectors[kStatRead], 2 * kMaxRwCount / 512)
        << "only the shortened length went to the device";
    EXPECT_EQ(after.sectors[kStatWrite] - before.sectors[kStatWrite], kMaxRwCount / 512);
  }
}

// --- late and split errors (seed 002) ----------------------------------------------

TEST(IoContextErrors, OneFailedPieceOfASplitIocbFailsTheWholeEventOnce) {
  auto drv = std::make_unique<ScriptedBioDriver>();
  ScriptedBioDriver& rec = *drv;
  QueueLimits lim;
  lim.max_sectors = 8;  // 4 KiB pieces
  auto d = BioDisk(std::move(drv), lim);
  rec.set_fail(
      [](const Bio& b) { return b.sector() == 24 ? Status::kMedium : Status::kOk; });
  IoContext ctx(4);
  std::vector<std::byte> buf(65536);
  Iocb w = Iocb::pwrite(d.get(), buf.data(), buf.size(), 0, 1);
  ASSERT_EQ(SubmitOne(ctx, w), 1);
  IoEvent ev[2];
  ASSERT_EQ(ctx.get_events(1, ev, 10s), 1);
  EXPECT_EQ(ev[0].res, -ENODATA) << "the fourth piece's medium error";
  EXPECT_EQ(ctx.get_events(1, ev, 20ms), 0) << "one event, not one per piece";
  EXPECT_EQ(rec.calls().size(), 16u);
}

// A bio driver whose pieces complete later on another thread, with the
// status chosen per piece.
class LateDriver final : public BioDriver {
 public:
  std::function<std::pair<std::chrono::milliseconds, Status>(const Bio&)> plan;
  void submit(Bio& bio) override {
    auto [delay, status] = plan(bio);
    if (delay == 0ms) {
      bio.complete(status);
      return;
    }
    later_.at(Clock::now() + delay, [&bio, s = status] { bio.complete(s); });
  }

 private:
  Deferrer later_;
};

TEST(IoContextErrors, AnErrorAfterTheOtherPiecesSucceededReachesTheEvent) {
  auto drv = std::make_unique<LateDriver>();
  // The first piece fails 40 ms late; the other three succeed at once.
  drv->plan = [](const Bio& b) {
    return b.sector() == 0 ? std::pair{40ms, Status::kIoError}
                           : std::pair{0ms, Status::kOk};
  };
  QueueLimits lim;
  lim.max_sectors = 8;
  auto d = BioDisk(std::move(drv), lim);
  IoContext ctx(2);
  std::vector<std::byte> buf(16384);
  Iocb w = Iocb::pwrite(d.get(), buf.data(), buf.size(), 0, 1);
  ASSERT_EQ(SubmitOne(ctx, w), 1);
  IoEvent ev[2];
  EXPECT_EQ(ctx.get_events(1, ev, 10ms), 0) << "no event before the late piece";
  ASSERT_EQ(ctx.get_events(1, ev, 10s), 1);
  EXPECT_EQ(ev[0].res, -EIO) << "the late error, not the byte count";
  EXPECT_EQ(ctx.get_events(1, ev, 20ms), 0);
}

TEST(IoContextErrors, ARequestTheDriverRefusesFailsItsIocb) {
  class Refuser final : public RequestDriver {
   public:
    Status queue_rq(HwQueue&, Request& rq, bool) override {
      if (rq.pos() == 0) return Status::kProtection;
      rq.end_request_all(Status::kOk);
      return Status::kOk;
    }
  };
  auto d = MqDisk(std::make_unique<Refuser>(), TagSetConfig{});
  IoContext ctx(2);
  std::vector<std::byte> buf(4096);
  Iocb bad = Iocb::pread(d.get(), buf.data(), 4096, 0, 1);
  Iocb good = Iocb::pread(d.get(), buf.data(), 4096, 8192, 2);
  for (Iocb* cb : {&bad, &good}) ASSERT_EQ(SubmitOne(ctx, *cb), 1);
  IoEvent ev[2];
  ASSERT_EQ(ctx.get_events(2, ev, 10s), 2);
  for (const IoEvent& e : ev) EXPECT_EQ(e.res, e.user_data == 1 ? -EILSEQ : 4096);
}

// --- eventfd -------------------------------------------------------------------------

uint64_t ReadEventfd(int fd) {
  uint64_t v = 0;
  return read(fd, &v, sizeof v) == sizeof v ? v : 0;
}

TEST(IoContextEventfd, EachEventBumpsItsIocbsEventfdOnce) {
  DiskRegistry reg;
  auto d = reg.create("null:16M,completion=deferred");
  const int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  const int other = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  ASSERT_GE(other, 0);
  IoContext ctx(16);
  std::vector<std::byte> buf(512);
  std::vector<Iocb> cbs;
  for (uint64_t i = 0; i < 8; ++i) {
    cbs.push_back(Iocb::pread(d.get(), buf.data(), 512, 0, i));
    cbs.back().resfd = i < 5 ? efd : i < 7 ? other : -1;
  }
  std::vector<Iocb*> ptrs;
  for (Iocb& cb : cbs) ptrs.push_back(&cb);
  ASSERT_EQ(ctx.submit(ptrs), 8);

  // As an event loop would: wait for the eventfd, then reap without
  // waiting. Whatever the eventfd counted must be there to reap.
  uint64_t counted = 0;
  int reaped = 0;
  IoEvent ev[16];
  const auto deadline = Clock::now() + 10s;
  while (counted < 5 && Clock::now() < deadline) {
    pollfd p{efd, POLLIN, 0};
    if (poll(&p, 1, 100) != 1) continue;
    counted += ReadEventfd(efd);
    const int n = ctx.get_events(0, ev, 0ns);
    reaped += n;
    EXPECT_GE(uint64_t(reaped), counted) << "the eventfd ran ahead of the events";
  }
  EXPECT_EQ(counted, 5u);
  while (reaped < 8) {
    int n = ctx.get_events(1, ev, 10s);
    ASSERT_GT(n, 0);
    reaped += n;
  }
  EXPECT_EQ(ReadEventfd(efd), 0u) << "no more than one bump per event";
  EXPECT_EQ(ReadEventfd(other), 2u);
  close(efd);
  close(other);
}

// The signal is part of posting: by the time an event can be reaped its
// eventfd has been written, so a reaper that then closes the eventfd (or
// destroys the context) cannot have the completing thread touch it after.
// A full pipe stands in for a slow write and holds that thread inside it.
TEST(IoContextEventfd, AnEventIsReapableOnlyOnceItsSignalIsWritten) {
  DiskRegistry reg;
  auto d = reg.create("null:16M,completion=deferred");
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC | O_NONBLOCK), 0);
  std::vector<char> junk(65536);
  size_t filled = 0;
  for (ssize_t n; (n = write(fds[1], junk.data(), junk.size())) > 0;) filled += size_t(n);
  ASSERT_EQ(fcntl(fds[1], F_SETFL, 0), 0) << "writes block from now on";
  IoContext ctx(2);
  std::vector<std::byte> buf(512);
  Iocb cb = Iocb::pread(d.get(), buf.data(), 512, 0, 1);
  cb.resfd = fds[1];
  // The drainer starts first: when the completion thread lets go of the
  // kiocb before the submitter does, the submitter posts the event and is
  // the one held in the write until the pipe is drained.
  std::atomic<bool> drained{false};
  std::thread drainer([&] {
    std::this_thread::sleep_for(100ms);
    drained = true;
    size_t got = 0;
    while (got < filled + sizeof(uint64_t)) {
      const ssize_t n = read(fds[0], junk.data(), junk.size());
      if (n <= 0) break;
      got += size_t(n);
    }
  });
  EXPECT_EQ(SubmitOne(ctx, cb), 1);  // (no ASSERT: the drainer must be joined)
  IoEvent ev;
  EXPECT_EQ(ctx.get_events(1, {&ev, 1}, 10s), 1);
  EXPECT_TRUE(drained.load())
      << "the event could be reaped before its signal was written";
  drainer.join();
  close(fds[0]);
  close(fds[1]);
}

TEST(IoContextEventfd, CancelledIocbsSignalToo) {
  auto d = BioDisk(std::make_unique<ScriptedBioDriver>());
  const int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  IoContext ctx(2);
  AtExit thaw{[&] { d->unfreeze(); }};  // a no-op once unfrozen
  std::vector<std::byte> buf(512);
  d->freeze();
  Iocb cb = Iocb::pread(d.get(), buf.data(), 512, 0, 1);
  cb.resfd = efd;
  ASSERT_EQ(SubmitOne(ctx, cb), 1);
  EXPECT_EQ(ReadEventfd(efd), 0u);
  EXPECT_EQ(ctx.cancel(cb), 0);
  EXPECT_EQ(ReadEventfd(efd), 1u) << "posted by cancel itself";
  d->unfreeze();
  EXPECT_EQ(WaitOne(ctx).res, -ECANCELED);
  close(efd);
}

// --- many threads -------------------------------------------------------------------

// Four submitters and two reapers on one context, with a fifth thread
// cancelling at random: every accepted iocb yields exactly one event, and
// exactly the successful cancels yield -ECANCELED.
TEST(IoContextThreads, FourSubmittersTwoReapersAndACancellerCountEveryEvent) {
  DiskRegistry reg;
  std::vector<std::shared_ptr<Disk>> disks = {
      reg.create("null:64M,completion=deferred"),
      reg.create("null:64M,queue_mode=mq,depth=1,hw_queues=2,completion_nsec=30us"),
      reg.create("ram:8M,queue_mode=mq,depth=1"),
      reg.create("ram:8M"),
  };
  constexpr int kSubmitters = 4;
  constexpr int kPerThread = 6000;
  constexpr uint64_t kTotal = uint64_t{kSubmitters} * kPerThread;
  IoContext ctx(48);
  auto pattern = Pattern(8192, 1);
  std::vector<std::vector<std::byte>> scratch(kSubmitters, std::vector<std::byte>(8192));
  // Every iocb lives until the end, so the canceller may name any of them.
  std::vector<Iocb> iocbs(kTotal);
  // What each iocb does is drawn up front, so the canceller can aim at the
  // ones on the disk whose single tag makes bios wait (reads go to null
  // only: it leaves the shared buffers alone; writes come from one shared
  // pattern).
  enum Kind : uint8_t { kWrite, kRead, kFsync };
  struct Plan {
    Kind kind;
    uint8_t disk;
    uint16_t sectors;
    uint64_t off;
  };
  std::vector<Plan> plan(kTotal);
  std::mt19937 plan_rng(7);
  for (Plan& p : plan) {
    const unsigned r = plan_rng() % 4;
    p.kind = r < 2 ? kWrite : r == 2 ? kRead : kFsync;
    p.disk = static_cast<uint8_t>(plan_rng() % (p.kind == kRead ? 2 : disks.size()));
    p.sectors = static_cast<uint16_t>(1 + plan_rng() % 16);
    p.off = (plan_rng() % 1024) * 4096;
  }
  std::vector<std::atomic<int>> seen(kTotal);
  std::atomic<uint64_t> reaped{0}, bad{0}, ecanceled{0}, cancel_ok{0};
  std::atomic<bool> submitting{true};
  std::atomic<int> progress[kSubmitters] = {};  // iocbs each submitter has had accepted
  const auto deadline = Clock::now() + 20s;

  std::vector<std::thread> threads;
  for (int t = 0; t < kSubmitters; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      int i = 0;
      while (i < kPerThread) {
        const int batch = std::min<int>(1 + rng() % 4, kPerThread - i);
        Iocb* list[4];
        for (int k = 0; k < batch; ++k) {
          const uint64_t id = uint64_t(t) * kPerThread + i + k;
          const Plan& p = plan[id];
          Disk* d = disks[p.disk].get();
          Iocb& cb = iocbs[id];
          switch (p.kind) {
            case kWrite:
              cb = Iocb::pwrite(d, pattern.data(), p.sectors * 512u, p.off, id);
              break;
            case kRead:
              cb = Iocb::pread(d, scratch[t].data(), 4096, p.off, id);
              break;
            case kFsync:
              cb = Iocb::fsync(d, id);
              break;
          }
          list[k] = &cb;
        }
        int r = ctx.submit({list, size_t(batch)});
        if (r == -EAGAIN) {
          if (Clock::now() > deadline) {  // slots leaked: fail, do not hang
            bad.fetch_add(1);
            return;
          }
          std::this_thread::yield();
          continue;
        }
        if (r <= 0) {
          bad.fetch_add(1);
          return;
        }
        i += r;
        progress[t].store(i, std::memory_order_release);
      }
    });
  }
  threads.emplace_back([&] {
    std::mt19937 rng(99);
    while (submitting.load()) {
      // One of the last few a submitter had accepted: in flight, or its
      // event posted, or reaped (and its slot perhaps taken again).
      const int t = static_cast<int>(rng() % kSubmitters);
      const int p = progress[t].load(std::memory_order_acquire);
      if (p == 0) continue;
      const int back = 1 + static_cast<int>(rng() % std::min(p, 48));
      const uint64_t id = uint64_t(t) * kPerThread + uint64_t(p - back);
      if (plan[id].disk != 1 || plan[id].kind == kFsync) continue;
      int r = ctx.cancel(iocbs[id]);
      if (r == 0) {
        cancel_ok.fetch_add(1);
      } else if (r != -EINPROGRESS && r != -EINVAL) {
        bad.fetch_add(1);
      }
      std::this_thread::yield();
    }
  });
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      IoEvent ev[16];
      while (reaped.load() < kTotal && bad.load() == 0) {
        int n = ctx.get_events(1, ev, 50ms);
        for (int k = 0; k < n; ++k) {
          const IoEvent& e = ev[k];
          if (e.user_data >= kTotal || e.obj != &iocbs[e.user_data]) {
            bad.fetch_add(1);
            continue;
          }
          seen[e.user_data].fetch_add(1);
          if (e.res == -ECANCELED) ecanceled.fetch_add(1);
          const Iocb& cb = iocbs[e.user_data];
          const int64_t want = cb.op == IoOp::kFsync ? 0 : int64_t(cb.len);
          if (e.res != want && e.res != -ECANCELED) bad.fetch_add(1);
        }
        reaped.fetch_add(uint64_t(n));
      }
    });
  }
  for (int t = 0; t < kSubmitters; ++t) threads[t].join();
  MustHappen([&] { return reaped.load() >= kTotal || bad.load() != 0; },
             "all events reaped", 20s);
  submitting = false;
  for (auto& th : threads) {
    if (th.joinable()) th.join();
  }
  // After a failure, drain what is left, or abort rather than hang in the
  // context's destructor.
  IoEvent rest[16];
  MustHappen(
      [&] {
        ctx.get_events(0, rest, 1ms);
        return ctx.in_flight() == 0;
      },
      "the context drains", 5s);
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_EQ(reaped.load(), kTotal);
  for (uint64_t id = 0; id < kTotal; ++id) {
    ASSERT_EQ(seen[id].load(), 1) << "iocb " << id << " must have exactly one event";
  }
  EXPECT_EQ(ecanceled.load(), cancel_ok.load())
      << "one -ECANCELED event per successful cancel, and no other";
  EXPECT_GT(cancel_ok.load(), 10u) << "bios cancelled while waiting for a tag";
  std::printf("successful cancels: %llu\n",
              static_cast<unsigned long long>(cancel_ok.load()));
  EXPECT_EQ(ctx.in_flight(), 0u);
}

// --- coroutines ---------------------------------------------------------------------

Task<int64_t> CopyBlock(IoContext& ctx, Disk* from, Disk* to, std::byte* buf,
                        uint64_t len, uint64_t off) {
  int64_t n = co_await io_read(ctx, from, buf, len, off);
  if (n < 0) co_return n;
  co_return co_await io_write(ctx, to, buf, len, off);
}

Task<int64_t> CopyAndCheck(IoContext& ctx, Disk* from, Disk* to, uint64_t len,
                           uint64_t off) {
  std::vector<std::byte> buf(len), back(len);
  int64_t n = co_await CopyBlock(ctx, from, to, buf.data(), len, off);
  if (n < 0) co_return n;
  n = co_await io_read(ctx, to, back.data(), len, off);
  if (n < 0) co_return n;
  co_return back == buf ? n : -1;
}

TEST(IoCoro, SyncWaitRunsNestedTasksToTheEnd) {
  DiskRegistry reg;
  auto a = reg.create("ram:1M");
  auto b = reg.create("ram:1M,queue_mode=mq");
  IoContext ctx(4);
  auto data = Pattern(8192, 4);
  SyncIo io;
  ASSERT_EQ(io.pwrite(a.get(), data.data(), data.size(), 4096), 8192);
  EXPECT_EQ(sync_wait(ctx, CopyAndCheck(ctx, a.get(), b.get(), 8192, 4096)), 8192);
  std::vector<std::byte> back(8192);
  ASSERT_EQ(io.pread(b.get(), back.data(), back.size(), 4096), 8192);
  EXPECT_EQ(back, data);
  EXPECT_EQ(sync_wait(ctx, CopyAndCheck(ctx, a.get(), b.get(), 4096, 1 << 20)), -ERANGE)
      << "an error from the device comes back as -errno";
  EXPECT_EQ(ctx.in_flight(), 0u);
}

TEST(IoCoro, ARefusedSubmissionResumesAtOnceWithTheError) {
  DiskRegistry reg;
  auto d = reg.create("ram:1M");
  IoContext ctx(2);
  std::vector<std::byte> buf(512);
  auto task = [](IoContext& c, Disk* disk, std::byte* p) -> Task<int64_t> {
    co_return co_await io_read(c, disk, p, 512, 100);  // misaligned
  }(ctx, d.get(), buf.data());
  task.start();
  EXPECT_TRUE(task.done()) << "nothing to wait for";
  EXPECT_EQ(task.result(), -EINVAL);
}

TEST(IoCoro, AFullContextResumesWithEagainAndALaterTaskProceeds) {
  auto drv = std::make_unique<ScriptedBioDriver>(/*hold=*/true);
  ScriptedBioDriver& held = *drv;
  auto d = BioDisk(std::move(drv));
  IoContext ctx(1);
  AtExit release{[&] { held.release_all(); }};  // before ~IoContext waits
  std::vector<std::byte> buf(1024);
  auto read = [](IoContext& c, Disk* disk, std::byte* p) -> Task<int64_t> {
    co_return co_await io_read(c, disk, p, 512, 0);
  };
  Task<int64_t> first = read(ctx, d.get(), buf.data());
  Task<int64_t> second = read(ctx, d.get(), buf.data() + 512);
  first.start();
  EXPECT_FALSE(first.done()) << "suspended on its read";
  second.start();
  ASSERT_TRUE(second.done());
  EXPECT_EQ(second.result(), -EAGAIN) << "the one slot is taken";
  held.release_all();
  EXPECT_EQ(run_once(ctx), 1);
  ASSERT_TRUE(first.done());
  EXPECT_EQ(first.result(), 512);
}

TEST(IoCoro, ExceptionsPropagateThroughSyncWait) {
  DiskRegistry reg;
  auto d = reg.create("ram:1M");
  IoContext ctx(2);
  std::vector<std::byte> buf(512);
  auto thrower = [](IoContext& c, Disk* disk, std::byte* p) -> Task<int64_t> {
    int64_t n = co_await io_read(c, disk, p, 512, 0);
    if (n == 512) throw std::runtime_error("after the read");
    co_return n;
  };
  EXPECT_THROW(sync_wait(ctx, thrower(ctx, d.get(), buf.data())), std::runtime_error);
  EXPECT_EQ(ctx.in_flight(), 0u);
}

TEST(IoCoro, ManyTasksInterleaveOnOneContext) {
  DiskRegistry reg;
  auto slow = reg.create("null:64M,completion=timer,completion_nsec=200us");
  auto ram = reg.create("ram:8M,queue_mode=mq,depth=4");
  IoContext ctx(64);
  constexpr int kTasks = 24;
  auto worker = [](IoContext& c, Disk* s, Disk* r, int id) -> Task<int64_t> {
    std::vector<std::byte> buf(4096), back(4096);
    int64_t total = 0;
    for (int i = 0; i < 8; ++i) {
      const uint64_t off = (uint64_t(id) * 8 + i) * 4096;
      FillPattern(buf.data(), buf.size(), off);
      if (co_await io_read(c, s, back.data(), 4096, off) != 4096) co_return -1;
      if (co_await io_write(c, r, buf.data(), 4096, off) != 4096) co_return -2;
      if (co_await io_read(c, r, back.data(), 4096, off) != 4096) co_return -3;
      if (back != buf) co_return -4;
      if (co_await io_fsync(c, r) != 0) co_return -5;
      total += 4096;
    }
    co_return total;
  };
  std::vector<Task<int64_t>> tasks;
  for (int i = 0; i < kTasks; ++i) tasks.push_back(worker(ctx, slow.get(), ram.get(), i));
  for (auto& t : tasks) t.start();
  const auto deadline = Clock::now() + 20s;
  auto all_done = [&] {
    return std::all_of(tasks.begin(), tasks.end(), [](auto& t) { return t.done(); });
  };
  while (!all_done() && Clock::now() < deadline) run_once(ctx);
  ASSERT_TRUE(all_done());
  for (auto& t : tasks) EXPECT_EQ(t.result(), 8 * 4096);
  EXPECT_EQ(ctx.in_flight(), 0u);
}

TEST(IoCoro, AnyIocbCanBeAwaited) {
  DiskRegistry reg;
  auto d = reg.create("ram:1M");
  IoContext ctx(2);
  auto data = Pattern(2048, 8);
  iovec iov[3] = {
      {data.data(), 1000}, {data.data() + 1000, 24}, {data.data() + 1024, 1024}};
  auto task = [](IoContext& c, Iocb cb) -> Task<int64_t> {
    co_return co_await io_submit_one(c, cb);
  };
  EXPECT_EQ(sync_wait(ctx, task(ctx, MakeVec(IoOp::kPwritev, d.get(), iov, 3, 0))), 2048);
  EXPECT_EQ(
      sync_wait(ctx, task(ctx, MakeIocb(IoOp::kWriteZeroes, d.get(), nullptr, 512, 0))),
      0);
}

// --- SyncIo ----------------------------------------------------------------------------

TEST(SyncIo, ReadsWritesAndFlushesReturnBytesOrErrno) {
  DiskRegistry reg;
  auto d = reg.create("ram:1M");
  auto ro = reg.create("ram:1M,ro=1");
  SyncIo io;
  auto data = Pattern(4096, 2);
  std::vector<std::byte> back(4096);
  EXPECT_EQ(io.pwrite(d.get(), data.data(), 4096, 8192), 4096);
  EXPECT_EQ(io.pread(d.get(), back.data(), 4096, 8192), 4096);
  EXPECT_EQ(back, data);
  EXPECT_EQ(io.fsync(d.get()), 0);
  EXPECT_EQ(io.pread(d.get(), back.data(), 4096, 100), -EINVAL);
  EXPECT_EQ(io.pread(d.get(), back.data(), 4096, 1 << 20), -ERANGE);
  EXPECT_EQ(io.pwrite(ro.get(), data.data(), 4096, 0), -EROFS);
  EXPECT_EQ(io.pread(nullptr, back.data(), 4096, 0), -EBADF);
  iovec iov[2] = {{back.data(), 2048}, {back.data() + 2048, 2048}};
  std::fill(back.begin(), back.end(), std::byte{0});
  EXPECT_EQ(io.run(MakeVec(IoOp::kPreadv, d.get(), iov, 2, 8192)), 4096);
  EXPECT_EQ(back, data);
  EXPECT_EQ(io.run(MakeIocb(IoOp::kDiscard, d.get(), nullptr, 4096, 8192)), 0);
  EXPECT_EQ(io.pread(d.get(), back.data(), 4096, 8192), 4096);
  EXPECT_TRUE(AllZero(back.data(), back.size()));
}

TEST(SyncIo, ManyCallsReuseTheOneSlot) {
  DiskRegistry reg;
  auto d = reg.create("null:16M,completion=deferred");
  SyncIo io;
  std::vector<std::byte> buf(512);
  for (int i = 0; i < 2000; ++i)
    ASSERT_EQ(io.pread(d.get(), buf.data(), 512, 0), 512) << i;
}

}  // namespace
}  // namespace blkstack
