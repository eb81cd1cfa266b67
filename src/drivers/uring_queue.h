// UringQueue: one io_uring instance with its completion thread, as used by
// a request-based driver for one hardware queue (the file driver's; the
// nbd client will share it).
//
// Submitters prepare entries under a per-ring lock and ring the doorbell
// when a batch ends. Whatever the kernel finished during that doorbell (a
// read served from the page cache or tmpfs, say) is reaped right there by
// the submitter, as fio does: no hop to another thread and no wake-up. The
// completion thread waits for the rest (I/O the kernel finishes later).
// Reaping is serialized by its own lock, so completion callbacks never run
// concurrently for one ring and a driver's completion logic needs no lock
// of its own; they may run on a submitting thread, as inline completions
// do in the kernel.
//
// A poll queue has no completion thread: what the kernel finishes later is
// reaped by whoever calls poll(), the thread waiting for its polled I/O,
// which then sleeps in the ring itself rather than being woken by another
// thread (one hop fewer per completion, as fio's io_uring engine does).
#pragma once

#include <liburing.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include "drivers/host_io.h"

namespace blkstack {

class UringQueue final : public HostIoQueue {
 public:
  struct Options {
    unsigned entries = 128;
    bool sqpoll = false;            // a kernel thread polls the submission queue
    bool fixed_file = true;         // register the file with the ring
    bool completion_thread = true;  // false: a poll queue (see above)
  };
  // Throws Error if the ring cannot be set up. `alt_fd` (or -1) is a second
  // descriptor for the same file that HostIo::alternate_file selects.
  UringQueue(int fd, int alt_fd, const Options& options, Callback on_complete);
  ~UringQueue() override;

  bool queue(const HostIo& io, void* ctx) override;
  // In line when the ring is idle and the file can be read without
  // blocking (see InlineReads).
  int read_now(const HostIo& io) override;
  // Rings the doorbell, then completes what is already done.
  void submit() override;
  int poll(uint64_t wait_ns) override;

 private:
  // The completion thread's loop.
  void wait_and_reap();
  // Calls back for every completion queue entry there is and returns how
  // many; sets *stop if the stop entry was among them. Under reap_lock_.
  int drain(bool* stop = nullptr);
  // Reaps without waiting for the lock: if another thread holds it, that
  // thread looks at the queue again after letting go.
  void try_reap();

  // How a read may be done in line (read_now). io_uring sends a read to
  // its worker threads (io-wq) when the file cannot promise not to block
  // (no FMODE_NOWAIT: tmpfs, as of Linux 6.18, refuses RWF_NOWAIT), and
  // that hop, not the copy, is what a depth-1 reader waits for.
  enum class InlineReads : uint8_t {
    kNever,   // direct I/O waits for the device: always the ring
    kNowait,  // preadv2(RWF_NOWAIT): page-cache hits in line, misses -EAGAIN
    // tmpfs without swap: every page is in memory (or a hole, read as the
    // zero page), so a plain read copies and never waits for I/O.
    kResident,
  };
  static InlineReads inline_reads_for(int fd);

  io_uring ring_{};
  int fds_[2];
  bool fixed_;
  Callback on_complete_;
  std::mutex lock_;       // the submission queue
  std::mutex reap_lock_;  // the completion queue
  // Prepared and not yet reaped; counted on poll queues only, the one
  // place it is read (a queue with a completion thread would pay an atomic
  // on a shared line per I/O for nothing).
  const bool polled_;
  std::atomic<uint32_t> in_flight_{0};
  // Entries prepared, and completions reaped, ever; equal when the ring is
  // idle. Each is written under its own lock (lock_, reap_lock_), so a
  // load and a store suffice: no locked instruction on the I/O path.
  std::atomic<uint64_t> prepared_{0};
  std::atomic<uint64_t> reaped_{0};
  std::atomic<InlineReads> inline_reads_{InlineReads::kNever};
  // One per submission queue slot: the delay of a timeout prepared in that
  // slot (HostIo::delay_ns), alive until the kernel has read it.
  std::unique_ptr<__kernel_timespec[]> delay_ts_;
  std::thread reaper_;
};

}  // namespace blkstack
