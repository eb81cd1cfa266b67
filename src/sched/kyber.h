// kyber: the kernel's token-based latency scheduler (block/kyber-iosched.c).
//
// Requests fall into four domains: reads, writes, discards and everything
// else. A request goes to the driver only with a token of its domain, and
// each domain has a token depth (at most 256, 128, 64 and 16). The
// completion and total latencies of reads, writes and discards are
// counted in histograms of eight buckets around the domain's target
// (read_lat_nsec 2 ms, write_lat_nsec 10 ms, discards 5 s); 100 ms after a
// completion (the kernel's kyber_timer_fn, here run by the first
// completion past that time: no thread, no timer) the depths are adjusted:
// when any domain's p90 completion latency is over its target, the device
// is congested and every domain whose p99 total latency is under its
// target is throttled; a domain whose p99 is over its target gets more
// tokens, in proportion (3/4 of the target gives 3/4 of the depth, twice
// the target twice the depth). Dispatch takes domains in turn, in batches
// of 16 reads, 8 writes, 1 discard and 1 other.
//
// Internal: the scheduler's class is here so that tests can watch its
// depths; KyberLatency holds the timer rules on their own.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "blkstack/driver/scheduler.h"

namespace blkstack {

enum KyberDomain : uint8_t { kKyberRead, kKyberWrite, kKyberDiscard, kKyberOther };
inline constexpr unsigned kKyberDomains = 4;
// Token depths at most (kyber_depth), and each domain's batch.
inline constexpr unsigned kKyberMaxDepth[kKyberDomains] = {256, 128, 64, 16};
inline constexpr unsigned kKyberBatch[kKyberDomains] = {16, 8, 1, 1};

// The latency histograms and the timer's rules (no queue, no requests):
// add samples, then run the timer with the time it fires at.
class KyberLatency {
 public:
  static constexpr unsigned kShift = 2;                // KYBER_LATENCY_SHIFT
  static constexpr unsigned kBuckets = 2u << kShift;   // 4 under, 4 over the target
  static constexpr int64_t kTimerNs = 100'000'000;     // HZ / 10
  static constexpr int64_t kWindowNs = 1'000'000'000;  // HZ: or 500 samples
  static constexpr unsigned kMinSamples = 500;
  enum Type : uint8_t { kTotal, kIo };  // since made, since sent to the driver

  KyberLatency();
  // The target of reads, writes and discards, in ns (latency_targets).
  void set_target(unsigned domain, uint64_t ns) { target_[domain].store(ns); }
  uint64_t target(unsigned domain) const { return target_[domain].load(); }
  // A completion's latencies (add_latency_sample), any thread.
  void add(unsigned domain, uint64_t total_ns, uint64_t io_ns);
  // Arms the timer if it is not (timer_reduce); true if it is due by
  // `now`, for the one caller that then runs it (claimed).
  bool due(int64_t now);
  // kyber_timer_fn: the depths after the samples since the last run.
  void run_timer(int64_t now);
  unsigned depth(unsigned domain) const {
    return depth_[domain].load(std::memory_order_relaxed);
  }

 private:
  // calculate_percentile: the bucket holding the percentile, or -1 when
  // there are too few samples yet (under 500 and under a second).
  int percentile(unsigned domain, Type type, unsigned pct, int64_t now);

  std::array<std::atomic<uint64_t>, kKyberDomains> target_;
  std::array<std::atomic<unsigned>, kKyberDomains> depth_;
  // Per completion (any thread), then summed by the timer.
  std::atomic<uint32_t> recent_[kKyberOther][2][kBuckets] = {};
  std::atomic<int64_t> timer_due_{0};  // 0: not armed
  std::mutex timer_lock_;              // the rest is the timer's
  uint32_t buckets_[kKyberOther][2][kBuckets] = {};
  int64_t latency_timeout_[kKyberOther] = {};
  int domain_p99_[kKyberOther] = {-1, -1, -1};
};

class KyberScheduler final : public Scheduler {
 public:
  explicit KyberScheduler(Queue& q);
  ~KyberScheduler() override;

  void init_hctx(HwQueue& hctx) override;
  void depth_updated(HwQueue& hctx) override { init_hctx(hctx); }
  void prepare_request(Request& rq) override;
  void insert(HwQueue& hctx, RequestList& list, bool at_head) override;
  Request* dispatch(HwQueue& hctx) override;
  bool has_work(const HwQueue& hctx) const override;
  void completed(Request& rq, uint64_t now_ns) override;
  void finish_request(Request& rq) override;
  void requeue_request(Request& rq) override { put_token(rq); }
  bool bio_merge(Queue& q, HwQueue& hctx, Bio& bio) override;
  void requests_merged(Request& rq, Request& next) override;
  unsigned limit_depth(const Bio& bio) const override;
  std::vector<std::pair<std::string, std::string>> tunables() const override;
  void set_tunable(std::string_view name, std::string_view value) override;

  // For tests: the current token depth of a domain, and tokens in use.
  unsigned depth(unsigned domain) const { return latency_.depth(domain); }
  unsigned tokens_in_use(unsigned domain) const { return in_use_[domain].load(); }
  KyberLatency& latency() { return latency_; }

 private:
  struct Hctx;
  Request* dispatch_cur_domain(Hctx& h);
  bool get_token(unsigned domain);
  void put_token(Request& rq);
  // A token came free, or depths grew: run the hardware queues waiting.
  void wake_waiters();

  Queue& q_;
  KyberLatency latency_;
  std::array<std::atomic<unsigned>, kKyberDomains> in_use_;
  std::atomic<unsigned> async_depth_{1};
  std::atomic<unsigned> nr_waiting_{0};  // hardware queues out of tokens
  std::vector<std::unique_ptr<Hctx>> hctxs_;
};

}  // namespace blkstack
