#include "blkstack/sg_map.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <string>

#include "blkstack/block_device.h"
#include "blkstack/disk.h"
#include "blkstack/limits.h"
#include "blkstack/submit.h"

namespace blkstack {
namespace {

// A place in the caller's list: entry `idx`, `off` bytes into it.
struct SgPos {
  size_t idx = 0;
  uint32_t off = 0;
};

// Whether the list breaks a rule that cutting cannot fix: an address or
// length off dma_alignment, or a gap at the virtual boundary between two
// entries that are not contiguous (blk_rq_map_user_iov copies then too).
bool breaks_layout(std::span<const Segment> sg, const QueueLimits& lim) {
  const uintptr_t dma = lim.dma_alignment;
  const uintptr_t virt = lim.virt_boundary_mask;
  const std::byte* prev_end = nullptr;
  for (const Segment& e : sg) {
    if (e.len == 0) continue;
    const auto a = reinterpret_cast<uintptr_t>(e.ptr);
    if (((a | e.len) & dma) != 0) return true;
    if (virt != 0 && prev_end != nullptr && e.ptr != prev_end &&
        ((reinterpret_cast<uintptr_t>(prev_end) | a) & virt) != 0)
      return true;
    prev_end = e.ptr + e.len;
  }
  return false;
}

// Bytes from `p` to the next segment boundary.
uint64_t to_boundary(const std::byte* p, uint64_t mask) {
  if (mask == UINT64_MAX) return UINT64_MAX;
  return mask - (reinterpret_cast<uintptr_t>(p) & mask) + 1;
}

// Fills `out` with the segments of the longest I/O that starts at `pos`
// and fits `lim`, at most `max_bytes` (already within max_sectors), and
// returns its length: a multiple of the logical block size, or all that is
// left, or 0 when the layout leaves less than a block (bounce it then).
// Greedy, so each cut falls exactly where the next byte would break a limit
// (then back to a block boundary): entries contiguous in memory share a
// segment while it stays within max_segment_size and its boundary.
uint32_t cut(std::span<const Segment> sg, SgPos pos, uint64_t max_bytes, uint64_t left,
             const QueueLimits& lim, unsigned cap, Segment* out, unsigned* nr) {
  const uint64_t mask = lim.seg_boundary_mask;
  const uintptr_t virt = lim.virt_boundary_mask;
  uint64_t bytes = 0;
  unsigned n = 0;
  while (bytes < max_bytes && pos.idx < sg.size()) {
    const Segment& e = sg[pos.idx];
    if (pos.off == e.len) {
      ++pos.idx;
      pos.off = 0;
      continue;
    }
    std::byte* p = e.ptr + pos.off;
    const uint64_t avail = std::min<uint64_t>(e.len - pos.off, max_bytes - bytes);
    Segment* last = n ? &out[n - 1] : nullptr;
    uint64_t piece;
    if (last && last->ptr + last->len == p &&
        (reinterpret_cast<uintptr_t>(p) & mask) != 0 &&
        last->len < lim.max_segment_size) {
      piece = std::min(
          {avail, uint64_t{lim.max_segment_size - last->len}, to_boundary(p, mask)});
      last->len += static_cast<uint32_t>(piece);
    } else {
      if (n == cap) break;
      if (last && virt != 0 &&
          ((reinterpret_cast<uintptr_t>(last->ptr + last->len) |
            reinterpret_cast<uintptr_t>(p)) &
           virt) != 0)
        break;
      piece = std::min({avail, uint64_t{lim.max_segment_size}, to_boundary(p, mask)});
      out[n++] = Segment(p, static_cast<uint32_t>(piece));
    }
    bytes += piece;
    pos.off += static_cast<uint32_t>(piece);
  }
  const uint64_t fit =
      bytes == left ? bytes : bytes / lim.logical_block_size * lim.logical_block_size;
  // Back to the block boundary: drop or shorten the segments past it.
  uint64_t kept = 0;
  unsigned i = 0;
  for (; i < n && kept < fit; ++i) {
    if (kept + out[i].len > fit) out[i].len = static_cast<uint32_t>(fit - kept);
    kept += out[i].len;
  }
  *nr = i;
  return static_cast<uint32_t>(fit);
}

void advance(std::span<const Segment> sg, SgPos& pos, uint64_t bytes) {
  while (bytes > 0) {
    const uint64_t n = std::min<uint64_t>(bytes, sg[pos.idx].len - pos.off);
    pos.off += static_cast<uint32_t>(n);
    bytes -= n;
    if (pos.off == sg[pos.idx].len) {
      ++pos.idx;
      pos.off = 0;
    }
  }
}

// Copies `bytes` between the list (from `pos`) and a flat buffer.
template <bool kToList>
void copy(std::span<const Segment> sg, SgPos pos, std::byte* buf, uint64_t bytes) {
  while (bytes > 0) {
    const Segment& e = sg[pos.idx];
    const uint64_t n = std::min<uint64_t>(bytes, e.len - pos.off);
    if (n == 0) {  // an empty entry, whose pointer may be null
      ++pos.idx;
      pos.off = 0;
      continue;
    }
    if (kToList)
      std::memcpy(e.ptr + pos.off, buf, n);
    else
      std::memcpy(buf, e.ptr + pos.off, n);
    buf += n;
    bytes -= n;
    ++pos.idx;
    pos.off = 0;
  }
}

}  // namespace

// One submit() call in flight: the caller's callback, the first error, and
// a count of its bios plus one for the submitter while it is still cutting.
struct SgMapper::Job {
  SgMapper* mapper;
  Done done;
  void* context;
  Op op;
  std::span<const Segment> sg;
  std::atomic<uint32_t> remaining{1};
  std::atomic<Status> status{Status::kOk};

