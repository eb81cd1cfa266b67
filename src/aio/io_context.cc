#include "blkstack/io_context.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <climits>

#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/error.h"
#include "blkstack/page_cache.h"
#include "blkstack/submit.h"
#include "core/wait.h"

namespace blkstack {

// The kernel's MAX_RW_COUNT: longer reads and writes are cut to this and
// report the shorter count, as read(2) and io_submit do.
constexpr uint64_t kMaxRwCount = (uint64_t{INT_MAX} & ~uint64_t{4095});
constexpr unsigned kInlineSegments = 8;

// The state of one accepted iocb (the kernel's aio_kiocb). Two sides hold
// it: the submitting side until submit_one() returns, and the bio until it
// completes. The last to let go posts the event.
struct Kiocb {
  IoContext* ctx = nullptr;
  Iocb* user = nullptr;
  std::atomic<uint32_t> refs{0};
  std::atomic<int> error{0};         // first errno, positive
  std::atomic<bool> started{false};  // the bio is set up: cancel may look at it
  Disk* polled = nullptr;            // the disk get_events polls for it, if any
  PageCache* invalidate = nullptr;   // a direct write's cache, to drop again after
  uint64_t bytes = 0;                // what the bio moves when it succeeds
  Kiocb* prev = nullptr;             // the context's in-flight list
  Kiocb* next = nullptr;
  Bio bio;
  BioStart start;  // to send the bio again when the device is busy
  Segment segs[kInlineSegments];
  std::unique_ptr<Segment[]> more_segs;  // only for iovecs longer than 8
};

namespace {

void set_error(Kiocb& k, int err) {
  int none = 0;
  k.error.compare_exchange_strong(none, err, std::memory_order_acq_rel);
}

// Where an iocb's device starts on its disk, in bytes: 0 for a whole disk.
uint64_t partition_base(const Iocb& cb) {
  return cb.bdev ? cb.bdev->start() << kSectorShift : 0;
}

void bio_done(Bio& bio) {
  Kiocb& k = *static_cast<Kiocb*>(bio.context());
  // Busy is back-pressure, not an error for the event: again, later.
  if (status_is_busy(bio.status())) [[unlikely]] {
    resubmit_busy(bio, k.start);
    return;
  }
  if (bio.status() != Status::kOk) set_error(k, status_to_errno(bio.status()));
  if (k.invalidate) [[unlikely]] {
    // A reader may have cached the old data while this write went on:
    // drop it, or say in this event that it could not (seed 002).
    const int e = k.invalidate->invalidate_after_direct_write(
        k.user->offset + partition_base(*k.user), k.bytes);
    if (e != 0) set_error(k, -e);
  }
  k.ctx->put_kiocb(k);
}

bool is_write(IoOp op) { return op == IoOp::kPwrite || op == IoOp::kPwritev; }

}  // namespace

IoContext::IoContext(unsigned max_events)
    : max_events_(max_events == 0 ? 1 : max_events),
      kiocbs_(new Kiocb[max_events_]),
      ring_(max_events_) {
  for (unsigned i = 0; i < max_events_; ++i) {
    kiocbs_[i].next = free_;
    free_ = &kiocbs_[i];
  }
}

IoContext::~IoContext() {
  // io_destroy: wait for everything accepted, dropping the events.
  std::vector<IoEvent> drop(max_events_);
  while (in_flight() > 0) get_events(1, drop);
}

int IoContext::submit(std::span<Iocb* const> iocbs) {
  int accepted = 0;
  for (Iocb* cb : iocbs) {
    int r = submit_one(*cb);
    if (r < 0) return accepted > 0 ? accepted : r;
    ++accepted;
  }
  return accepted;
}

int IoContext::submit_one(Iocb& cb) {
  Disk* disk = cb.bdev ? &cb.bdev->disk() : cb.disk;
  if (disk == nullptr) return -EBADF;
  const QueueLimits& lim = disk->limits();

  // Validate everything before taking a slot: a refused iocb leaves no trace.
  Op op;
  uint64_t len = cb.len;
  switch (cb.op) {
    case IoOp::kPread:
    case IoOp::kPreadv:
      op = Op::kRead;
      break;
    case IoOp::kPwrite:
    case IoOp::kPwritev:
      op = Op::kWrite;
      break;
    case IoOp::kFsync:
    case IoOp::kFdsync:
      op = Op::kFlush;
      len = 0;
      break;
    case IoOp::kDiscard:
      op = Op::kDiscard;
      break;
    case IoOp::kWriteZeroes:
      op = Op::kWriteZeroes;
      break;
    default:
      return -EINVAL;
  }
  const bool vectored = cb.op == IoOp::kPreadv || cb.op == IoOp::kPwritev;
  if (vectored) {
    if (cb.iovcnt > IOV_MAX || (cb.iovcnt > 0 && cb.iov == nullptr)) return -EINVAL;
    len = 0;
    for (unsigned i = 0; i < cb.iovcnt; ++i) {
      // Checked one by one: lengths near 2^64 would wrap the sum to a small
      // total, and each is cut to 32 bits for its Segment below.
      if (cb.iov[i].iov_len > kMaxRwCount) return -EINVAL;
      len += cb.iov[i].iov_len;
    }
  } else if (op_has_data(op) && cb.buf == nullptr && len > 0) {
    return -EFAULT;
  }
  if (op_has_data(op) && len > kMaxRwCount) {
    if (vectored) return -EINVAL;
    len = kMaxRwCount;  // a short transfer, reported in the event
  }
  if (!op_has_data(op) && op != Op::kFlush &&
      len > UINT32_MAX / kSectorSize * kSectorSize) {
    return -EINVAL;
  }
  // Buffered I/O through the disk's page cache (page_cache.h), if it has
  // one: any bytes, done here as Linux AIO does buffered I/O.
  PageCache* const cache = disk->page_cache();
  const bool buffered = cache != nullptr && !(cb.flags & kIocbDirect) &&
                        (op == Op::kRead || op == Op::kWrite || op == Op::kFlush);
  // The block layer moves whole logical blocks; with kIocbDirect the memory
  // must be aligned as well (O_DIRECT's rules).
  const uint64_t lbs = lim.logical_block_size;
  if (!buffered && op != Op::kFlush && (cb.offset % lbs != 0 || len % lbs != 0))
    return -EINVAL;
  if ((cb.flags & kIocbDirect) && op_has_data(op)) {
    auto misaligned = [&](const void* p) {
      return reinterpret_cast<uintptr_t>(p) % kSectorSize != 0;
    };
    if (vectored) {
      for (unsigned i = 0; i < cb.iovcnt; ++i) {
        if (misaligned(cb.iov[i].iov_base) || cb.iov[i].iov_len % kSectorSize != 0)
          return -EINVAL;
      }
    } else if (misaligned(cb.buf)) {
      return -EINVAL;
    }
  }
  if ((cb.flags & kIocbIoprio) && !ioprio_valid(cb.reqprio)) return -EINVAL;
  if (is_write(cb.op) && (cb.bdev ? cb.bdev->read_only() : disk->read_only()))
    return -EROFS;

  // A slot: one per iocb accepted and not yet reaped.
  unsigned cur = in_flight_.load(std::memory_order_relaxed);
  do {
    if (cur >= max_events_) return -EAGAIN;
  } while (!in_flight_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel));

