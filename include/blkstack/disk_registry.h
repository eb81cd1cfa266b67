// DiskRegistry: the set of disks a program knows by name, with major and
// minor numbers handed out as register_blkdev and the gendisk minors do.
//
// Thread-safe. A registry owns a share of each disk; removing a disk shuts it
// down (in-flight I/O finishes, new I/O fails with kOffline) before it
// disappears from the registry.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "blkstack/block_device.h"

namespace blkstack {

class Disk;

class DiskRegistry {
 public:
  static constexpr unsigned kMinorsPerDisk = 16;  // the disk and 15 partitions
  static constexpr unsigned kDynamicMajorFirst = 254;
  static constexpr unsigned kDynamicMajorLast = 234;

  DiskRegistry() = default;
  ~DiskRegistry();
  DiskRegistry(const DiskRegistry&) = delete;
  DiskRegistry& operator=(const DiskRegistry&) = delete;

  // Reserves a major number for `driver` (register_blkdev): `major` if it is
  // free, or, with major == 0, an unused one counting down from 254. Asking
  // again for the same driver returns the same number. Throws Error when the
  // number belongs to another driver or none is left.
  unsigned register_major(std::string_view driver, unsigned major);

  // Creates a disk from a device spec ("ram:64M,name=scratch") and adds it.
  // Without name=, the disk is named TYPE followed by the lowest free index.
  // The device factory above this layer does the work: create_device() in
  // blkstack/device_factory.h (and defines this shorthand).
  std::shared_ptr<Disk> create(std::string_view spec);
  // The name a disk of `type` gets without name=: TYPE and the lowest free
  // index ("ram0").
  std::string unused_name(std::string_view type) const;
  // Adds a disk made elsewhere under the driver name `driver` (major 0 =
  // dynamic). Throws Error if its name is taken.
  std::shared_ptr<Disk> add(std::shared_ptr<Disk> disk, std::string_view driver,
                            unsigned major = 0);

  std::shared_ptr<Disk> find(std::string_view name) const;
  // Like find, but throws Error naming the disk and listing the known ones.
  std::shared_ptr<Disk> get(std::string_view name) const;
  std::vector<std::shared_ptr<Disk>> list() const;  // sorted by name

  // Opens the device `name` — a disk, or a partition of one ("ram0p1") —
  // sharing the disk's ownership, so the disk stays alive while it is
  // held. OpenMode::kWrite throws BusyError naming the holder while the
  // device is claimed by a stacked disk (unless it is read-only, so it is
  // not written anyway). Throws Error if unknown.
  std::shared_ptr<BlockDevice> open(std::string_view name, OpenMode mode) const;
  // The disk `name`, opened whole with `mode` (as open()): for users of a
  // whole disk (BlockHandle, exports, the CLI).
  std::shared_ptr<Disk> get(std::string_view name, OpenMode mode) const;

  // Shuts the disk down and removes it. Throws Error if unknown, and
  // BusyError naming the holder while another disk is stacked on it (or on
  // one of its partitions).
  void remove(std::string_view name);

 private:
  std::string unused_name_locked(std::string_view type) const;

  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Disk>, std::less<>> disks_;
  std::map<std::string, unsigned, std::less<>> majors_;
  std::map<unsigned, unsigned> next_minor_;
};

}  // namespace blkstack
