// model: a RAM disk that takes the time a real device would, from a model
// named in its spec, so that I/O scheduling is measurable on a machine
// with no slow disk.
//
//   model:1G,kind=rotational[,rpm=7200,seek_ms=8,track_to_track_ms=1,
//         transfer_mbs=150,queue=4]
//   model:1G,kind=flash[,channels=8,read_us=80,write_us=250,
//         transfer_mbs=500,gc_every_mb=256,gc_ms=20,queue=32]
//
// The data lives in a RamStore (src/mm/ram_store.h). The disk is
// request-based: the tag depth is the device's own queue (`queue=`, NCQ's
// depth), and a request is done when the model says, on one completion
// thread per disk that keeps the requests in service ordered by the time
// they are due and sleeps until the first (no thread or timer per I/O).
//
// Rotational: one actuator serves one request at a time; from those it
// holds it takes the nearest to the head (shortest seek first), but one
// passed over kMaxPassed times goes next. The time is the seek (track to
// track plus the rest of a full stroke in proportion to the square root
// of the distance, scaled so that a third of the disk takes seek_ms, the
// average), then the rotation until the first sector comes under the head
// (the platter turns at rpm; a track holds what passes in one turn at
// transfer_mbs), then the transfer. A request that starts where the last
// one ended, within one turn of its end, streams on with no seek or
// rotation (the drive reads ahead into its buffer).
// No write cache: a write is done when it is on the platter.
//
// Flash: 4 KiB pages are striped over `channels` that work in parallel; a
// request goes to its first page's channel and takes read_us or write_us
// there plus its transfer at transfer_mbs, after what the channel has
// queued. Every gc_every_mb written, the channel taking the next write
// first collects garbage for gc_ms (a write stall; reads on it wait too).
#include <fmt/format.h>
#include <sys/prctl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/driver/driver_type.h"
#include "blkstack/driver/limit_options.h"
#include "blkstack/driver/queue_mode.h"
#include "blkstack/driver/reports.h"
#include "blkstack/driver/request.h"
#include "blkstack/driver/request_driver.h"
#include "blkstack/error.h"
#include "core/clock.h"
#include "mm/ram_store.h"

namespace blkstack {
namespace {

constexpr uint64_t kMs = 1'000'000, kUs = 1'000;
constexpr uint64_t kPageSectors = 8;  // flash pages of 4 KiB
// A request the actuator passed over this often goes next (NCQ drives
// bound the wait the same way).
constexpr unsigned kMaxPassed = 4;

struct ModelParams {
  bool rotational = true;
  // Rotational.
  uint64_t rpm = 7200;
  uint64_t seek_ns = 8 * kMs;  // average: a third of the disk
  uint64_t track_ns = 1 * kMs;
  // Both.
  uint64_t transfer_bps = 150'000'000;
  // Flash.
  unsigned channels = 8;
  uint64_t read_ns = 80 * kUs;
  uint64_t write_ns = 250 * kUs;
  uint64_t gc_every_bytes = 256ull << 20;
  uint64_t gc_ns = 20 * kMs;
};

// What the driver keeps per request (its pdu).
struct ModelCmd {
  uint64_t due_ns;
  uint64_t arrived_ns;
  unsigned passed;  // times the actuator chose another first
};
ModelCmd& cmd(const Request& rq) { return *rq.pdu_as<ModelCmd>(); }

// The service times, with the device's state (head, channels, GC debt).
// Used under the driver's lock.
class ServiceModel {
 public:
  ServiceModel(const ModelParams& p, uint64_t capacity_sectors)
      : p_(p), capacity_(std::max<uint64_t>(capacity_sectors, 1)), busy_(p.channels, 0) {
    period_ns_ = 60'000'000'000ull / std::max<uint64_t>(p.rpm, 1);
    track_sectors_ = std::max<uint64_t>(
        1, static_cast<uint64_t>(static_cast<double>(p.transfer_bps) *
                                 static_cast<double>(period_ns_) / 1e9 / 512));
    // avg = t2t + (full - t2t) * sqrt(1/3)
    full_extra_ns_ =
        static_cast<double>(p.seek_ns > p.track_ns ? p.seek_ns - p.track_ns : 0) *
        std::sqrt(3.0);
  }

