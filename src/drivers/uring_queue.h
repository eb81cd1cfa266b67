// UringQueue: one io_uring instance with its completion thread, as used by
// a request-based driver for one hardware queue (the file driver's; the
// nbd client will share it).
//
// Submitters prepare entries under a per-ring lock and ring the doorbell
// when a batch ends; a completion thread waits on the completion queue and
// calls back for each entry. Completions arrive on that thread only, so a
// driver's completion logic needs no lock of its own.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <mutex>
#include <thread>

#include <liburing.h>

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
};

// Where a driver sends host operations; the io_uring one below, or a
// recording one in tests. on_complete(ctx, res) gets the syscall result
// (bytes or -errno) on the completion thread.
class HostIoQueue {
 public:
  using Callback = void (*)(void* ctx, int res);
  virtual ~HostIoQueue() = default;
  // Prepares `io`; false if the ring is full (try again later).
  virtual bool queue(const HostIo& io, void* ctx) = 0;
  // Rings the doorbell for everything prepared.
  virtual void submit() = 0;
};

class UringQueue final : public HostIoQueue {
 public:
  struct Options {
    unsigned entries = 128;
    bool sqpoll = false;       // a kernel thread polls the submission queue
    bool fixed_file = true;    // register the file with the ring
  };
  // Throws Error if the ring cannot be set up. `alt_fd` (or -1) is a second
  // descriptor for the same file that HostIo::alternate_file selects.
  UringQueue(int fd, int alt_fd, const Options& options, Callback on_complete);
  ~UringQueue() override;

  bool queue(const HostIo& io, void* ctx) override;
  void submit() override;

 private:
  void reap();

  io_uring ring_{};
  int fds_[2];
  bool fixed_;
  Callback on_complete_;
  std::mutex lock_;  // the submission queue
  std::thread reaper_;
};

}  // namespace blkstack
