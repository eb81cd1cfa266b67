// CRC-32C (Castagnoli), as iSCSI, ext4, btrfs and fio's verify=crc32c use it.
//
//   uint32_t c = crc32c(buf, len);            // one buffer
//   c = crc32c_extend(c, more, more_len);     // continue over a second one
//
// Uses the SSE4.2 crc32 instruction when the CPU has it (checked once at run
// time with cpuid), otherwise a slice-by-8 table. Both give the same result;
// crc32c_portable() is the table version, for tests.
#pragma once

#include <cstddef>
#include <cstdint>

namespace blkstack::bench {

// CRC-32C of `len` bytes, continuing from `crc` (0 for a fresh start).
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t len);
inline uint32_t crc32c(const void* data, size_t len) {
  return crc32c_extend(0, data, len);
}

// The table-driven implementation, whatever the CPU.
uint32_t crc32c_portable(uint32_t crc, const void* data, size_t len);
// Whether crc32c_extend uses the SSE4.2 instruction on this machine.
bool crc32c_hardware();

}  // namespace blkstack::bench
