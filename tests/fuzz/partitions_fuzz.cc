// Fuzzes the partition-table parsers (src/disk/partitions/): the input is a
// disk image, its first byte choosing the logical block size (odd: 4096,
// else 512), the rest the blocks (padded with zeroes to a whole block).
// Any bytes must give a table or a refusal with a message, never a crash;
// a table must keep its invariants (checked with __builtin_trap so that a
// broken one shows as a crash).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "disk/partitions/check.h"

namespace {

using namespace blkstack;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const unsigned bs = (data[0] & 1) ? 4096 : 512;
  std::vector<std::byte> image((size - 1 + bs - 1) / bs * bs);
  if (size > 1) std::memcpy(image.data(), data + 1, size - 1);
  partitions::ScanSource src;
  src.block_size = bs;
  src.blocks = image.size() / bs;
  uint64_t reads = 0;
  src.read = [&](uint64_t lba, std::span<std::byte> out) {
    ++reads;
    check(out.size() % bs == 0);
    if (lba > src.blocks || out.size() / bs > src.blocks - lba) return false;
    std::memcpy(out.data(), image.data() + lba * bs, out.size());
    return true;
  };
  const PartitionTable t = partitions::scan(src);
  check(reads <= 2 * partitions::kMaxLogicals + 16);
  check(t.error.empty() || t.partitions.empty());
  check(t.label.empty() == (t.error.empty() && t.partitions.empty() && t.id.empty()) ||
        !t.label.empty());
  unsigned last = 0;
  for (const PartitionInfo& p : t.partitions) {
    check(p.number > last);  // by number, none twice
    last = p.number;
    check(p.size != 0 && p.start < src.blocks && p.size <= src.blocks - p.start);
  }
  (void)gpt_attrs_string(t.partitions.empty() ? 0 : t.partitions[0].attrs);
  return 0;
}
