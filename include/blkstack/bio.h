// Bio: one block I/O in flight (the kernel's struct bio).
//
// A Bio names an operation, a start sector on a BlockDevice (a whole Disk or
// a partition of one), and the memory it moves
// as a table of Segments (the kernel's bio_vec). Its position is kept in a
// BioIter (bvec_iter), so a Bio can be split or advanced without copying
// either the data or the segment table: a split clone points at the same
// table with its own iterator.
//
// Completion, exactly once (DESIGN.md invariant 1):
//  - Whoever finishes the I/O calls endio() (or complete(status)). The
//    callback set by the owner runs once, when the last chained child and the
//    bio itself are done ("remaining" reaches zero). A second call to the
//    callback aborts with a message: it is always a bug.
//  - chain(child, parent) makes parent wait for child; the first error of any
//    child is kept in the parent.
//  - Reference counting (get/put) decides when a pooled Bio returns to its
//    BioSet. After submit_bio() the bio may already have completed and been
//    freed; a submitter that still wants to look at it takes a reference
//    first and puts it afterwards.
//
// Bios do not allocate: the segment table is the caller's (or the BioSet's
// inline table) and the callback is a plain function pointer with a context
// pointer, not a std::function.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>

#include "blkstack/ioprio.h"
#include "blkstack/status.h"

namespace blkstack {

class BlockDevice;
class Disk;
class BioSet;

inline constexpr unsigned kSectorShift = 9;
inline constexpr uint32_t kSectorSize = 1u << kSectorShift;

enum class Op : uint8_t {
  kRead = 0,
  kWrite,
  kFlush,        // make completed writes durable (an empty PREFLUSH in Linux)
  kDiscard,      // the data may be dropped; reads after it are undefined/zero
  kWriteZeroes,  // the range reads as zeroes afterwards
};
inline constexpr int kOpCount = 5;

std::string_view op_name(Op op);
inline bool op_is_write(Op op) { return op != Op::kRead; }
// Ops that carry data in their segments.
inline bool op_has_data(Op op) { return op == Op::kRead || op == Op::kWrite; }

// Request flags (the kernel's REQ_* bits that a submitter may set).
enum class BioFlag : uint16_t {
  kNone = 0,
  kFua = 1 << 0,       // the write is durable when it completes
  kPreflush = 1 << 1,  // flush the volatile cache before this I/O
  kSync = 1 << 2,      // someone waits for this I/O
  kMeta = 1 << 3,      // file system metadata
  kPrio = 1 << 4,      // boost priority
  kNowait = 1 << 5,    // fail with Status::kAgain instead of waiting
  // Completes only when polled (REQ_POLLED): it goes to a poll queue, and
  // the submitter calls Disk::poll() until it ends. A disk without poll
  // queues clears the flag and completes it as usual.
  kPolled = 1 << 6,
  // Write-zeroes must leave the range allocated (REQ_NOUNMAP); honoured by
  // drivers that set QueueLimits::write_zeroes_nounmap.
  kNoUnmap = 1 << 7,
};
constexpr BioFlag operator|(BioFlag a, BioFlag b) {
  return static_cast<BioFlag>(static_cast<uint16_t>(a) | static_cast<uint16_t>(b));
}
constexpr BioFlag operator&(BioFlag a, BioFlag b) {
  return static_cast<BioFlag>(static_cast<uint16_t>(a) & static_cast<uint16_t>(b));
}
constexpr BioFlag& operator|=(BioFlag& a, BioFlag b) { return a = a | b; }
constexpr bool any(BioFlag f) { return f != BioFlag::kNone; }

// One piece of memory (the kernel's bio_vec).
struct Segment {
  std::byte* ptr = nullptr;
  uint32_t len = 0;

