// IoContext against a model (seed 002's bug, looked for at random): over
// 100k iocbs of random ops, sizes, flags, batches and iovec layouts on ram
// and null disks in both queue modes, and on test devices that fail pieces
// at random, inline or late from other threads, behind small limits that
// split every iocb into chained pieces; with random cancels, cancels of
// bios parked on a frozen disk, and invalid iocbs mixed into batches.
//
// Checked for every iocb: submit() accepts exactly the ones expected (up to
// the first invalid one or the first that does not fit); each accepted iocb
// yields exactly one event, naming it; a refused one never does; the event
// carries the byte count, or an errno the iocb could have met (one that a
// piece of it was failed with, -ECANCELED after a successful cancel,
// -EAGAIN for NOWAIT on a queue short of tags) and never a count when a
// piece failed or it was cancelled; data read from ram matches what the
// model says was written; and the context and disks end with nothing in
// flight.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "aio_test_util.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/hw_queue.h"
#include "blkstack/io_context.h"
#include "blkstack/io_coro.h"

namespace blkstack {
namespace {

using namespace aio_testing;

// Each iocb in flight owns a region of its disk, so neither the ram model
// nor the record of injected errors is shared by two iocbs at once.
constexpr uint64_t kRegionBytes = 128 * 1024;
constexpr uint64_t kRegionSectors = kRegionBytes >> kSectorShift;
constexpr size_t kMaxRegions = 128;
constexpr unsigned kMaxEvents = 64;
constexpr uint64_t kIocbsWanted = 100'000;

constexpr Status kInjectable[] = {Status::kIoError,   Status::kMedium,
                                  Status::kNoSpace,   Status::kTimeout,
                                  Status::kTransport, Status::kProtection};

unsigned long long ull(uint64_t v) { return v; }

uint32_t Bit(Status s) { return 1u << static_cast<unsigned>(s); }

// The errors a faulty device gave the pieces of each region, one bit per
// Status. Recorded before the piece completes, so before its iocb's event.
class Injections {
 public:
  explicit Injections(size_t regions) : bits_(regions) {}
  void record(uint64_t sector, Status s) {
    bits_[sector / kRegionSectors].fetch_or(Bit(s), std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
  }
  uint32_t take(size_t region) { return bits_[region].exchange(0); }
  uint64_t count() const { return count_.load(); }

 private:
  std::vector<std::atomic<uint32_t>> bits_;
  std::atomic<uint64_t> count_{0};
};

// What a faulty device does with one piece.
struct Plan {
  Status status = Status::kOk;
  bool inline_done = false;  // completed inside submit/queue_rq
  bool refuse = false;       // mq: queue_rq returns the error itself
  bool resource = false;     // mq: kResource, requeued (busy is no error)
  unsigned thread = 0;       // which completion thread
  std::chrono::microseconds delay{0};
};

class Planner {
 public:
  explicit Planner(uint64_t seed) : rng_(seed) {}
  Plan next(bool may_fail, bool mq) {
    std::lock_guard lock(mu_);
    Plan p;
    if (mq && rng_() % 50 == 0) {
      p.resource = true;
      return p;
    }
    if (may_fail && rng_() % 14 == 0) {
      p.status = kInjectable[rng_() % std::size(kInjectable)];
      p.refuse = mq && rng_() % 4 == 0;
    }
    p.inline_done = rng_() % 3 == 0;
    p.thread = rng_() % 2;
    p.delay = std::chrono::microseconds(rng_() % 300);
    return p;
  }

 private:
  std::mutex mu_;
  std::mt19937_64 rng_;
};

// A bio-based device that fails pieces at random, inline or later (late
// errors) on one of two threads of its own. Flushes always succeed.
class FaultyBioDriver final : public BioDriver {
 public:
  FaultyBioDriver(Injections& inj, uint64_t seed) : inj_(inj), planner_(seed) {}
  void submit(Bio& bio) override {
    const Plan p = planner_.next(bio.op() != Op::kFlush, false);
    if (p.status != Status::kOk) inj_.record(bio.sector(), p.status);
    if (p.inline_done) {
      bio.complete(p.status);
      return;
    }
    later_[p.thread].at(Clock::now() + p.delay,
                        [&bio, s = p.status] { bio.complete(s); });
  }

