// Request: one I/O as a request-based driver sees it (the kernel's struct
// request): one or more merged bios covering a contiguous range, a tag, and
// a driver-private area (pdu) sized by the driver's tag set.
//
// Requests are preallocated by the TagSet, one per tag, so taking one is
// taking a tag: nothing is allocated per I/O. A driver finishes a request
// with end_request_all(status), or piecemeal with end_request(status, bytes),
// from any thread, exactly once per byte.
#pragma once

#include <atomic>
#include <cstdint>

#include "blkstack/bio.h"

namespace blkstack {

class HwQueue;
class Queue;

class Request {
 public:
  // --- what a driver reads (blk_rq_pos, blk_rq_bytes, ...) ----------------
  Op op() const { return op_; }
  BioFlag flags() const { return flags_; }
  bool has_flag(BioFlag f) const { return any(flags_ & f); }
  uint64_t pos() const { return sector_; }                     // blk_rq_pos
  uint32_t bytes() const { return bytes_; }                    // blk_rq_bytes
  uint32_t sectors() const { return bytes_ >> kSectorShift; }  // blk_rq_sectors
  uint32_t cur_bytes() const;                                  // blk_rq_cur_bytes
  bool is_write() const { return op_is_write(op_); }           // rq_data_dir
  // The driver tag (blk_mq_tag): with a scheduler, taken only when the
  // request goes to the driver; -1 before.
  int tag() const { return tag_; }
  // The scheduler tag (rq->internal_tag), -1 without a scheduler.
  int internal_tag() const { return internal_tag_; }
  // I/O priority and issuer, from the first bio (see ioprio.h).
  uint16_t ioprio() const { return ioprio_; }
  IssuerId issuer() const { return issuer_; }
  // The scheduler's per-request area (rq->elv.priv): SchedulerType::sched_size
  // bytes, aligned to 16, made with the scheduler's tags. nullptr without a
  // scheduler or when sched_size is 0.
  void* sched_priv() const;
  template <class T>
  T* sched_priv_as() const {
    return static_cast<T*>(sched_priv());
  }
  HwQueue& hctx() const { return *hctx_; }
  Queue& queue() const { return *queue_; }
  unsigned nr_segments() const { return nr_segments_; }
  uint64_t alloc_ns() const { return alloc_ns_; }  // when the request was made
  uint64_t start_ns() const { return start_ns_; }  // when it went to the driver
  // The driver's per-request area, cmd_size bytes, aligned to 16.
  void* pdu() const { return pdu_; }
  template <class T>
  T* pdu_as() const {
    return static_cast<T*>(pdu_);
  }

  Bio* bio() const { return head_; }  // first bio; the rest follow via next
  // Calls fn(Bio&) for each bio, in order.
  template <class Fn>
  void for_each_bio(Fn&& fn) const {
    for (Bio* b = head_; b != nullptr; b = b->next) fn(*b);
  }
  // Calls fn(const BioChunk&) for every piece of memory of every bio.
  template <class Fn>
  void for_each_chunk(Fn&& fn) const {
    for (Bio* b = head_; b != nullptr; b = b->next) b->for_each_chunk(fn);
  }

  // --- completion ------------------------------------------------------------
  // Completes the first `bytes` of the request (blk_update_request +
  // blk_end_request): whole bios end, a partly done bio advances. An error
  // is kept for the bios it touches. Returns true while bytes remain; when
  // none remain the request is finished and must not be touched again.
  // Finishing claims the request from the driver: if its timeout handler is
  // running, the completion is carried out when the handler returns, or
  // ignored if the handler ended the request itself. Partial completions
  // are the driver's own business and must not race its timeout handler.
  bool end_request(Status status, uint32_t bytes);
  // Completes everything left (blk_mq_end_request).
  void end_request_all(Status status);

  // --- queue internals ----------------------------------------------------
  // Links for the queue's lists; a scheduler owns them while it holds the
  // request (between insert and dispatch), as the kernel's rq->queuelist.
  Request* next = nullptr;
  Request* prev = nullptr;

 private:
  friend class Queue;
  friend class HwQueue;
  friend class FlushQueue;
  friend class TagSet;
  friend struct Tags;
  friend class RequestMerger;

