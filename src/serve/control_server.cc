#include "serve/control_server.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "blkstack/error.h"

namespace blkstack::serve {

struct ControlServer::Client {
  int fd;
  std::string in;        // bytes of the line being read
  std::string out;       // replies not yet written
  bool closing = false;  // close once `out` is written (too_long, refused)
};

namespace {

constexpr size_t kReadChunk = 4096;  // per client per wake-up: turns for all
// How long accepting pauses when there is no descriptor for a client.
constexpr int kAcceptRetryMs = 100;

[[noreturn]] void fail(const std::string& what) {
  throw Error(fmt::format("control socket: {}: {}", what, std::strerror(errno)));
}

sockaddr_un make_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    throw Error(fmt::format("control socket: path '{}' must be 1 to {} bytes", path,
                            sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

// Removes `path` if it is a socket nobody listens on (left by a server that
// died); refuses anything else.
void remove_stale_socket(const std::string& path, const sockaddr_un& addr) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    fail(fmt::format("cannot stat '{}'", path));
  }
  if (!S_ISSOCK(st.st_mode)) {
    throw Error(fmt::format(
        "control socket: '{}' exists and is not a socket; refusing to replace it", path));
  }
  const int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) fail("socket");
  const int rc = connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  const int err = errno;
  close(probe);
  if (rc == 0) {
    throw Error(fmt::format("control socket: another server listens on '{}'", path));
  }
  if (err != ECONNREFUSED) {
    errno = err;
    fail(fmt::format("cannot probe '{}'", path));
  }
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    fail(fmt::format("cannot remove stale '{}'", path));
  }
}

void epoll_add(int epfd, int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) fail("epoll_ctl");
}

void epoll_mod(int epfd, int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
}

// Best effort, for a client being turned away before it is registered.
void send_and_close(int fd, const std::string& reply) {
  [[maybe_unused]] ssize_t n = send(fd, reply.data(), reply.size(), MSG_NOSIGNAL);
  close(fd);
}

}  // namespace

ControlServer::ControlServer(ControlServerOptions options, ControlHandler handler)
    : options_(std::move(options)), handler_(std::move(handler)) {
  const sockaddr_un addr = make_address(options_.path);
  remove_stale_socket(options_.path, addr);
  try {
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) fail("socket");
    if (bind(listen_fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
      fail(fmt::format("cannot bind '{}'", options_.path));
    }
    // Not following a symlink: in a directory others may write, one could
    // have replaced the socket since bind() and have us chmod its target.
    struct stat st;
    if (fchmodat(AT_FDCWD, options_.path.c_str(), options_.mode, AT_SYMLINK_NOFOLLOW) !=
            0 ||
        lstat(options_.path.c_str(), &st) != 0) {
      const int err = errno;
      unlink(options_.path.c_str());
      errno = err;
      fail(fmt::format("cannot set the mode of '{}'", options_.path));
    }
    sock_dev_ = st.st_dev;
    sock_ino_ = st.st_ino;
    sock_gid_ = st.st_gid;
    if (listen(listen_fd_, 64) != 0) fail("listen");
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0) fail("epoll_create1");
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) fail("eventfd");
    epoll_add(epoll_fd_, listen_fd_, EPOLLIN);
    epoll_add(epoll_fd_, wake_fd_, EPOLLIN);
    thread_ = std::thread([this] { run(); });
  } catch (...) {
    stop();
    throw;
  }
}

ControlServer::~ControlServer() { stop(); }

void ControlServer::stop() {
  if (stopped_.exchange(true)) return;
  if (thread_.joinable()) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
    thread_.join();
  }
  for (auto& [fd, client] : table_) close(fd);
  table_.clear();
  clients_.store(0, std::memory_order_relaxed);
  for (int* fd : {&listen_fd_, &epoll_fd_, &wake_fd_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
  // Only the socket this server made: a later server may own the path now.
  struct stat st;
  if (sock_ino_ != 0 && lstat(options_.path.c_str(), &st) == 0 &&
      st.st_dev == sock_dev_ && st.st_ino == sock_ino_) {
    unlink(options_.path.c_str());
  }
}

void ControlServer::run() {
  epoll_event events[32];
  for (;;) {
    const int n = epoll_wait(epoll_fd_, events, 32, accept_paused_ ? kAcceptRetryMs : -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (n == 0 && accept_paused_) resume_accepting();
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == wake_fd_) return;
      if (fd == listen_fd_) {
        accept_clients();
        continue;
      }
      auto it = table_.find(fd);
      if (it == table_.end()) continue;
      Client& c = *it->second;
      bool keep = true;
      if (events[i].events & EPOLLOUT) keep = flush(c);
      if (keep && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !c.closing) {
        keep = on_readable(c);
      }
      if (!keep) close_client(fd);
    }
  }
}

