// ExportTable: the devices a server offers to its clients, by export name.
//
// A table is immutable once built and shared (std::shared_ptr<const>): a
// connection takes the current table when it starts negotiating, and a
// reload (SIGHUP) publishes a new table without disturbing connections that
// already chose an export from the old one (they keep their device alive).
//
// An export serves a block device: a whole disk or a partition (Linux
// exports /dev/sda1 as readily as /dev/sda). Its size and read-only flag
// are the device's; limits, write cache and discard are its disk's, which
// a partition inherits. Bios go to the device, and a partition's are
// remapped onto the disk in submit_bio (BlockDevice::remap_to_disk).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace blkstack {

class BlockDevice;
class Disk;

struct Export {
  // `bdev` should keep its disk alive (DiskRegistry::open, Disk::whole,
  // Disk::open_partition do; a partition opened so also refuses rescans).
  Export(std::string name, std::string description, std::shared_ptr<BlockDevice> bdev);
  // The whole of `disk`.
  Export(std::string name, std::string description, std::shared_ptr<Disk> disk);

  // The disk under the device, sharing the device's ownership: for a
  // flush (of the whole disk, as Linux flushes a partition's) and names.
  std::shared_ptr<Disk> disk() const;

  std::string name;
  std::string description;
  std::shared_ptr<BlockDevice> bdev;
};

class ExportTable {
 public:
  ExportTable() = default;
  // Throws Error on a duplicate name, a name longer than 4096 bytes or
  // holding a NUL (NBD strings may not), or a missing device; BusyError on
  // a writable device that a stacked disk holds (block_device.h).
  explicit ExportTable(std::vector<Export> exports);

  // The export called `name`; the empty name selects the first export, as
  // with nbdkit and qemu-nbd. Null when there is none.
  const Export* find(std::string_view name) const;
  std::span<const Export> list() const { return exports_; }
  bool empty() const { return exports_.empty(); }

 private:
  std::vector<Export> exports_;
};

}  // namespace blkstack
