// null: a device that moves no data (the kernel's null_blk).
//
// Reads leave the buffer as it is, writes are dropped. What it offers is a
// block core path with nothing below it, to measure the core, in either
// queue mode (bio-based or multi-queue, see queue_mode.h), and a
// configurable completion: inline (in the submitting thread), deferred (on a
// completion thread), or timer (on that thread, completion_nsec after
// submission; null_blk's irqmode=2).
#include <fmt/format.h>

#include <memory>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/driver/driver_type.h"
#include "blkstack/driver/limit_options.h"
#include "blkstack/driver/queue_mode.h"
#include "blkstack/driver/reports.h"
#include "blkstack/driver/transfer.h"
#include "blkstack/error.h"
#include "drivers/completion_thread.h"

namespace blkstack {
namespace {

enum class CompletionMode { kInline, kDeferred, kTimer };

struct Timing {
  CompletionMode mode;
  uint64_t latency_ns;
  uint64_t deadline() const {
    return mode == CompletionMode::kTimer ? now_ns() + latency_ns : 0;
  }
  std::string describe() const {
    static constexpr const char* kModes[] = {"inline", "deferred", "timer"};
    std::string s = fmt::format("completion={}", kModes[static_cast<int>(mode)]);
    if (mode == CompletionMode::kTimer)
      s += fmt::format(" completion_nsec={}", latency_ns);
    return s;
  }
};

// Written once for both queue modes (driver/transfer.h): a command is a
// bio or a request alike. Deferred and timer modes complete on one
// completion thread per hardware queue.
class NullDriver final : public TransferDriver {
 public:
  NullDriver(Timing t, unsigned nr_queues) : timing_(t) {
    if (t.mode == CompletionMode::kInline) return;
    for (unsigned i = 0; i < nr_queues; ++i)
      completers_.push_back(std::make_unique<CompletionThread>());
  }
  void queue_cmd(IoCmd cmd) override {
    if (timing_.mode == CompletionMode::kInline) {
      cmd.complete(Status::kOk);
      return;
    }
    completers_[cmd.queue_index()]->push(cmd, timing_.deadline());
  }

 private:
  Timing timing_;
  std::vector<std::unique_ptr<CompletionThread>> completers_;  // one per queue
};

class NullReports final : public DiskReports {
 public:
  explicit NullReports(Timing t) : timing_(t) {}
  std::string describe() const override { return timing_.describe(); }

 private:
  Timing timing_;
};

constexpr uint64_t kMaxLatencyNs = uint64_t{3600} * 1'000'000'000;

constexpr OptionDef kOptions[] = {
    ranged({"size",
            OptionKind::kSize,
            "1G",
            "capacity in bytes (K, M, G, T, P, E suffixes)",
            {},
            true},
           kMinBlockSize, kMaxDeviceBytes),
    ranged({"bs", OptionKind::kSize, "512",
            "logical block size: 512 to 65536, a power of two"},
           kMinBlockSize, kMaxBlockSize),
    {"completion", OptionKind::kChoice, "",
     "where I/O completes: in the submitter (inline), on a completion thread (deferred), "
     "or "
     "on it after completion_nsec (timer); default inline, or timer if completion_nsec "
     "is set",
     "inline|deferred|timer"},
    // An hour is longer than any test waits; past 2^64 ns the deadline
    // would wrap and complete at once.
    ranged({"completion_nsec", OptionKind::kDuration, "10000",
            "completion latency in timer mode (ns, or with us/ms/s)"},
           0, kMaxLatencyNs),
    ranged({"latency_ns", OptionKind::kDuration, "", "same as completion_nsec"}, 0,
           kMaxLatencyNs),
    ranged({"max_sectors", OptionKind::kUint, "2560", "largest I/O in 512-byte sectors"},
           1, kMaxSectorsLimit),
    {"wc", OptionKind::kBool, "0", "declare a volatile write cache"},
    {"fua", OptionKind::kBool, "0", "declare FUA support"},
};

std::shared_ptr<Disk> create(const DeviceOptions& o, const std::string& name,
                             OpenContext&) {
  QueueLimits lim;
  lim.logical_block_size = lim.physical_block_size = block_size_option(o);
  lim.max_sectors = max_sectors_option(o);
  lim.max_hw_sectors = std::max<uint32_t>(lim.max_sectors, lim.max_hw_sectors);
  lim.max_discard_sectors = lim.max_write_zeroes_sectors = UINT32_MAX >> kSectorShift;
  lim.discard_granularity = lim.logical_block_size;
  lim.volatile_write_cache = o.flag("wc");
  lim.fua = o.flag("fua");
  const bool latency_given = o.given("completion_nsec") || o.given("latency_ns");
  Timing t{CompletionMode::kInline, o.given("latency_ns")
                                        ? o.duration_ns("latency_ns")
                                        : o.duration_ns("completion_nsec")};
  const std::string mode = o.given("completion") ? o.str("completion")
                           : latency_given       ? "timer"
                                                 : "inline";
  if (mode == "deferred") t.mode = CompletionMode::kDeferred;
  if (mode == "timer") t.mode = CompletionMode::kTimer;
  const uint64_t size = device_size_option(o, lim.logical_block_size);
  const QueueMode qm = queue_mode(o);
  return make_disk<NullDriver>(name, size >> kSectorShift, lim, qm,
                               std::make_unique<NullReports>(t), t, qm.nr_queues());
}

}  // namespace

extern const DriverType kNullDriver{
    "null",
    "discards writes, reads leave buffers untouched (null_blk)",
    0,
    kOptions,
    create,
    /*queue_modes=*/true,
    /*partitions=*/false};  // nothing is kept: no table to read

}  // namespace blkstack
