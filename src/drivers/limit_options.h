// Option readers shared by drivers for the values that become QueueLimits
// and the capacity: each is refused with a clear message when it does not
// fit (bs=0 would be a divisor, bs=4G+512 would narrow to 512).
#pragma once

#include <cstdint>

#include "blkstack/device_spec.h"

namespace blkstack {

// "bs": a power of two from 512 to 65536.
uint32_t block_size_option(const DeviceOptions& o);
// "max_sectors": fits 32 bits.
uint32_t max_sectors_option(const DeviceOptions& o);
// "size": a positive multiple of `block_size`.
uint64_t device_size_option(const DeviceOptions& o, uint32_t block_size);

}  // namespace blkstack
