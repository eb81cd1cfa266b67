#include "blkstack/disk_registry.h"

#include <fmt/format.h>

#include "blkstack/disk.h"
#include "blkstack/error.h"

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
    throw Error(
        fmt::format("major {} is already registered to driver '{}'", major, *owner));
  }
  majors_.emplace(std::string(driver), major);
  return major;
}

std::string DiskRegistry::unused_name(std::string_view type) const {
  std::lock_guard lock(mu_);
  return unused_name_locked(type);
}

std::string DiskRegistry::unused_name_locked(std::string_view type) const {
  for (unsigned i = 0;; ++i) {
    std::string name = fmt::format("{}{}", type, i);
    if (!disks_.count(name)) return name;
  }
}

std::shared_ptr<Disk> DiskRegistry::add(std::shared_ptr<Disk> disk,
                                        std::string_view driver, unsigned major) {
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

std::shared_ptr<BlockDevice> DiskRegistry::open(std::string_view name,
                                                OpenMode mode) const {
  std::shared_ptr<BlockDevice> bdev;
  if (auto disk = find(name)) {
    bdev = Disk::whole(disk);
  } else {
    // A partition: rare, so a walk over the disks and their partitions.
    for (const auto& d : list()) {
      if (!bdev) bdev = Disk::open_partition(d, name);
    }
    if (!bdev) get(name);  // throws, listing the known disks
  }
  // A read-only device is not written whatever the mode: nothing to refuse.
  if (mode == OpenMode::kWrite && !bdev->read_only()) bdev->check_open_for_write();
  return bdev;
}

std::shared_ptr<Disk> DiskRegistry::get(std::string_view name, OpenMode mode) const {
  std::shared_ptr<Disk> disk = get(name);
  if (mode == OpenMode::kWrite && !disk->read_only())
    disk->part0().check_open_for_write();
  return disk;
}

void DiskRegistry::remove(std::string_view name) {
  std::shared_ptr<Disk> disk = get(name);
  disk->close_claims();  // throws while another disk is stacked on it
  disk->shutdown();      // outside the lock: in-flight I/O may take a while
  std::lock_guard lock(mu_);
  if (auto it = disks_.find(name); it != disks_.end() && it->second == disk)
    disks_.erase(it);
}

}  // namespace blkstack
