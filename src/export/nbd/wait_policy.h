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
//   kCoalesce  sleep on a timer, not on the sockets, then serve all that
//              arrived in one round: one read for the requests, one send
//              for the replies. A client keeping many requests in flight
//              then pays no wake-up per request sent, the loop none per
//              request served, and both move fewer, larger socket
//              buffers. This is interrupt coalescing, as network cards
//              (ethtool -C rx-usecs) and NVMe controllers do it.
//
// Coalescing pays only while the client is the slower side: it still has
// replies to read when our next batch goes out, so the sleep cost it
// nothing. When it has read everything, it was waiting for us, and the
// sleep only added latency. So the loop reports, for every round after a
// coalescing wait, the least backlog (backlog.h) that the clients it
// served had just before their replies went out: kMore, kLastPart (they
// were reading the last two thirds of the batch before) or kNone. Unix
// sockets tell this; TCP does not, and TCP clients are never coalesced.
//
// The sleep adapts to the client, as the kernel's dynamic interrupt
// moderation (lib/dim) does for network cards: the longer it is, the more
// requests a wake-up serves, but a client whose depth the sleep outlasts
// runs dry. A round that finds kMore lengthens the next sleep by an eighth
// (up to `coalesce`), one that finds kNone shortens it by a quarter (down
// to `min_coalesce`), and kLastPart, the aim, keeps it. Only rounds while
// coalescing adapt it, not failed probes. Here a client at depth 32
// settles near 40 µs, one at depth 16 near 10 µs.
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
#include <optional>

#include "export/nbd/backlog.h"

namespace blkstack::nbd {

struct WaitOptions {
  std::chrono::microseconds spin{30};
  std::chrono::microseconds coalesce{100};  // the longest sleep; 0: never coalesce
  std::chrono::microseconds min_coalesce{5};
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
    // After a coalescing wait: the least backlog of the clients served;
    // empty if none was measured (no replies went out).
    std::optional<Backlog> backlog = std::nullopt;
  };
  void round_done(const Round& round);

  bool coalescing() const { return coalescing_; }
  // The next coalescing sleep.
  std::chrono::microseconds interval() const { return interval_; }
  const WaitOptions& options() const { return options_; }

 private:
  void set_probe_interval(bool reset);
  void adapt_interval(const Round& round);
  std::chrono::microseconds shortest() const;  // min_coalesce, or less

  WaitOptions options_;
  Wait last_ = Wait::kBlock;
  Round last_round_;
  bool coalescing_ = false;
  uint32_t short_rounds_ = 0;    // in a row, while coalescing
  uint32_t settled_rounds_ = 0;  // since coalescing began
  uint32_t probe_interval_;      // rounds with requests between probes
  uint32_t rounds_to_probe_;
  std::chrono::microseconds interval_;
};

}  // namespace blkstack::nbd
