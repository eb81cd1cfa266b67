// Queue: a multi-queue request queue (the kernel's request_queue with
// blk-mq). It is what a request-based disk uses as its BioDriver: bios that
// passed submit_bio()'s checks become requests here, merge, wait for tags,
// pass the scheduler and reach the RequestDriver through a HwQueue.
//
//   submit(bio) -> enter (or park while frozen) -> merge into the plug, the
//   scheduler or a software queue? -> take a tag (or park until one frees)
//   -> PREFLUSH/FUA? FlushQueue -> plugged? Plug -> scheduler? insert + run
//   -> idle? queue_rq inline : software queue + run
//
// Threads: any number may submit at once; each maps to a software queue
// (its per-thread slot) and through it to a hardware queue. Completions may
// arrive on any thread. A worker thread per queue (the kernel's kblockd)
// does delayed runs, requeues and timeout checks.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/hw_queue.h"
#include "blkstack/driver/request.h"
#include "blkstack/driver/request_driver.h"
#include "blkstack/driver/scheduler.h"

namespace blkstack {

class FlushQueue;
class Plug;
class TagSet;
struct Tags;
struct SoftwareQueue;

class Queue final : public BioDriver {
 public:
  // The queue owns the driver and makes its own TagSet from `config`.
  Queue(const TagSetConfig& config, std::unique_ptr<RequestDriver> driver);
  // Several queues may share one TagSet (and its driver), whose tags are
  // then shared between them (BLK_MQ_F_TAG_QUEUE_SHARED).
  explicit Queue(std::shared_ptr<TagSet> tag_set);
  ~Queue() override;

  // --- BioDriver ---------------------------------------------------------
  void submit(Bio& bio) override;
  void attach(Disk& disk) override;
  bool accounts_requests() const override { return true; }
  void shutdown() override;
  bool cancel(Bio& bio) override;
  // The queue's shape: "mq hw_queues=2 depth=64 sched=none" (what
  // make_disk() puts before the driver's own line in Disk::describe()).
  std::string describe() const;

  // --- structure ---------------------------------------------------------
  Disk& disk() const { return *disk_; }
  TagSet& tag_set() const { return *tag_set_; }
  // The shape of the queues (the tag set's configuration).
  const TagSetConfig& config() const;
  RequestDriver& driver() const { return *driver_; }
  unsigned nr_hw_queues() const { return static_cast<unsigned>(hctxs_.size()); }
  HwQueue& hw_queue(unsigned i) { return *hctxs_[i]; }
  const QueueLimits& limits() const { return disk_->limits(); }

  // --- control -----------------------------------------------------------
  void stop_hw_queues();           // blk_mq_stop_hw_queues
  void start_stopped_hw_queues();  // blk_mq_start_stopped_hw_queues
  void run_hw_queues();
  // Stops taking new bios (they park until unfreeze) and waits until every
  // one already taken has completed (blk_mq_freeze_queue; see Disk::freeze).
  void freeze();
  void unfreeze();
  // Puts a request back to be dispatched again (blk_mq_requeue_request);
  // kick_requeue_list() sends the requeued ones after `delay_ns`. Like a
  // completion, a requeue claims the request from the driver: one made
  // while the request's timeout handler runs is held back until the
  // handler returns (see RequestDriver::timeout).
  void requeue_request(Request& rq, bool kick = true);
  void kick_requeue_list(uint64_t delay_ns = 0);
  // Polled I/O: see BioDriver. Polls every poll queue; waits (up to
  // `wait_ns`) only when there is one.
  bool can_poll() const override { return !poll_hctxs_.empty(); }
  int poll(uint64_t wait_ns) override;

