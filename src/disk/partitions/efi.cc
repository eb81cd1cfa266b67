// GPT (the UEFI GUID partition table), as libblkid's gpt.c and the
// kernel's efi.c read it: a protective (or hybrid) MBR in block 0, the
// primary header in block 1 with its entry array, and a backup header in
// the last block, read when the primary is damaged. Each header and its
// array carry a CRC-32. The entry count and entry size are the header's,
// within bounds (check.h).
#include <fmt/format.h>

#include <cstring>
#include <optional>
#include <vector>

#include "disk/partitions/check.h"

namespace blkstack::partitions {
namespace {

constexpr uint32_t kMinHeaderSize = 92;
constexpr uint32_t kMinEntrySize = 128;
constexpr size_t kNameOffset = 56;  // in an entry: 36 UTF-16LE code units
constexpr size_t kNameBytes = 72;

// A GUID as text: the first three fields are little-endian, the rest bytes.
std::string guid_string(const std::byte* p) {
  auto b = [p](int i) { return static_cast<unsigned>(p[i]); };
  return fmt::format(
      "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}", le32(p),
      le16(p + 4), le16(p + 6), b(8), b(9), b(10), b(11), b(12), b(13), b(14), b(15));
}

bool guid_is_zero(const std::byte* p) {
  for (int i = 0; i < 16; ++i)
    if (p[i] != std::byte{0}) return false;
  return true;
}

void put_utf8(std::string& out, uint32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// UTF-16LE up to the first NUL; a lone surrogate becomes U+FFFD.
std::string utf16le_to_utf8(const std::byte* p, size_t units) {
  std::string out;
  for (size_t i = 0; i < units; ++i) {
    uint32_t c = le16(p + 2 * i);
    if (c == 0) break;
    if (c >= 0xD800 && c < 0xDC00 && i + 1 < units) {
      const uint32_t lo = le16(p + 2 * (i + 1));
      if (lo >= 0xDC00 && lo < 0xE000) {
        c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
        ++i;
      } else {
        c = 0xFFFD;
      }
    } else if (c >= 0xD800 && c < 0xE000) {
      c = 0xFFFD;
    }
    put_utf8(out, c);
  }
  return out;
}

// A header that passed every check, with its entry array.
struct Gpt {
  std::string disk_guid;
  uint64_t first_usable, last_usable;
  uint32_t count, entry_size;
  std::vector<std::byte> array;
};

// Reads and checks the header in block `lba`; on failure, says why.
std::optional<Gpt> read_header(const ScanSource& src, uint64_t lba, std::string& why) {
  std::vector<std::byte> block(src.block_size);
  if (!src.read(lba, block)) {
    why = "cannot read it (I/O error)";
    return std::nullopt;
  }
  const std::byte* h = block.data();
  if (std::memcmp(h, "EFI PART", 8) != 0) {
    why = "no \"EFI PART\" signature";
    return std::nullopt;
  }
  const uint32_t size = le32(h + 12);
  if (size < kMinHeaderSize || size > src.block_size) {
    why = fmt::format("header size {} is not from {} to {}", size, kMinHeaderSize,
                      src.block_size);
    return std::nullopt;
  }
  const uint32_t crc = le32(h + 16);
  std::memset(block.data() + 16, 0, 4);
  if (crc32({block.data(), size}) != crc) {
    why = "bad header CRC";
    return std::nullopt;
  }
  if (le64(h + 24) != lba) {
    why = fmt::format("it says it is in block {}", le64(h + 24));
    return std::nullopt;
  }
  Gpt g;
  g.first_usable = le64(h + 40);
  g.last_usable = le64(h + 48);
  g.disk_guid = guid_string(h + 56);
  const uint64_t array_lba = le64(h + 72);
  g.count = le32(h + 80);
  g.entry_size = le32(h + 84);
  const uint32_t array_crc = le32(h + 88);
  if (g.first_usable > g.last_usable || g.last_usable >= src.blocks) {
    why = fmt::format("usable blocks {} to {} are not inside the disk's {}",
                      g.first_usable, g.last_usable, src.blocks);
    return std::nullopt;
  }
  if (g.entry_size < kMinEntrySize || g.entry_size % 8 != 0) {
    why = fmt::format("entry size {} is not a multiple of 8 of at least {}", g.entry_size,
                      kMinEntrySize);
    return std::nullopt;
  }
  const uint64_t bytes = uint64_t{g.count} * g.entry_size;
  if (bytes > kMaxGptArrayBytes) {
    why = fmt::format("{} entries of {} bytes is more than the {} MiB allowed", g.count,
                      g.entry_size, kMaxGptArrayBytes >> 20);
    return std::nullopt;
  }
  const uint64_t array_blocks = (bytes + src.block_size - 1) / src.block_size;
  if (array_lba > src.blocks || array_blocks > src.blocks - array_lba ||
      (lba >= array_lba && lba < array_lba + array_blocks)) {
    why = fmt::format("its entry array (blocks {} to {}) is not inside the disk",
                      array_lba, array_lba + array_blocks);
    return std::nullopt;
  }
  g.array.resize(array_blocks * src.block_size);
  if (array_blocks != 0 && !src.read(array_lba, g.array)) {
    why = "cannot read its entry array (I/O error)";
    return std::nullopt;
  }
  if (crc32({g.array.data(), bytes}) != array_crc) {
    why = "bad entry array CRC";
    return std::nullopt;
  }
  return g;
}

// Whether block 0 holds an MBR with a 0xEE entry: protective, or hybrid
// (other entries beside it), both taken as GPT as libblkid does.
bool has_protective_mbr(const ScanSource& src) {
  std::vector<std::byte> mbr(src.block_size);
  if (!src.read(0, mbr)) return false;
  if (static_cast<uint8_t>(mbr[510]) != 0x55 || static_cast<uint8_t>(mbr[511]) != 0xAA)
    return false;
  for (int i = 0; i < 4; ++i)
    if (static_cast<uint8_t>(mbr[446 + 16 * i + 4]) == 0xEE) return true;
  return false;
}

}  // namespace

bool efi_partition(const ScanSource& src, PartitionTable& out) {
  if (src.blocks < 3 || !has_protective_mbr(src)) return false;
  out.label = "gpt";
  std::string why_primary, why_backup;
  std::optional<Gpt> g = read_header(src, 1, why_primary);
  if (!g) {
    g = read_header(src, src.blocks - 1, why_backup);
    if (!g) {
      out.error = fmt::format("both GPT headers are invalid: primary: {}; backup: {}",
                              why_primary, why_backup);
      return true;
    }
    out.warnings.push_back(fmt::format(
        "the primary GPT header is invalid ({}); using the backup", why_primary));
  }
  out.id = g->disk_guid;
  out.first_lba = g->first_usable;
  out.last_lba = g->last_usable;
  for (uint32_t i = 0; i < g->count; ++i) {
    const std::byte* e = g->array.data() + uint64_t{i} * g->entry_size;
    if (guid_is_zero(e)) continue;  // unused: the number stays free
    PartitionInfo p;
    p.number = i + 1;
    p.type = guid_string(e);
    p.uuid = guid_string(e + 16);
    const uint64_t first = le64(e + 32), last = le64(e + 40);
    if (first > last || first < g->first_usable || last > g->last_usable) {
      out.error = fmt::format(
          "partition {} (blocks {} to {}) is outside the usable blocks {} to {}",
          p.number, first, last, g->first_usable, g->last_usable);
      out.partitions.clear();
      return true;
    }
    p.start = first;
    p.size = last - first + 1;
    p.attrs = le64(e + 48);
    p.name = utf16le_to_utf8(e + kNameOffset, kNameBytes / 2);
    out.partitions.push_back(std::move(p));
  }
  return true;
}

}  // namespace blkstack::partitions

namespace blkstack {

// As sfdisk prints them (libfdisk's gpt.c): bits 0-2 by name, the
// type-specific bits 48-63 as one "GUID:48,60"; bits 3-47 (reserved) are
// not printed.
std::string gpt_attrs_string(uint64_t attrs) {
  static constexpr const char* kNames[] = {"RequiredPartition", "NoBlockIOProtocol",
                                           "LegacyBIOSBootable"};
  std::string out;
  auto add = [&out](const std::string& s) { out += (out.empty() ? "" : " ") + s; };
  for (int bit = 0; bit < 3; ++bit)
    if (attrs & (uint64_t{1} << bit)) add(kNames[bit]);
  std::string guid;
  for (int bit = 48; bit < 64; ++bit)
    if (attrs & (uint64_t{1} << bit))
      guid += fmt::format("{}{}", guid.empty() ? "" : ",", bit);
  if (!guid.empty()) add("GUID:" + guid);
  return out;
}

}  // namespace blkstack