  Kiocb* kp;
  {
    // One per slot: a kiocb is free again before its event can be reaped.
    // It goes on the in-flight list (for cancel) at once.
    std::lock_guard lock(lock_);
    kp = free_;
    free_ = kp->next;
    kp->user = &cb;
    kp->refs.store(2, std::memory_order_relaxed);  // this side and the bio
    // Polled before the bio exists: it may complete inside submit_bio().
    const bool polled =
        (cb.flags & kIocbHipri) && disk->driver().can_poll() && track_polled(disk);
    kp->polled = polled ? disk : nullptr;
    // A reaper asleep on the condition variable must start polling.
    if (polled && waiters_ > 0) cv_.notify_all();
    kp->prev = nullptr;
    kp->next = active_;
    if (active_) active_->prev = kp;
    active_ = kp;
  }
  Kiocb& k = *kp;
  k.ctx = this;
  k.error.store(0, std::memory_order_relaxed);
  k.bytes = op_has_data(op) ? len : 0;
  k.invalidate = nullptr;
  if (buffered) {
    if (int e = buffered_io(*cache, *disk, cb, op, len); e != 0) set_error(k, e);
    put_kiocb(k);  // no bio: both sides let go here
    put_kiocb(k);
    return 0;
  }
  if (cache != nullptr && op_has_data(op) && (cb.flags & kIocbDirect)) {
    // Direct I/O beside the cache: a read sees what is dirty there, a
    // write drops what is cached before and after. An error stops the I/O
    // and is this iocb's result, once.
    int e = 0;
    const uint64_t at = cb.offset + partition_base(cb);  // the cache is the disk's
    if (op == Op::kRead && !cache->empty()) {
      const Status st = cache->writeback_range(at, len);
      if (st != Status::kOk) e = status_to_errno(st);
    } else if (op == Op::kWrite) {
      e = -cache->invalidate_for_direct_write(at, len);
      k.invalidate = cache;
    }
    if (e != 0) {
      k.invalidate = nullptr;
      set_error(k, e);
      put_kiocb(k);
      put_kiocb(k);
      return 0;
    }
  }

