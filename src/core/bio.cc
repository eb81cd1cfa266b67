#include "blkstack/bio.h"

#include <cstring>
#include <string>

#include "blkstack/bioset.h"
#include "blkstack/debug/submit_context.h"
#include "blkstack/disk.h"
#include "core/bio_gate.h"

namespace blkstack {

std::string_view op_name(Op op) {
  switch (op) {
    case Op::kRead:
      return "read";
    case Op::kWrite:
      return "write";
    case Op::kFlush:
      return "flush";
    case Op::kDiscard:
      return "discard";
    case Op::kWriteZeroes:
      return "write-zeroes";
  }
  return "unknown";
}

// Bios are hot: priority and issuer live in padding, not in new bytes.
// The block device and the partition a bio is accounted on took it from
// 128 to 144 bytes (bench/core-null.sh measured no change); anything more
// needs a measurement, and folding acct_disk and acct_part into one
// BlockDevice pointer is the next 8 bytes to win back.
static_assert(sizeof(Bio) <= 144,
              "Bio grew: measure bench/core-null.sh before raising this");

// What a bio's trip through the layers leaves behind: cleared before it is
// submitted, fresh (reset) or again (restart).
inline void Bio::clear_progress() {
  status_.store(Status::kOk, std::memory_order_relaxed);
  completed_.store(false, std::memory_order_relaxed);
  remaining_.store(1, std::memory_order_relaxed);
  chained_.store(false, std::memory_order_relaxed);
  gate_counted_ = false;
  next = nullptr;
  start_ns = 0;
  acct_disk = nullptr;
  acct_part = nullptr;
  acct_sectors = 0;
  driver_data = 0;
}

void Bio::reset(BlockDevice* bdev, Disk* disk, Op op, uint64_t sector, EndIo end_io,
                void* context) {
  iter_ = BioIter{sector, 0, 0, 0};
  segs_ = nullptr;
  nr_segs_ = 0;
  op_ = op;
  flags_ = BioFlag::kNone;
  ioprio_ = 0;
  issuer_ = 0;
  refs_.store(1, std::memory_order_relaxed);
  bdev_ = bdev;
  disk_ = disk;
  end_io_ = end_io;
  context_ = context;
  clear_progress();
}

void Bio::restart(const BioStart& s) {
  // Segments, priority, issuer, references and callback stay the owner's.
  iter_ = s.iter;
  flags_ = s.flags;
  bdev_ = s.bdev;
  disk_ = s.bdev ? &s.bdev->disk() : nullptr;
  clear_progress();
}

void Bio::init(Disk* disk, Op op, uint64_t sector, std::span<Segment> segs, EndIo end_io,
               void* context) {
  // No load from the disk: its part0 is an address inside it.
  reset(disk ? &disk->part0() : nullptr, disk, op, sector, end_io, context);
  set_segments(segs);
}

void Bio::init_nodata(Disk* disk, Op op, uint64_t sector, uint32_t bytes, EndIo end_io,
                      void* context) {
  reset(disk ? &disk->part0() : nullptr, disk, op, sector, end_io, context);
  iter_.size = bytes;
}

void Bio::init(BlockDevice* bdev, Op op, uint64_t sector, std::span<Segment> segs,
               EndIo end_io, void* context) {
  reset(bdev, bdev ? &bdev->disk() : nullptr, op, sector, end_io, context);
  set_segments(segs);
}

void Bio::set_segments(std::span<Segment> segs) {
  segs_ = segs.data();
  nr_segs_ = static_cast<uint16_t>(segs.size());
  uint64_t total = 0;
  for (const Segment& s : segs) total += s.len;
  if (segs.size() > UINT16_MAX || total > UINT32_MAX) {
    debug::fatal("Bio::init: more than 65535 segments or 4 GiB in one bio");
  }
  iter_.size = static_cast<uint32_t>(total);
}

void Bio::init_nodata(BlockDevice* bdev, Op op, uint64_t sector, uint32_t bytes,
                      EndIo end_io, void* context) {
  reset(bdev, bdev ? &bdev->disk() : nullptr, op, sector, end_io, context);
  iter_.size = bytes;
}

void Bio::set_dev(BlockDevice& bdev, uint64_t sector) {
  // Done here as far as the device it leaves is concerned: its in-flight
  // count (and its bio depth) drops, and submit_bio() starts the new one's.
  if (gate_counted_) [[unlikely]]
    BioGate::release(*this);
  if (acct_disk) acct_disk->end_io(*this);
  bdev_ = &bdev;
  disk_ = &bdev.disk();
  iter_.sector = sector;
}

void Bio::set_disk(Disk* disk) { set_dev(disk->part0(), iter_.sector); }

unsigned Bio::count_segments() const {
  unsigned n = 0;
  for_each_chunk([&](const BioChunk&) { ++n; });
  return n;
}

void Bio::advance(uint32_t bytes) {
  iter_.sector += bytes >> kSectorShift;
  iter_.size -= bytes;
  if (!op_has_data(op_)) return;
  while (bytes > 0) {
    uint32_t in_seg = segs_[iter_.idx].len - iter_.done;
    if (bytes < in_seg) {
      iter_.done += bytes;
      return;
    }
    bytes -= in_seg;
    ++iter_.idx;
    iter_.done = 0;
  }
}

void Bio::copy_to(std::byte* dst, uint32_t bytes) const {
  for_each_chunk([&](const BioChunk& c) {
    if (bytes == 0) return;
    uint32_t n = c.len < bytes ? c.len : bytes;
    std::memcpy(dst, c.ptr, n);
    dst += n;
    bytes -= n;
  });
}

void Bio::copy_from(const std::byte* src, uint32_t bytes) const {
  for_each_chunk([&](const BioChunk& c) {
    if (bytes == 0) return;
    uint32_t n = c.len < bytes ? c.len : bytes;
    std::memcpy(c.ptr, src, n);
    src += n;
    bytes -= n;
  });
}

void Bio::zero_fill() const {
  for_each_chunk([](const BioChunk& c) {
    if (c.ptr) std::memset(c.ptr, 0, c.len);
  });
}

void Bio::set_status(Status s) {
  if (s == Status::kOk) return;
  Status expected = Status::kOk;
  status_.compare_exchange_strong(expected, s, std::memory_order_acq_rel);
}

Bio* Bio::finish_one() {
  // Only a bio with chained children needs the shared countdown (as the
  // kernel's BIO_CHAIN flag): a plain bio saves the locked instruction.
  if (chained_.load(std::memory_order_relaxed)) {
    uint32_t before = remaining_.fetch_sub(1, std::memory_order_acq_rel);
    if (before != 1) {
      if (before == 0) fatal_completed_twice();
      return nullptr;  // chained children still outstanding
    }
  }
  if (completed_.exchange(true, std::memory_order_acq_rel)) fatal_completed_twice();
  // Its slot first, while the accounting still holds the disk.
  if (gate_counted_) [[unlikely]]
    BioGate::release(*this);
  if (acct_disk) acct_disk->end_io(*this);
  if (end_io_ == &Bio::chain_endio) {
    Bio* parent = static_cast<Bio*>(context_);
    parent->set_status(status());
    put();
    return parent;  // completed by the caller's loop: no recursion
  }
  if (end_io_) end_io_(*this);
  return nullptr;
}

void Bio::fatal_completed_twice() const {
  debug::fatal(std::string("bio (") + std::string(op_name(op_)) + " at sector " +
               std::to_string(iter_.sector) +
               ") completed more than once; a bio must be ended exactly once");
}

void Bio::endio() {
  Bio* b = this;
  do {
    b = b->finish_one();
  } while (b != nullptr);
}

void Bio::chain_endio(Bio&) {
  // Never called: finish_one() recognises this callback and walks to the
  // parent iteratively. It exists so that a chained bio has a unique marker.
}

void Bio::chain(Bio& child, Bio& parent) {
  if (child.end_io_ != nullptr) {
    debug::fatal("Bio::chain: the child bio already has a completion callback");
  }
  child.end_io_ = &Bio::chain_endio;
  child.context_ = &parent;
  parent.chained_.store(true, std::memory_order_relaxed);
  parent.remaining_.fetch_add(1, std::memory_order_relaxed);
}

void Bio::clone_into(Bio& c) const {
  c.reset(bdev_, disk_, op_, iter_.sector, nullptr, nullptr);
  c.iter_ = iter_;
  c.segs_ = segs_;
  c.nr_segs_ = nr_segs_;
  c.flags_ = flags_;
  c.ioprio_ = ioprio_;
  c.issuer_ = issuer_;
}

Bio* Bio::clone(BioSet& pool, bool may_wait) {
  Bio* c = pool.alloc(may_wait ? Wait::kMayWait : Wait::kNoWait);
  if (!c) return nullptr;
  clone_into(*c);
  return c;
}

namespace {
// The split point in bytes; aborts if it is not inside the bio.
uint32_t split_bytes(uint32_t sectors, uint32_t size) {
  // In 64 bits: 2^23 sectors or more must not wrap to a small byte count.
  const uint64_t bytes64 = uint64_t{sectors} << kSectorShift;
  if (sectors == 0 || bytes64 >= size) {
    debug::fatal("Bio::split: split point outside the bio");
  }
  return static_cast<uint32_t>(bytes64);
}
}  // namespace

Bio* Bio::split(uint32_t sectors, BioSet& pool, bool may_wait) {
  split_bytes(sectors, iter_.size);  // before allocating
  Bio* front = pool.alloc(may_wait ? Wait::kMayWait : Wait::kNoWait);
  if (!front) return nullptr;
  split_into(*front, sectors);
  return front;
}

void Bio::split_into(Bio& front, uint32_t sectors) {
  const uint32_t bytes = split_bytes(sectors, iter_.size);
  clone_into(front);
  front.iter_.size = bytes;
  // A PREFLUSH applies before the first piece only; FUA to every piece.
  clear_flags(BioFlag::kPreflush);
  advance(bytes);
  chain(front, *this);
}

void Bio::put() {
  if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1 && pool_) pool_->release(this);
}

}  // namespace blkstack
