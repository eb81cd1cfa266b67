#include "blkstack/pow2_histogram.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace blkstack {

std::string format_duration_ns(double ns) {
  const char* unit;
  double v = ns;
  if (v >= 1e9) {
    v /= 1e9;
    unit = "s";
  } else if (v >= 1e6) {
    v /= 1e6;
    unit = "ms";
  } else if (v >= 1e3) {
    v /= 1e3;
    unit = "us";
  } else {
    return fmt::format("{}ns", static_cast<uint64_t>(ns));
  }
  return fmt::format("{:.{}f}{}", v, v < 10 ? 2 : v < 100 ? 1 : 0, unit);
}

std::string format_pow2_histogram(std::span<const uint64_t> counts,
                                  std::string_view indent, bool bars) {
  int first = -1, last = -1;
  uint64_t total = 0, peak = 0;
  for (int k = 0; k < static_cast<int>(counts.size()); ++k) {
    if (counts[k] == 0) continue;
    if (first < 0) first = k;
    last = k;
    total += counts[k];
    peak = std::max(peak, counts[k]);
  }
  if (first < 0) return "";
  std::string out;
  if (!bars) {
    out += indent;
    for (int k = first; k <= last; ++k) {
      out += fmt::format(" {} < {}", counts[k], format_duration_ns(std::ldexp(1.0, k)));
    }
    out += '\n';
    return out;
  }
  for (int k = first; k <= last; ++k) {
    const double pct =
        100.0 * static_cast<double>(counts[k]) / static_cast<double>(total);
    const size_t bar = static_cast<size_t>(
        std::llround(40.0 * static_cast<double>(counts[k]) / static_cast<double>(peak)));
    out += fmt::format("{}< {:>7}: {:>12} {:>6.2f}%  {}\n", indent,
                       format_duration_ns(std::ldexp(1.0, k)), counts[k], pct,
                       std::string(bar, '#'));
  }
  return out;
}

}  // namespace blkstack
