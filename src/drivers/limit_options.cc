#include "blkstack/driver/limit_options.h"

#include <fmt/format.h>

#include "blkstack/error.h"

namespace blkstack {

uint32_t block_size_option(const DeviceOptions& o) {
  const uint64_t bs = o.size("bs");
  if (bs < 512 || bs > 65536 || (bs & (bs - 1)) != 0) {
    throw Error(
        fmt::format("device spec '{}': bad value for 'bs' '{}': expected a power "
                    "of two from 512 to 65536",
                    o.spec().text, o.str("bs")));
  }
  return static_cast<uint32_t>(bs);
}

uint32_t max_sectors_option(const DeviceOptions& o) {
  const uint64_t v = o.uint("max_sectors");
  if (v > kMaxSectorsLimit) {
    throw Error(
        fmt::format("device spec '{}': bad value for 'max_sectors' '{}': too large",
                    o.spec().text, o.str("max_sectors")));
  }
  return static_cast<uint32_t>(v);
}

uint64_t device_size_option(const DeviceOptions& o, uint32_t block_size) {
  const uint64_t size = o.size("size");
  if (size == 0 || size % block_size != 0) {
    throw Error(
        fmt::format("device spec '{}': bad value for 'size' '{}': expected a positive "
                    "multiple of the block size {}",
                    o.spec().text, o.str("size"), block_size));
  }
  return size;
}

}  // namespace blkstack