  Segment() = default;
  Segment(void* p, uint32_t n) : ptr(static_cast<std::byte*>(p)), len(n) {}
};

// Position inside a bio (the kernel's bvec_iter): the next sector, the bytes
// still to go, and where they start in the segment table.
struct BioIter {
  uint64_t sector = 0;
  uint32_t size = 0;  // bytes remaining
  uint16_t idx = 0;   // current segment
  uint32_t done = 0;  // bytes already consumed of segs[idx]
};

// One contiguous piece visited by Bio::for_each_chunk.
struct BioChunk {
  // The sector holding the chunk's first byte. Segments need not be whole
  // sectors, so a chunk may start inside one: drivers that move data track
  // the byte position (bio.sector() << kSectorShift plus the lengths so far).
  uint64_t sector;
  std::byte* ptr;   // memory (null for ops without data)
  uint32_t len;     // bytes
  uint16_t seg;     // index in the segment table
  uint32_t offset;  // offset inside that segment
};

// Where a bio starts, saved by its owner before submit_bio() so that it can
// send the bio again from there (Bio::restart, resubmit_busy in submit.h).
struct BioStart {
  BlockDevice* bdev = nullptr;
  BioIter iter;
  BioFlag flags = BioFlag::kNone;
};

class Bio {
 public:
  using EndIo = void (*)(Bio& bio);

  Bio() = default;
  Bio(const Bio&) = delete;
  Bio& operator=(const Bio&) = delete;

  // Prepares a bio for submission. `segs` must outlive the bio; its total
  // length becomes the I/O size (ops without data use set_size()).
  void init(BlockDevice* bdev, Op op, uint64_t sector, std::span<Segment> segs,
            EndIo end_io = nullptr, void* context = nullptr);
  // For flush, discard and write-zeroes: a range without memory.
  void init_nodata(BlockDevice* bdev, Op op, uint64_t sector, uint32_t bytes,
                   EndIo end_io = nullptr, void* context = nullptr);
  // The same, addressed to the whole of `disk` (its part0()).
  void init(Disk* disk, Op op, uint64_t sector, std::span<Segment> segs,
            EndIo end_io = nullptr, void* context = nullptr);
  void init_nodata(Disk* disk, Op op, uint64_t sector, uint32_t bytes,
                   EndIo end_io = nullptr, void* context = nullptr);
  // No device yet (set before submission, or a bio never submitted).
  void init(std::nullptr_t, Op op, uint64_t sector, std::span<Segment> segs,
            EndIo end_io = nullptr, void* context = nullptr) {
    init(static_cast<BlockDevice*>(nullptr), op, sector, segs, end_io, context);
  }
  void init_nodata(std::nullptr_t, Op op, uint64_t sector, uint32_t bytes,
                   EndIo end_io = nullptr, void* context = nullptr) {
    init_nodata(static_cast<BlockDevice*>(nullptr), op, sector, bytes, end_io, context);
  }

  // --- fields a driver reads -------------------------------------------
  Op op() const { return op_; }
  BioFlag flags() const { return flags_; }
  bool has_flag(BioFlag f) const { return any(flags_ & f); }
  void set_flags(BioFlag f) { flags_ |= f; }
  void clear_flags(BioFlag f) {
    flags_ =
        static_cast<BioFlag>(static_cast<uint16_t>(flags_) & ~static_cast<uint16_t>(f));
  }
  // I/O priority (see ioprio.h) and issuer, for the I/O scheduler. A
  // clone or split piece keeps both; submit_bio to a queue with a scheduler
  // sets the issuer to the submitting thread if it is still 0.
  uint16_t ioprio() const { return ioprio_; }
  void set_ioprio(uint16_t prio) { ioprio_ = prio; }
  IssuerId issuer() const { return issuer_; }
  void set_issuer(IssuerId id) { issuer_ = id; }
  BlockDevice* bdev() const { return bdev_; }
  Disk* disk() const { return disk_; }  // the bdev's disk
  // Sends the bio on to `bdev` at `sector` (bio_set_dev and a new
  // bi_sector), for a stacked driver that then calls submit_bio() again.
  // The bio's accounting and in-flight reference move: the device it leaves
  // counts it as done now, and the one it goes to counts it from its
  // submission, so that device's shutdown waits for it.
  void set_dev(BlockDevice& bdev, uint64_t sector);
  // set_dev(disk->part0(), sector()).
  void set_disk(Disk* disk);
  uint64_t sector() const { return iter_.sector; }
  void set_sector(uint64_t s) { iter_.sector = s; }
  uint32_t size() const { return iter_.size; }  // bytes remaining
  uint32_t sectors() const { return iter_.size >> kSectorShift; }
  uint64_t end_sector() const { return iter_.sector + sectors(); }
  const BioIter& iter() const { return iter_; }
  std::span<Segment> segments() const { return {segs_, nr_segs_}; }
  void* context() const { return context_; }
  void set_context(void* c) { context_ = c; }
  void set_end_io(EndIo fn, void* context) {
    end_io_ = fn;
    context_ = context;
  }

