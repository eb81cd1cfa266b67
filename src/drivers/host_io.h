// HostIo and HostIoQueue: the operations a file-backed driver asks of the
// host, and the queue it sends them to. The io_uring queue (uring_queue.h)
// is the real one; tests install their own, through ScopedHostIoFactory,
// to record the order of operations or to make reads and writes short.
#pragma once

#include <sys/uio.h>

#include <cerrno>
#include <cstdint>
#include <functional>
#include <memory>

namespace blkstack {

// One host operation on the file.
struct HostIo {
  enum Kind : uint8_t { kRead, kWrite, kFdatasync, kPunchHole, kZeroRange };
  Kind kind;
  int rw_flags = 0;  // RWF_DSYNC for FUA writes
  uint64_t offset = 0;
  uint64_t len = 0;  // fallocate ops
  const iovec* iov = nullptr;
  unsigned iovcnt = 0;
  bool alternate_file = false;  // use the queue's second file (see UringQueue)
  // Start no sooner than this long after submission: a retry's back-off,
  // waited for by the host (io_uring), never by a thread of ours.
  uint64_t delay_ns = 0;
};

// Where a driver sends host operations: io_uring, or a test's own.
// on_complete(ctx, res) gets the syscall result (bytes or -errno), on the
// completion thread or a thread that submits or polls.
class HostIoQueue {
 public:
  using Callback = void (*)(void* ctx, int res);
  virtual ~HostIoQueue() = default;
  // Prepares `io`; false if the ring is full (try again later).
  virtual bool queue(const HostIo& io, void* ctx) = 0;
  // Rings the doorbell for everything prepared.
  virtual void submit() = 0;
  // Reads `io` on the calling thread if that cannot block and the queue
  // is idle (nothing prepared or in flight: depth 1, where a hop to a host
  // worker costs more than the read). Returns the result (bytes or
  // -errno), or -EAGAIN when the read must go through queue() instead.
  virtual int read_now(const HostIo& io) {
    (void)io;
    return -EAGAIN;
  }
  // For poll queues: reaps completions, waiting up to `wait_ns` for the
  // first if any operation is in flight. Returns how many it reaped, or
  // -1 if another thread is reaping.
  virtual int poll(uint64_t wait_ns) {
    (void)wait_ns;
    return 0;
  }
};

// What a host I/O queue is made for: hardware queue `index` of a file
// opened as `fd` (and `alt_fd`, the second descriptor, or -1), calling
// `on_complete` for every operation. `polled`: a poll queue (no thread of
// its own; completions come from poll()).
struct HostIoSetup {
  unsigned index;
  int fd;
  int alt_fd;
  bool polled;
  HostIoQueue::Callback on_complete;
};
using HostIoFactory = std::function<std::unique_ptr<HostIoQueue>(const HostIoSetup&)>;

// While one exists, file disks created on this thread get their host I/O
// queues from `factory` instead of io_uring (for tests).
class ScopedHostIoFactory {
 public:
  explicit ScopedHostIoFactory(HostIoFactory factory);
  ~ScopedHostIoFactory();
  ScopedHostIoFactory(const ScopedHostIoFactory&) = delete;
  ScopedHostIoFactory& operator=(const ScopedHostIoFactory&) = delete;

  // The factory installed on this thread, or null.
  static const HostIoFactory* current();

 private:
  const HostIoFactory* outer_;
  HostIoFactory factory_;
};

}  // namespace blkstack
