// ExportTable: the devices a server offers to its clients, by export name.
//
// A table is immutable once built and shared (std::shared_ptr<const>): a
// connection takes the current table when it starts negotiating, and a
// reload (SIGHUP) publishes a new table without disturbing connections that
// already chose an export from the old one (they keep their Disk alive).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace blkstack {

class Disk;

struct Export {
  std::string name;
  std::string description;
  std::shared_ptr<Disk> disk;
};

class ExportTable {
 public:
  ExportTable() = default;
  // Throws Error on a duplicate name, a name longer than 4096 bytes or
  // holding a NUL (NBD strings may not), or a missing disk; BusyError on a
  // writable disk that a stacked disk holds (block_device.h).
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
