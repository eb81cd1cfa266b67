// Wrappers over IoContext for people who prefer not to manage iocbs:
//
// Synchronous:
//   SyncIo io;                                   // a private IoContext
//   int64_t n = io.pread(disk, buf, 4096, 0);    // bytes, or -errno
//
// C++20 coroutines:
//   Task<int64_t> copy_block(IoContext& ctx, Disk* a, Disk* b, void* buf) {
//     int64_t n = co_await io_read(ctx, a, buf, 4096, 0);
//     if (n < 0) co_return n;
//     co_return co_await io_write(ctx, b, buf, 4096, 0);
//   }
//   int64_t r = sync_wait(ctx, copy_block(ctx, a, b, buf));
//
// A context used with coroutines belongs to them: each event's user_data
// is the awaiting operation. sync_wait() and run_once() reap its events and
// resume the coroutines on the calling thread.
#pragma once

#include <coroutine>
#include <cstdint>
#include <exception>
#include <optional>
#include <utility>

#include "blkstack/io_context.h"

namespace blkstack {

// One I/O, awaited: submits on suspension, resumes with the event's res.
class IoAwaitable {
 public:
  IoAwaitable(IoContext& ctx, const Iocb& cb) : ctx_(ctx), cb_(cb) {}
  bool await_ready() const noexcept { return false; }
  bool await_suspend(std::coroutine_handle<> h) {
    handle_ = h;
    cb_.user_data = reinterpret_cast<uintptr_t>(this);
    Iocb* list[] = {&cb_};
    int r = ctx_.submit(list);
    if (r < 0) {
      res_ = r;  // refused: resume at once with the error
      return false;
    }
    return true;
  }
  int64_t await_resume() const noexcept { return res_; }

  // Called by run_once() with the event.
  void complete(int64_t res) {
    res_ = res;
    handle_.resume();
  }

 private:
  IoContext& ctx_;
  Iocb cb_;
  std::coroutine_handle<> handle_;
  int64_t res_ = 0;
};

inline IoAwaitable io_read(IoContext& ctx, Disk* d, void* buf, uint64_t len,
                           uint64_t off) {
  return IoAwaitable(ctx, Iocb::pread(d, buf, len, off));
}
inline IoAwaitable io_write(IoContext& ctx, Disk* d, const void* buf, uint64_t len,
                            uint64_t off) {
  return IoAwaitable(ctx, Iocb::pwrite(d, buf, len, off));
}
inline IoAwaitable io_fsync(IoContext& ctx, Disk* d) {
  return IoAwaitable(ctx, Iocb::fsync(d));
}
inline IoAwaitable io_submit_one(IoContext& ctx, const Iocb& cb) {
  return IoAwaitable(ctx, cb);
}

// Reaps at least `min_nr` events and resumes their coroutines; returns how
// many it resumed.
int run_once(IoContext& ctx, unsigned min_nr = 1);

// A lazily started coroutine returning T; co_await it from another Task,
// or run it with sync_wait().
template <class T>
class Task {
 public:
  struct promise_type {
    std::optional<T> value;
    std::exception_ptr error;
    std::coroutine_handle<> continuation;

    Task get_return_object() {
      return Task(std::coroutine_handle<promise_type>::from_promise(*this));
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    struct FinalAwaiter {
      bool await_ready() const noexcept { return false; }
      std::coroutine_handle<> await_suspend(
          std::coroutine_handle<promise_type> h) noexcept {
        auto next = h.promise().continuation;
        return next ? next : std::noop_coroutine();
      }
      void await_resume() noexcept {}
    };
    FinalAwaiter final_suspend() noexcept { return {}; }
    void return_value(T v) { value = std::move(v); }
    void unhandled_exception() { error = std::current_exception(); }
  };

  Task(Task&& other) noexcept : h_(std::exchange(other.h_, {})) {}
  Task& operator=(Task&&) = delete;
  ~Task() {
    if (h_) h_.destroy();
  }

  bool done() const { return h_.done(); }
  void start() { h_.resume(); }
  T result() {
    if (h_.promise().error) std::rethrow_exception(h_.promise().error);
    return std::move(*h_.promise().value);
  }

  // Awaiting a Task starts it and resumes the awaiter when it finishes.
  bool await_ready() const noexcept { return false; }
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiter) {
    h_.promise().continuation = awaiter;
    return h_;
  }
  T await_resume() { return result(); }

 private:
  explicit Task(std::coroutine_handle<promise_type> h) : h_(h) {}
  std::coroutine_handle<promise_type> h_;
};

// Runs `task` to the end on this thread, reaping `ctx` as it goes.
template <class T>
T sync_wait(IoContext& ctx, Task<T> task) {
  task.start();
  while (!task.done()) run_once(ctx);
  return task.result();
}

// Synchronous I/O through a private IoContext (one call at a time).
class SyncIo {
 public:
  SyncIo() : ctx_(1) {}
  // Each returns bytes done or -errno.
  int64_t run(const Iocb& cb);
  int64_t pread(Disk* d, void* buf, uint64_t len, uint64_t off) {
    return run(Iocb::pread(d, buf, len, off));
  }
  int64_t pwrite(Disk* d, const void* buf, uint64_t len, uint64_t off) {
    return run(Iocb::pwrite(d, buf, len, off));
  }
  int64_t fsync(Disk* d) { return run(Iocb::fsync(d)); }

 private:
  IoContext ctx_;
};

}  // namespace blkstack
