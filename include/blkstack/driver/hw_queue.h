// HwQueue: one hardware dispatch queue of a request queue (the kernel's
// blk_mq_hw_ctx). Submitting threads stage requests on software queues
// mapped onto it (src/queue/software_queue.h).
//
// Dispatch to the driver happens inline in the submitter's thread when the
// hardware queue is idle; otherwise requests wait on the software queues
// (or the scheduler) and the dispatch list, and run() drains them. run() is
// serialised per hardware queue by a counter, not a lock: a run requested
// while one is going on makes that one go round again, so no request is
// forgotten and a completion that calls run() from inside queue_rq() does
// not recurse.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

#include "blkstack/driver/request.h"

namespace blkstack {

// What became of a request sent to the driver (see Queue::issue).
enum class IssueResult : uint8_t {
  kIssued,   // taken by the driver (or failed and completed)
  kRequeue,  // refused for lack of resources: retry later
  kBusy,     // refused, and the hardware queue is stopped
};

class Queue;
struct Tags;

class alignas(64) HwQueue {
 public:
  HwQueue(Queue& queue, unsigned index, Tags& tags);

  unsigned index() const { return index_; }
  Queue& queue() const { return queue_; }
  // The driver tags, and with a scheduler this queue's scheduler tags
  // (blk_mq_hw_ctx.sched_tags; nullptr with "none").
  Tags& tags() const { return tags_; }
  Tags* sched_tags() const { return sched_tags_; }

  // blk_mq_stop_hw_queue / blk_mq_start_hw_queue: a stopped queue keeps its
  // requests and dispatches nothing until started (start runs it).
  void stop() { stopped_.store(true, std::memory_order_release); }
  void start();
  bool stopped() const { return stopped_.load(std::memory_order_acquire); }

  // Dispatches what is waiting, now, on this thread.
  void run();
  // Runs on the queue's worker after `delay_ns` (blk_mq_delay_run_hw_queue).
  void run_after(uint64_t delay_ns);

 private:
  friend class Queue;
  friend class FlushQueue;

  // True when nothing waits and the queue is not stopped: a new request
  // may go straight to the driver.
  bool idle() const;
  void dispatch_all();
  // Sends `list` to the driver in order; what the driver cannot take now
  // goes back to the front of the dispatch list. False if that happened.
  bool dispatch_list(RequestList& list);
  // After a refused request is back on the dispatch list: arm the re-run
  // (kRequeue), or run if the driver restarted the queue already (kBusy).
  void after_refusal(IssueResult why);
  void add_to_dispatch(Request& rq, bool at_head);
  // Puts what is left of a batch back at the front of the dispatch list,
  // in order (the driver or the driver tags took no more).
  void put_back_for_dispatch(RequestList& batch);
  // Stops the queue after the driver refused a request with
  // kDeviceResource, unless the driver called start() since `starts` was
  // read (before queue_rq): room freed on another thread between its busy
  // decision and the return, and that start() must not be lost.
  void stop_after_busy(uint32_t starts) {
    stopped_.store(true, std::memory_order_seq_cst);
    if (starts_.load(std::memory_order_seq_cst) != starts) {
      stopped_.store(false, std::memory_order_seq_cst);
    }
  }
  // Marks the software queue as holding work for this hardware queue.
  // A request left the driver: run if a refused request waits for that.
  void restart_if_needed() {
    if (restart_.load(std::memory_order_relaxed) &&
        restart_.exchange(false, std::memory_order_acq_rel)) {
      run();
    }
  }
  void mark_pending(unsigned ctx) {
    pending_ctx_.fetch_or(1u << ctx, std::memory_order_release);
  }
  // A driver tag for a scheduler request (blk_mq_get_driver_tag), or -1:
  // then this queue is on the driver tags' wait list and runs again when
  // one frees (no busy retry).
  int get_driver_tag();
  // Stops dispatching and waits until no run() is under way
  // (blk_mq_quiesce_queue): the scheduler may then be swapped.
  void quiesce();
  void unquiesce();

  Queue& queue_;
  unsigned index_;
  Tags& tags_;
  std::atomic<bool> stopped_{false};
  std::atomic<uint32_t> starts_{0};       // start() calls (see stop_after_busy)
  std::atomic<uint32_t> runs_{0};         // run() requests; nonzero while running
  std::atomic<uint32_t> pending_ctx_{0};  // software queues with requests
  std::mutex dispatch_lock_;
  RequestList dispatch_;  // requeued or waiting for the driver
  std::atomic<uint32_t> dispatch_count_{0};
  std::atomic<bool> restart_{false};  // run again when a request completes
  std::atomic<bool> quiesced_{false};
  Tags* sched_tags_ = nullptr;  // set by the Queue while frozen
  // On tags_.hctx_waiters (under tags_.wait_lock).
  bool waiting_for_tag_ = false;
  HwQueue* next_tag_waiter_ = nullptr;
  // Runs by a thread that took this queue off that list (counted under
  // tags_.wait_lock): the Queue's teardown waits for them, as the thread
  // may belong to another disk sharing the tags.
  std::atomic<uint32_t> tag_wake_runs_{0};
};

}  // namespace blkstack
