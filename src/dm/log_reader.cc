#include "dm/log_reader.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "blkstack/error.h"

namespace blkstack::logwrites {

LogReader::LogReader(int fd, std::string name) : fd_(fd), name_(std::move(name)) {
  std::byte raw[kSuperBytes];
  read_at(raw, sizeof raw, 0);
  super_ = decode_super(raw);
  if (super_.magic != kMagic)
    throw Error(fmt::format("{}: not a log-writes log (magic {:#x}, want {:#x})", name_,
                            super_.magic, kMagic));
  if (super_.version != kVersion)
    throw Error(fmt::format("{}: log version {} (this reads version {})", name_,
                            super_.version, kVersion));
  if (!valid_sectorsize(super_.sectorsize))
    throw Error(fmt::format("{}: bad sector size {} (valid: 512, 1024, 2048, 4096)",
                            name_, super_.sectorsize));
  block_.resize(super_.sectorsize);
  pos_ = super_.sectorsize;
}

void LogReader::read_at(void* buf, uint64_t len, uint64_t offset) const {
  auto* p = static_cast<char*>(buf);
  while (len > 0) {
    const ssize_t n = ::pread(fd_, p, len, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      throw Error(fmt::format("{}: read at {}: {}", name_, offset, std::strerror(errno)));
    if (n == 0)
      throw Error(fmt::format("{}: the log ends at byte {} before its {} entries do",
                              name_, offset, super_.nr_entries));
    p += n;
    len -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

bool LogReader::next(Entry& e, std::string& mark) {
  if (index_ >= super_.nr_entries) return false;
  read_at(block_.data(), block_.size(), pos_);
  e = decode_entry(block_.data());
  const uint32_t bs = super_.sectorsize;
  // What replay-log calls a malformed entry: all zeroes, or not zero
  // padded after the header (only a mark has bytes there).
  const bool zero = e.flags == 0 && e.nr_sectors == 0;
  const bool padded = e.flags == kMark || block_[kEntryBytes] == std::byte{0};
  if (zero || !padded)
    throw Error(
        fmt::format("{}: malformed entry {} at block {}", name_, index_, pos_ / bs));
  mark.clear();
  if (e.flags & kMark) {
    if (e.data_len > bs - kEntryBytes)
      throw Error(fmt::format("{}: entry {}: mark of {} bytes does not fit a block",
                              name_, index_, e.data_len));
    mark.assign(reinterpret_cast<const char*>(block_.data() + kEntryBytes), e.data_len);
  }
  if (e.nr_sectors > (UINT64_MAX >> 13))
    throw Error(fmt::format("{}: entry {}: absurd length {} blocks", name_, index_,
                            e.nr_sectors));
  data_pos_ = pos_ + bs;
  data_bytes_ = (e.flags & kDiscard) ? 0 : e.nr_sectors * bs;
  pos_ = data_pos_ + data_bytes_;
  ++index_;
  return true;
}

void LogReader::read_data(std::byte* buf, uint64_t len, uint64_t offset) const {
  if (offset > data_bytes_ || len > data_bytes_ - offset)
    throw Error(fmt::format("{}: read past the data of entry {}", name_, index_ - 1));
  read_at(buf, len, data_pos_ + offset);
}

void LogReader::seek_entry(uint64_t n) {
  if (n >= super_.nr_entries)
    throw Error(
        fmt::format("{}: no entry {} (the log has {})", name_, n, super_.nr_entries));
  index_ = 0;
  pos_ = super_.sectorsize;
  Entry e;
  std::string mark;
  while (index_ < n) next(e, mark);
}

}  // namespace blkstack::logwrites
