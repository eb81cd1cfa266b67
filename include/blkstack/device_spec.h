// Device specs: the one syntax for naming a device everywhere (CLI, config
// files, tests):
//
//     TYPE[:POSITIONAL][,KEY=VALUE...]      ram:64M
//                                           null:size=1G,completion=deferred
//                                           file:/srv/disk.img,direct=1
//
// parse_device_spec() checks the syntax; DeviceOptions checks the keys and
// values against the option table a driver declares. Every mistake is an
// Error whose message quotes the spec and names the bad part.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace blkstack {

struct DeviceSpec {
  std::string text;        // as given
  std::string type;        // "ram"
  std::string positional;  // what follows ':' before the first ',' (may be empty)
  std::vector<std::pair<std::string, std::string>> options;  // in order given
};

// Splits a spec into its parts. Throws Error on bad syntax.
DeviceSpec parse_device_spec(std::string_view text);

enum class OptionKind : uint8_t {
  kSize,      // bytes: 4096, 64K, 1M, 2G, 1T, 1GiB
  kUint,      // unsigned integer
  kBool,      // 1/0, true/false, yes/no, on/off
  kChoice,    // one of `choices`, separated by '|'
  kDuration,  // nanoseconds: 20000, 20us, 1ms, 2s
  kString,
};

struct OptionDef {
  std::string_view key;
  OptionKind kind;
  std::string_view default_value;  // empty: no default
  std::string_view help;
  std::string_view choices = {};  // for kChoice: "inline|deferred|timer"
  bool positional = false;        // receives the value after ':'
  // For kSize, kUint and kDuration: the values a driver can serve (bytes,
  // a count, nanoseconds). DeviceOptions refuses others, naming the range,
  // before a driver sees them (see ranged()).
  uint64_t min = 0;
  uint64_t max = UINT64_MAX;
};

// `def` accepting only values from `min` to `max`:
//   ranged({"depth", OptionKind::kUint, "64", "tags per queue"}, 1, 10240)
constexpr OptionDef ranged(OptionDef def, uint64_t min, uint64_t max) {
  def.min = min;
  def.max = max;
  return def;
}

// The largest device any driver makes: 4 EiB, so that byte offsets stay
// far from 2^63, where off_t and the NBD protocol's clients stop.
inline constexpr uint64_t kMaxDeviceBytes = uint64_t{1} << 62;

// Validated options of one spec against a driver's table.
class DeviceOptions {
 public:
  // Throws Error naming the unknown key, bad value or duplicate.
  DeviceOptions(const DeviceSpec& spec, std::span<const OptionDef> table);

  bool given(std::string_view key) const;  // set in the spec, not defaulted
  uint64_t size(std::string_view key) const;
  uint64_t uint(std::string_view key) const;
  bool flag(std::string_view key) const;
  uint64_t duration_ns(std::string_view key) const;
  const std::string& str(std::string_view key) const;  // also kChoice
  const DeviceSpec& spec() const { return spec_; }

 private:
  const std::string* find(std::string_view key) const;
  [[noreturn]] void fail(const std::string& why) const;

  DeviceSpec spec_;
  std::span<const OptionDef> table_;
  std::vector<std::pair<std::string, std::string>> values_;  // resolved
  std::vector<std::string> given_;
};

// Value parsers, also used by the CLI. Throw Error with `what` in the text.
uint64_t parse_size(std::string_view text, std::string_view what = "size");
uint64_t parse_duration_ns(std::string_view text, std::string_view what = "duration");
bool parse_bool(std::string_view text, std::string_view what = "flag");
uint64_t parse_uint(std::string_view text, std::string_view what = "number");

// "64 MiB", "1.5 GiB", "512 B".
std::string format_size(uint64_t bytes);

// The valid values of a ranged option, as its kind is written: "1 to 10240",
// "512 B to 1 PiB", "1ms to 4294967295ms".
std::string format_option_range(const OptionDef& def);

}  // namespace blkstack
