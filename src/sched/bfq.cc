// bfq's hooks and policy: which queue is served, for how long, when to
// wait for it, and how budgets and weights adapt. The published rules, and
// the kernel's constants where they are named.
#include "sched/bfq.h"

#include <algorithm>

#include "blkstack/driver/queue.h"
#include "core/clock.h"
#include "queue/tag_set.h"

namespace blkstack {
namespace bfq {
namespace {

constexpr uint64_t kMs = 1'000'000;
// Requests spare in the pool beyond one queue per scheduler tag: history
// (weight raising, think time) of issuers that paused.
constexpr size_t kSpareQueues = 64;
// An async request costs this many times its sectors (bfq_async_charge_factor):
// synchronous I/O, which someone waits for, gets the larger share.
constexpr uint64_t kAsyncChargeFactor = 3;
// Weight conversion from an I/O priority level (BFQ_WEIGHT_CONVERSION_COEFF).
constexpr uint32_t kWeightCoeff = 10;
// Weight raising (low_latency).
constexpr uint32_t kWrCoeff = 30;                  // bfq_wr_coeff
constexpr uint32_t kSoftRtWeightFactor = 100;      // BFQ_SOFTRT_WEIGHT_FACTOR
constexpr uint64_t kWrRtMaxTimeNs = 300 * kMs;     // bfq_wr_rt_max_time
constexpr uint64_t kWrMinIdleTimeNs = 2000 * kMs;  // bfq_wr_min_idle_time
constexpr uint64_t kWrMaxSoftRtRate = 7000;        // sectors/s, bfq_wr_max_softrt_rate
// An interactive queue stays raised for the time a reference device needs
// to load a large application, scaled by how much faster this one is,
// within 3..25 s (bfq_wr_duration). The reference product is our
// assumption (the kernel's table of reference rates and durations is not
// reproduced): 7 s at 32 MiB/s.
constexpr double kWrRefRate = 65536;  // sectors/s
constexpr uint64_t kWrRefDurationNs = 7000 * kMs;
constexpr uint64_t kWrMinDurationNs = 3000 * kMs, kWrMaxDurationNs = 25000 * kMs;
// Raising ends after this much service (max_service_from_wr); value assumed.
constexpr uint64_t kMaxServiceFromWr = 120000;
// The idle class is served at least this often (BFQ_CL_IDLE_TIMEOUT).
constexpr uint64_t kIdleClassTimeoutNs = 200 * kMs;
// Seekiness (BFQQ_SEEK_THR, BFQQ_SECT_THR_NONROT).
constexpr uint64_t kSeekThreshold = 8 * 100;
constexpr uint32_t kSmallRequestNonRot = 8;
// Think-time samples are valid past this (bfq_sample_valid).
constexpr uint64_t kValidSamples = 80;
// Peak-rate sampling: windows of at least this long and this many requests;
// a device idle this long starts a new window.
constexpr uint64_t kRateWindowNs = 100 * kMs;
constexpr uint32_t kRateWindowRequests = 32;
constexpr uint64_t kRateIdleResetNs = 20 * kMs;
// A device with more requests than this in flight queues them itself (hw_tag).
constexpr unsigned kHwTagDepth = 3;

uint64_t default_clock() { return now_ns(); }

}  // namespace

void BfqScheduler::After::operator()() const {
  if (timer) timer->run_after(timer_ns);
  if (run) run->run();
}

BfqScheduler::BfqScheduler(Queue& q) : queue_(q), clock_(default_clock) {
  for (unsigned c = 0; c < kNrClasses; ++c) {
    for (unsigned l = 0; l < kIoprioNrLevels; ++l) {
      BfqQueue& a = async_[c][l];
      a.sync = false;
      a.ioclass = a.new_ioclass = static_cast<IoClass>(c);
      a.orig_weight = a.new_weight = (kIoprioNrLevels - l) * kWeightCoeff;
    }
  }
}

// --- queues ---------------------------------------------------------------------

void BfqScheduler::rebuild() {
  // Frozen: no request exists. Queues and trees start over.
  const size_t want = size_t{queue_.nr_requests()} * queue_.nr_hw_queues() + kSpareQueues;
  std::lock_guard lock(mu_);
  for (ServiceTree& t : trees_) t = ServiceTree{};
  for (auto& cls : async_) {
    for (BfqQueue& a : cls) {
      a.on = BfqQueue::Tree::kNone;
      a.weight = 0;
      a.tree_next = a.tree_prev = nullptr;
    }
  }
  in_service_ = nullptr;
  set_waiting(false);
  stalled_ = false;
  busy_queues_ = wr_busy_queues_ = 0;
  // Every pooled queue too, whatever the size: one left on a tree (the
  // idle list, in service) would carry links and a weight the new trees
  // do not know.
  pool_.reset(want);
}

void BfqScheduler::init_hctx(HwQueue&) { rebuild(); }
void BfqScheduler::depth_updated(HwQueue&) { rebuild(); }

bool BfqScheduler::is_sync(Op op, BioFlag flags) {
  // op_is_sync: reads, and writes someone waits for.
  return !op_is_write(op) ||
         any(flags & (BioFlag::kSync | BioFlag::kFua | BioFlag::kPreflush));
}

IoClass BfqScheduler::class_of(uint16_t ioprio) {
  switch (ioprio_class(ioprio)) {
    case IoprioClass::kRealtime:
      return kClassRt;
    case IoprioClass::kIdle:
      return kClassIdle;
    default:
      return kClassBe;
  }
}

uint32_t BfqScheduler::weight_for(IssuerId issuer, uint16_t ioprio, bool sync) const {
  if (sync) {
    for (const auto& [id, w] : weights_) {
      if (id == issuer) return w;
    }
  }
  // A set priority converts as the kernel's bfq_ioprio_to_weight; none set
  // is the default weight (io.bfq.weight's default).
  if (ioprio_class(ioprio) == IoprioClass::kNone) return default_weight_;
  return (kIoprioNrLevels - ioprio_level(ioprio)) * kWeightCoeff;
}

void BfqScheduler::set_ioprio(BfqQueue& q, uint16_t ioprio) {
  q.ioprio = ioprio;
  q.new_weight = weight_for(q.issuer, ioprio, q.sync);
  q.new_ioclass = class_of(ioprio);
}

BfqQueue* BfqScheduler::sync_queue(IssuerId issuer) {
  if (BfqQueue* q = pool_.find(issuer)) return q;
  BfqQueue* q = pool_.victim();  // never null: a queue per scheduler tag
  if (q->on != BfqQueue::Tree::kNone) trees_[q->ioclass].forget(*q);
  pool_.bind(*q, issuer);
  return q;
}

BfqQueue& BfqScheduler::async_queue(uint16_t ioprio) {
  const unsigned level = ioprio_class(ioprio) == IoprioClass::kNone
                             ? 4
                             : ioprio_level(ioprio);  // IOPRIO_NORM
  BfqQueue& a = async_[class_of(ioprio)][level];
  if (ioprio_class(ioprio) == IoprioClass::kNone) a.new_weight = default_weight_;
  return a;
}

void BfqScheduler::maybe_release(BfqQueue& q) {
  if (q.pooled && q.refs == 0 && &q != in_service_ && !q.busy()) pool_.release(q);
}

// --- a request's life -------------------------------------------------------------

void BfqScheduler::prepare_request(Request& rq) {
  // No lock here: insert() finds the request's queue (attach), which also
  // spares it for requests that never come to us (a flush sequence's).
  *priv(rq) = RqPriv{nullptr, nullptr, nullptr, 0, RqPriv::State::kPrepared};
}

void BfqScheduler::attach(Request& rq) {
  const bool sync = is_sync(rq.op(), rq.flags());
  BfqQueue* q = sync ? sync_queue(rq.issuer()) : &async_queue(rq.ioprio());
  if (q->refs == 0 && q->pooled) pool_.hold(*q);
  if (q->refs == 0 || q->ioprio != rq.ioprio()) set_ioprio(*q, rq.ioprio());
  q->refs++;
  priv(rq)->bfqq = q;
}

void BfqScheduler::detach(Request& rq) {
  RqPriv* p = priv(rq);
  BfqQueue* q = p->bfqq;
  p->state = RqPriv::State::kDone;
  p->bfqq = nullptr;
  q->refs--;
  maybe_release(*q);
}

void BfqScheduler::insert(HwQueue&, RequestList& list, bool at_head) {
  Lock lock(mu_);
  const uint64_t t = now();
  while (Request* rq = list.pop_front()) {
    RqPriv* p = priv(*rq);
    if (!p->bfqq) attach(*rq);  // a requeued one keeps its queue
    BfqQueue& q = *p->bfqq;
    if (!at_head) {
      update_think_time(q, t);
      update_seek(q, *rq);
      p->fifo_time = t + t_.fifo_expire_ns[q.sync];
    }
    p->state = RqPriv::State::kQueued;
    add_request(q, *rq, at_head);
    q.queued++;
    queued_.fetch_add(1, std::memory_order_relaxed);
    if (q.queued == 1) became_busy(q, t);
  }
}

void BfqScheduler::update_think_time(BfqQueue& q, uint64_t now) {
  // Think time: from its last completion to its next request, when it had
  // nothing else outstanding (bfq_update_io_thinktime; 7/8 decay, fixed
  // point with 256 per sample).
  if (q.queued != 0 || q.dispatched != 0 || q.last_end_ns == 0) return;
  const uint64_t elapsed =
      std::min(now - std::min(now, q.last_end_ns), 2 * t_.slice_idle_ns);
  q.ttime_samples = (7 * q.ttime_samples + 256) / 8;
  q.ttime_total = (7 * q.ttime_total + 256 * elapsed) / 8;
  q.ttime_mean = (q.ttime_total + 128) / q.ttime_samples;
}

bool BfqScheduler::short_think_time(const BfqQueue& q) const {
  return q.ttime_samples <= kValidSamples || q.ttime_mean <= t_.slice_idle_ns;
}

void BfqScheduler::update_seek(BfqQueue& q, const Request& rq) {
  if (q.has_last_pos) {
    const uint64_t d =
        rq.pos() > q.last_pos ? rq.pos() - q.last_pos : q.last_pos - rq.pos();
    const bool seek = d > kSeekThreshold &&
                      (queue_.limits().rotational || rq.sectors() < kSmallRequestNonRot);
    q.seek_history = q.seek_history << 1 | (seek ? 1u : 0u);
  }
  q.last_pos = rq.pos() + rq.sectors();
  q.has_last_pos = true;
}

uint64_t BfqScheduler::charge(const BfqQueue& q, const Request& rq) const {
  const uint64_t s = std::max<uint64_t>(1, rq.sectors());
  return q.sync || q.wr_coeff > 1 ? s : s * kAsyncChargeFactor;
}

uint64_t BfqScheduler::wr_duration() const {
  if (peak_rate_ <= 0) return kWrRefDurationNs;
  const double d = static_cast<double>(kWrRefDurationNs) * kWrRefRate / peak_rate_;
  return std::clamp(static_cast<uint64_t>(d), kWrMinDurationNs, kWrMaxDurationNs);
}

void BfqScheduler::end_weight_raising(BfqQueue& q) {
  if (q.wr_coeff == 1) return;
  if (q.busy() || &q == in_service_) wr_busy_queues_--;
  q.wr_coeff = 1;  // the weight drops at its next (re)activation
}

void BfqScheduler::update_weight_raising(BfqQueue& q, uint64_t now) {
  if (q.wr_coeff == 1) return;
  if (!t_.low_latency || now - q.wr_start_ns > q.wr_duration_ns ||
      q.service_from_wr > kMaxServiceFromWr) {
    end_weight_raising(q);
  }
}

void BfqScheduler::became_busy(BfqQueue& q, uint64_t now) {
  if (&q == in_service_) {
    // Its next request came while bfq idled for it (wait_request ends).
    set_waiting(false);
    return;
  }
  // Interactive: new, or idle for long (bfq_bfqq_idle_for_long_time). Soft
  // real-time: back no sooner than its rate allows (soft_rt_next_start).
  if (t_.low_latency && q.sync) {
    const bool idle_for_long =
        !q.ever_busy ||
        (q.dispatched == 0 && now > q.last_busy_end_ns + kWrMinIdleTimeNs);
    const bool soft_rt = q.seek_history != UINT32_MAX && q.dispatched == 0 &&
                         now >= q.soft_rt_next_start_ns;
    if (q.wr_coeff == 1 && (idle_for_long || soft_rt)) {
      q.wr_coeff = idle_for_long ? kWrCoeff : kWrCoeff * kSoftRtWeightFactor;
      q.wr_duration_ns = idle_for_long ? wr_duration() : kWrRtMaxTimeNs;
      q.wr_start_ns = now;
      q.service_from_wr = 0;
    } else if (q.wr_coeff > 1 && (idle_for_long || soft_rt)) {
      q.wr_start_ns = now;  // still deserves it: recharge the period
    }
  }
  q.ever_busy = true;
  q.last_idle_bklogged_ns = now;
  q.service_from_backlogged = 0;
  if (q.max_budget == 0)
    q.max_budget = 2 * max_budget_ / 3;  // tentative, as the kernel's
  q.budget = std::max(q.max_budget, charge(q, *q.sorted.front()));
  if (q.wr_coeff > 1) {
    // A budget close to its backlog: a small error in the schedule.
    q.budget =
        std::max(std::min(q.budget, 2 * min_budget()), charge(q, *q.sorted.front()));
    wr_busy_queues_++;
  }
  q.service = 0;
  if (q.on == BfqQueue::Tree::kNone) q.ioclass = q.new_ioclass;
  if (q.on == BfqQueue::Tree::kIdle && q.ioclass != q.new_ioclass) {
    trees_[q.ioclass].forget(q);
    q.ioclass = q.new_ioclass;
  }
  trees_[q.ioclass].activate(q);
  busy_queues_++;

  // The in-service queue may be idling for a request that will not come
  // soon: a queue that should not wait behind it takes the device.
  BfqQueue* s = in_service_;
  if (s && waiting_ && !s->busy() &&
      (q.ioclass < s->ioclass || q.wr_coeff > s->wr_coeff || !better_to_idle(*s))) {
    expire(*s, Expire::kPreempted, now);
  }
}

Request* BfqScheduler::dispatch(HwQueue& hctx) {
  After after;
  Request* out = nullptr;
  {
    Lock lock(mu_);
    const uint64_t t = now();
    while (queued_.load(std::memory_order_relaxed) != 0 || in_service_) {
      if (t_.strict_guarantees && in_driver_ > 0) {
        // One request at a time in the device: its order is then ours.
        stalled_ = true;
        break;
      }
      BfqQueue* q = in_service_;
      if (!q) {
        q = select_queue(t);
        if (!q) break;
        set_in_service(*q, t);
      }
      const bool must_idle = !q->busy() && better_to_idle(*q);
      if (may_expire_for_budget_timeout(*q, t) && !must_idle) {
        expire(*q, Expire::kBudgetTimeout, t);
        continue;
      }
      if (q->busy()) {
        Request* rq = next_request(*q, t);
        if (q->service > 0 && q->service + charge(*q, *rq) > q->budget) {
          expire(*q, Expire::kBudgetExhausted, t);
          continue;
        }
        set_waiting(false);
        dispatch_request(*q, *rq, t);
        out = rq;
        break;
      }
      // Empty in-service queue.
      if (waiting_) {
        if (t >= idle_deadline_ns_) {
          expire(*q, Expire::kTooIdle, t);
          continue;
        }
        // The timer may have been taken by an earlier deadline: re-arm.
        after.timer = &hctx;
        after.timer_ns = idle_deadline_ns_ - t;
        break;
      }
      if (must_idle) {
        if (q->dispatched > 0) {
          // Idle once its last request completes (completed() arms it).
          stalled_ = true;
        } else {
          set_waiting(true);
          idle_deadline_ns_ = t + t_.slice_idle_ns;
          after.timer = &hctx;
          after.timer_ns = t_.slice_idle_ns;
        }
        break;
      }
      expire(*q, Expire::kNoMoreRequests, t);
    }
  }
  after();
  return out;
}

bool BfqScheduler::has_work(const HwQueue&) const {
  // While idling, too: the idle timer's run must reach dispatch() to end
  // the wait even when nothing else is queued (bfq_idle_slice_timer).
  return queued_.load(std::memory_order_relaxed) != 0 ||
         waiting_.load(std::memory_order_relaxed);
}

BfqQueue* BfqScheduler::select_queue(uint64_t now) {
  // Real time first, then best effort, then idle; but the idle class is
  // served at least every kIdleClassTimeoutNs.
  if (trees_[kClassIdle].has_active() &&
      now - idle_class_last_service_ns_ > kIdleClassTimeoutNs) {
    idle_class_last_service_ns_ = now;
    return trees_[kClassIdle].select();
  }
  for (unsigned c = 0; c < kNrClasses; ++c) {
    if (BfqQueue* q = trees_[c].select()) {
      if (c == kClassIdle) idle_class_last_service_ns_ = now;
      return q;
    }
  }
  return nullptr;
}

void BfqScheduler::set_in_service(BfqQueue& q, uint64_t now) {
  in_service_ = &q;
  set_waiting(false);
  q.fifo_checked = false;
  q.in_service_since_ns = now;
  // An interactive raised queue gets a longer timeout, as its weight.
  const uint64_t coeff = q.wr_duration_ns == kWrRtMaxTimeNs ? 1 : q.wr_coeff;
  q.budget_timeout_ns = now + t_.timeout_ns * coeff;
}

Request* BfqScheduler::next_request(BfqQueue& q, uint64_t now) {
  // The FIFO is looked at once per round (bfq_check_fifo): an expired head
  // goes first; otherwise the sector order with the back-seek rules.
  if (!q.fifo_checked) {
    q.fifo_checked = true;
    if (q.fifo_head && now >= priv(*q.fifo_head)->fifo_time) return q.fifo_head;
  }
  return choose_next(q, last_position_, t_.back_seek_max_kib * 2, t_.back_seek_penalty);
}

void BfqScheduler::dispatch_request(BfqQueue& q, Request& rq, uint64_t now) {
  const uint64_t c = charge(q, rq);
  remove_request(q, rq);
  priv(rq)->state = RqPriv::State::kDispatched;
  q.queued--;
  queued_.fetch_sub(1, std::memory_order_relaxed);
  if (in_driver_ == 0 && now - std::min(now, last_completion_ns_) > kRateIdleResetNs) {
    rate_window_start_ns_ = now;  // the device was idle: a new rate window
    rate_sectors_ = rate_requests_ = 0;
  }
  q.dispatched++;
  in_driver_++;
  q.service += c;
  q.service_from_backlogged += c;
  if (q.wr_coeff > 1) q.service_from_wr += c;
  trees_[q.ioclass].served(c);
  last_position_ = rq.pos() + rq.sectors();
  update_weight_raising(q, now);
}

bool BfqScheduler::may_expire_for_budget_timeout(const BfqQueue& q, uint64_t now) const {
  // Not while idling for a queue that has a good part of its budget left.
  return now > q.budget_timeout_ns &&
         (!waiting_ || q.budget - std::min(q.budget, q.service) >= q.budget / 3);
}

bool BfqScheduler::asymmetric() const {
  // Backlogged queues of different weights or classes: only idling keeps
  // their shares (bfq_asymmetric_scenario).
  uint32_t weight = in_service_ ? in_service_->weight : 0;
  unsigned classes = 0;
  bool varied = false;
  for (unsigned c = 0; c < kNrClasses; ++c) {
    bool any = in_service_ && in_service_->ioclass == c;
    trees_[c].for_each_active([&](const BfqQueue& q) {
      any = true;
      if (weight == 0) weight = q.weight;
      varied |= q.weight != weight;
    });
    classes += any;
  }
  return varied || classes > 1;
}

bool BfqScheduler::better_to_idle(const BfqQueue& q) const {
  if (t_.strict_guarantees) return true;
  if (t_.slice_idle_ns == 0 || !q.sync || q.ioclass == kClassIdle) return false;
  const bool rotational = queue_.limits().rotational;
  const bool hw_tag = queue_.config().queue_depth > kHwTagDepth;
  // Idling boosts throughput on a disk that does not queue, or for a
  // sequential queue that issues its next request soon after the last.
  const bool seq_io_bound = !q.seeky() && q.io_bound && short_think_time(q);
  const bool boosts =
      (rotational && !hw_tag) || ((rotational || !hw_tag) && seq_io_bound);
  // ... unless raised queues are waiting and this is not one of them:
  // idling for it would delay them. (The kernel's exact condition may
  // differ; this one lets a raised queue idle for itself.)
  const bool boosts_no_issue = boosts && (wr_busy_queues_ == 0 || q.wr_coeff > 1);
  const bool needed = (q.wr_coeff > 1 && (wr_busy_queues_ < busy_queues_ ||
                                          in_driver_ >= q.dispatched + 4)) ||
                      asymmetric();
  return boosts_no_issue || needed;
}

void BfqScheduler::charge_time(BfqQueue& q, uint64_t elapsed_ns) {
  // Charged as if it had received the service the time it held the device
  // is worth (bfq_bfqq_charge_time): a slow queue pays for its time.
  const uint64_t bounded = std::min(elapsed_ns, t_.timeout_ns);
  const uint64_t for_time = max_budget_ * bounded / t_.timeout_ns;
  const uint64_t total = std::max(for_time, q.service);
  if (total > q.budget) q.budget = total;
  trees_[q.ioclass].served(total - q.service);
  q.service = total;
}

void BfqScheduler::recalc_budget(BfqQueue& q, Expire why) {
  // Budget feedback (__bfq_bfqq_recalc_budget): a sync queue's budget
  // follows what it used; async and raised queues get the maximum.
  uint64_t b = q.max_budget;
  const uint64_t minb = min_budget();
  if (q.sync && q.wr_coeff == 1) {
    switch (why) {
      case Expire::kTooIdle:
        if (q.dispatched > 0) {
          b = std::min(b * 2, max_budget_);  // still has I/O in flight
        } else {
          b = b > 5 * minb ? b - 4 * minb : minb;
          q.io_bound = false;
        }
        break;
      case Expire::kBudgetTimeout:
        b = std::min(b * 2, max_budget_);
        q.io_bound = true;
        break;
      case Expire::kBudgetExhausted:
        b = std::min(b * 4, max_budget_);
        q.io_bound = true;
        break;
      case Expire::kNoMoreRequests:
      case Expire::kPreempted:
        break;
    }
  } else {
    b = max_budget_;
  }
  q.max_budget = std::max<uint64_t>(std::min(b, max_budget_), 1);
  if (q.busy()) q.budget = std::max(q.max_budget, charge(q, *q.sorted.front()));
}

void BfqScheduler::expire(BfqQueue& q, Expire why, uint64_t now) {
  const uint64_t elapsed = now - std::min(now, q.in_service_since_ns);
  if (q.wr_coeff == 1 && ((t_.strict_guarantees && why == Expire::kTooIdle) ||
                          why == Expire::kBudgetTimeout)) {
    charge_time(q, elapsed);
  }
  recalc_budget(q, why);
  // When its next round may start to count as soft real-time: no sooner
  // than its service so far allows at bfq_wr_max_softrt_rate.
  if (t_.low_latency && q.wr_coeff == 1 && !q.busy()) {
    const uint64_t by_rate = q.last_idle_bklogged_ns +
                             q.service_from_backlogged * 1'000'000'000 / kWrMaxSoftRtRate;
    q.soft_rt_next_start_ns = std::max(by_rate, now + t_.slice_idle_ns + 4 * kMs);
  }
  in_service_ = nullptr;
  set_waiting(false);
  expirations_[static_cast<size_t>(why)]++;
  ServiceTree& tree = trees_[q.ioclass];
  if (q.busy()) {
    tree.requeue(q);
  } else {
    tree.deactivate(q);
    busy_queues_--;
    if (q.wr_coeff > 1) wr_busy_queues_--;
    q.last_busy_end_ns = now;
    maybe_release(q);
  }
  q.service = 0;
}

void BfqScheduler::requeue_request(Request& rq) {
  std::lock_guard lock(mu_);
  RqPriv* p = priv(rq);
  if (p->state != RqPriv::State::kDispatched) return;
  p->state = RqPriv::State::kPrepared;  // inserted again at the head next
  p->bfqq->dispatched--;
  in_driver_--;
}

void BfqScheduler::sample_rate(const Request& rq, uint64_t now) {
  // The device's rate over windows of busy time; max_budget follows it
  // when auto-tuned: what the device serves in timeout_sync
  // (bfq_calc_max_budget).
  rate_sectors_ += rq.sectors();
  rate_requests_++;
  const uint64_t span = now - std::min(now, rate_window_start_ns_);
  if (span < kRateWindowNs || rate_requests_ < kRateWindowRequests) return;
  const double sample =
      static_cast<double>(rate_sectors_) * 1e9 / static_cast<double>(span);
  peak_rate_ = peak_rate_ == 0 ? sample : (7 * peak_rate_ + sample) / 8;
  rate_window_start_ns_ = now;
  rate_sectors_ = rate_requests_ = 0;
  if (t_.user_max_budget == 0) max_budget_ = auto_max_budget();
}

uint64_t BfqScheduler::auto_max_budget() const {
  if (peak_rate_ <= 0) return kDefaultMaxBudget;
  const double b = peak_rate_ * static_cast<double>(t_.timeout_ns) / 1e9;
  return std::clamp<uint64_t>(static_cast<uint64_t>(b), 32, uint64_t{1} << 24);
}

void BfqScheduler::completed(Request& rq, uint64_t) {
  RqPriv* p = priv(rq);
  After after;
  {
    std::lock_guard lock(mu_);
    if (p->state != RqPriv::State::kDispatched) return;  // never through us (flush)
    p->state = RqPriv::State::kDone;
    const uint64_t t = now();
    BfqQueue& q = *p->bfqq;
    q.dispatched--;
    in_driver_--;
    q.last_end_ns = t;
    last_completion_ns_ = t;
    sample_rate(rq, t);
    if (&q == in_service_) {
      // (bfq_completed_request) Its last request is done: idle for the
      // next, or let it go.
      if (!q.busy() && better_to_idle(q)) {
        if (q.dispatched == 0 && !waiting_) {
          set_waiting(true);
          idle_deadline_ns_ = t + t_.slice_idle_ns;
          after.timer = &rq.hctx();
          after.timer_ns = t_.slice_idle_ns;
        }
      } else if (may_expire_for_budget_timeout(q, t)) {
        expire(q, Expire::kBudgetTimeout, t);
      } else if (!q.busy()) {
        expire(q, Expire::kNoMoreRequests, t);
      }
    }
    if (stalled_ && queued_.load(std::memory_order_relaxed) != 0) {
      stalled_ = false;
      after.run = &rq.hctx();
    }
    // finish_request follows on this thread: let it go now, so that it
    // need not take the lock again.
    detach(rq);
  }
  after();
}

void BfqScheduler::finish_request(Request& rq) {
  // Nothing left after completed(), or never inserted: no lock needed.
  if (!priv(rq)->bfqq) return;
  std::lock_guard lock(mu_);
  if (priv(rq)->state == RqPriv::State::kDispatched) {
    // Ended without completed() (not seen here otherwise).
    priv(rq)->bfqq->dispatched--;
    in_driver_--;
  }
  detach(rq);
}

// --- merging ----------------------------------------------------------------------

bool BfqScheduler::bio_merge(Queue& queue, HwQueue&, Bio& bio) {
  Request* absorbed = nullptr;
  {
    std::lock_guard lock(mu_);
    BfqQueue* q = is_sync(bio.op(), bio.flags()) ? pool_.find(bio.issuer())
                                                 : &async_queue(bio.ioprio());
    if (!q || !q->busy()) return false;
    const uint64_t start = bio.sector(), end = bio.end_sector();
    Request* rq = q->sorted.back();
    for (; rq; rq = rq->prev) {
      if (rq->pos() + rq->sectors() == start || rq->pos() == end) break;
    }
    if (!rq) return false;
    const Queue::Merge where = queue.can_merge(*rq, bio);
    if (where == Queue::Merge::kNone) return false;
    queue.merge_bio(*rq, bio, where);
    // The grown request may now touch its neighbour in sector order.
    if (where == Queue::Merge::kBack && rq->next &&
        queue.requests_mergeable(*rq, *rq->next)) {
      absorbed = rq->next;
      queue.absorb_request(*rq, *absorbed);  // requests_merged takes it off
    } else if (where == Queue::Merge::kFront && rq->prev &&
               queue.requests_mergeable(*rq->prev, *rq)) {
      absorbed = rq;
      queue.absorb_request(*rq->prev, *absorbed);
    }
  }
  if (absorbed) queue.free_request(*absorbed);
  return true;
}

void BfqScheduler::requests_merged(Request& rq, Request& next) {
  // Under our lock (from bio_merge).
  RqPriv* p = priv(next);
  BfqQueue& q = *p->bfqq;
  take_fifo_place(q, rq, next);
  remove_request(q, next);
  p->state = RqPriv::State::kPrepared;
  q.queued--;
  queued_.fetch_sub(1, std::memory_order_relaxed);
}

// --- for tests --------------------------------------------------------------------

BfqScheduler::QueueInfo BfqScheduler::sync_queue_info(IssuerId issuer) const {
  std::lock_guard lock(mu_);
  QueueInfo info;
  const BfqQueue* q = pool_.find(issuer);
  if (!q) return info;
  info.exists = true;
  info.weight = q->new_weight * q->wr_coeff;
  info.wr_coeff = q->wr_coeff;
  info.budget = q->budget;
  info.max_budget = q->max_budget;
  info.in_service = q == in_service_;
  return info;
}

bool BfqScheduler::idling() const {
  std::lock_guard lock(mu_);
  return waiting_;
}

uint64_t BfqScheduler::expirations(Expire why) const {
  std::lock_guard lock(mu_);
  return expirations_[static_cast<size_t>(why)];
}

uint64_t BfqScheduler::max_budget() const {
  std::lock_guard lock(mu_);
  return max_budget_;
}

uint64_t BfqScheduler::weight_sum(IoClass c) const {
  std::lock_guard lock(mu_);
  return trees_[c].wsum();
}

}  // namespace bfq

const SchedulerType kBfqScheduler{
    "bfq", "budget fair queueing: weighted shares per issuer, low latency",
    [](Queue& q) -> std::unique_ptr<Scheduler> {
      return std::make_unique<bfq::BfqScheduler>(q);
    },
    sizeof(bfq::RqPriv)};

}  // namespace blkstack
