#include "blkstack/driver/queue_mode.h"

#include <fmt/format.h>

#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/queue.h"
#include "blkstack/error.h"
#include "queue/tag_set.h"

namespace blkstack {
namespace {

// The reports of a disk over a Queue: the queue's shape (its scheduler may
// change at run time), then what the driver reports.
class QueueReports final : public DiskReports {
 public:
  QueueReports(const Queue& queue, std::unique_ptr<DiskReports> driver)
      : queue_(queue), driver_(std::move(driver)) {}
  std::string describe() const override {
    std::string d = driver_->describe();
    return d.empty() ? queue_.describe() : queue_.describe() + " " + d;
  }
  Extent extent_at(uint64_t offset, uint64_t max_length) const override {
    return driver_->extent_at(offset, max_length);
  }
  uint64_t allocated_bytes() const override { return driver_->allocated_bytes(); }

 private:
  const Queue& queue_;  // the disk's driver: destroyed before these reports
  std::unique_ptr<DiskReports> driver_;
};

constexpr OptionDef kOptions[] = {
    {"queue_mode", OptionKind::kChoice, "bio",
     "bio: bios go to the driver (bio-based); mq: through a multi-queue request queue",
     "bio|mq|0|2"},
    // Each hardware queue may cost a thread and an io_uring (file), and
    // each tag a request with its driver's command: bounded so that a
    // typing mistake is an error, not gigabytes. 10240 tags is blk-mq's
    // BLK_MQ_MAX_DEPTH.
    ranged({"hw_queues", OptionKind::kUint, "1", "mq: hardware queues (submit_queues)"},
           1, kMaxHwQueues),
    ranged({"depth", OptionKind::kUint, "64",
            "mq: tags per hardware queue (hw_queue_depth)"},
           1, kMaxQueueDepth),
    {"shared_tags", OptionKind::kBool, "0", "mq: one tag space for all hardware queues"},
    // The kernel's io_timeout range: 1 ms to UINT_MAX ms (about 49 days).
    ranged({"timeout", OptionKind::kDuration, "30s",
            "mq: a request in the driver longer than this fails"},
           TagSetConfig::kMinTimeoutNs, TagSetConfig::kMaxTimeoutNs),
    {"sched", OptionKind::kString, "",
     "mq: I/O scheduler (the elevator= of old); default: mq-deadline on a rotational "
     "device, none otherwise"},
    ranged(
        {"nomerges", OptionKind::kUint, "0", "mq: 0 all merges, 1 one-hit only, 2 none"},
        0, 2),
    ranged({"bio_depth", OptionKind::kUint, "0",
            "bio: bios the driver takes at a time, the rest wait in order (0: no limit)"},
           0, kMaxQueueDepth),
};
}  // namespace

std::span<const OptionDef> queue_mode_options() { return kOptions; }

QueueMode queue_mode(const DeviceOptions& o) {
  QueueMode m;
  const std::string& mode = o.str("queue_mode");
  m.mq = mode == "mq" || mode == "2";
  // In range (the table says so): the casts cannot narrow.
  m.tags.nr_hw_queues = static_cast<unsigned>(o.uint("hw_queues"));
  m.tags.queue_depth = static_cast<unsigned>(o.uint("depth"));
  m.tags.shared_tags = o.flag("shared_tags");
  m.tags.timeout_ns = o.duration_ns("timeout");
  if (o.given("sched")) m.sched = o.str("sched");
  m.nomerges = static_cast<unsigned>(o.uint("nomerges"));
  m.bio_depth = static_cast<unsigned>(o.uint("bio_depth"));
  check_total_tags(o, m.tags);
  return m;
}

void check_total_tags(const DeviceOptions& o, const TagSetConfig& tags) {
  // Each option in its range, their product need not be: 256 queues of
  // 10240 tags made a file disk of gigabytes.
  const uint64_t spaces = tags.shared_tags ? 1 : tags.nr_queues();
  if (spaces * tags.queue_depth <= kMaxTotalTags) return;
  throw Error(fmt::format(
      "device spec '{}': bad value for 'depth' '{}': {} queues of {} tags; at most {} "
      "tags in all (or shared_tags=1)",
      o.spec().text, o.str("depth"), spaces, tags.queue_depth, kMaxTotalTags));
}

std::shared_ptr<Disk> make_disk(const std::string& name, uint64_t capacity,
                                const QueueLimits& limits, const QueueMode& mode,
                                std::unique_ptr<BioDriver> bio_driver,
                                std::unique_ptr<RequestDriver> rq_driver,
                                std::unique_ptr<DiskReports> reports) {
  if (!mode.mq) {
    return std::make_shared<Disk>(name, capacity, limits, std::move(bio_driver),
                                  std::move(reports));
  }
  auto queue = std::make_unique<Queue>(mode.tags, std::move(rq_driver));
  Queue* q = queue.get();
  if (!reports) reports = std::make_unique<DiskReports>();
  auto disk =
      std::make_shared<Disk>(name, capacity, limits, std::move(queue),
                             std::make_unique<QueueReports>(*q, std::move(reports)));
  q->set_nomerges(mode.nomerges);
  // The default per device type, as distributions' udev rules set it:
  // seeks cost on a rotational device, so deadlines and sector order pay.
  const std::string& sched = !mode.sched.empty() ? mode.sched
                             : limits.rotational ? "mq-deadline"
                                                 : "none";
  if (sched != "none") q->set_scheduler(sched);
  return disk;
}

}  // namespace blkstack
