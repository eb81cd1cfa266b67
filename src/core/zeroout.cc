#include "blkstack/zeroout.h"

#include <sys/mman.h>

#include <algorithm>

#include "blkstack/completion.h"
#include "blkstack/disk.h"
#include "blkstack/submit.h"

namespace blkstack {
namespace {

// The shared zero buffer (the kernel's ZERO_PAGE, larger so that a big bio
// needs few segments). In .bss and never written, so every page of it maps
// the kernel's one zero page: zeroes written as data read 4 KiB of cache,
// not 1 MiB. Read-only from its first use: a driver that wrote into a write
// bio's memory faults there instead of corrupting every later zeroing.
constexpr uint32_t kZeroBufSize = 1u << 20;
alignas(4096) std::byte zero_buf[kZeroBufSize];

// One segment table for every zero write: enough kZeroBufSize segments for
// kMaxZeroBytes, the last a sector short so that the whole table sums to no
// more than a bio may hold. A bio takes a prefix and is trimmed to its size.
constexpr uint32_t kZeroSegs = kMaxZeroBytes / kZeroBufSize + 1;

std::span<Segment> zero_segments(uint32_t bytes) {
  static Segment* const table = [] {
    ::mprotect(zero_buf, kZeroBufSize, PROT_READ);  // best effort
    static Segment segs[kZeroSegs];
    for (Segment& s : segs) s = Segment(zero_buf, kZeroBufSize);
    segs[kZeroSegs - 1].len = kZeroBufSize - kSectorSize;
    return segs;
  }();
  const uint32_t n =
      static_cast<uint32_t>((uint64_t{bytes} + kZeroBufSize - 1) / kZeroBufSize);
  return {table, n};
}

void wake(Bio& bio) { static_cast<Completion*>(bio.context())->complete(); }

}  // namespace

ZeroMethod zeroout_method(const Disk& disk, ZeroFlag flags) {
  const QueueLimits& lim = disk.limits();
  const bool keep = has(flags, ZeroFlag::kNoUnmap);
  if (lim.max_write_zeroes_sectors != 0 && (!keep || lim.write_zeroes_nounmap))
    return ZeroMethod::kWriteZeroes;
  if (lim.max_discard_sectors != 0 && lim.discard_zeroes_data && !keep)
    return ZeroMethod::kDiscard;
  return has(flags, ZeroFlag::kNoFallback) ? ZeroMethod::kNone : ZeroMethod::kWriteData;
}

void issue_zeroout(Bio& bio, BlockDevice* bdev, uint64_t sector, uint32_t bytes,
                   ZeroFlag flags, Bio::EndIo end_io, void* context, BioFlag bio_flags) {
  switch (zeroout_method(bdev->disk(), flags)) {
    case ZeroMethod::kWriteZeroes:
      bio.init_nodata(bdev, Op::kWriteZeroes, sector, bytes, end_io, context);
      if (has(flags, ZeroFlag::kNoUnmap)) bio_flags |= BioFlag::kNoUnmap;
      break;
    case ZeroMethod::kDiscard:
      bio.init_nodata(bdev, Op::kDiscard, sector, bytes, end_io, context);
      break;
    case ZeroMethod::kWriteData:
      // A length past the largest bio would wrap; submit_bio refuses it
      // whole rather than zero a part.
      if (bytes > kMaxZeroBytes) {
        bio.init_nodata(bdev, Op::kWrite, sector, 0, end_io, context);
        return bio.complete(Status::kInvalid);
      }
      bio.init(bdev, Op::kWrite, sector, zero_segments(bytes), end_io, context);
      bio.truncate(bytes);
      break;
    case ZeroMethod::kNone:
      bio.init_nodata(bdev, Op::kWriteZeroes, sector, bytes, end_io, context);
      return bio.complete(Status::kNotSupported);
  }
  bio.set_flags(bio_flags);
  submit_bio(bio);
}

void issue_zeroout(Bio& bio, Disk* disk, uint64_t sector, uint32_t bytes, ZeroFlag flags,
                   Bio::EndIo end_io, void* context, BioFlag bio_flags) {
  issue_zeroout(bio, &disk->part0(), sector, bytes, flags, end_io, context, bio_flags);
}

Status zeroout(Disk* disk, uint64_t sector, uint64_t bytes, ZeroFlag flags) {
  return zeroout(&disk->part0(), sector, bytes, flags);
}

Status zeroout(BlockDevice* bdev, uint64_t sector, uint64_t bytes, ZeroFlag flags) {
  // Pieces of whole logical blocks, so only the last can be misaligned.
  const uint32_t lbs = bdev->disk().limits().logical_block_size;
  const uint32_t max_piece = kMaxZeroBytes & ~(lbs - 1);
  while (bytes > 0) {
    const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(bytes, max_piece));
    Completion done;
    Bio bio;
    issue_zeroout(bio, bdev, sector, n, flags, wake, &done);
    done.wait("zeroout");
    if (Status s = bio.status(); !ok(s)) return s;
    sector += n >> kSectorShift;
    bytes -= n;
  }
  return Status::kOk;
}

}  // namespace blkstack