  uint64_t transfer_ns(const Request& rq) const {
    return op_has_data(rq.op()) ? uint64_t{rq.bytes()} * 1'000'000'000 /
                                      std::max<uint64_t>(p_.transfer_bps, 1)
                                : 0;
  }

  // Rotational: when `rq`, started at `now`, is done.
  uint64_t rotational_done(const Request& rq, uint64_t now) {
    if (rq.op() == Op::kFlush) return now;
    uint64_t t = now;
    // Where the last one ended, within a turn of it: the drive has gone on
    // reading (or kept the write's place), so the stream goes on.
    const bool streaming = rq.pos() == head_ && now <= last_done_ + period_ns_;
    if (!streaming) {
      const uint64_t dist = rq.pos() > head_ ? rq.pos() - head_ : head_ - rq.pos();
      if (dist != 0) {
        t += p_.track_ns +
             static_cast<uint64_t>(
                 full_extra_ns_ *
                 std::sqrt(static_cast<double>(dist) / static_cast<double>(capacity_)));
      }
      // Wait for the first sector to come round.
      const uint64_t angle = (rq.pos() % track_sectors_) * period_ns_ / track_sectors_;
      const uint64_t platter = t % period_ns_;
      t += (angle + period_ns_ - platter) % period_ns_;
    }
    head_ = rq.pos() + rq.sectors();
    last_done_ = t + transfer_ns(rq);
    return last_done_;
  }

  // The distance the head travels to `rq` (shortest seek first).
  uint64_t distance(const Request& rq) const {
    return rq.pos() > head_ ? rq.pos() - head_ : head_ - rq.pos();
  }

  // Flash: when `rq`, arriving at `now`, is done on its channel.
  uint64_t flash_done(const Request& rq, uint64_t now) {
    if (rq.op() == Op::kFlush) return now;
    const unsigned ch =
        static_cast<unsigned>((rq.pos() / kPageSectors) % std::max(1u, p_.channels));
    uint64_t start = std::max(now, busy_[ch]);
    uint64_t work = transfer_ns(rq);
    if (rq.op() == Op::kRead) {
      work += p_.read_ns;
    } else {
      work += p_.write_ns;
      written_ += rq.bytes();
      if (p_.gc_every_bytes != 0 && written_ >= p_.gc_every_bytes) {
        written_ -= p_.gc_every_bytes;
        start += p_.gc_ns;  // garbage collection first
      }
    }
    busy_[ch] = start + work;
    return busy_[ch];
  }

 private:
  const ModelParams p_;
  const uint64_t capacity_;
  uint64_t period_ns_;
  uint64_t track_sectors_;
  double full_extra_ns_;
  uint64_t head_ = 0;
  uint64_t last_done_ = 0;
  std::vector<uint64_t> busy_;  // per channel: free from
  uint64_t written_ = 0;
};

class ModelDriver final : public RequestDriver {
 public:
  ModelDriver(const ModelParams& p, uint64_t capacity_sectors, unsigned depth,
              std::shared_ptr<RamStore> store)
      : p_(p), model_(p, capacity_sectors), store_(std::move(store)) {
    due_.reserve(depth * 2);  // every tag: nothing is allocated per I/O
    thread_ = std::thread([this] { run(); });
  }
  ~ModelDriver() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }

  Status queue_rq(HwQueue&, Request& rq, bool) override {
    const uint64_t now = now_ns();
    std::lock_guard lock(mu_);
    cmd(rq) = ModelCmd{0, now, 0};
    if (p_.rotational) {
      waiting_.push_back(&rq);
      if (!busy_) start_next(now);
    } else {
      schedule(rq, model_.flash_done(rq, now));
    }
    cv_.notify_one();
    return Status::kOk;
  }

 private:
  // Due times in a min-heap.
  static bool Later(const Request* a, const Request* b) {
    return cmd(*a).due_ns > cmd(*b).due_ns;
  }
  void schedule(Request& rq, uint64_t due) {
    cmd(rq).due_ns = due;
    due_.push_back(&rq);
    std::push_heap(due_.begin(), due_.end(), Later);
  }

