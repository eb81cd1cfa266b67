#include "report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "blkstack/pow2_histogram.h"

namespace blkstack::bench {

std::string num2str(double v, int digits) {
  static constexpr const char* kUnits[] = {"", "k", "M", "G", "T", "P"};
  int u = 0;
  const double limit = std::pow(10.0, digits);
  while (v >= limit && u < 5) {
    v /= 1000;
    ++u;
  }
  if (u == 0) return fmt::format("{}", static_cast<uint64_t>(std::llround(v)));
  const int int_digits = v < 10 ? 1 : v < 100 ? 2 : v < 1000 ? 3 : 4;
  const int decimals = std::max(0, digits - 1 - int_digits);
  return fmt::format("{:.{}f}{}", v, decimals, kUnits[u]);
}

std::string bytes2str(double v, bool iec) {
  static constexpr const char* kIec[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  static constexpr const char* kSi[] = {"B", "kB", "MB", "GB", "TB", "PB"};
  const double base = iec ? 1024 : 1000;
  int u = 0;
  while (v >= 10000 && u < 5) {
    v /= base;
    ++u;
  }
  const char* unit = iec ? kIec[u] : kSi[u];
  if (u == 0 || v >= 100)
    return fmt::format("{}{}", static_cast<uint64_t>(std::llround(v)), unit);
  return fmt::format("{:.{}f}{}", v, v < 10 ? 2 : 1, unit);
}

std::string ns2str(double ns) { return format_duration_ns(ns); }

std::string pow2_histogram(const LatencyHistogram& h, std::string_view indent,
                           bool bars) {
  const auto counts = h.pow2_counts();
  return format_pow2_histogram(counts, indent, bars);
}

JobResult total_of(const RunResult& run) {
  JobResult t;
  t.job.name = "All jobs";
  std::map<unsigned, uint64_t> group_runtime, group_elapsed;
  for (const JobResult& j : run.jobs) {
    t.sum.merge(j.sum);
    t.threads += j.threads;
    group_runtime[j.group] = std::max(group_runtime[j.group], j.runtime_ns);
    group_elapsed[j.group] = std::max(group_elapsed[j.group], j.elapsed_ns);
  }
  for (const auto& [g, ns] : group_runtime) t.runtime_ns += ns;
  for (const auto& [g, ns] : group_elapsed) t.elapsed_ns += ns;
  t.sum.runtime_ns = t.runtime_ns;
  return t;
}

}  // namespace blkstack::bench
