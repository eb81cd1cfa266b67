// Helpers shared by the multi-queue tests: a request driver the test can
// steer (hold requests and complete them later, refuse with kResource or
// kDeviceResource, complete on a thread of its own), that keeps the data it
// is given and a "durable" copy for flush tests, and checks every request it
// sees against the queue limits; bios that record their completions; and
// waits with a deadline.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/hw_queue.h"
#include "blkstack/driver/queue.h"
#include "blkstack/driver/request.h"
#include "blkstack/driver/request_driver.h"
#include "blkstack/limits.h"
#include "blkstack/submit.h"
#include "queue/tag_set.h"
#include "test_wait.h"

namespace blkstack::mq_testing {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using testing_util::Eventually;
using testing_util::MustHappen;

// The limits a request must respect, and how it must be built: bios
// contiguous from pos(), sizes adding up to bytes(), no PREFLUSH (the flush
// machine takes it off), FUA only on a device that has native FUA. Returns
// what is wrong, or an empty string.
inline std::string CheckRequest(const Request& rq, const QueueLimits& lim) {
  std::string why;
  auto add = [&](const std::string& s) { why += (why.empty() ? "" : "; ") + s; };
  if (rq.has_flag(BioFlag::kPreflush)) add("PREFLUSH reached the driver");
  if (rq.has_flag(BioFlag::kFua) && !(lim.fua && lim.volatile_write_cache))
    add("FUA reached a driver without native FUA");
  if (rq.op() == Op::kFlush) {
    if (rq.bytes() != 0) add("flush with data");
    return why;
  }
  uint64_t sector = rq.pos();
  uint64_t bytes = 0;
  unsigned segments = 0;
  unsigned bios = 0;
  rq.for_each_bio([&](const Bio& b) {
    ++bios;
    if (b.op() != rq.op()) add("bio of another op");
    if (b.sector() != sector) add("bios not contiguous");
    sector = b.end_sector();
    bytes += b.size();
    if (op_has_data(b.op())) {
      b.for_each_chunk([&](const BioChunk& c) {
        segments += (c.len + lim.max_segment_size - 1) / lim.max_segment_size;
      });
    }
  });
  if (bios == 0) add("request without bios");
  if (bytes != rq.bytes()) add("bio sizes do not add up to bytes()");
  if (op_has_data(rq.op())) {
    if (rq.sectors() > lim.max_io_sectors())
      add("request of " + std::to_string(rq.sectors()) + " sectors exceeds max " +
          std::to_string(lim.max_io_sectors()));
    if (segments > lim.max_segments)
      add("request of " + std::to_string(segments) + " segments exceeds max " +
          std::to_string(lim.max_segments));
    if (rq.nr_segments() != segments) add("nr_segments() does not match the bios");
  }
  return why;
}

// What a driver call looked like, copied when it happened.
struct Seen {
  bool commit = false;  // a commit_rqs() call, not a queue_rq()
  Op op = Op::kRead;
  BioFlag flags = BioFlag::kNone;
  uint64_t pos = 0;
  uint32_t bytes = 0;
  unsigned nr_bios = 0;
  bool last = false;
  int tag = -1;
  unsigned hctx = 0;
  Status returned = Status::kOk;
  std::thread::id thread;
};

// A request driver for tests. Modes:
//   kHold    requests stay with the driver until the test completes them
//   kInline  completed inside queue_rq
//   kThread  completed by the driver's own thread, in random order, after a
//            random short delay
// Data lives in `store_` (what reads see). A flush copies it to `durable_`
// when the driver receives it; a FUA write on a device with native FUA goes
// to both. So a write is durable once the driver has received a flush after
// the write completed.
class TestDriver final : public RequestDriver {
 public:
  enum class Mode { kHold, kInline, kThread };

  TestDriver(Mode mode, const QueueLimits& lim, uint64_t capacity_sectors)
      : mode_(mode),
        lim_(lim),
        store_(capacity_sectors << kSectorShift),
        durable_(capacity_sectors << kSectorShift) {
    if (mode_ == Mode::kThread) thread_ = std::thread([this] { completer(); });
  }
  ~TestDriver() override {
    if (thread_.joinable()) {
      {
        std::lock_guard lock(mu_);
        stop_ = true;
      }
      cv_.notify_all();
      thread_.join();
    }
  }

