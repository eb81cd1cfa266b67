// DmIo: one piece of a bio on its way through a target (the kernel's
// dm_target_io): the clone the target sees, and what the core needs when it
// completes. Pooled by the mapped device; never allocated per I/O from the
// heap once the pool is warm.
#pragma once

#include <cstddef>
#include <cstdint>

#include "blkstack/bio.h"
#include "blkstack/driver/target.h"

namespace blkstack {

class MappedDevice;

struct DmIo : Bio {
  // Not `= default`: the pool's value-initialisation would then zero the
  // whole struct, per_io included, on every clone (the members below are
  // set by their initialisers, and per_io is the target's to fill).
  DmIo() {}  // NOLINT(modernize-use-equals-default)

  Bio* orig = nullptr;         // the bio submitted to the mapped device
  Target* ti = nullptr;        // the target this piece went to
  MappedDevice* md = nullptr;  // for the completion
  BioStart saved;              // the clone as handed to map()
  uint16_t bio_nr = 0;         // target_bio_nr()
  bool only = false;           // the one piece of orig: no countdown
  uint8_t home = 0;            // 1 + its slot in the clone cache; 0: pooled
  alignas(16) std::byte per_io[TargetType::kMaxPerIoBytes];
};

}  // namespace blkstack
