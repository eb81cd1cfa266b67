#include "engine.h"

#include <fmt/format.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/error.h"
#include "blkstack/io_context.h"
#include "blkstack/plug.h"
#include "core/clock.h"
#include "issuer_weight.h"
#include "workload.h"

namespace blkstack::bench {
namespace {

// The block core's clock: the invariant TSC scaled to ns where there is
// one (a third of clock_gettime's cost), else CLOCK_MONOTONIC. Three reads
// per batch: before preparing, after submitting, after reaping.
inline uint64_t clock_ns() { return now_ns(); }

inline int depth_bucket(unsigned d) {
  if (d >= 64) return kDepthBuckets - 1;
  return d <= 1 ? 0 : 31 - __builtin_clz(d);
}

uint64_t tv_ns(const timeval& tv) {
  return static_cast<uint64_t>(tv.tv_sec) * 1'000'000'000u +
         static_cast<uint64_t>(tv.tv_usec) * 1000u;
}

struct AlignedFree {
  void operator()(std::byte* p) const { std::free(p); }
};

enum class SlotKind : uint8_t { kIo, kSync, kReadback };

struct Slot {
  Iocb cb;
  uint64_t t_start = 0;
  uint64_t t_submit = 0;
  std::byte* buf = nullptr;
  uint32_t len = 0;
  Dir dir = kDirRead;
  SlotKind kind = SlotKind::kIo;
  bool in_flight = false;
};

class Worker {
 public:
  Worker(const WorkerSetup& s, ThreadResult& out)
      : s_(s),
        job_(*s.job),
        out_(out),
        depth_(job_.iodepth),
        batch_(job_.iodepth_batch),
        complete_min_(std::max(1u, job_.iodepth_batch_complete_min)),
        complete_max_(job_.iodepth_batch_complete_max
                          ? std::min(job_.iodepth_batch_complete_max, depth_)
                          : depth_),
        ctx_(depth_ + 1),  // one more for an fsync
        weight_(job_.name, s.dev->disk(), ctx_.issuer(), job_.bfq_weight),
        offsets_(job_, s.region_start, s.region_len, job_.min_bs(),
                 job_.randseed * 0x9e3779b97f4a7c15ull + s.job_index * 1000003u +
                     s.thread_index),
        sizes_(job_, job_.randseed + s.job_index * 7919u + s.thread_index * 104729u),
        verifier_(s.verifier),
        gens_(s.gens),
        vblock_(verifier_ ? verifier_->block_size() : 0) {
    const uint32_t max_bs = job_.max_bs();
    const size_t bytes = static_cast<size_t>(max_bs) * (depth_ + 1);
    void* mem = nullptr;
    if (posix_memalign(&mem, 4096, bytes) != 0)
      throw Error("cannot allocate the I/O buffers");
    bufs_.reset(static_cast<std::byte*>(mem));
    // Random data in the write buffers, once (fio's default); verify stamps
    // each write instead.
    Rng fill(job_.randseed ^ s.thread_index);
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
      const uint64_t v = fill.next();
      std::memcpy(bufs_.get() + i, &v, 8);
    }
    slots_.resize(depth_ + 1);
    for (unsigned i = 0; i <= depth_; ++i) {
      slots_[i].buf = bufs_.get() + static_cast<size_t>(i) * max_bs;
      slots_[i].cb.user_data = i;
      slots_[i].cb.bdev = s.dev;
      slots_[i].cb.flags = (job_.direct ? uint32_t{kIocbDirect} : 0u) |
                           (job_.hipri ? uint32_t{kIocbHipri} : 0u);
    }
    for (unsigned i = depth_; i-- > 0;) free_.push_back(i);  // slot `depth_` is for fsync
    events_.resize(depth_ + 1);
    list_.resize(depth_);
    if (job_.time_based) {
      target_bytes_ = UINT64_MAX;
    } else {
      const uint64_t per_loop = job_.io_size ? job_.io_size : s.region_len;
      target_bytes_ = per_loop * job_.loops;
    }
    target_ios_ = job_.number_ios ? job_.number_ios : UINT64_MAX;
  }