  // --- steering (set before the I/O it should affect) -------------------------
  std::atomic<int> resource_next{0};  // refuse this many calls with kResource
  std::atomic<int> busy_next{0};      // ... with kDeviceResource
  // Runs first in queue_rq; a status other than kOk is returned as is.
  void set_hook(std::function<Status(HwQueue&, Request&, bool)> hook) {
    std::lock_guard lock(mu_);
    hook_ = std::move(hook);
  }
  // Replaces the default timeout handling (which fails the request).
  void set_timeout_hook(std::function<TimeoutAction(Request&)> hook) {
    std::lock_guard lock(mu_);
    timeout_hook_ = std::move(hook);
  }
  // Max completion delay in kThread mode.
  void set_max_delay(std::chrono::microseconds d) { max_delay_us_ = d.count(); }

  // --- RequestDriver ------------------------------------------------------------
  Status queue_rq(HwQueue& hctx, Request& rq, bool last) override {
    Seen s;
    s.op = rq.op();
    s.flags = rq.flags();
    s.pos = rq.pos();
    s.bytes = rq.bytes();
    rq.for_each_bio([&](const Bio&) { ++s.nr_bios; });
    s.last = last;
    s.tag = rq.tag();
    s.hctx = hctx.index();
    s.thread = std::this_thread::get_id();
    std::string bad = CheckRequest(rq, lim_);
    std::function<Status(HwQueue&, Request&, bool)> hook;
    {
      std::lock_guard lock(mu_);
      hook = hook_;
    }
    Status r = Status::kOk;
    if (hook) r = hook(hctx, rq, last);
    if (r == Status::kOk && take_one(resource_next)) r = Status::kResource;
    if (r == Status::kOk && take_one(busy_next)) r = Status::kDeviceResource;
    s.returned = r;
    if (r == Status::kOk && rq.op() == Op::kFlush) {
      // A flush covers what had completed when the device received it, not
      // what completes while it runs: strictest for the tests.
      std::lock_guard lock(data_mu_);
      durable_ = store_;
    }
    {
      std::lock_guard lock(mu_);
      seen_.push_back(s);
      if (!bad.empty()) violations_.push_back(bad);
      if (r == Status::kOk && mode_ != Mode::kInline) {
        held_.push_back(&rq);
        max_held_ = std::max(max_held_, held_.size());
      }
    }
    if (r != Status::kOk) return r;
    if (mode_ == Mode::kInline) {
      finish(rq, Status::kOk);
    } else if (mode_ == Mode::kThread) {
      cv_.notify_one();
    }
    return Status::kOk;
  }

  void commit_rqs(HwQueue& hctx) override {
    Seen s;
    s.commit = true;
    s.hctx = hctx.index();
    s.thread = std::this_thread::get_id();
    std::lock_guard lock(mu_);
    seen_.push_back(s);
  }

  TimeoutAction timeout(Request& rq) override {
    std::function<TimeoutAction(Request&)> hook;
    {
      std::lock_guard lock(mu_);
      hook = timeout_hook_;
      ++timeouts_;
    }
    if (hook) return hook(rq);
    // A held request is aborted: forget it, then fail it. One the completion
    // thread has taken already is left to it, with the queue's default
    // (it fails with kTimeout when the thread ends it).
    if (!forget(&rq)) return RequestDriver::timeout(rq);
    rq.end_request_all(Status::kTimeout);
    return TimeoutAction::kDone;
  }

  // --- what the driver saw -----------------------------------------------------
  std::vector<Seen> seen() const {
    std::lock_guard lock(mu_);
    return seen_;
  }
  // queue_rq calls only (commits left out).
  std::vector<Seen> calls() const {
    std::vector<Seen> out;
    for (const Seen& s : seen())
      if (!s.commit) out.push_back(s);
    return out;
  }
  size_t nr_calls() const { return calls().size(); }
  size_t nr_calls(Op op) const {
    size_t n = 0;
    for (const Seen& s : calls()) n += s.op == op && s.returned == Status::kOk;
    return n;
  }
  size_t commits() const {
    size_t n = 0;
    for (const Seen& s : seen()) n += s.commit;
    return n;
  }
  std::vector<std::string> violations() const {
    std::lock_guard lock(mu_);
    return violations_;
  }
  size_t held() const {
    std::lock_guard lock(mu_);
    return held_.size();
  }
  size_t max_held() const {
    std::lock_guard lock(mu_);
    return max_held_;
  }
  int timeouts() const {
    std::lock_guard lock(mu_);
    return timeouts_;
  }
  Request* held_at(size_t i) const {
    std::lock_guard lock(mu_);
    return i < held_.size() ? held_[i] : nullptr;
  }
  // Drops `rq` from the held list (a timeout hook that ends it itself).
  bool forget(Request* rq) {
    std::lock_guard lock(mu_);
    auto it = std::find(held_.begin(), held_.end(), rq);
    if (it == held_.end()) return false;
    held_.erase(it);
    return true;
  }
  // Takes a held request away from the driver's list without ending it.
  Request* take(size_t i = 0) {
    std::lock_guard lock(mu_);
    if (i >= held_.size()) return nullptr;
    Request* rq = held_[i];
    held_.erase(held_.begin() + static_cast<long>(i));
    return rq;
  }

