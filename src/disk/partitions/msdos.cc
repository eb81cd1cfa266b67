// The MBR ("dos") partition table: four primary entries in block 0, and
// the logical partitions of an extended one along its chain of EBRs
// (extended boot records), as libblkid's dos.c and the kernel's msdos.c
// read them. Logical partitions are numbered from 5 in chain order.
#include <fmt/format.h>

#include <set>
#include <vector>

#include "disk/partitions/check.h"

namespace blkstack::partitions {
namespace {

constexpr size_t kEntriesOffset = 446;  // four 16-byte entries
constexpr size_t kIdOffset = 440;       // the disk signature
constexpr uint8_t kProtectiveGpt = 0xEE;

struct MbrEntry {
  uint8_t boot;
  uint8_t type;
  uint64_t start;  // relative: to the disk (primary), an EBR or the extended start
  uint64_t size;
};

MbrEntry entry(const std::vector<std::byte>& block, int i) {
  const std::byte* p = block.data() + kEntriesOffset + 16 * i;
  return {static_cast<uint8_t>(p[0]), static_cast<uint8_t>(p[4]), le32(p + 8),
          le32(p + 12)};
}

bool has_magic(const std::vector<std::byte>& block) {
  return static_cast<uint8_t>(block[510]) == 0x55 &&
         static_cast<uint8_t>(block[511]) == 0xAA;
}

// DOS, Windows (LBA) and Linux extended partitions.
bool is_extended(uint8_t type) { return type == 0x05 || type == 0x0F || type == 0x85; }

class MbrReader {
 public:
  MbrReader(const ScanSource& src, PartitionTable& out) : src_(src), out_(out) {}

  bool read() {
    std::vector<std::byte> mbr(src_.block_size);
    if (!src_.read(0, mbr)) {
      out_.error = "cannot read block 0 (I/O error)";
      return true;
    }
    if (!has_magic(mbr)) return false;
    for (int i = 0; i < 4; ++i) {
      const MbrEntry e = entry(mbr, i);
      // A boot sector of a file system, not a table (both readers' test).
      if (e.boot != 0 && e.boot != 0x80) return false;
      // The protective MBR of a GPT whose headers are both bad: the GPT
      // reader said why; the entries are not a table of their own.
      if (e.type == kProtectiveGpt) return false;
    }
    out_.label = "dos";
    disk_id_ = le32(mbr.data() + kIdOffset);
    out_.id = fmt::format("0x{:08x}", disk_id_);
    for (int i = 0; i < 4 && out_.error.empty(); ++i) {
      const MbrEntry e = entry(mbr, i);
      if (e.size == 0) continue;  // an empty slot keeps its number
      if (!inside(e.start, e.size, 0, src_.blocks, fmt::format("partition {}", i + 1)))
        break;
      PartitionInfo& p = add(i + 1, e);
      p.start = e.start;
      if (is_extended(e.type)) p.extended = true;
    }
    // Logical partitions after all primaries, numbered in chain order.
    for (size_t i = 0; i < out_.partitions.size() && out_.error.empty(); ++i) {
      const PartitionInfo p = out_.partitions[i];
      if (p.extended) read_chain(p.start, p.size);
    }
    return true;
  }

 private:
  PartitionInfo& add(unsigned number, const MbrEntry& e) {
    PartitionInfo p;
    p.number = number;
    p.size = e.size;
    p.type = fmt::format("{:x}", e.type);
    p.bootable = e.boot == 0x80;
    p.uuid = fmt::format("{:08x}-{:02x}", disk_id_, number);
    out_.partitions.push_back(std::move(p));
    return out_.partitions.back();
  }

  // Whether [start, start + size) lies in [lo, hi); if not, sets the error.
  bool inside(uint64_t start, uint64_t size, uint64_t lo, uint64_t hi,
              const std::string& what) {
    if (start >= lo && start <= hi && size <= hi - start) return true;
    out_.error = fmt::format("{} (blocks {} to {}) is outside {} (blocks {} to {})", what,
                             start, start + size - 1,
                             lo == 0 ? "the disk" : "its extended partition", lo, hi - 1);
    return false;
  }

  // The EBR chain of the extended partition at `ext_start`: each EBR holds
  // data entries relative to itself and a link to the next EBR relative to
  // the extended partition's start.
  void read_chain(uint64_t ext_start, uint64_t ext_size) {
    const uint64_t ext_end = ext_start + ext_size;
    std::set<uint64_t> seen;
    std::vector<std::byte> ebr(src_.block_size);
    uint64_t cur = ext_start;
    for (;;) {
      if (!seen.insert(cur).second) {
        out_.error = fmt::format("the EBR chain loops back to block {}", cur);
        return;
      }
      if (seen.size() > kMaxLogicals) {
        out_.error = fmt::format("the EBR chain is longer than {} records", kMaxLogicals);
        return;
      }
      if (!src_.read(cur, ebr)) {
        out_.error = fmt::format("cannot read the EBR at block {} (I/O error)", cur);
        return;
      }
      if (!has_magic(ebr)) return;  // the chain ends, as both readers end it
      for (int i = 0; i < 4; ++i) {
        const MbrEntry e = entry(ebr, i);
        if (e.size == 0 || is_extended(e.type)) continue;
        const unsigned number = next_logical_++;
        if (!inside(cur + e.start, e.size, ext_start, ext_end,
                    fmt::format("logical partition {}", number)))
          return;
        add(number, e).start = cur + e.start;
      }
      uint64_t next = 0;
      for (int i = 0; i < 4 && next == 0; ++i) {
        const MbrEntry e = entry(ebr, i);
        if (e.size == 0 || !is_extended(e.type)) continue;
        if (!inside(ext_start + e.start, e.size, ext_start, ext_end,
                    fmt::format("the EBR link at block {}", cur)))
          return;
        next = ext_start + e.start;
      }
      if (next == 0) return;
      cur = next;
    }
  }

  const ScanSource& src_;
  PartitionTable& out_;
  uint32_t disk_id_ = 0;
  unsigned next_logical_ = 5;
};

}  // namespace

bool msdos_partition(const ScanSource& src, PartitionTable& out) {
  return MbrReader(src, out).read();
}

}  // namespace blkstack::partitions
