// I/O priority, packed as Linux packs it (include/uapi/linux/ioprio.h): the
// class in the top 3 bits of a 16-bit value, the level (0 highest .. 7
// lowest) in the low bits. A bio carries one; a request takes it from its
// first bio, and requests of different priorities never merge.
#pragma once

#include <cstdint>

namespace blkstack {

enum class IoprioClass : uint8_t {
  kNone = 0,  // not set: the scheduler treats it as best effort
  kRealtime = 1,
  kBestEffort = 2,
  kIdle = 3,
};

inline constexpr unsigned kIoprioClassShift = 13;  // IOPRIO_CLASS_SHIFT
inline constexpr uint16_t kIoprioLevelMask = 0x7;  // IOPRIO_PRIO_LEVEL_MASK
inline constexpr unsigned kIoprioNrLevels = 8;     // IOPRIO_NR_LEVELS

// IOPRIO_PRIO_VALUE(class, level)
constexpr uint16_t ioprio_value(IoprioClass c, unsigned level) {
  return static_cast<uint16_t>(static_cast<unsigned>(c) << kIoprioClassShift |
                               (level & kIoprioLevelMask));
}
// IOPRIO_PRIO_CLASS(value)
constexpr IoprioClass ioprio_class(uint16_t prio) {
  return static_cast<IoprioClass>(prio >> kIoprioClassShift);
}
// IOPRIO_PRIO_LEVEL(value)
constexpr unsigned ioprio_level(uint16_t prio) { return prio & kIoprioLevelMask; }
// A value a submitter may set: class none (level ignored), or a known class
// with a level 0..7 (ioprio_check_cap without the permission checks).
constexpr bool ioprio_valid(uint16_t prio) {
  return (prio >> kIoprioClassShift) <= 3 &&
         (prio & ~(uint16_t{7} << kIoprioClassShift | kIoprioLevelMask)) == 0;
}

// Who submitted a bio, for schedulers that group I/O by issuer (the
// kernel's io_context): the IoContext it came through, or else the
// submitting thread. An opaque id; 0 is "not set yet".
using IssuerId = uint32_t;
// A new id, never 0 (wraps after 2^32 - 1 ids: ids are for grouping, a
// rare collision only merges two groups).
IssuerId new_issuer_id();
// The calling thread's id (made on its first use).
IssuerId this_thread_issuer();

}  // namespace blkstack
