// bfq's iosched/ files: the kernel's names, units and defaults, each
// refused outside its range with the range in the message; and "weights",
// blkstack's per-issuer weights (the role of cgroup's io.bfq.weight).
#include <fmt/format.h>

#include <charconv>

#include "blkstack/error.h"
#include "sched/bfq.h"

namespace blkstack::bfq {
namespace {

constexpr uint64_t kMs = 1'000'000, kUs = 1'000;

// A decimal integer in lo..hi, or Error naming the tunable and the range.
uint64_t parse(std::string_view name, std::string_view value, uint64_t lo, uint64_t hi,
               std::string_view unit = "") {
  uint64_t v = 0;
  const char* end = value.data() + value.size();
  auto [p, ec] = std::from_chars(value.data(), end, v);
  if (ec != std::errc{} || p != end || v < lo || v > hi) {
    throw Error(fmt::format("bfq: {} must be from {} to {}{}{}, not '{}'", name, lo, hi,
                            unit.empty() ? "" : " ", unit, value));
  }
  return v;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\n')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\n')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> BfqScheduler::tunables() const {
  std::lock_guard lock(mu_);
  std::string weights = std::to_string(default_weight_);
  for (const auto& [id, w] : weights_) weights += fmt::format(" {}:{}", id, w);
  // Alphabetical, as the kernel's directory lists them.
  return {
      {"back_seek_max", std::to_string(t_.back_seek_max_kib)},
      {"back_seek_penalty", std::to_string(t_.back_seek_penalty)},
      {"fifo_expire_async", std::to_string(t_.fifo_expire_ns[0] / kMs)},
      {"fifo_expire_sync", std::to_string(t_.fifo_expire_ns[1] / kMs)},
      {"low_latency", t_.low_latency ? "1" : "0"},
      {"max_budget", std::to_string(max_budget_)},
      {"slice_idle", std::to_string(t_.slice_idle_ns / kMs)},
      {"slice_idle_us", std::to_string(t_.slice_idle_ns / kUs)},
      {"strict_guarantees", t_.strict_guarantees ? "1" : "0"},
      {"timeout_sync", std::to_string(t_.timeout_ns / kMs)},
      {"weights", weights},
  };
}

void BfqScheduler::set_tunable(std::string_view name, std::string_view value) {
  value = trim(value);
  std::lock_guard lock(mu_);
  if (name == "back_seek_max") {
    t_.back_seek_max_kib = parse(name, value, 0, uint64_t{1} << 30, "KiB");
  } else if (name == "back_seek_penalty") {
    t_.back_seek_penalty = static_cast<uint32_t>(parse(name, value, 1, 1000));
  } else if (name == "fifo_expire_async") {
    t_.fifo_expire_ns[0] = parse(name, value, 1, 600'000, "ms") * kMs;
  } else if (name == "fifo_expire_sync") {
    t_.fifo_expire_ns[1] = parse(name, value, 1, 600'000, "ms") * kMs;
  } else if (name == "low_latency") {
    // Off: each raised queue drops back at its next dispatch.
    t_.low_latency = parse(name, value, 0, 1) != 0;
  } else if (name == "max_budget") {
    // 0: auto-tuned from the device's rate.
    t_.user_max_budget = parse(name, value, 0, uint64_t{1} << 24, "sectors");
    if (t_.user_max_budget) {
      max_budget_ = t_.user_max_budget;
    } else {
      max_budget_ = auto_max_budget();
    }
  } else if (name == "slice_idle") {
    t_.slice_idle_ns = parse(name, value, 0, 1000, "ms") * kMs;
  } else if (name == "slice_idle_us") {
    t_.slice_idle_ns = parse(name, value, 0, 1'000'000, "us") * kUs;
  } else if (name == "strict_guarantees") {
    t_.strict_guarantees = parse(name, value, 0, 1) != 0;
    // Strict guarantees need idling: at least 8 ms of it, as the kernel sets.
    if (t_.strict_guarantees && t_.slice_idle_ns < 8 * kMs) t_.slice_idle_ns = 8 * kMs;
  } else if (name == "timeout_sync") {
    t_.timeout_ns = parse(name, value, 1, 60'000, "ms") * kMs;
  } else if (name == "weights") {
    // "W": the default weight; "ISSUER:W" one issuer's; "ISSUER:default"
    // drops it. Applies from the queue's next round.
    const size_t colon = value.find(':');
    if (colon == std::string_view::npos) {
      default_weight_ =
          static_cast<uint32_t>(parse("weights", value, kMinWeight, kMaxWeight));
      return;
    }
    const auto issuer = static_cast<IssuerId>(
        parse("weights issuer", value.substr(0, colon), 1, UINT32_MAX));
    const std::string_view w = value.substr(colon + 1);
    std::erase_if(weights_, [&](const auto& e) { return e.first == issuer; });
    uint32_t weight = 0;
    if (w != "default") {
      weight = static_cast<uint32_t>(parse("weights", w, kMinWeight, kMaxWeight));
      weights_.emplace_back(issuer, weight);
    }
    if (BfqQueue* q = pool_.find(issuer))
      q->new_weight = weight_for(issuer, q->ioprio, true);
  } else {
    throw Error(fmt::format(
        "bfq has no tunable '{}' (back_seek_max, back_seek_penalty, fifo_expire_async, "
        "fifo_expire_sync, low_latency, max_budget, slice_idle, slice_idle_us, "
        "strict_guarantees, timeout_sync, weights)",
        name));
  }
}

}  // namespace blkstack::bfq
