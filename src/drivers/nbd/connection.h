// NbdConnection: one connection of the nbd client driver to its server: a
// libnbd handle driven by an event loop thread of its own (libnbd's aio
// API: nbd_aio_get_fd, nbd_aio_get_direction, nbd_aio_notify_read/write),
// the commands in flight on it, and reconnecting when it drops.
//
// A command (IoCmd: one bio, or one request) goes out as one NBD command
// per piece of memory (BioChunk), so that libnbd reads into and writes from
// the bios' own buffers: no copy, no bounce buffer. Its state is the one
// word of IoCmd::driver_data(), so nothing is allocated per I/O on our side
// (libnbd mallocs one struct per NBD command, and frees it when the reply
// is retired; that is libnbd's own allocation):
//
//   bits  0-4   the first error (a Status), 0 while none
//   bit   5     the connection dropped under one of its NBD commands
//   bits  6-47  this NbdConnection (aligned to 64 bytes: its low bits are 0)
//   bits 48-55  NBD commands still to answer, plus 1 while still issuing
//   bits 56-57  the phase: preflush, data, postflush (emulated FUA)
//   bits 58-59  the timeout epoch it was issued in (see below)
//
// libnbd runs completion callbacks with its handle lock held, and a
// completed bio's owner may submit again at once (to this disk: into
// libnbd, a deadlock). So a callback only counts; the last one puts the
// command on a lock-free list that the event loop empties after libnbd
// returns, completing, advancing a phase, or keeping it for a reconnect.
//
// When the connection drops, libnbd answers every command in flight with
// ENOTCONN. Such a command waits, with those submitted meanwhile, for the
// loop to reconnect (back-off from 100 ms doubling to 5 s, each attempt
// bounded by connect_timeout) and is then sent again whole; after
// dead_conn_timeout without a connection they fail with
// Status::kTransport, and so does new I/O until a reconnect succeeds (the
// kernel nbd driver's dead_conn_timeout; 0: fail at once).
//
// A server that stays connected but never answers is dead too: a command
// unanswered for `timeout` (the kernel nbd's timeout, 30 s) shuts the
// socket down, and what was in flight takes the path above. No deadline is
// kept per command: the loop advances an epoch every third of the timeout,
// each issue counts itself in its epoch's counter (of four) until it is
// answered, and an epoch still counting when its slot comes round again
// holds a command at least `timeout` old. A server that answers nothing
// on its new connections either keeps the clock of dead_conn_timeout
// running from the first timeout, so such I/O fails in the end.
#pragma once

#include <libnbd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "blkstack/disk.h"
#include "blkstack/driver/transfer.h"

namespace blkstack::nbd {

// libnbd refuses reads and writes over 64 MiB; the NBD protocol advises
// 32 MiB where the server says nothing.
inline constexpr uint32_t kDefaultMaxBlock = 32u << 20;

// What the export offers, read at the first connection; a reconnect must
// find the same size and at least the same offers, or it is refused
// (lacks()).
struct ExportInfo {
  uint64_t size = 0;
  bool read_only = false;
  bool can_flush = false;
  bool can_fua = false;
  bool can_trim = false;
  bool can_zero = false;
  bool can_multi_conn = false;
  bool base_allocation = false;  // block status with base:allocation
  uint32_t min_block = 0;        // nbd_get_block_size; 0: not advertised
  uint32_t preferred_block = 0;
  uint32_t max_block = 0;
};

struct ConnectOptions {
  std::string uri;
  uint64_t connect_timeout_ns = 10'000'000'000;
  uint64_t dead_conn_timeout_ns = 30'000'000'000;
  // A command unanswered this long: the connection counts as dead.
  uint64_t timeout_ns = 30'000'000'000;
  // More than one connection: their flushes rely on the server's multi-conn.
  bool multi_conn = false;
};

// A handle set up the driver's way (structured replies, base:allocation)
// and connected to `uri`, within `timeout_ns`; null with *error set when
// the server is unreachable, refuses the export, or does not answer in
// time. Blocks: for setting up a disk, never on the I/O path.
nbd_handle* connect_blocking(const std::string& uri, uint64_t timeout_ns,
                             std::string* error);
// What `h`, connected, offers.
ExportInfo read_export_info(nbd_handle* h);
// Why a server that now offers `now` cannot serve a disk set up on `was`
// (see ExportInfo); empty when it can.
std::string lacks(const ExportInfo& was, const ExportInfo& now, bool multi_conn);

class alignas(64) NbdConnection {
 public:
  // Takes `h`, connected; starts the event loop.
  NbdConnection(nbd_handle* h, const ExportInfo& info, const ConnectOptions& options,
                unsigned index);
  ~NbdConnection();  // stops the loop, closes the handle (nothing in flight)
  NbdConnection(const NbdConnection&) = delete;
  NbdConnection& operator=(const NbdConnection&) = delete;

  // Sends `cmd` (never blocks on the network: libnbd's socket is
  // non-blocking and it keeps what did not fit for the loop to write).
  void start(IoCmd cmd);

