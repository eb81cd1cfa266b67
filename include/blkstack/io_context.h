// IoContext: the asynchronous submission interface (Linux AIO's kioctx:
// io_setup, io_submit, io_getevents, io_cancel, io_destroy).
//
//   IoContext ctx(128);                    // io_setup(128)
//   Iocb cb = Iocb::pread(disk, buf, 4096, 0, /*user_data=*/7);
//   Iocb* list[] = {&cb};
//   ctx.submit(list);                      // io_submit
//   IoEvent ev[8];
//   int n = ctx.get_events(1, ev);         // io_getevents
//
// Exactly once, always (seed 002): every iocb submit() accepts produces one
// IoEvent, whether its I/O is split into many bios, fails part-way, fails
// after it was queued, or is cancelled. An error found late replaces the
// byte count in the event (the kernel's ki_pending_err rule), and the event
// is posted only after both the submitting side and the completing side
// have let go of the iocb's state, so the state is never freed under either.
//
// Thread-safe: several threads may submit to and reap from one context. An
// Iocb must stay valid (and unmodified) until its event is reaped.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "blkstack/bio.h"

namespace blkstack {

class BlockDevice;
class Disk;
class PageCache;
struct Kiocb;

enum class IoOp : uint8_t {
  kPread,
  kPwrite,
  kPreadv,
  kPwritev,
  kFsync,
  kFdsync,
  kDiscard,
  kWriteZeroes,
};

// Iocb flags (RWF_* and IOCB_FLAG_*).
enum IocbFlags : uint32_t {
  kIocbDsync = 1u << 0,   // RWF_DSYNC: the write is durable when done (FUA)
  kIocbNowait = 1u << 1,  // RWF_NOWAIT: -EAGAIN rather than wait for a tag
  kIocbDirect = 1u << 2,  // O_DIRECT rules: offset and length aligned to the
                          // logical block size, memory to 512 bytes, else -EINVAL.
                          // Without it, on a disk with a page cache
                          // (page_cache.h), reads, writes and fsyncs go
                          // through the cache, at any byte offset
  kIocbHipri = 1u << 3,   // RWF_HIPRI: polled I/O on a disk with poll queues
                          // (completed by get_events polling; else ignored)
  kIocbIoprio = 1u << 4,  // IOCB_FLAG_IOPRIO: `reqprio` is the bio's I/O
                          // priority (ioprio.h); an invalid one is -EINVAL
};

struct Iocb {
  uint64_t user_data = 0;  // returned in the event (aio_data)
  IoOp op = IoOp::kPread;
  uint32_t flags = 0;
  Disk* disk = nullptr;
  void* buf = nullptr;         // pread/pwrite
  uint64_t len = 0;            // pread/pwrite/discard/write-zeroes: bytes
  const iovec* iov = nullptr;  // preadv/pwritev
  unsigned iovcnt = 0;
  uint64_t offset = 0;   // bytes
  int resfd = -1;        // IOCB_FLAG_RESFD: eventfd to bump per event
  uint16_t reqprio = 0;  // aio_reqprio, with kIocbIoprio
  // A block device to address instead of `disk`'s whole (a partition, as
  // io_submit on an fd of /dev/sda1): offsets are the device's, `disk` is
  // not read. It must outlive the iocb's event.
  BlockDevice* bdev = nullptr;

  static Iocb pread(Disk* d, void* buf, uint64_t len, uint64_t off,
                    uint64_t user_data = 0) {
    return Iocb{user_data, IoOp::kPread, 0, d, buf, len, nullptr, 0, off, -1};
  }
  static Iocb pwrite(Disk* d, const void* buf, uint64_t len, uint64_t off,
                     uint64_t user_data = 0) {
    return Iocb{user_data, IoOp::kPwrite, 0, d,   const_cast<void*>(buf),
                len,       nullptr,       0, off, -1};
  }
  static Iocb fsync(Disk* d, uint64_t user_data = 0) {
    return Iocb{user_data, IoOp::kFsync, 0, d, nullptr, 0, nullptr, 0, 0, -1};
  }
};

struct IoEvent {
  uint64_t user_data = 0;
  Iocb* obj = nullptr;  // the iocb this event is for
  int64_t res = 0;      // bytes done, or -errno
  int64_t res2 = 0;     // 0 (for AIO compatibility)
};

class IoContext {
 public:
  // Room for `max_events` iocbs in flight and events not yet reaped.
  explicit IoContext(unsigned max_events);
  // Waits for every accepted iocb to complete (io_destroy); their events
  // are dropped.
  ~IoContext();
  IoContext(const IoContext&) = delete;
  IoContext& operator=(const IoContext&) = delete;

