#include "blkstack/limits.h"

#include <algorithm>

#include "blkstack/bioset.h"

namespace blkstack {
namespace {

bool power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

uint64_t round_down(uint64_t v, uint64_t to) { return v / to * to; }

// Reads and writes: walk the memory, counting hardware segments (a segment
// longer than max_segment_size counts as several).
uint32_t data_bytes_within(const Bio& bio, const QueueLimits& lim) {
  const uint64_t max_io_bytes = uint64_t{lim.max_io_sectors()} << kSectorShift;
  // Fast path: small enough that no segment can exceed max_segment_size and
  // few enough segments left to fit, whatever their layout.
  const size_t segs_left = bio.segments().size() - bio.iter().idx;
  if (bio.size() <= max_io_bytes && bio.size() <= lim.max_segment_size &&
      segs_left <= lim.max_segments)
    return bio.size();
  const uint64_t max_bytes = std::min<uint64_t>(max_io_bytes, bio.size());
  uint64_t bytes = 0;
  unsigned segs = 0;
  bool full = false;
  bio.for_each_chunk([&](const BioChunk& c) {
    uint32_t left = c.len;
    while (!full && left > 0) {
      if (segs == lim.max_segments) {
        full = true;
        break;
      }
      uint64_t piece = std::min<uint64_t>(left, lim.max_segment_size);
      if (bytes + piece >= max_bytes) {
        bytes = max_bytes;
        full = true;
        break;
      }
      ++segs;
      bytes += piece;
      left -= static_cast<uint32_t>(piece);
    }
  });
  if (bytes >= bio.size()) return bio.size();
  return static_cast<uint32_t>(round_down(bytes, lim.logical_block_size));
}

// Discard and write-zeroes: a sector count, with discards ending on a
// granularity boundary when they are split.
uint32_t range_bytes_within(const Bio& bio, const QueueLimits& lim,
                            uint32_t max_sectors) {
  uint64_t max_bytes = uint64_t{max_sectors} << kSectorShift;
  if (bio.size() <= max_bytes) return bio.size();
  max_bytes = round_down(max_bytes, lim.logical_block_size);
  if (bio.op() == Op::kDiscard && lim.discard_granularity > lim.logical_block_size) {
    uint64_t start = bio.sector() << kSectorShift;
    uint64_t end = round_down(start + max_bytes, lim.discard_granularity);
    if (end > start) max_bytes = end - start;
  }
  return static_cast<uint32_t>(max_bytes);
}

}  // namespace

std::string QueueLimits::check() const {
  if (!power_of_two(logical_block_size) || logical_block_size < 512 ||
      logical_block_size > 65536)
    return "logical_block_size must be a power of two from 512 to 65536";
  if (!power_of_two(physical_block_size) || physical_block_size < logical_block_size)
    return "physical_block_size must be a power of two >= logical_block_size";
  if (max_io_sectors() < (logical_block_size >> kSectorShift))
    return "max_sectors must hold at least one logical block";
  if (max_segments == 0) return "max_segments must be at least 1";
  if (max_segment_size < 512) return "max_segment_size must be at least 512";
  // Otherwise no read or write of even one block could ever be issued.
  if (uint64_t{max_segments} * max_segment_size < logical_block_size)
    return "max_segments * max_segment_size must hold at least one logical block";
  if (optimal_io_size % logical_block_size != 0)
    return "optimal_io_size must be a multiple of logical_block_size";
  if (discard_granularity != 0 &&
      (!power_of_two(discard_granularity) || discard_granularity < logical_block_size))
    return "discard_granularity must be a power of two >= logical_block_size";
  if (max_discard_sectors != 0 &&
      max_discard_sectors < (logical_block_size >> kSectorShift))
    return "max_discard_sectors must hold at least one logical block";
  if (max_write_zeroes_sectors != 0 &&
      max_write_zeroes_sectors < (logical_block_size >> kSectorShift))
    return "max_write_zeroes_sectors must hold at least one logical block";
  const bool boundary_pow2 =
      seg_boundary_mask == UINT64_MAX || power_of_two(seg_boundary_mask + 1);
  if (seg_boundary_mask < 4095 || !boundary_pow2)
    return "seg_boundary_mask must be 2^n - 1 and at least 4095";
  if (dma_alignment > 4095 || !power_of_two(uint64_t{dma_alignment} + 1))
    return "dma_alignment must be 2^n - 1 and at most 4095";
  if (virt_boundary_mask > 4095 ||
      (virt_boundary_mask != 0 && !power_of_two(uint64_t{virt_boundary_mask} + 1)))
    return "virt_boundary_mask must be 0 or 2^n - 1, at most 4095";
  // Cuts for the segment size then never leave a gap.
  if (virt_boundary_mask != 0 && max_segment_size % (virt_boundary_mask + 1) != 0)
    return "max_segment_size must be a multiple of virt_boundary_mask + 1";
  // A page-aligned buffer must hold one logical block in max_segments.
  if (uint64_t{max_segments} *
          std::min<uint64_t>(max_segment_size, seg_boundary_mask == UINT64_MAX
                                                   ? UINT64_MAX
                                                   : seg_boundary_mask + 1) <
      logical_block_size)
    return "max_segments segments within seg_boundary_mask must hold a logical block";
  return {};
}

uint32_t max_bytes_within_limits(const Bio& bio, const QueueLimits& lim) {
  switch (bio.op()) {
    case Op::kRead:
    case Op::kWrite:
      return data_bytes_within(bio, lim);
    case Op::kDiscard:
      return range_bytes_within(bio, lim, lim.max_discard_sectors);
    case Op::kWriteZeroes:
      return range_bytes_within(bio, lim, lim.max_write_zeroes_sectors);
    case Op::kFlush:
      return bio.size();
  }
  return bio.size();
}

Bio* split_to_limits(Bio& bio, const QueueLimits& lim, BioSet& pool, Status* error) {
  uint32_t fit = max_bytes_within_limits(bio, lim);
  if (fit == bio.size()) return &bio;
  if (fit == 0) {
    *error = Status::kInvalid;
    return nullptr;
  }
  Bio* front = pool.alloc_for_split(bio);
  if (front == nullptr) {
    *error = Status::kResource;
    return nullptr;
  }
  bio.split_into(*front, fit >> kSectorShift);
  return front;
}

}  // namespace blkstack
