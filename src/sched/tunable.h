// Parsing the value written to a scheduler's iosched/ file: a whole number
// in a range, refused with the range in the message (as the kernel's
// STORE_INT helpers refuse with -EINVAL, but saying why).
#pragma once

#include <cstdint>
#include <string_view>

namespace blkstack {

// `value` as a number from `min` to `max`; throws Error naming the
// scheduler, the tunable and the range otherwise.
int64_t parse_tunable(std::string_view sched, std::string_view name,
                      std::string_view value, int64_t min, int64_t max);

}  // namespace blkstack
