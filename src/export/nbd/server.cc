#include "export/nbd/server.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/error.h"
#include "export/log.h"
#include "export/nbd/wait_policy.h"

namespace blkstack::nbd {
namespace {

thread_local const EventLoop* tls_loop = nullptr;
constexpr int kSocketBuffer = 2 << 20;

std::string errno_text() { return error_text(errno); }

// Splits "HOST:PORT" or "[V6]:PORT".
void split_host_port(const std::string& addr, std::string* host, std::string* port) {
  const size_t colon = addr.rfind(':');
  if (colon == std::string::npos || colon + 1 == addr.size()) {
    throw Error(fmt::format("listen address '{}': expected HOST:PORT", addr));
  }
  *host = addr.substr(0, colon);
  *port = addr.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  if (host->empty()) throw Error(fmt::format("listen address '{}': no host", addr));
}

std::string sockaddr_text(const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
    return fmt::format("{}:{}", buf, ntohs(in->sin_port));
  }
  auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
  inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
  return fmt::format("[{}]:{}", buf, ntohs(in6->sin6_port));
}

int listen_unix(const std::string& path) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sa.sun_path) {
    throw Error(fmt::format("unix socket '{}': the path must be 1 to {} bytes", path,
                            sizeof sa.sun_path - 1));
  }
  std::memcpy(sa.sun_path, path.data(), path.size());
  // A socket left behind by a server that died is replaced, as nbdkit
  // does; anything else at the path is an error.
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      throw Error(fmt::format("unix socket '{}': exists and is not a socket", path));
    ::unlink(path.c_str());
  }
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) throw Error(fmt::format("unix socket '{}': {}", path, errno_text()));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
      ::listen(fd, 128) != 0) {
    const std::string why = errno_text();
    ::close(fd);
    throw Error(fmt::format("unix socket '{}': {}", path, why));
  }
  return fd;
}

int listen_tcp(const std::string& addr, std::string* bound) {
  std::string host, port;
  split_host_port(addr, &host, &port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    throw Error(fmt::format("listen address '{}': {}", addr, gai_strerror(rc)));
  }
  std::string why = "no address";
  int fd = -1;
  for (addrinfo* ai = res; ai && fd < 0; ai = ai->ai_next) {
    fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 128) != 0) {
      why = errno_text();
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(res);
  if (fd < 0) throw Error(fmt::format("listen address '{}': {}", addr, why));
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  *bound = sockaddr_text(reinterpret_cast<sockaddr*>(&ss));
  return fd;
}

}  // namespace

// --- EventLoop -----------------------------------------------------------------

// One loop's counts for one export (Server::export_counts); written by the
// loop's thread only, on a cache line of its own (another loop's counter
// for the same export is written as often).
struct alignas(64) ExportCounter {
  std::atomic<uint64_t> connections{0};
  std::atomic<uint64_t> requests{0};
};

// What an epoll event points at.
struct LoopEntry {
  enum Kind { kWake, kCompletions, kListener, kConn } kind;
  int fd = -1;
  std::unique_ptr<Connection> conn;
  uint32_t events = 0;  // registered with epoll
  std::chrono::steady_clock::time_point handshake_deadline;
  bool dirty = false;  // on the list of connections to run/update
  // Set once the connection chose its export.
  ExportCounter* counter = nullptr;
  bool retiring = false;  // its export was dropped: draining to close
};

