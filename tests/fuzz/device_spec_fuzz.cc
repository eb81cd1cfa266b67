// Fuzzes the device-spec parser and disk creation: any input either makes a
// disk or throws blkstack::Error; nothing else (no crash, no other exception,
// no sanitizer report).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "blkstack/device_spec.h"
#include "blkstack/disk_registry.h"
#include "blkstack/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    blkstack::parse_device_spec(text);
  } catch (const blkstack::Error&) {
  }
  // Creating a disk allocates at most the driver's bookkeeping (RAM pages
  // come on first write), so large sizes are fine; very large RAM disks
  // still allocate a chunk table, so keep them under 1 TiB.
  try {
    blkstack::DeviceSpec spec = blkstack::parse_device_spec(text);
    if (spec.type == "ram") {
      for (const auto& [k, v] : spec.options) {
        if (k == "size" && blkstack::parse_size(v) > (uint64_t{1} << 40)) return 0;
      }
      if (!spec.positional.empty()) {
        uint64_t bytes = 0;
        try {
          bytes = blkstack::parse_size(spec.positional);
        } catch (const blkstack::Error&) {
        }
        if (bytes > (uint64_t{1} << 40)) return 0;
      }
    }
    blkstack::DiskRegistry registry;
    registry.create(text);
  } catch (const blkstack::Error&) {
  }
  return 0;
}
