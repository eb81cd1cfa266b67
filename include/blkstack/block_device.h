// BlockDevice: what a bio addresses (the kernel's struct block_device over
// gendisk). Either a whole Disk (each Disk owns one, as a gendisk owns part0)
// or a range of it, a partition, with its own name, start sector, length,
// read-only flag, statistics and /proc/diskstats line.
//
// The whole-disk device lives as long as its Disk; a partition until a
// rescan replaces it and the last std::shared_ptr to it is gone. Hold
// either through a std::shared_ptr<BlockDevice> from DiskRegistry::open,
// which shares the Disk's ownership too and so keeps both alive.
//
// Claims (the kernel's holders, bd_prepare_to_claim): a stacked disk claims
// the devices it is built on. A claimed device cannot be opened for writing
// by anyone else nor removed from its DiskRegistry, and the refusal
// (BusyError) names the holder: "ram0 is held by stack0". A claim on a
// partition also covers the whole disk and the other way round, since their
// bytes overlap. Opens for reading are always allowed.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "blkstack/status.h"

namespace blkstack {

class Bio;
class Disk;
class IoStats;
struct DiskStats;

class BlockDevice {
 public:
  // The whole-disk device (partno 0) spans the disk whatever its capacity;
  // a partition spans `length` sectors from `start`.
  BlockDevice(Disk& disk, std::string name, unsigned partno, uint64_t start,
              uint64_t length, bool read_only);
  ~BlockDevice();
  BlockDevice(const BlockDevice&) = delete;
  BlockDevice& operator=(const BlockDevice&) = delete;

  Disk& disk() const { return *disk_; }
  const std::string& name() const { return name_; }
  unsigned partno() const { return partno_; }  // 0: the whole disk
  bool is_partition() const { return partno_ != 0; }
  // A partition a rescan replaced: I/O to it fails with kOffline.
  bool removed() const { return removed_.load(std::memory_order_relaxed); }
  uint64_t start() const { return start_; }  // first sector on the disk
  uint64_t capacity() const;                 // sectors
  uint64_t size_bytes() const;
  // The device's own flag, or the disk's: a partition of a read-only disk
  // is read-only too.
  bool read_only() const;
  void set_read_only(bool ro);
  unsigned major() const;
  unsigned minor() const;

  // Statistics of the I/O addressed to this device (for the whole disk,
  // all the disk's I/O, partitions' included, as Linux counts part0).
  DiskStats stats() const;
  std::string diskstats_line() const;

  // --- claims ---------------------------------------------------------
  // Claims this device for `holder` (a disk name). Claiming again for the
  // same holder is allowed. Throws BusyError when another holder has it or
  // an overlapping device, and Error when the disk is being removed.
  void claim(std::string_view holder);
  // Drops one claim of `holder`, if it has one; the device is free again
  // when the holder's last claim is dropped.
  void release(std::string_view holder);
  // The holder of this device or of an overlapping one; empty if none.
  std::string holder() const;
  // Throws BusyError ("cannot open ram0 for writing: ram0 is held by
  // stack0") when the device is claimed.
  void check_open_for_write() const;

  // --- used by submit_bio() and Disk -----------------------------------
  // Checks a bio addressed to this partition against its range and flag,
  // then remaps it to the whole disk (blk_partition_remap): the partition
  // keeps counting it (Bio::acct_part).
  Status remap_to_disk(Bio& bio);
  void account_start(uint64_t now_ns);
  void account_done(Bio& bio, uint64_t now_ns);

 private:
  friend class Disk;
  // Under the claim lock: the holder of this device or an overlapping one.
  const std::string* holder_locked() const;

  Disk* disk_;
  std::string name_;
  unsigned partno_;
  uint64_t start_;
  uint64_t length_;
  std::atomic<bool> read_only_;
  std::atomic<bool> removed_{false};  // set by a rescan (Disk::rescan_partitions)
  std::string holder_;                // under the claim lock (block_device.cc)
  unsigned holder_claims_ = 0;        // Claims of holder_ (bd_holders)
  std::unique_ptr<IoStats> stats_;    // partitions only: part0 is the disk's
  // Partitions: opens held (Disk::open_partition), under the disk's
  // parts_lock_; a rescan waits for none.
  unsigned opens_ = 0;
};

// One claim, released when destroyed (bd_release). Holds the device, and so
// its disk.
class Claim {
 public:
  Claim() = default;
  Claim(std::shared_ptr<BlockDevice> bdev, std::string holder);
  ~Claim() { reset(); }
  Claim(Claim&& o) noexcept = default;
  Claim& operator=(Claim&& o) noexcept;
  void reset();
  BlockDevice* device() const { return bdev_.get(); }

 private:
  std::shared_ptr<BlockDevice> bdev_;
  std::string holder_;
};

// How a device is opened (the kernel's BLK_OPEN_READ / BLK_OPEN_WRITE).
// Opening for writing is refused while another disk holds the device.
enum class OpenMode : uint8_t { kRead, kWrite };

}  // namespace blkstack
