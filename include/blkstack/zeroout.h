// Zeroing a range of a disk, the one way every user does it (the kernel's
// blk-lib: blkdev_issue_zeroout).
//
// A device may zero natively (Op::kWriteZeroes), by discarding when its
// discard guarantees zeroes, or not at all; then zeroes are written as data.
// issue_zeroout() picks the cheapest way the disk's limits and the caller's
// flags allow and issues it as one bio the caller owns: no allocation, and
// the data form writes from one shared, read-only zero buffer through one
// shared segment table. submit_bio() splits the bio to the disk's limits
// (max_write_zeroes_sectors, max_discard_sectors, max_sectors) as for any
// other bio.
#pragma once

#include <cstdint>

#include "blkstack/bio.h"
#include "blkstack/status.h"

namespace blkstack {

class Disk;

// What the caller allows (the kernel's BLKDEV_ZERO_* flags).
enum class ZeroFlag : uint8_t {
  kNone = 0,
  // The range must stay allocated (BLKDEV_ZERO_NOUNMAP): no discard, and
  // write-zeroes only on a disk that honours BioFlag::kNoUnmap
  // (QueueLimits::write_zeroes_nounmap); otherwise zeroes go as data.
  kNoUnmap = 1 << 0,
  // Only a way faster than writing zeroes (BLKDEV_ZERO_NOFALLBACK): where
  // data would be the only way, fail with Status::kNotSupported instead.
  kNoFallback = 1 << 1,
};
constexpr ZeroFlag operator|(ZeroFlag a, ZeroFlag b) {
  return static_cast<ZeroFlag>(static_cast<uint8_t>(a) | static_cast<uint8_t>(b));
}
constexpr bool has(ZeroFlag set, ZeroFlag f) {
  return (static_cast<uint8_t>(set) & static_cast<uint8_t>(f)) != 0;
}

// How a range is zeroed.
enum class ZeroMethod : uint8_t {
  kWriteZeroes,  // Op::kWriteZeroes (with BioFlag::kNoUnmap for kNoUnmap)
  kDiscard,      // Op::kDiscard on a disk whose discard zeroes
  kWriteData,    // Op::kWrite from the shared zero buffer
  kNone,         // kNoFallback and only data would do: kNotSupported
};

// The method issue_zeroout() uses on `disk` with `flags`, from its limits.
ZeroMethod zeroout_method(const Disk& disk, ZeroFlag flags);

// The largest range one zeroing bio takes: a bio's size is 32 bits
// (4 GiB less a sector); whole logical blocks are a multiple of 512.
inline constexpr uint32_t kMaxZeroBytes = ~uint32_t{0} & ~(kSectorSize - 1);

// Zeroes `bytes` from `sector` on `disk` with one bio, `bio`, which the
// caller owns (a fresh or finished one) and keeps until `end_io(bio)` has
// run; the outcome is bio.status(). Asynchronous: returns without waiting
// (from a submit path too), and `end_io` runs exactly once, maybe before
// this returns. `bio_flags` (kFua, kSync...) go on the bio. Fails the bio
// with kNotSupported under kNoFallback (see ZeroMethod::kNone); bad ranges
// fail as submit_bio() fails them. `bytes` is at most kMaxZeroBytes.
// `bdev` may be a partition (its disk's limits choose the method).
void issue_zeroout(Bio& bio, BlockDevice* bdev, uint64_t sector, uint32_t bytes,
                   ZeroFlag flags, Bio::EndIo end_io, void* context,
                   BioFlag bio_flags = BioFlag::kNone);
void issue_zeroout(Bio& bio, Disk* disk, uint64_t sector, uint32_t bytes, ZeroFlag flags,
                   Bio::EndIo end_io, void* context, BioFlag bio_flags = BioFlag::kNone);

// Zeroes any length, one bio after another, and waits for them
// (blkdev_issue_zeroout). Not from a submit path (it waits). Stops at the
// first error and returns it.
Status zeroout(BlockDevice* bdev, uint64_t sector, uint64_t bytes, ZeroFlag flags);
Status zeroout(Disk* disk, uint64_t sector, uint64_t bytes, ZeroFlag flags);

}  // namespace blkstack
