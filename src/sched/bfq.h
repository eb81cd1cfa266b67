// bfq: Budget Fair Queueing (Valente, Checconi, Avanzini), Linux's
// block/bfq-iosched.c reimplemented from the published algorithm.
//
// Requests go to per-issuer queues (src/sched/bfq_queue.h). One queue at a
// time is in service and gets the device until it has received its budget
// (in sectors), timeout_sync has passed, or it has no more requests and
// waiting for its next one (idling, slice_idle) would not help. The next
// queue is picked by B-WF2Q+ (src/sched/bfq_wf2q.h) over its weight, so
// each backlogged queue gets service in proportion to its weight whatever
// its budget. Budgets adapt to each queue (budget feedback); low_latency
// raises the weight of new interactive and soft real-time queues.
//
// Internal: tests include it for the clock seam and the counters.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "blkstack/driver/scheduler.h"
#include "sched/bfq_pool.h"
#include "sched/bfq_queue.h"
#include "sched/bfq_wf2q.h"

namespace blkstack {

extern const SchedulerType kBfqScheduler;

namespace bfq {

// The iosched/ files, with the kernel's defaults.
struct Tunables {
  uint64_t slice_idle_ns = 8'000'000;
  uint64_t timeout_ns = 125'000'000;  // timeout_sync
  uint64_t back_seek_max_kib = 16384;
  uint32_t back_seek_penalty = 2;
  uint64_t fifo_expire_ns[2] = {250'000'000, 125'000'000};  // async, sync
  bool low_latency = true;
  bool strict_guarantees = false;
  uint64_t user_max_budget = 0;  // max_budget: 0 = auto-tuned
};

class BfqScheduler final : public Scheduler {
 public:
  static constexpr uint32_t kMinWeight = 1, kMaxWeight = 1000, kDefaultWeight = 100;
  // bfq_default_max_budget: until the device's rate is known.
  static constexpr uint64_t kDefaultMaxBudget = 16 * 1024;

  explicit BfqScheduler(Queue& q);

  void init_hctx(HwQueue& hctx) override;
  void depth_updated(HwQueue& hctx) override;
  void prepare_request(Request& rq) override;
  void insert(HwQueue& hctx, RequestList& list, bool at_head) override;
  Request* dispatch(HwQueue& hctx) override;
  bool has_work(const HwQueue& hctx) const override;
  void requeue_request(Request& rq) override;
  void completed(Request& rq, uint64_t now_ns) override;
  void finish_request(Request& rq) override;
  bool bio_merge(Queue& q, HwQueue& hctx, Bio& bio) override;
  void requests_merged(Request& rq, Request& next) override;
  std::vector<std::pair<std::string, std::string>> tunables() const override;
  void set_tunable(std::string_view name, std::string_view value) override;

  // --- for tests ----------------------------------------------------------
  // bfq reads time through this (default: the block core's now_ns()).
  void set_clock(uint64_t (*clock)()) { clock_ = clock; }
  struct QueueInfo {
    bool exists = false;
    uint32_t weight = 0;  // effective: orig_weight x wr_coeff
    uint32_t wr_coeff = 1;
    uint64_t budget = 0;
    uint64_t max_budget = 0;
    bool in_service = false;
  };
  QueueInfo sync_queue_info(IssuerId issuer) const;
  // The in-service queue is empty and bfq waits for its next request.
  bool idling() const;
  uint64_t expirations(Expire why) const;
  uint64_t max_budget() const;
  // The sum of the weights in class `c`'s service tree.
  uint64_t weight_sum(IoClass c) const;

 private:
  using Lock = std::unique_lock<std::mutex>;
  // What to do once the lock is dropped.
  struct After {
    HwQueue* run = nullptr;    // run now
    HwQueue* timer = nullptr;  // run after timer_ns
    uint64_t timer_ns = 0;
    void operator()() const;
  };

