// Server: the NBD server's listeners and event loops.
//
// One EventLoop (epoll) per thread; each owns the connections it was given
// and runs them start to finish, so a connection is never touched by two
// threads and the hot path takes no lock. Listening sockets live in loop 0,
// which hands accepted sockets to the loops round-robin. Completions that
// arrive on a driver's thread are passed back to the owning loop through a
// lock-free list and an eventfd.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "export/export_table.h"
#include "export/nbd/connection.h"
#include "export/nbd/wait_policy.h"

namespace blkstack::nbd {

struct ServerOptions {
  std::vector<std::string> unix_sockets;  // paths
  std::vector<std::string> tcp;           // HOST:PORT, [V6HOST]:PORT; port 0 picks one
  unsigned threads = 1;                   // event loops
  ConnectionLimits limits;
  // Open connections above which new ones are closed at once. Each can
  // make the server hold about limits.max_bytes_in_flight + 64 KiB (see
  // connection.h), so this times that bounds the server's memory.
  size_t max_connections = 1024;
  // A client that has not chosen an export after this long is closed (as
  // qemu-nbd does), so idle sockets cannot hold connections forever.
  std::chrono::milliseconds handshake_timeout = std::chrono::seconds(10);
  // How the loops wait between rounds: spinning at low depth, coalescing
  // at high depth (wait_policy.h).
  WaitOptions wait;
};

class EventLoop;

// Hold points for tests of races. Empty in production, where each costs
// one test of an empty std::function where it sits.
struct ServerTestHooks {
  // On a driver's thread, after it queued a completion for a loop that
  // must be woken for it, and before it wakes the loop.
  std::function<void()> before_completion_wake;
  // On a loop's thread, once it has taken stop(): its connections read no
  // more requests, and what they find in their sockets is refused.
  std::function<void()> after_stop_begun;
};

// What one event loop did: its waits of each kind, and the requests the
// rounds after its coalescing waits brought.
struct LoopStats {
  uint64_t blocked = 0;
  uint64_t spun = 0;
  uint64_t coalesced = 0;
  uint64_t coalesced_requests = 0;
  // Rounds after a coalescing wait by the clients' backlog when their
  // replies went out (backlog.h: kNone, kLastPart, kMore), and the
  // coalescing sleep the loop would take now.
  uint64_t backlog[3] = {};
  uint64_t coalesce_us = 0;
};

class Server {
 public:
  Server(ServerOptions options, std::shared_ptr<const ExportTable> exports);
  ~Server();  // stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and listens on every address, then starts the loops. Throws
  // Error naming the address that failed.
  void start();
  // What start() listens on: "unix:PATH", "tcp:HOST:PORT" (the real port).
  std::vector<std::string> addresses() const { return addresses_; }
  // Serves an already connected socket (tests use one end of a socketpair).
  // Throws Error, leaving `fd` to the caller, before start() or after stop().
  void adopt(int fd);

  // Connections that start negotiating from now on see `exports` (SIGHUP).
  void set_exports(std::shared_ptr<const ExportTable> exports);
  std::shared_ptr<const ExportTable> exports() const;
  // A reload that drops exports: publishes `exports` as set_exports() does,
  // then closes every connection whose export is not in it with the same
  // disk — it answers what is in flight, refuses what arrives meanwhile
  // (ESHUTDOWN), and disconnects, forcibly after `grace` — and returns once
  // they are all closed. A connection still negotiating that picks such an
  // export from the old table is closed as it chooses. Connections to the
  // exports that stay never notice.
  void retire_exports(std::shared_ptr<const ExportTable> exports,
                      std::chrono::milliseconds grace = std::chrono::seconds(10));

  // Refuses new clients, lets each connection answer what is in flight,
  // closes them (forcibly after `grace`, for clients that stopped reading),
  // joins the loops, flushes every exported disk and removes the unix
  // sockets. Idempotent.
  void stop(std::chrono::milliseconds grace = std::chrono::seconds(10));

  // Connections open now, over all loops, including sockets accepted and
  // not yet taken up by their loop: what max_connections limits.
  size_t connections() const;
  // Per export name: the connections open on it now (past their
  // handshake), and the requests they have read since the export was first
  // chosen. Each loop counts its own; this sums them.
  struct ExportCounts {
    uint64_t connections = 0;
    uint64_t requests = 0;
  };
  ExportCounts export_counts(std::string_view name) const;
  // How each event loop waited (see wait_policy.h); after stop(), as it
  // was then. stats_report() says it in a line per loop, for the log.
  std::vector<LoopStats> loop_stats() const;
  // Bytes of buffers the open connections hold now: receive buffers and
  // request buffers, in flight or kept for reuse (see ConnectionLimits).
  uint64_t buffer_bytes() const;
  std::string stats_report() const;

  // Before start(): see ServerTestHooks.
  void set_test_hooks(ServerTestHooks hooks) { hooks_ = std::move(hooks); }

 private:
  friend class EventLoop;
  void dispatch(int fd);  // an accepted socket, to the next loop
  // Counts a connection against max_connections; false when at the limit.
  bool reserve_connection();
  void connection_closed();  // a counted socket was closed
  void retire_done();        // a loop closed its connections to retired exports

  ServerOptions options_;
  mutable std::mutex exports_mu_;
  std::shared_ptr<const ExportTable> exports_;
  std::vector<std::shared_ptr<const ExportTable>> seen_;  // flushed at stop
  std::vector<std::unique_ptr<EventLoop>> loops_;
  std::vector<int> listen_fds_;
  std::vector<std::string> addresses_;
  std::atomic<unsigned> next_loop_{0};
  std::atomic<size_t> open_{0};  // connections counted by reserve_connection()
  bool started_ = false;
  bool stopped_ = false;
  std::vector<LoopStats> final_stats_;
  ServerTestHooks hooks_;
  // retire_exports(): one at a time; the loops yet to answer.
  std::mutex retire_mu_;
  std::mutex retire_wait_mu_;
  std::condition_variable retire_cv_;
  size_t retire_pending_ = 0;
  mutable std::mutex loops_mu_;  // export_counts() against stop() clearing loops_
};

}  // namespace blkstack::nbd
