// Option readers shared by drivers for the values that become QueueLimits
// and the capacity. The option tables give each its range (ranged(), so
// DeviceOptions refuses a value outside it, naming the range); these check
// what a range cannot say (bs=0 would be a divisor, bs=4G+512 would narrow
// to 512, a size must be a multiple of the block size).
#pragma once

#include <cstdint>

#include "blkstack/device_spec.h"

namespace blkstack {

// The ranges of the shared options, for the drivers' tables.
inline constexpr uint64_t kMinBlockSize = 512;
inline constexpr uint64_t kMaxBlockSize = 65536;
// A request's byte count is 32 bits (the kernel's __data_len): merging
// stops at max_sectors, so more than 32 bits of bytes would wrap it.
inline constexpr uint64_t kMaxSectorsLimit = UINT32_MAX >> 9;

// "bs": a power of two from 512 to 65536.
uint32_t block_size_option(const DeviceOptions& o);
// "max_sectors": at most kMaxSectorsLimit.
uint32_t max_sectors_option(const DeviceOptions& o);
// "size": a positive multiple of `block_size` (its range is in the table).
uint64_t device_size_option(const DeviceOptions& o, uint32_t block_size);

}  // namespace blkstack
