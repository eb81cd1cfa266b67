// The device factory: spec -> driver type -> options -> disk -> registry,
// and OpenContext, through which stacked drivers open their lower devices.
#include "blkstack/device_factory.h"

#include <fmt/format.h>

#include "blkstack/device_spec.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/driver_type.h"
#include "blkstack/driver/open_context.h"
#include "blkstack/driver/queue_mode.h"
#include "blkstack/error.h"

namespace blkstack {

OpenContext::OpenContext(DiskRegistry* registry, std::string holder)
    : registry_(registry), holder_(std::move(holder)) {}

std::shared_ptr<BlockDevice> OpenContext::open_lower(std::string_view name) {
  if (registry_ == nullptr) {
    throw Error(fmt::format("{}: no devices to stack on here (no registry)", holder_));
  }
  if (name == holder_) {
    throw Error(fmt::format("cannot stack {} on itself", holder_));
  }
  // Opened for reading: the claim is what refuses other writers, and the
  // new disk is the one writer it lets through.
  std::shared_ptr<BlockDevice> bdev = registry_->open(name, OpenMode::kRead);
  claims_.emplace_back(bdev, holder_);
  return bdev;
}

std::shared_ptr<Disk> create_device(DiskRegistry& registry, std::string_view text) {
  DeviceSpec spec = parse_device_spec(text);
  const DriverType* type = find_driver_type(spec.type);
  if (!type) {
    std::string known;
    for (const DriverType* t : driver_types())
      known += (known.empty() ? "" : ", ") + std::string(t->name);
    throw Error(fmt::format("device spec '{}': unknown device type '{}' (known: {})",
                            text, spec.type, known));
  }
  std::vector<OptionDef> table(type->options.begin(), type->options.end());
  if (type->queue_modes) {
    for (const OptionDef& d : queue_mode_options()) table.push_back(d);
  }
  for (const OptionDef& d : common_device_options()) table.push_back(d);
  DeviceOptions options(spec, table);
  const std::string name =
      options.given("name") ? options.str("name") : registry.unused_name(type->name);
  if (registry.find(name)) {
    throw Error(
        fmt::format("device spec '{}': a disk named '{}' already exists", text, name));
  }
  // Claims taken by the driver are dropped with the context if anything
  // below fails, so a refused spec leaves every device as it was.
  OpenContext ctx(&registry, name);
  std::shared_ptr<Disk> disk;
  try {
    disk = type->create(options, name, ctx);
  } catch (const Error& e) {
    // The Disk's own checks (limits) do not know the spec; say which it was.
    if (std::string_view(e.what()).starts_with("device spec '")) throw;
    throw Error(fmt::format("device spec '{}': {}", text, e.what()));
  }
  if (options.flag("ro")) disk->set_read_only(true);
  disk = registry.add(std::move(disk), type->name, type->major);
  for (Claim& c : ctx.take_claims()) disk->hold(std::move(c));
  return disk;
}

std::shared_ptr<Disk> DiskRegistry::create(std::string_view spec) {
  return create_device(*this, spec);
}

}  // namespace blkstack
