// IoRange: where a byte-addressed file I/O lands on a block device.
//
// The FUSE export takes reads and writes at any byte offset and length, as a
// file does, but a Disk takes whole logical blocks. clamp_io() cuts the I/O
// at the end of the device and widens it to whole blocks; the head and tail
// say how much of the first and last block is not part of the I/O (the
// edges that a write must read, modify and write back). Pure arithmetic, so
// it has unit tests of its own.
#pragma once

#include <cstdint>

namespace blkstack::fuse {

struct IoRange {
  uint64_t offset = 0;       // the I/O's first byte
  uint64_t len = 0;          // bytes inside the device (0: at or past the end)
  uint64_t block_start = 0;  // offset rounded down to the logical block size
  uint64_t block_end = 0;    // offset + len rounded up to the logical block size
  uint32_t head = 0;         // offset - block_start
  uint32_t tail = 0;         // block_end - (offset + len)

  bool aligned() const { return head == 0 && tail == 0; }
  uint64_t block_bytes() const { return block_end - block_start; }
};

// `lbs` is a power of two; `size` a multiple of it. `len` is cut at `size`.
inline IoRange clamp_io(uint64_t offset, uint64_t len, uint64_t size, uint32_t lbs) {
  IoRange r;
  r.offset = offset;
  if (offset >= size || len == 0) {
    r.block_start = r.block_end = offset;
    return r;
  }
  r.len = len < size - offset ? len : size - offset;
  const uint64_t mask = lbs - 1;
  r.block_start = offset & ~mask;
  r.block_end = (offset + r.len + mask) & ~mask;
  r.head = static_cast<uint32_t>(offset - r.block_start);
  r.tail = static_cast<uint32_t>(r.block_end - (offset + r.len));
  return r;
}

}  // namespace blkstack::fuse
