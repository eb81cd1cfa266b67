// CrashHost: a test double of the host file under the file driver, for
// host-crash simulation without log-writes. Installed with
// ScopedHostIoFactory (drivers/host_io.h), it keeps the file in memory the
// way the host kernel does: writes land in a page cache ("cache"), and only
// fdatasync (a flush) or a write with RWF_DSYNC (FUA) copies them to the
// durable image. Some dirty sectors are written back on their own now and
// then, as the kernel's writeback would, so older versions can be durable.
//
// crash() is the power cut: it returns the durable image plus a random
// subset of the dirty sectors (each 512-byte sector whole: a sector is
// never torn, as the kernel assumes of disks) and from then on every host
// operation fails with EIO, so nothing completed after the cut can claim
// to have reached the image.
//
// Mutations (for the tests that prove a checker bites): `early_fdatasync`
// answers an fdatasync before doing it (its data reaches the durable image
// only with the next one), `ignore_dsync` treats RWF_DSYNC as a plain write.
// Faults: transient EAGAIN, short transfers, EIO on writes, a full ring
// (back-pressure) and stalls (past the request timeout).
//
// Each hardware queue has a completion thread that takes the queued
// operations in random order (the host need not keep submission order).
#pragma once

#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "drivers/host_io.h"

namespace blkstack::testing_util {

class CrashHost {
 public:
  static constexpr uint64_t kSector = 512;

  struct Faults {
    double eagain = 0;     // an operation answers -EAGAIN (the driver retries)
    double short_io = 0;   // a read or write moves only part of its bytes
    double write_eio = 0;  // a write fails with -EIO (none of it lands)
    double writeback = 0;  // per operation: one dirty sector is written back
    double ring_full = 0;  // queue() refuses (the driver answers kResource)
    double stall = 0;      // the host sits on an operation for stall_ns
    uint64_t stall_ns = 2'000'000;
  };

  CrashHost(std::vector<std::byte> image, uint64_t seed)
      : cache_(image),
        durable_(std::move(image)),
        dirty_(cache_.size() / kSector, 0),
        rng_(seed) {}

  bool early_fdatasync = false;
  bool ignore_dsync = false;
  Faults faults;
  // The share of operations done at once by the thread that submits them
  // (cheaper); the others go to the queue's thread (reordered, stalled).
  double inline_share = 0;

  // The factory to install (ScopedHostIoFactory) while a file disk is made.
  HostIoFactory factory() {
    return [this](const HostIoSetup& s) -> std::unique_ptr<HostIoQueue> {
      return std::make_unique<Queue>(*this, s);
    };
  }

  // The power cut: the durable image with each dirty sector kept with
  // probability `keep` (0: none, 1: all). Every later operation fails.
  std::vector<std::byte> crash(double keep) {
    std::lock_guard l(mu_);
    crashed_ = true;
    std::vector<std::byte> image = durable_;
    std::bernoulli_distribution kept(keep);
    for (uint64_t s : dirty_list_) {
      if (!dirty_[s] || !kept(rng_)) continue;
      std::memcpy(&image[s * kSector], &cache_[s * kSector], kSector);
    }
    return image;
  }

  // Bytes of the durable image (what an fdatasync made durable).
  std::vector<std::byte> durable() {
    std::lock_guard l(mu_);
    return durable_;
  }
  uint64_t fdatasyncs() {
    std::lock_guard l(mu_);
    return fdatasyncs_;
  }

  // One host operation, as the kernel would do it: bytes or -errno.
  int perform(const HostIo& io) {
    std::lock_guard l(mu_);
    if (crashed_) return -EIO;
    if (faults.writeback > 0 && chance(faults.writeback)) writeback_one();
    const bool rw = io.kind == HostIo::kRead || io.kind == HostIo::kWrite;
    if (faults.eagain > 0 && chance(faults.eagain)) return -EAGAIN;
    switch (io.kind) {
      case HostIo::kRead:
      case HostIo::kWrite: {
        uint64_t bytes = 0;
        for (unsigned i = 0; i < io.iovcnt; ++i) bytes += io.iov[i].iov_len;
        if (io.offset + bytes > cache_.size()) bytes = cache_.size() - io.offset;
        if (io.kind == HostIo::kWrite && faults.write_eio > 0 && chance(faults.write_eio))
          return -EIO;
        // Short transfers stop at a sector boundary: a partial sector
        // copy would be a torn write the host never makes.
        if (rw && faults.short_io > 0 && bytes > kSector && chance(faults.short_io))
          bytes = kSector * (1 + rng_() % (bytes / kSector - 1));
        copy(io, bytes);
        return static_cast<int>(bytes);
      }
      case HostIo::kFdatasync:
        ++fdatasyncs_;
        if (early_fdatasync) {
          // Answered before it is done: what it covers becomes durable
          // only with the next fdatasync.
          sync_list(owed_sync_);
          std::erase_if(dirty_list_, [&](uint64_t s) { return !dirty_[s]; });
          owed_sync_ = dirty_list_;
          return 0;
        }
        for (uint64_t s : dirty_list_) make_durable(s);
        dirty_list_.clear();
        return 0;
      case HostIo::kPunchHole:
      case HostIo::kZeroRange: {
        const uint64_t end = std::min<uint64_t>(io.offset + io.len, cache_.size());
        for (uint64_t s = io.offset / kSector; s < end / kSector; ++s) {
          std::memset(&cache_[s * kSector], 0, kSector);
          mark_dirty(s);
        }
        return 0;
      }
    }
    return -EINVAL;
  }