  std::span<Segment> segs;
  if (vectored) {
    Segment* table = k.segs;
    if (cb.iovcnt > kInlineSegments) {
      k.more_segs.reset(new Segment[cb.iovcnt]);  // rare: long iovecs only
      table = k.more_segs.get();
    }
    for (unsigned i = 0; i < cb.iovcnt; ++i) {
      table[i] = Segment(cb.iov[i].iov_base, static_cast<uint32_t>(cb.iov[i].iov_len));
    }
    segs = {table, cb.iovcnt};
  } else if (op_has_data(op)) {
    k.segs[0] = Segment(cb.buf, static_cast<uint32_t>(len));
    segs = {k.segs, 1};
  }
  // A partition's bio is remapped onto its disk by submit_bio.
  BlockDevice* dev = cb.bdev ? cb.bdev : &disk->part0();
  if (op_has_data(op)) {
    k.bio.init(dev, op, cb.offset >> kSectorShift, segs, bio_done, &k);
  } else {
    k.bio.init_nodata(dev, op, cb.offset >> kSectorShift, static_cast<uint32_t>(len),
                      bio_done, &k);
  }
  // RWF_DSYNC asks for durable writes; on a read it means nothing, and a
  // FUA read would send it through the flush machinery (a flush after it
  // on a cached disk without FUA) for no benefit. Linux sets FUA on
  // direct writes only.
  if ((cb.flags & kIocbDsync) && is_write(cb.op)) k.bio.set_flags(BioFlag::kFua);
  if (cb.op == IoOp::kFsync || cb.op == IoOp::kFdsync)
    k.bio.set_flags(BioFlag::kPreflush);
  if (cb.flags & kIocbNowait) k.bio.set_flags(BioFlag::kNowait);
  if (k.polled) k.bio.set_flags(BioFlag::kPolled);
  if (cb.flags & kIocbIoprio) k.bio.set_ioprio(cb.reqprio);
  k.bio.set_issuer(issuer_);
  k.started.store(true, std::memory_order_release);
  // Made from what the bio was made of rather than read back from it: a
  // wide load of its iterator right after the narrow stores that wrote it
  // stalls store forwarding, ~10 ns an I/O.
  k.start = {k.bio.bdev(), BioIter{cb.offset >> kSectorShift, static_cast<uint32_t>(len)},
             k.bio.flags()};
  submit_bio(k.bio);
  put_kiocb(k);  // the submitting side lets go; the event may post now
  return 0;
}

