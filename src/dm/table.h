// Table: the lines of a mapped device (the kernel's struct dm_table), in
// dmsetup's syntax, one per line:
//
//     start length target args...
//
// e.g. "0 2097152 linear ram0 0". Lines are checked when the table is
// built: they start at 0, follow each other without gap or overlap, and
// each target's constructor accepts its arguments; any mistake is an Error
// naming the line. The devices the targets open are claimed (holder
// MappedDevice::kHolder, shared by all mapped devices, as dm does) for as
// long as the table lives.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "blkstack/block_device.h"
#include "blkstack/driver/target.h"
#include "blkstack/limits.h"

namespace blkstack {

class DiskRegistry;
class MappedDevice;

class Table {
 public:
  // Parses and constructs `text` (lines separated by newlines or ';'; blank
  // lines and lines starting with '#' ignored) for the mapped device named
  // `holder`. Throws Error (or BusyError) saying which line is wrong and why.
  static std::unique_ptr<Table> build(DiskRegistry& registry, const std::string& holder,
                                      std::string_view text);
  ~Table();
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;

  uint64_t size() const { return size_; }  // sectors: the device's capacity
  size_t num_targets() const { return targets_.size(); }
  Target& target(size_t i) const { return *targets_[i]; }
  const TargetType& type(size_t i) const { return *types_[i]; }
  // The target covering `sector` (< size()); a binary search over the ends
  // (the kernel walks a btree of the same ends).
  Target* find(uint64_t sector) const;
  // The largest per_io_bytes of the table's types.
  size_t per_io_bytes() const { return per_io_bytes_; }
  // The limits of the devices below, stacked (blk_stack_limits), with each
  // target's io_hints applied.
  const QueueLimits& limits() const { return limits_; }
  // Whether any device below has a volatile write cache.
  bool write_cache() const { return write_cache_; }

  // `dmsetup table` (STATUSTYPE_TABLE) and `dmsetup status` (STATUSTYPE_INFO)
  // lines: "start length type args", one per target, newline-terminated.
  std::string table_text() const;
  std::string status_text() const;
  // The devices below, each once ("MAJ:MIN" order of first use).
  std::vector<BlockDevice*> devices() const;

  void set_owner(MappedDevice* md);

 private:
  Table() = default;
  std::vector<std::unique_ptr<Target>> targets_;
  std::vector<const TargetType*> types_;
  std::vector<uint64_t> ends_;  // ends_[i]: first sector after target i
  std::vector<Claim> claims_;   // one per open_device() call
  std::vector<std::shared_ptr<BlockDevice>> devices_;
  uint64_t size_ = 0;
  size_t per_io_bytes_ = 0;
  QueueLimits limits_;
  bool write_cache_ = false;
};

}  // namespace blkstack