  // --- completing (kHold) ----------------------------------------------------------
  // Completes the oldest held request; false if none is held.
  bool complete_next(Status status = Status::kOk) {
    Request* rq = take(0);
    if (!rq) return false;
    finish(*rq, status);
    return true;
  }
  // Completes held requests, including those that arrive meanwhile, until
  // none is held.
  int drain(Status status = Status::kOk) {
    int n = 0;
    while (complete_next(status)) ++n;
    return n;
  }
  // Moves the data of `rq` (if `status` is kOk) and ends it.
  void finish(Request& rq, Status status) {
    if (status == Status::kOk) transfer(rq);
    rq.end_request_all(status);
  }

  // --- data ----------------------------------------------------------------------
  std::vector<std::byte> read_store(uint64_t offset, size_t len) const {
    std::lock_guard lock(data_mu_);
    return {store_.begin() + static_cast<long>(offset),
            store_.begin() + static_cast<long>(offset + len)};
  }
  std::vector<std::byte> read_durable(uint64_t offset, size_t len) const {
    std::lock_guard lock(data_mu_);
    return {durable_.begin() + static_cast<long>(offset),
            durable_.begin() + static_cast<long>(offset + len)};
  }

 private:
  static bool take_one(std::atomic<int>& n) {
    int v = n.load();
    while (v > 0) {
      if (n.compare_exchange_weak(v, v - 1)) return true;
    }
    return false;
  }

  void transfer(const Request& rq) {
    std::lock_guard lock(data_mu_);
    if (rq.op() == Op::kFlush) return;  // done when received (queue_rq)
    const bool fua = rq.has_flag(BioFlag::kFua);
    rq.for_each_bio([&](const Bio& b) {
      uint64_t pos = b.sector() << kSectorShift;
      b.for_each_chunk([&](const BioChunk& c) {
        switch (b.op()) {
          case Op::kRead:
            std::memcpy(c.ptr, store_.data() + pos, c.len);
            break;
          case Op::kWrite:
            std::memcpy(store_.data() + pos, c.ptr, c.len);
            if (fua) std::memcpy(durable_.data() + pos, c.ptr, c.len);
            break;
          default:  // discard, write-zeroes: reads as zeroes
            std::memset(store_.data() + pos, 0, c.len);
            if (fua) std::memset(durable_.data() + pos, 0, c.len);
            break;
        }
        pos += c.len;
      });
    });
  }

  void completer() {
    std::mt19937 rng(12345);
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !held_.empty(); });
      if (held_.empty()) return;  // stopping, and nothing left
      size_t i = std::uniform_int_distribution<size_t>(0, held_.size() - 1)(rng);
      Request* rq = held_[i];
      held_.erase(held_.begin() + static_cast<long>(i));
      const int64_t max_us = max_delay_us_.load();
      const int64_t delay =
          max_us > 0 ? std::uniform_int_distribution<int64_t>(0, max_us)(rng) : 0;
      lock.unlock();
      if (delay > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay));
      finish(*rq, Status::kOk);
      lock.lock();
    }
  }

  const Mode mode_;
  const QueueLimits lim_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::function<Status(HwQueue&, Request&, bool)> hook_;
  std::function<TimeoutAction(Request&)> timeout_hook_;
  std::vector<Seen> seen_;
  std::vector<std::string> violations_;
  std::deque<Request*> held_;
  size_t max_held_ = 0;
  int timeouts_ = 0;
  bool stop_ = false;
  std::atomic<int64_t> max_delay_us_{50};
  mutable std::mutex data_mu_;
  std::vector<std::byte> store_;
  std::vector<std::byte> durable_;
  std::thread thread_;  // last: started after everything it uses
};