int IoContext::buffered_io(PageCache& cache, Disk& disk, const Iocb& cb, Op op,
                           uint64_t len) {
  Status st = Status::kOk;
  if (last_opened_.load(std::memory_order_relaxed) != &disk) cache_sample(cache, &disk);
  // The cache is the whole disk's: a partition's bytes are at its start,
  // and may not reach past its end.
  const uint64_t base = partition_base(cb);
  const uint64_t dev_bytes = cb.bdev ? cb.bdev->size_bytes() : disk.size_bytes();
  if (op != Op::kFlush && (cb.offset > dev_bytes || len > dev_bytes - cb.offset))
    return status_to_errno(Status::kOutOfRange);
  if (op == Op::kFlush) {
    PageCache::Opener opener{cache_sample(cache, &disk)};
    st = cache.fsync(opener);
    std::lock_guard lock(lock_);
    for (CacheOpener& o : openers_) {
      if (o.disk == &disk) o.since = opener.since;
    }
  } else if (cb.op == IoOp::kPreadv || cb.op == IoOp::kPwritev) {
    uint64_t off = cb.offset + base;
    for (unsigned i = 0; i < cb.iovcnt && st == Status::kOk; ++i) {
      st = op == Op::kRead ? cache.read(cb.iov[i].iov_base, cb.iov[i].iov_len, off)
                           : cache.write(cb.iov[i].iov_base, cb.iov[i].iov_len, off);
      off += cb.iov[i].iov_len;
    }
  } else {
    st = op == Op::kRead ? cache.read(cb.buf, len, cb.offset + base)
                         : cache.write(cb.buf, len, cb.offset + base);
  }
  return st == Status::kOk ? 0 : status_to_errno(st);
}

uint32_t IoContext::cache_sample(PageCache& cache, Disk* disk) {
  // This context opened the disk (for errseq) when it first used it.
  std::lock_guard lock(lock_);
  for (CacheOpener& o : openers_) {
    if (o.disk == disk) return o.since;
  }
  const uint32_t since = cache.open().since;
  openers_.push_back({disk, since});
  last_opened_.store(disk, std::memory_order_relaxed);
  return since;
}

void IoContext::put_kiocb(Kiocb& k) {
  if (k.refs.fetch_sub(1, std::memory_order_acq_rel) == 1) post_event(k);
}

void IoContext::post_event(Kiocb& k) {
  const int err = k.error.load(std::memory_order_acquire);
  IoEvent ev{k.user->user_data, k.user,
             err ? -int64_t{err} : static_cast<int64_t>(k.bytes), 0};
  const int resfd = k.user->resfd;
  k.more_segs.reset();
  std::lock_guard lock(lock_);
  if (k.polled) untrack_polled(k.polled);
  (k.prev ? k.prev->next : active_) = k.next;
  if (k.next) k.next->prev = k.prev;
  // Free before the event is visible: once reaped, its slot may be
  // taken again at once, and must find a free kiocb.
  k.started.store(false, std::memory_order_relaxed);
  k.prev = nullptr;
  k.next = free_;
  free_ = &k;
  ring_[(head_ + count_) % ring_.size()] = ev;
  ++count_;
  // Signal and wake before unlocking: once the lock is dropped the event
  // can be reaped, and then the context may be destroyed (its condition
  // variable with it) and the eventfd closed and its number reused.
  // Nothing here may be touched after that.
  if (resfd >= 0) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(resfd, &one, sizeof one);
  }
  if (waiters_ > 0) cv_.notify_all();
}

bool IoContext::track_polled(Disk* disk) {
  // A disk is tracked with a poll reference, taken with its first polled
  // iocb (the caller's disk is alive then) and dropped with its last event:
  // it keeps the disk alive while poll_disks() may still name it.
  PolledDisk* free_slot = nullptr;
  for (PolledDisk& p : polled_) {
    if (p.disk == disk) {
      ++p.iocbs;
      ++polled_iocbs_;
      return true;
    }
    if (p.disk == nullptr && free_slot == nullptr) free_slot = &p;
  }
  if (free_slot == nullptr || !disk->get_poll_ref()) return false;
  *free_slot = {disk, 1};
  ++polled_iocbs_;
  return true;
}

void IoContext::untrack_polled(Disk* disk) {
  for (PolledDisk& p : polled_) {
    if (p.disk == disk) {
      if (--p.iocbs == 0) {
        p.disk = nullptr;
        disk->put_poll_ref();
      }
      --polled_iocbs_;
      return;
    }
  }
}

