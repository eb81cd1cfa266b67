// The list of device types. A new driver adds one line here (and its .cc
// file to CMakeLists.txt); see docs/drivers.md.
#include "blkstack/driver.h"

namespace blkstack {

extern const DriverType kFileDriver;
extern const DriverType kNullDriver;
extern const DriverType kPassthroughDriver;
extern const DriverType kRamDriver;

namespace {
const DriverType* const kDriverTypes[] = {
    &kFileDriver,
    &kNullDriver,
    &kPassthroughDriver,
    &kRamDriver,
};

constexpr OptionDef kCommonOptions[] = {
    {"name", OptionKind::kString, "", "disk name (default: TYPE and the lowest free index)"},
    {"ro", OptionKind::kBool, "0", "read-only: writes, discards and write-zeroes fail"},
};
}  // namespace

std::span<const OptionDef> common_device_options() { return kCommonOptions; }

std::span<const DriverType* const> driver_types() { return kDriverTypes; }

const DriverType* find_driver_type(std::string_view name) {
  for (const DriverType* t : kDriverTypes) {
    if (t->name == name) return t;
  }
  return nullptr;
}

}  // namespace blkstack