  // The actuator is free at `now`: the nearest waiting request next,
  // unless one has been passed over too often.
  void start_next(uint64_t now) {
    Request* best = nullptr;
    for (Request* rq = waiting_.front(); rq; rq = rq->next) {
      if (cmd(*rq).passed >= kMaxPassed) {
        best = rq;
        break;
      }
      if (!best || model_.distance(*rq) < model_.distance(*best)) best = rq;
    }
    if (!best) return;
    waiting_.remove(best);
    for (Request* rq = waiting_.front(); rq; rq = rq->next) ++cmd(*rq).passed;
    busy_ = true;
    schedule(*best, model_.rotational_done(*best, now));
  }

  void run() {
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    std::unique_lock lock(mu_);
    for (;;) {
      if (due_.empty()) {
        if (stop_) return;
        cv_.wait(lock);
        continue;
      }
      const uint64_t now = now_ns();
      Request* rq = due_.front();
      const uint64_t due = cmd(*rq).due_ns;
      if (due > now) {
        cv_.wait_for(lock, std::chrono::nanoseconds(due - now));
        continue;
      }
      std::pop_heap(due_.begin(), due_.end(), Later);
      due_.pop_back();
      if (p_.rotational) {
        busy_ = false;
        // Back to back from the moment it was due: no time lost to us.
        if (!waiting_.empty()) start_next(due);
      }
      lock.unlock();
      rq->end_request_all(transfer(*rq));
      lock.lock();
    }
  }

  Status transfer(const Request& rq) {
    Status status = Status::kOk;
    rq.for_each_bio([&](const Bio& bio) {
      uint64_t pos = bio.sector() << kSectorShift;
      switch (bio.op()) {
        case Op::kRead:
          bio.for_each_chunk([&](const BioChunk& c) {
            store_->read(pos, c.ptr, c.len);
            pos += c.len;
          });
          break;
        case Op::kWrite:
          bio.for_each_chunk([&](const BioChunk& c) {
            if (status == Status::kOk && !store_->write(pos, c.ptr, c.len))
              status = Status::kResource;
            pos += c.len;
          });
          break;
        case Op::kDiscard:
        case Op::kWriteZeroes:
          store_->discard(pos, bio.size());
          break;
        case Op::kFlush:
          break;
      }
    });
    return status;
  }

  const ModelParams p_;
  ServiceModel model_;
  std::shared_ptr<RamStore> store_;
  std::mutex mu_;
  std::condition_variable cv_;
  RequestList waiting_;  // rotational: not yet under the head
  bool busy_ = false;    // rotational: one in service
  std::vector<Request*> due_;
  bool stop_ = false;
  std::thread thread_;  // last: started after everything it uses
};

class ModelReports final : public DiskReports {
 public:
  ModelReports(std::string describe, std::shared_ptr<const RamStore> store)
      : describe_(std::move(describe)), store_(std::move(store)) {}
  std::string describe() const override { return describe_; }
  uint64_t allocated_bytes() const override { return store_->allocated_bytes(); }

