// ControlServer: the control socket of `blkstack serve` — a unix stream
// socket speaking the line protocol of control_protocol.h, served by one
// thread of its own (epoll, non-blocking sockets).
//
// Who may connect: the socket is made with `mode` (0600 by default), and
// each client's credentials (SO_PEERCRED) are checked too, since bind()
// makes the socket before chmod() narrows it: root and the server's own user
// may talk to it, and members of the socket file's group (primary or
// supplementary) when `mode` lets the group write. Anyone else gets an
// error reply and is closed.
//
// Bounds: a request line of kMaxControlLine bytes at most (a longer one gets
// "too_long" and the connection is closed); max_clients connections (one
// more gets "busy" and is closed); max_output bytes of replies waiting for a
// client that does not read them (then it is cut off). So no client can make
// the server grow without bound or block. Out of descriptors, it stops
// accepting for a moment (until one is freed) rather than spin.
//
// Requests run one at a time on the server's thread, in the order they
// arrive: a slow handler delays the others by its own call, no more. The
// handler may throw ControlError (its code and message go back), or any
// std::exception ("failed" with its message).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>

#include "serve/control_protocol.h"

namespace blkstack::serve {

using ControlHandler = std::function<nlohmann::json(const ControlRequest&)>;

struct ControlServerOptions {
  std::string path;    // the socket's path
  mode_t mode = 0600;  // its permissions
  size_t max_clients = 64;
  size_t max_output = 4 << 20;  // bytes of unread replies per client
};

class ControlServer {
 public:
  // Binds, listens and starts the thread. Replaces a stale socket at `path`
  // (one nobody listens on); throws Error if another server listens there,
  // if `path` is something other than a socket, or on any failure to bind.
  ControlServer(ControlServerOptions options, ControlHandler handler);
  ~ControlServer();  // stop()
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Closes every client, joins the thread and removes the socket file (if it
  // is still the one it made). Idempotent.
  void stop();
  const std::string& path() const { return options_.path; }
  // Clients connected now (for tests and `stats`).
  size_t clients() const { return clients_.load(std::memory_order_relaxed); }

 private:
  struct Client;
  void run();
  void accept_clients();
  // Reads what `c` sent and answers its complete lines; false: close it.
  bool on_readable(Client& c);
  // Writes what is pending; false: close it.
  bool flush(Client& c);
  void answer(Client& c, std::string_view line);
  void close_client(int fd);
  void resume_accepting();  // after a pause for want of descriptors
  bool peer_allowed(int fd) const;

  ControlServerOptions options_;
  ControlHandler handler_;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: stop()
  dev_t sock_dev_ = 0;
  ino_t sock_ino_ = 0;
  gid_t sock_gid_ = 0;  // the socket file's group: who the mode's group bits admit
  bool accept_paused_ = false;  // the thread's: listen_fd_ not watched
  std::atomic<size_t> clients_{0};
  std::atomic<bool> stopped_{false};
  std::unordered_map<int, std::unique_ptr<Client>> table_;  // by fd; the thread's
  std::thread thread_;
};

}  // namespace blkstack::serve
