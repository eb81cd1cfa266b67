#include "blkstack/driver/queue.h"

#include <fmt/format.h>

#include <algorithm>

#include "blkstack/debug/submit_context.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/error.h"
#include "blkstack/plug.h"
#include "core/clock.h"
#include "core/percpu.h"
#include "queue/flush_queue.h"
#include "queue/software_queue.h"
#include "queue/tag_set.h"

namespace blkstack {
namespace {

// How many queued requests a bio may try to merge with (blk_bio_list_merge).
constexpr int kMergeScan = 8;

constexpr BioFlag kNoMergeFlags = BioFlag::kPreflush | BioFlag::kFua;

// The Tags a thread is handing freed tags out of, so that a completion
// inside that hand-out (an inline-completing driver) does not recurse: the
// outer loop picks up the tag it frees.
thread_local const Tags* tls_waking_tags = nullptr;
// A tag was freed on this thread while it handed tags out (see above).
thread_local bool tls_rewake = false;

// The request whose timeout handler runs on this thread: an end or requeue
// of it from inside the handler is the handler's own, not a late one.
struct TimeoutScope {
  Request* rq;
  bool handed_back;  // the handler ended or requeued it
};
thread_local TimeoutScope* tls_timeout_scope = nullptr;

// Hardware segments a bio needs: a memory piece longer than the maximum
// segment size counts as several.
unsigned bio_hw_segments(const Bio& bio, uint32_t max_segment_size) {
  unsigned n = 0;
  bio.for_each_chunk(
      [&](const BioChunk& c) { n += (c.len + max_segment_size - 1) / max_segment_size; });
  return n;
}

}  // namespace

// --- construction -------------------------------------------------------------

Queue::Queue(const TagSetConfig& config, std::unique_ptr<RequestDriver> driver)
    : owned_driver_(std::move(driver)) {
  tag_set_ = std::make_shared<TagSet>(config, *owned_driver_);
  init_hw_queues();
}

Queue::Queue(std::shared_ptr<TagSet> tag_set) : tag_set_(std::move(tag_set)) {
  init_hw_queues();
}

void Queue::init_hw_queues() {
  driver_ = &tag_set_->driver();
  const TagSetConfig& c = tag_set_->config();
  // Linux: 2 x min(driver depth, BLKDEV_DEFAULT_RQ).
  nr_requests_ = 2 * std::min(c.queue_depth, 128u);
  const unsigned n = c.nr_hw_queues, p = c.nr_poll_queues;
  for (unsigned i = 0; i < n + p; ++i) {
    hctxs_.push_back(std::make_unique<HwQueue>(*this, i, tag_set_->tags(i)));
    if (i >= n) poll_hctxs_.push_back(hctxs_.back().get());
  }
  // One software queue per thread slot, spread over the hardware queues.
  ctxs_.reset(new SoftwareQueue[kSlotCount]);
  for (unsigned i = 0; i < kSlotCount; ++i) {
    ctxs_[i].index = i;
    ctxs_[i].hctx = hctxs_[i % n].get();
    ctxs_[i].poll_hctx = p > 0 ? poll_hctxs_[i % p] : nullptr;
  }
  flush_ = std::make_unique<FlushQueue>(*this);
  worker_ = std::thread([this] { worker_loop(); });
}

Queue::~Queue() {
  {
    std::lock_guard lock(work_lock_);
    work_stop_ = true;
  }
  work_cv_.notify_one();
  worker_.join();
  leave_tag_wait_lists();
  if (sched_) {
    for (auto& h : hctxs_) sched_->exit_hctx(*h);
  }
  // The driver's own threads (completion threads, rings) stop before the
  // queue they complete into goes away.
  owned_driver_.reset();
}

void Queue::leave_tag_wait_lists() {
  // With tags shared by several disks, a request of another disk may free
  // the driver tag a hardware queue of ours waited for, and that thread
  // runs our queue without holding our disk. Off the list, and no such run
  // under way (read under the lock that counts them): none can start.
  for (auto& h : hctxs_) {
    Tags& tags = h->tags();
    for (;;) {
      {
        std::lock_guard lock(tags.wait_lock);
        if (h->tag_wake_runs_.load(std::memory_order_acquire) == 0) {
          if (h->waiting_for_tag_) {
            HwQueue** p = &tags.hctx_waiters;
            while (*p != h.get()) p = &(*p)->next_tag_waiter_;
            *p = h->next_tag_waiter_;
            h->waiting_for_tag_ = false;
            tags.nr_waiters.fetch_sub(1, std::memory_order_relaxed);
          }
          break;
        }
      }
      std::this_thread::yield();
    }
  }
}

void Queue::attach(Disk& disk) {
  disk_ = &disk;
  const QueueLimits& lim = disk.limits();
  if (lim.max_segment_size == 0) throw Error("queue: max_segment_size must not be 0");
}

std::string Queue::describe() const {
  const TagSetConfig& c = tag_set_->config();
  return fmt::format(
      "mq hw_queues={}{} depth={}{} sched={}", c.nr_hw_queues,
      c.nr_poll_queues ? fmt::format(" poll_queues={}", c.nr_poll_queues) : "",
      c.queue_depth, c.shared_tags ? " shared_tags" : "", scheduler_name());
}

HwQueue& Queue::map_queue(const Bio& bio) const {
  const SoftwareQueue& ctx = ctxs_[this_slot().index];
  // The submit path cleared kPolled if there are no poll queues.
  return bio.has_flag(BioFlag::kPolled) ? *ctx.poll_hctx : *ctx.hctx;
}
SoftwareQueue& Queue::this_ctx() { return ctxs_[this_slot().index]; }

// --- submission -----------------------------------------------------------------

void Queue::submit(Bio& bio) {
  // The bio holds the disk (and so this queue) from submit_bio() until it
  // completes; freezing and removal wait for it (Disk::freeze).
  HwQueue& hctx = map_queue(bio);
  if (nomerges() != 2 && try_merge_somewhere(hctx, bio)) return;
  if (sched_) {
    submit_sched(hctx, bio);
    return;
  }
  Tags& tags = hctx.tags();
  Plug* plug = Plug::current();
  const int tag = plug ? plug->take_tag(tags) : tags.alloc.try_get();
  if (tag < 0) [[unlikely]] {
    if (bio.has_flag(BioFlag::kNowait)) {
      bio.complete(Status::kAgain);
      return;
    }
    // Our own plugged requests may be what holds the tags.
    if (plug) plug->flush();
    park_for_tag(hctx, bio, tags);
    return;
  }
  Request& rq = tags.requests[tag];
  init_request(rq, hctx, bio, Plug::time_ns());
  queue_request(hctx, rq, /*allow_plug=*/true);
}

void Queue::submit_sched(HwQueue& hctx, Bio& bio) {
  if (bio.issuer() == 0) bio.set_issuer(this_thread_issuer());
  // No tag batching through the plug here: spare scheduler tags held by a
  // plug could outlive a scheduler switch.
  Tags& tags = *hctx.sched_tags();
  const unsigned limit = sched_->limit_depth(bio);
  const int tag = limit ? tags.alloc.try_get_below(limit) : tags.alloc.try_get();
  if (tag < 0) [[unlikely]] {
    if (bio.has_flag(BioFlag::kNowait)) {
      bio.complete(Status::kAgain);
      return;
    }
    Plug::flush_current();  // our own plugged requests may hold the tags
    park_for_tag(hctx, bio, tags, limit);
    return;
  }
  Request& rq = tags.requests[tag];
  init_request(rq, hctx, bio, Plug::time_ns());
  queue_request(hctx, rq, /*allow_plug=*/true);
}

void Queue::init_request(Request& rq, HwQueue& hctx, Bio& bio, uint64_t now) {
  rq.op_ = bio.op();
  rq.flags_ = bio.flags();
  rq.set_state(Request::State::kIdle, std::memory_order_relaxed);
  rq.error_ = Status::kOk;
  rq.nr_segments_ = static_cast<uint16_t>(
      op_has_data(bio.op()) ? bio_hw_segments(bio, limits().max_segment_size) : 0);
  rq.flush_seq_ = 0;
  rq.flush_policy_ = 0;
  rq.internal_flush_ = false;
  rq.sector_ = bio.sector();
  rq.bytes_ = bio.size();
  rq.stats_sectors_ = bio.sectors();
  rq.alloc_ns_ = now;
  rq.start_ns_ = 0;
  rq.head_ = rq.tail_ = &bio;
  bio.next = nullptr;
  rq.hctx_ = &hctx;
  rq.queue_ = this;
  rq.ioprio_ = bio.ioprio();
  rq.issuer_ = bio.issuer();
  rq.next = rq.prev = nullptr;
  if (rq.internal_tag_ >= 0) sched_->prepare_request(rq);
}

void Queue::queue_request(HwQueue& hctx, Request& rq, bool allow_plug) {
  if ((rq.op_ == Op::kFlush || any(rq.flags_ & kNoMergeFlags)) && flush_->insert(rq)) {
    // The request did not go into the plug. Spare tags the plug took with
    // it must not stay there unless a plugged request of this queue holds
    // the disk: once this request ends the disk may be gone.
    if (Plug* plug = Plug::current(); plug && plug->last_for(*this) == nullptr) {
      plug->return_tags();
    }
    return;
  }
  if (allow_plug) {
    if (Plug* plug = Plug::current()) {
      plug->add(rq);
      return;
    }
  }
  if (sched_) {
    sched_insert(hctx, rq, /*at_head=*/false);
    hctx.run();
    return;
  }
  if (hctx.idle()) {
    // Straight to the driver, in this thread (blk_mq_try_issue_directly).
    Issue r = issue(hctx, rq, /*last=*/true, rq.alloc_ns_);
    if (r != Issue::kIssued) {
      hctx.add_to_dispatch(rq, /*at_head=*/true);
      hctx.after_refusal(r);
    }
    return;
  }
  insert(hctx, rq, /*at_head=*/false);
  hctx.run();
}

void Queue::sched_insert(HwQueue& hctx, Request& rq, bool at_head) {
  RequestList one;
  one.push_back(&rq);
  sched_->insert(hctx, one, at_head);
}

void Queue::insert(HwQueue& hctx, Request& rq, bool at_head) {
  if (sched_ && rq.flush_policy_ == 0 && !rq.internal_flush_) {
    sched_insert(hctx, rq, at_head);
    return;
  }
  SoftwareQueue& ctx = this_ctx();
  if (ctx.hctx != &hctx || at_head) {
    // Not this thread's hardware queue (a parked bio resumed by another
    // thread), or a requeue that must go first: the dispatch list.
    hctx.add_to_dispatch(rq, at_head);
    return;
  }
  {
    std::lock_guard lock(ctx.lock);
    ctx.list.push_back(&rq);
    ctx.count.fetch_add(1, std::memory_order_relaxed);
  }
  hctx.mark_pending(ctx.index);
}

void Queue::dispatch_internal(Request& rq) {
  HwQueue& hctx = rq.hctx();
  hctx.add_to_dispatch(rq, /*at_head=*/true);
  hctx.run();
}

Queue::Issue Queue::issue(HwQueue& hctx, Request& rq, bool last, uint64_t now) {
  if (hctx.stopped()) return Issue::kBusy;
  rq.start_ns_ = now;
  rq.deadline_ns_.store(now + tag_set_->config().timeout_ns, std::memory_order_relaxed);
  // The driver's now, in a new generation: a timeout scan that looked at an
  // earlier issue of this request (this tag) cannot claim this one.
  const uint64_t word = rq.state_.load(std::memory_order_relaxed);
  rq.state_.store(Request::with_state(word + (uint64_t{1} << Request::kGenerationShift),
                                      Request::State::kInFlight),
                  std::memory_order_release);
  disk_->account_request_start(now);
  // A start() from here on may be the answer to a busy refusal.
  const uint32_t starts = hctx.starts_.load(std::memory_order_relaxed);
  Status r;
  {
    debug::SubmitScope scope(disk_->name().c_str());
    r = driver().queue_rq(hctx, rq, last);
  }
  if (r == Status::kOk) [[likely]]
    return Issue::kIssued;
  if (r != Status::kResource && r != Status::kDeviceResource) {
    rq.end_request_all(r);
    return Issue::kIssued;  // consumed (failed)
  }
  if (r == Status::kDeviceResource) {
    hctx.stop_after_busy(starts);  // the driver restarts it with HwQueue::start()
  }
  // The driver did not take the request: take it back. If the timeout
  // claimed it meanwhile (queue_rq outlived the deadline), the timeout
  // requeues it once the driver's handler returns: it is not ours to put
  // back, and for the caller it is gone. The driver was told `last` but
  // took nothing: if this ended a batch, ring for the requests before it,
  // as the caller does after a refusal.
  Status ignored = Status::kOk;
  if (!claim_from_driver(rq, Handback::kRequeue, ignored)) [[unlikely]] {
    if (last) driver().commit_rqs(hctx);
    return Issue::kIssued;
  }
  // The caller puts it back and then calls HwQueue::after_refusal(), in that
  // order, so no re-run is missed.
  return r == Status::kResource ? Issue::kRequeue : Issue::kBusy;
}

void Queue::leave_driver(Request& rq) {
  rq.set_state(Request::State::kIdle);
  // A flush stage of a scheduler request, or the flush itself: the driver
  // tag goes back while it waits for the next stage (Linux's flush_end_io).
  put_driver_tag(rq);
  rq.hctx_->restart_if_needed();
}

void Queue::issue_plugged(RequestList& list) {
  // Not inside submit_bio(): publish that this thread is in the queue, so
  // removal waits for it even if the last request completes meanwhile.
  Disk::SubmitGuard guard(*disk_);
  if (sched_) {
    while (!list.empty()) {
      HwQueue& hctx = *list.front()->hctx_;
      RequestList batch =
          list.extract_if([&](const Request& rq) { return rq.hctx_ == &hctx; });
      sched_->insert(hctx, batch, /*at_head=*/false);
      hctx.run();
    }
    return;
  }
  // Usually one hardware queue: send the batch with `last` on its final
  // request, so a driver can ring one doorbell for all.
  while (!list.empty()) {
    HwQueue& hctx = *list.front()->hctx_;
    RequestList batch =
        list.extract_if([&](const Request& rq) { return rq.hctx_ == &hctx; });
    if (hctx.idle()) {
      hctx.dispatch_list(batch);
    } else {
      while (Request* rq = batch.pop_front()) hctx.add_to_dispatch(*rq, false);
      hctx.run();
    }
  }
}

// --- merging ---------------------------------------------------------------------

Queue::Merge Queue::can_merge(const Request& rq, const Bio& bio) const {
  if (rq.op_ != bio.op() || !op_has_data(rq.op_)) return Merge::kNone;
  if (rq.flush_policy_ != 0 || rq.internal_flush_ || any(rq.flags_ & kNoMergeFlags) ||
      any(bio.flags() & kNoMergeFlags))
    return Merge::kNone;
  // A polled bio in an unpolled request would complete unasked, and an
  // unpolled one in a polled request would wait for a poller.
  if (any(rq.flags_ & BioFlag::kPolled) != bio.has_flag(BioFlag::kPolled))
    return Merge::kNone;
  if (rq.ioprio_ != bio.ioprio()) return Merge::kNone;
  if (Request::state_of(rq.state_.load(std::memory_order_relaxed)) !=
      Request::State::kIdle)
    return Merge::kNone;
  Merge where;
  if (rq.sector_ + rq.sectors() == bio.sector()) {
    where = Merge::kBack;
  } else if (bio.end_sector() == rq.sector_) {
    where = Merge::kFront;
  } else {
    return Merge::kNone;
  }
  const QueueLimits& lim = limits();
  if (uint64_t{rq.sectors()} + bio.sectors() > lim.max_io_sectors()) return Merge::kNone;
  if (rq.nr_segments_ + bio_hw_segments(bio, lim.max_segment_size) > lim.max_segments)
    return Merge::kNone;
  return where;
}

void Queue::merge_bio(Request& rq, Bio& bio, Merge where) {
  rq.nr_segments_ = static_cast<uint16_t>(
      rq.nr_segments_ + bio_hw_segments(bio, limits().max_segment_size));
  if (where == Merge::kBack) {
    bio.next = nullptr;
    rq.tail_->next = &bio;
    rq.tail_ = &bio;
  } else {
    bio.next = rq.head_;
    rq.head_ = &bio;
    rq.sector_ = bio.sector();
  }
  rq.bytes_ += bio.size();
  rq.stats_sectors_ += bio.sectors();
  rq.flags_ |= bio.flags() & (BioFlag::kSync | BioFlag::kMeta | BioFlag::kPrio);
  disk_->account_merge(rq.op_);
}

bool Queue::requests_mergeable(const Request& rq, const Request& next) const {
  if (nomerges() != 0) return false;  // request merges only with all merges on
  if (rq.op_ != next.op_ || !op_has_data(rq.op_)) return false;
  if (rq.sector_ + rq.sectors() != next.sector_) return false;
  if (rq.flush_policy_ || next.flush_policy_ ||
      any((rq.flags_ | next.flags_) & kNoMergeFlags))
    return false;
  if (rq.hctx_ != next.hctx_) return false;  // a polled and an unpolled one
  if (rq.ioprio_ != next.ioprio_) return false;
  const QueueLimits& lim = limits();
  if (uint64_t{rq.sectors()} + next.sectors() > lim.max_io_sectors()) return false;
  return rq.nr_segments_ + next.nr_segments_ <= lim.max_segments;
}

void Queue::merge_requests(Request& rq, Request& next) {
  absorb_request(rq, next);
  free_request(next);
}

void Queue::absorb_request(Request& rq, Request& next) {
  rq.tail_->next = next.head_;
  rq.tail_ = next.tail_;
  rq.bytes_ += next.bytes_;
  rq.stats_sectors_ += next.stats_sectors_;
  rq.nr_segments_ = static_cast<uint16_t>(rq.nr_segments_ + next.nr_segments_);
  if (next.alloc_ns_ < rq.alloc_ns_) rq.alloc_ns_ = next.alloc_ns_;
  next.head_ = next.tail_ = nullptr;
  next.bytes_ = 0;
  if (sched_) sched_->requests_merged(rq, next);
  disk_->account_merge(rq.op_);
  // `next` never reached the driver: it goes back without completing bios.
  next.set_state(Request::State::kComplete, std::memory_order_relaxed);
}

bool Queue::try_merge_requests(Request& rq, Request& next) {
  if (!requests_mergeable(rq, next)) return false;
  merge_requests(rq, next);
  return true;
}

bool Queue::try_merge_somewhere(HwQueue& hctx, Bio& bio) {
  if (!op_has_data(bio.op()) || any(bio.flags() & kNoMergeFlags)) return false;
  if (Plug* plug = Plug::current()) {
    if (Request* rq = plug->last_for(*this)) {
      Merge m = can_merge(*rq, bio);
      if (m != Merge::kNone) {
        merge_bio(*rq, bio, m);
        return true;
      }
    }
  }
  if (sched_) return sched_->bio_merge(*this, hctx, bio);
  return try_ctx_merge(this_ctx(), bio);
}

bool Queue::try_ctx_merge(SoftwareQueue& ctx, Bio& bio) {
  if (ctx.count.load(std::memory_order_relaxed) == 0) return false;
  bool merged = false;
  // A request merged into its neighbour is freed after the lock: freeing
  // its tag may resume a bio parked for one right here, and that bio's
  // request may go into this very software queue (insert takes ctx.lock).
  Request* absorbed = nullptr;
  {
    std::lock_guard lock(ctx.lock);
    // nomerges=1 tries only the most recent request (the one-hit cache).
    int budget = nomerges() == 1 ? 1 : kMergeScan;
    for (Request* rq = ctx.list.back(); rq != nullptr && budget-- > 0; rq = rq->prev) {
      Merge m = can_merge(*rq, bio);
      if (m == Merge::kNone) continue;
      merge_bio(*rq, bio, m);
      merged = true;
      // The grown request may now touch its neighbour in the list.
      Request* other = m == Merge::kBack ? rq->next : rq->prev;
      if (other) {
        Request& front = m == Merge::kBack ? *rq : *other;
        Request& back = m == Merge::kBack ? *other : *rq;
        if (requests_mergeable(front, back)) {
          ctx.list.remove(&back);
          ctx.count.fetch_sub(1, std::memory_order_relaxed);
          absorb_request(front, back);
          absorbed = &back;
        }
      }
      break;
    }
  }
  if (absorbed) free_request(*absorbed);
  return merged;
}

// --- completion ------------------------------------------------------------------

bool Queue::claim_from_driver(Request& rq, Handback what, Status& status) {
  using State = Request::State;
  const State to = what == Handback::kComplete ? State::kComplete : State::kIdle;
  uint64_t word = rq.state_.load(std::memory_order_relaxed);
  for (;;) {
    const State state = Request::state_of(word);
    if (state == State::kInFlight || state == State::kExpired) [[likely]] {
      // acquire: what the issuing thread wrote before handing it over.
      if (rq.state_.compare_exchange_weak(word, Request::with_state(word, to),
                                          std::memory_order_acq_rel,
                                          std::memory_order_relaxed)) {
        if ((word & Request::kFailAsTimeout) && what == Handback::kComplete) {
          status = Status::kTimeout;
        }
        return true;
      }
      continue;
    }
    if (state != State::kTimedOut) break;  // the queue's, or finished: not the driver's
    if (tls_timeout_scope != nullptr && tls_timeout_scope->rq == &rq) {
      // The handler ends or requeues the request itself. It wins; what the
      // driver handed back meanwhile is dropped. Only once: the tag is free
      // now, and if this request is reissued and times out again under
      // another worker while this handler still runs, its end on this
      // thread is a completion like any other.
      tls_timeout_scope->handed_back = true;
      tls_timeout_scope->rq = nullptr;
      rq.set_state(to);
      return true;
    }
    if (word & (Request::kDeferredComplete | Request::kDeferredRequeue))
      break;  // handed back twice
    const uint64_t deferred = what == Handback::kComplete
                                  ? word | Request::kDeferredComplete |
                                        uint64_t{static_cast<uint8_t>(status)}
                                            << Request::kDeferredStatusShift
                                  : word | Request::kDeferredRequeue;
    // release: the timeout thread ends the bios; what this thread wrote
    // into them (the data) must be visible there.
    if (rq.state_.compare_exchange_weak(word, deferred, std::memory_order_release,
                                        std::memory_order_relaxed)) {
      return false;
    }
  }
  debug::fatal(
      fmt::format("request (tag {}, {} at sector {}) on '{}' {} but the driver did not "
                  "have it (completed twice?)",
                  rq.tag_, op_name(rq.op_), rq.sector_, disk_->name(),
                  what == Handback::kComplete ? "completed" : "requeued"));
}

void Queue::end_from_driver(Request& rq, Status status) {
  if (!claim_from_driver(rq, Handback::kComplete, status)) [[unlikely]]
    return;
  end_claimed(rq, status);
}

void Queue::end_claimed(Request& rq, Status status) {
  if (status != Status::kOk && rq.error_ == Status::kOk) rq.error_ = status;
  if (rq.internal_flush_) {
    flush_->flush_done(rq, rq.error_);
  } else if (rq.flush_policy_ != 0) {
    rq.bytes_ = 0;
    flush_->data_done(rq, rq.error_);
  } else {
    rq.bytes_ = 0;
    finish_request(rq, status);
  }
}

void Queue::finish_request(Request& rq, Status status) {
  // The caller owns the request: the driver handed it back (claimed in
  // end_from_driver) or it never reached the driver (the flush machine).
  // From here a hand-back from the driver is a second completion.
  rq.set_state(Request::State::kComplete, std::memory_order_relaxed);
  HwQueue& hctx = *rq.hctx_;
  // Take the bios off first: once the tag is free the request may be
  // reused, and once the last bio has ended the disk (with this queue) may
  // be gone, so ending them is the very last thing done here.
  Bio* bios = rq.head_;
  rq.head_ = rq.tail_ = nullptr;
  const uint64_t now = Plug::time_ns();
  disk_->account_request_done(rq.op_, rq.stats_sectors_, rq.alloc_ns_, now);
  if (rq.internal_tag_ >= 0) sched_->completed(rq, now);
  hctx.restart_if_needed();
  free_request(rq);
  while (Bio* b = bios) {
    bios = b->next;
    b->next = nullptr;
    b->complete(status);
  }
}

void Queue::free_request(Request& rq) {
  if (rq.internal_tag_ >= 0) {
    free_sched_request(rq);
    return;
  }
  Tags& tags = rq.hctx_->tags();
  if (TagFreeBatch* batch = TagFreeBatch::current()) {
    if (batch->hold(tags, rq.tag_)) return;
    if (Tags* held = batch->release()) wake_tag_waiters_if_any(*held);
    if (batch->hold(tags, rq.tag_)) return;
  }
  tags.alloc.put(rq.tag_);
  wake_tag_waiters_if_any(tags);
}

void Queue::free_sched_request(Request& rq) {
  sched_->finish_request(rq);
  put_driver_tag(rq);
  // Not through a TagFreeBatch: the batch may outlive the last bio, and
  // with it a scheduler switch that frees these tags.
  Tags& tags = *rq.hctx_->sched_tags();
  tags.alloc.put(rq.internal_tag_);
  wake_tag_waiters_if_any(tags);
}

void Queue::put_driver_tag(Request& rq) {
  if (rq.internal_tag_ < 0 || rq.tag_ < 0) return;
  Tags& tags = rq.hctx_->tags();
  tags.alloc.put(rq.tag_);
  rq.tag_ = -1;
  wake_tag_waiters_if_any(tags);
}

void Queue::wake_tag_waiters_if_any(Tags& tags) {
  // seq_cst, after the tag's seq_cst release: pairs with park_for_tag().
  if (tags.nr_waiters.load(std::memory_order_seq_cst) != 0) wake_tag_waiters(tags);
}

void Queue::park_for_tag(HwQueue& hctx, Bio& bio, Tags& tags, unsigned limit) {
  // The hardware queue, and the scheduler's depth limit for the bio (0:
  // none) for the waker, which must not call into the scheduler.
  bio.driver_data = hctx.index() | uint64_t{limit} << 32;
  {
    std::lock_guard lock(tags.wait_lock);
    tags.waiters.push_back(&bio);
    tags.nr_waiters.fetch_add(1, std::memory_order_seq_cst);
  }
  // A tag freed between our failed try and the push saw no waiter: look
  // again now that we are visible (pairs with free_request's check).
  wake_tag_waiters(tags);
}

Bio* Queue::take_tag_for_waiter(Tags& tags, int& tag) {
  // Oldest first; a bio limited to the low tags (a scheduler's
  // limit_depth) that finds none of those lets a later one go ahead, as
  // the kernel's shallow waiters do: synchronous reads never wait behind
  // throttled writes.
  for (Bio* b = tags.waiters.front(); b != nullptr; b = b->next) {
    const auto limit = static_cast<unsigned>(b->driver_data >> 32);
    tag = limit ? tags.alloc.try_get_below(limit) : tags.alloc.try_get();
    if (tag >= 0) {
      tags.waiters.remove(b);
      return b;
    }
    if (limit == 0) return nullptr;  // no tag at all
  }
  return nullptr;
}

void Queue::wake_tag_waiters(Tags& tags) {
  if (tls_waking_tags == &tags) {
    tls_rewake = true;  // the loop below picks it up
    return;
  }
  const Tags* saved = tls_waking_tags;
  const bool saved_rewake = tls_rewake;
  tls_waking_tags = &tags;
  for (;;) {
    // Hardware queues waiting for a driver tag: run each once. One that
    // finds none puts itself back; it is run again only if a tag is freed
    // during this pass (tls_rewake), so this never spins.
    tls_rewake = false;
    unsigned nr_hctx;
    {
      std::lock_guard lock(tags.wait_lock);
      nr_hctx = 0;
      for (HwQueue* h = tags.hctx_waiters; h != nullptr; h = h->next_tag_waiter_)
        ++nr_hctx;
    }
    while (nr_hctx-- > 0) {
      HwQueue* h;
      {
        std::lock_guard lock(tags.wait_lock);
        h = tags.hctx_waiters;
        if (h == nullptr) break;
        tags.hctx_waiters = h->next_tag_waiter_;
        h->waiting_for_tag_ = false;
        tags.nr_waiters.fetch_sub(1, std::memory_order_relaxed);
        h->tag_wake_runs_.fetch_add(1, std::memory_order_relaxed);
      }
#ifdef BLKSTACK_DEBUG_CHECKS
      if (auto hook = hctx_wake_hook.load(std::memory_order_acquire)) hook(*h);
#endif
      h->run();
      // release: the teardown that sees 0 sees this run done.
      h->tag_wake_runs_.fetch_sub(1, std::memory_order_release);
    }
    Bio* bio;
    int tag;
    {
      std::lock_guard lock(tags.wait_lock);
      if (tags.waiters.empty()) {
        if (tls_rewake && tags.hctx_waiters != nullptr) continue;
        break;
      }
      bio = take_tag_for_waiter(tags, tag);
      if (bio == nullptr) {
        if (tls_rewake && tags.hctx_waiters != nullptr) continue;
        break;
      }
      tags.nr_waiters.fetch_sub(1, std::memory_order_relaxed);
    }
    // With a tag set shared by several queues, the bio names its own.
    Queue& q = static_cast<Queue&>(bio->disk()->driver());
    HwQueue& hctx = q.hw_queue(static_cast<uint32_t>(bio->driver_data));
    Request& rq = tags.requests[tag];
    q.init_request(rq, hctx, *bio, Plug::time_ns());
    q.queue_request(hctx, rq, /*allow_plug=*/false);
  }
  tls_waking_tags = saved;
  tls_rewake = saved_rewake;
}

// --- freezing, stopping, dying -----------------------------------------------------

void Queue::freeze() {
  Plug::flush_current();  // our own plugged requests must drain too
  run_hw_queues();
  disk_->freeze();
}

void Queue::unfreeze() { disk_->unfreeze(); }

bool Queue::cancel(Bio& bio) {
  std::lock_guard sched_lock(sched_lock_);
  const unsigned nr_driver = tag_set_->nr_tag_spaces();
  for (unsigned s = 0; s < nr_driver + sched_tags_.size(); ++s) {
    Tags& tags = s < nr_driver ? tag_set_->tag_space(s) : *sched_tags_[s - nr_driver];
    if (tags.nr_waiters.load(std::memory_order_acquire) == 0) continue;
    std::lock_guard lock(tags.wait_lock);
    // Pieces split off it are already issued: it is under way. Read under
    // the lock it was parked with, so a split just before parking is seen.
    if (bio.has_chained_children()) return false;
    if (tags.waiters.remove(&bio)) {
      tags.nr_waiters.fetch_sub(1, std::memory_order_relaxed);
      return true;
    }
  }
  return false;
}

void Queue::shutdown() {
  // Requests waiting on stopped hardware queues would never drain.
  run_hw_queues();
  driver().shutdown();
}

void Queue::stop_hw_queues() {
  for (auto& h : hctxs_) h->stop();
}

void Queue::start_stopped_hw_queues() {
  for (auto& h : hctxs_) {
    if (h->stopped()) h->start();
  }
}

void Queue::run_hw_queues() {
  for (auto& h : hctxs_) h->run();
}

int Queue::poll(uint64_t wait_ns) {
  if (poll_hctxs_.size() == 1) return driver().poll(*poll_hctxs_[0], wait_ns);
  int done = 0;
  bool busy = false;
  for (HwQueue* h : poll_hctxs_) {
    const int r = driver().poll(*h, 0);
    if (r == kPollBusy)
      busy = true;
    else
      done += r;
  }
  return done == 0 && busy ? kPollBusy : done;
}

void Queue::quiesce() {
  for (auto& h : hctxs_) h->quiesce();
}

void Queue::unquiesce() {
  for (auto& h : hctxs_) h->unquiesce();
}

void Queue::make_sched_tags(const SchedulerType* type) {
  for (auto& h : hctxs_) h->sched_tags_ = nullptr;
  sched_tags_.clear();
  if (type == nullptr) return;
  const TagSetConfig& c = tag_set_->config();
  for (auto& h : hctxs_) {
    // Scheduler requests are what the driver gets: they carry its pdu too.
    sched_tags_.push_back(std::make_unique<Tags>(nr_requests_, c.cmd_size,
                                                 type->sched_size,
                                                 /*sched=*/true));
    Tags& tags = *sched_tags_.back();
    for (unsigned t = 0; t < tags.depth; ++t) driver().init_request(tags.requests[t]);
    h->sched_tags_ = &tags;
  }
}

void Queue::set_scheduler(std::string_view name) {
  const SchedulerType& type = find_scheduler_type(name);
  // Frozen: no request exists. Quiesced: no run() is inside the old
  // scheduler (the worker or a driver's start() may run a queue anytime).
  freeze();
  quiesce();
  {
    std::lock_guard lock(sched_lock_);
    if (sched_) {
      for (auto& h : hctxs_) sched_->exit_hctx(*h);
    }
    sched_.reset();
    sched_type_ = nullptr;
    make_sched_tags(nullptr);
    if (type.create) {
      make_sched_tags(&type);
      sched_ = type.create(*this);
      sched_type_ = &type;
      for (auto& h : hctxs_) sched_->init_hctx(*h);
    }
    sched_name_ = std::string(type.name);
  }
  unquiesce();
  unfreeze();
}

void Queue::set_nr_requests(unsigned n) {
  if (n < 1 || n > kMaxNrRequests) {
    throw Error(
        fmt::format("nr_requests must be from 1 to {}, not {}", kMaxNrRequests, n));
  }
  if (!sched_) {
    nr_requests_ = n;
    return;
  }
  freeze();
  quiesce();
  {
    std::lock_guard lock(sched_lock_);
    nr_requests_ = n;
    make_sched_tags(sched_type_);
    for (auto& h : hctxs_) sched_->depth_updated(*h);
  }
  unquiesce();
  unfreeze();
}

std::string Queue::scheduler_name() const { return sched_name_; }

void Queue::set_nomerges(unsigned v) {
  if (v > 2) throw Error(fmt::format("nomerges must be 0, 1 or 2, not {}", v));
  nomerges_.store(v, std::memory_order_relaxed);
}

// --- requeue and the worker ---------------------------------------------------------

void Queue::requeue_request(Request& rq, bool kick) {
  Status ignored = Status::kOk;
  if (!claim_from_driver(rq, Handback::kRequeue, ignored))
    return;  // the timeout carries it out
  add_to_requeue_list(rq, kick);
}

void Queue::add_to_requeue_list(Request& rq, bool kick) {
  rq.hctx_->restart_if_needed();
  {
    std::lock_guard lock(work_lock_);
    requeue_.push_back(&rq);
  }
  if (kick) kick_requeue_list(0);
}

void Queue::reinsert_requeued(Request& rq) {
  if (rq.internal_tag_ < 0) {
    rq.hctx_->add_to_dispatch(rq, /*at_head=*/false);
    return;
  }
  // As blk_mq_requeue_request: the driver tag goes back, and the request
  // goes through the scheduler again, first (flush stages: the dispatch
  // list, where they get a driver tag anew).
  put_driver_tag(rq);
  if (rq.flush_policy_ == 0 && !rq.internal_flush_) {
    sched_->requeue_request(rq);
    sched_insert(*rq.hctx_, rq, /*at_head=*/true);
  } else {
    rq.hctx_->add_to_dispatch(rq, /*at_head=*/true);
  }
}

void Queue::kick_requeue_list(uint64_t delay_ns) { schedule_work(now_ns() + delay_ns); }

void Queue::schedule_work(uint64_t at_ns) {
  {
    std::lock_guard lock(work_lock_);
    if (work_at_ns_ != 0 && work_at_ns_ <= at_ns) return;
    work_at_ns_ = at_ns;
  }
  work_cv_.notify_one();
}

void Queue::check_timeouts(uint64_t now) {
  // Every request of the tag set: with shared tags, also those of other
  // queues (whose workers look too; the claim makes one of them win).
  for (unsigned s = 0; s < tag_set_->nr_tag_spaces(); ++s) {
    Tags& tags = tag_set_->tag_space(s);
    for (unsigned t = 0; t < tags.depth; ++t) try_time_out(tags.requests[t], now);
  }
  {
    // With a scheduler, its requests are the ones the driver holds.
    std::lock_guard lock(sched_lock_);
    for (auto& tags : sched_tags_) {
      for (unsigned t = 0; t < tags->depth; ++t) try_time_out(tags->requests[t], now);
    }
  }
  try_time_out(flush_->flush_request(), now);
}

void Queue::try_time_out(Request& rq, uint64_t now) {
  uint64_t word = rq.state_.load(std::memory_order_acquire);
  if (Request::state_of(word) != Request::State::kInFlight) return;
  if (rq.deadline_ns_.load(std::memory_order_relaxed) > now) return;
  // Claim it as it was when looked at: this fails if it was completed,
  // requeued or refused since, or reissued (a new generation, whose
  // deadline was not the one read).
  if (!rq.state_.compare_exchange_strong(
          word, Request::with_state(word, Request::State::kTimedOut),
          std::memory_order_acq_rel, std::memory_order_relaxed)) {
    return;
  }
  // Ours now: its queue (another one, with shared tags) and fields are stable.
  rq.queue_->time_out(rq);
}

void Queue::time_out(Request& rq) {
  using State = Request::State;
  TimeoutScope scope{&rq, false};
  tls_timeout_scope = &scope;
  const TimeoutAction action = driver().timeout(rq);
  tls_timeout_scope = nullptr;
  if (scope.handed_back) {
    // Ended or requeued by the handler: gone, perhaps reused already.
    if (action == TimeoutAction::kResetTimer) {
      debug::fatal(
          fmt::format("driver of '{}': timeout() ended or requeued a request and then "
                      "asked for its timer to be reset",
                      disk_->name()));
    }
    return;
  }
  if (action == TimeoutAction::kResetTimer) {
    rq.deadline_ns_.store(now_ns() + tag_set_->config().timeout_ns,
                          std::memory_order_relaxed);
  }
  // Back to the driver, unless the driver handed the request back while
  // the handler ran: then carry that out now (acquire: the data it moved).
  uint64_t word = rq.state_.load(std::memory_order_acquire);
  for (;;) {
    if (word & Request::kDeferredComplete) {
      const Status status =
          action == TimeoutAction::kFailWhenDone
              ? Status::kTimeout
              : static_cast<Status>(word >> Request::kDeferredStatusShift & 0xff);
      rq.state_.store(Request::with_state(word, State::kComplete),
                      std::memory_order_relaxed);
      end_claimed(rq, status);
      return;
    }
    if (word & Request::kDeferredRequeue) {
      // Requeued, or refused while queue_rq outlived the deadline: it goes
      // out again with a fresh deadline, whatever the handler said.
      rq.state_.store(Request::with_state(word, State::kIdle), std::memory_order_relaxed);
      add_to_requeue_list(rq, /*kick=*/true);
      return;
    }
    // A new timer period is a new generation too: another queue's scan
    // (shared tags) that read the old deadline cannot claim it.
    uint64_t back = Request::with_state(word + (uint64_t{1} << Request::kGenerationShift),
                                        State::kInFlight);
    if (action != TimeoutAction::kResetTimer) {
      back = Request::with_state(word, State::kExpired) |
             (action == TimeoutAction::kFailWhenDone ? Request::kFailAsTimeout : 0);
    }
    if (rq.state_.compare_exchange_weak(word, back, std::memory_order_acq_rel,
                                        std::memory_order_acquire)) {
      return;
    }
  }
}

void Queue::worker_loop() {
  const uint64_t timeout = tag_set_->config().timeout_ns;
  // Check for timed-out requests a few times per timeout period.
  const uint64_t scan_every = std::clamp<uint64_t>(timeout / 4, 1'000'000, 1'000'000'000);
  uint64_t next_scan = now_ns() + scan_every;
  std::unique_lock lock(work_lock_);
  while (!work_stop_) {
    uint64_t now = now_ns();
    uint64_t wake = next_scan;
    if (work_at_ns_ != 0 && work_at_ns_ < wake) wake = work_at_ns_;
    if (wake > now) {
      work_cv_.wait_for(lock, std::chrono::nanoseconds(wake - now));
      continue;
    }
    if (work_at_ns_ != 0 && work_at_ns_ <= now) {
      work_at_ns_ = 0;
      RequestList requeued;
      requeued.splice_back(requeue_);
      lock.unlock();
      while (Request* rq = requeued.pop_front()) reinsert_requeued(*rq);
      run_hw_queues();
      lock.lock();
    }
    if (next_scan <= now) {
      next_scan = now + scan_every;
      lock.unlock();
      check_timeouts(now);
      lock.lock();
    }
  }
}

const TagSetConfig& Queue::config() const { return tag_set_->config(); }

}  // namespace blkstack