bool ControlServer::peer_allowed(int fd) const {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
  if (cred.uid == 0 || cred.uid == geteuid()) return true;
  if ((options_.mode & 0020) == 0) return false;
  // The socket file's group (the server's, or its directory's with setgid),
  // as the peer's primary group or one of its supplementary ones: what the
  // kernel's check of the mode counted.
  if (cred.gid == sock_gid_) return true;
  std::vector<gid_t> groups(64);
  for (;;) {
    len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) break;
    if (errno != ERANGE || len <= groups.size() * sizeof(gid_t)) return false;
    groups.resize(len / sizeof(gid_t));
  }
  groups.resize(len / sizeof(gid_t));
  return std::find(groups.begin(), groups.end(), sock_gid_) != groups.end();
}

void ControlServer::accept_clients() {
  for (;;) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      // Out of descriptors or memory, the client stays queued and the
      // listening socket readable: stop watching it for a while rather
      // than spin. Else EAGAIN, or a client gone already.
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        epoll_mod(epoll_fd_, listen_fd_, 0);
        accept_paused_ = true;
      }
      return;
    }
    if (!peer_allowed(fd)) {
      send_and_close(fd, format_control_error(
                             nullptr, ControlError(control_code::kFailed,
                                                   "permission denied: only root and the "
                                                   "server's user may use this socket")));
      continue;
    }
    if (table_.size() >= options_.max_clients) {
      send_and_close(
          fd, format_control_error(nullptr,
                                   ControlError(control_code::kBusy,
                                                fmt::format("too many clients (limit {})",
                                                            options_.max_clients))));
      continue;
    }
    epoll_add(epoll_fd_, fd, EPOLLIN);
    table_.emplace(fd, std::make_unique<Client>(Client{fd, {}, {}, false}));
    clients_.store(table_.size(), std::memory_order_relaxed);
  }
}

bool ControlServer::on_readable(Client& c) {
  char buf[kReadChunk];
  const ssize_t n = recv(c.fd, buf, sizeof(buf), 0);
  if (n == 0) return false;  // gone, perhaps mid-request: nothing to answer
  if (n < 0) return errno == EAGAIN || errno == EINTR;
  std::string_view data(buf, static_cast<size_t>(n));
  while (!data.empty() && !c.closing) {
    const size_t nl = data.find('\n');
    const std::string_view piece = data.substr(0, nl);
    if (c.in.size() + piece.size() > kMaxControlLine + 1) {  // +1: a '\r'
      // Answered and closed: the rest of the line would have to be read
      // and thrown away, and a client that sends one is broken anyway.
      c.out += format_control_error(
          nullptr, ControlError(control_code::kTooLong,
                                fmt::format("request line longer than {} bytes",
                                            kMaxControlLine)));
      c.closing = true;
      break;
    }
    if (nl == std::string_view::npos) {
      c.in.append(piece);
      break;
    }
    if (c.in.empty()) {
      answer(c, piece);
    } else {
      c.in.append(piece);
      answer(c, c.in);
      c.in.clear();
    }
    data.remove_prefix(nl + 1);
    if (c.out.size() > options_.max_output) return false;  // not reading replies
  }
  return flush(c);
}

void ControlServer::answer(Client& c, std::string_view line) {
  ControlRequest req;
  if (auto err = parse_control_request(line, req)) {
    c.out += format_control_error(req.id, *err);
    return;
  }
  try {
    c.out += format_control_result(req.id, handler_(req));
  } catch (const ControlError& e) {
    c.out += format_control_error(req.id, e);
  } catch (const std::exception& e) {
    c.out += format_control_error(req.id, ControlError(control_code::kFailed, e.what()));
  }
}

bool ControlServer::flush(Client& c) {
  size_t done = 0;
  while (done < c.out.size()) {
    const ssize_t n =
        send(c.fd, c.out.data() + done, c.out.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) return false;
      break;
    }
    done += static_cast<size_t>(n);
  }
  c.out.erase(0, done);
  if (c.out.size() > options_.max_output) return false;
  if (c.out.empty() && c.closing) return false;
  // Wait for room only while something is pending; stop reading a client
  // that is being closed.
  uint32_t events = c.closing ? 0u : uint32_t{EPOLLIN};
  if (!c.out.empty()) events |= EPOLLOUT;
  epoll_mod(epoll_fd_, c.fd, events);
  return true;
}

void ControlServer::close_client(int fd) {
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  close(fd);
  table_.erase(fd);
  clients_.store(table_.size(), std::memory_order_relaxed);
  if (accept_paused_) resume_accepting();  // a descriptor is free now
}

void ControlServer::resume_accepting() {
  accept_paused_ = false;
  epoll_mod(epoll_fd_, listen_fd_, EPOLLIN);
}

}  // namespace blkstack::serve
