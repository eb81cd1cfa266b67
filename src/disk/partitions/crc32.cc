// CRC-32 as GPT (UEFI) uses it: the reflected IEEE 802.3 polynomial
// 0xEDB88320, initial value and final xor 0xFFFFFFFF (zlib's crc32).
// Table-driven, one byte at a time: tables are read once per scan.
#include <array>

#include "disk/partitions/check.h"

namespace blkstack::partitions {
namespace {

constexpr std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[i] = c;
  }
  return t;
}

constexpr std::array<uint32_t, 256> kTable = make_table();

}  // namespace

uint32_t crc32(std::span<const std::byte> data) {
  uint32_t c = 0xFFFFFFFFu;
  for (std::byte b : data) c = kTable[(c ^ static_cast<uint32_t>(b)) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

}  // namespace blkstack::partitions
