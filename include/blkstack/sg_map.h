// SgMapper: a caller's scatter-gather list onto bios that fit a device
// (the kernel's blk_rq_map_user_iov and bio_map_user_iov, with the
// cutting of blk_rq_map_sg, in one step).
//
// submit() walks the list once and cuts it into bios, each as large as the
// device's limits allow (QueueLimits: max_segments, max_segment_size,
// seg_boundary_mask, max_sectors / max_hw_sectors, and the logical block
// size at every cut), merging entries that are contiguous in memory into
// one segment. Each bio comes from the mapper's own BioSet and is submitted
// before the next is allocated, so the mapper never waits on its pool while
// it holds an element of it (seed 004's rule; the debug build checks it).
// submit_bio() then has nothing left to split.
//
// Memory that breaks the layout rules (an address or length off
// dma_alignment, a gap at virt_boundary_mask between entries, or entries so
// short that max_segments of them hold less than a logical block) goes
// through bounce buffers from a second pool of the mapper's: copied in
// before a write, copied out when a read completes. One bounce buffer per
// bio, allocated before that bio: while waiting for a bio the mapper may
// hold a buffer, never the other way round, so the two pools cannot wait on
// each other.
//
// The caller's callback runs once, after the last bio, with the first
// error any bio had. The list and the memory it names must stay valid until
// then. submit() may wait for pool elements (as the kernel's map calls
// sleep): call it from a thread that may block, never from inside a
// driver's submit path or a completion.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "blkstack/bio.h"
#include "blkstack/bioset.h"
#include "blkstack/mempool.h"

namespace blkstack {

class BlockDevice;

class SgMapper {
 public:
  // Bytes a bounce buffer holds: the most a bounced bio carries.
  static constexpr uint32_t kBounceBytes = 64 * 1024;
  // The most segments a mapped bio carries (the kernel's BIO_MAX_VECS),
  // whatever the disk allows: a bio-based disk (a mapped device) allows
  // 65535, and a table that size in every pooled bio would be 1 MiB each.
  static constexpr unsigned kMaxSegments = 256;

  struct Options {
    size_t bios = 16;     // kept in reserve
    size_t max_bios = 0;  // 0: grows on demand
    size_t bounce_buffers = 2;
    size_t max_bounce_buffers = 0;
    size_t jobs = 16;  // submit() calls in flight kept in reserve
  };
  using Done = void (*)(void* context, Status status);

  // Maps onto `bdev` (a disk or a partition), whose disk's limits are read
  // at each submit(): max_segments is fixed for a disk and sizes the bios.
  explicit SgMapper(BlockDevice& bdev);
  SgMapper(BlockDevice& bdev, const Options& options);
  // The I/O must have completed (callbacks run) before this.
  ~SgMapper();
  SgMapper(const SgMapper&) = delete;
  SgMapper& operator=(const SgMapper&) = delete;

  // Reads or writes sg's bytes at `sector`; their total must be a multiple
  // of the logical block size and `sector` a multiple of it. Flags go on
  // every bio (kFua: each piece is durable when the callback runs). Other
  // ops, or a misaligned range, complete with Status::kInvalid.
  void submit(Op op, uint64_t sector, std::span<const Segment> sg, Done done,
              void* context, BioFlag flags = BioFlag::kNone);

  // The pools, for back-pressure tests and for telling whose a bio is.
  BioSet& bioset() { return bios_; }
  MempoolBase& bounce_pool() { return *bounce_; }
  // Bios submitted, and those of them that went through a bounce buffer.
  uint64_t bios_submitted() const { return stat_bios_.load(std::memory_order_relaxed); }
  uint64_t bios_bounced() const { return stat_bounced_.load(std::memory_order_relaxed); }

 private:
  struct Job;
  struct Bounce;
  static void end_direct(Bio& bio);
  static void end_bounced(Bio& bio);
  static void put_job(Job& job);

  BlockDevice& bdev_;
  unsigned max_segments_;  // the disk's (at most kMaxSegments): each bio's table
  BioSet bios_;
  std::unique_ptr<MempoolBase> bounce_;
  std::unique_ptr<MempoolBase> jobs_;
  std::atomic<uint64_t> stat_bios_{0};
  std::atomic<uint64_t> stat_bounced_{0};
};

}  // namespace blkstack
