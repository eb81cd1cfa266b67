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

namespace {

// A spec parsed, its driver type found, and the options that type takes.
struct TypedSpec {
  DeviceSpec spec;
  const DriverType* type;
  std::vector<OptionDef> table;
};

TypedSpec type_spec(std::string_view text) {
  TypedSpec t{parse_device_spec(text), nullptr, {}};
  t.type = find_driver_type(t.spec.type);
  if (!t.type) {
    std::string known;
    for (const DriverType* d : driver_types())
      known += (known.empty() ? "" : ", ") + std::string(d->name);
    throw Error(fmt::format("device spec '{}': unknown device type '{}' (known: {})",
                            text, t.spec.type, known));
  }
  t.table.assign(t.type->options.begin(), t.type->options.end());
  if (t.type->queue_modes) {
    for (const OptionDef& d : queue_mode_options()) t.table.push_back(d);
  }
  for (const OptionDef& d : common_device_options()) t.table.push_back(d);
  return t;
}

}  // namespace

void check_device_spec(std::string_view text) {
  const TypedSpec t = type_spec(text);
  DeviceOptions options(t.spec, t.table);  // throws naming a bad option
}

std::shared_ptr<Disk> create_device(DiskRegistry& registry, std::string_view text) {
  const TypedSpec t = type_spec(text);
  const DriverType* type = t.type;
  DeviceOptions options(t.spec, t.table);
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
  if (!type->partitions) disk->set_partscan(false);
  disk = registry.add(std::move(disk), type->name, type->major);
  for (Claim& c : ctx.take_claims()) disk->hold(std::move(c));
  // As add_disk scans a disk that may have partitions: a table found
  // malformed, or unreadable, leaves none and says why in the table. A
  // disk whose first block is a hole or known zero (a new RAM disk) holds
  // no table: no I/O for it.
  const Extent first = disk->extent_at(0, disk->limits().logical_block_size);
  if (type->partitions && options.flag("partscan") && first.allocated && !first.zero)
    disk->rescan_partitions();
  return disk;
}

std::shared_ptr<Disk> DiskRegistry::create(std::string_view spec) {
  return create_device(*this, spec);
}

}  // namespace blkstack
