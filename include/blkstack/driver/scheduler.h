// Scheduler: an I/O scheduler (the kernel's elevator_type and its
// elevator_mq_ops), and the registry of schedulers by name.
//
// With a scheduler attached, a request queue works as blk-mq does with an
// elevator: a bio that does not merge gets a request from its hardware
// queue's scheduler tags (`Queue::nr_requests()` of them; a bio parks while
// all are in use, as for a driver tag), the request goes to the scheduler
// (insert), and when the hardware queue runs it asks the scheduler for the
// next request (dispatch) only once it holds a driver tag for it: the
// scheduler keeps deciding the order until the driver can take a request.
// "none" is the absence of a scheduler: one tag per request, taken at
// submit, FIFO software queues and direct dispatch to an idle driver.
//
// Rules for every hook below:
//  - Hooks run on any thread, concurrently, with no queue lock held: the
//    scheduler locks its own state (a mutex or spinlock, held briefly).
//  - No hook may block or wait for I/O (DESIGN.md invariant 2).
//  - A hook must not call back into the queue while holding its own lock,
//    except for the merge helpers named at bio_merge: freeing a request may
//    resume a parked bio whose request is inserted right away.
//  - Between insert and dispatch the scheduler owns the request's `next`
//    and `prev` links and its sched_priv() area; the queue owns everything
//    else.
// Tunables are the files of /sys/block/*/queue/iosched/, as name=value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace blkstack {

class Bio;
class HwQueue;
class Queue;
class Request;
class RequestList;

class Scheduler {
 public:
  virtual ~Scheduler() = default;

  // --- per hardware queue (init_hctx / exit_hctx / depth_updated) ----------
  // After the scheduler is made and its tags exist, and before it is
  // destroyed, once per hardware queue, with the queue frozen and
  // quiesced: nothing else runs.
  virtual void init_hctx(HwQueue& hctx) { (void)hctx; }
  virtual void exit_hctx(HwQueue& hctx) { (void)hctx; }
  // Queue::set_nr_requests changed the scheduler tag depth (frozen).
  virtual void depth_updated(HwQueue& hctx) { (void)hctx; }

  // --- a request's life ---------------------------------------------------
  // A new scheduler request was made from `rq.bio()` (ioprio, issuer,
  // sched_priv() ready to fill), before it may merge or be inserted.
  // (prepare_request)
  virtual void prepare_request(Request& rq) { (void)rq; }
  // Takes requests (insert_requests). `at_head`: requeued ones, which
  // should go out first. The list is left empty. Requests of a flush
  // sequence never come here.
  virtual void insert(HwQueue& hctx, RequestList& list, bool at_head) = 0;
  // The next request to send to the driver, or nullptr (dispatch_request).
  // Called only when a driver tag is ready for it: what it returns goes to
  // the driver now (or, if the driver is busy, waits at the head of the
  // hardware queue's dispatch list; it is not given back).
  virtual Request* dispatch(HwQueue& hctx) = 0;
  // Whether dispatch() would return a request. May be called without the
  // scheduler's lock taken by the caller; an answer that is stale by the
  // time dispatch() runs is fine (dispatch returns nullptr).
  virtual bool has_work(const HwQueue& hctx) const = 0;
  // A request it dispatched came back from the driver to be sent again
  // (requeue_request): it is inserted again with at_head right after.
  virtual void requeue_request(Request& rq) { (void)rq; }
  // A request it dispatched has completed in the driver, before its bios
  // end (completed_request); `now_ns` is the completion time.
  virtual void completed(Request& rq, uint64_t now_ns) { (void)rq, (void)now_ns; }
  // The request is being freed (finish_request): after completion, or
  // after it was merged into another (requests_merged). Called exactly
  // once per prepare_request.
  virtual void finish_request(Request& rq) { (void)rq; }

  // --- merging ------------------------------------------------------------
  // Offers a bio to merge into a request the scheduler holds (bio_merge).
  // Returns true if it merged. Check with Queue::can_merge and merge with
  // Queue::merge_bio, under the scheduler's lock; after a merge the grown
  // request may join a neighbour: take the neighbour out, call
  // Queue::absorb_request(rq, next) (which calls requests_merged), drop the
  // lock, then Queue::free_request(next).
  virtual bool bio_merge(Queue& q, HwQueue& hctx, Bio& bio) {
    (void)q, (void)hctx, (void)bio;
    return false;
  }
  // `next` was merged into `rq` and leaves the scheduler (requests_merged);
  // called by Queue::absorb_request, so under whatever lock its caller
  // holds.
  virtual void requests_merged(Request& rq, Request& next) { (void)rq, (void)next; }

  // --- tag depth ----------------------------------------------------------
  // How many of the scheduler tags a request for `bio` may use (the
  // kernel's limit_depth, which sets the allocation's shallow_depth): 0 for
  // all of them, n for only tags 0..n-1, so that at most n such requests
  // are held at once and the rest stay free for the others (mq-deadline
  // and kyber keep some for synchronous reads this way). Called at submit
  // and, for a parked bio, when it parks: a read of the scheduler's own
  // settings, no lock, no call back into the queue.
  virtual unsigned limit_depth(const Bio& bio) const {
    (void)bio;
    return 0;
  }

  virtual std::vector<std::pair<std::string, std::string>> tunables() const { return {}; }
  // Throws Error naming the tunable or the bad value.
  virtual void set_tunable(std::string_view name, std::string_view value);
};

struct SchedulerType {
  std::string_view name;
  std::string_view description;
  // nullptr for "none".
  std::unique_ptr<Scheduler> (*create)(Queue& q);
  // Bytes of private space per scheduler request (Request::sched_priv).
  size_t sched_size = 0;
};

// A copy of the list: built-in ones first, then registered ones.
std::vector<const SchedulerType*> scheduler_types();
// Throws Error naming the unknown scheduler and listing the known ones.
const SchedulerType& find_scheduler_type(std::string_view name);
// Adds a scheduler at run time (tests, out-of-tree code). `type` must
// outlive every queue using it. Throws Error if the name is taken.
void register_scheduler_type(const SchedulerType& type);

}  // namespace blkstack
