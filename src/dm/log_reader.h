// LogReader: walks a log-writes log (dm/log_writes_format.h) entry by entry,
// as xfstests' replay-log does, from a file or block device descriptor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dm/log_writes_format.h"

namespace blkstack::logwrites {

class LogReader {
 public:
  // Reads and checks the super block of the log open on `fd` (not owned).
  // Throws Error naming `name` on a bad magic, version or sector size, or
  // a log that ends before its first entry.
  LogReader(int fd, std::string name);

  const Super& super() const { return super_; }
  uint32_t sectorsize() const { return super_.sectorsize; }
  uint64_t nr_entries() const { return super_.nr_entries; }
  // The number of the entry next() reads next (0 is the first entry).
  uint64_t next_index() const { return index_; }
  // The log block the reader is at (after an entry and its data).
  uint64_t pos_block() const { return pos_ / super_.sectorsize; }

  // Reads the next entry into `e` (a mark's name into `mark`, else it is
  // cleared) and moves past it and its data; false after the last one.
  // The entry's data is then available with read_data() until the next
  // call. Throws Error on a malformed entry or a short log.
  bool next(Entry& e, std::string& mark);
  // Reads `len` bytes at `offset` into the data of the entry next() last
  // returned.
  void read_data(std::byte* buf, uint64_t len, uint64_t offset) const;
  // Goes back to entry `n` (0 is the first); throws Error past the end.
  void seek_entry(uint64_t n);

 private:
  void read_at(void* buf, uint64_t len, uint64_t offset) const;

  int fd_;
  std::string name_;
  Super super_;
  uint64_t index_ = 0;       // next entry
  uint64_t pos_ = 0;         // byte offset of the next entry's block
  uint64_t data_pos_ = 0;    // byte offset of the last entry's data
  uint64_t data_bytes_ = 0;  // its length
  std::vector<std::byte> block_;
};

}  // namespace blkstack::logwrites
