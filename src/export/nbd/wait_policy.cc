#include "export/nbd/wait_policy.h"

#include <algorithm>

namespace blkstack::nbd {
namespace {

// Where the coalescing sleep starts, before it has heard from a client.
constexpr std::chrono::microseconds kFirstInterval{20};

}  // namespace

WaitPolicy::WaitPolicy(WaitOptions options)
    : options_(options),
      probe_interval_(std::clamp<uint32_t>(options.probe_interval, 1, kMaxProbeInterval)),
      rounds_to_probe_(probe_interval_),
      interval_(std::clamp(kFirstInterval, shortest(), options.coalesce)) {}

std::chrono::microseconds WaitPolicy::shortest() const {
  return std::min(options_.min_coalesce, options_.coalesce);
}

WaitPolicy::Wait WaitPolicy::next() {
  const bool can_coalesce = options_.coalesce.count() > 0;
  if (coalescing_ && can_coalesce) {
    last_ = Wait::kCoalesce;
  } else if (last_round_.requests == 0) {
    last_ = last_round_.payload ? Wait::kSpin : Wait::kBlock;
  } else if (can_coalesce && --rounds_to_probe_ == 0) {
    last_ = Wait::kCoalesce;  // a probe
  } else {
    last_ = last_round_.requests <= 2 ? Wait::kSpin : Wait::kBlock;
  }
  return last_;
}

void WaitPolicy::round_done(const Round& round) {
  last_round_ = round;
  if (last_ != Wait::kCoalesce) return;
  if (coalescing_) adapt_interval(round);
  const bool worth_it = round.backlog.value_or(Backlog::kNone) != Backlog::kNone &&
                        round.requests >= options_.stay_at;
  if (coalescing_) {
    short_rounds_ = worth_it ? 0 : short_rounds_ + 1;
    if (short_rounds_ < 2) {
      ++settled_rounds_;
      return;
    }
    coalescing_ = false;
    // Coalescing that lasted earns quick probes; a short stint means the
    // client's depth is at the edge, where probing often costs.
    set_probe_interval(settled_rounds_ >= kSettledRounds);
    return;
  }
  // The round after a probe.
  if (worth_it && round.requests >= options_.enter_at) {
    coalescing_ = true;
    short_rounds_ = settled_rounds_ = 0;
  } else {
    set_probe_interval(false);
  }
}

void WaitPolicy::adapt_interval(const Round& round) {
  using std::chrono::microseconds;
  if (!round.backlog) return;
  switch (*round.backlog) {
    case Backlog::kNone:  // the client ran dry: it waited for us
      interval_ = std::max(shortest(), interval_ * 3 / 4);
      break;
    case Backlog::kMore:
      // A wake-up for one or two requests with much left unread is a slow
      // reader of large replies, not a sign the sleep is short.
      if (round.requests < options_.stay_at) break;
      interval_ = std::min(options_.coalesce,
                           interval_ + std::max(microseconds(1), interval_ / 8));
      break;
    case Backlog::kLastPart:
      break;
  }
}

void WaitPolicy::set_probe_interval(bool reset) {
  probe_interval_ =
      reset ? std::clamp<uint32_t>(options_.probe_interval, 1, kMaxProbeInterval)
            : std::min(probe_interval_ * 2, kMaxProbeInterval);
  rounds_to_probe_ = probe_interval_;
}

}  // namespace blkstack::nbd
