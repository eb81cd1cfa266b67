// The servers' log: one line per event on stderr, prefixed "blkstack serve: ".
// Tests and the fuzz target turn it off.
#pragma once

#include <string>
#include <string_view>

namespace blkstack {

void serve_log(std::string_view line);
void set_serve_log_enabled(bool on);

// strerror(err) that any thread may call: strerror() may return a buffer
// shared by all threads, and the servers' loops and workers log errors.
std::string error_text(int err);

}  // namespace blkstack
