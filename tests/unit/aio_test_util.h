// Helpers shared by the IoContext tests: drivers the test can steer (hold
// bios or requests until released, record what reached the device, run
// completions later on threads of their own), aligned buffers, data
// patterns, and waits with a deadline.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/queue.h"
#include "blkstack/driver/request.h"
#include "blkstack/driver/request_driver.h"
#include "blkstack/io_context.h"
#include "blkstack/limits.h"
#include "test_wait.h"

namespace blkstack::aio_testing {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using testing_util::Eventually;
using testing_util::MustHappen;

// Runs `f` when the scope ends: declared after an IoContext, it releases
// what a test driver holds even when an assertion returns early, so the
// context's destructor (which waits for in-flight I/O) does not hang.
template <class F>
struct AtExit {
  F f;
  ~AtExit() { f(); }
};
template <class F>
AtExit(F) -> AtExit<F>;

// Memory aligned to 4 KiB, as O_DIRECT users allocate it.
class AlignedBuf {
 public:
  explicit AlignedBuf(size_t n)
      : p_(static_cast<std::byte*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096))),
        n_(n) {
    std::memset(p_, 0, n);
  }
  ~AlignedBuf() { std::free(p_); }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  std::byte* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  std::byte* p_;
  size_t n_;
};

// Deterministic bytes that differ with `seed` (splitmix64, 8 at a time).
inline void FillPattern(std::byte* p, size_t n, uint64_t seed) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (size_t i = 0; i < n; i += 8) {
    x += 0x9e3779b97f4a7c15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(p + i, &z, std::min<size_t>(8, n - i));
  }
}

inline std::vector<std::byte> Pattern(size_t n, uint64_t seed) {
  std::vector<std::byte> v(n);
  FillPattern(v.data(), n, seed);
  return v;
}

// Runs functions at given times on a thread of its own: a device that
// completes I/O later, from elsewhere ("interrupts").
class Deferrer {
 public:
  Deferrer() : thread_([this] { run(); }) {}
  ~Deferrer() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void at(Clock::time_point when, std::function<void()> fn) {
    {
      std::lock_guard lock(mu_);
      work_.emplace(when, std::move(fn));
    }
    cv_.notify_all();
  }

 private:
  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      if (work_.empty()) {
        if (stop_) return;  // only once nothing is left to complete
        cv_.wait(lock);
        continue;
      }
      auto it = work_.begin();
      if (it->first > Clock::now()) {
        cv_.wait_until(lock, it->first);
        continue;
      }
      std::function<void()> fn = std::move(it->second);
      work_.erase(it);
      lock.unlock();
      fn();
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<Clock::time_point, std::function<void()>> work_;
  bool stop_ = false;
  std::thread thread_;  // last: started after what it uses
};

// What reached a device, copied when it did.
struct Call {
  Op op;
  BioFlag flags;
  uint64_t sector;
  uint32_t bytes;
};

// A bio-based driver that records every bio and either completes it at
// once (with the status `fail` picks, kOk by default) or holds it until
// the test releases it.
class ScriptedBioDriver final : public BioDriver {
 public:
  explicit ScriptedBioDriver(bool hold = false) : hold_(hold) {}

  void set_hold(bool hold) {
    std::lock_guard lock(mu_);
    hold_ = hold;
  }
  void set_fail(std::function<Status(const Bio&)> fail) {
    std::lock_guard lock(mu_);
    fail_ = std::move(fail);
  }

  void submit(Bio& bio) override {
    Status s = Status::kOk;
    {
      std::lock_guard lock(mu_);
      calls_.push_back({bio.op(), bio.flags(), bio.sector(), bio.size()});
      if (fail_) s = fail_(bio);
      if (hold_) {
        held_.push_back(&bio);
        return;
      }
    }
    bio.complete(s);
  }

