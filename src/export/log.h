// The servers' log: one line per event on stderr, prefixed "blkstack serve: ".
// Tests and the fuzz target turn it off.
#pragma once

#include <string_view>

namespace blkstack {

void serve_log(std::string_view line);
void set_serve_log_enabled(bool on);

}  // namespace blkstack
