// The on-disk format of the log-writes target's log (the kernel's
// drivers/md/dm-log-writes.c, read by xfstests' replay-log).
//
// All numbers are little endian. The log device is cut into blocks of
// `sectorsize` bytes (the logical block size of the logged device):
//
//   block 0        Super {magic, version, nr_entries, sectorsize}
//   then, per logged write, in the order it reached stable storage:
//     one block    Entry {sector, nr_sectors, flags, data_len}, then for a
//                  mark its name (data_len bytes), zero padded
//     nr_sectors   the data written (none for a discard, a flush or a mark)
//
// Entry::sector and Entry::nr_sectors count `sectorsize` blocks of the
// logged device, not 512-byte sectors. The super block is rewritten after
// every FUA or MARK entry, so nr_entries covers everything up to the last
// of them (and all of it once the target is removed: its final mark is
// "dm-log-writes-end").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace blkstack::logwrites {

inline constexpr uint64_t kMagic = 0x6a736677736872;  // WRITE_LOG_MAGIC
inline constexpr uint64_t kVersion = 1;               // WRITE_LOG_VERSION

// Entry::flags (LOG_*_FLAG).
inline constexpr uint64_t kFlush = 1 << 0;
inline constexpr uint64_t kFua = 1 << 1;
inline constexpr uint64_t kDiscard = 1 << 2;
inline constexpr uint64_t kMark = 1 << 3;
inline constexpr uint64_t kMetadata = 1 << 4;

// The mark the target logs when it is removed.
inline constexpr const char* kEndMark = "dm-log-writes-end";

struct Super {
  uint64_t magic = kMagic;
  uint64_t version = kVersion;
  uint64_t nr_entries = 0;
  uint32_t sectorsize = 0;
};
inline constexpr size_t kSuperBytes = 28;  // packed: 3 x le64 + le32

struct Entry {
  uint64_t sector = 0;      // in sectorsize blocks of the logged device
  uint64_t nr_sectors = 0;  // likewise
  uint64_t flags = 0;
  uint64_t data_len = 0;  // bytes of the mark name for a MARK entry
};
inline constexpr size_t kEntryBytes = 32;

// Encoding into and decoding from the first bytes of a block; the caller
// zeroes the rest of the block.
void encode(const Super& s, std::byte* out);
void encode(const Entry& e, std::byte* out);
Super decode_super(const std::byte* in);
Entry decode_entry(const std::byte* in);

// "FLUSH|FUA", "NONE", unknown bits as "UNKNOWN.0x40" (replay-log's words).
std::string flags_name(uint64_t flags);

// Whether a log can have this sector size: a power of two from 512 to 4096
// (the logical block sizes Linux has).
inline bool valid_sectorsize(uint32_t size) {
  return size >= 512 && size <= 4096 && (size & (size - 1)) == 0;
}

}  // namespace blkstack::logwrites