  // Scheduler by name ("none", ...): freezes, swaps, unfreezes.
  void set_scheduler(std::string_view name);
  std::string scheduler_name() const;
  Scheduler* scheduler() const { return sched_.get(); }
  // /sys/block/*/queue/nr_requests: the scheduler tags per hardware queue,
  // how many requests a scheduler may hold (default 2 x the driver depth,
  // capped at 256, as Linux's 2 x BLKDEV_DEFAULT_RQ). Freezes to resize
  // when a scheduler is attached; with "none" it is kept for the next one
  // (requests are then bounded by the driver depth). Throws Error outside
  // 1..kMaxNrRequests.
  static constexpr unsigned kMaxNrRequests = 2048;  // MAX_SCHED_RQ
  void set_nr_requests(unsigned n);
  unsigned nr_requests() const { return nr_requests_; }
  // /sys/block/*/queue/nomerges: 0 all merges, 1 one-hit only, 2 none.
  void set_nomerges(unsigned v);
  unsigned nomerges() const { return nomerges_.load(std::memory_order_relaxed); }

  // --- used by schedulers, HwQueue and Request ---------------------------
  enum class Merge : uint8_t { kNone, kBack, kFront };
  // Where `bio` could join `rq`, respecting ops, flags and every limit.
  Merge can_merge(const Request& rq, const Bio& bio) const;
  // Merges `bio` into `rq` (as can_merge said); accounts a merge. Requests
  // of different I/O priorities never merge (as Linux's blk_rq_merge_ok).
  void merge_bio(Request& rq, Bio& bio, Merge where);
  // Whether `next` (which follows `rq` on the device) may join `rq`.
  bool requests_mergeable(const Request& rq, const Request& next) const;
  // Moves the bios of `next` into `rq` and frees `next`. The caller has
  // taken `next` off its list and checked requests_mergeable(). Freeing
  // the tag may resume a bio parked for one and insert its request: do not
  // call this holding a lock that insertion takes.
  void merge_requests(Request& rq, Request& next);
  bool try_merge_requests(Request& rq, Request& next);
  // merge_requests() without freeing `next`: a scheduler calls this under
  // its lock and free_request(next) after dropping it.
  void absorb_request(Request& rq, Request& next);
  // Frees a request that never reached the driver, or finished: its tags
  // go back and parked bios resume (blk_mq_free_request).
  void free_request(Request& rq);
  // Ends the request's remaining bios and frees it (all bytes done).
  void finish_request(Request& rq, Status status);
  // Sends a request to the driver now. kRequeue and kBusy mean the driver
  // did not take it: the caller puts it back on the dispatch list.
  using Issue = IssueResult;
  // `now` is the time to stamp it with (callers share one clock read).
  Issue issue(HwQueue& hctx, Request& rq, bool last, uint64_t now);
  // Inserts into the scheduler, or the software queue of this thread.
  void insert(HwQueue& hctx, Request& rq, bool at_head);
  // Flushes one queue's share of a plug.
  void issue_plugged(RequestList& list);
  Scheduler* sched_ptr() const { return sched_.get(); }
  // After tags were freed: resumes parked bios if there are any.
  static void wake_tag_waiters_if_any(Tags& tags);
#ifdef BLKSTACK_DEBUG_CHECKS
  // Test hook: runs on a thread handing a freed driver tag to a hardware
  // queue that waited for one, between taking it off the wait list and
  // running it.
  static inline std::atomic<void (*)(HwQueue&)> hctx_wake_hook{nullptr};
#endif

 private:
  friend class FlushQueue;
  friend class HwQueue;
  friend class Request;

