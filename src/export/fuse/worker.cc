#include "export/fuse/worker.h"

#include <fmt/format.h>
#include <linux/fuse.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "export/log.h"

namespace blkstack::fuse {
namespace {

// A receive buffer: kRecvPad bytes, then room for the largest request. The
// kernel's read lands at kRecvPad - kWriteDataOffset, so a WRITE's payload
// starts at kRecvPad, a page boundary.
constexpr size_t kWriteDataOffset = sizeof(fuse_in_header) + sizeof(fuse_write_in);
static_assert(kWriteDataOffset == 80, "the FUSE write header changed size");
constexpr size_t kRecvPad = 4096;
// The kernel refuses reads shorter than a header plus max_write (and than
// 8 KiB); a page more leaves room for any header.
constexpr size_t kRecvBytes = kMaxIo + 4096;
constexpr size_t kRecvAlloc = kRecvPad + kRecvBytes;

thread_local Worker* t_current = nullptr;

std::byte* alloc_receive_buffer() {
  return static_cast<std::byte*>(std::aligned_alloc(4096, kRecvAlloc));
}

void on_interrupt(int) {}

}  // namespace

Slot::~Slot() {
  std::free(buf);
  std::free(recv);
}

bool Slot::reserve(uint32_t bytes) {
  if (cap >= bytes) return true;
  std::free(buf);
  cap = 0;
  const size_t n = (size_t{bytes} + 4095) & ~size_t{4095};
  buf = static_cast<std::byte*>(std::aligned_alloc(4096, n));
  if (!buf) return false;
  cap = static_cast<uint32_t>(n);
  return true;
}

Worker::Worker(fuse_session* se, unsigned index) : se_(se), index_(index) {}

Worker::~Worker() {
  join();
  std::free(recv_);
}

void Worker::install_interrupt_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: read() returns EINTR
  sigaction(SIGUSR2, &sa, nullptr);
}

void Worker::start() {
  recv_ = alloc_receive_buffer();
  if (!recv_) throw std::bad_alloc();
  thread_ = std::thread([this] { run(); });
}

void Worker::interrupt() {
  stop_.store(true, std::memory_order_release);
  if (thread_.joinable() && !finished()) pthread_kill(thread_.native_handle(), SIGUSR2);
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

Worker* Worker::current() { return t_current; }

void Worker::run() {
  t_current = this;
  pthread_setname_np(pthread_self(), fmt::format("fuse{}", index_).c_str());
  const int fd = fuse_session_fd(se_);
  while (!stop_.load(std::memory_order_acquire) && !fuse_session_exited(se_)) {
    if (!recv_ && !(recv_ = alloc_receive_buffer())) {
      serve_log("fuse: out of memory for a receive buffer");
      break;
    }
    std::byte* target = recv_ + kRecvPad - kWriteDataOffset;
    const ssize_t n = ::read(fd, target, kRecvBytes);
    if (n < 0) {
      const int err = errno;
      // EINTR: interrupt() or a stray signal; ENOENT: the kernel dropped
      // the request (interrupted) before we read it.
      if (err == EINTR || err == EAGAIN || err == ENOENT) continue;
      if (err != ENODEV)
        serve_log(fmt::format("fuse: reading /dev/fuse: {}", error_text(err)));
      // ENODEV: unmounted, or the connection was aborted.
      fuse_session_exit(se_);
      break;
    }
    fuse_buf b{};
    b.size = static_cast<size_t>(n);
    b.mem = target;
    fuse_session_process_buf(se_, &b);
  }
  t_current = nullptr;
  finished_.store(true, std::memory_order_release);
}

Slot* Worker::get_slot() {
  if (!free_) free_ = remote_free_.exchange(nullptr, std::memory_order_acquire);
  Slot* s = free_;
  if (s) {
    free_ = s->next;
  } else {
    slots_.push_back(std::make_unique<Slot>());
    s = slots_.back().get();
    s->owner = this;
  }
  s->next = nullptr;
  outstanding_.fetch_add(1, std::memory_order_relaxed);
  return s;
}

void Worker::put_slot(Slot* s) {
  Worker* w = s->owner;
  s->req = nullptr;
  s->file = nullptr;
  if (t_current == w) {
    s->next = w->free_;
    w->free_ = s;
  } else {
    // Push only; the owner takes the whole stack at once, so no ABA.
    Slot* head = w->remote_free_.load(std::memory_order_relaxed);
    do {
      s->next = head;
    } while (!w->remote_free_.compare_exchange_weak(head, s, std::memory_order_release,
                                                    std::memory_order_relaxed));
  }
  // The last touch of the worker: stop() waits for zero before freeing it.
  w->outstanding_.fetch_sub(1, std::memory_order_release);
}

bool Worker::lend_receive_buffer(Slot* s, const void* data) {
  const auto* p = static_cast<const std::byte*>(data);
  if (!recv_ || p < recv_ || p >= recv_ + kRecvAlloc) return false;
  std::swap(s->recv, recv_);  // recv_ may now be null: run() allocates one
  return true;
}

}  // namespace blkstack::fuse