class EventLoop final : public Reactor {
 public:
  EventLoop(Server& server, unsigned index)
      : server_(server), index_(index), policy_(server.options_.wait) {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    evfd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    completion_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (epfd_ < 0 || evfd_ < 0 || completion_fd_ < 0) {
      const std::string why = errno_text();
      close_fds();  // the destructor does not run for a constructor that throws
      throw Error(fmt::format("event loop: {}", why));
    }
    coalesce_us_.store(static_cast<uint64_t>(policy_.interval().count()));
    wake_.kind = LoopEntry::kWake;
    wake_.fd = evfd_;
    add(&wake_, EPOLLIN);
    completions_.kind = LoopEntry::kCompletions;
    completions_.fd = completion_fd_;
    add(&completions_, EPOLLIN);
  }
  ~EventLoop() override {
    for (auto& l : listeners_)
      if (l->fd >= 0) ::close(l->fd);
    for (int fd : pending_) {  // dealt to us after our loop ended
      ::close(fd);
      server_.connection_closed();
    }
    close_fds();
  }

  void add_listener(int fd) {
    auto e = std::make_unique<LoopEntry>();
    e->kind = LoopEntry::kListener;
    e->fd = fd;
    add(e.get(), EPOLLIN);
    listeners_.push_back(std::move(e));
  }

  void start() {
    thread_ = std::thread([this] { loop(); });
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

  bool on_reactor_thread() const override { return tls_loop == this; }

  void post(RequestSlot* s) override {
    RequestSlot* head = remote_.load(std::memory_order_relaxed);
    do {
      s->next = head;
    } while (!remote_.compare_exchange_weak(head, s, std::memory_order_release,
                                            std::memory_order_relaxed));
    if (head != nullptr) return;  // the batch's first poster wakes us
    // Until the write below returns, this thread still uses the loop,
    // which may meanwhile have taken and answered the batch: the loop does
    // not end before it has read this wake-up (await_completion_wakes()).
    if (server_.hooks_.before_completion_wake) server_.hooks_.before_completion_wake();
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(completion_fd_, &one, sizeof one);
  }

  void adopt(int fd) {
    {
      std::lock_guard lock(mu_);
      pending_.push_back(fd);
    }
    kick();
  }

  void request_stop(std::chrono::steady_clock::time_point deadline) {
    {
      std::lock_guard lock(mu_);
      deadline_ = deadline;
      stop_ = true;
    }
    kick();
  }

  // retire_exports(): close the connections to exports the server's table
  // no longer has, then call server_.retire_done().
  void request_retire(std::chrono::steady_clock::time_point deadline) {
    {
      std::lock_guard lock(mu_);
      retire_requested_ = true;
      retire_deadline_ = deadline;
    }
    kick();
  }

  Server::ExportCounts export_counts(std::string_view name) const {
    std::lock_guard lock(counters_mu_);
    auto it = counters_.find(name);
    if (it == counters_.end()) return {};
    return {it->second->connections.load(std::memory_order_relaxed),
            it->second->requests.load(std::memory_order_relaxed)};
  }

  void buffers_changed(int64_t delta) override {
    count(buffer_bytes_, static_cast<uint64_t>(delta));  // wraps back for a negative one
  }
  uint64_t buffer_bytes() const { return buffer_bytes_.load(std::memory_order_relaxed); }

  LoopStats stats() const {
    LoopStats st;
    st.blocked = waits_[0].load(std::memory_order_relaxed);
    st.spun = waits_[1].load(std::memory_order_relaxed);
    st.coalesced = waits_[2].load(std::memory_order_relaxed);
    st.coalesced_requests = coalesced_requests_.load(std::memory_order_relaxed);
    for (int i = 0; i < 3; ++i)
      st.backlog[i] = backlogs_[i].load(std::memory_order_relaxed);
    st.coalesce_us = coalesce_us_.load(std::memory_order_relaxed);
    return st;
  }

 private:
  void kick() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(evfd_, &one, sizeof one);
  }

  void close_fds() {
    for (int fd : {completion_fd_, evfd_, epfd_})
      if (fd >= 0) ::close(fd);
  }

  // Counts the wake-ups that posters of batches of completions wrote.
  void take_completion_wakes() {
    uint64_t n = 0;
    if (::read(completion_fd_, &n, sizeof n) == sizeof n) completion_wakes_ += n;
  }

