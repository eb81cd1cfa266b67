// BioSet: a Mempool of Bios with a few inline segments (the kernel's bio_set).
//
// Each layer that allocates bios on the I/O path (splitting in a disk,
// cloning in a stacked target) owns its own BioSet, so that one layer waiting
// for a bio can never starve the layer below it of the bios it needs to
// finish I/O and free them (seed 004's rule, applied per pool).
#pragma once

#include <span>
#include <string>

#include "blkstack/bio.h"
#include "blkstack/mempool.h"

namespace blkstack {

class BioSet {
 public:
  static constexpr unsigned kInlineSegments = 4;

  // `min_nr` bios are kept in reserve; max_nr == 0 means no cap.
  explicit BioSet(std::string name, size_t min_nr = 16, size_t max_nr = 0);

  // A reset bio (refcount 1, no disk) with pool() == this. Never null with
  // Wait::kMayWait. Put it (Bio::put) when done; it returns here.
  Bio* alloc(Wait wait = Wait::kMayWait);
  // Room for up to kInlineSegments segments that live as long as the bio.
  static std::span<Segment> inline_segments(Bio& bio);

  MempoolBase& mempool() { return pool_.base(); }

 private:
  friend class Bio;
  struct PooledBio : Bio {
    Segment inline_segs[kInlineSegments];
  };
  void release(Bio* bio);

  Mempool<PooledBio> pool_;
};

}  // namespace blkstack