  void run() {
    rusage ru0;
    getrusage(RUSAGE_THREAD, &ru0);
    t_begin_ = clock_ns();
    ramp_end_ = t_begin_ + job_.ramp_ns;
    deadline_ = job_.runtime_ns ? ramp_end_ + job_.runtime_ns : UINT64_MAX;
    measuring_ = job_.ramp_ns == 0;
    stat_start_ = t_begin_;
    if (measuring_) s_.live->measuring.store(true, std::memory_order_relaxed);
    last_ = t_begin_;

    main_loop();
    if (job_.end_fsync && rw_writes(job_.rw) && !failed()) do_sync();
    const uint64_t end = last_;
    out_.runtime_ns = measuring_ && end > stat_start_ ? end - stat_start_ : 0;
    if (verifier_ && job_.do_verify && rw_writes(job_.rw) && !failed() && !stopped())
      readback();

    rusage ru1;
    getrusage(RUSAGE_THREAD, &ru1);
    out_.usr_ns = tv_ns(ru1.ru_utime) - tv_ns(ru0.ru_utime);
    out_.sys_ns = tv_ns(ru1.ru_stime) - tv_ns(ru0.ru_stime);
    out_.ctx_switches = static_cast<uint64_t>((ru1.ru_nvcsw - ru0.ru_nvcsw) +
                                              (ru1.ru_nivcsw - ru0.ru_nivcsw));
    out_.minflt = static_cast<uint64_t>(ru1.ru_minflt - ru0.ru_minflt);
    out_.majflt = static_cast<uint64_t>(ru1.ru_majflt - ru0.ru_majflt);
    publish();
  }

 private:
  bool failed() const { return out_.error != 0 && !job_.continue_on_error; }
  bool stopped() const { return s_.stop->load(std::memory_order_relaxed); }

