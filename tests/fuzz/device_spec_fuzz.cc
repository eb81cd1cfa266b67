// Fuzzes device specs end to end: the parser, DeviceOptions against every
// driver's option table (and every accessor of every option), and
// DiskRegistry::create, followed by a little I/O on the RAM disks it makes.
// Every size is created, up to the largest each driver takes (a RAM disk's
// chunk table costs address space, not memory: ram:1P is cheap), and every
// numeric option's edges (0, 2^32, 2^63, 2^64-1, every suffix; see the
// dictionary and corpus) must be refused with an Error or served.
// Any input must either work or throw blkstack::Error; a crash, another
// exception, a sanitizer report or a broken invariant (checked with
// __builtin_trap so it shows as a crash) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/device_spec.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/driver_type.h"
#include "blkstack/error.h"

namespace {

using namespace blkstack;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

// Only types whose disks live in memory are created: a future file or
// network driver would make the fuzzer write files or open sockets.
bool creatable(std::string_view type) { return type == "null" || type == "ram"; }

void check_spec(const DeviceSpec& spec, std::string_view text) {
  check(spec.text == text);
  check(!spec.type.empty());
  std::set<std::string> keys;
  for (const auto& [k, v] : spec.options) {
    check(!k.empty());
    check(keys.insert(k).second);  // duplicates are refused by the parser
  }
}

// Builds the options against `table` and reads every option the way a
// driver would; values were validated, so reading must not fail.
void exercise_options(const DeviceSpec& spec, std::span<const OptionDef> table) {
  try {
    DeviceOptions o(spec, table);
    for (const OptionDef& d : table) {
      if (!o.given(d.key) && d.default_value.empty()) continue;
      switch (d.kind) {
        case OptionKind::kSize:
          (void)o.size(d.key);
          break;
        case OptionKind::kUint:
          (void)o.uint(d.key);
          break;
        case OptionKind::kBool:
          (void)o.flag(d.key);
          break;
        case OptionKind::kDuration:
          (void)o.duration_ns(d.key);
          break;
        case OptionKind::kChoice:
        case OptionKind::kString:
          check(!o.str(d.key).empty());
          break;
      }
    }
  } catch (const Error&) {
    // A clear refusal is the expected outcome for most inputs.
  }
}

// One block at each end of a fresh RAM disk: what is written reads back,
// and the rest reads as zeroes.
void exercise_ram(const std::shared_ptr<Disk>& disk) {
  BlockHandle h(disk);
  const uint32_t lbs = disk->limits().logical_block_size;
  std::vector<std::byte> block(lbs, std::byte{0xA5}), back(lbs);
  const uint64_t last = h.size() - lbs;
  for (uint64_t off : {uint64_t{0}, last}) {
    const Status w = h.pwrite(block.data(), lbs, off);
    check(w == (disk->read_only() ? Status::kReadOnly : Status::kOk));
    check(h.pread(back.data(), lbs, off) == Status::kOk);
    check(std::memcmp(back.data(), block.data(), lbs) == 0 ||
          (disk->read_only() && back[0] == std::byte{0}));
  }
  check(h.pread(back.data(), lbs, h.size()) == Status::kOutOfRange);
  check(h.discard(0, lbs) == (disk->read_only() ? Status::kReadOnly : Status::kOk));
  check(h.flush() == Status::kOk);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  DeviceSpec spec;
  bool parsed = false;
  try {
    spec = parse_device_spec(text);
    parsed = true;
  } catch (const Error& e) {
    check(std::string_view(e.what()).find("device spec '") == 0);
  }
  if (!parsed) return 0;
  check_spec(spec, text);

  // Every driver's table, whatever the spec's type says: more tables, more
  // paths through DeviceOptions.
  for (const DriverType* t : driver_types()) {
    std::vector<OptionDef> table(t->options.begin(), t->options.end());
    for (const OptionDef& d : common_device_options()) table.push_back(d);
    exercise_options(spec, table);
  }

  const DriverType* type = find_driver_type(spec.type);
  if (type && !creatable(spec.type)) return 0;
  try {
    DiskRegistry registry;
    std::shared_ptr<Disk> disk = registry.create(text);
    check(type != nullptr);
    check(registry.find(disk->name()) == disk);
    check(disk->capacity() > 0);
    if (spec.type == "ram") exercise_ram(disk);
    registry.remove(disk->name());
    check(disk->dying());
  } catch (const Error& e) {
    // Every create error quotes the spec. what() is a C string: a spec with
    // a NUL byte can only be matched up to it.
    check(std::string_view(e.what()).find(text.substr(0, text.find('\0'))) !=
          std::string_view::npos);
  }
  return 0;
}
