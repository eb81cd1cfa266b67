#include "blkstack/device_spec.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <limits>

#include "blkstack/error.h"

namespace blkstack {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool valid_key(std::string_view k) {
  if (k.empty()) return false;
  return std::all_of(k.begin(), k.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
}

// Leading decimal digits of `text`; throws unless there is at least one and
// the value fits in 64 bits. `rest` gets what follows.
uint64_t leading_number(std::string_view text, std::string_view what,
                        std::string_view* rest, std::string_view expected) {
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ptr == text.data()) {
    throw Error(fmt::format("bad {} '{}': expected {}", what, text, expected));
  }
  if (ec == std::errc::result_out_of_range) {
    throw Error(fmt::format("bad {} '{}': too large", what, text));
  }
  *rest = text.substr(static_cast<size_t>(ptr - text.data()));
  return v;
}

uint64_t scaled(uint64_t v, uint64_t scale, std::string_view text,
                std::string_view what) {
  if (scale != 0 && v > std::numeric_limits<uint64_t>::max() / scale) {
    throw Error(fmt::format("bad {} '{}': too large", what, text));
  }
  return v * scale;
}

}  // namespace

uint64_t parse_uint(std::string_view text, std::string_view what) {
  std::string_view rest;
  uint64_t v = leading_number(text, what, &rest, "an unsigned integer");
  if (!rest.empty())
    throw Error(fmt::format("bad {} '{}': expected an unsigned integer", what, text));
  return v;
}

uint64_t parse_size(std::string_view text, std::string_view what) {
  static constexpr std::string_view kExpected =
      "a byte count with an optional K, M, G, T, P or E suffix (powers of 1024), e.g. "
      "64M";
  std::string_view rest;
  uint64_t v = leading_number(text, what, &rest, kExpected);
  std::string suffix = lower(rest);
  uint64_t scale = 1;
  if (!suffix.empty() && suffix != "b") {
    static constexpr std::string_view kUnits = "kmgtpe";
    size_t pos = kUnits.find(suffix[0]);
    std::string_view tail = std::string_view(suffix).substr(1);
    if (pos == std::string_view::npos || !(tail.empty() || tail == "b" || tail == "ib")) {
      throw Error(fmt::format("bad {} '{}': expected {}", what, text, kExpected));
    }
    scale = uint64_t{1} << (10 * (pos + 1));
  }
  return scaled(v, scale, text, what);
}

uint64_t parse_duration_ns(std::string_view text, std::string_view what) {
  static constexpr std::string_view kExpected =
      "nanoseconds, or a number with ns, us, ms or s, e.g. 20us";
  std::string_view rest;
  uint64_t v = leading_number(text, what, &rest, kExpected);
  std::string unit = lower(rest);
  uint64_t scale;
  if (unit.empty() || unit == "ns")
    scale = 1;
  else if (unit == "us")
    scale = 1'000;
  else if (unit == "ms")
    scale = 1'000'000;
  else if (unit == "s")
    scale = 1'000'000'000;
  else
    throw Error(fmt::format("bad {} '{}': expected {}", what, text, kExpected));
  return scaled(v, scale, text, what);
}

bool parse_bool(std::string_view text, std::string_view what) {
  std::string v = lower(text);
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off") return false;
  throw Error(
      fmt::format("bad {} '{}': expected 1/0, true/false, yes/no or on/off", what, text));
}

std::string format_size(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  double v = static_cast<double>(bytes);
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  if (u == 0) return fmt::format("{} B", bytes);
  if (v == static_cast<double>(static_cast<uint64_t>(v))) {
    return fmt::format("{} {}", static_cast<uint64_t>(v), kUnits[u]);
  }
  return fmt::format("{:.1f} {}", v, kUnits[u]);
}

