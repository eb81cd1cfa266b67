#include "drivers/uring_queue.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/falloc.h>
#include <linux/magic.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>

#include "blkstack/error.h"

namespace blkstack {
namespace {
// user_data of the entry that tells the completion thread to stop, and of
// the timeouts that delay an operation (HostIo::delay_ns), whose own
// completions mean nothing to anyone.
constexpr uint64_t kStopTag = ~uint64_t{0};
constexpr uint64_t kDelayTag = ~uint64_t{1};
// The ring whose completions this thread is calling back for: a callback
// that resubmits must not try to reap the same ring again (its lock is
// ours already; the loop around the callbacks picks up what it adds).
thread_local const UringQueue* t_reaping = nullptr;

// A read or write. One segment (most I/O) goes as a plain READ or WRITE:
// the kernel then copies in no iovec array.
void prep_transfer(io_uring_sqe* sqe, const HostIo& io, int fd) {
  const bool read = io.kind == HostIo::kRead;
  if (io.iovcnt == 1) {
    io_uring_prep_rw(read ? IORING_OP_READ : IORING_OP_WRITE, sqe, fd, io.iov[0].iov_base,
                     static_cast<unsigned>(io.iov[0].iov_len), io.offset);
  } else {
    io_uring_prep_rw(read ? IORING_OP_READV : IORING_OP_WRITEV, sqe, fd, io.iov,
                     io.iovcnt, io.offset);
  }
  sqe->rw_flags = io.rw_flags;
}
// Whether any swap area is active (/proc/swaps lists one past its header).
bool swap_active() {
  FILE* f = std::fopen("/proc/swaps", "re");
  if (f == nullptr) return true;  // cannot tell: assume pages may be out
  int lines = 0;
  for (int c; (c = std::fgetc(f)) != EOF;) lines += c == '\n';
  std::fclose(f);
  return lines > 1;
}
}  // namespace

UringQueue::InlineReads UringQueue::inline_reads_for(int fd) {
  struct statfs fs;
  // tmpfs O_DIRECT is the same copy from the page cache as a buffered read.
  // Swap turned on later (swapon) could make such a read wait for a page
  // to come back in: a rare stall on a submitting thread, not a deadlock.
  if (fstatfs(fd, &fs) == 0 && fs.f_type == TMPFS_MAGIC && !swap_active())
    return InlineReads::kResident;
  const int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || (fl & O_DIRECT) != 0) return InlineReads::kNever;
  return InlineReads::kNowait;
}

UringQueue::UringQueue(int fd, int alt_fd, const Options& o, Callback on_complete)
    : fds_{fd, alt_fd >= 0 ? alt_fd : fd},
      fixed_(o.fixed_file),
      on_complete_(on_complete),
      polled_(!o.completion_thread) {
  io_uring_params p{};
  if (o.sqpoll) {
    p.flags |= IORING_SETUP_SQPOLL;
    p.sq_thread_idle = 50;  // ms before the kernel thread sleeps
  }
  // A poll queue's completions are reaped by the threads that submit to it
  // and then poll it, so the kernel need not interrupt them with an IPI
  // for each completion (COOP_TASKRUN): the work runs when they next enter
  // the kernel, which a poller does at once. With a completion thread the
  // submitter is not the reaper, and must be interrupted. (Without that
  // flag each io-wq completion on tmpfs cost an IPI: 160k IOPS where fio,
  // which sets it, did 700k.)
  if (!o.completion_thread && !o.sqpoll)
    p.flags |= IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
  int r = io_uring_queue_init_params(o.entries, &ring_, &p);
  if (r == -EINVAL && (p.flags & IORING_SETUP_COOP_TASKRUN)) {  // kernels before 5.19
    p = io_uring_params{};
    r = io_uring_queue_init_params(o.entries, &ring_, &p);
  }
  if (r < 0) throw Error(fmt::format("io_uring setup failed: {}", std::strerror(-r)));
  if (fixed_ && io_uring_register_files(&ring_, fds_, 2) < 0) fixed_ = false;
  delay_ts_ = std::make_unique<__kernel_timespec[]>(ring_.sq.ring_entries);
  inline_reads_.store(inline_reads_for(fd), std::memory_order_relaxed);
  if (o.completion_thread) reaper_ = std::thread([this] { wait_and_reap(); });
}

UringQueue::~UringQueue() {
  if (!reaper_.joinable()) {
    io_uring_queue_exit(&ring_);
    return;
  }
  {
    std::lock_guard lock(lock_);
    io_uring_sqe* sqe;
    while ((sqe = io_uring_get_sqe(&ring_)) == nullptr) io_uring_submit(&ring_);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, kStopTag);
    io_uring_submit(&ring_);
  }
  reaper_.join();
  io_uring_queue_exit(&ring_);
}

