#include "core/clock.h"

#include <fstream>
#include <string>

namespace blkstack::clock_internal {
namespace {

bool invariant_tsc() {
#if defined(__x86_64__)
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) == 0) {
      return line.find(" constant_tsc") != std::string::npos &&
             line.find(" nonstop_tsc") != std::string::npos;
    }
  }
#endif
  return false;
}

TscScale calibrate() {
  TscScale s{false, 0, 0, 0};
#if defined(__x86_64__)
  if (!invariant_tsc()) return s;
  // Two (TSC, monotonic) pairs 2 ms apart give the rate; a short window
  // keeps program start fast and is accurate to well under 0.1%.
  uint64_t ns0 = monotonic_ns(), tsc0 = __rdtsc();
  uint64_t ns1, tsc1;
  do {
    ns1 = monotonic_ns();
    tsc1 = __rdtsc();
  } while (ns1 - ns0 < 2'000'000);
  if (tsc1 <= tsc0) return s;
  s.mult = static_cast<uint64_t>((static_cast<unsigned __int128>(ns1 - ns0) << 32) /
                                 (tsc1 - tsc0));
  s.tsc0 = tsc0;
  s.ns0 = ns0;
  s.usable = s.mult != 0;
#endif
  return s;
}

}  // namespace

const TscScale& tsc_scale() {
  static const TscScale scale = calibrate();
  return scale;
}

}  // namespace blkstack::clock_internal
