// BfqQueue: one queue of the bfq scheduler (the kernel's bfq_queue with
// its bfq_entity), and what bfq keeps in each request's private area.
//
// A synchronous queue belongs to one issuer (Bio::issuer(): an IoContext
// or a thread, as a bfq_queue belongs to a process's io_context). Writes
// that nobody waits for go to an asynchronous queue shared by every issuer
// of the same I/O priority, as the kernel's per-group async_bfqq[class][level].
//
// A queue holds its requests twice: sorted by sector (where the next
// request is chosen, with the back-seek rules) and in arrival order (the
// FIFO, whose head may expire). The sector list uses Request::next/prev;
// the FIFO uses links in the private area.
#pragma once

#include <cstdint>

#include "blkstack/driver/request.h"
#include "blkstack/ioprio.h"

namespace blkstack::bfq {

struct BfqQueue;

// Request::sched_priv() of a bfq request.
struct RqPriv {
  enum class State : uint8_t { kPrepared, kQueued, kDispatched, kDone };
  BfqQueue* bfqq;
  Request* fifo_next;
  Request* fifo_prev;
  uint64_t fifo_time;  // when it expires (rq->fifo_time)
  State state;
};

inline RqPriv* priv(const Request& rq) { return rq.sched_priv_as<RqPriv>(); }

// The three I/O priority classes, each with its own service tree.
enum IoClass : uint8_t { kClassRt = 0, kClassBe = 1, kClassIdle = 2, kNrClasses = 3 };

// Why the in-service queue stops being served (enum bfqq_expiration).
enum class Expire : uint8_t {
  kTooIdle,          // idled for slice_idle and no request came
  kBudgetTimeout,    // in service longer than timeout_sync
  kBudgetExhausted,  // its next request does not fit in what is left
  kNoMoreRequests,   // empty, and idling would not help
  kPreempted,        // idling, and a queue that should not wait arrived
};

struct BfqQueue {
  // --- identity ------------------------------------------------------------
  IssuerId issuer = 0;
  bool sync = true;
  bool pooled = false;  // from the per-issuer pool (else a shared async queue)
  uint16_t ioprio = 0;  // the priority its weight and class came from
  IoClass ioclass = kClassBe;

  // --- requests --------------------------------------------------------------
  RequestList sorted;  // by sector, through Request::next/prev
  Request* fifo_head = nullptr;
  Request* fifo_tail = nullptr;
  uint32_t queued = 0;      // held here, not yet dispatched
  uint32_t dispatched = 0;  // in the driver
  uint32_t refs = 0;        // requests alive that point here

  // --- B-WF2Q+ entity (bfq_entity) -------------------------------------------
  // Where the entity is: nowhere, on its tree's active list (backlogged,
  // waiting), on its idle list (gone idle with F > V: still counted in the
  // tree's weight sum), or in service (off the lists, still counted).
  enum class Tree : uint8_t { kNone, kActive, kIdle, kService };
  Tree on = Tree::kNone;
  BfqQueue* tree_next = nullptr;  // on its service tree's active or idle list
  BfqQueue* tree_prev = nullptr;
  uint64_t start = 0;   // virtual start time S
  uint64_t finish = 0;  // virtual finish time F
  uint32_t weight = 0;  // effective weight (orig_weight x wr_coeff)
  uint32_t orig_weight = 100;
  uint32_t new_weight = 100;  // applied at the next (re)activation
  IoClass new_ioclass = kClassBe;
  uint64_t budget = 0;   // sectors it may receive this round
  uint64_t service = 0;  // sectors received this round

  // --- budget feedback -----------------------------------------------------
  uint64_t max_budget = 0;  // its own budget ceiling (bfqq->max_budget)
  uint64_t budget_timeout_ns = 0;
  uint64_t in_service_since_ns = 0;
  bool io_bound = true;
  bool fifo_checked = false;  // the FIFO was looked at this round

  // --- think time and seekiness ----------------------------------------------
  uint64_t last_end_ns = 0;    // when its last request completed
  uint64_t ttime_samples = 0;  // fixed point, 7/8 decay (bfq_ttime)
  uint64_t ttime_total = 0;
  uint64_t ttime_mean = 0;
  uint64_t last_pos = 0;      // end of its last arrived request
  uint32_t seek_history = 0;  // one bit per request: was it a seek
  bool has_last_pos = false;

  // --- weight raising (low_latency) ------------------------------------------
  uint32_t wr_coeff = 1;
  uint64_t wr_start_ns = 0;
  uint64_t wr_duration_ns = 0;
  uint64_t service_from_wr = 0;
  uint64_t last_idle_bklogged_ns = 0;  // when it last became busy
  uint64_t service_from_backlogged = 0;
  uint64_t soft_rt_next_start_ns = UINT64_MAX;
  uint64_t last_busy_end_ns = 0;  // budget_timeout of the kernel's idle-for-long test
  bool ever_busy = false;

  // --- pool bookkeeping ------------------------------------------------------
  BfqQueue* lru_next = nullptr;  // on the pool's list of reusable queues
  BfqQueue* lru_prev = nullptr;
  bool on_lru = false;

  bool busy() const { return queued > 0; }
  // BFQQ_SEEKY: more than 4 of the last 32 requests were seeks.
  bool seeky() const { return __builtin_popcount(seek_history) > 32 / 8; }
};

}  // namespace blkstack::bfq

namespace blkstack::bfq {

// Adds `rq` to the queue's sector list and FIFO (at the FIFO's head if
// `at_head`: a requeued request).
void add_request(BfqQueue& q, Request& rq, bool at_head);
// Takes `rq` off both lists.
void remove_request(BfqQueue& q, Request& rq);
// Moves `rq` to where `other` is in the FIFO and takes `fifo_time` from
// it, if `other` is older (a request that absorbed an older one).
void take_fifo_place(BfqQueue& q, Request& rq, Request& other);

// The request to serve after the head stopped at sector `head`
// (bfq_choose_req over the requests just after and just before it): the
// nearer one, where going back costs `back_penalty` times the distance and
// is allowed only up to `back_max` sectors; if both are out of reach, the
// lowest sector (the elevator wraps).
Request* choose_next(const BfqQueue& q, uint64_t head, uint64_t back_max,
                     uint32_t back_penalty);

}  // namespace blkstack::bfq