std::string format_option_range(const OptionDef& def) {
  auto one = [&](uint64_t v) -> std::string {
    switch (def.kind) {
      case OptionKind::kSize:
        // Exact: "1.5 GiB" would hide which byte counts are allowed.
        return v % 1024 == 0 || v < 1024 ? format_size(v) : fmt::format("{} B", v);
      case OptionKind::kDuration:
        for (auto [unit, ns] :
             {std::pair{"s", uint64_t{1'000'000'000}},
              std::pair{"ms", uint64_t{1'000'000}}, std::pair{"us", uint64_t{1'000}}}) {
          if (v != 0 && v % ns == 0) return fmt::format("{}{}", v / ns, unit);
        }
        return fmt::format("{}ns", v);
      default:
        return fmt::format("{}", v);
    }
  };
  return fmt::format("{} to {}", one(def.min), one(def.max));
}

DeviceSpec parse_device_spec(std::string_view text) {
  DeviceSpec spec;
  spec.text = std::string(text);
  auto fail = [&](const std::string& why) -> void {
    throw Error(fmt::format("device spec '{}': {}", text, why));
  };
  if (text.empty()) fail("empty; expected TYPE[:ARG][,KEY=VALUE...], e.g. ram:64M");
  size_t type_end = text.find_first_of(":,");
  spec.type = lower(text.substr(0, type_end));
  if (!valid_key(spec.type)) {
    fail("missing or bad device type before ':' (e.g. ram:64M)");
  }
  if (type_end == std::string_view::npos) return spec;
  std::string_view rest = text.substr(type_end);
  if (rest[0] == ':') {
    std::string_view after = rest.substr(1);
    size_t comma = after.find(',');
    std::string_view first = after.substr(0, comma);
    if (first.empty()) fail("nothing after ':'");
    // "null:size=1G,completion=deferred": a KEY=VALUE right after ':' is the
    // first option, not the positional value. The loop below skips one
    // separator, here the ':'. (A path containing '=' has a '/' or '.' in
    // front of it, which no key has.)
    size_t eq = first.find('=');
    if (eq == std::string_view::npos || !valid_key(first.substr(0, eq))) {
      spec.positional = std::string(first);
      rest = comma == std::string_view::npos ? std::string_view{} : after.substr(comma);
    }
  }
  while (!rest.empty()) {
    rest.remove_prefix(1);  // the ','
    size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma);
    if (item.empty()) fail("empty option (two commas, or a trailing comma)");
    size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      fail(fmt::format("option '{}' has no value; write KEY=VALUE", item));
    }
    std::string key = lower(item.substr(0, eq));
    if (!valid_key(key)) fail(fmt::format("bad option name '{}'", item.substr(0, eq)));
    for (const auto& [k, v] : spec.options) {
      if (k == key) fail(fmt::format("option '{}' given twice", key));
    }
    spec.options.emplace_back(std::move(key), std::string(item.substr(eq + 1)));
  }
  return spec;
}

DeviceOptions::DeviceOptions(const DeviceSpec& spec, std::span<const OptionDef> table)
    : spec_(spec), table_(table) {
  auto def_of = [&](std::string_view key) -> const OptionDef* {
    for (const OptionDef& d : table_) {
      if (d.key == key) return &d;
    }
    return nullptr;
  };
  auto known_keys = [&] {
    std::string keys;
    for (const OptionDef& d : table_)
      keys += (keys.empty() ? "" : ", ") + std::string(d.key);
    return keys;
  };
  std::vector<std::pair<std::string, std::string>> given = spec.options;
  if (!spec.positional.empty()) {
    const OptionDef* pos = nullptr;
    for (const OptionDef& d : table_) {
      if (d.positional) pos = &d;
    }
    if (!pos) fail(fmt::format("type '{}' takes no value after ':'", spec.type));
    for (const auto& [k, v] : given) {
      if (k == pos->key)
        fail(fmt::format("'{}' given both after ':' and as an option", k));
    }
    given.emplace_back(std::string(pos->key), spec.positional);
  }
  for (auto& [key, value] : given) {
    const OptionDef* d = def_of(key);
    if (!d) {
      fail(fmt::format("unknown option '{}' for type '{}' (valid: {})", key, spec.type,
                       known_keys()));
    }
    given_.push_back(key);
    values_.emplace_back(key, value);
  }
  for (const OptionDef& d : table_) {
    if (!given_.empty() && std::find(given_.begin(), given_.end(), d.key) != given_.end())
      continue;
    if (!d.default_value.empty())
      values_.emplace_back(std::string(d.key), d.default_value);
  }
  // Validate every value now, so a mistake is reported before anything is made.
  for (const auto& entry : values_) {
    // Named, not structured bindings: lambdas below use them (clang 14
    // cannot capture a binding).
    const std::string& key = entry.first;
    const std::string& value = entry.second;
    const OptionDef& d = *def_of(key);
    const std::string what = fmt::format("value for '{}'", key);
    // A number must parse and fall in the option's range; either mistake
    // is told with the range, so the fix is in the message.
    auto check_number = [&](auto parse) {
      uint64_t v;
      try {
        v = parse(value, what);
      } catch (const Error& e) {
        throw Error(fmt::format("{} (valid: {})", e.what(), format_option_range(d)));
      }
      if (v < d.min || v > d.max) {
        throw Error(fmt::format("bad {} '{}': out of range (valid: {})", what, value,
                                format_option_range(d)));
      }
    };
    try {
      switch (d.kind) {
        case OptionKind::kSize:
          check_number(parse_size);
          break;
        case OptionKind::kUint:
          check_number(parse_uint);
          break;
        case OptionKind::kBool:
          parse_bool(value, what);
          break;
        case OptionKind::kDuration:
          check_number(parse_duration_ns);
          break;
        case OptionKind::kString:
          if (value.empty()) throw Error(fmt::format("empty {}", what));
          break;
        case OptionKind::kChoice: {
          bool found = false;
          std::string_view rest = d.choices;
          while (!rest.empty() && !found) {
            size_t bar = rest.find('|');
            found = rest.substr(0, bar) == value;
            rest =
                bar == std::string_view::npos ? std::string_view{} : rest.substr(bar + 1);
          }
          if (!found) {
            throw Error(
                fmt::format("bad {} '{}': expected one of {}", what, value, d.choices));
          }
          break;
        }
      }
    } catch (const Error& e) {
      fail(e.what());
    }
  }
}

void DeviceOptions::fail(const std::string& why) const {
  throw Error(fmt::format("device spec '{}': {}", spec_.text, why));
}

bool DeviceOptions::given(std::string_view key) const {
  return std::find(given_.begin(), given_.end(), key) != given_.end();
}

const std::string* DeviceOptions::find(std::string_view key) const {
  for (const auto& [k, v] : values_) {
    if (k == key) return &v;
  }
  return nullptr;
}

const std::string& DeviceOptions::str(std::string_view key) const {
  const std::string* v = find(key);
  if (!v) fail(fmt::format("option '{}' is required", key));
  return *v;
}

uint64_t DeviceOptions::size(std::string_view key) const { return parse_size(str(key)); }
uint64_t DeviceOptions::uint(std::string_view key) const { return parse_uint(str(key)); }
bool DeviceOptions::flag(std::string_view key) const { return parse_bool(str(key)); }
uint64_t DeviceOptions::duration_ns(std::string_view key) const {
  return parse_duration_ns(str(key));
}

}  // namespace blkstack
