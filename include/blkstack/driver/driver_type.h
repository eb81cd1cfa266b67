// DriverType: how a kind of device is made from a spec, and the registry of
// kinds. Adding a driver is one .cc file that defines a DriverType and one
// line in src/drivers/registry.cc (see docs/drivers.md); a driver built
// outside the tree registers itself at run time, from its program or as a
// module (blkstack/module.h).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "blkstack/device_spec.h"

namespace blkstack {

class Disk;
class OpenContext;

struct DriverType {
  std::string_view name;               // the spec's TYPE: "ram"
  std::string_view description;        // one line for `blkstack disk --types`
  unsigned major;                      // block major number; 0 = allocate one
  std::span<const OptionDef> options;  // besides the common name= and ro=
  // Makes the disk, named `name`, from validated options. A stacked driver
  // opens the devices below it through `ctx` (blkstack/driver/
  // open_context.h); others ignore it. Throws Error.
  std::shared_ptr<Disk> (*create)(const DeviceOptions& options, const std::string& name,
                                  OpenContext& ctx);
  // Runs bio-based or multi-queue: takes queue_mode=, hw_queues=, depth=...
  // (include/blkstack/driver/queue_mode.h).
  bool queue_modes = false;
  // Whether its disks may hold a partition table, read when one is added
  // (unless partscan=0); false for a driver that keeps no data (the
  // kernel's GENHD_FL_NO_PART). docs/partitions.md.
  bool partitions = true;
};

// Options every driver accepts: name=, ro=.
std::span<const OptionDef> common_device_options();

// The built-in types, then the registered ones in the order they came.
std::vector<const DriverType*> driver_types();
const DriverType* find_driver_type(std::string_view name);
// Adds a type (for the life of the program: `type` must outlive every
// disk made from it). Throws Error if its name is taken or unusable in a
// spec. Thread-safe.
void register_driver_type(const DriverType& type);

}  // namespace blkstack
