// linear: maps its range onto a lower device from a start sector
// (dm-linear.c).
//
//     start length linear DEVICE OFFSET
//
// table: "MAJ:MIN OFFSET". status: nothing.
#include <fmt/format.h>

#include "blkstack/disk.h"
#include "blkstack/driver/target.h"
#include "blkstack/error.h"

namespace blkstack {
namespace {

class Linear final : public Target {
 public:
  Linear(TargetDevice dev, uint64_t start) : dev_(std::move(dev)), start_(start) {
    num_discard_bios = 1;
    num_write_zeroes_bios = 1;
  }

  MapResult map(Bio& clone) override {
    clone.set_dev(*dev_.bdev, start_ + offset(clone.sector()));
    return MapResult::kRemapped;
  }

  std::string table() const override { return fmt::format("{} {}", dev_.devt(), start_); }

  void iterate_devices(const DeviceFn& fn) const override {
    fn(*dev_.bdev, start_, length());
  }

 private:
  TargetDevice dev_;
  uint64_t start_;  // sectors on the device
};

std::unique_ptr<Target> create(TargetContext& ctx, TargetArgs args) {
  if (args.size() != 2) throw Error("expected 2 arguments: <device> <offset>");
  TargetDevice dev = ctx.open_device(args[0]);
  const uint64_t dev_sectors = dev.bdev->capacity();
  const uint64_t start = parse_target_u64(args[1], "device offset", 0, UINT64_MAX >> 9);
  if (start > dev_sectors || ctx.length() > dev_sectors - start) {
    throw Error(fmt::format("{} has {} sectors: sectors {} to {} are past its end",
                            dev.bdev->name(), dev_sectors, start,
                            start + ctx.length() - 1));
  }
  return std::make_unique<Linear>(std::move(dev), start);
}

}  // namespace

extern const TargetType kLinearTarget{"linear", {1, 4, 0}, 0, create};

}  // namespace blkstack
