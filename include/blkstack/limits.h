// QueueLimits: what a device can take in one I/O (the kernel's queue_limits),
// and splitting a bio so every piece fits (bio_split_to_limits).
#pragma once

#include <cstdint>
#include <string>

#include "blkstack/bio.h"

namespace blkstack {

struct QueueLimits {
  uint32_t logical_block_size = 512;      // smallest addressable unit, bytes
  uint32_t physical_block_size = 512;     // smallest unit written atomically
  uint32_t max_sectors = 2560;            // largest read/write, 512-byte sectors
  uint32_t max_hw_sectors = 65535;        // hardware ceiling for max_sectors
  uint16_t max_segments = 128;            // memory segments per I/O
  uint32_t max_segment_size = 65536;      // bytes per memory segment
  uint32_t discard_granularity = 0;       // bytes; discards are aligned to it
  uint32_t optimal_io_size = 0;           // bytes an I/O best spans (io_opt); 0: none
  uint32_t max_discard_sectors = 0;       // 0: discard not supported
  uint32_t max_write_zeroes_sectors = 0;  // 0: write-zeroes not supported
  // Write-zeroes with BioFlag::kNoUnmap leaves the range allocated. False
  // for a driver whose write-zeroes may deallocate whatever the flag says:
  // zeroing that must keep the space then goes as data (zeroout.h).
  bool write_zeroes_nounmap = false;
  // A discard leaves the whole range reading as zeroes (the kernel's former
  // discard_zeroes_data), so zeroing may discard where unmapping is allowed.
  bool discard_zeroes_data = false;
  bool volatile_write_cache = false;  // writes need a flush to be durable
  bool fua = false;                   // the device honours FUA itself
  bool rotational = false;            // seeks cost (a spinning disk): queue/rotational
  bool read_only = false;
  // How the memory of one I/O may be laid out. submit_bio() takes a bio's
  // memory as its owner built it; a caller's scatter-gather list mapped by
  // SgMapper (sg_map.h) is cut and bounced to honour these. The defaults
  // ask nothing.
  // A segment never crosses an address boundary of (mask + 1) bytes
  // (seg_boundary_mask); at least a page: 2^n - 1 >= 4095.
  uint64_t seg_boundary_mask = UINT64_MAX;
  // The address and length of every segment are multiples of
  // (dma_alignment + 1) (queue_dma_alignment); 2^n - 1, at most 4095.
  uint32_t dma_alignment = 0;
  // No gap inside an I/O at (mask + 1) granularity (virt_boundary_mask, as
  // NVMe's PRPs need): every segment but the first starts on a boundary and
  // every one but the last ends on one. 0: none; else 2^n - 1, at most 4095.
  uint32_t virt_boundary_mask = 0;

  // The effective limit on reads and writes: min(max_sectors, max_hw_sectors).
  uint32_t max_io_sectors() const {
    return max_sectors < max_hw_sectors ? max_sectors : max_hw_sectors;
  }
  // Empty when the limits are consistent, otherwise what is wrong.
  std::string check() const;
};

// Bytes from the bio's current position that fit in one I/O under `lim`
// (every limit respected, a multiple of the logical block size). Equals
// bio.size() when no split is needed; 0 when no legal split exists.
uint32_t max_bytes_within_limits(const Bio& bio, const QueueLimits& lim);

// Splits `bio` so that its front fits `lim`. Returns &bio if it already
// fits, otherwise a new front bio from `pool` chained to `bio` (which is
// advanced past it). Never waits for `pool`. Returns nullptr and sets
// *error: to Status::kInvalid when the bio cannot be split legally (a
// segment layout that leaves less than one logical block); to
// Status::kResource when `pool` has no bio for it now (then park `bio`
// there: BioSet::park).
Bio* split_to_limits(Bio& bio, const QueueLimits& lim, BioSet& pool, Status* error);

}  // namespace blkstack
