#include "sched/tunable.h"

#include <fmt/format.h>

#include <charconv>

#include "blkstack/error.h"

namespace blkstack {

int64_t parse_tunable(std::string_view sched, std::string_view name,
                      std::string_view value, int64_t min, int64_t max) {
  std::string_view v = value;
  while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.remove_suffix(1);
  int64_t n = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (v.empty() || ec != std::errc() || end != v.data() + v.size() || n < min ||
      n > max) {
    throw Error(fmt::format("{}: bad value '{}' for '{}': a whole number from {} to {}",
                            sched, value, name, min, max));
  }
  return n;
}

}  // namespace blkstack
