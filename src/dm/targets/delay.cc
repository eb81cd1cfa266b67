// delay: holds reads, writes and flushes for a fixed time each before
// sending them on, optionally to different devices (the kernel's
// dm-delay.c).
//
//   delay <dev> <offset> <delay_ms>                         all I/O
//   delay <dev> <offset> <delay_ms> <wdev> <woffset> <wdelay_ms>
//                                                 reads; writes and flushes
//   delay ... <fdev> <foffset> <fdelay_ms>          reads; writes; flushes
//
// A write with a preflush and an empty flush are flushes; discards and
// write-zeroes are writes. Each class is a FIFO (one delay per class, so
// arrival order is expiry order) served by one timer thread per target,
// kdelayd's part: map() only queues and, when the queue was empty, wakes
// the thread. A delay of 0 sends the class straight on. Suspending sends
// everything held at once. `dmsetup status` prints the bios held per class.
#include <fmt/format.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "blkstack/driver/target.h"
#include "blkstack/error.h"
#include "blkstack/submit.h"

namespace blkstack {
namespace {

using Clock = std::chrono::steady_clock;

struct DelayIo {
  Clock::time_point expires;
};

struct DelayClass {
  TargetDevice dev;
  uint64_t start = 0;  // sectors into dev
  unsigned delay_ms = 0;
  BioList held;                  // under Delay::lock_, oldest (first to expire) first
  std::atomic<unsigned> ops{0};  // bios held
};

class Delay final : public Target {
 public:
  enum { kRead, kWrite, kFlush };
  std::array<DelayClass, 3> cls;
  unsigned argc = 3;  // 3, 6 or 9: how the table line is printed

  ~Delay() override {
    {
      std::lock_guard lock(lock_);
      stop_ = true;
    }
    cv_.notify_all();
    if (timer_.joinable()) timer_.join();
    release(/*all=*/true);
  }

  void start_timer() {
    timer_ = std::thread([this] { run(); });
  }

  MapResult map(Bio& clone) override {
    DelayClass& c = cls[class_of(clone)];
    remap(c, clone);
    if (c.delay_ms == 0 || suspended_.load(std::memory_order_acquire))
      return MapResult::kRemapped;
    auto* io = static_cast<DelayIo*>(target_per_io(clone));
    io->expires = Clock::now() + std::chrono::milliseconds(c.delay_ms);
    bool wake;
    {
      std::lock_guard lock(lock_);
      // Again under the lock: presuspend() may have emptied the queues
      // since the check above, and a bio held now would keep the suspend
      // waiting for its whole delay.
      if (suspended_.load(std::memory_order_relaxed)) return MapResult::kRemapped;
      wake = c.held.empty();
      c.held.push_back(&clone);
      c.ops.fetch_add(1, std::memory_order_relaxed);
    }
    if (wake) cv_.notify_one();
    return MapResult::kSubmitted;
  }

  void presuspend(bool noflush) override {
    (void)noflush;
    {
      std::lock_guard lock(lock_);
      suspended_.store(true, std::memory_order_release);
    }
    release(/*all=*/true);
  }
  void resume() override { suspended_.store(false, std::memory_order_release); }

  std::string table() const override {
    std::string out = emit(cls[kRead]);
    if (argc >= 6) out += " " + emit(cls[kWrite]);
    if (argc >= 9) out += " " + emit(cls[kFlush]);
    return out;
  }
  std::string status() const override {
    return fmt::format("{} {} {}", cls[kRead].ops.load(), cls[kWrite].ops.load(),
                       cls[kFlush].ops.load());
  }

  void iterate_devices(const DeviceFn& fn) const override {
    fn(*cls[kRead].dev.bdev, cls[kRead].start, length());
    if (argc >= 6) fn(*cls[kWrite].dev.bdev, cls[kWrite].start, length());
    if (argc >= 9) fn(*cls[kFlush].dev.bdev, cls[kFlush].start, length());
  }

 private:
  static int class_of(const Bio& b) {
    if (b.op() == Op::kFlush || b.has_flag(BioFlag::kPreflush)) return kFlush;
    return op_is_write(b.op()) ? kWrite : kRead;
  }
  void remap(const DelayClass& c, Bio& clone) const {
    clone.set_dev(*c.dev.bdev, c.start + offset(clone.sector()));
  }
  static std::string emit(const DelayClass& c) {
    return fmt::format("{} {} {}", c.dev.devt(), c.start, c.delay_ms);
  }

  // Takes what has expired (or everything) off the queues under the lock
  // and submits it outside; returns the next expiry, if any.
  Clock::time_point release(bool all) {
    BioList out;
    Clock::time_point next = Clock::time_point::max();
    {
      std::lock_guard lock(lock_);
      const auto now = Clock::now();
      for (DelayClass& c : cls) {
        while (Bio* b = c.held.front()) {
          const auto exp = static_cast<DelayIo*>(target_per_io(*b))->expires;
          if (!all && exp > now) {
            next = std::min(next, exp);
            break;
          }
          out.push_back(c.held.pop_front());
          c.ops.fetch_sub(1, std::memory_order_relaxed);
        }
      }
    }
    while (Bio* b = out.pop_front()) submit_bio(*b);
    return next;
  }

  void run() {
    std::unique_lock lock(lock_);
    while (!stop_) {
      lock.unlock();
      const Clock::time_point next = release(/*all=*/false);
      lock.lock();
      if (stop_) break;
      // A bio queued since release() looked wakes us (map() notifies under
      // no lock, but after pushing under it): check the queues again.
      bool any = false;
      for (const DelayClass& c : cls) any = any || !c.held.empty();
      if (!any)
        cv_.wait(lock);
      else if (next != Clock::time_point::max())
        cv_.wait_until(lock, next);
    }
  }

  std::mutex lock_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<bool> suspended_{false};
  std::thread timer_;
};

std::unique_ptr<Target> create(TargetContext& ctx, TargetArgs args) {
  if (args.size() != 3 && args.size() != 6 && args.size() != 9)
    throw Error(fmt::format(
        "delay: {} arguments (want 3, 6 or 9: <dev> <offset> <delay_ms>, once for all "
        "I/O, then for writes, then for flushes)",
        args.size()));
  auto t = std::make_unique<Delay>();
  t->argc = static_cast<unsigned>(args.size());
  for (size_t k = 0; k < 3; ++k) {
    DelayClass& c = t->cls[k];
    const size_t i = k * 3;
    if (i >= args.size()) {  // no triple of its own: as the class before
      c.dev = t->cls[k - 1].dev;
      c.start = t->cls[k - 1].start;
      c.delay_ms = t->cls[k - 1].delay_ms;
      continue;
    }
    c.dev = ctx.open_device(args[i]);
    c.start = parse_target_u64(args[i + 1], "offset", 0, UINT64_MAX >> 10);
    if (c.start + ctx.length() > (c.dev.bdev->size_bytes() >> kSectorShift))
      throw Error(fmt::format("delay: offset {} and length {} go past the end of {}",
                              c.start, ctx.length(), args[i]));
    c.delay_ms = static_cast<unsigned>(
        parse_target_u64(args[i + 2], "delay (ms)", 0, 24ull * 3600 * 1000));
  }
  t->num_discard_bios = 1;
  t->num_write_zeroes_bios = 1;
  t->start_timer();
  return t;
}

}  // namespace

extern const TargetType kDelayTarget{"delay", {1, 4, 0}, sizeof(DelayIo), create};

}  // namespace blkstack
