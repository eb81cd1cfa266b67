// mq-deadline: the deadline I/O scheduler of blk-mq (the kernel's
// block/mq-deadline.c), with its rules, tunables and defaults.
//
// Requests wait per priority class (RT, BE, IDLE; no class counts as BE)
// and per direction (read, write) twice over: in sector order, and in a
// FIFO by deadline (insert time + read_expire or write_expire). Dispatch
// goes in batches of up to fifo_batch requests in ascending sector order
// from where the last one in that direction was; a new batch starts from
// the FIFO head when that head has expired (or the sorted run is over),
// and in the other direction as writes_starved says: reads go first, but
// once writes have been passed over writes_starved times a batch of writes
// goes. A higher class goes before a lower one, and while a higher class
// has requests queued or in the driver a lower one waits, except that a
// lower-class request waiting longer than prio_aging_expire goes first
// (priority aging). Writes (everything but reads) may hold at most
// async_depth of the scheduler tags (limit_depth), keeping the rest for
// synchronous reads. Bios merge into held requests at either end
// (front_merges), and an inserted request into the one it follows.
//
// One instance per queue, shared by its hardware queues, under one mutex,
// as the kernel's deadline_data and its spinlock.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <memory>
#include <mutex>
#include <vector>

#include "blkstack/driver/hw_queue.h"
#include "blkstack/driver/queue.h"
#include "blkstack/driver/scheduler.h"
#include "blkstack/error.h"
#include "blkstack/ioprio.h"
#include "sched/sched_clock.h"
#include "sched/sched_hold.h"
#include "sched/tunable.h"

namespace blkstack {
namespace {

constexpr int64_t kMs = 1'000'000;

enum Dir : uint8_t { kRead, kWrite, kNrDirs };
// The kernel's dd_prio, in dispatch order.
enum Prio : uint8_t { kRtPrio, kBePrio, kIdlePrio, kNrPrios };

Prio prio_of(uint16_t ioprio) {
  switch (ioprio_class(ioprio)) {
    case IoprioClass::kRealtime:
      return kRtPrio;
    case IoprioClass::kIdle:
      return kIdlePrio;
    default:
      return kBePrio;  // kNone too (ioprio_class_to_prio)
  }
}

// Request::sched_priv().
struct DdPriv {
  int64_t insert_ns;    // when it was inserted
  int64_t deadline_ns;  // fifo_time: insert_ns + read_expire or write_expire
  Prio prio;
  Dir dir;
  bool counted;  // in inserted[]: counted once, even if requeued
  bool sorted;   // on the sort list and FIFO (not the dispatch list)
  bool listed;   // held by the scheduler (sort list, or dispatch list)
};

DdPriv& priv(const Request& rq) { return *rq.sched_priv_as<DdPriv>(); }

// The requests of one class and direction in sector order (the kernel's
// sort_list rb-tree): a sorted array with room reserved at init for every
// scheduler request of the queue, so nothing is allocated per I/O, and
// searched by bisection. Sequential streams add at the end.
class SortList {
 public:
  void reserve(size_t n) { v_.reserve(n); }
  bool empty() const { return v_.empty(); }
  void add(Request* rq) {
    v_.insert(std::upper_bound(v_.begin(), v_.end(), rq->pos(), ByPos), rq);
  }
  void remove(Request* rq) {
    auto it = std::lower_bound(v_.begin(), v_.end(), rq, LessPos);
    while (*it != rq) ++it;  // among requests at the same sector
    v_.erase(it);
  }
  // The first request at or after `pos` (deadline_from_pos).
  Request* from(uint64_t pos) const {
    auto it = std::lower_bound(v_.begin(), v_.end(), pos, PosLess);
    return it == v_.end() ? nullptr : *it;
  }
  // The last request that starts before `pos`.
  Request* before(uint64_t pos) const {
    auto it = std::lower_bound(v_.begin(), v_.end(), pos, PosLess);
    return it == v_.begin() ? nullptr : *(it - 1);
  }
  // The request after / before `rq` in sector order.
  Request* next_of(Request* rq) const {
    auto it = std::upper_bound(v_.begin(), v_.end(), rq->pos(), ByPos);
    return it == v_.end() ? nullptr : *it;
  }
  Request* prev_of(Request* rq) const { return before(rq->pos()); }