  // Before the loop ends. Each batch of completions it took has exactly
  // one poster that wakes it, after queuing the batch's first slot, and
  // that may not have done so yet when the loop took the batch. Once the
  // wake-ups match the batches taken, no driver thread is inside post()
  // any more and the server may destroy the loop. Costs nothing per I/O.
  void await_completion_wakes() {
    while (completion_wakes_ < batches_taken_) {
      pollfd p{completion_fd_, POLLIN, 0};
      ::poll(&p, 1, -1);
      take_completion_wakes();
    }
  }

  void add(LoopEntry* e, uint32_t events) { control(e, EPOLL_CTL_ADD, events); }
  void set_events(LoopEntry* e, uint32_t events) { control(e, EPOLL_CTL_MOD, events); }
  void control(LoopEntry* e, int op, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = e;
    ::epoll_ctl(epfd_, op, e->fd, &ev);
    e->events = events;
  }

  void mark(LoopEntry* e) {
    if (e->dirty) return;
    e->dirty = true;
    dirty_.push_back(e);
  }

  void take_pending() {
    std::vector<int> fds;
    {
      std::lock_guard lock(mu_);
      fds.swap(pending_);
    }
    for (int fd : fds) {
      if (stopping_) {
        ::close(fd);
        server_.connection_closed();
        continue;
      }
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // not on unix: fine
      // A 1 MiB read reply should leave in one sendmsg: with the default
      // ~200 KiB buffer it takes five, each after an EPOLLOUT round trip.
      // The kernel caps this at net.core.wmem_max / rmem_max.
      const int buf = kSocketBuffer;
      ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
      ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
      auto e = std::make_unique<LoopEntry>();
      e->kind = LoopEntry::kConn;
      e->fd = fd;
      e->conn = std::make_unique<Connection>(fd, server_.exports(), *this,
                                             server_.options_.limits);
      e->conn->reactor_data = e.get();
      e->handshake_deadline =
          std::chrono::steady_clock::now() + server_.options_.handshake_timeout;
      negotiating_ = true;
      serve_log(fmt::format("{}: connected (loop {})", e->conn->name(), index_));
      add(e.get(), 0);
      mark(e.get());
      conns_.push_back(std::move(e));
    }
  }

  void take_remote() {
    RequestSlot* list = remote_.exchange(nullptr, std::memory_order_acquire);
    if (list == nullptr) return;
    ++batches_taken_;
    RequestSlot* rev = nullptr;  // the stack is newest first
    while (list) {
      RequestSlot* n = list->next;
      list->next = rev;
      rev = list;
      list = n;
    }
    while (rev) {
      RequestSlot* n = rev->next;
      Connection* c = rev->conn;
      c->complete(rev);
      mark(static_cast<LoopEntry*>(c->reactor_data));
      rev = n;
    }
  }

  void accept_all(LoopEntry* l) {
    for (int i = 0; i < 64; ++i) {
      const int fd = ::accept4(l->fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        // Out of descriptors or memory: the pending connection stays, the
        // level-triggered listener would wake us at once, forever. Stop
        // listening for a moment instead.
        serve_log(fmt::format("accept: {}; not accepting for 100 ms", errno_text()));
        pause_listeners();
        return;
      }
      server_.dispatch(fd);
    }
  }

  void pause_listeners() {
    for (auto& l : listeners_) set_events(l.get(), 0);
    listeners_paused_ = true;
    resume_at_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
  }

  void maybe_resume_listeners() {
    if (!listeners_paused_ || std::chrono::steady_clock::now() < resume_at_) return;
    for (auto& l : listeners_) set_events(l.get(), EPOLLIN);
    listeners_paused_ = false;
  }