  std::vector<Call> calls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }
  size_t held() const {
    std::lock_guard lock(mu_);
    return held_.size();
  }
  // Completes the oldest held bio with `s`; false if none is held.
  bool release_one(Status s = Status::kOk) {
    Bio* b;
    {
      std::lock_guard lock(mu_);
      if (held_.empty()) return false;
      b = held_.front();
      held_.pop_front();
    }
    b->complete(s);
    return true;
  }
  // Completes every held bio with `s`; returns how many.
  size_t release_all(Status s = Status::kOk) {
    std::deque<Bio*> bios;
    {
      std::lock_guard lock(mu_);
      bios.swap(held_);
    }
    for (Bio* b : bios) b->complete(s);
    return bios.size();
  }

 private:
  mutable std::mutex mu_;
  bool hold_;
  std::function<Status(const Bio&)> fail_;
  std::vector<Call> calls_;
  std::deque<Bio*> held_;
};

// A request driver that keeps every request until the test releases it:
// with depth 1, one held request means every other bio waits for a tag.
class HoldRqDriver final : public RequestDriver {
 public:
  Status queue_rq(HwQueue&, Request& rq, bool) override {
    std::lock_guard lock(mu_);
    calls_.push_back({rq.op(), rq.flags(), rq.pos(), rq.bytes()});
    held_.push_back(&rq);
    return Status::kOk;
  }
  size_t held() const {
    std::lock_guard lock(mu_);
    return held_.size();
  }
  std::vector<Call> calls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }
  // Ends the oldest held request; false if none is held.
  bool release_one(Status s = Status::kOk) {
    Request* rq;
    {
      std::lock_guard lock(mu_);
      if (held_.empty()) return false;
      rq = held_.front();
      held_.pop_front();
    }
    rq->end_request_all(s);
    return true;
  }
  // Ends held requests, including those that arrive meanwhile, until none
  // is held.
  size_t drain(Status s = Status::kOk) {
    size_t n = 0;
    while (release_one(s)) ++n;
    return n;
  }

 private:
  mutable std::mutex mu_;
  std::vector<Call> calls_;
  std::deque<Request*> held_;
};

inline QueueLimits CacheLimits(bool wc, bool fua) {
  QueueLimits lim;
  lim.volatile_write_cache = wc;
  lim.fua = fua;
  lim.max_discard_sectors = 1024;
  lim.max_write_zeroes_sectors = 1024;
  lim.discard_granularity = 512;
  return lim;
}

inline std::shared_ptr<Disk> BioDisk(std::unique_ptr<BioDriver> driver,
                                     QueueLimits lim = {}, uint64_t sectors = 8192,
                                     const char* name = "aio-bio") {
  return std::make_shared<Disk>(name, sectors, lim, std::move(driver));
}

inline std::shared_ptr<Disk> MqDisk(std::unique_ptr<RequestDriver> driver,
                                    TagSetConfig cfg, QueueLimits lim = {},
                                    uint64_t sectors = 8192,
                                    const char* name = "aio-mq") {
  return std::make_shared<Disk>(name, sectors, lim,
                                std::make_unique<Queue>(cfg, std::move(driver)));
}

// An iocb of any kind (the Iocb helpers cover only pread/pwrite/fsync).
inline Iocb MakeIocb(IoOp op, Disk* d, void* buf, uint64_t len, uint64_t off,
                     uint64_t user_data = 0, uint32_t flags = 0) {
  Iocb cb;
  cb.op = op;
  cb.disk = d;
  cb.buf = buf;
  cb.len = len;
  cb.offset = off;
  cb.user_data = user_data;
  cb.flags = flags;
  return cb;
}

inline Iocb MakeVec(IoOp op, Disk* d, const iovec* iov, unsigned n, uint64_t off,
                    uint64_t user_data = 0, uint32_t flags = 0) {
  Iocb cb = MakeIocb(op, d, nullptr, 0, off, user_data, flags);
  cb.iov = iov;
  cb.iovcnt = n;
  return cb;
}

// Submits one iocb; returns submit()'s result.
inline int SubmitOne(IoContext& ctx, Iocb& cb) {
  Iocb* list[] = {&cb};
  return ctx.submit(list);
}

// Waits (up to `limit`) for exactly one event and returns it; aborts if
// none comes, as I/O would be left in flight.
inline IoEvent WaitOne(IoContext& ctx, std::chrono::milliseconds limit = 10s) {
  IoEvent ev;
  if (ctx.get_events(1, {&ev, 1}, limit) != 1) {
    MustHappen([] { return false; }, "an event within the limit", 0ms);
  }
  return ev;
}

}  // namespace blkstack::aio_testing