  // Visits the bytes of the bio from the current position, one contiguous
  // chunk per segment piece. `fn(const BioChunk&)` returns void.
  template <class Fn>
  void for_each_chunk(Fn&& fn) const;
  // Number of segment pieces the remaining bytes span.
  unsigned count_segments() const;

  // Moves the position forward by `bytes` (bio_advance).
  void advance(uint32_t bytes);
  // Shortens the remaining I/O to `bytes` (bio_trim from the front).
  void truncate(uint32_t bytes) { iter_.size = bytes; }
  void set_size(uint32_t bytes) { iter_.size = bytes; }

  // Copies between the bio's memory (from the current position) and `buf`.
  void copy_to(std::byte* dst, uint32_t bytes) const;
  void copy_from(const std::byte* src, uint32_t bytes) const;
  void zero_fill() const;

  // The start to save before submitting; restart() makes a completed bio
  // as it was then (status, chaining and accounting cleared; callback,
  // context and segments kept), for its owner to submit again.
  BioStart start() const { return {bdev_, iter_, flags_}; }
  void restart(const BioStart& s);

  // --- completion --------------------------------------------------------
  Status status() const { return status_.load(std::memory_order_acquire); }
  // Records an error; the first error wins, later ones are dropped.
  void set_status(Status s);
  // Finishes this bio (bio_endio). Runs the callback once the bio and all
  // chained children are done.
  void endio();
  // set_status(s) then endio(): the one call a driver makes to finish.
  void complete(Status s) {
    if (s != Status::kOk) set_status(s);
    endio();
  }
  // True once the callback has run (for tests and debug checks).
  bool completed() const { return completed_.load(std::memory_order_acquire); }
  // True once a child was chained to this bio (a split piece, say): part of
  // its work has gone its own way, so the bio can no longer be taken back
  // whole (cancelled) even while the rest of it waits.
  bool has_chained_children() const { return chained_.load(std::memory_order_relaxed); }

  // Makes `parent` wait for `child`: the parent's callback runs after both
  // its own endio() and the child's; the child's error is kept in the parent
  // if the parent has none yet. The child must not have a callback of its
  // own; it is released (put) when it completes. (bio_chain)
  static void chain(Bio& child, Bio& parent);

  // Splits off the first `sectors` sectors as a new bio from `pool`, chained
  // to this one, and advances this bio past them (bio_split). No data or
  // segment table is copied. Returns nullptr only when no_wait allocation
  // fails; `sectors` must be > 0 and < sectors().
  Bio* split(uint32_t sectors, BioSet& pool, bool may_wait = true);
  // As split(), into `front`: a bio fresh from a BioSet, for callers that
  // get it themselves (submit_bio's splitting, which never waits for one).
  void split_into(Bio& front, uint32_t sectors);
  // A clone of this bio's remaining range sharing its segment table. The
  // clone is not chained; its owner sets a callback (bio_alloc_clone).
  Bio* clone(BioSet& pool, bool may_wait = true);

  // --- reference counting -------------------------------------------------
  void get() { refs_.fetch_add(1, std::memory_order_relaxed); }
  // Drops a reference; a pooled bio returns to its BioSet at zero.
  void put();
  uint32_t refcount() const { return refs_.load(std::memory_order_relaxed); }
  BioSet* pool() const { return pool_; }

  // --- block-core internals (used by submit_bio and queues) --------------
  Bio* next = nullptr;  // link for BioList
  uint64_t start_ns = 0;
  Disk* acct_disk = nullptr;  // disk whose statistics account this bio
  // A partition's bio remapped to its disk: the partition counts it too.
  BlockDevice* acct_part = nullptr;
  uint32_t acct_sectors = 0;  // its size when accounting started
  // Free for the driver that currently owns the bio (a timestamp, an index).
  uint64_t driver_data = 0;

