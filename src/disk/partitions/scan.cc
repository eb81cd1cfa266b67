// The scan entry point: GPT first, then MBR (the order of the kernel's
// check_part[] and, for a protective MBR, of libblkid), one table kept.
#include "disk/partitions/check.h"

namespace blkstack::partitions {

PartitionTable scan(const ScanSource& src) {
  PartitionTable t;
  t.sector_size = src.block_size;
  // Too small for a table, or a block size the parsers do not take (the
  // MBR's fields need 512 bytes).
  if (src.blocks < 1 || src.block_size < 512) return t;
  if (!efi_partition(src, t) && !msdos_partition(src, t)) return PartitionTable{};
  if (!t.error.empty()) t.partitions.clear();
  return t;
}

}  // namespace blkstack::partitions
