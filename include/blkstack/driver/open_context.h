// OpenContext: what a driver's create function gets besides its options —
// the name of the disk being made and a way to open the devices it is
// stacked on. A stacked driver (a pass-through, a device-mapper style
// target) is an ordinary driver that calls open_lower() for each device
// below it (see docs/drivers.md, "A stacked driver").
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "blkstack/block_device.h"

namespace blkstack {

class DiskRegistry;

class OpenContext {
 public:
  // For making the disk `holder` in `registry` (null: no devices to open,
  // so open_lower() refuses).
  OpenContext(DiskRegistry* registry, std::string holder);
  OpenContext(const OpenContext&) = delete;
  OpenContext& operator=(const OpenContext&) = delete;

  // The name of the disk being made.
  const std::string& holder() const { return holder_; }

  // Opens the device `name` (a disk or a partition, "ram0p1") for reading
  // and writing, claimed by the disk being made: while that disk exists,
  // nobody else opens the device for writing or removes it. The returned
  // pointer keeps the device's disk alive; the driver keeps it as long as
  // it sends I/O there. Throws Error for an unknown name or the disk being
  // made itself (a cycle), and BusyError when another disk holds it. If
  // create then fails, the claims are dropped and nothing has changed.
  std::shared_ptr<BlockDevice> open_lower(std::string_view name);

  // The claims taken, handed by the factory to the new disk (Disk::hold),
  // which releases them when it is shut down.
  std::vector<Claim> take_claims() { return std::move(claims_); }

 private:
  DiskRegistry* registry_;
  std::string holder_;
  std::vector<Claim> claims_;
};

}  // namespace blkstack