 private:
  Injections& inj_;
  Planner planner_;
  Deferrer later_[2];
};

// The same behind a request queue: requests may also be refused outright by
// queue_rq with an error, or with kResource (then requeued).
class FaultyRqDriver final : public RequestDriver {
 public:
  FaultyRqDriver(Injections& inj, uint64_t seed) : inj_(inj), planner_(seed) {}
  Status queue_rq(HwQueue&, Request& rq, bool) override {
    const Plan p = planner_.next(rq.op() != Op::kFlush, true);
    if (p.resource) return Status::kResource;
    // A merged request fails every bio in it: record each one's region.
    if (p.status != Status::kOk) {
      rq.for_each_bio([&](const Bio& b) { inj_.record(b.sector(), p.status); });
    }
    if (p.refuse) return p.status;
    if (p.inline_done) {
      rq.end_request_all(p.status);
      return Status::kOk;
    }
    later_[p.thread].at(Clock::now() + p.delay,
                        [&rq, s = p.status] { rq.end_request_all(s); });
    return Status::kOk;
  }

 private:
  Injections& inj_;
  Planner planner_;
  Deferrer later_[2];
};

QueueLimits FaultyLimits(bool mq) {
  QueueLimits lim;
  lim.max_sectors = 8;  // 4 KiB: most iocbs become several chained pieces
  if (mq) lim.max_segments = 4;
  lim.max_discard_sectors = 16;
  lim.max_write_zeroes_sectors = 16;
  lim.discard_granularity = 512;
  lim.volatile_write_cache = true;  // flushes and FUA reach the device
  lim.fua = true;
  return lim;
}

struct Target {
  std::string what;
  std::unique_ptr<Injections> inj;  // before the disk: its driver records here
  std::shared_ptr<Disk> disk;
  bool mq = false;
  bool ram = false;
  bool faulty = false;
  size_t regions = 0;
  std::vector<uint8_t> region_busy;
  std::vector<std::byte> model;  // ram: what the disk holds
  std::vector<uint8_t> known;    // ram, per sector: the model is exact there
};

struct Slot {
  Iocb cb;
  std::unique_ptr<AlignedBuf> buf;
  std::vector<iovec> iov;
  std::byte* data = nullptr;  // where the bytes of a read or write start
  bool in_flight = false;
  uint64_t id = 0;
  int target = -1;
  int region = -1;
  int64_t bytes = 0;  // res on success
  bool nowait = false;
  bool cancelled = false;      // cancel() returned 0
  bool frozen_cancel = false;  // ... while parked on a frozen disk
};

bool IsWrite(IoOp op) { return op == IoOp::kPwrite || op == IoOp::kPwritev; }
bool IsRead(IoOp op) { return op == IoOp::kPread || op == IoOp::kPreadv; }
bool IsFlush(IoOp op) { return op == IoOp::kFsync || op == IoOp::kFdsync; }

class Harness {
 public:
  explicit Harness(uint64_t seed) : rng_(seed), ctx_(kMaxEvents) {
    add("ram:16M", false, true);
    add("ram:16M,queue_mode=mq,depth=4", true, true);
    add("ram:16M,queue_mode=mq,depth=2,hw_queues=2,max_sectors=16", true, true);
    add("null:1G,completion=deferred", false, false);
    add("null:1G,queue_mode=mq,depth=2,hw_queues=2,completion=deferred", true, false);
    add("null:1G,queue_mode=mq", true, false);
    add_faulty(false, seed + 1);
    add_faulty(true, seed + 2);
    slots_.resize(kMaxEvents + 8);
    for (Slot& s : slots_) s.buf = std::make_unique<AlignedBuf>(kRegionBytes + 8192);
  }

  ~Harness() {
    // Whatever happened, nothing may stay in flight into freed slots.
    drain();
  }

  void run() {
    uint64_t batches = 0;
    while (accepted_ < kIocbsWanted && !::testing::Test::HasFatalFailure() &&
           failures_ < 20) {
      if (++batches % 300 == 0) frozen_round();
      if (batches % 500 == 250) fill_round();
      submit_batch();
      maybe_cancel();
      reap_some();
    }
    drain();
    check_end();
  }

  uint64_t accepted() const { return accepted_; }

 private:
  void add(const std::string& spec, bool mq, bool ram) {
    Target t;
    t.what = spec;
    t.disk = reg_.create(spec);
    t.mq = mq;
    t.ram = ram;
    finish_add(t);
  }

