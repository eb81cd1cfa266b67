// null: a device that moves no data (the kernel's null_blk, bio-based mode).
//
// Reads leave the buffer as it is, writes are dropped. What it offers is a
// block core path with nothing below it, to measure the core, and a
// configurable completion: inline (in the submitter's thread), deferred (on
// a completion thread), or timer (on the completion thread, latency_ns after
// submission; null_blk's irqmode=2 with completion_nsec).
#include <fmt/format.h>

#include <atomic>
#include <thread>

#include "blkstack/disk.h"
#include "blkstack/driver.h"
#include "blkstack/error.h"
#include "core/clock.h"

namespace blkstack {
namespace {

enum class CompletionMode { kInline, kDeferred, kTimer };

// Completes bios on its own thread, in submission order, each no earlier
// than its bio's driver_data (a deadline in now_ns() time).
class CompletionThread {
 public:
  CompletionThread() : thread_([this] { run(); }) {}
  ~CompletionThread() {
    stop_.store(true, std::memory_order_seq_cst);
    wake();
    thread_.join();
  }

  void push(Bio& bio) {
    Bio* head = head_.load(std::memory_order_relaxed);
    do {
      bio.next = head;
    } while (!head_.compare_exchange_weak(head, &bio, std::memory_order_seq_cst));
    if (sleeping_.load(std::memory_order_seq_cst)) wake();
  }

 private:
  void wake() {
    seq_.fetch_add(1, std::memory_order_seq_cst);
    seq_.notify_one();
  }

  void run() {
    for (;;) {
      Bio* list = head_.exchange(nullptr, std::memory_order_acquire);
      if (!list) {
        if (stop_.load(std::memory_order_seq_cst)) return;
        uint32_t seq = seq_.load(std::memory_order_seq_cst);
        sleeping_.store(true, std::memory_order_seq_cst);
        if (!head_.load(std::memory_order_seq_cst) && !stop_.load(std::memory_order_seq_cst)) {
          seq_.wait(seq, std::memory_order_seq_cst);
        }
        sleeping_.store(false, std::memory_order_relaxed);
        continue;
      }
      Bio* fifo = nullptr;  // the stack is newest first: reverse it
      while (list) {
        Bio* next = list->next;
        list->next = fifo;
        fifo = list;
        list = next;
      }
      while (fifo) {
        Bio* bio = fifo;
        fifo = fifo->next;
        wait_until(bio->driver_data);
        bio->next = nullptr;
        bio->complete(Status::kOk);
      }
    }
  }

  static void wait_until(uint64_t deadline) {
    for (uint64_t now = now_ns(); now < deadline; now = now_ns()) {
      uint64_t left = deadline - now;
      if (left > 200'000) std::this_thread::sleep_for(std::chrono::nanoseconds(left - 100'000));
    }
  }

  std::atomic<Bio*> head_{nullptr};
  std::atomic<uint32_t> seq_{0};
  std::atomic<bool> sleeping_{false};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class NullDriver final : public BioDriver {
 public:
  NullDriver(CompletionMode mode, uint64_t latency_ns)
      : mode_(mode), latency_ns_(latency_ns) {
    if (mode_ != CompletionMode::kInline) completer_ = std::make_unique<CompletionThread>();
  }

  void submit(Bio& bio) override {
    if (mode_ == CompletionMode::kInline) {
      bio.complete(Status::kOk);
      return;
    }
    bio.driver_data = mode_ == CompletionMode::kTimer ? now_ns() + latency_ns_ : 0;
    completer_->push(bio);
  }

  std::string describe() const override {
    static constexpr const char* kModes[] = {"inline", "deferred", "timer"};
    std::string s = fmt::format("completion={}", kModes[static_cast<int>(mode_)]);
    if (mode_ == CompletionMode::kTimer) s += fmt::format(" latency_ns={}", latency_ns_);
    return s;
  }

 private:
  CompletionMode mode_;
  uint64_t latency_ns_;
  std::unique_ptr<CompletionThread> completer_;
};

constexpr OptionDef kOptions[] = {
    {"size", OptionKind::kSize, "1G", "capacity in bytes (K, M, G, T suffixes)", {}, true},
    {"bs", OptionKind::kSize, "512", "logical block size: 512 to 65536, a power of two"},
    {"completion", OptionKind::kChoice, "inline",
     "where bios complete: in the submitter (inline), on a completion thread (deferred), "
     "or on it after latency_ns (timer)",
     "inline|deferred|timer"},
    {"latency_ns", OptionKind::kDuration, "10000",
     "completion latency in timer mode (ns, or with us/ms/s)"},
    {"max_sectors", OptionKind::kUint, "2560", "largest I/O in 512-byte sectors"},
    {"wc", OptionKind::kBool, "0", "declare a volatile write cache"},
    {"fua", OptionKind::kBool, "0", "declare FUA support"},
};

// The block size and largest I/O options, refused when they do not fit the
// limits rather than used as a divisor (bs=0) or narrowed to 32 bits.
uint32_t block_size_option(const DeviceOptions& o) {
  const uint64_t bs = o.size("bs");
  if (bs < 512 || bs > 65536 || (bs & (bs - 1)) != 0) {
    throw Error(fmt::format("device spec '{}': bad value for 'bs' '{}': expected a power "
                            "of two from 512 to 65536",
                            o.spec().text, o.str("bs")));
  }
  return static_cast<uint32_t>(bs);
}

uint32_t max_sectors_option(const DeviceOptions& o) {
  const uint64_t v = o.uint("max_sectors");
  if (v > UINT32_MAX) {
    throw Error(fmt::format("device spec '{}': bad value for 'max_sectors' '{}': too large",
                            o.spec().text, o.str("max_sectors")));
  }
  return static_cast<uint32_t>(v);
}

std::shared_ptr<Disk> create(const DeviceOptions& o, const std::string& name) {
  QueueLimits lim;
  lim.logical_block_size = lim.physical_block_size = block_size_option(o);
  lim.max_sectors = max_sectors_option(o);
  lim.max_hw_sectors = std::max<uint32_t>(lim.max_sectors, lim.max_hw_sectors);
  lim.max_discard_sectors = lim.max_write_zeroes_sectors = UINT32_MAX >> kSectorShift;
  lim.discard_granularity = lim.logical_block_size;
  lim.volatile_write_cache = o.flag("wc");
  lim.fua = o.flag("fua");
  const std::string& m = o.str("completion");
  CompletionMode mode = m == "inline"     ? CompletionMode::kInline
                        : m == "deferred" ? CompletionMode::kDeferred
                                          : CompletionMode::kTimer;
  uint64_t size = o.size("size");
  if (size == 0 || size % lim.logical_block_size != 0) {
    throw Error(fmt::format("device spec '{}': size {} is not a positive multiple of the "
                            "block size {}",
                            o.spec().text, size, lim.logical_block_size));
  }
  return std::make_shared<Disk>(name, size >> kSectorShift, lim,
                                std::make_unique<NullDriver>(mode, o.duration_ns("latency_ns")));
}

}  // namespace

extern const DriverType kNullDriver{
    "null", "discards writes, reads leave buffers untouched (null_blk)", 0, kOptions, create};

}  // namespace blkstack
