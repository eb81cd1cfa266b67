// DriverType: how a kind of device is made from a spec, and the registry of
// kinds. Adding a driver is one .cc file that defines a DriverType and one
// line in src/drivers/registry.cc (see docs/drivers.md).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "blkstack/device_spec.h"

namespace blkstack {

class Disk;
class OpenContext;

struct DriverType {
  std::string_view name;         // the spec's TYPE: "ram"
  std::string_view description;  // one line for `blkstack disk --types`
  unsigned major;                // block major number; 0 = allocate one
  std::span<const OptionDef> options;  // besides the common name= and ro=
  // Makes the disk, named `name`, from validated options. A stacked driver
  // opens the devices below it through `ctx` (blkstack/driver/
  // open_context.h); others ignore it. Throws Error.
  std::shared_ptr<Disk> (*create)(const DeviceOptions& options, const std::string& name,
                                  OpenContext& ctx);
  // Runs bio-based or multi-queue: takes queue_mode=, hw_queues=, depth=...
  // (src/drivers/queue_mode.h).
  bool queue_modes = false;
};

// Options every driver accepts: name=, ro=.
std::span<const OptionDef> common_device_options();

std::span<const DriverType* const> driver_types();
const DriverType* find_driver_type(std::string_view name);

}  // namespace blkstack