 private:
  std::string describe_;
  std::shared_ptr<const RamStore> store_;
};

constexpr uint64_t kMaxMs = 60'000, kMaxUs = 60'000'000;

constexpr OptionDef kOptions[] = {
    ranged({"size",
            OptionKind::kSize,
            "64M",
            "capacity in bytes (K, M, G, T suffixes), held in RAM",
            {},
            true},
           kMinBlockSize, RamStore::kMaxBytes),
    {"kind", OptionKind::kChoice, "rotational",
     "rotational (a spinning disk) or flash (an SSD)", "rotational|flash"},
    ranged({"rpm", OptionKind::kUint, "7200", "rotational: spindle speed"}, 1, 100000),
    ranged({"seek_ms", OptionKind::kUint, "8",
            "rotational: average seek (a third of the disk) in ms"},
           0, kMaxMs),
    ranged({"track_to_track_ms", OptionKind::kUint, "1",
            "rotational: the shortest seek in ms"},
           0, kMaxMs),
    ranged({"transfer_mbs", OptionKind::kUint, "",
            "media rate in MB/s (default 150 rotational, 500 flash per channel)"},
           1, 1000000),
    ranged({"queue", OptionKind::kUint, "",
            "requests the device holds (its NCQ depth; default 4 rotational, 32 flash)"},
           1, 1024),
    ranged({"channels", OptionKind::kUint, "8", "flash: channels working in parallel"}, 1,
           256),
    ranged({"read_us", OptionKind::kUint, "80", "flash: page read time in us"}, 0,
           kMaxUs),
    ranged({"write_us", OptionKind::kUint, "250", "flash: page program time in us"}, 0,
           kMaxUs),
    ranged({"gc_every_mb", OptionKind::kUint, "256",
            "flash: a garbage collection every this many MB written (0: never)"},
           0, 1 << 30),
    ranged(
        {"gc_ms", OptionKind::kUint, "20", "flash: a garbage collection's stall in ms"},
        0, kMaxMs),
};

std::shared_ptr<Disk> create(const DeviceOptions& o, const std::string& name,
                             OpenContext&) {
  ModelParams p;
  p.rotational = o.str("kind") == "rotational";
  p.rpm = o.uint("rpm");
  p.seek_ns = o.uint("seek_ms") * kMs;
  p.track_ns = o.uint("track_to_track_ms") * kMs;
  p.transfer_bps = (o.given("transfer_mbs") ? o.uint("transfer_mbs")
                    : p.rotational          ? 150
                                            : 500) *
                   1'000'000;
  p.channels = static_cast<unsigned>(o.uint("channels"));
  p.read_ns = o.uint("read_us") * kUs;
  p.write_ns = o.uint("write_us") * kUs;
  p.gc_every_bytes = o.uint("gc_every_mb") << 20;
  p.gc_ns = o.uint("gc_ms") * kMs;
  const auto depth = static_cast<unsigned>(o.given("queue") ? o.uint("queue")
                                           : p.rotational   ? 4
                                                            : 32);

  QueueLimits lim;
  lim.logical_block_size = 512;
  lim.physical_block_size = 4096;
  lim.rotational = p.rotational;
  lim.max_discard_sectors = lim.max_write_zeroes_sectors = UINT32_MAX >> kSectorShift;
  lim.discard_granularity = 4096;
  const uint64_t size = device_size_option(o, lim.logical_block_size);

  QueueMode qm = queue_mode(o);
  const std::string where = fmt::format("device spec '{}'", o.spec().text);
  if (o.given("queue_mode") && !qm.mq)
    throw Error(where + ": model disks are always multi-queue (queue_mode=mq)");
  if (o.given("depth")) throw Error(where + ": the model's depth is queue=, not depth=");
  qm.mq = true;
  qm.tags.queue_depth = depth;
  qm.tags.cmd_size = sizeof(ModelCmd);
  check_total_tags(o, qm.tags);

  std::string describe =
      p.rotational
          ? fmt::format(
                "kind=rotational rpm={} seek_ms={} track_to_track_ms={} "
                "transfer_mbs={} queue={}",
                p.rpm, p.seek_ns / kMs, p.track_ns / kMs, p.transfer_bps / 1'000'000,
                depth)
          : fmt::format(
                "kind=flash channels={} read_us={} write_us={} transfer_mbs={} "
                "gc_every_mb={} gc_ms={} queue={}",
                p.channels, p.read_ns / kUs, p.write_ns / kUs, p.transfer_bps / 1'000'000,
                p.gc_every_bytes >> 20, p.gc_ns / kMs, depth);
  auto store = std::make_shared<RamStore>(size, HugePages::kAuto);
  const uint64_t sectors = size >> kSectorShift;
  return make_disk(
      name, sectors, lim, qm, nullptr,
      std::make_unique<ModelDriver>(p, sectors, depth * qm.tags.nr_queues(), store),
      std::make_unique<ModelReports>(std::move(describe), store));
}

}  // namespace

extern const DriverType kModelDriver{
    "model", "a RAM disk with the service times of a rotational or flash device model",
    0,       kOptions,
    create,  /*queue_modes=*/true};

}  // namespace blkstack