 private:
  friend class BioSet;
  friend class BioGate;
  static void chain_endio(Bio& bio);
  // Returns the parent to complete next, if any (keeps deep chains iterative).
  Bio* finish_one();
  void clear_progress();
  [[noreturn]] void fatal_completed_twice() const;
  void reset(BlockDevice* bdev, Disk* disk, Op op, uint64_t sector, EndIo end_io,
             void* context);
  // Points the bio at `segs`; their total length becomes its size.
  void set_segments(std::span<Segment> segs);
  // Makes `c` a clone of this bio's remaining range (see clone()).
  void clone_into(Bio& c) const;

  BioIter iter_{};
  Segment* segs_ = nullptr;
  uint16_t nr_segs_ = 0;
  Op op_ = Op::kRead;
  BioFlag flags_ = BioFlag::kNone;
  std::atomic<Status> status_{Status::kOk};
  std::atomic<bool> completed_{false};
  std::atomic<uint32_t> remaining_{1};
  std::atomic<bool> chained_{false};  // has or had chained children
  // Counted against its disk's bio depth while in the driver (BioGate); in
  // the padding after chained_.
  bool gate_counted_ = false;
  uint16_t ioprio_ = 0;  // in the padding after chained_: Bio does not grow
  std::atomic<uint32_t> refs_{1};
  IssuerId issuer_ = 0;  // in the padding after refs_
  BlockDevice* bdev_ = nullptr;
  Disk* disk_ = nullptr;  // bdev_'s, kept here for the hot path
  EndIo end_io_ = nullptr;
  void* context_ = nullptr;
  BioSet* pool_ = nullptr;
};

// A singly linked FIFO of bios (bio_list), linked through Bio::next.
class BioList {
 public:
  bool empty() const { return head_ == nullptr; }
  void push_back(Bio* b) {
    b->next = nullptr;
    if (tail_)
      tail_->next = b;
    else
      head_ = b;
    tail_ = b;
  }
  Bio* pop_front() {
    Bio* b = head_;
    if (b) {
      head_ = b->next;
      if (!head_) tail_ = nullptr;
      b->next = nullptr;
    }
    return b;
  }
  // Appends all of `other` (left empty).
  void splice_back(BioList& other) {
    if (other.empty()) return;
    if (tail_)
      tail_->next = other.head_;
    else
      head_ = other.head_;
    tail_ = other.tail_;
    other.head_ = other.tail_ = nullptr;
  }
  void push_front(Bio* b) {
    b->next = head_;
    head_ = b;
    if (!tail_) tail_ = b;
  }
  Bio* front() const { return head_; }
  // Unlinks `b` if it is on the list (a scan: for rare paths like cancel).
  bool remove(Bio* b) {
    Bio* prev = nullptr;
    for (Bio* cur = head_; cur != nullptr; prev = cur, cur = cur->next) {
      if (cur != b) continue;
      (prev ? prev->next : head_) = cur->next;
      if (tail_ == cur) tail_ = prev;
      cur->next = nullptr;
      return true;
    }
    return false;
  }

 private:
  Bio* head_ = nullptr;
  Bio* tail_ = nullptr;
};

template <class Fn>
void Bio::for_each_chunk(Fn&& fn) const {
  uint32_t left = iter_.size;
  const uint64_t sector = iter_.sector;
  uint16_t idx = iter_.idx;
  uint32_t off = iter_.done;
  if (!op_has_data(op_)) {
    if (left) fn(BioChunk{sector, nullptr, left, 0, 0});
    return;
  }
  uint32_t walked = 0;  // bytes visited: chunks need not be whole sectors
  while (left > 0) {
    const Segment& s = segs_[idx];
    uint32_t n = s.len - off;
    if (n > left) n = left;
    fn(BioChunk{sector + (walked >> kSectorShift), s.ptr + off, n, idx, off});
    left -= n;
    walked += n;
    ++idx;
    off = 0;
  }
}

}  // namespace blkstack