int IoContext::poll_disks(std::unique_lock<std::mutex>& lock, uint64_t wait_ns) {
  // Only one disk may be waited on: a sleep in one ring would not see the
  // others' completions. Each disk is polled under a poll reference of our
  // own, taken while its tracking reference holds it: completing our last
  // iocb on it drops that one, and another thread may then reap the event
  // and remove the disk while we are still inside its driver.
  Disk* disks[kMaxPolledDisks];
  unsigned n = 0;
  for (const PolledDisk& p : polled_) {
    if (p.disk && p.disk->get_poll_ref()) disks[n++] = p.disk;
  }
  lock.unlock();
  int done = 0;
  bool busy = false;
  for (unsigned i = 0; i < n; ++i) {
    const int r = disks[i]->poll(n == 1 ? wait_ns : 0);
    disks[i]->put_poll_ref();
    if (r == BioDriver::kPollBusy)
      busy = true;
    else
      done += r;
  }
  lock.lock();
  return done == 0 && busy ? BioDriver::kPollBusy : done;
}

int IoContext::get_events(unsigned min_nr, std::span<IoEvent> events,
                          std::optional<std::chrono::nanoseconds> timeout) {
  using Clock = std::chrono::steady_clock;
  if (min_nr > events.size()) min_nr = static_cast<unsigned>(events.size());
  std::unique_lock lock(lock_);
  if (count_ < min_nr) {
    lock.unlock();
    prepare_to_wait("IoContext::get_events");
    lock.lock();
    // wait_until() with now() + a timeout near nanoseconds::max() would
    // overflow into the past and return at once. A timeout beyond what
    // the clock can count means forever.
    const auto now = Clock::now();
    const bool forever = !timeout || *timeout >= Clock::time_point::max() - now;
    const auto deadline = forever ? Clock::time_point::max() : now + *timeout;
    auto ready = [&] { return count_ >= min_nr; };
    while (!ready()) {
      const auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero()) break;
      if (polled_iocbs_ > 0) {
        // Polled iocbs complete only when polled: do it here, sleeping in
        // the ring for the first completion.
        const int r = poll_disks(
            lock,
            static_cast<uint64_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(left).count()));
        if (r > 0 || ready()) continue;
        // Another thread is polling (and posts our events), or our
        // polled I/O is not in a ring yet (parked for a tag, say): look
        // again shortly. Not forever: that thread may leave first.
        ++waiters_;
        cv_.wait_for(lock,
                     std::min<Clock::duration>(left, std::chrono::microseconds(50)));
        --waiters_;
        continue;
      }
      ++waiters_;
      if (forever) {
        cv_.wait(lock, [&] { return ready() || polled_iocbs_ > 0; });
      } else {
        cv_.wait_until(lock, deadline, [&] { return ready() || polled_iocbs_ > 0; });
      }
      --waiters_;
    }
  }
  const size_t n = std::min(count_, events.size());
  for (size_t i = 0; i < n; ++i) {
    events[i] = ring_[head_];
    head_ = (head_ + 1) % ring_.size();
  }
  count_ -= n;
  lock.unlock();
  in_flight_.fetch_sub(static_cast<unsigned>(n), std::memory_order_acq_rel);
  return static_cast<int>(n);
}

int IoContext::cancel(Iocb& iocb) {
  Kiocb* k = nullptr;
  {
    std::lock_guard lock(lock_);
    for (Kiocb* p = active_; p != nullptr; p = p->next) {
      if (p->user == &iocb) {
        k = p;
        break;
      }
    }
    if (!k) return -EINVAL;
    // Hold the kiocb while asking the disk, unless its last holder has let
    // go already (its event is being posted: too late to cancel).
    uint32_t refs = k->refs.load(std::memory_order_acquire);
    do {
      if (refs == 0) return -EINPROGRESS;
    } while (!k->refs.compare_exchange_weak(refs, refs + 1, std::memory_order_acq_rel));
  }
  // Not yet set up (being submitted right now): it is under way.
  const bool cancelled = k->started.load(std::memory_order_acquire) &&
                         k->bio.disk()->cancel(k->bio);  // completes it with ECANCELED
  put_kiocb(*k);
  return cancelled ? 0 : -EINPROGRESS;
}

}  // namespace blkstack