 private:
  // A hardware queue: its operations are done by its own thread, in random
  // order, and answered through the driver's callback.
  class Queue final : public HostIoQueue {
   public:
    Queue(CrashHost& host, const HostIoSetup& s)
        : host_(host), cb_(s.on_complete), rng_(s.index * 7919 + 1) {
      thread_ = std::thread([this] { run(); });
    }
    ~Queue() override {
      {
        std::lock_guard l(mu_);
        stop_ = true;
      }
      cv_.notify_all();
      thread_.join();
    }
    bool queue(const HostIo& io, void* ctx) override {
      std::lock_guard l(mu_);
      if (host_.faults.ring_full > 0 &&
          std::uniform_real_distribution<double>(0, 1)(rng_) < host_.faults.ring_full)
        return false;
      pending_.push_back({io, ctx});
      return true;
    }
    void submit() override {
      if (host_.inline_share > 0) run_inline();
      cv_.notify_all();
    }

   private:
    struct Pending {
      HostIo io;
      void* ctx;
    };
    // Does the pending operations on this thread, but for those left to the
    // queue's thread (inline_share). An operation queued by a completion
    // run here is picked up by the same loop.
    void run_inline() {
      static thread_local bool running = false;
      if (running) return;
      running = true;
      std::unique_lock l(mu_);
      std::bernoulli_distribution here(host_.inline_share);
      while (!pending_.empty()) {
        const Pending p = pending_.back();
        pending_.pop_back();
        if (!here(rng_)) {
          deferred_.push_back(p);
          continue;
        }
        l.unlock();
        cb_(p.ctx, host_.perform(p.io));
        l.lock();
      }
      pending_.swap(deferred_);
      running = false;
    }
    void run() {
      std::unique_lock l(mu_);
      for (;;) {
        cv_.wait(l, [&] { return stop_ || !pending_.empty(); });
        if (pending_.empty()) return;  // stopping, nothing left
        const size_t i = rng_() % pending_.size();
        const Pending p = pending_[i];
        pending_[i] = pending_.back();
        pending_.pop_back();
        const bool stall =
            host_.faults.stall > 0 &&
            std::uniform_real_distribution<double>(0, 1)(rng_) < host_.faults.stall;
        l.unlock();
        if (stall)
          std::this_thread::sleep_for(std::chrono::nanoseconds(host_.faults.stall_ns));
        cb_(p.ctx, host_.perform(p.io));
        l.lock();
      }
    }

    CrashHost& host_;
    HostIoQueue::Callback cb_;
    std::mt19937_64 rng_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<Pending> pending_;
    std::vector<Pending> deferred_;  // run_inline(): left to the thread
    bool stop_ = false;
    std::thread thread_;
  };

  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

  void copy(const HostIo& io, uint64_t bytes) {
    uint64_t off = io.offset;
    for (unsigned i = 0; i < io.iovcnt && bytes > 0; ++i) {
      const uint64_t n = std::min<uint64_t>(bytes, io.iov[i].iov_len);
      auto* p = static_cast<std::byte*>(io.iov[i].iov_base);
      if (io.kind == HostIo::kRead) {
        std::memcpy(p, &cache_[off], n);
      } else {
        std::memcpy(&cache_[off], p, n);
      }
      off += n;
      bytes -= n;
    }
    if (io.kind != HostIo::kWrite) return;
    const bool dsync = (io.rw_flags & RWF_DSYNC) != 0 && !ignore_dsync;
    for (uint64_t s = io.offset / kSector; s < off / kSector; ++s) {
      mark_dirty(s);
      if (dsync) make_durable(s);
    }
  }

  void mark_dirty(uint64_t s) {
    if (!dirty_[s]) dirty_list_.push_back(s);
    dirty_[s] = 1;
  }
  void make_durable(uint64_t s) {
    if (!dirty_[s]) return;
    std::memcpy(&durable_[s * kSector], &cache_[s * kSector], kSector);
    dirty_[s] = 0;
  }
  void sync_list(const std::vector<uint64_t>& list) {
    for (uint64_t s : list) make_durable(s);
  }
  // One random dirty sector reaches the durable image (the entry stays in
  // dirty_list_, now clean, until the next fdatasync clears the list).
  void writeback_one() {
    if (dirty_list_.empty()) return;
    make_durable(dirty_list_[rng_() % dirty_list_.size()]);
  }

  std::mutex mu_;
  std::vector<std::byte> cache_;
  std::vector<std::byte> durable_;
  std::vector<uint8_t> dirty_;        // per sector: newer in cache than durable
  std::vector<uint64_t> dirty_list_;  // sectors dirtied since the last fdatasync
  std::vector<uint64_t> owed_sync_;   // early_fdatasync: what the last one owes
  std::mt19937_64 rng_;
  uint64_t fdatasyncs_ = 0;
  bool crashed_ = false;
};

}  // namespace blkstack::testing_util