  static bool is_sync(Op op, BioFlag flags);
  uint64_t now() const { return clock_(); }
  uint32_t weight_for(IssuerId issuer, uint16_t ioprio, bool sync) const;
  static IoClass class_of(uint16_t ioprio);
  BfqQueue* sync_queue(IssuerId issuer);
  BfqQueue& async_queue(uint16_t ioprio);
  void set_ioprio(BfqQueue& q, uint16_t ioprio);
  void rebuild();

  // The queue gets its first request after being empty.
  void became_busy(BfqQueue& q, uint64_t now);
  void update_think_time(BfqQueue& q, uint64_t now);
  void update_seek(BfqQueue& q, const Request& rq);
  bool short_think_time(const BfqQueue& q) const;
  uint64_t charge(const BfqQueue& q, const Request& rq) const;
  uint64_t min_budget() const { return max_budget_ / 32; }
  uint64_t wr_duration() const;
  void end_weight_raising(BfqQueue& q);
  void update_weight_raising(BfqQueue& q, uint64_t now);

  BfqQueue* select_queue(uint64_t now);
  void set_in_service(BfqQueue& q, uint64_t now);
  Request* next_request(BfqQueue& q, uint64_t now);
  void dispatch_request(BfqQueue& q, Request& rq, uint64_t now);
  void expire(BfqQueue& q, Expire why, uint64_t now);
  void recalc_budget(BfqQueue& q, Expire why);
  void charge_time(BfqQueue& q, uint64_t elapsed_ns);
  bool better_to_idle(const BfqQueue& q) const;
  bool asymmetric() const;
  bool may_expire_for_budget_timeout(const BfqQueue& q, uint64_t now) const;
  void maybe_release(BfqQueue& q);
  // The request takes a reference on its queue (attach, at its first
  // insert) and gives it back (detach, at completion or finish).
  void attach(Request& rq);
  void detach(Request& rq);
  void sample_rate(const Request& rq, uint64_t now);
  // What the device serves in timeout_sync at its peak rate (bfq_calc_max_budget).
  uint64_t auto_max_budget() const;

  Queue& queue_;
  uint64_t (*clock_)();
  mutable std::mutex mu_;
  std::atomic<uint32_t> queued_{0};  // requests held (has_work)

  Tunables t_;
  std::array<ServiceTree, kNrClasses> trees_;
  QueuePool pool_;
  // Shared asynchronous queues, by class and level (async_bfqq).
  std::array<std::array<BfqQueue, kIoprioNrLevels>, kNrClasses> async_;
  // Per-issuer weights set through the "weights" tunable.
  std::vector<std::pair<IssuerId, uint32_t>> weights_;
  uint32_t default_weight_ = kDefaultWeight;

  BfqQueue* in_service_ = nullptr;
  // Idling on in_service_ (wait_request). Written under mu_; has_work reads
  // it without.
  std::atomic<bool> waiting_{false};
  void set_waiting(bool w) { waiting_.store(w, std::memory_order_relaxed); }
  uint64_t idle_deadline_ns_ = 0;
  // dispatch() held requests back until a completion: it must run us.
  bool stalled_ = false;
  uint64_t last_position_ = 0;  // where the head is: the end of the last dispatch
  uint32_t in_driver_ = 0;
  uint32_t busy_queues_ = 0;
  uint32_t wr_busy_queues_ = 0;
  uint64_t idle_class_last_service_ns_ = 0;
  std::array<uint64_t, 5> expirations_{};

  // Peak rate and the auto-tuned max_budget (bfq_update_peak_rate).
  uint64_t max_budget_ = kDefaultMaxBudget;
  double peak_rate_ = 0;  // sectors per second
  uint64_t rate_window_start_ns_ = 0;
  uint64_t rate_sectors_ = 0;
  uint32_t rate_requests_ = 0;
  uint64_t last_completion_ns_ = 0;
};

}  // namespace bfq
}  // namespace blkstack
