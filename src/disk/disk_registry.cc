#include "blkstack/disk_registry.h"

#include <fmt/format.h>

#include "blkstack/device_spec.h"
#include "blkstack/disk.h"
#include "blkstack/driver/driver_type.h"
#include "blkstack/error.h"
#include "blkstack/driver/queue_mode.h"

namespace blkstack {

DiskRegistry::~DiskRegistry() {
  for (auto& [name, disk] : disks_) disk->shutdown();
}

unsigned DiskRegistry::register_major(std::string_view driver, unsigned major) {
  std::lock_guard lock(mu_);
  if (auto it = majors_.find(driver); it != majors_.end()) {
    if (major == 0 || major == it->second) return it->second;
    throw Error(fmt::format("driver '{}' already has major {}", driver, it->second));
  }
  auto owner_of = [&](unsigned m) -> const std::string* {
    for (const auto& [name, num] : majors_) {
      if (num == m) return &name;
    }
    return nullptr;
  };
  if (major == 0) {
    for (unsigned m = kDynamicMajorFirst; m >= kDynamicMajorLast && !major; --m) {
      if (!owner_of(m)) major = m;
    }
    if (major == 0) throw Error("no free dynamic major number left");
  } else if (const std::string* owner = owner_of(major)) {
    throw Error(fmt::format("major {} is already registered to driver '{}'", major, *owner));
  }
  majors_.emplace(std::string(driver), major);
  return major;
}

std::string DiskRegistry::unused_name_locked(std::string_view type) const {
  for (unsigned i = 0;; ++i) {
    std::string name = fmt::format("{}{}", type, i);
    if (!disks_.count(name)) return name;
  }
}

std::shared_ptr<Disk> DiskRegistry::create(std::string_view text) {
  DeviceSpec spec = parse_device_spec(text);
  const DriverType* type = find_driver_type(spec.type);
  if (!type) {
    std::string known;
    for (const DriverType* t : driver_types()) known += (known.empty() ? "" : ", ") + std::string(t->name);
    throw Error(fmt::format("device spec '{}': unknown device type '{}' (known: {})", text,
                            spec.type, known));
  }
  std::vector<OptionDef> table(type->options.begin(), type->options.end());
  if (type->queue_modes) {
    for (const OptionDef& d : queue_mode_options()) table.push_back(d);
  }
  for (const OptionDef& d : common_device_options()) table.push_back(d);
  DeviceOptions options(spec, table);
  std::string name;
  {
    std::lock_guard lock(mu_);
    name = options.given("name") ? options.str("name") : unused_name_locked(type->name);
    if (disks_.count(name)) {
      throw Error(fmt::format("device spec '{}': a disk named '{}' already exists", text, name));
    }
  }
  std::shared_ptr<Disk> disk;
  try {
    disk = type->create(options, name);
  } catch (const Error& e) {
    // The Disk's own checks (limits) do not know the spec; say which it was.
    if (std::string_view(e.what()).starts_with("device spec '")) throw;
    throw Error(fmt::format("device spec '{}': {}", text, e.what()));
  }
  if (options.flag("ro")) disk->set_read_only(true);
  return add(std::move(disk), type->name, type->major);
}

std::shared_ptr<Disk> DiskRegistry::add(std::shared_ptr<Disk> disk, std::string_view driver,
                                        unsigned major) {
  major = register_major(driver, major);
  std::lock_guard lock(mu_);
  if (disks_.count(disk->name())) {
    throw Error(fmt::format("a disk named '{}' already exists", disk->name()));
  }
  unsigned& next = next_minor_[major];
  disk->set_devt(major, next);
  next += kMinorsPerDisk;
  disks_.emplace(disk->name(), disk);
  return disk;
}

std::shared_ptr<Disk> DiskRegistry::find(std::string_view name) const {
  std::lock_guard lock(mu_);
  auto it = disks_.find(name);
  return it == disks_.end() ? nullptr : it->second;
}

std::shared_ptr<Disk> DiskRegistry::get(std::string_view name) const {
  if (auto d = find(name)) return d;
  std::string known;
  for (const auto& d : list()) known += (known.empty() ? "" : ", ") + d->name();
  throw Error(fmt::format("no disk named '{}' (known: {})", name,
                          known.empty() ? "none" : known));
}

std::vector<std::shared_ptr<Disk>> DiskRegistry::list() const {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Disk>> out;
  for (const auto& [name, disk] : disks_) out.push_back(disk);
  return out;
}

void DiskRegistry::remove(std::string_view name) {
  std::shared_ptr<Disk> disk = get(name);
  disk->shutdown();  // outside the lock: in-flight I/O may take a while
  std::lock_guard lock(mu_);
  if (auto it = disks_.find(name); it != disks_.end() && it->second == disk) disks_.erase(it);
}

}  // namespace blkstack