inline QueueLimits TestLimits() {
  QueueLimits lim;
  lim.max_discard_sectors = 1024;
  lim.max_write_zeroes_sectors = 1024;
  lim.discard_granularity = 512;
  return lim;
}

// A disk over a Queue over a TestDriver, as drivers/queue_mode.cc makes them.
struct MqDisk {
  std::shared_ptr<Disk> disk;
  TestDriver* driver = nullptr;
  Queue& queue() const { return static_cast<Queue&>(disk->driver()); }
  HwQueue& hctx(unsigned i = 0) const { return queue().hw_queue(i); }
  unsigned tags_in_use(unsigned space = 0) const {
    return queue().tag_set().tag_space(space).alloc.in_use();
  }
};

inline MqDisk MakeMqDisk(TagSetConfig config = {}, QueueLimits lim = TestLimits(),
                         TestDriver::Mode mode = TestDriver::Mode::kHold,
                         uint64_t capacity_sectors = 8192,
                         const std::string& name = "mq0") {
  auto driver = std::make_unique<TestDriver>(mode, lim, capacity_sectors);
  MqDisk d;
  d.driver = driver.get();
  d.disk = std::make_shared<Disk>(name, capacity_sectors, lim,
                                  std::make_unique<Queue>(config, std::move(driver)));
  return d;
}

// A bio with its own memory that records how often and how it completed.
struct TestBio {
  Bio bio;
  std::vector<std::byte> buf;
  std::vector<Segment> segs;
  std::atomic<int> calls{0};
  std::atomic<Status> status{Status::kOk};
  std::thread::id completed_on;
  // Runs inside the callback, before `calls` counts it.
  std::function<void(TestBio&)> on_done;

  static void Done(Bio& b) {
    auto* t = static_cast<TestBio*>(b.context());
    t->status.store(b.status());
    t->completed_on = std::this_thread::get_id();
    if (t->on_done) t->on_done(*t);
    t->calls.fetch_add(1, std::memory_order_acq_rel);
  }

  // A read or write of `sectors` sectors in `nsegs` segments (as equal as
  // whole sectors allow); a write's data is `fill`.
  void init_data(Disk& disk, Op op, uint64_t sector, uint32_t sectors, uint8_t fill = 0,
                 unsigned nsegs = 1) {
    buf.assign(size_t{sectors} << kSectorShift, std::byte{fill});
    segs.clear();
    nsegs = std::max(1u, std::min(nsegs, sectors));
    uint32_t left = sectors;
    std::byte* p = buf.data();
    for (unsigned i = 0; i < nsegs; ++i) {
      uint32_t n = i + 1 == nsegs ? left : sectors / nsegs;
      segs.emplace_back(p, n << kSectorShift);
      p += size_t{n} << kSectorShift;
      left -= n;
    }
    bio.init(&disk, op, sector, segs, Done, this);
  }
  // Flush, discard, write-zeroes.
  void init_range(Disk& disk, Op op, uint64_t sector, uint32_t sectors) {
    bio.init_nodata(&disk, op, sector, sectors << kSectorShift, Done, this);
  }
  bool done() const { return calls.load(std::memory_order_acquire) > 0; }
  void submit() { submit_bio(bio); }
};

using TestBios = std::vector<std::unique_ptr<TestBio>>;

inline TestBio& AddBio(TestBios& bios) {
  bios.push_back(std::make_unique<TestBio>());
  return *bios.back();
}

inline bool AllDone(const TestBios& bios) {
  return std::all_of(bios.begin(), bios.end(), [](const auto& b) { return b->done(); });
}

inline std::vector<std::byte> Pattern(size_t len, uint32_t seed) {
  std::vector<std::byte> v(len);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x = x * 1103515245u + 12345u;
    b = std::byte(x >> 24);
  }
  return v;
}

// A thread that stays alive (keeping its per-thread slot, and so its
// software queue) and runs what it is given.
class Worker {
 public:
  Worker() : thread_([this] { loop(); }) {}
  ~Worker() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  // Runs fn on the worker and waits for it.
  void run(std::function<void()> fn) {
    std::unique_lock lock(mu_);
    job_ = std::move(fn);
    cv_.notify_all();
    cv_.wait(lock, [&] { return !job_; });
  }

 private:
  void loop() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || job_; });
      if (!job_) return;
      lock.unlock();
      job_();
      lock.lock();
      job_ = nullptr;
      cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::function<void()> job_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace blkstack::mq_testing
