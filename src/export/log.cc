#include "export/log.h"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>

namespace blkstack {
namespace {
std::atomic<bool> enabled{true};
}  // namespace

void serve_log(std::string_view line) {
  if (!enabled.load(std::memory_order_relaxed)) return;
  // One write per line, so lines from several loops do not interleave.
  std::string s = "blkstack serve: ";
  s.append(line);
  s.push_back('\n');
  std::fwrite(s.data(), 1, s.size(), stderr);
}

void set_serve_log_enabled(bool on) { enabled.store(on, std::memory_order_relaxed); }

std::string error_text(int err) {
  char buf[128];
  // The GNU strerror_r: returns either buf or a static string, both safe.
  return ::strerror_r(err, buf, sizeof buf);
}

}  // namespace blkstack
