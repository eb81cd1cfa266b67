// WaitPolicy: how an event loop waits between two rounds.
//
// A round serves everything its wake-up found. What the wait before it
// costs depends on the client, and on a virtual machine a sleep and a
// wake-up cost more than serving a 4 KiB request: tens of microseconds of
// scheduler work, paid by the loop and by the client whose send wakes it.
// So the loop waits in one of three ways:
//
//   kBlock     epoll_wait until something happens: idle connections, and
//              clients that leave long gaps between requests.
//   kSpin      look again without sleeping for up to `spin` first. After a
//              round of one or two requests: a client at low depth, whose
//              next request follows our reply within microseconds; or of
//              a piece of a large write, whose next piece is on its way.
//   kCoalesce  sleep `coalesce` on a timer, not on the sockets, then serve
//              all that arrived in one round: one read for the requests,
//              one send for the replies. A client keeping many requests in
//              flight then pays no wake-up per request sent, the loop none
//              per request served, and both move fewer, larger socket
//              buffers. This is interrupt coalescing, as network cards
//              (ethtool -C rx-usecs) and NVMe controllers do it.
//
// Coalescing pays only while the client is the slower side: it still has
// replies to read when the loop wakes, so the sleep cost it nothing. When
// the client has read everything, it was waiting for us, and the sleep
// only added latency. So the loop reports, for every coalescing round,
// whether each client that sent requests still had replies unread at the
// wake-up (its backlog; unix sockets tell this, TCP does not, so TCP
// clients are never coalesced).
//
// Entering is a probe: every `probe_interval` rounds that brought
// requests, one wait is a coalescing one; if the round after it brings at
// least `enter_at` requests from clients with a backlog, the loop keeps
// coalescing until two rounds in a row bring fewer than `stay_at` requests
// or a client without a backlog. A failed probe, or coalescing that ends
// within kSettledRounds, doubles the interval (up to kMaxProbeInterval),
// so a client that does not gain from coalescing pays for one probe in
// thousands of requests.
//
// Not thread-safe: one per event loop, used by its thread.
#pragma once

#include <chrono>
#include <cstdint>

namespace blkstack::nbd {

struct WaitOptions {
  std::chrono::microseconds spin{30};
  std::chrono::microseconds coalesce{20};  // 0: never coalesce
  uint32_t enter_at = 4;
  uint32_t stay_at = 2;
  uint32_t probe_interval = 64;  // 1 to WaitPolicy::kMaxProbeInterval
};

class WaitPolicy {
 public:
  enum class Wait { kBlock, kSpin, kCoalesce };
  static constexpr uint32_t kMaxProbeInterval = 4096;
  static constexpr uint32_t kSettledRounds = 64;

  explicit WaitPolicy(WaitOptions options = {});

  // How to wait before the next round.
  Wait next();
  // What the round after a wait brought.
  struct Round {
    uint64_t requests = 0;  // request headers read
    bool payload = false;   // bytes of a write's payload read
    // After a coalescing wait: every client that woke the loop still had
    // replies unread at the wake-up.
    bool backlog = false;
  };
  void round_done(const Round& round);

  bool coalescing() const { return coalescing_; }
  const WaitOptions& options() const { return options_; }

 private:
  void set_probe_interval(bool reset);

  WaitOptions options_;
  Wait last_ = Wait::kBlock;
  Round last_round_;
  bool coalescing_ = false;
  uint32_t short_rounds_ = 0;    // in a row, while coalescing
  uint32_t settled_rounds_ = 0;  // since coalescing began
  uint32_t probe_interval_;      // rounds with requests between probes
  uint32_t rounds_to_probe_;
};

}  // namespace blkstack::nbd