  void add_faulty(bool mq, uint64_t seed) {
    Target t;
    t.what = mq ? "faulty mq" : "faulty bio";
    t.mq = mq;
    t.faulty = true;
    const uint64_t sectors = (16 << 20) >> kSectorShift;
    t.inj = std::make_unique<Injections>(sectors / kRegionSectors);
    if (mq) {
      TagSetConfig cfg;
      cfg.queue_depth = 3;
      cfg.nr_hw_queues = 2;
      t.disk = MqDisk(std::make_unique<FaultyRqDriver>(*t.inj, seed), cfg,
                      FaultyLimits(true), sectors, "faulty-mq");
    } else {
      t.disk = BioDisk(std::make_unique<FaultyBioDriver>(*t.inj, seed),
                       FaultyLimits(false), sectors, "faulty-bio");
    }
    finish_add(t);
  }

  void finish_add(Target& t) {
    t.regions = std::min<size_t>(kMaxRegions, t.disk->size_bytes() / kRegionBytes);
    t.region_busy.assign(t.regions, 0);
    if (t.ram) {
      t.model.assign(t.disk->size_bytes(), std::byte{0});
      t.known.assign(t.disk->capacity(), 1);  // a fresh ram disk reads zeroes
    }
    targets_.push_back(std::move(t));
  }

  void fail(const std::string& why) {
    ADD_FAILURE() << why;
    ++failures_;
  }

  uint64_t rnd(uint64_t n) { return rng_() % n; }
  bool chance(unsigned one_in) { return rng_() % one_in == 0; }

  Slot* free_slot() {
    for (size_t i = 0, start = rnd(slots_.size()); i < slots_.size(); ++i) {
      Slot& s = slots_[(start + i) % slots_.size()];
      if (!s.in_flight && s.target < 0) return &s;
    }
    return nullptr;
  }

  int free_region(Target& t) {
    for (size_t i = 0, start = rnd(t.regions); i < t.regions; ++i) {
      size_t r = (start + i) % t.regions;
      if (!t.region_busy[r]) return static_cast<int>(r);
    }
    return -1;
  }

  // Builds a random iocb in `s` (reserving a region); returns the errno
  // submit() must refuse it with, or 0 if it is valid.
  int build(Slot& s, int ti, bool allow_invalid, bool allow_nowait) {
    Target& t = targets_[ti];
    static constexpr IoOp kOps[] = {IoOp::kPread,  IoOp::kPread,   IoOp::kPwrite,
                                    IoOp::kPwrite, IoOp::kPreadv,  IoOp::kPwritev,
                                    IoOp::kPreadv, IoOp::kPwritev, IoOp::kFsync,
                                    IoOp::kFdsync, IoOp::kDiscard, IoOp::kWriteZeroes};
    const IoOp op = allow_invalid || allow_nowait
                        ? kOps[rnd(std::size(kOps))]
                        : (chance(2) ? IoOp::kPread : IoOp::kPwrite);
    s.target = ti;
    s.region = -1;
    s.nowait = allow_nowait && chance(10);
    s.cancelled = s.frozen_cancel = false;
    s.iov.clear();
    s.data = nullptr;
    Iocb& cb = s.cb;
    cb = Iocb{};
    cb.op = op;
    cb.disk = t.disk.get();
    if (s.nowait) cb.flags |= kIocbNowait;
    if (IsWrite(op) && chance(10)) cb.flags |= kIocbDsync;
    if (chance(20)) cb.flags |= kIocbHipri;
    s.bytes = 0;
    if (IsFlush(op)) return 0;

    s.region = free_region(t);
    if (s.region < 0) return -1;  // caller picks another disk
    t.region_busy[s.region] = 1;
    if (t.inj) t.inj->take(s.region);  // nothing of an earlier iocb is left

    // Sizes: mostly small; on faulty disks mostly several pieces.
    uint64_t sectors;
    if (t.faulty) {
      sectors = chance(4) ? 1 + rnd(8) : 9 + rnd(56);
    } else {
      sectors = chance(3) ? 1 + rnd(kRegionSectors) : 1 + rnd(16);
    }
    const uint64_t region_start = uint64_t(s.region) * kRegionSectors;
    const uint64_t sector = region_start + rnd(kRegionSectors - sectors + 1);
    cb.offset = sector << kSectorShift;
    const uint64_t len = sectors << kSectorShift;
    const bool direct = chance(5);
    if (direct) cb.flags |= kIocbDirect;

    if (op == IoOp::kDiscard || op == IoOp::kWriteZeroes) {
      cb.len = len;
      return invalidate(s, allow_invalid);
    }
    // Buffered I/O may start anywhere in memory.
    s.data = s.buf->data() + (direct ? 0 : rnd(64));
    if (IsWrite(op)) FillPattern(s.data, len, rng_());
    if (IsRead(op)) std::memset(s.data, 0xee, len);  // stale bytes must not survive
    s.bytes = static_cast<int64_t>(len);
    if (op == IoOp::kPread || op == IoOp::kPwrite) {
      cb.buf = s.data;
      cb.len = len;
      return invalidate(s, allow_invalid);
    }
    // Vectored: whole sectors per iovec for direct I/O and on the faulty
    // disks (whose tiny limits need sector cut points); any byte count,
    // zero included, on ram and null.
    const bool whole_sectors = direct || t.faulty;
    const unsigned n = 1 + static_cast<unsigned>(rnd(chance(8) ? 40 : 12));
    std::vector<uint64_t> cuts = {0, len};
    for (unsigned i = 1; i < n; ++i) {
      uint64_t c = whole_sectors ? rnd(sectors + 1) << kSectorShift : rnd(len + 1);
      cuts.push_back(c);
    }
    std::sort(cuts.begin(), cuts.end());
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      const uint64_t piece = cuts[i + 1] - cuts[i];
      if (piece == 0 && whole_sectors) continue;
      s.iov.push_back({s.data + cuts[i], piece});
    }
    cb.iov = s.iov.data();
    cb.iovcnt = static_cast<unsigned>(s.iov.size());
    return invalidate(s, allow_invalid);
  }