  void set_error(Status s) {
    Status ok = Status::kOk;
    if (s != Status::kOk)
      status.compare_exchange_strong(ok, s, std::memory_order_acq_rel);
  }
};

// A bounce buffer's header, after its kBounceBytes of page-aligned data:
// where in the caller's list the bounced bytes go on a read.
struct SgMapper::Bounce {
  Job* job;
  SgPos pos;
  uint32_t bytes;

  std::byte* data() { return reinterpret_cast<std::byte*>(this) - kBounceBytes; }
  static Bounce* of(void* elem) {
    return reinterpret_cast<Bounce*>(static_cast<std::byte*>(elem) + kBounceBytes);
  }
};

SgMapper::SgMapper(BlockDevice& bdev) : SgMapper(bdev, Options{}) {}

SgMapper::SgMapper(BlockDevice& bdev, const Options& o)
    : bdev_(bdev),
      max_segments_(std::min<unsigned>(bdev.disk().limits().max_segments, kMaxSegments)),
      bios_("sg-map " + bdev.name(), o.bios, o.max_bios, max_segments_),
      bounce_(std::make_unique<MempoolBase>("sg-bounce " + bdev.name(),
                                            kBounceBytes + sizeof(Bounce), 4096,
                                            o.bounce_buffers, o.max_bounce_buffers)),
      jobs_(std::make_unique<MempoolBase>("sg-job " + bdev.name(), sizeof(Job),
                                          alignof(Job), o.jobs, 0)) {}

SgMapper::~SgMapper() = default;

void SgMapper::submit(Op op, uint64_t sector, std::span<const Segment> sg, Done done,
                      void* context, BioFlag flags) {
  // A copy: a limit changed meanwhile (queue/max_sectors_kb) takes effect
  // from the next call, never halfway through this one.
  const QueueLimits lim = bdev_.disk().limits();
  const uint32_t lbs = lim.logical_block_size;
  uint64_t left = 0;
  for (const Segment& e : sg) left += e.len;
  if (!op_has_data(op) || left % lbs != 0 || ((sector << kSectorShift) % lbs) != 0) {
    done(context, Status::kInvalid);
    return;
  }
  if (left == 0) {
    done(context, Status::kOk);
    return;
  }
  bool bounce = breaks_layout(sg, lim);
  Job* job = new (jobs_->alloc_raw(Wait::kMayWait)) Job{this, done, context, op, sg};
  const unsigned cap = std::min<unsigned>(lim.max_segments, max_segments_);
  const uint64_t max_io = uint64_t{lim.max_io_sectors()} << kSectorShift;
  SgPos pos;
  while (left > 0) {
    // The bounce buffer first, then the bio: a thread waiting for a bio may
    // hold a buffer, but one waiting for a buffer holds no bio.
    Bounce* bb = nullptr;
    if (bounce) bb = Bounce::of(bounce_->alloc_raw(Wait::kMayWait));
    Bio* bio = bios_.alloc(Wait::kMayWait);
    std::span<Segment> table = BioSet::inline_segments(*bio);
    unsigned n = 0;
    uint32_t fit;
    if (bb == nullptr) {
      fit = cut(sg, pos, std::min(left, max_io), left, lim, cap, table.data(), &n);
      if (fit == 0) {
        // Too short entries: less than a block fits. Bounce from here on;
        // the bio goes back first (see above).
        bio->put();
        bounce = true;
        continue;
      }
    } else {
      const Segment whole(
          bb->data(),
          static_cast<uint32_t>(std::min<uint64_t>({left, max_io, kBounceBytes})));
      fit = cut({&whole, 1}, SgPos{}, whole.len, left, lim, cap, table.data(), &n);
      if (fit == 0) {
        // A page-aligned buffer holds a block under any limits check()
        // accepts; never spin on ones it did not (nothing would advance).
        bio->put();
        bounce_->free_raw(bb->data());
        job->set_error(Status::kInvalid);
        break;
      }
      *bb = Bounce{job, pos, fit};
      if (op == Op::kWrite) copy<false>(sg, pos, bb->data(), fit);
      bounce_->disown(bb->data());
      stat_bounced_.fetch_add(1, std::memory_order_relaxed);
    }
    bio->init(&bdev_, op, sector, table.first(n), bb ? &end_bounced : &end_direct,
              bb ? static_cast<void*>(bb) : job);
    bio->set_flags(flags);
    job->remaining.fetch_add(1, std::memory_order_relaxed);
    stat_bios_.fetch_add(1, std::memory_order_relaxed);
    advance(sg, pos, fit);
    left -= fit;
    sector += fit >> kSectorShift;
    submit_bio(*bio);  // on its way back before the next allocation
  }
  jobs_->disown(job);
  put_job(*job);
}

void SgMapper::put_job(Job& job) {
  if (job.remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  const Done done = job.done;
  void* const context = job.context;
  const Status status = job.status.load(std::memory_order_acquire);
  SgMapper* mapper = job.mapper;
  job.~Job();
  mapper->jobs_->free_raw(&job);  // before the callback, which may map again
  done(context, status);
}

void SgMapper::end_direct(Bio& bio) {
  Job& job = *static_cast<Job*>(bio.context());
  job.set_error(bio.status());
  bio.put();
  put_job(job);
}

void SgMapper::end_bounced(Bio& bio) {
  Bounce& bb = *static_cast<Bounce*>(bio.context());
  Job& job = *bb.job;
  const Status s = bio.status();
  if (s == Status::kOk && job.op == Op::kRead)
    copy<true>(job.sg, bb.pos, bb.data(), bb.bytes);
  job.set_error(s);
  bio.put();
  job.mapper->bounce_->free_raw(bb.data());
  put_job(job);
}

}  // namespace blkstack