 private:
  static bool ByPos(uint64_t pos, const Request* rq) { return pos < rq->pos(); }
  static bool PosLess(const Request* rq, uint64_t pos) { return rq->pos() < pos; }
  static bool LessPos(const Request* a, const Request* b) { return a->pos() < b->pos(); }
  std::vector<Request*> v_;
};

uint64_t end_of(const Request& rq) { return rq.pos() + rq.sectors(); }

// dd_per_prio.
struct PerPrio {
  RequestList dispatch;  // requeued requests, first out (at_head inserts)
  RequestList fifo[kNrDirs];
  SortList sort[kNrDirs];
  uint64_t latest_pos[kNrDirs] = {0, 0};  // sector of the last dispatched
  uint64_t inserted = 0;                  // under the lock
  std::atomic<uint64_t> completed{0};     // finished (or merged away)
};

class MqDeadline final : public Scheduler {
 public:
  explicit MqDeadline(Queue& q) : q_(q) {}

  void init_hctx(HwQueue& hctx) override { depth_updated(hctx); }
  void depth_updated(HwQueue&) override {
    // Frozen: nothing else runs. dd_depth_updated: a quarter of the
    // scheduler tags stay for synchronous reads.
    const unsigned nr = q_.nr_requests();
    async_depth_.store(std::max(1u, 3 * nr / 4), std::memory_order_relaxed);
    const size_t all = size_t{nr} * q_.nr_hw_queues();
    for (PerPrio& pp : prio_)
      for (SortList& s : pp.sort) s.reserve(all);
  }

  void prepare_request(Request& rq) override {
    priv(rq) = DdPriv{
        0, 0, prio_of(rq.ioprio()), rq.is_write() ? kWrite : kRead, false, false, false};
  }

  void insert(HwQueue&, RequestList& list, bool at_head) override {
    RequestList merged;  // inserted requests that joined a held one
    {
      std::lock_guard lock(mu_);
      const int64_t now = static_cast<int64_t>(sched_clock::now());
      while (Request* rq = list.pop_front()) insert_locked(*rq, at_head, now, merged);
    }
    while (Request* rq = merged.pop_front()) q_.free_request(*rq);
  }

  Request* dispatch(HwQueue&) override {
    std::lock_guard lock(mu_);
    const int64_t now = static_cast<int64_t>(sched_clock::now());
    now_ = now;
    Request* rq = pick(now);
    if (!rq && queued_.load(std::memory_order_relaxed) != 0) {
      // Held back for a higher class in the driver: its completion runs
      // the queue again. One that finished between the pick and the flag
      // saw no flag and ran nothing: pick again once the flag is visible
      // (seq_cst, pairs with finish_request).
      sched_hold::at(sched_hold::deadline_held_back);
      held_back_.store(true, std::memory_order_seq_cst);
      rq = pick(now);
    }
    if (rq) {
      priv(*rq).listed = false;
      queued_.fetch_sub(1, std::memory_order_relaxed);
    }
    return rq;
  }

  bool has_work(const HwQueue&) const override {
    return queued_.load(std::memory_order_relaxed) != 0;
  }

  void finish_request(Request& rq) override {
    const DdPriv& p = priv(rq);
    // seq_cst: pairs with dispatch(), which sets held_back_ then counts.
    if (p.counted) prio_[p.prio].completed.fetch_add(1, std::memory_order_seq_cst);
    if (held_back_.load(std::memory_order_seq_cst) &&
        held_back_.exchange(false, std::memory_order_relaxed)) {
      rq.hctx().run();
    }
  }

  bool bio_merge(Queue& q, HwQueue&, Bio& bio) override {
    Request* absorbed = nullptr;
    {
      std::lock_guard lock(mu_);
      SortList& s =
          prio_[prio_of(bio.ioprio())].sort[op_is_write(bio.op()) ? kWrite : kRead];
      if (Request* rq = s.before(bio.sector());
          rq && q.can_merge(*rq, bio) == Queue::Merge::kBack) {
        q.merge_bio(*rq, bio, Queue::Merge::kBack);
        // Grown to touch the next one? (attempt_back_merge)
        if (Request* next = s.next_of(rq);
            next && next->pos() == end_of(*rq) && q.requests_mergeable(*rq, *next)) {
          absorbed = next;
          q.absorb_request(*rq, *next);  // requests_merged takes it off
        }
      } else if (front_merges_) {
        Request* front = s.from(bio.sector() + bio.sectors());
        if (!front || front->pos() != bio.sector() + bio.sectors() ||
            q.can_merge(*front, bio) != Queue::Merge::kFront) {
          return false;
        }
        s.remove(front);  // its sector changes (dd_request_merged)
        q.merge_bio(*front, bio, Queue::Merge::kFront);
        s.add(front);
        if (Request* prev = s.prev_of(front); prev && end_of(*prev) == front->pos() &&
                                              q.requests_mergeable(*prev, *front)) {
          absorbed = front;
          q.absorb_request(*prev, *front);  // attempt_front_merge
        }
      } else {
        return false;
      }
    }
    if (absorbed) q.free_request(*absorbed);
    return true;
  }