  // Who owns the request (DESIGN.md invariant 9). Every hand-over between
  // the queue, the driver, the completion and the timeout is one
  // compare-and-swap on `state_`, so exactly one party owns it at a time.
  enum class State : uint8_t {
    kIdle,      // the queue's: being set up, on a list, in the flush machine
    kInFlight,  // the driver's; completion, requeue and timeout race to claim it
    kTimedOut,  // the timeout's: the driver's timeout() is running
    kExpired,   // the driver's again after timeout(), and not timed out again
    kComplete,  // the completion's: being finished
  };
  // The state word: the State in the low bits, then what the driver handed
  // back while the timeout owned the request (carried out, or dropped, when
  // the handler returns), the status of such a completion, and in the high
  // half a generation bumped on every issue, so a claim made on what the
  // timeout scan saw fails if the request was reissued (its tag reused)
  // since.
  static constexpr uint64_t kStateMask = 0x7;
  static constexpr uint64_t kFailAsTimeout = 1u << 3;  // kExpired: ends with kTimeout
  static constexpr uint64_t kDeferredComplete = 1u << 4;
  static constexpr uint64_t kDeferredRequeue = 1u << 5;
  static constexpr unsigned kDeferredStatusShift = 8;  // 8 bits
  static constexpr unsigned kGenerationShift = 32;
  static State state_of(uint64_t word) { return static_cast<State>(word & kStateMask); }
  // `word` with only its generation kept and `state` set.
  static uint64_t with_state(uint64_t word, State state) {
    return (word & ~uint64_t{0} << kGenerationShift) | static_cast<uint64_t>(state);
  }
  // Sets the state of a request this thread owns, keeping the generation.
  void set_state(State state, std::memory_order order = std::memory_order_release) {
    state_.store(with_state(state_.load(std::memory_order_relaxed), state), order);
  }

  void clear_flags(BioFlag f) {
    flags_ =
        static_cast<BioFlag>(static_cast<uint16_t>(flags_) & ~static_cast<uint16_t>(f));
  }

  // The small fields first, packed ahead of the 8-byte state word: a
  // request stays 128 bytes.
  Op op_ = Op::kRead;
  Status error_ = Status::kOk;  // first error of a partial completion
  BioFlag flags_ = BioFlag::kNone;
  int tag_ = -1;
  std::atomic<uint64_t> state_{0};  // kIdle, generation 0
  uint16_t nr_segments_ = 0;
  uint8_t flush_seq_ = 0;     // flush stages done (FlushQueue)
  uint8_t flush_policy_ = 0;  // flush stages needed; 0: not in a flush sequence
  bool internal_flush_ = false;
  uint16_t ioprio_ = 0;
  uint64_t sector_ = 0;
  uint32_t bytes_ = 0;
  uint32_t stats_sectors_ = 0;  // size when made, for the disk statistics
  uint64_t alloc_ns_ = 0;
  uint64_t start_ns_ = 0;
  std::atomic<uint64_t> deadline_ns_{0};
  Bio* head_ = nullptr;
  Bio* tail_ = nullptr;
  HwQueue* hctx_ = nullptr;
  Queue* queue_ = nullptr;
  void* pdu_ = nullptr;
  IssuerId issuer_ = 0;
  int internal_tag_ = -1;  // fixed: a scheduler request's index in its Tags
};

// An intrusive doubly linked list of requests, through next/prev.
class RequestList {
 public:
  bool empty() const { return head_ == nullptr; }
  size_t size() const { return size_; }
  Request* front() const { return head_; }
  Request* back() const { return tail_; }
  void push_back(Request* rq);
  void push_front(Request* rq);
  void remove(Request* rq);
  // Puts `rq` just before `pos`, which is on this list.
  void insert_before(Request* pos, Request* rq);
  Request* pop_front();
  // Appends all of `other`, leaving it empty; prepend puts them first.
  void splice_back(RequestList& other);
  void splice_front(RequestList& other);
  // Moves the requests for which pred(const Request&) holds into a new
  // list, keeping their order.
  template <class Pred>
  RequestList extract_if(Pred&& pred) {
    RequestList out;
    for (Request* rq = head_; rq != nullptr;) {
      Request* next = rq->next;
      if (pred(*rq)) {
        remove(rq);
        out.push_back(rq);
      }
      rq = next;
    }
    return out;
  }

 private:
  Request* head_ = nullptr;
  Request* tail_ = nullptr;
  size_t size_ = 0;
};

}  // namespace blkstack
