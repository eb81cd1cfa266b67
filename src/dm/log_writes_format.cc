// Little-endian encoding of the log-writes super block and entries.
#include "dm/log_writes_format.h"

#include <endian.h>

#include <cstdio>
#include <cstring>

namespace blkstack::logwrites {
namespace {

void put64(std::byte*& p, uint64_t v) {
  v = htole64(v);
  std::memcpy(p, &v, 8);
  p += 8;
}

void put32(std::byte*& p, uint32_t v) {
  v = htole32(v);
  std::memcpy(p, &v, 4);
  p += 4;
}

uint64_t get64(const std::byte*& p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  p += 8;
  return le64toh(v);
}

uint32_t get32(const std::byte*& p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  p += 4;
  return le32toh(v);
}

}  // namespace

void encode(const Super& s, std::byte* out) {
  put64(out, s.magic);
  put64(out, s.version);
  put64(out, s.nr_entries);
  put32(out, s.sectorsize);
}

void encode(const Entry& e, std::byte* out) {
  put64(out, e.sector);
  put64(out, e.nr_sectors);
  put64(out, e.flags);
  put64(out, e.data_len);
}

Super decode_super(const std::byte* in) {
  Super s;
  s.magic = get64(in);
  s.version = get64(in);
  s.nr_entries = get64(in);
  s.sectorsize = get32(in);
  return s;
}

Entry decode_entry(const std::byte* in) {
  Entry e;
  e.sector = get64(in);
  e.nr_sectors = get64(in);
  e.flags = get64(in);
  e.data_len = get64(in);
  return e;
}

std::string flags_name(uint64_t flags) {
  static constexpr struct {
    uint64_t bit;
    const char* name;
  } kNames[] = {{kFlush, "FLUSH"},
                {kFua, "FUA"},
                {kDiscard, "DISCARD"},
                {kMark, "MARK"},
                {kMetadata, "METADATA"}};
  std::string out;
  for (const auto& n : kNames) {
    if (!(flags & n.bit)) continue;
    if (!out.empty()) out += '|';
    out += n.name;
    flags &= ~n.bit;
  }
  if (flags) {
    if (!out.empty()) out += '|';
    char buf[32];
    std::snprintf(buf, sizeof buf, "UNKNOWN.0x%llx",
                  static_cast<unsigned long long>(flags));
    out += buf;
  }
  return out.empty() ? "NONE" : out;
}

}  // namespace blkstack::logwrites