  void main_loop() {
    bool issuing = true;
    while (true) {
      if (issuing && (failed() || stopped())) issuing = false;
      if (need_sync_) {
        if (inflight_ == 0) {
          do_sync();
          need_sync_ = false;
          continue;
        }
      } else if (issuing) {
        issuing = fill();
      }
      if (inflight_ == 0) {
        if (!issuing) break;
        if (rate_wait_ns_ >
            0) {  // paced: nothing in flight, sleep until the next I/O is due
          timespec ts{static_cast<time_t>(rate_wait_ns_ / 1'000'000'000u),
                      static_cast<long>(rate_wait_ns_ % 1'000'000'000u)};
          nanosleep(&ts, nullptr);
          last_ = clock_ns();
        }
        continue;
      }
      reap(std::min(complete_min_, inflight_), rate_wait_ns_);
      if (last_ >= deadline_) issuing = false;
    }
  }

  // Issues batches until the queue is full; false when the job has nothing
  // more to issue.
  bool fill() {
    rate_wait_ns_ = 0;
    while (!free_.empty() || held_ >= 0) {
      unsigned want =
          std::min<unsigned>(batch_, static_cast<unsigned>(free_.size()) + (held_ >= 0));
      if (job_.rate_iops) {
        // The I/Os due by now: one every 1e9 / rate_iops ns from the start.
        const double due = static_cast<double>(last_ - t_begin_) * 1e-9 *
                               static_cast<double>(job_.rate_iops) +
                           1.0;
        const uint64_t allowed = due > static_cast<double>(issued_ios_)
                                     ? static_cast<uint64_t>(due) - issued_ios_
                                     : 0;
        if (allowed == 0) {
          const double next_at = static_cast<double>(issued_ios_) /
                                 static_cast<double>(job_.rate_iops) * 1e9;
          const double wait = next_at - static_cast<double>(last_ - t_begin_);
          rate_wait_ns_ = wait > 1000 ? static_cast<uint64_t>(wait) : 1000;
          return true;
        }
        want = static_cast<unsigned>(std::min<uint64_t>(want, allowed));
      }
      const uint64_t t0 = clock_ns();
      unsigned n = 0;
      bool more = true;
      while (n < want) {
        Slot* slot;
        if (held_ >= 0) {
          slot = &slots_[held_];
          if (overlaps(*slot)) break;
          held_ = -1;
        } else {
          if (issued_bytes_ >= target_bytes_ || issued_ios_ >= target_ios_) {
            more = false;
            break;
          }
          slot = &slots_[free_.back()];
          free_.pop_back();
          prepare(*slot);
          if (verifier_ && overlaps(*slot)) {
            held_ = static_cast<int>(slot - slots_.data());
            break;
          }
        }
        stamp_if_write(*slot);
        slot->t_start = t0;
        list_[n++] = &slot->cb;
        if (need_sync_) break;
      }
      if (n > 0) submit(n);
      if (!more) return held_ >= 0;
      if (need_sync_ || held_ >= 0 || failed()) return true;
      if (n < want) return true;
    }
    return true;
  }

  void prepare(Slot& slot) {
    const Dir dir = sizes_.next_dir();
    const uint32_t len = sizes_.next(dir);
    const uint64_t off = offsets_.next(dir, len);
    slot.dir = dir;
    slot.len = len;
    slot.kind = SlotKind::kIo;
    Iocb& cb = slot.cb;
    cb.op = dir == kDirRead ? IoOp::kPread : IoOp::kPwrite;
    cb.buf = slot.buf;
    cb.len = len;
    cb.offset = off;
    issued_bytes_ += len;
    ++issued_ios_;
    if (dir == kDirWrite && job_.fsync && ++writes_since_sync_ >= job_.fsync)
      need_sync_ = true;
  }

  void stamp_if_write(Slot& slot) {
    if (!verifier_ || slot.dir != kDirWrite) return;
    for (uint32_t at = 0; at < slot.len; at += vblock_) {
      const uint64_t off = slot.cb.offset + at;
      verifier_->stamp(slot.buf + at, off, gens_->bump(off));
    }
  }

  // With verify, an I/O must not overlap one in flight: the outcome of two
  // racing writes (or a read racing a write) is not defined.
  bool overlaps(const Slot& s) const {
    if (!verifier_) return false;
    const uint64_t a = s.cb.offset, b = a + s.len;
    for (const Slot& o : slots_) {
      if (!o.in_flight || o.kind == SlotKind::kSync) continue;
      if (o.cb.offset < b && a < o.cb.offset + o.len) return true;
    }
    return false;
  }

  void submit(unsigned n) {
    unsigned done = 0;
    while (done < n) {
      int r;
      if (n - done > 1) {
        Plug plug;
        r = ctx_.submit({list_.data() + done, n - done});
      } else {
        r = ctx_.submit({list_.data() + done, 1});
      }
      const uint64_t t1 = clock_ns();
      if (r <= 0) {
        // Refused: the first iocb left is bad (or the context is full).
        Slot& s = slots_[list_[done]->user_data];
        io_error(s, r == 0 ? -EAGAIN : r, "refused at submission");
        for (unsigned i = done; i < n; ++i) {
          Slot& f = slots_[list_[i]->user_data];
          if (verifier_ && f.kind == SlotKind::kIo && f.dir == kDirWrite) {
            for (uint32_t at = 0; at < f.len; at += vblock_)
              gens_->forget(f.cb.offset + at);
          }
          free_.push_back(static_cast<uint32_t>(list_[i]->user_data));
        }
        return;
      }
      for (int i = 0; i < r; ++i) {
        Slot& s = slots_[list_[done + i]->user_data];
        s.t_submit = t1;
        s.in_flight = true;
      }
      inflight_ += static_cast<unsigned>(r);
      if (slots_[list_[done]->user_data].kind == SlotKind::kIo) {
        out_.depth[depth_bucket(inflight_)] += static_cast<unsigned>(r);
      }
      done += static_cast<unsigned>(r);
      last_ = t1;
    }
  }

  void reap(unsigned min_nr, uint64_t timeout_ns) {
    int n;
    if (timeout_ns > 0 && inflight_ > 0) {
      n = ctx_.get_events(min_nr, {events_.data(), complete_max_},
                          std::chrono::nanoseconds(timeout_ns));
    } else {
      n = ctx_.get_events(min_nr, {events_.data(), complete_max_});
    }
    const uint64_t now = clock_ns();
    last_ = now;
    if (!measuring_ && now >= ramp_end_) {
      measuring_ = true;
      stat_start_ = now;
      s_.live->measuring.store(true, std::memory_order_relaxed);
    }
    for (int i = 0; i < n; ++i)
      complete(slots_[events_[i].user_data], events_[i].res, now);
    inflight_ -= static_cast<unsigned>(n);
    publish();
  }

  void complete(Slot& s, int64_t res, uint64_t now) {
    s.in_flight = false;
    free_.push_back(static_cast<uint32_t>(&s - slots_.data()));
    if (res < 0) {
      if (s.kind == SlotKind::kIo) ++out_.dir[s.dir].errors;
      io_error(s, static_cast<int>(res), "failed");
      if (verifier_ && s.dir == kDirWrite && s.kind == SlotKind::kIo) {
        for (uint32_t at = 0; at < s.len; at += vblock_) gens_->forget(s.cb.offset + at);
      }
      return;
    }
    if (s.kind == SlotKind::kIo) {
      ios_[s.dir] += 1;
      bytes_[s.dir] += static_cast<uint64_t>(res);
      if (measuring_) {
        DirStats& d = out_.dir[s.dir];
        d.add(static_cast<uint64_t>(res), s.t_submit - s.t_start, now - s.t_submit);
        if (static_cast<uint64_t>(res) < s.len) ++d.short_ios;
      }
    }
    if (verifier_ && s.dir == kDirRead) check(s, static_cast<uint64_t>(res));
  }

  void check(const Slot& s, uint64_t bytes) {
    for (uint32_t at = 0; at + vblock_ <= bytes; at += vblock_) {
      const uint64_t off = s.cb.offset + at;
      const uint64_t want = gens_->covers(off) ? gens_->get(off) : 0;
      // A mixed job reads blocks it has not written yet: nothing to check
      // them against (fio does not verify those either). A read-only job
      // checks everything but the generation of such blocks.
      if (want == 0 && s.kind == SlotKind::kIo && rw_writes(job_.rw)) continue;
      VerifyResult r = verifier_->check(s.buf + at, off, want);
      ++out_.verify.checked;
      if (s.kind == SlotKind::kReadback) ++out_.verify.readback_blocks;
      if (r.ok()) continue;
      if (out_.verify.first.size() < VerifyStats::kKeep) {
        fmt::print(stderr, "{}: verify: {}\n", job_.name, r.message);
      }
      out_.verify.record(r);
      if (job_.verify_fatal && out_.error == 0) {
        out_.error = EILSEQ;
        out_.error_message = fmt::format("verify failed: {}", r.message);
      }
    }
  }

  void io_error(const Slot& s, int res, std::string_view what) {
    if (out_.error != 0) return;
    out_.error = -res;
    const char* op = s.kind == SlotKind::kSync ? "fsync"
                     : s.dir == kDirRead       ? "read"
                                               : "write";
    // Jobs run on threads of their own: strerror's buffer is not theirs to
    // share, the GNU strerror_r returns a string no other thread writes.
    char buf[128];
    const char* text = ::strerror_r(-res, buf, sizeof buf);
    out_.error_message = s.kind == SlotKind::kSync
                             ? fmt::format("{} {}: {}", op, what, text)
                             : fmt::format("{} at offset {} ({} bytes) {}: {}", op,
                                           s.cb.offset, s.len, what, text);
    fmt::print(stderr, "{}: {}\n", job_.name, out_.error_message);
  }

  void do_sync() {
    Slot& s = slots_[depth_];
    s.kind = SlotKind::kSync;
    s.cb = Iocb::fsync(nullptr, depth_);
    s.cb.bdev = s_.dev;
    s.len = 0;
    s.t_start = clock_ns();
    Iocb* one[] = {&s.cb};
    const int r = ctx_.submit(one);
    if (r != 1) {
      io_error(s, r < 0 ? r : -EAGAIN, "refused at submission");
      return;
    }
    s.t_submit = clock_ns();
    s.in_flight = true;
    IoEvent ev;
    while (ctx_.get_events(1, {&ev, 1}) != 1) {
    }
    const uint64_t now = clock_ns();
    last_ = now;
    s.in_flight = false;
    writes_since_sync_ = 0;
    if (ev.res < 0) {
      io_error(s, static_cast<int>(ev.res), "failed");
      return;
    }
    if (measuring_) {
      ++out_.sync_ios;
      out_.sync_lat.add(now - s.t_start);
    }
  }

  // After a write job: read back every block it wrote and check it.
  void readback() {
    const uint64_t t0 = clock_ns();
    const uint64_t start = s_.region_start, end = s_.region_start + s_.region_len;
    const uint32_t max_chunk = std::max(vblock_, job_.max_bs() / vblock_ * vblock_);
    uint64_t pos = start;
    while (true) {
      while (!free_.empty() && pos < end && !stopped()) {
        // The next run of written blocks, up to a buffer's worth.
        while (pos < end && gens_->get(pos) == 0) pos += vblock_;
        if (pos >= end) break;
        uint32_t len = 0;
        while (len < max_chunk && pos + len < end && gens_->get(pos + len) != 0)
          len += vblock_;
        Slot& s = slots_[free_.back()];
        free_.pop_back();
        s.kind = SlotKind::kReadback;
        s.dir = kDirRead;
        s.len = len;
        s.cb.op = IoOp::kPread;
        s.cb.buf = s.buf;
        s.cb.len = len;
        s.cb.offset = pos;
        s.t_start = clock_ns();
        list_[0] = &s.cb;
        submit(1);
        pos += len;
        if (failed()) break;
      }
      if (inflight_ == 0) break;
      reap(1, 0);
    }
    out_.verify.readback_ns = clock_ns() - t0;
  }

  void publish() {
    for (int d = 0; d < kDirs; ++d) {
      s_.live->ios[d].store(ios_[d], std::memory_order_relaxed);
      s_.live->bytes[d].store(bytes_[d], std::memory_order_relaxed);
    }
  }

  const WorkerSetup& s_;
  const JobOptions& job_;
  ThreadResult& out_;
  const unsigned depth_, batch_, complete_min_, complete_max_;
  IoContext ctx_;
  IssuerWeight weight_;  // bfq_weight=, for ctx_'s issuer
  OffsetGenerator offsets_;
  SizePicker sizes_;
  const Verifier* verifier_;
  GenerationMap* gens_;
  const uint32_t vblock_;

  std::unique_ptr<std::byte, AlignedFree> bufs_;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;  // a stack of free slot indexes
  std::vector<IoEvent> events_;
  std::vector<Iocb*> list_;
  int held_ = -1;  // a prepared I/O waiting for an overlapping one to finish
  unsigned inflight_ = 0;

  uint64_t t_begin_ = 0, ramp_end_ = 0, deadline_ = 0, stat_start_ = 0, last_ = 0;
  bool measuring_ = false;
  bool need_sync_ = false;
  uint64_t rate_wait_ns_ = 0;
  uint64_t target_bytes_ = 0, target_ios_ = 0;
  uint64_t issued_bytes_ = 0, issued_ios_ = 0, writes_since_sync_ = 0;
  uint64_t ios_[kDirs] = {}, bytes_[kDirs] = {};
};

}  // namespace

GenerationMap::GenerationMap(uint64_t base, uint64_t len, uint32_t block)
    : base_(base), len_(len), block_(block) {
  const uint64_t n = (len + block - 1) / block;
  constexpr uint64_t kMax = uint64_t{1} << 26;  // 256 MiB of map
  if (n > kMax) {
    throw Error(
        fmt::format("verify: {} blocks of {} bytes are too many to track; use a smaller "
                    "size= or a larger "
                    "verify_interval",
                    n, block));
  }
  gens_.reset(new std::atomic<uint32_t>[n]());
}

void run_worker(const WorkerSetup& setup, ThreadResult& out) {
  try {
    Worker w(setup, out);
    w.run();
  } catch (const std::exception& e) {
    if (out.error == 0) {
      out.error = EIO;
      out.error_message = e.what();
    }
  }
  setup.live->done.store(true, std::memory_order_release);
}

}  // namespace blkstack::bench