  // Now and then spoils a valid iocb in one of the ways submit() refuses.
  int invalidate(Slot& s, bool allow) {
    if (!allow || !chance(25)) return 0;
    Iocb& cb = s.cb;
    switch (rnd(4)) {
      case 0:
        cb.offset += 1 + rnd(511);
        return -EINVAL;
      case 1:
        cb.disk = nullptr;
        return -EBADF;
      case 2:
        if (cb.op == IoOp::kPread || cb.op == IoOp::kPwrite) {
          // Direct I/O from memory off a 512-byte boundary (the buffer is
          // 4 KiB aligned and has room past the end).
          cb.flags |= kIocbDirect;
          cb.buf = s.buf->data() + 1 + rnd(511);
          return -EINVAL;
        }
        [[fallthrough]];
      default:
        if (cb.op == IoOp::kPread || cb.op == IoOp::kPwrite || cb.op == IoOp::kDiscard) {
          cb.len -= 1 + rnd(511);
          return -EINVAL;
        }
        cb.offset += 1 + rnd(511);
        return -EINVAL;
    }
  }

  void release(Slot& s) {
    if (s.region >= 0) targets_[s.target].region_busy[s.region] = 0;
    s.region = -1;
    s.target = -1;
    s.in_flight = false;
  }

  // Builds and submits a batch; checks submit()'s count against the rule.
  void submit_batch(int only_target = -1, bool frozen = false) {
    const unsigned n =
        frozen ? 1 + static_cast<unsigned>(rnd(4)) : 1 + static_cast<unsigned>(rnd(8));
    std::vector<Slot*> batch;
    std::vector<int> errs;
    for (unsigned i = 0; i < n; ++i) {
      Slot* s = free_slot();
      if (!s) break;
      int err = -1;
      for (int tries = 0; err == -1 && tries < 8; ++tries) {
        const int ti =
            only_target >= 0 ? only_target : static_cast<int>(rnd(targets_.size()));
        err = build(*s, ti, !frozen, !frozen);
        if (err == -1) s->target = -1;
      }
      if (err == -1) break;
      batch.push_back(s);
      errs.push_back(err);
    }
    if (batch.empty()) return;

    // submit() accepts in order until one is invalid or does not fit.
    int expected = 0;
    const unsigned room = kMaxEvents - ctx_.in_flight();  // only we reap
    for (size_t i = 0; i < batch.size(); ++i) {
      if (errs[i] != 0) {
        if (expected == 0) expected = errs[i];
        ++stopped_at_invalid_;
        break;
      }
      if (unsigned(expected) >= room) {
        if (expected == 0) expected = -EAGAIN;
        ++stopped_by_room_;
        break;
      }
      ++expected;
    }
    std::vector<Iocb*> list;
    for (size_t i = 0; i < batch.size(); ++i) {
      Slot& s = *batch[i];
      s.id = (++generation_ << 16) | uint64_t(&s - slots_.data());
      s.cb.user_data = s.id;
      list.push_back(&s.cb);
    }
    const int r = ctx_.submit(list);
    if (r != expected) {
      fail("submit returned " + std::to_string(r) + ", expected " +
           std::to_string(expected) + " (batch of " + std::to_string(batch.size()) + ")");
    }
    const size_t taken = r > 0 ? size_t(r) : 0;  // what the context now holds
    for (size_t i = 0; i < batch.size(); ++i) {
      if (i < taken) {
        batch[i]->in_flight = true;
        ++accepted_;
      } else {
        release(*batch[i]);
      }
    }
    if (r == -EAGAIN) ++eagain_submits_;
  }

