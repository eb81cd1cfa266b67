#include "export/export_table.h"

#include <fmt/format.h>

#include <set>

#include "blkstack/disk.h"
#include "blkstack/error.h"

namespace blkstack {

Export::Export(std::string name, std::string description,
               std::shared_ptr<BlockDevice> bdev)
    : name(std::move(name)), description(std::move(description)), bdev(std::move(bdev)) {}

Export::Export(std::string name, std::string description, std::shared_ptr<Disk> disk)
    : Export(std::move(name), std::move(description), Disk::whole(disk)) {}

std::shared_ptr<Disk> Export::disk() const {
  return bdev ? std::shared_ptr<Disk>(bdev, &bdev->disk()) : nullptr;
}

ExportTable::ExportTable(std::vector<Export> exports) : exports_(std::move(exports)) {
  std::set<std::string_view> names;
  for (const Export& e : exports_) {
    if (e.name.size() > 4096)
      throw Error(
          fmt::format("export name '{:.40}...' is longer than 4096 bytes", e.name));
    if (e.name.find('\0') != std::string::npos)
      throw Error("an export name may not contain a NUL byte");
    if (!e.bdev) throw Error(fmt::format("export '{}' has no device", e.name));
    // Clients write a device that is not read-only: not one a stacked disk
    // holds, nor a partition of a held disk (BusyError naming the holder).
    if (!e.bdev->read_only()) e.bdev->check_open_for_write();
    if (!names.insert(e.name).second)
      throw Error(fmt::format("export '{}' is defined twice", e.name));
  }
}

const Export* ExportTable::find(std::string_view name) const {
  if (name.empty()) return exports_.empty() ? nullptr : &exports_.front();
  for (const Export& e : exports_) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

}  // namespace blkstack