  void begin_stop() {
    stopping_ = true;
    // The entries stay until the loop is destroyed: an event of this very
    // round may still point at one (and finds stopping_ set).
    for (auto& l : listeners_) {
      ::epoll_ctl(epfd_, EPOLL_CTL_DEL, l->fd, nullptr);
      ::close(l->fd);
      l->fd = -1;
    }
    listeners_paused_ = false;  // nothing to resume
    for (auto& e : conns_) {
      e->conn->begin_shutdown();
      mark(e.get());
    }
    if (server_.hooks_.after_stop_begun) server_.hooks_.after_stop_begun();
  }

  // Runs the marked connections, updates their epoll interest, and
  // destroys the ones that are finished.
  void settle() {
    for (size_t i = 0; i < dirty_.size(); ++i) {
      LoopEntry* e = dirty_[i];
      e->dirty = false;
      Connection& c = *e->conn;
      const uint64_t seen = c.requests_seen();
      const uint64_t payload_reads = c.payload_reads();
      c.set_split_sends(measure_backlog_ || policy_.coalescing());
      c.run();
      if (e->counter) count(e->counter->requests, c.requests_seen() - seen);
      if (measure_backlog_ && c.requests_seen() != seen) {
        if (const std::optional<Backlog> b = c.backlog_at_last_send())
          backlog_ = backlog_ ? std::min(*backlog_, *b) : *b;
      }
      round_requests_ += c.requests_seen() - seen;
      round_payload_ |= c.payload_reads() != payload_reads;
      if (c.wants_rerun()) again_.push_back(e);
      const uint32_t want = (c.wants_read() ? uint32_t{EPOLLIN} : 0u) |
                            (c.wants_write() ? uint32_t{EPOLLOUT} : 0u);
      if (want != e->events) set_events(e, want);
    }
    dirty_.clear();
    bool any_finished = false;
    for (auto& e : conns_) any_finished |= e->conn->finished();
    if (!any_finished) return;
    std::erase_if(conns_, [&](const std::unique_ptr<LoopEntry>& e) {
      if (!e->conn->finished()) return false;
      ::epoll_ctl(epfd_, EPOLL_CTL_DEL, e->fd, nullptr);
      server_.connection_closed();
      if (e->counter) count(e->counter->connections, ~uint64_t{0});  // minus one
      if (e->retiring) --retiring_;
      return true;  // the Connection closes the socket
    });
  }

  // True when the export `c` chose is not in the server's table now with
  // the same disk (a reload dropped or replaced it).
  static bool stale(const Connection& c, const ExportTable& table) {
    const Export* x = table.find(c.export_name());
    return !x || x->name != c.export_name() || x->bdev.get() != c.bdev();
  }

  void retire(LoopEntry* e) {
    if (!e->retiring) {
      e->retiring = true;
      ++retiring_;
    }
    e->conn->begin_shutdown();
    mark(e);
  }

  // The connection just chose its export: count it (before the client hears
  // of it), and close it if a reload retired that export meanwhile (it
  // negotiated with an old table). Once per connection: the lock is not on
  // the I/O path.
  void export_chosen(Connection& c) override {
    auto* e = static_cast<LoopEntry*>(c.reactor_data);
    const std::string& name = e->conn->export_name();
    {
      std::lock_guard lock(counters_mu_);
      auto& slot = counters_[name];
      if (!slot) slot = std::make_unique<ExportCounter>();
      e->counter = slot.get();
    }
    count(e->counter->connections);
    if (stale(*e->conn, *server_.exports())) {
      retire(e);
    } else if (e->retiring) {  // negotiated through a reload, chose what stays
      e->retiring = false;
      --retiring_;
    }
  }

  // Connections to dropped exports drain and close. Connections still
  // negotiating with an older table are waited for too: the run() that
  // completes a handshake may already submit requests, and those must land
  // before the caller removes a dropped export's disk.
  void begin_retire() {
    const std::shared_ptr<const ExportTable> table = server_.exports();
    for (auto& e : conns_) {
      if (e->counter) {
        if (stale(*e->conn, *table)) retire(e.get());
      } else if (e->conn->in_handshake() && e->conn->table() != table.get() &&
                 !e->retiring) {
        e->retiring = true;
        ++retiring_;
      }
    }
    retire_ack_ = true;
  }