  void maybe_cancel() {
    if (!chance(3)) return;
    Slot& s = slots_[rnd(slots_.size())];
    const int r = ctx_.cancel(s.cb);
    if (!s.in_flight) {
      if (r != -EINVAL)
        fail("cancel of an iocb not in flight returned " + std::to_string(r));
      return;
    }
    if (r == 0) {
      if (s.cancelled) fail("an iocb was cancelled twice");
      s.cancelled = true;
      ++cancels_;
    } else if (r != -EINPROGRESS && r != -EINVAL) {
      fail("cancel returned " + std::to_string(r));
    }
  }

  void reap_some() {
    IoEvent ev[32];
    const unsigned in_flight = ctx_.in_flight();
    const size_t max = 1 + rnd(std::size(ev));
    int n = 0;
    if (in_flight == kMaxEvents && chance(3)) return;  // the next batch: -EAGAIN
    if (in_flight == kMaxEvents || free_slot() == nullptr) {
      if (chance(4)) try_submit_when_full();
      n = ctx_.get_events(1, {ev, max}, 10s);
      if (n < 1) MustHappen([] { return false; }, "an event from a full context", 0ms);
    } else {
      switch (rnd(4)) {
        case 0:
          n = ctx_.get_events(0, {ev, max}, 0ns);
          break;
        case 1:
          n = ctx_.get_events(1, {ev, max}, 200us);
          break;
        case 2:
          break;
        default:
          if (in_flight >= kMaxEvents / 2) {
            const unsigned min = 1 + static_cast<unsigned>(rnd(std::min<size_t>(4, max)));
            n = ctx_.get_events(min, {ev, max}, 10s);
            if (n < int(min))
              fail("get_events returned fewer than min before the timeout");
          }
          break;
      }
    }
    for (int i = 0; i < n; ++i) check_event(ev[i]);
  }

  // With every slot taken, even a valid iocb is refused with -EAGAIN.
  void try_submit_when_full() {
    if (ctx_.in_flight() != kMaxEvents) return;
    Slot* s = free_slot();
    if (!s) return;
    Iocb probe = Iocb::fsync(targets_[0].disk.get(), ~0ull);
    if (SubmitOne(ctx_, probe) != -EAGAIN) {
      fail("a full context accepted an iocb");
      MustHappen([] { return false; }, "a full context refuses", 0ms);
    }
  }

