#include "progress.h"

#include <fmt/format.h>

#include "report.h"

namespace blkstack::bench {
namespace {

std::string clock_str(uint64_t ns) {
  const uint64_t s = ns / 1'000'000'000u;
  if (s >= 3600)
    return fmt::format("{:02}h:{:02}m:{:02}s", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{:02}m:{:02}s", s / 60, s % 60);
}

}  // namespace

std::string format_progress(const ProgressSnapshot& s) {
  std::string bw, iops;
  static constexpr char kLetter[kDirs] = {'r', 'w'};
  for (int d = 0; d < kDirs; ++d) {
    if (s.iops[d] <= 0 && !(d == 0 && s.iops[1] <= 0)) continue;
    if (!bw.empty()) {
      bw += ',';
      iops += ',';
    }
    bw += fmt::format("{}={}/s", kLetter[d], bytes2str(s.bw[d], true));
    iops += fmt::format("{}={}", kLetter[d], num2str(s.iops[d]));
  }
  return fmt::format(
      "Jobs: {} (f={}): [{}][{}][{}][{} IOPS][elapsed {}][eta {}]", s.running_threads,
      s.running_threads, s.modes,
      s.eta_known ? fmt::format("{:.1f}%", s.percent) : std::string("-.-%"), bw, iops,
      clock_str(s.elapsed_ns),
      s.eta_known ? clock_str(s.eta_ns) : std::string("--m:--s"));
}

void TerminalProgress::update(const ProgressSnapshot& s) {
  fmt::print(out_, "\r{}\033[K", format_progress(s));
  std::fflush(out_);
  drawn_ = true;
}

void TerminalProgress::finish() {
  if (!drawn_) return;
  fmt::print(out_, "\r\033[K");
  std::fflush(out_);
  drawn_ = false;
}

}  // namespace blkstack::bench