  // Answers retire_exports() once the retired connections are gone; past
  // the deadline, closes them forcibly.
  void settle_retire() {
    if (!retire_ack_) return;
    if (retiring_ != 0 && std::chrono::steady_clock::now() >= retire_deadline_) {
      for (auto& e : conns_) {
        if (!e->retiring) continue;
        e->conn->begin_shutdown(/*force=*/true);
        mark(e.get());
      }
      settle();
    }
    if (retiring_ != 0) return;
    retire_ack_ = false;
    server_.retire_done();
  }

  // Closes connections still negotiating past their deadline. Scans at
  // most twice a second, and only while some connection may negotiate.
  void expire_handshakes() {
    if (!negotiating_) return;
    const auto now = std::chrono::steady_clock::now();
    if (now < next_expiry_check_) return;
    next_expiry_check_ = now + std::chrono::milliseconds(500);
    bool any = false;
    for (auto& e : conns_) {
      if (!e->conn->in_handshake()) continue;
      if (now < e->handshake_deadline) {
        any = true;
        continue;
      }
      serve_log(fmt::format("{}: no export chosen within the handshake timeout",
                            e->conn->name()));
      e->conn->begin_shutdown(/*force=*/true);
      mark(e.get());
    }
    negotiating_ = any;
    settle();
  }