  // dd_merged_requests: `next` leaves; `rq` inherits the earlier deadline
  // and with it next's place in the FIFO.
  void requests_merged(Request& rq, Request& next) override {
    DdPriv& n = priv(next);
    if (!n.listed) return;  // an inserted request joining a held one
    PerPrio& pp = prio_[n.prio];
    DdPriv& r = priv(rq);
    if (r.sorted && n.sorted && r.dir == n.dir && r.prio == n.prio &&
        n.deadline_ns < r.deadline_ns) {
      pp.fifo[r.dir].remove(&rq);
      pp.fifo[r.dir].insert_before(&next, &rq);
      r.deadline_ns = n.deadline_ns;
    }
    take_off(next);
    queued_.fetch_sub(1, std::memory_order_relaxed);
  }

  unsigned limit_depth(const Bio& bio) const override {
    // dd_limit_depth: synchronous reads never (every read is synchronous).
    if (bio.op() == Op::kRead) return 0;
    return async_depth_.load(std::memory_order_relaxed);
  }

  std::vector<std::pair<std::string, std::string>> tunables() const override {
    std::lock_guard lock(mu_);
    auto num = [](int64_t v) { return std::to_string(v); };
    return {
        {"async_depth", num(async_depth_.load(std::memory_order_relaxed))},
        {"fifo_batch", num(fifo_batch_)},
        {"front_merges", num(front_merges_)},
        {"prio_aging_expire", num(prio_aging_expire_ / kMs)},
        {"read_expire", num(fifo_expire_[kRead] / kMs)},
        {"write_expire", num(fifo_expire_[kWrite] / kMs)},
        {"writes_starved", num(writes_starved_)},
    };
  }

  void set_tunable(std::string_view name, std::string_view value) override {
    auto parse = [&](int64_t min, int64_t max) {
      return parse_tunable("mq-deadline", name, value, min, max);
    };
    std::lock_guard lock(mu_);
    if (name == "read_expire") {
      fifo_expire_[kRead] = parse(0, INT_MAX) * kMs;
    } else if (name == "write_expire") {
      fifo_expire_[kWrite] = parse(0, INT_MAX) * kMs;
    } else if (name == "writes_starved") {
      writes_starved_ = static_cast<int>(parse(0, INT_MAX));
    } else if (name == "front_merges") {
      front_merges_ = parse(0, 1) != 0;
    } else if (name == "fifo_batch") {
      fifo_batch_ = static_cast<int>(parse(0, INT_MAX));
    } else if (name == "async_depth") {
      async_depth_.store(static_cast<unsigned>(parse(1, INT_MAX)),
                         std::memory_order_relaxed);
    } else if (name == "prio_aging_expire") {
      prio_aging_expire_ = parse(0, INT_MAX) * kMs;
    } else {
      throw Error(fmt::format(
          "mq-deadline has no tunable '{}' (async_depth, fifo_batch, front_merges, "
          "prio_aging_expire, read_expire, write_expire, writes_starved)",
          name));
    }
  }

 private:
  // Requests of class `p` inserted and not yet finished: queued here or in
  // the driver (dd_queued).
  uint64_t queued_in(int p) const {
    return prio_[p].inserted - prio_[p].completed.load(std::memory_order_seq_cst);
  }

  // The next request: an aged one, else the highest class's; a lower class
  // waits while a higher one has requests queued or in the driver.
  Request* pick(int64_t now) {
    if (Request* rq = dispatch_aged(now)) return rq;
    for (int p = 0; p < kNrPrios; ++p) {
      if (Request* rq = dispatch_from(prio_[p], now)) return rq;
      if (queued_in(p) != 0) break;
    }
    return nullptr;
  }

