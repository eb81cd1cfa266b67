// Options and construction shared by drivers that run either bio-based or
// multi-queue (null_blk's queue_mode): queue_mode, hw_queues, depth,
// shared_tags, timeout, sched, nomerges and bio_depth. DriverType::queue_modes adds
// these options to a driver's table.
#pragma once

#include <concepts>
#include <memory>
#include <span>
#include <string>

#include "blkstack/device_spec.h"
#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/reports.h"
#include "blkstack/driver/request_driver.h"
#include "blkstack/driver/transfer.h"

namespace blkstack {

std::span<const OptionDef> queue_mode_options();

inline constexpr uint64_t kMaxHwQueues = 256;
inline constexpr uint64_t kMaxQueueDepth = 10240;
// The tags of all queues together (each is a request with the driver's
// command: the file driver's is 2 KiB, and each tag also sizes its ring).
inline constexpr uint64_t kMaxTotalTags = 65536;

struct QueueMode {
  bool mq = false;
  TagSetConfig tags;
  // The I/O scheduler; empty: the default for the device (make_disk).
  std::string sched;
  unsigned nomerges = 0;
  // Bio-based: bios the driver takes at a time, the rest parked by the
  // core (BioQueueConfig::depth); 0: no limit.
  unsigned bio_depth = 0;

  // The hardware queues a driver sees commands on (IoCmd::queue_index).
  unsigned nr_queues() const { return mq ? tags.nr_queues() : 1; }
};

QueueMode queue_mode(const DeviceOptions& options);

// Throws Error unless `tags` has at most kMaxTotalTags in all (for a
// driver that adds queues of its own, such as poll queues, after
// queue_mode() checked its own).
void check_total_tags(const DeviceOptions& options, const TagSetConfig& tags);

// A disk over `bio_driver` (bio-based) or over a Queue of `rq_driver`;
// the caller passes the one the mode asks for. The disk keeps `reports`
// (null: none); over a Queue, Disk::describe() starts with the queue's
// shape (Queue::describe()).
std::shared_ptr<Disk> make_disk(const std::string& name, uint64_t capacity_sectors,
                                const QueueLimits& limits, const QueueMode& mode,
                                std::unique_ptr<BioDriver> bio_driver,
                                std::unique_ptr<RequestDriver> rq_driver,
                                std::unique_ptr<DiskReports> reports);

// A disk over a TransferDriver D, written once, built in place from
// `args`: bio-based or over a Queue, as `mode` says (see driver/transfer.h).
//   make_disk<RamDriver>(name, sectors, lim, qm, std::make_unique<RamReports>(store),
//   store)
template <std::derived_from<TransferDriver> D, class... Args>
std::shared_ptr<Disk> make_disk(const std::string& name, uint64_t capacity_sectors,
                                const QueueLimits& limits, QueueMode mode,
                                std::unique_ptr<DiskReports> reports, Args&&... args) {
  static_assert(std::is_final_v<D>, "a final class: its queue_cmd is then a direct call");
  if (!mode.mq) {
    auto driver = std::make_unique<BioTransfer<D>>(std::forward<Args>(args)...);
    driver->set_bio_depth(mode.bio_depth);
    return make_disk(name, capacity_sectors, limits, mode, std::move(driver), nullptr,
                     std::move(reports));
  }
  mode.tags.cmd_size = IoCmd::kPduBytes;  // IoCmd::driver_data()
  return make_disk(name, capacity_sectors, limits, mode, nullptr,
                   std::make_unique<RequestTransfer<D>>(std::forward<Args>(args)...),
                   std::move(reports));
}

}  // namespace blkstack