  // Waits as the policy says (see wait_policy.h) for the next events.
  int wait(epoll_event* events, int timeout) {
    if (timeout != -1) {
      // A round for housekeeping or for requests left in a receive buffer:
      // the policy hears of it with the next round; only a wake-up from a
      // coalescing sleep says anything about the clients' backlog.
      measure_backlog_ = false;
      return ::epoll_wait(epfd_, events, kMaxEvents, timeout);
    }
    // The round since the last wait.
    if (last_wait_ == WaitPolicy::Wait::kCoalesce) {
      count(coalesced_requests_, round_requests_);
      if (backlog_) count(backlogs_[static_cast<int>(*backlog_)]);
    }
    policy_.round_done({round_requests_, round_payload_, backlog_});
    coalesce_us_.store(static_cast<uint64_t>(policy_.interval().count()),
                       std::memory_order_relaxed);
    round_requests_ = 0;
    round_payload_ = false;
    const WaitPolicy::Wait how = policy_.next();
    last_wait_ = how;
    count(waits_[static_cast<int>(how)]);
    measure_backlog_ = how == WaitPolicy::Wait::kCoalesce;
    backlog_.reset();
    int n = 0;
    switch (how) {
      case WaitPolicy::Wait::kCoalesce: {
        const auto us = policy_.interval().count();
        const timespec ts{us / 1000000, (us % 1000000) * 1000};
        ::clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, nullptr);
        n = ::epoll_wait(epfd_, events, kMaxEvents, 0);
        break;
      }
      case WaitPolicy::Wait::kSpin: {
        const auto until = std::chrono::steady_clock::now() + policy_.options().spin;
        do {
          n = ::epoll_wait(epfd_, events, kMaxEvents, 0);
        } while (n == 0 && std::chrono::steady_clock::now() < until);
        break;
      }
      case WaitPolicy::Wait::kBlock:
        break;
    }
    return n != 0 ? n : ::epoll_wait(epfd_, events, kMaxEvents, -1);
  }
  // Counters written by the loop's thread only, read by stats().
  static void count(std::atomic<uint64_t>& c, uint64_t n = 1) {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  std::atomic<uint64_t> buffer_bytes_{0};  // of this loop's connections
  std::atomic<uint64_t> waits_[3] = {};    // by WaitPolicy::Wait
  std::atomic<uint64_t> coalesced_requests_{0};
  std::atomic<uint64_t> backlogs_[3] = {};  // by Backlog
  std::atomic<uint64_t> coalesce_us_{0};

  static constexpr int kMaxEvents = 64;
  // The wait the policy chose last, and what was read since.
  WaitPolicy::Wait last_wait_ = WaitPolicy::Wait::kBlock;
  uint64_t round_requests_ = 0;
  bool round_payload_ = false;
  // After a coalescing wait: the least backlog of the clients served
  // (those that sent requests and got replies in the round).
  bool measure_backlog_ = false;
  std::optional<Backlog> backlog_;

  void loop() {
    tls_loop = this;
    // Coalescing sleeps are tens of microseconds: without this, the
    // default 50 µs timer slack would more than double them.
    ::prctl(PR_SET_TIMERSLACK, 1UL);
    epoll_event events[kMaxEvents];
    while (true) {
      for (LoopEntry* e : again_) mark(e);
      maybe_resume_listeners();
      // Wake once a second while someone is negotiating, for the timeout.
      const int timeout = !again_.empty()                                 ? 0
                          : stopping_ || listeners_paused_ || retire_ack_ ? 50
                          : negotiating_                                  ? 1000
                                                                          : -1;
      again_.clear();
      const int n = wait(events, timeout);
      for (int i = 0; i < n; ++i) {
        auto* e = static_cast<LoopEntry*>(events[i].data.ptr);
        switch (e->kind) {
          case LoopEntry::kWake: {
            uint64_t v;
            [[maybe_unused]] ssize_t r = ::read(evfd_, &v, sizeof v);
            bool stop, retire;
            {
              std::lock_guard lock(mu_);
              stop = stop_;
              retire = std::exchange(retire_requested_, false);
            }
            if (stop && !stopping_) begin_stop();
            take_pending();
            take_remote();
            if (retire) begin_retire();
            break;
          }
          case LoopEntry::kCompletions:
            take_completion_wakes();
            take_remote();
            break;
          case LoopEntry::kListener:
            if (!stopping_) accept_all(e);  // else closed by begin_stop()
            break;
          case LoopEntry::kConn:
            mark(e);
            break;
        }
      }
      // A completion may land between the wake-up and here; taking the
      // list every round costs one atomic exchange.
      take_remote();
      settle();
      expire_handshakes();
      settle_retire();
      if (stopping_) {
        if (!forced_ && std::chrono::steady_clock::now() >= deadline_) {
          forced_ = true;
          for (auto& e : conns_) {
            e->conn->begin_shutdown(/*force=*/true);
            mark(e.get());
          }
          settle();
        }
        if (conns_.empty()) break;
      }
    }
    if (std::exchange(retire_ack_, false)) server_.retire_done();
    {
      std::lock_guard lock(mu_);
      // Asked after the last round: nothing is left to retire.
      if (std::exchange(retire_requested_, false)) server_.retire_done();
    }
    await_completion_wakes();
    tls_loop = nullptr;
  }

  Server& server_;
  unsigned index_;
  int epfd_ = -1;
  int evfd_ = -1;           // adopt() and request_stop() wake the loop here,
  int completion_fd_ = -1;  // post() here, once per batch of completions
  LoopEntry wake_;
  LoopEntry completions_;
  // Batches of completions taken from remote_, and the wake-ups their
  // posters wrote to completion_fd_ that the loop has read.
  uint64_t batches_taken_ = 0;
  uint64_t completion_wakes_ = 0;
  std::vector<std::unique_ptr<LoopEntry>> listeners_;
  std::vector<std::unique_ptr<LoopEntry>> conns_;
  std::vector<LoopEntry*> dirty_;
  std::vector<LoopEntry*> again_;  // to run again next round (wants_rerun)
  WaitPolicy policy_;
  std::atomic<RequestSlot*> remote_{nullptr};
  std::thread thread_;
  std::mutex mu_;  // pending_, stop_, deadline_, retire_*: not on the I/O path
  std::vector<int> pending_;
  bool stop_ = false;
  bool retire_requested_ = false;
  std::chrono::steady_clock::time_point retire_deadline_;
  bool retire_ack_ = false;         // loop thread only: retire_done() owed
  size_t retiring_ = 0;             // connections with `retiring` set
  mutable std::mutex counters_mu_;  // counters_'s map, not the counts
  std::map<std::string, std::unique_ptr<ExportCounter>, std::less<>> counters_;
  std::chrono::steady_clock::time_point deadline_;
  bool stopping_ = false;  // loop thread only
  bool forced_ = false;
  bool negotiating_ = false;       // a connection is in its handshake
  bool listeners_paused_ = false;  // accept failed for want of resources
  std::chrono::steady_clock::time_point resume_at_;  // of the paused listeners
  std::chrono::steady_clock::time_point next_expiry_check_;
};

