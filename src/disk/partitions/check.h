// The partition-table parsers (the kernel's block/partitions/: check.h,
// msdos.c, efi.c), pure functions over a way to read logical blocks, so
// that tests and the fuzz target feed them bytes without a disk. Internal;
// Disk::rescan_partitions (rescan.cc) is their user.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "blkstack/partition_table.h"

namespace blkstack::partitions {

// Where a table is read from: `blocks` logical blocks of `block_size`
// bytes (512 or 4096), and a reader that fills `out` (a whole number of
// blocks) from block `lba` on, returning false on an I/O error.
struct ScanSource {
  uint64_t blocks = 0;
  unsigned block_size = 512;
  std::function<bool(uint64_t lba, std::span<std::byte> out)> read;
};

// The largest GPT entry array a header may declare (UEFI asks for at least
// 16 KiB; tools write 16 KiB or 32 KiB): beyond it, refused as absurd.
inline constexpr uint64_t kMaxGptArrayBytes = 4u << 20;
// The longest EBR chain followed (logical partitions of one extended one).
inline constexpr unsigned kMaxLogicals = 256;

// Each returns false when the table is not its kind (so the next is
// tried), true when it is, with `out` filled in: partitions, or an error
// saying why the table was refused. Tried GPT first, then MBR, as Linux.
bool efi_partition(const ScanSource& src, PartitionTable& out);
bool msdos_partition(const ScanSource& src, PartitionTable& out);

// Both in turn; a disk with neither gets an empty table. Never throws on
// bad bytes.
PartitionTable scan(const ScanSource& src);

// Little-endian fields of on-disk structures.
inline uint16_t le16(const std::byte* p) {
  return static_cast<uint16_t>(static_cast<unsigned>(p[0]) | static_cast<unsigned>(p[1])
                                                                 << 8);
}
inline uint32_t le32(const std::byte* p) {
  return le16(p) | static_cast<uint32_t>(le16(p + 2)) << 16;
}
inline uint64_t le64(const std::byte* p) {
  return le32(p) | static_cast<uint64_t>(le32(p + 4)) << 32;
}

// CRC-32 (IEEE 802.3, zlib's crc32) of `data`, as GPT checksums are.
uint32_t crc32(std::span<const std::byte> data);

}  // namespace blkstack::partitions