bool UringQueue::queue(const HostIo& io, void* ctx) {
  std::lock_guard lock(lock_);
  const unsigned entries = io.delay_ns != 0 ? 2 : 1;
  if (io_uring_sq_space_left(&ring_) < entries) {
    io_uring_submit(&ring_);  // make room
    if (io_uring_sq_space_left(&ring_) < entries) return false;
  }
  if (io.delay_ns != 0) {
    // A timeout linked in front: the operation starts when it expires.
    // ETIME_SUCCESS (Linux 5.16) makes expiry a success, so the link goes
    // on. The kernel reads the timespec when it consumes the entry; only
    // then can the slot, and with it the timespec of the same index, be
    // reused.
    io_uring_sqe* timeout = io_uring_get_sqe(&ring_);
    __kernel_timespec& ts = delay_ts_[timeout - ring_.sq.sqes];
    ts.tv_sec = static_cast<int64_t>(io.delay_ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long long>(io.delay_ns % 1'000'000'000);
    io_uring_prep_timeout(timeout, &ts, 0, IORING_TIMEOUT_ETIME_SUCCESS);
    timeout->flags |= IOSQE_IO_LINK;
    io_uring_sqe_set_data64(timeout, kDelayTag);
  }
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  const int which = io.alternate_file ? 1 : 0;
  const int fd = fixed_ ? which : fds_[which];
  switch (io.kind) {
    case HostIo::kRead:
    case HostIo::kWrite:
      prep_transfer(sqe, io, fd);
      break;
    case HostIo::kFdatasync:
      io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
      break;
    case HostIo::kPunchHole:
      io_uring_prep_fallocate(sqe, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                              io.offset, io.len);
      break;
    case HostIo::kZeroRange:
      io_uring_prep_fallocate(sqe, fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                              io.offset, io.len);
      break;
  }
  if (fixed_) sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data(sqe, ctx);
  if (polled_) in_flight_.fetch_add(1, std::memory_order_relaxed);
  prepared_.store(prepared_.load(std::memory_order_relaxed) + 1,
                  std::memory_order_relaxed);
  return true;
}

int UringQueue::read_now(const HostIo& io) {
  const InlineReads how = inline_reads_.load(std::memory_order_relaxed);
  if (how == InlineReads::kNever || io.delay_ns != 0) return -EAGAIN;
  // Only with nothing else on the ring: at depth 32 the ring's batching
  // (and the host's workers reading in parallel) is worth more than the hop.
  if (prepared_.load(std::memory_order_relaxed) !=
      reaped_.load(std::memory_order_relaxed))
    return -EAGAIN;
  const int fd = fds_[io.alternate_file ? 1 : 0];
  const auto cnt = static_cast<int>(io.iovcnt);
  const auto off = static_cast<off_t>(io.offset);
  const ssize_t r = how == InlineReads::kNowait
                        ? preadv2(fd, io.iov, cnt, off, RWF_NOWAIT | io.rw_flags)
                        : preadv(fd, io.iov, cnt, off);
  if (r >= 0) return static_cast<int>(r);
  if (errno == EOPNOTSUPP && how == InlineReads::kNowait) {
    // The file system cannot promise it (no FMODE_NOWAIT): the ring only.
    inline_reads_.store(InlineReads::kNever, std::memory_order_relaxed);
    return -EAGAIN;
  }
  return -errno;
}

void UringQueue::submit() {
  {
    std::lock_guard lock(lock_);
    io_uring_submit(&ring_);
  }
  try_reap();
}

int UringQueue::drain(bool* stop) {
  unsigned head, seen = 0;
  int done = 0;
  io_uring_cqe* cqe;
  const UringQueue* outer = t_reaping;
  t_reaping = this;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    ++seen;
    if (cqe->user_data == kStopTag) {
      if (stop) *stop = true;
      continue;
    }
    if (cqe->user_data == kDelayTag) continue;
    ++done;
    reaped_.store(reaped_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    if (polled_) in_flight_.fetch_sub(1, std::memory_order_relaxed);
    on_complete_(io_uring_cqe_get_data(cqe), cqe->res);
  }
  io_uring_cq_advance(&ring_, seen);
  t_reaping = outer;
  return done;
}

void UringQueue::try_reap() {
  // The holder may have looked at the queue just before our entries landed
  // and be letting go now; whoever lets go looks once more (the loop), so
  // entries never wait for a thread that is not coming.
  if (t_reaping == this) return;
  do {
    std::unique_lock reap(reap_lock_, std::try_to_lock);
    if (!reap.owns_lock()) return;
    drain();  // a stop entry comes only from the destructor, after submitters
  } while (io_uring_cq_ready(&ring_) > 0);
}

void UringQueue::wait_and_reap() {
  for (;;) {
    io_uring_cqe* cqe;
    int r = io_uring_wait_cqe(&ring_, &cqe);
    if (r == -EINTR) continue;
    if (r < 0) return;  // the ring is broken; nothing more will complete
    // Blocking here, not trying: a submitter holding the lock may have
    // looked at the queue already, and then only we will see these.
    std::lock_guard reap(reap_lock_);
    bool stop = false;
    drain(&stop);
    if (stop) return;
  }
}

int UringQueue::poll(uint64_t wait_ns) {
  if (t_reaping == this) return 0;  // a completion callback polling: no
  std::unique_lock reap(reap_lock_, std::try_to_lock);
  if (!reap.owns_lock()) return -1;
  int done = drain();
  // Sleep in the ring only with something in flight, or nothing would
  // wake us before the timeout.
  if (done == 0 && wait_ns > 0 && in_flight_.load(std::memory_order_relaxed) > 0) {
    __kernel_timespec ts{static_cast<int64_t>(wait_ns / 1'000'000'000),
                         static_cast<long long>(wait_ns % 1'000'000'000)};
    io_uring_cqe* cqe;
    io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
    done = drain();
  }
  reap.unlock();
  // Entries that landed while we let go are for the next call (polled I/O
  // has no other reaper, and its owner polls until it is done).
  return done;
}

}  // namespace blkstack
