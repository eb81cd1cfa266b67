// passthrough: a stacked driver that sends every bio on to a lower device at
// an offset (the shape of device-mapper's linear target, dm-linear.c). It is
// the model of docs/howto/stacked-driver.md and docs/drivers.md, "A stacked driver".
//
//     passthrough:lower=ram0,offset=1M[,size=4M]
//
// It splits nothing itself: the disk takes the lower device's limits, so
// submit_bio() has already cut every bio to what the lower device takes.
// Each bio is remapped in place (Bio::set_dev) and submitted again; its
// accounting moves to the lower device, whose shutdown then waits for it.
#include <fmt/format.h>

#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/driver_type.h"
#include "blkstack/driver/open_context.h"
#include "blkstack/driver/reports.h"
#include "blkstack/error.h"
#include "blkstack/submit.h"

namespace blkstack {
namespace {

class PassthroughDriver final : public BioDriver {
 public:
  PassthroughDriver(std::shared_ptr<BlockDevice> lower, uint64_t offset)
      : lower_(std::move(lower)), offset_(offset) {}

  void submit(Bio& bio) override {
    // In range: submit_bio() checked the bio against this disk, which ends
    // inside the lower device (and the lower device checks it again).
    bio.set_dev(*lower_, bio.sector() + offset_);
    submit_bio(bio);  // queued on this thread's list, not recursive
  }

 private:
  std::shared_ptr<BlockDevice> lower_;  // claimed; keeps its disk alive
  uint64_t offset_;                     // sectors
};

// What the lower device reports, seen through the offset.
class PassthroughReports final : public DiskReports {
 public:
  PassthroughReports(std::shared_ptr<BlockDevice> lower, uint64_t offset)
      : lower_(std::move(lower)), offset_(offset) {}

  std::string describe() const override {
    return fmt::format("lower={} offset={}", lower_->name(),
                       format_size(offset_ << kSectorShift));
  }

  Extent extent_at(uint64_t offset, uint64_t max_length) const override {
    const uint64_t lower_offset = (lower_->start() + offset_) << kSectorShift;
    return lower_->disk().extent_at(lower_offset + offset, max_length);
  }

 private:
  std::shared_ptr<BlockDevice> lower_;
  uint64_t offset_;  // sectors
};

constexpr OptionDef kOptions[] = {
    {"lower",
     OptionKind::kString,
     "",
     "the device below (a disk or partition name)",
     {},
     true},
    {"offset", OptionKind::kSize, "0",
     "where this device starts on the lower one (bytes)"},
    ranged(
        {"size", OptionKind::kSize, "", "capacity in bytes (default: to the lower end)"},
        1, kMaxDeviceBytes),
};

std::shared_ptr<Disk> create(const DeviceOptions& o, const std::string& name,
                             OpenContext& ctx) {
  if (!o.given("lower")) throw Error("give the device below with lower=NAME");
  std::shared_ptr<BlockDevice> lower = ctx.open_lower(o.str("lower"));
  const QueueLimits& lower_lim = lower->disk().limits();
  const uint64_t lbs = lower_lim.logical_block_size;
  const uint64_t lower_bytes = lower->size_bytes();
  const uint64_t offset = o.size("offset");
  // Told as DeviceOptions tells a bad value: the option, and what is valid.
  if (offset % lbs != 0) {
    throw Error(
        fmt::format("bad value for 'offset' {}: not a multiple of the block size {} "
                    "of {}",
                    offset, lbs, lower->name()));
  }
  if (offset >= lower_bytes) {
    throw Error(
        fmt::format("bad value for 'offset' {}: beyond the end of {} ({}) (valid: 0 "
                    "to {})",
                    offset, lower->name(), format_size(lower_bytes), lower_bytes - lbs));
  }
  uint64_t size = lower_bytes - offset;
  if (o.given("size")) {
    size = o.size("size");
    if (size > lower_bytes - offset) {
      throw Error(
          fmt::format("bad value for 'size' {}: from offset {} it does not fit in {} "
                      "({}) (valid: {} to {})",
                      size, offset, lower->name(), format_size(lower_bytes), lbs,
                      lower_bytes - offset));
    }
    if (size % lbs != 0) {
      throw Error(
          fmt::format("bad value for 'size' {}: not a multiple of the block size {} "
                      "of {}",
                      size, lbs, lower->name()));
    }
  }
  QueueLimits lim = lower_lim;  // inherited: nothing to split here
  lim.read_only = lower->read_only();
  auto reports = std::make_unique<PassthroughReports>(lower, offset >> kSectorShift);
  return std::make_shared<Disk>(
      name, size >> kSectorShift, lim,
      std::make_unique<PassthroughDriver>(std::move(lower), offset >> kSectorShift),
      std::move(reports));
}

}  // namespace

extern const DriverType kPassthroughDriver{
    "passthrough",
    "sends I/O on to a lower device at an offset (a stacked driver)",
    0,
    kOptions,
    create,
    /*queue_modes=*/false,
    /*partitions=*/false};  // its bytes are the lower device's: no table of its own

}  // namespace blkstack
