// The registry of target types: the targets built into the library, then
// those registered at run time. A new in-tree target adds one line to
// kBuiltinTargets (and its .cc file to CMakeLists.txt); see docs/targets.md.
#include <fmt/format.h>

#include <charconv>
#include <mutex>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/driver/target.h"
#include "blkstack/error.h"

namespace blkstack {

extern const TargetType kErrorTarget;
extern const TargetType kLinearTarget;
extern const TargetType kStripedTarget;
extern const TargetType kZeroTarget;
extern const TargetType kMirrorTarget;
extern const TargetType kFlakeyTarget;
extern const TargetType kDelayTarget;
extern const TargetType kLogWritesTarget;

namespace {

// clang-format off
const TargetType* const kBuiltinTargets[] = {
    &kErrorTarget,
    &kLinearTarget,
    &kStripedTarget,
    &kZeroTarget,
    &kMirrorTarget,
    &kFlakeyTarget,
    &kDelayTarget,
    &kLogWritesTarget,
};
// clang-format on

// Looked up when a table is loaded, never on the I/O path: one lock.
struct Registry {
  std::mutex mu;
  std::vector<const TargetType*> types{std::begin(kBuiltinTargets),
                                       std::end(kBuiltinTargets)};
};
Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

std::vector<const TargetType*> target_types() {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  return r.types;
}

const TargetType* find_target_type(std::string_view name) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  for (const TargetType* t : r.types) {
    if (t->name == name) return t;
  }
  return nullptr;
}

void register_target_type(const TargetType& type) {
  if (type.name.empty() || type.name.find_first_of(" \t\n;") != std::string_view::npos) {
    throw Error(fmt::format("bad target type name '{}'", type.name));
  }
  if (type.per_io_bytes > TargetType::kMaxPerIoBytes) {
    throw Error(fmt::format("target type {}: per_io_bytes {} is over {}", type.name,
                            type.per_io_bytes, TargetType::kMaxPerIoBytes));
  }
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  for (const TargetType* t : r.types) {
    if (t->name == type.name) {
      throw Error(fmt::format("target type {} is already registered", type.name));
    }
  }
  r.types.push_back(&type);
}

std::string TargetDevice::devt() const {
  return fmt::format("{}:{}", bdev->major(), bdev->minor());
}

std::string Target::message(std::span<const std::string> argv) {
  throw Error(
      fmt::format("this target takes no messages (got '{}')", fmt::join(argv, " ")));
}

uint64_t parse_target_u64(std::string_view arg, std::string_view what, uint64_t min,
                          uint64_t max) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), v);
  if (ec != std::errc() || p != arg.data() + arg.size() || v < min || v > max) {
    throw Error(fmt::format("invalid {} '{}' (valid: {} to {})", what, arg, min, max));
  }
  return v;
}

}  // namespace blkstack