// --- Server ------------------------------------------------------------------------

Server::Server(ServerOptions options, std::shared_ptr<const ExportTable> exports)
    : options_(std::move(options)), exports_(std::move(exports)) {
  if (options_.threads == 0) options_.threads = 1;
  seen_.push_back(exports_);
}

Server::~Server() { stop(); }

void Server::start() {
  if (started_) return;
  try {
    for (const std::string& path : options_.unix_sockets) {
      listen_fds_.push_back(listen_unix(path));
      addresses_.push_back("unix:" + path);
    }
    for (const std::string& addr : options_.tcp) {
      std::string bound;
      listen_fds_.push_back(listen_tcp(addr, &bound));
      addresses_.push_back("tcp:" + bound);
    }
    for (unsigned i = 0; i < options_.threads; ++i) {
      loops_.push_back(std::make_unique<EventLoop>(*this, i));
    }
  } catch (...) {
    for (int fd : listen_fds_) ::close(fd);
    listen_fds_.clear();
    addresses_.clear();
    loops_.clear();  // the ones made before the failure: their descriptors
    throw;
  }
  for (int fd : listen_fds_) loops_[0]->add_listener(fd);
  for (auto& l : loops_) l->start();
  started_ = true;
}

bool Server::reserve_connection() {
  size_t n = open_.load(std::memory_order_relaxed);
  do {
    if (n >= options_.max_connections) return false;
  } while (!open_.compare_exchange_weak(n, n + 1, std::memory_order_relaxed));
  return true;
}

void Server::connection_closed() { open_.fetch_sub(1, std::memory_order_relaxed); }

void Server::dispatch(int fd) {
  // Counted from here, not when a loop adopts the socket: sockets dealt
  // but not yet taken by a loop are open too, and a burst of them would
  // otherwise all get past the limit.
  if (!reserve_connection()) {
    serve_log(fmt::format("refusing a connection: {} are open (the limit)",
                          options_.max_connections));
    ::close(fd);
    return;
  }
  const unsigned i = next_loop_.fetch_add(1, std::memory_order_relaxed) % loops_.size();
  loops_[i]->adopt(fd);
}

void Server::adopt(int fd) {
  if (!started_) throw Error("Server::adopt before start()");
  if (stopped_) throw Error("Server::adopt after stop()");  // no loop to deal it to
  dispatch(fd);
}

void Server::set_exports(std::shared_ptr<const ExportTable> exports) {
  std::lock_guard lock(exports_mu_);
  exports_ = std::move(exports);
  seen_.push_back(exports_);
}

void Server::retire_exports(std::shared_ptr<const ExportTable> exports,
                            std::chrono::milliseconds grace) {
  std::lock_guard one_at_a_time(retire_mu_);
  set_exports(std::move(exports));
  if (!started_ || stopped_) return;
  const auto deadline = std::chrono::steady_clock::now() + grace;
  {
    std::lock_guard lock(retire_wait_mu_);
    retire_pending_ = loops_.size();
  }
  for (auto& l : loops_) l->request_retire(deadline);
  {
    std::unique_lock lock(retire_wait_mu_);
    retire_cv_.wait(lock, [&] { return retire_pending_ == 0; });
  }
  // The connections that used older tables' dropped disks are gone: stop()
  // need not flush those disks (they may be gone too).
  std::lock_guard lock(exports_mu_);
  seen_.assign(1, exports_);
}

