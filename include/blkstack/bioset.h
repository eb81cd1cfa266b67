// BioSet: a Mempool of Bios with a few inline segments (the kernel's bio_set).
//
// Each layer that allocates bios on the I/O path (splitting in a disk,
// cloning in a stacked target) owns its own BioSet, so that one layer waiting
// for a bio can never starve the layer below it of the bios it needs to
// finish I/O and free them (seed 004's rule, applied per pool).
//
// On the I/O path nothing waits for a bio (DESIGN.md invariants 2 and 4):
// a bio that needs one from an exhausted set parks on the set instead
// (park()), and goes on through submit_bio() when a bio of the set comes
// back, with that bio handed to it (alloc_for_split()). Parked bios go on
// in the order they parked; new requests for the set queue behind them.
#pragma once

#include <atomic>
#include <mutex>
#include <span>
#include <string>

#include "blkstack/bio.h"
#include "blkstack/mempool.h"

namespace blkstack {

class BioSet {
 public:
  static constexpr unsigned kInlineSegments = 4;

  // `min_nr` bios are kept in reserve; max_nr == 0 means no cap. Each bio
  // carries `inline_segments` segments of its own (the kernel's
  // bvec_pool): a set whose bios map whole scatter-gather lists (sg_map.h)
  // asks for a queue's max_segments.
  explicit BioSet(std::string name, size_t min_nr = 16, size_t max_nr = 0,
                  unsigned inline_segments = kInlineSegments);

  // A reset bio (refcount 1, no disk) with pool() == this. Never null with
  // Wait::kMayWait. Put it (Bio::put) when done; it returns here.
  Bio* alloc(Wait wait = Wait::kMayWait);
  // Room for the set's inline segments (kInlineSegments unless the set was
  // made with more) that live as long as the bio.
  static std::span<Segment> inline_segments(Bio& bio);

  // --- the I/O path: never waits ------------------------------------------
  // A reset bio for splitting `bio`: the one handed to it if it was parked
  // here, otherwise a new one unless bios parked before it wait for one.
  // Null when there is none: then park(bio).
  Bio* alloc_for_split(const Bio& bio);
  // Parks `bio` until a bio of this set comes back. Then, on the thread
  // that freed it (or this one, if one came back meanwhile), that bio is
  // handed to `bio` and `bio` is submitted again (submit_bio()).
  void park(Bio& bio);
  // Takes back a parked bio none of which was issued (cancel).
  bool unpark(Bio& bio);
  // Gives back what was handed to `bio` if it ends before it splits (it
  // failed its checks on the way back).
  void drop_handed(const Bio& bio);

  MempoolBase& mempool() { return pool_; }

 private:
  friend class Bio;
  // Each element is a Bio followed by its inline segment table.
  static_assert(sizeof(Bio) % alignof(Segment) == 0);
  void release(Bio* bio);
  // The bio handed to `bio`, if any, now the caller's. Under park_lock_.
  Bio* take_handed(const Bio& bio);
  // Hands free bios to parked bios, oldest first, and resubmits those.
  void resume_parked();

  unsigned inline_nr_;
  MempoolBase pool_;
  std::mutex park_lock_;
  BioList parked_;  // waiting for a bio of this set, oldest first
  BioList handed_;  // bios handed to resumed ones; context() names the owner
  // parked_ and handed_ together: nonzero sends the fast paths to the lock.
  std::atomic<uint32_t> waiting_{0};
};

}  // namespace blkstack