  void insert_locked(Request& rq, bool at_head, int64_t now, RequestList& merged) {
    DdPriv& p = priv(rq);
    PerPrio& pp = prio_[p.prio];
    if (!p.counted) {
      p.counted = true;
      ++pp.inserted;
    }
    p.insert_ns = now;
    if (at_head) {
      p.deadline_ns = now;
      p.sorted = false;
      pp.dispatch.push_front(&rq);
    } else {
      // blk_mq_sched_try_insert_merge: the request it follows takes it.
      SortList& s = pp.sort[p.dir];
      if (Request* prev = s.before(rq.pos());
          prev && end_of(*prev) == rq.pos() && q_.requests_mergeable(*prev, rq)) {
        q_.absorb_request(*prev, rq);
        merged.push_back(&rq);
        return;
      }
      p.deadline_ns = now + fifo_expire_[p.dir];
      p.sorted = true;
      s.add(&rq);
      pp.fifo[p.dir].push_back(&rq);
    }
    p.listed = true;
    queued_.fetch_add(1, std::memory_order_relaxed);
  }

  void take_off(Request& rq) {
    DdPriv& p = priv(rq);
    PerPrio& pp = prio_[p.prio];
    if (p.sorted) {
      pp.sort[p.dir].remove(&rq);
      pp.fifo[p.dir].remove(&rq);
    } else {
      pp.dispatch.remove(&rq);
    }
    p.listed = false;
  }

  // dd_dispatch_prio_aged_requests: with two classes or more queued, a BE
  // or IDLE request inserted before now - prio_aging_expire goes first.
  Request* dispatch_aged(int64_t now) {
    int classes = 0;
    for (int p = 0; p < kNrPrios; ++p) classes += queued_in(p) != 0;
    if (classes < 2) return nullptr;
    for (int p = kBePrio; p < kNrPrios; ++p) {
      if (Request* rq = dispatch_from(prio_[p], now - prio_aging_expire_)) return rq;
    }
    return nullptr;
  }

  // Inserted after `latest_start`: too young to go now (started_after).
  static bool started_after(const Request* rq, int64_t latest_start) {
    return priv(*rq).insert_ns > latest_start;
  }

  // __dd_dispatch_request: the next request of one class, if it was
  // inserted by `latest_start`.
  Request* dispatch_from(PerPrio& pp, int64_t latest_start) {
    if (Request* rq = pp.dispatch.front()) {
      if (started_after(rq, latest_start)) return nullptr;
      pp.dispatch.remove(rq);
      pp.latest_pos[priv(*rq).dir] = rq->pos();
      return rq;
    }
    // Still entitled to batch in the last direction, in sector order.
    Request* rq = pp.sort[last_dir_].from(pp.latest_pos[last_dir_]);
    if (!(rq && batching_ < fifo_batch_)) {
      // A new batch: reads, unless writes have starved long enough.
      Dir dir;
      if (!pp.fifo[kRead].empty()) {
        if (!pp.fifo[kWrite].empty() && starved_++ >= writes_starved_) {
          starved_ = 0;
          dir = kWrite;
        } else {
          dir = kRead;
        }
      } else if (!pp.fifo[kWrite].empty()) {
        starved_ = 0;
        dir = kWrite;
      } else {
        return nullptr;
      }
      // From the FIFO head if it has expired or the sorted run is over
      // (the last request was in the other direction or the highest).
      Request* next = pp.sort[dir].from(pp.latest_pos[dir]);
      Request* head = pp.fifo[dir].front();
      rq = (!next || priv(*head).deadline_ns <= now_) ? head : next;
      last_dir_ = dir;
      batching_ = 0;
    }
    if (started_after(rq, latest_start)) return nullptr;
    ++batching_;
    take_off(*rq);
    pp.latest_pos[priv(*rq).dir] = rq->pos();
    return rq;
  }

  Queue& q_;
  mutable std::mutex mu_;
  PerPrio prio_[kNrPrios];
  std::atomic<uint32_t> queued_{0};  // held: sorted or on a dispatch list
  std::atomic<bool> held_back_{false};
  // Batch state, shared by the classes (deadline_data).
  Dir last_dir_ = kRead;
  int batching_ = 0;
  int starved_ = 0;
  int64_t now_ = 0;  // the clock as this dispatch() read it (FIFO expiry)
  // Tunables, with the kernel's defaults.
  int64_t fifo_expire_[kNrDirs] = {500 * kMs, 5000 * kMs};
  int writes_starved_ = 2;
  int fifo_batch_ = 16;
  bool front_merges_ = true;
  int64_t prio_aging_expire_ = 10000 * kMs;
  std::atomic<unsigned> async_depth_{1};
};

}  // namespace

extern const SchedulerType kMqDeadlineScheduler{
    "mq-deadline", "deadlines per direction and class, sector-ordered batches",
    [](Queue& q) -> std::unique_ptr<Scheduler> {
      return std::make_unique<MqDeadline>(q);
    },
    sizeof(DdPriv)};

}  // namespace blkstack