  void check_event(const IoEvent& ev) {
    const size_t index = ev.user_data & 0xffff;
    if (index >= slots_.size() || !slots_[index].in_flight ||
        slots_[index].id != ev.user_data) {
      fail("an event for no iocb in flight: user_data " + std::to_string(ev.user_data));
      return;
    }
    Slot& s = slots_[index];
    Target& t = targets_[s.target];
    if (ev.obj != &s.cb) fail("the event names another iocb");
    if (ev.res2 != 0) fail("res2 is not 0");
    ++events_;

    // The errnos this iocb could have met.
    uint32_t injected = (t.inj && s.region >= 0) ? t.inj->take(s.region) : 0;
    std::vector<int> allowed;
    for (Status st : kInjectable) {
      if (injected & Bit(st)) allowed.push_back(status_to_errno(st));
    }
    if (s.cancelled) allowed.push_back(ECANCELED);
    if (s.nowait && t.mq) allowed.push_back(EAGAIN);
    const bool must_fail = injected != 0 || s.cancelled;
    const std::string about = t.what + " op " + std::to_string(int(s.cb.op)) + " at " +
                              std::to_string(s.cb.offset) + ": res " +
                              std::to_string(ev.res);
    if (ev.res >= 0) {
      if (must_fail)
        fail("success although a piece failed or it was cancelled; " + about);
      if (ev.res != s.bytes)
        fail("wrong byte count, expected " + std::to_string(s.bytes) + "; " + about);
    } else {
      if (std::find(allowed.begin(), allowed.end(), int(-ev.res)) == allowed.end()) {
        fail("an errno it could not have met; " + about);
      }
      if (ev.res == -ECANCELED) ++ecanceled_;
      if (s.cancelled && ev.res != -ECANCELED) ++cancelled_other_error_;
      if (ev.res == -EAGAIN) ++eagain_events_;
      if (injected) ++failed_events_;
    }
    if (s.frozen_cancel && ev.res != -ECANCELED) {
      fail("cancelled while parked on a frozen disk, yet " + about);
    }
    if (t.ram) model_update(s, t, ev.res >= 0);
    release(s);
  }

  void model_update(const Slot& s, Target& t, bool ok) {
    const IoOp op = s.cb.op;
    if (IsFlush(op)) return;
    const uint64_t off = s.cb.offset;
    const uint64_t len =
        op == IoOp::kDiscard || op == IoOp::kWriteZeroes ? s.cb.len : uint64_t(s.bytes);
    const uint64_t first = off >> kSectorShift, count = len >> kSectorShift;
    if (IsRead(op)) {
      if (!ok) return;
      for (uint64_t i = 0; i < count; ++i) {
        if (!t.known[first + i]) continue;
        if (std::memcmp(s.data + (i << kSectorShift),
                        t.model.data() + off + (i << kSectorShift), kSectorSize) != 0) {
          fail(t.what + ": read at " + std::to_string(off) +
               " differs from the model at sector " + std::to_string(first + i));
          return;
        }
      }
      ++verified_reads_;
      return;
    }
    if (!ok) {
      // Some pieces may have landed: the bytes are unknown now, unless it
      // never left the frozen disk.
      if (!s.frozen_cancel) std::fill_n(t.known.begin() + first, count, 0);
      return;
    }
    if (IsWrite(op)) {
      std::memcpy(t.model.data() + off, s.data, len);
    } else {
      std::memset(t.model.data() + off, 0, len);
    }
    std::fill_n(t.known.begin() + first, count, 1);
  }

  // Submits without reaping until every slot is taken (events not yet
  // reaped hold theirs), then once more: that batch must get -EAGAIN.
  void fill_round() {
    while (ctx_.in_flight() < kMaxEvents && failures_ == 0) submit_batch();
    submit_batch();
  }

  // Freezes an idle disk, parks a few iocbs on it, cancels most of them:
  // those must end with exactly -ECANCELED and never reach the device.
  void frozen_round() {
    const int ti = static_cast<int>(rnd(targets_.size()));
    Target& t = targets_[ti];
    // Room for the parked ones without reaping while frozen.
    IoEvent ev[32];
    while (ctx_.in_flight() > kMaxEvents - 8) {
      const int n = ctx_.get_events(1, ev, 10s);
      if (n < 1) MustHappen([] { return false; }, "events before a freeze", 0ms);
      for (int i = 0; i < n; ++i) check_event(ev[i]);
    }
    t.disk->freeze();  // waits for the disk's I/O in flight
    std::vector<bool> before(slots_.size());
    for (size_t i = 0; i < slots_.size(); ++i) before[i] = slots_[i].in_flight;
    submit_batch(ti, /*frozen=*/true);
    for (size_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      if (!s.in_flight || before[i] || chance(3)) continue;  // most, not all
      const int r = ctx_.cancel(s.cb);
      if (r != 0) {
        fail(t.what + ": cancel of an iocb parked on a frozen disk returned " +
             std::to_string(r));
        continue;
      }
      s.cancelled = s.frozen_cancel = true;
      ++frozen_cancels_;
    }
    t.disk->unfreeze();
  }