  // The disk is going: I/O waiting for a reconnect, now or later, fails
  // with Status::kOffline instead of waiting out dead_conn_timeout.
  void shutdown();

  // Block status of the bytes at `offset` (nbd_block_status, base:allocation),
  // waiting at most connect_timeout; false when it could not be had.
  bool block_status(uint64_t offset, uint64_t max_length, Extent* out);

  bool up() const { return up_.load(std::memory_order_relaxed); }
  uint64_t reconnects() const { return reconnects_.load(std::memory_order_relaxed); }
  std::string last_error() const;

 private:
  enum Phase : uint64_t { kPreflush = 0, kData = 1, kPostflush = 2 };

  // The driver_data word (see the top of this file).
  static constexpr uint64_t kStatusMask = 0x1f;
  static constexpr uint64_t kLostBit = 1u << 5;
  static constexpr uint64_t kConnMask = 0x0000'ffff'ffff'ffc0;
  static constexpr unsigned kCountShift = 48;
  static constexpr uint64_t kCountOne = uint64_t{1} << kCountShift;
  static constexpr uint64_t kCountMask = uint64_t{0xff} << kCountShift;
  static constexpr unsigned kPhaseShift = 56;
  static constexpr unsigned kEpochShift = 58;
  static constexpr unsigned kEpochs = 4;
  static constexpr uint64_t kEpochMask = uint64_t{kEpochs - 1} << kEpochShift;
  // NBD commands of one IoCmd at most (+1 while issuing): its chunks.
  static constexpr unsigned kMaxPieces = 250;

  static int on_reply(void* user_data, int* error);
  static void add_error(IoCmd cmd, Status s);
  static Phase phase_of(uint64_t word) { return Phase((word >> kPhaseShift) & 3); }

  // Issues the NBD commands of `cmd`'s current phase, under issue_mu_.
  // False if the connection is down (then nothing was issued).
  bool issue(IoCmd cmd);
  // One reference of `cmd` dropped to zero: on the loop thread, or handed
  // to it (a callback never completes a bio: libnbd's lock is held).
  void last_ref(IoCmd cmd, bool in_callback);
  // The loop's part: `cmd` waits for a reconnect, or fails if waiting
  // is over (dead_conn_timeout).
  void wait_for_reconnect(IoCmd cmd);
  // `cmd` cannot go out now (the connection is down): to the loop.
  void park(IoCmd cmd);
  static void reset_for_retry(IoCmd cmd);
  // The NBD commands of one issue() of the command with `word` are all
  // answered: it leaves its epoch's count.
  void issue_answered(uint64_t word);
  Phase first_phase(IoCmd cmd) const;
  bool next_phase(IoCmd cmd, Phase after, Phase* next) const;

  static void push(std::atomic<IoCmd>& head, IoCmd cmd);
  static IoCmd take_fifo(std::atomic<IoCmd>& head);
  void kick();

  void run();
  // POLLIN on the live handle: reads replies, several if they are there.
  void read_replies(nbd_handle* h);
  static constexpr unsigned kReadBatch = 64;
  void drain();
  void connection_lost(std::chrono::steady_clock::time_point now, bool timed_out);
  // Every third of the timeout: true when a command has waited past it.
  bool epoch_tick();
  void try_reconnect(std::chrono::steady_clock::time_point now);
  void connected();
  void fail_waiting(Status s);

  const ExportInfo info_;
  const ConnectOptions options_;
  const unsigned index_;

  // Submitters issue under issue_mu_ (libnbd's handle lock serializes them
  // anyway); the loop swaps handles under it.
  std::mutex issue_mu_;
  nbd_handle* h_;  // the live handle (issue_mu_ to change; the loop reads it)
  std::atomic<bool> up_{true};
  // Issues unanswered, by the epoch they went out in (the loop advances
  // epoch_); on the line issue_mu_ already brings to the submitter.
  std::atomic<unsigned> epoch_{0};
  std::atomic<int64_t> unanswered_[kEpochs] = {};
  std::atomic<bool> answered_{false};  // the server answered something

  int event_fd_ = -1;            // wakes the loop
  std::atomic<IoCmd> done_{};    // answered commands, for the loop
  std::atomic<IoCmd> parked_{};  // submitted while down
  std::atomic<bool> stop_{false};
  std::atomic<bool> closing_{false};  // shutdown(): the disk is going

  // Loop thread only.
  IoCmd wait_head_, wait_tail_;  // waiting for a reconnect, in order
  nbd_handle* connecting_ = nullptr;
  std::chrono::steady_clock::time_point down_since_, next_attempt_, attempt_deadline_;
  std::chrono::milliseconds backoff_{0};
  bool failing_ = false;  // down longer than dead_conn_timeout
  std::chrono::steady_clock::time_point next_tick_;
  // Timed out, and no answer since: the time of that first timeout.
  bool stalled_ = false;
  std::chrono::steady_clock::time_point stalled_since_;

  std::atomic<uint64_t> reconnects_{0};
  mutable std::mutex error_mu_;
  std::string last_error_;

  std::thread loop_;
};

}  // namespace blkstack::nbd