void Server::retire_done() {
  std::lock_guard lock(retire_wait_mu_);
  if (retire_pending_ > 0 && --retire_pending_ == 0) retire_cv_.notify_all();
}

Server::ExportCounts Server::export_counts(std::string_view name) const {
  ExportCounts sum;
  std::lock_guard lock(loops_mu_);  // the loops stay while we read them
  for (const auto& l : loops_) {
    const ExportCounts c = l->export_counts(name);
    sum.connections += c.connections;
    sum.requests += c.requests;
  }
  return sum;
}

std::shared_ptr<const ExportTable> Server::exports() const {
  std::lock_guard lock(exports_mu_);
  return exports_;
}

std::vector<LoopStats> Server::loop_stats() const {
  if (loops_.empty()) return final_stats_;
  std::vector<LoopStats> out;
  for (const auto& l : loops_) out.push_back(l->stats());
  return out;
}

std::string Server::stats_report() const {
  std::string out;
  const std::vector<LoopStats> all = loop_stats();
  for (size_t i = 0; i < all.size(); ++i) {
    const LoopStats& st = all[i];
    const uint64_t total = st.blocked + st.spun + st.coalesced;
    const auto pct = [&](uint64_t n) { return total ? 100.0 * n / total : 0.0; };
    const uint64_t measured = st.backlog[0] + st.backlog[1] + st.backlog[2];
    const auto share = [&](uint64_t n) { return measured ? 100.0 * n / measured : 0.0; };
    out += fmt::format(
        "loop {}: {} waits: block {:.0f}%, spin {:.0f}%, coalesce {:.0f}% ({:.1f} "
        "requests per coalesced round; clients' backlog at the reply: none {:.0f}%, "
        "last part {:.0f}%, more {:.0f}%; sleep now {} us)\n",
        i, total, pct(st.blocked), pct(st.spun), pct(st.coalesced),
        st.coalesced ? double(st.coalesced_requests) / st.coalesced : 0.0,
        share(st.backlog[0]), share(st.backlog[1]), share(st.backlog[2]), st.coalesce_us);
  }
  return out;
}

size_t Server::connections() const { return open_.load(std::memory_order_relaxed); }

uint64_t Server::buffer_bytes() const {
  uint64_t n = 0;
  for (const auto& l : loops_) n += l->buffer_bytes();
  return n;
}

void Server::stop(std::chrono::milliseconds grace) {
  if (!started_ || stopped_) return;
  stopped_ = true;
  const auto deadline = std::chrono::steady_clock::now() + grace;
  for (auto& l : loops_) l->request_stop(deadline);
  for (auto& l : loops_) l->join();
  final_stats_ = loop_stats();
  {
    std::lock_guard lock(loops_mu_);
    loops_.clear();  // closes the listening sockets
  }
  listen_fds_.clear();
  for (const std::string& path : options_.unix_sockets) ::unlink(path.c_str());
  // Writes were acknowledged; make them durable before we go.
  std::set<Disk*> flushed;
  for (const auto& table : seen_) {
    for (const Export& e : table->list()) {
      // A partition's flush is its disk's: once per disk.
      if (!flushed.insert(&e.bdev->disk()).second) continue;
      BlockHandle h(e.disk());
      if (const Status s = h.flush(); s != Status::kOk) {
        serve_log(
            fmt::format("flush of '{}' failed: {}", e.bdev->name(), status_name(s)));
      }
    }
  }
}

}  // namespace blkstack::nbd