  void drain() {
    IoEvent ev[32];
    while (ctx_.in_flight() > 0) {
      const int n = ctx_.get_events(1, ev, 20s);
      if (n < 1) MustHappen([] { return false; }, "the remaining events", 0ms);
      for (int i = 0; i < n; ++i) check_event(ev[i]);
    }
  }

  void check_end() {
    for (const Slot& s : slots_) {
      if (s.in_flight) fail("an accepted iocb never had its event");
    }
    EXPECT_EQ(ctx_.in_flight(), 0u);
    EXPECT_EQ(events_, accepted_) << "one event per accepted iocb";
    for (Target& t : targets_) {
      EXPECT_EQ(t.disk->in_flight(), 0u) << t.what;
      if (!t.ram) continue;
      // The whole disk against the model, one region at a time.
      SyncIo io;
      AlignedBuf back(kRegionBytes);
      for (uint64_t off = 0; off < t.disk->size_bytes(); off += kRegionBytes) {
        ASSERT_EQ(io.pread(t.disk.get(), back.data(), kRegionBytes, off),
                  int64_t(kRegionBytes));
        for (uint64_t i = 0; i < kRegionSectors; ++i) {
          const uint64_t at = off + (i << kSectorShift);
          if (t.known[at >> kSectorShift] &&
              std::memcmp(back.data() + (i << kSectorShift), t.model.data() + at, 512) !=
                  0) {
            ADD_FAILURE() << t.what << ": sector " << (at >> kSectorShift)
                          << " differs from the model at the end";
            return;
          }
        }
      }
    }
    // The run must have met what it is meant to test.
    uint64_t injected = 0;
    for (Target& t : targets_) injected += t.inj ? t.inj->count() : 0;
    std::printf(
        "iocbs %llu, pieces failed %llu, iocbs failed %llu, cancels %llu (frozen %llu), "
        "-EAGAIN events %llu, batches stopped at invalid %llu / by room %llu (-EAGAIN "
        "%llu), "
        "reads verified %llu\n",
        ull(accepted_), ull(injected), ull(failed_events_), ull(cancels_),
        ull(frozen_cancels_), ull(eagain_events_), ull(stopped_at_invalid_),
        ull(stopped_by_room_), ull(eagain_submits_), ull(verified_reads_));
    EXPECT_GT(injected, 1000u) << "pieces failed by the faulty devices";
    EXPECT_GT(failed_events_, 500u) << "iocbs failed by a piece";
    EXPECT_GT(cancels_, 20u) << "iocbs cancelled while waiting for a tag";
    EXPECT_EQ(ecanceled_ + cancelled_other_error_, cancels_ + frozen_cancels_)
        << "every cancelled iocb fails: -ECANCELED, or a piece's error that came first";
    EXPECT_GT(frozen_cancels_, 50u);
    EXPECT_GT(eagain_events_, 20u) << "NOWAIT iocbs short of a tag";
    EXPECT_GT(eagain_submits_, 10u) << "batches refused by a full context";
    EXPECT_GT(stopped_by_room_, eagain_submits_) << "batches cut short by a full context";
    EXPECT_GT(stopped_at_invalid_, 1000u) << "batches stopped at an invalid iocb";
    EXPECT_GT(verified_reads_, 10'000u);
  }

  std::mt19937_64 rng_;
  DiskRegistry reg_;  // before the context: disks outlive it
  std::vector<Target> targets_;
  std::vector<Slot> slots_;
  IoContext ctx_;
  uint64_t generation_ = 0;
  uint64_t accepted_ = 0, events_ = 0, stopped_at_invalid_ = 0, stopped_by_room_ = 0;
  uint64_t eagain_submits_ = 0, cancelled_other_error_ = 0;
  uint64_t cancels_ = 0, frozen_cancels_ = 0, ecanceled_ = 0, eagain_events_ = 0;
  uint64_t failed_events_ = 0, verified_reads_ = 0;
  int failures_ = 0;
};

TEST(IoContextProperty, OneEventPerIocbUnderErrorsSplitsAndCancellation) {
  Harness h(20240601);
  h.run();
  EXPECT_GE(h.accepted(), kIocbsWanted);
}

}  // namespace
}  // namespace blkstack
