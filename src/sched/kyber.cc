// kyber: see kyber.h.
#include "sched/kyber.h"

#include <fmt/format.h>

#include <algorithm>

#include "blkstack/driver/hw_queue.h"
#include "blkstack/driver/queue.h"
#include "blkstack/error.h"
#include "sched/sched_clock.h"
#include "sched/tunable.h"

namespace blkstack {

namespace {

// Request::sched_priv().
struct KyberPriv {
  uint64_t made_ns;      // prepared (start_time_ns)
  uint64_t io_start_ns;  // dispatched (io_start_time_ns); 0: not by us
  KyberDomain domain;
  bool token;  // holds a token of its domain
};

KyberPriv& priv(const Request& rq) { return *rq.sched_priv_as<KyberPriv>(); }

KyberDomain domain_of(Op op) {
  switch (op) {
    case Op::kRead:
      return kKyberRead;
    case Op::kWrite:
      return kKyberWrite;
    case Op::kDiscard:
      return kKyberDiscard;
    default:
      return kKyberOther;
  }
}

// Bios merge into one of the last few requests of their domain
// (blk_bio_list_merge's scan).
constexpr int kMergeScan = 8;

}  // namespace

// --- the latency histograms and the timer ------------------------------------

KyberLatency::KyberLatency() {
  for (unsigned d = 0; d < kKyberDomains; ++d) depth_[d].store(kKyberMaxDepth[d]);
  target_[kKyberRead].store(2'000'000);
  target_[kKyberWrite].store(10'000'000);
  target_[kKyberDiscard].store(5'000'000'000);
  target_[kKyberOther].store(0);
}

void KyberLatency::add(unsigned domain, uint64_t total_ns, uint64_t io_ns) {
  const uint64_t divisor = std::max<uint64_t>(target(domain) >> kShift, 1);
  auto bucket = [&](uint64_t ns) {
    return ns == 0 ? 0u
                   : static_cast<unsigned>(
                         std::min<uint64_t>((ns - 1) / divisor, kBuckets - 1));
  };
  recent_[domain][kTotal][bucket(total_ns)].fetch_add(1, std::memory_order_relaxed);
  recent_[domain][kIo][bucket(io_ns)].fetch_add(1, std::memory_order_relaxed);
}

bool KyberLatency::due(int64_t now) {
  int64_t at = timer_due_.load(std::memory_order_relaxed);
  if (at == 0) {
    timer_due_.compare_exchange_strong(at, std::max<int64_t>(now + kTimerNs, 1),
                                       std::memory_order_relaxed);
    return false;
  }
  return now >= at &&
         timer_due_.compare_exchange_strong(at, 0, std::memory_order_acq_rel);
}

int KyberLatency::percentile(unsigned domain, Type type, unsigned pct, int64_t now) {
  uint32_t* b = buckets_[domain][type];
  uint64_t samples = 0;
  for (unsigned i = 0; i < kBuckets; ++i) samples += b[i];
  if (samples == 0) return -1;
  // Once there are 500 samples, or a second after the first was counted.
  if (latency_timeout_[domain] == 0)
    latency_timeout_[domain] = std::max<int64_t>(now + kWindowNs, 1);
  if (samples < kMinSamples && latency_timeout_[domain] > now) return -1;
  latency_timeout_[domain] = 0;
  uint64_t left = (samples * pct + 99) / 100;
  unsigned bucket = 0;
  for (; bucket < kBuckets - 1; ++bucket) {
    if (b[bucket] >= left) break;
    left -= b[bucket];
  }
  std::fill(b, b + kBuckets, 0u);
  return static_cast<int>(bucket);
}

void KyberLatency::run_timer(int64_t now) {
  std::lock_guard lock(timer_lock_);
  for (unsigned d = 0; d < kKyberOther; ++d)
    for (unsigned t = 0; t < 2; ++t)
      for (unsigned i = 0; i < kBuckets; ++i)
        buckets_[d][t][i] += recent_[d][t][i].exchange(0, std::memory_order_relaxed);

  // Congestion: a domain's p90 completion latency over its target (the
  // p90: not too sensitive to outliers).
  bool bad = false;
  for (unsigned d = 0; d < kKyberOther; ++d) {
    if (percentile(d, kIo, 90, now) >= static_cast<int>(kBuckets / 2)) bad = true;
  }
  for (unsigned d = 0; d < kKyberOther; ++d) {
    int p99 = percentile(d, kTotal, 99, now);
    // Domains do not all have enough samples in the same window: keep the
    // last p99 for the next congestion, and use it once.
    if (bad) {
      if (p99 < 0) p99 = domain_p99_[d];
      domain_p99_[d] = -1;
    } else if (p99 >= 0) {
      domain_p99_[d] = p99;
    }
    if (p99 < 0) continue;
    // Over its target: more tokens; under it while congested: fewer. In
    // proportion to the p99 against the target.
    if (bad || p99 >= static_cast<int>(kBuckets / 2)) {
      const unsigned orig = depth_[d].load(std::memory_order_relaxed);
      const unsigned want = (orig * static_cast<unsigned>(p99 + 1)) >> kShift;
      depth_[d].store(std::clamp(want, 1u, kKyberMaxDepth[d]), std::memory_order_relaxed);
    }
  }
}

// --- the scheduler -------------------------------------------------------------

// kyber_hctx_data: the requests of one hardware queue by domain.
struct KyberScheduler::Hctx {
  std::mutex lock;
  RequestList rqs[kKyberDomains];
  unsigned cur_domain = 0;
  unsigned batching = 0;
  std::atomic<uint32_t> queued{0};
  std::atomic<bool> waiting{false};  // out of tokens: run when one frees
  HwQueue* hctx = nullptr;
};

KyberScheduler::KyberScheduler(Queue& q) : q_(q) {
  for (auto& n : in_use_) n.store(0);
  for (unsigned i = 0; i < q.nr_hw_queues(); ++i) {
    hctxs_.push_back(std::make_unique<Hctx>());
    hctxs_.back()->hctx = &q.hw_queue(i);
  }
}

KyberScheduler::~KyberScheduler() = default;

void KyberScheduler::init_hctx(HwQueue&) {
  // KYBER_ASYNC_PERCENT: asynchronous requests get 75% of the tags.
  async_depth_.store(std::max(1u, q_.nr_requests() * 75 / 100),
                     std::memory_order_relaxed);
}

void KyberScheduler::prepare_request(Request& rq) {
  priv(rq) = KyberPriv{sched_clock::now(), 0, domain_of(rq.op()), false};
}

void KyberScheduler::insert(HwQueue& hctx, RequestList& list, bool at_head) {
  Hctx& h = *hctxs_[hctx.index()];
  std::lock_guard lock(h.lock);
  while (Request* rq = list.pop_front()) {
    RequestList& rqs = h.rqs[priv(*rq).domain];
    if (at_head)
      rqs.push_front(rq);
    else
      rqs.push_back(rq);
    h.queued.fetch_add(1, std::memory_order_relaxed);
  }
}

bool KyberScheduler::get_token(unsigned domain) {
  unsigned cur = in_use_[domain].load(std::memory_order_relaxed);
  while (cur < latency_.depth(domain)) {
    if (in_use_[domain].compare_exchange_weak(cur, cur + 1, std::memory_order_acquire))
      return true;
  }
  return false;
}

void KyberScheduler::put_token(Request& rq) {
  KyberPriv& p = priv(rq);
  if (!p.token) return;
  p.token = false;
  // seq_cst: pairs with a dispatcher that sets waiting, then tries again.
  in_use_[p.domain].fetch_sub(1, std::memory_order_seq_cst);
  if (nr_waiting_.load(std::memory_order_seq_cst) != 0) wake_waiters();
}

void KyberScheduler::wake_waiters() {
  for (auto& h : hctxs_) {
    if (h->waiting.load(std::memory_order_relaxed) &&
        h->waiting.exchange(false, std::memory_order_acq_rel)) {
      nr_waiting_.fetch_sub(1, std::memory_order_relaxed);
      h->hctx->run();
    }
  }
}

Request* KyberScheduler::dispatch_cur_domain(Hctx& h) {
  RequestList& rqs = h.rqs[h.cur_domain];
  Request* rq = rqs.front();
  if (!rq) return nullptr;
  bool got = get_token(h.cur_domain);
  if (!got) {
    // Wait for a token (the domain's wait queue), then look once more: one
    // freed before we were visible woke no one.
    if (!h.waiting.exchange(true, std::memory_order_seq_cst))
      nr_waiting_.fetch_add(1, std::memory_order_seq_cst);
    got = get_token(h.cur_domain);
  }
  if (!got) return nullptr;
  ++h.batching;
  rqs.remove(rq);
  h.queued.fetch_sub(1, std::memory_order_relaxed);
  KyberPriv& p = priv(*rq);
  p.token = true;
  p.io_start_ns = sched_clock::now();
  return rq;
}

Request* KyberScheduler::dispatch(HwQueue& hctx) {
  Hctx& h = *hctxs_[hctx.index()];
  std::lock_guard lock(h.lock);
  if (h.batching < kKyberBatch[h.cur_domain]) {
    if (Request* rq = dispatch_cur_domain(h)) return rq;
  }
  // The batch is over, or its domain is empty or out of tokens: the next
  // domains in turn, back round to this one.
  h.batching = 0;
  for (unsigned i = 0; i < kKyberDomains; ++i) {
    h.cur_domain = h.cur_domain + 1 == kKyberDomains ? 0 : h.cur_domain + 1;
    if (Request* rq = dispatch_cur_domain(h)) return rq;
  }
  return nullptr;
}

bool KyberScheduler::has_work(const HwQueue& hctx) const {
  return hctxs_[hctx.index()]->queued.load(std::memory_order_relaxed) != 0;
}

void KyberScheduler::completed(Request& rq, uint64_t) {
  const KyberPriv& p = priv(rq);
  if (p.domain == kKyberOther || p.io_start_ns == 0) return;
  const uint64_t now = sched_clock::now();
  latency_.add(p.domain, now - p.made_ns, now - p.io_start_ns);
  if (latency_.due(static_cast<int64_t>(now))) {
    latency_.run_timer(static_cast<int64_t>(now));
    wake_waiters();  // depths may have grown
  }
}

void KyberScheduler::finish_request(Request& rq) { put_token(rq); }

bool KyberScheduler::bio_merge(Queue& q, HwQueue& hctx, Bio& bio) {
  Hctx& h = *hctxs_[hctx.index()];
  std::lock_guard lock(h.lock);
  int scan = kMergeScan;
  for (Request* rq = h.rqs[domain_of(bio.op())].back(); rq && scan-- > 0; rq = rq->prev) {
    const Queue::Merge where = q.can_merge(*rq, bio);
    if (where == Queue::Merge::kNone) continue;
    q.merge_bio(*rq, bio, where);
    return true;
  }
  return false;
}

void KyberScheduler::requests_merged(Request&, Request& next) {
  // Kyber merges bios only; should a request be merged away, it leaves.
  Hctx& h = *hctxs_[next.hctx().index()];
  h.rqs[priv(next).domain].remove(&next);
  h.queued.fetch_sub(1, std::memory_order_relaxed);
}

unsigned KyberScheduler::limit_depth(const Bio& bio) const {
  // kyber_limit_depth: only asynchronous requests (op_is_sync: reads, and
  // writes someone waits for).
  if (bio.op() == Op::kRead ||
      bio.has_flag(BioFlag::kSync | BioFlag::kFua | BioFlag::kPreflush))
    return 0;
  return async_depth_.load(std::memory_order_relaxed);
}

std::vector<std::pair<std::string, std::string>> KyberScheduler::tunables() const {
  return {{"read_lat_nsec", std::to_string(latency_.target(kKyberRead))},
          {"write_lat_nsec", std::to_string(latency_.target(kKyberWrite))}};
}

void KyberScheduler::set_tunable(std::string_view name, std::string_view value) {
  KyberDomain d;
  if (name == "read_lat_nsec") {
    d = kKyberRead;
  } else if (name == "write_lat_nsec") {
    d = kKyberWrite;
  } else {
    throw Error(
        fmt::format("kyber has no tunable '{}' (read_lat_nsec, write_lat_nsec)", name));
  }
  latency_.set_target(
      d, static_cast<uint64_t>(parse_tunable("kyber", name, value, 1, INT64_MAX)));
}

extern const SchedulerType kKyberScheduler{
    "kyber", "token depths per domain, tuned to latency targets",
    [](Queue& q) -> std::unique_ptr<Scheduler> {
      return std::make_unique<KyberScheduler>(q);
    },
    sizeof(KyberPriv)};

}  // namespace blkstack
