// Disk::rescan_partitions (the kernel's BLKRRPART: disk_scan_partitions and
// bdev_disk_changed): read the table through the whole disk, then replace
// the partitions, refused while one is open or any device is claimed.
#include <fmt/format.h>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/error.h"
#include "disk/claim_lock.h"
#include "disk/partitions/check.h"

namespace blkstack {
namespace {

PartitionTable read_table(Disk& disk) {
  // A handle that does not own the disk: the caller holds it.
  BlockHandle h(std::shared_ptr<Disk>(std::shared_ptr<Disk>(), &disk));
  partitions::ScanSource src;
  src.block_size = disk.limits().logical_block_size;
  src.blocks = disk.size_bytes() / src.block_size;
  src.read = [&h, &src](uint64_t lba, std::span<std::byte> out) {
    return h.pread(out.data(), out.size(), lba * src.block_size) == Status::kOk;
  };
  return partitions::scan(src);
}

}  // namespace

std::string Disk::rescan_busy_locked() const {
  // Under the claim lock; the holder walk takes parts_lock_ itself.
  if (const std::string* h = part0_.holder_locked()) {
    return fmt::format("{} is held by {}", name_, *h);
  }
  return "";
}

std::string Disk::open_partition_locked() const {
  for (const auto& p : parts_) {
    if (p && p->opens_ != 0) return fmt::format("{} is open", p->name());
  }
  return "";
}

PartitionTable Disk::rescan_partitions() {
  // BLKRRPART on a GENHD_FL_NO_PART disk is EINVAL.
  if (!partscan())
    throw Error(
        fmt::format("cannot rescan {}: its driver does not take partitions", name_));
  std::lock_guard one_at_a_time(rescan_lock_);
  // Claims and opens cannot change while both locks are held, claims
  // first (the claim lock before parts_lock_).
  auto check_busy = [this](std::unique_lock<std::mutex>& parts) {
    std::string why = rescan_busy_locked();
    parts.lock();
    if (why.empty()) why = open_partition_locked();
    if (!why.empty()) throw BusyError(fmt::format("cannot rescan {}: {}", name_, why));
  };
  {
    std::lock_guard claims(claim_lock());
    std::unique_lock parts(parts_lock_, std::defer_lock);
    check_busy(parts);
  }
  PartitionTable t = read_table(*this);
  // No I/O in flight on the partitions being replaced: none is open, and
  // the freeze waits for any bio still on its way.
  freeze();
  try {
    std::lock_guard claims(claim_lock());
    std::unique_lock parts(parts_lock_, std::defer_lock);
    check_busy(parts);
    // A holder of a replaced partition (partitions()) keeps a valid object
    // whose I/O fails, never a dangling one.
    for (auto& p : parts_) {
      if (p) p->removed_.store(true, std::memory_order_relaxed);
      p.reset();
    }
    const uint64_t per_block = t.sector_size >> kSectorShift;
    for (const PartitionInfo& p : t.partitions) {
      uint64_t length = p.size * per_block;
      // An extended partition's device covers only its first 1 KiB (or
      // one block), as Linux makes it: room for a boot loader, none for a
      // file system over the logical ones.
      if (p.extended)
        length = std::min<uint64_t>(length, std::max<uint64_t>(per_block, 2));
      if (p.number > kMaxPartitions) {
        t.warnings.push_back(
            fmt::format("partition {}: no device (a disk has devices for 1 to {})",
                        p.number, kMaxPartitions));
        continue;
      }
      try {
        add_partition_locked(p.number, p.start * per_block, length, false);
      } catch (const Error& e) {
        t.warnings.push_back(e.what());
      }
    }
    table_ = t;
  } catch (...) {
    unfreeze();
    throw;
  }
  unfreeze();
  return t;
}

PartitionTable Disk::partition_table() const {
  std::lock_guard lock(parts_lock_);
  return table_;
}

std::shared_ptr<BlockDevice> Disk::open_partition(const std::shared_ptr<Disk>& self,
                                                  std::string_view name) {
  std::lock_guard lock(self->parts_lock_);
  for (const auto& p : self->parts_) {
    if (!p || p->name() != name) continue;
    BlockDevice* part = p.get();
    ++part->opens_;
    // The deleter holds the disk and the partition (a rescan is refused
    // while it is open anyway).
    return std::shared_ptr<BlockDevice>(part, [self, keep = p](BlockDevice*) {
      std::lock_guard l(self->parts_lock_);
      --keep->opens_;
    });
  }
  return nullptr;
}

}  // namespace blkstack
