// Worker: a thread that reads FUSE requests from /dev/fuse and runs them,
// and the Slots that carry a request while its bio is in flight.
//
// Why our own threads rather than fuse_session_loop_mt(): the pool is fixed
// (libfuse's grows and shrinks it per request burst), and we own the
// receive buffers. That second point is what makes writes zero-copy with
// any driver: a buffer is laid out so that a WRITE's payload lands on a
// page boundary (the kernel puts it right after a 40-byte fuse_in_header
// and a 40-byte fuse_write_in), so the bio can point at it even for an
// O_DIRECT file; and when the bio outlives the request handler (a driver
// that completes later, on its own thread), the Slot takes the receive
// buffer with it and the worker reads the next request into the slot's old
// one — a pointer swap, no copy.
//
// Slots are per worker: taken from the worker's own free list without a
// lock, and given back by whichever thread completed the bio — directly on
// the owner's thread, through a lock-free stack (pushed by anyone, emptied
// at once by the owner) from other threads. So the steady state allocates
// nothing and shares no lock between workers.
#pragma once

#include <fuse_lowlevel.h>
#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "blkstack/bio.h"

namespace blkstack::fuse {

// The largest read or write the kernel sends (max_write, and max_pages
// derived from it by libfuse; max_read is left unlimited so reads are cut at
// max_pages too).
inline constexpr uint32_t kMaxIo = 1u << 20;

struct File;
class Worker;

struct Slot {
  Worker* owner = nullptr;
  Slot* next = nullptr;  // free-list link
  fuse_req_t req = nullptr;
  File* file = nullptr;
  Bio bio;
  BioStart start;  // to send the bio again when the device is busy
  Segment segs[3];
  std::byte* buf = nullptr;  // 4096-aligned: read data, partial blocks
  uint32_t cap = 0;
  std::byte* recv = nullptr;  // a receive buffer held while a write's bio runs
  uint32_t reply_off = 0;     // read: where the answer starts in buf
  uint64_t reply_len = 0;     // read: bytes to answer; write: bytes written

  ~Slot();
  // Makes buf at least `bytes` long (its content is not kept).
  bool reserve(uint32_t bytes);
};

class Worker {
 public:
  Worker(fuse_session* se, unsigned index);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void start();
  unsigned index() const { return index_; }
  // True once the thread has left its loop (the connection ended, or stop).
  bool finished() const { return finished_.load(std::memory_order_acquire); }
  // Asks the thread to leave its loop and interrupts its read (SIGUSR2).
  // Repeat until finished(): a signal that lands just before read() is lost.
  void interrupt();
  void join();
  // Slots taken and not yet given back (requests in flight).
  uint64_t outstanding() const { return outstanding_.load(std::memory_order_acquire); }

  // The worker whose thread is running (null elsewhere).
  static Worker* current();
  // On the worker's thread.
  Slot* get_slot();
  // From any thread.
  static void put_slot(Slot* s);
  // A write's bio points at `data`, inside the request just received: the
  // slot keeps that receive buffer until it is put back, and the worker
  // reads on into another one. False if `data` is not in the current receive
  // buffer (then the caller copies).
  bool lend_receive_buffer(Slot* s, const void* data);

  // Once, before any worker starts: a no-op SIGUSR2 handler without
  // SA_RESTART, so interrupt() makes a blocked read() return EINTR.
  static void install_interrupt_handler();

 private:
  void run();

  fuse_session* se_;
  unsigned index_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> finished_{false};
  std::byte* recv_ = nullptr;  // the receive buffer (see receive_target)
  Slot* free_ = nullptr;       // owner thread only
  std::vector<std::unique_ptr<Slot>> slots_;
  alignas(64) std::atomic<Slot*> remote_free_{nullptr};
  alignas(64) std::atomic<uint64_t> outstanding_{0};
};

}  // namespace blkstack::fuse