  // Accepts iocbs in order until one does not fit or is invalid; returns
  // how many were accepted. If the first is refused, returns a negative
  // errno instead: -EAGAIN when the context is full, -EINVAL for a bad
  // iocb (misaligned direct I/O, an op the disk cannot do), -EBADF for a
  // missing disk, as io_submit does. Never blocks.
  int submit(std::span<Iocb* const> iocbs);

  // Waits until at least `min_nr` events are ready (or the timeout passes;
  // nullopt waits forever) and moves up to events.size() of them out.
  // Returns how many.
  int get_events(unsigned min_nr, std::span<IoEvent> events,
                 std::optional<std::chrono::nanoseconds> timeout = std::nullopt);

  // Asks to cancel an accepted iocb. Returns 0 if it was cancelled before
  // any of it reached a device (its event carries -ECANCELED), -EINPROGRESS
  // if its I/O is under way, even in part (a split iocb some of whose
  // pieces were issued): its event comes as usual, with its real result.
  // -EINVAL if the iocb is not in flight on this context.
  int cancel(Iocb& iocb);

  unsigned max_events() const { return max_events_; }
  unsigned in_flight() const { return in_flight_.load(std::memory_order_acquire); }
  // The issuer its bios carry (Bio::issuer()): what a scheduler groups
  // them by, and the id bfq's `weights` tunable takes.
  IssuerId issuer() const { return issuer_; }

  // --- internal, used by the completion path -------------------------------
  void put_kiocb(Kiocb& k);

 private:
  int submit_one(Iocb& cb);
  // A read, write or fsync through the disk's page cache, done in
  // submit(); 0 or a positive errno.
  int buffered_io(PageCache& cache, Disk& disk, const Iocb& cb, Op op, uint64_t len);
  // This context's errseq sample for the disk's cache, taken at its first
  // iocb there (it "opens" the disk then).
  uint32_t cache_sample(PageCache& cache, Disk* disk);
  struct CacheOpener {
    Disk* disk = nullptr;
    uint32_t since = 0;
  };
  // Under lock_; one per disk used buffered, grown on a disk's first iocb
  // (not per I/O): a sample lost would hide a write-back error.
  std::vector<CacheOpener> openers_;
  std::atomic<Disk*> last_opened_{nullptr};  // skips the lookup above
  void post_event(Kiocb& k);
  // Polls the disks with polled iocbs in flight; the result as Disk's
  // poll(). Under no lock.
  int poll_disks(std::unique_lock<std::mutex>& lock, uint64_t wait_ns);

  // Disks with polled iocbs in flight, and how many on each (under lock_);
  // each holds a poll reference on its disk (Disk::get_poll_ref) until its
  // last event is posted. Few: an iocb for a fifth disk is not polled.
  struct PolledDisk {
    Disk* disk = nullptr;
    unsigned iocbs = 0;
  };
  static constexpr unsigned kMaxPolledDisks = 4;
  PolledDisk polled_[kMaxPolledDisks];
  unsigned polled_iocbs_ = 0;
  bool track_polled(Disk* disk);
  void untrack_polled(Disk* disk);

  unsigned max_events_;
  // This context's issuer id: its bios are grouped by it (ioprio.h).
  const IssuerId issuer_ = new_issuer_id();
  std::unique_ptr<Kiocb[]> kiocbs_;  // one per slot: nothing allocated per I/O
  Kiocb* free_ = nullptr;            // under lock_

  std::atomic<unsigned> in_flight_{0};  // accepted, event not yet reaped
  std::mutex lock_;                     // the ring and the in-flight list
  std::condition_variable cv_;
  std::vector<IoEvent> ring_;
  size_t head_ = 0, count_ = 0;
  unsigned waiters_ = 0;
  Kiocb* active_ = nullptr;  // in-flight kiocbs, for cancel (under lock_)
};

// Synchronous and coroutine wrappers over an IoContext: io_coro.h.

}  // namespace blkstack
