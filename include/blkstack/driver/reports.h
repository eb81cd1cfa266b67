// DiskReports: what a driver tells about its device besides moving data:
// one line about its configuration, which bytes hold data, and how much
// backing storage is in use. One object per disk, handed to the Disk when
// it is made and owned by it, whichever queue mode the disk runs in (the
// kernel keeps such calls in the gendisk's block_device_operations, not
// in blk_mq_ops). Applications ask the Disk: Disk::describe(),
// Disk::extent_at(), Disk::allocated_bytes().
//
// Called from any thread, concurrently with I/O, for as long as the disk
// exists; never after the disk has destroyed its driver.
#pragma once

#include <cstdint>
#include <string>

#include "blkstack/disk.h"

namespace blkstack {

class DiskReports {
 public:
  virtual ~DiskReports() = default;
  // One line about the driver's configuration, for `blkstack disk`.
  virtual std::string describe() const { return {}; }
  // The allocation state of the bytes at `offset`, as one run of at most
  // `max_length` bytes (NBD block status, `blkstack disk`, tests of
  // discard). A driver that cannot tell reports allocated data.
  virtual Extent extent_at(uint64_t offset, uint64_t max_length) const {
    (void)offset;
    return {max_length, true, false};
  }
  // Bytes of backing storage in use (RAM pages, file blocks).
  virtual uint64_t allocated_bytes() const { return 0; }
};

}  // namespace blkstack