  // What the driver hands back: a finished request, or one to requeue (a
  // requeue_request() call, or a refusal in queue_rq).
  enum class Handback : uint8_t { kComplete, kRequeue };
  // Claims `rq` from the driver (DESIGN.md invariant 9): true if the caller
  // now owns it, as kComplete or kIdle. False if the timeout owns it: the
  // hand-back is recorded for the timeout to carry out when the driver's
  // handler returns (or to drop, if the handler ended the request). A
  // completion of a request that timed out with kFailWhenDone gets its
  // status turned into kTimeout. Aborts on a request the driver does not
  // have (ended twice).
  bool claim_from_driver(Request& rq, Handback what, Status& status);
  // The driver ended the request (Request::end_request, all bytes done).
  void end_from_driver(Request& rq, Status status);
  // Ends a request claimed from the driver: a flush stage moves its
  // sequence on, anything else finishes.
  void end_claimed(Request& rq, Status status);
  void add_to_requeue_list(Request& rq, bool kick);
  // A flush stage is back from the driver and claimed: the request is the
  // queue's again (kIdle).
  void leave_driver(Request& rq);
  // Flush stages bypass the scheduler: straight to the dispatch list.
  void dispatch_internal(Request& rq);
  void init_hw_queues();
  // This thread's hardware queue for `bio` (its poll queue if polled).
  HwQueue& map_queue(const Bio& bio) const;
  SoftwareQueue& this_ctx();
  bool try_merge_somewhere(HwQueue& hctx, Bio& bio);
  bool try_ctx_merge(SoftwareQueue& ctx, Bio& bio);
  void init_request(Request& rq, HwQueue& hctx, Bio& bio, uint64_t now);
  // Steps after a request has its tag: flush sequencing, plug, dispatch.
  void queue_request(HwQueue& hctx, Request& rq, bool allow_plug);
  // `limit`: the scheduler's limit_depth for the bio (0: any tag).
  void park_for_tag(HwQueue& hctx, Bio& bio, Tags& tags, unsigned limit = 0);
  // A parked bio that can have a tag now, off the wait list, with the tag
  // in `tag`; nullptr if none can. Under tags.wait_lock.
  static Bio* take_tag_for_waiter(Tags& tags, int& tag);
  // submit() with a scheduler: a scheduler tag, not a driver tag.
  void submit_sched(HwQueue& hctx, Bio& bio);
  void free_sched_request(Request& rq);
  // Gives back a scheduler request's driver tag, if it holds one.
  void put_driver_tag(Request& rq);
  // Into the scheduler (one request), as insert() does.
  void sched_insert(HwQueue& hctx, Request& rq, bool at_head);
  // A requeued request goes back: a scheduler's through the scheduler.
  void reinsert_requeued(Request& rq);
  // Makes the scheduler tags for `type` (nullptr: none); frozen and
  // quiesced, sched_lock_ held.
  void make_sched_tags(const SchedulerType* type);
  void quiesce();
  void unquiesce();
  // At teardown: off the driver tags' wait list, and no run of ours by a
  // thread that took us off it.
  void leave_tag_wait_lists();
  // Hands freed tags to bios parked for them (each names its own queue).
  static void wake_tag_waiters(Tags& tags);
  // The kblockd-like worker.
  void worker_loop();
  void schedule_work(uint64_t at_ns);
  void check_timeouts(uint64_t now);
  // Claims `rq` if it is in the driver past its deadline, and times it out.
  void try_time_out(Request& rq, uint64_t now);
  // Runs the driver's timeout() on a claimed request and carries out what
  // it returned, or what the driver handed back meanwhile.
  void time_out(Request& rq);

  std::shared_ptr<TagSet> tag_set_;
  std::unique_ptr<RequestDriver> owned_driver_;
  RequestDriver* driver_ = nullptr;  // the tag set's (cached: used per request)
  Disk* disk_ = nullptr;
  std::vector<std::unique_ptr<HwQueue>>
      hctxs_;  // the default queues, then the poll queues
  std::vector<HwQueue*> poll_hctxs_;
  std::unique_ptr<SoftwareQueue[]> ctxs_;
  std::unique_ptr<FlushQueue> flush_;
  std::unique_ptr<Scheduler> sched_;
  const SchedulerType* sched_type_ = nullptr;
  std::string sched_name_ = "none";
  unsigned nr_requests_ = 0;
  // The scheduler tags, one per hardware queue (empty with "none").
  // Swapped only frozen and quiesced; sched_lock_ keeps the timeout scan
  // and cancel() off them meanwhile.
  std::vector<std::unique_ptr<Tags>> sched_tags_;
  std::mutex sched_lock_;
  std::atomic<unsigned> nomerges_{0};

  std::mutex work_lock_;  // the worker's state
  std::condition_variable work_cv_;
  uint64_t work_at_ns_ = 0;  // 0: no delayed run pending
  bool work_stop_ = false;
  RequestList requeue_;  // under work_lock_
  std::thread worker_;
};

}  // namespace blkstack
