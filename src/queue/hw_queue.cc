#include "blkstack/driver/hw_queue.h"

#include <thread>

#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/queue.h"
#include "blkstack/plug.h"
#include "core/clock.h"
#include "queue/software_queue.h"
#include "queue/tag_set.h"

namespace blkstack {
namespace {
// With nothing in flight to trigger a re-run, a request the driver refused
// for lack of resources is retried after this (BLK_MQ_RESOURCE_DELAY).
constexpr uint64_t kResourceDelayNs = 3'000'000;
}  // namespace

HwQueue::HwQueue(Queue& queue, unsigned index, Tags& tags)
    : queue_(queue), index_(index), tags_(tags) {}

void HwQueue::start() {
  starts_.fetch_add(1, std::memory_order_seq_cst);
  stopped_.store(false, std::memory_order_seq_cst);
  run();
}

bool HwQueue::idle() const {
  return !stopped() && dispatch_count_.load(std::memory_order_acquire) == 0 &&
         pending_ctx_.load(std::memory_order_acquire) == 0;
}

void HwQueue::add_to_dispatch(Request& rq, bool at_head) {
  std::lock_guard lock(dispatch_lock_);
  if (at_head)
    dispatch_.push_front(&rq);
  else
    dispatch_.push_back(&rq);
  dispatch_count_.store(static_cast<uint32_t>(dispatch_.size()),
                        std::memory_order_release);
}

void HwQueue::after_refusal(IssueResult why) {
  if (why == Queue::Issue::kRequeue) {
    // Run again when a request completes, and in any case after a short
    // delay: perhaps none is in flight, and then none will complete.
    restart_.store(true, std::memory_order_release);
    run_after(kResourceDelayNs);
  } else {
    // Dekker with start(): it clears stopped_ and then looks at the
    // dispatch list (in run()); we put the request back and then look at
    // stopped_. The fence keeps our look from passing our put-back.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (!stopped()) run();  // the driver restarted the queue before the request was back
  }
}

void HwQueue::run_after(uint64_t delay_ns) { queue_.schedule_work(now_ns() + delay_ns); }

void HwQueue::run() {
  // Every run() request counts; the thread that took the count from zero
  // dispatches until it has seen all of them.
  // seq_cst: a Dekker pair with quiesce() (free on x86: a locked add).
  if (runs_.fetch_add(1, std::memory_order_seq_cst) != 0) return;
  uint32_t seen = 1;
  for (;;) {
    if (!quiesced_.load(std::memory_order_seq_cst)) [[likely]]
      dispatch_all();
    uint32_t left = runs_.fetch_sub(seen, std::memory_order_acq_rel) - seen;
    if (left == 0) return;
    seen = left;
  }
}

void HwQueue::quiesce() {
  quiesced_.store(true, std::memory_order_seq_cst);
  // A run that read quiesced_ false has runs_ counted: wait for it.
  while (runs_.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
}

void HwQueue::unquiesce() {
  quiesced_.store(false, std::memory_order_seq_cst);
  run();  // what a run skipped meanwhile
}

int HwQueue::get_driver_tag() {
  int tag = tags_.alloc.try_get();
  if (tag >= 0) [[likely]]
    return tag;
  {
    std::lock_guard lock(tags_.wait_lock);
    if (!waiting_for_tag_) {
      waiting_for_tag_ = true;
      next_tag_waiter_ = tags_.hctx_waiters;
      tags_.hctx_waiters = this;
      tags_.nr_waiters.fetch_add(1, std::memory_order_seq_cst);
    }
  }
  // A tag freed before we were on the list saw no waiter: look again now
  // (pairs with Queue::free_request's check). If this finds one, the entry
  // costs one spare run later.
  return tags_.alloc.try_get();
}

void HwQueue::dispatch_all() {
  Scheduler* sched = queue_.sched_ptr();
  while (!stopped()) {
    RequestList batch;
    if (dispatch_count_.load(std::memory_order_acquire) != 0) {
      std::lock_guard lock(dispatch_lock_);
      batch.splice_back(dispatch_);
      dispatch_count_.store(0, std::memory_order_release);
    }
    if (batch.empty() && sched) {
      // One at a time keeps the scheduler in charge of the order; a batch
      // of up to 32 lets the driver see `last` only at its end. The driver
      // tag comes first (blk_mq_do_dispatch_sched): a request the driver
      // cannot take yet stays in the scheduler, where it can still be
      // reordered and merged.
      bool out_of_tags = false;
      while (batch.size() < 32 && sched->has_work(*this)) {
        const int tag = get_driver_tag();
        if (tag < 0) {
          out_of_tags = true;
          break;
        }
        Request* rq = sched->dispatch(*this);
        if (!rq) {
          tags_.alloc.put(tag);
          Queue::wake_tag_waiters_if_any(tags_);
          break;
        }
        if (&rq->hctx() != this) [[unlikely]] {
          // A scheduler shared by the hardware queues handed out another
          // queue's request: its driver tag must come from that queue's
          // tags (blk_mq_get_driver_tag uses rq->mq_hctx), so it waits on
          // that queue's dispatch list and takes one there.
          tags_.alloc.put(tag);
          Queue::wake_tag_waiters_if_any(tags_);
          rq->hctx().add_to_dispatch(*rq, /*at_head=*/true);
          rq->hctx().run();
          continue;
        }
        rq->tag_ = tag;
        batch.push_back(rq);
      }
      if (batch.empty() && out_of_tags) return;  // a freed driver tag runs us
    }
    if (batch.empty()) {
      uint32_t mask = pending_ctx_.exchange(0, std::memory_order_acq_rel);
      while (mask) {
        unsigned i = static_cast<unsigned>(__builtin_ctz(mask));
        mask &= mask - 1;
        SoftwareQueue& ctx = queue_.ctxs_[i];
        std::lock_guard lock(ctx.lock);
        batch.splice_back(ctx.list);
        ctx.count.store(0, std::memory_order_relaxed);
      }
    }
    if (batch.empty()) return;
    if (!dispatch_list(batch)) return;
  }
}

void HwQueue::put_back_for_dispatch(RequestList& batch) {
  std::lock_guard lock(dispatch_lock_);
  dispatch_.splice_front(batch);
  dispatch_count_.store(static_cast<uint32_t>(dispatch_.size()),
                        std::memory_order_release);
}

bool HwQueue::dispatch_list(RequestList& batch) {
  bool owe_commit = false;               // a request went with last == false
  const uint64_t now = Plug::time_ns();  // one clock read stamps the batch
  // Requests that complete inline while the batch goes out free their tags
  // together at the end.
  TagFreeBatch free_batch;
  while (Request* rq = batch.pop_front()) {
    if (rq->tag_ < 0) [[unlikely]] {
      // A scheduler request back from the flush machine or a requeue.
      rq->tag_ = get_driver_tag();
      if (rq->tag_ < 0) {
        batch.push_front(rq);
        put_back_for_dispatch(batch);
        if (owe_commit) queue_.driver().commit_rqs(*this);
        return false;  // a freed driver tag runs us
      }
    }
    const bool last = batch.empty();
    Queue::Issue r = queue_.issue(*this, *rq, last, now);
    if (r == Queue::Issue::kIssued) {
      owe_commit = !last;
      continue;
    }
    // The driver took no more: this one and the rest wait, in order.
    batch.push_front(rq);
    put_back_for_dispatch(batch);
    if (owe_commit) queue_.driver().commit_rqs(*this);
    after_refusal(r);
    return false;
  }
  return true;
}

}  // namespace blkstack
