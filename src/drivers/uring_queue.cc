#include "drivers/uring_queue.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/falloc.h>

#include <cstring>

#include "blkstack/error.h"

namespace blkstack {
namespace {
// user_data of the entry that tells the completion thread to stop.
constexpr uint64_t kStopTag = ~uint64_t{0};
}  // namespace

UringQueue::UringQueue(int fd, int alt_fd, const Options& o, Callback on_complete)
    : fds_{fd, alt_fd >= 0 ? alt_fd : fd}, fixed_(o.fixed_file), on_complete_(on_complete) {
  io_uring_params p{};
  if (o.sqpoll) {
    p.flags |= IORING_SETUP_SQPOLL;
    p.sq_thread_idle = 50;  // ms before the kernel thread sleeps
  }
  int r = io_uring_queue_init_params(o.entries, &ring_, &p);
  if (r < 0) throw Error(fmt::format("io_uring setup failed: {}", std::strerror(-r)));
  if (fixed_ && io_uring_register_files(&ring_, fds_, 2) < 0) fixed_ = false;
  reaper_ = std::thread([this] { reap(); });
}

UringQueue::~UringQueue() {
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
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (!sqe) {
    io_uring_submit(&ring_);  // make room
    sqe = io_uring_get_sqe(&ring_);
    if (!sqe) return false;
  }
  const int which = io.alternate_file ? 1 : 0;
  const int fd = fixed_ ? which : fds_[which];
  switch (io.kind) {
    case HostIo::kRead:
      io_uring_prep_readv2(sqe, fd, io.iov, io.iovcnt, io.offset, io.rw_flags);
      break;
    case HostIo::kWrite:
      io_uring_prep_writev2(sqe, fd, io.iov, io.iovcnt, io.offset, io.rw_flags);
      break;
    case HostIo::kFdatasync:
      io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
      break;
    case HostIo::kPunchHole:
      io_uring_prep_fallocate(sqe, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, io.offset,
                              io.len);
      break;
    case HostIo::kZeroRange:
      io_uring_prep_fallocate(sqe, fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, io.offset,
                              io.len);
      break;
  }
  if (fixed_) sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data(sqe, ctx);
  return true;
}

void UringQueue::submit() {
  std::lock_guard lock(lock_);
  io_uring_submit(&ring_);
}

void UringQueue::reap() {
  for (;;) {
    io_uring_cqe* cqe;
    int r = io_uring_wait_cqe(&ring_, &cqe);
    if (r == -EINTR) continue;
    if (r < 0) return;  // the ring is broken; nothing more will complete
    unsigned head, seen = 0;
    bool stop = false;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      if (cqe->user_data == kStopTag) {
        stop = true;
        continue;
      }
      on_complete_(io_uring_cqe_get_data(cqe), cqe->res);
    }
    io_uring_cq_advance(&ring_, seen);
    if (stop) return;
  }
}

}  // namespace blkstack
