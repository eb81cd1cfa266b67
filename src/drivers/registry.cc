// The registry of device types: the drivers built into the library, then
// those registered at run time (an application's own, or a module's; see
// include/blkstack/module.h). A new in-tree driver adds one line to
// kBuiltinDrivers (and its .cc file to CMakeLists.txt); see docs/drivers.md.
#include <fmt/format.h>

#include <mutex>
#include <vector>

#include "blkstack/driver/driver_type.h"
#include "blkstack/error.h"

namespace blkstack {

extern const DriverType kFileDriver;
extern const DriverType kModelDriver;
extern const DriverType kNullDriver;
extern const DriverType kPassthroughDriver;
extern const DriverType kRamDriver;

namespace {

const DriverType* const kBuiltinDrivers[] = {
    &kFileDriver, &kModelDriver, &kNullDriver, &kPassthroughDriver, &kRamDriver,
};

constexpr OptionDef kCommonOptions[] = {
    {"name", OptionKind::kString, "",
     "disk name (default: TYPE and the lowest free index)"},
    {"ro", OptionKind::kBool, "0", "read-only: writes, discards and write-zeroes fail"},
    {"partscan", OptionKind::kBool, "1",
     "read the partition table (MBR, GPT) when the disk is added"},
};

// Types are looked up when a disk is made, never on the I/O path: one
// lock is enough. A function-local static, so that registering from a
// static initializer (a module's) finds it built.
struct Registry {
  std::mutex mu;
  std::vector<const DriverType*> types{std::begin(kBuiltinDrivers),
                                       std::end(kBuiltinDrivers)};
};
Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

std::span<const OptionDef> common_device_options() { return kCommonOptions; }

std::vector<const DriverType*> driver_types() {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  return r.types;
}

const DriverType* find_driver_type(std::string_view name) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  for (const DriverType* t : r.types) {
    if (t->name == name) return t;
  }
  return nullptr;
}

void register_driver_type(const DriverType& type) {
  if (type.name.empty() || type.name.find_first_of(":,= ") != std::string_view::npos)
    throw Error(fmt::format(
        "driver type name '{}' must be non-empty, without ':', ',', '=' or spaces",
        type.name));
  if (type.create == nullptr)
    throw Error(fmt::format("driver type '{}' has no create function", type.name));
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  for (const DriverType* t : r.types) {
    if (t->name == type.name)
      throw Error(fmt::format("driver type '{}' is already registered", type.name));
  }
  r.types.push_back(&type);
}

}  // namespace blkstack
