#include "drivers/nbd/connection.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <condition_variable>
#include <cstring>

#include "blkstack/driver/limit_options.h"

namespace blkstack::nbd {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::chrono::milliseconds kFirstBackoff{100};
constexpr std::chrono::milliseconds kMaxBackoff{5000};

// The connection whose event loop runs on this thread, if any.
thread_local const NbdConnection* tls_loop = nullptr;

static_assert(sizeof(IoCmd) == sizeof(void*) && std::is_trivially_copyable_v<IoCmd>);
void* to_user_data(IoCmd cmd) { return std::bit_cast<void*>(cmd); }
IoCmd from_user_data(void* p) { return std::bit_cast<IoCmd>(p); }

std::string libnbd_error() {
  const char* e = nbd_get_error();
  return e && *e ? e : "unknown libnbd error";
}

// Set up as every handle of the driver: structured replies (the default,
// said here because block status needs them) and base:allocation.
nbd_handle* new_handle(std::string* error) {
  nbd_handle* h = nbd_create();
  if (h == nullptr) {
    *error = libnbd_error();
    return nullptr;
  }
  if (nbd_set_request_structured_replies(h, true) == -1 ||
      nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1) {
    *error = libnbd_error();
    nbd_close(h);
    return nullptr;
  }
  return h;
}

bool handle_dead(nbd_handle* h) { return nbd_aio_is_dead(h) || nbd_aio_is_closed(h); }

// Errors that say the connection went, not that the server failed the
// command: libnbd answers what was in flight with ENOTCONN when the
// connection dies; a server going down says ESHUTDOWN.
bool connection_error(int err) {
  return err == ENOTCONN || err == ECONNRESET || err == EPIPE || err == ESHUTDOWN ||
         err == ECONNABORTED;
}

std::string seconds(uint64_t ns) {
  return fmt::format("{:g} s", static_cast<double>(ns) / 1e9);
}

}  // namespace

nbd_handle* connect_blocking(const std::string& uri, uint64_t timeout_ns,
                             std::string* error) {
  nbd_handle* h = new_handle(error);
  if (h == nullptr) return nullptr;
  // Asynchronous, so that nothing waits longer than the timeout (a
  // server that accepts and never answers would hold nbd_connect_uri
  // forever). Resolving a host name (getaddrinfo) still blocks inside.
  if (nbd_aio_connect_uri(h, uri.c_str()) == -1) {
    *error = libnbd_error();
    nbd_close(h);
    return nullptr;
  }
  const auto deadline = Clock::now() + std::chrono::nanoseconds(timeout_ns);
  while (!nbd_aio_is_ready(h)) {
    if (handle_dead(h)) {
      *error = libnbd_error();
      nbd_close(h);
      return nullptr;
    }
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      *error =
          fmt::format("no answer within the connect timeout ({})", seconds(timeout_ns));
      nbd_close(h);
      return nullptr;
    }
    if (nbd_poll(h, static_cast<int>(std::min<int64_t>(left.count(), 1000))) == -1) {
      *error = libnbd_error();
      nbd_close(h);
      return nullptr;
    }
  }
  return h;
}

ExportInfo read_export_info(nbd_handle* h) {
  ExportInfo i;
  const int64_t size = nbd_get_size(h);
  i.size = size > 0 ? static_cast<uint64_t>(size) : 0;
  i.read_only = nbd_is_read_only(h) == 1;
  i.can_flush = nbd_can_flush(h) == 1;
  i.can_fua = nbd_can_fua(h) == 1;
  i.can_trim = nbd_can_trim(h) == 1;
  i.can_zero = nbd_can_zero(h) == 1;
  i.can_multi_conn = nbd_can_multi_conn(h) == 1;
  i.base_allocation = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  auto block = [&](int which) -> uint32_t {
    const int64_t v = nbd_get_block_size(h, which);
    return v > 0 && v <= UINT32_MAX ? static_cast<uint32_t>(v) : 0;
  };
  i.min_block = block(LIBNBD_SIZE_MINIMUM);
  i.preferred_block = block(LIBNBD_SIZE_PREFERRED);
  i.max_block = block(LIBNBD_SIZE_MAXIMUM);
  return i;
}

std::string lacks(const ExportInfo& was, const ExportInfo& now, bool multi_conn) {
  if (now.size != was.size)
    return fmt::format("the export is now {} bytes, was {}", now.size, was.size);
  // What the disk's limits and flags promise its users, and what the
  // commands it sends need (libnbd refuses a flag the server lacks).
  if (now.read_only && !was.read_only) return "the export is now read-only";
  if (was.can_flush && !now.can_flush) return "the server no longer flushes";
  if (was.can_fua && !now.can_fua) return "the server no longer takes FUA";
  if (was.can_trim && !now.can_trim) return "the server no longer trims";
  if (was.can_zero && !now.can_zero) return "the server no longer writes zeroes";
  // A flush on one connection must still cover the others' writes.
  if (multi_conn && !now.can_multi_conn) return "the server no longer allows multi-conn";
  auto logical = [](const ExportInfo& i) {
    return std::max<uint32_t>(i.min_block, kMinBlockSize);
  };
  auto largest = [](const ExportInfo& i) {
    return i.max_block ? std::min(i.max_block, kDefaultMaxBlock) : kDefaultMaxBlock;
  };
  // Every I/O the disk sends must still be a multiple of the minimum.
  if (logical(was) % logical(now) != 0 || largest(now) < largest(was))
    return fmt::format("the server's block sizes are now {}..{}, were {}..{}",
                       now.min_block, now.max_block, was.min_block, was.max_block);
  return {};
}

NbdConnection::NbdConnection(nbd_handle* h, const ExportInfo& info,
                             const ConnectOptions& options, unsigned index)
    : info_(info), options_(options), index_(index), h_(h) {
  static_assert(alignof(NbdConnection) >= 64);
  const auto self = reinterpret_cast<uintptr_t>(this);
  if ((self & ~kConnMask) != 0) {
    nbd_close(h);
    throw std::logic_error("NbdConnection: address does not fit the command word");
  }
  event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (event_fd_ < 0) {
    nbd_close(h);
    throw std::system_error(errno, std::generic_category(), "eventfd");
  }
  loop_ = std::thread([this] { run(); });
}

NbdConnection::~NbdConnection() {
  stop_.store(true);
  kick();
  loop_.join();
  // The disk waited for every command before destroying the driver, so
  // nothing is in flight: closing drops no completion.
  if (connecting_) nbd_close(connecting_);
  if (h_) nbd_close(h_);
  close(event_fd_);
}

std::string NbdConnection::last_error() const {
  std::lock_guard lock(error_mu_);
  return last_error_;
}

void NbdConnection::shutdown() {
  closing_.store(true);
  kick();  // the loop fails what waits
}

void NbdConnection::kick() {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t r = write(event_fd_, &one, sizeof one);
}

void NbdConnection::push(std::atomic<IoCmd>& head, IoCmd cmd) {
  IoCmd old = head.load(std::memory_order_relaxed);
  do {
    cmd.set_next(old);
  } while (!head.compare_exchange_weak(old, cmd, std::memory_order_release,
                                       std::memory_order_relaxed));
}

IoCmd NbdConnection::take_fifo(std::atomic<IoCmd>& head) {
  IoCmd lifo = head.exchange(IoCmd(), std::memory_order_acquire);
  IoCmd fifo;
  while (lifo) {
    IoCmd next = lifo.next();
    lifo.set_next(fifo);
    fifo = lifo;
    lifo = next;
  }
  return fifo;
}

NbdConnection::Phase NbdConnection::first_phase(IoCmd cmd) const {
  // A write with PREFLUSH: what completed before it must be durable
  // before it is written (a journal's commit block), so the flush goes
  // first and the data only once it has been answered.
  return cmd.has_flag(BioFlag::kPreflush) && cmd.op() != Op::kFlush ? kPreflush : kData;
}

bool NbdConnection::next_phase(IoCmd cmd, Phase after, Phase* next) const {
  if (after == kPreflush) {
    *next = kData;
    return true;
  }
  // FUA on a server that has a cache but no FUA: a flush after the write.
  if (after == kData && cmd.op() == Op::kWrite && cmd.has_flag(BioFlag::kFua) &&
      !info_.can_fua && info_.can_flush) {
    *next = kPostflush;
    return true;
  }
  return false;
}

void NbdConnection::start(IoCmd cmd) {
  cmd.driver_data() =
      reinterpret_cast<uintptr_t>(this) | (uint64_t{first_phase(cmd)} << kPhaseShift);
  if (!issue(cmd)) park(cmd);
}

void NbdConnection::park(IoCmd cmd) {
  if (tls_loop == this) {
    wait_for_reconnect(cmd);
  } else {
    push(parked_, cmd);
    kick();
  }
}

void NbdConnection::add_error(IoCmd cmd, Status s) {
  std::atomic_ref<uint64_t> w(cmd.driver_data());
  uint64_t old = w.load();
  while ((old & kStatusMask) == 0 &&
         !w.compare_exchange_weak(old, old | static_cast<uint64_t>(s))) {
  }
}

bool NbdConnection::issue(IoCmd cmd) {
  std::atomic_ref<uint64_t> w(cmd.driver_data());
  const Phase phase = phase_of(w.load());
  const bool data = phase == kData && (cmd.op() == Op::kRead || cmd.op() == Op::kWrite);
  unsigned pieces = 1;
  if (data) {
    pieces = 0;
    cmd.for_each_chunk([&](const BioChunk&) { ++pieces; });
    if (pieces > kMaxPieces) {  // the limits forbid this
      cmd.complete(Status::kInvalid);
      return true;
    }
  }

  std::unique_lock lock(issue_mu_);
  if (!up_.load(std::memory_order_relaxed)) return false;
  nbd_handle* h = h_;
  // Counted in the current epoch until its last NBD command is answered.
  const uint64_t epoch = epoch_.load(std::memory_order_relaxed) % kEpochs;
  w.store((w.load(std::memory_order_relaxed) & ~kEpochMask) | epoch << kEpochShift,
          std::memory_order_relaxed);
  unanswered_[epoch].fetch_add(1, std::memory_order_relaxed);
  // The pieces, and one more held while issuing: the command is not
  // finished by a fast answer before the last piece has gone out.
  w.fetch_add((pieces + 1) * kCountOne);
  const nbd_completion_callback cb{on_reply, to_user_data(cmd), nullptr};
  uint32_t flags = 0;
  if (phase == kData && cmd.has_flag(BioFlag::kFua) && info_.can_fua)
    flags |= LIBNBD_CMD_FLAG_FUA;
  unsigned issued = 0;
  bool failed = false;
  auto check = [&](int64_t cookie) {
    if (cookie != -1) {
      ++issued;
      return;
    }
    failed = true;
    const int err = nbd_get_errno();
    if (handle_dead(h) || connection_error(err))
      w.fetch_or(kLostBit);
    else
      add_error(cmd, status_from_errno(err ? err : EIO));
  };
  const uint64_t offset = cmd.sector() << kSectorShift;
  if (data) {
    uint64_t pos = offset;
    cmd.for_each_chunk([&](const BioChunk& c) {
      if (failed) return;
      // Straight into and out of the bio's memory.
      check(cmd.op() == Op::kRead ? nbd_aio_pread(h, c.ptr, c.len, pos, cb, flags)
                                  : nbd_aio_pwrite(h, c.ptr, c.len, pos, cb, flags));
      pos += c.len;
    });
  } else if (phase != kData || cmd.op() == Op::kFlush) {
    check(nbd_aio_flush(h, cb, 0));
  } else if (cmd.op() == Op::kDiscard) {
    check(nbd_aio_trim(h, cmd.bytes(), offset, cb, 0));
  } else {  // Op::kWriteZeroes
    const uint32_t zf = cmd.has_flag(BioFlag::kNoUnmap) ? LIBNBD_CMD_FLAG_NO_HOLE : 0;
    check(nbd_aio_zero(h, cmd.bytes(), offset, cb, zf));
  }
  if (issued < pieces) w.fetch_sub((pieces - issued) * kCountOne);
  // What did not fit in the socket waits in libnbd for POLLOUT, which the
  // loop only asks for once told.
  const bool wake =
      tls_loop != this && (nbd_aio_get_direction(h) & LIBNBD_AIO_DIRECTION_WRITE);
  lock.unlock();
  if (wake) kick();
  if (const uint64_t old = w.fetch_sub(kCountOne); (old & kCountMask) == kCountOne) {
    issue_answered(old);
    last_ref(cmd, false);
  }
  return true;
}

void NbdConnection::issue_answered(uint64_t word) {
  unanswered_[(word >> kEpochShift) % kEpochs].fetch_sub(1, std::memory_order_relaxed);
}

bool NbdConnection::epoch_tick() {
  const unsigned next = epoch_.load(std::memory_order_relaxed) + 1;
  // That slot last counted issues from three ticks ago and more: any
  // still unanswered has waited the whole timeout. The epoch stays until
  // the connection, shut down, has answered them.
  if (unanswered_[next % kEpochs].load(std::memory_order_relaxed) > 0) return true;
  epoch_.store(next, std::memory_order_relaxed);
  return false;
}

int NbdConnection::on_reply(void* user_data, int* error) {
  IoCmd cmd = from_user_data(user_data);
  std::atomic_ref<uint64_t> w(cmd.driver_data());
  if (*error != 0) {
    if (connection_error(*error))
      w.fetch_or(kLostBit);
    else
      add_error(cmd, status_from_errno(*error));
  }
  const uint64_t old = w.fetch_sub(kCountOne);
  auto* conn = reinterpret_cast<NbdConnection*>(old & kConnMask);
  if (!connection_error(*error) && !conn->answered_.load(std::memory_order_relaxed))
    conn->answered_.store(true, std::memory_order_relaxed);
  if ((old & kCountMask) == kCountOne) {
    conn->issue_answered(old);
    conn->last_ref(cmd, true);
  }
  return 1;  // retire the NBD command
}

void NbdConnection::last_ref(IoCmd cmd, bool in_callback) {
  if (in_callback) {
    // libnbd's handle lock is held: the loop finishes it once libnbd
    // returns (or, on another thread, once woken).
    push(done_, cmd);
    if (tls_loop != this) kick();
    return;
  }
  const uint64_t word = std::atomic_ref<uint64_t>(cmd.driver_data()).load();
  if (word & kLostBit) {
    park(cmd);
    return;
  }
  if (const auto s = static_cast<Status>(word & kStatusMask); s != Status::kOk) {
    cmd.complete(s);
    return;
  }
  Phase next;
  if (next_phase(cmd, phase_of(word), &next)) {
    cmd.driver_data() = (word & kConnMask) | (uint64_t{next} << kPhaseShift);
    if (!issue(cmd)) park(cmd);
    return;
  }
  cmd.complete(Status::kOk);
}

void NbdConnection::reset_for_retry(IoCmd cmd) {
  uint64_t& word = cmd.driver_data();
  word &= kConnMask | (uint64_t{3} << kPhaseShift);
}

void NbdConnection::wait_for_reconnect(IoCmd cmd) {
  reset_for_retry(cmd);
  if (closing_.load(std::memory_order_relaxed)) {
    cmd.complete(Status::kOffline);
    return;
  }
  if (stop_.load(std::memory_order_relaxed) || failing_) {
    cmd.complete(Status::kTransport);
    return;
  }
  if (up_.load(std::memory_order_relaxed) && !handle_dead(h_)) {
    // The server said it was going (ESHUTDOWN) but the connection is
    // still there: send it again; the loop sees the close soon.
    if (issue(cmd)) return;
  }
  cmd.set_next(IoCmd());
  if (wait_tail_)
    wait_tail_.set_next(cmd);
  else
    wait_head_ = cmd;
  wait_tail_ = cmd;
}

void NbdConnection::fail_waiting(Status s) {
  IoCmd c = wait_head_;
  wait_head_ = wait_tail_ = IoCmd();
  while (c) {
    IoCmd next = c.next();
    c.complete(s);
    c = next;
  }
}

void NbdConnection::drain() {
  for (IoCmd c = take_fifo(done_); c;) {
    IoCmd next = c.next();
    last_ref(c, false);
    c = next;
  }
  for (IoCmd c = take_fifo(parked_); c;) {
    IoCmd next = c.next();
    reset_for_retry(c);
    if (!up_.load(std::memory_order_relaxed) || !issue(c)) wait_for_reconnect(c);
    c = next;
  }
}

void NbdConnection::connection_lost(Clock::time_point now, bool timed_out) {
  {
    std::lock_guard lock(error_mu_);
    last_error_ = timed_out
                      ? fmt::format("connection {} timed out: no answer within {}",
                                    index_, seconds(options_.timeout_ns))
                      : fmt::format("connection {} lost: {}", index_, libnbd_error());
  }
  {
    std::lock_guard lock(issue_mu_);
    up_.store(false, std::memory_order_relaxed);
  }
  // A dead handle has answered everything it held (ENOTCONN), so closing
  // it loses no completion; if libnbd still counts some, keep the handle
  // (a leak, never a lost bio).
  if (nbd_aio_in_flight(h_) <= 0) nbd_close(h_);
  h_ = nullptr;
  down_since_ = now;
  // A server that answers nothing, on this connection or the next ones:
  // dead_conn_timeout runs from its first timeout, not from each.
  if (timed_out && !stalled_) {
    stalled_ = true;
    stalled_since_ = now;
  }
  if (stalled_) down_since_ = stalled_since_;
  next_attempt_ = now;
  backoff_ = std::chrono::milliseconds(0);
  failing_ = options_.dead_conn_timeout_ns == 0;
}

void NbdConnection::try_reconnect(Clock::time_point now) {
  auto give_up_attempt = [&](const std::string& why) {
    {
      std::lock_guard lock(error_mu_);
      last_error_ = fmt::format("connection {}: reconnecting: {}", index_, why);
    }
    if (connecting_) nbd_close(connecting_);
    connecting_ = nullptr;
    backoff_ =
        backoff_.count() == 0 ? kFirstBackoff : std::min(backoff_ * 2, kMaxBackoff);
    next_attempt_ = now + backoff_;
  };
  if (connecting_ == nullptr) {
    if (now < next_attempt_) return;
    std::string error;
    connecting_ = new_handle(&error);
    if (connecting_ == nullptr) return give_up_attempt(error);
    if (nbd_aio_connect_uri(connecting_, options_.uri.c_str()) == -1)
      return give_up_attempt(libnbd_error());
    attempt_deadline_ = now + std::chrono::nanoseconds(options_.connect_timeout_ns);
  }
  if (nbd_aio_is_ready(connecting_)) {
    const std::string why =
        lacks(info_, read_export_info(connecting_), options_.multi_conn);
    if (!why.empty()) return give_up_attempt(why);
    connected();
    return;
  }
  if (handle_dead(connecting_)) return give_up_attempt(libnbd_error());
  if (now >= attempt_deadline_)
    return give_up_attempt(fmt::format("no answer within the connect timeout ({})",
                                       seconds(options_.connect_timeout_ns)));
}

void NbdConnection::connected() {
  {
    std::lock_guard lock(issue_mu_);
    h_ = connecting_;
    up_.store(true, std::memory_order_relaxed);
  }
  connecting_ = nullptr;
  failing_ = false;
  backoff_ = std::chrono::milliseconds(0);
  reconnects_.fetch_add(1, std::memory_order_relaxed);
  // Sent again whole, in the order they came.
  IoCmd c = wait_head_;
  wait_head_ = wait_tail_ = IoCmd();
  while (c) {
    IoCmd next = c.next();
    if (!issue(c)) wait_for_reconnect(c);
    c = next;
  }
  // Nothing sent again that is unanswered (the timed-out I/O failed by
  // dead_conn_timeout): no stall to remember, or a later outage would find
  // its dead_conn_timeout already spent.
  if (std::all_of(std::begin(unanswered_), std::end(unanswered_),
                  [](const auto& n) { return n.load(std::memory_order_relaxed) == 0; }))
    stalled_ = false;
}

void NbdConnection::read_replies(nbd_handle* h) {
  // One notify may finish as little as one reply (libnbd then waits in
  // its READY state for the next event). While each finishes some and
  // more are in flight, read again before completing any: the bios'
  // owners are then woken once for the lot, not once a reply (a context
  // switch per I/O was the cost against fio's engine, which reaps on its
  // submitting thread). Never notify a read on an empty socket: libnbd
  // (1.14, REPLY.START) then stays out of READY on EAGAIN, and commands
  // issued meanwhile wait unsent until the next reply, however slow it
  // is; so a poll of no wait asks first. Only while libnbd waits for
  // nothing but replies: in the middle of sending a command (direction
  // both) a read notify makes it pause the send until a whole reply has
  // come, and a server waiting for the rest of that write sends none: the
  // write would stall.
  int64_t before = nbd_aio_in_flight(h);
  for (unsigned i = 0; i < kReadBatch; ++i) {
    nbd_aio_notify_read(h);
    if (handle_dead(h) || nbd_aio_get_direction(h) != LIBNBD_AIO_DIRECTION_READ) return;
    const int64_t left = nbd_aio_in_flight(h);
    if (left <= 0 || left >= before) return;  // none left, or a reply only begun
    before = left;
    pollfd p{nbd_aio_get_fd(h), POLLIN, 0};
    if (poll(&p, 1, 0) <= 0) return;  // nothing more yet
  }
}

void NbdConnection::run() {
  tls_loop = this;
  prctl(PR_SET_NAME, fmt::format("nbd-conn{}", index_).c_str(), 0, 0, 0);
  const auto tick = std::max<std::chrono::nanoseconds>(
      std::chrono::nanoseconds(options_.timeout_ns / 3), std::chrono::milliseconds(1));
  next_tick_ = Clock::now() + tick;
  for (;;) {
    pollfd fds[2] = {{event_fd_, POLLIN, 0}, {-1, 0, 0}};
    const bool up = up_.load(std::memory_order_relaxed);
    nbd_handle* live = up ? h_ : connecting_;
    if (live != nullptr) {
      const unsigned dir = nbd_aio_get_direction(live);
      fds[1].fd = nbd_aio_get_fd(live);
      fds[1].events =
          static_cast<short>((dir & LIBNBD_AIO_DIRECTION_READ ? POLLIN : 0) |
                             (dir & LIBNBD_AIO_DIRECTION_WRITE ? POLLOUT : 0));
    }
    // Up: wake for the next epoch tick (the timeout).
    auto until = next_tick_;
    if (!up) {
      // Wake for the next attempt, the attempt's deadline, and the end of
      // dead_conn_timeout, whichever comes first.
      until = connecting_ ? attempt_deadline_ : next_attempt_;
      if (!failing_)
        until = std::min(
            until, down_since_ + std::chrono::nanoseconds(options_.dead_conn_timeout_ns));
    }
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(until - Clock::now()).count();
    // Down: at least once a second (closing_, a reconnect's progress).
    const int timeout_ms =
        static_cast<int>(std::clamp<int64_t>(left, 1, up ? INT32_MAX : 1000));
    poll(fds, fds[1].fd >= 0 ? 2 : 1, timeout_ms);
    if (fds[0].revents & POLLIN) {
      uint64_t v;
      [[maybe_unused]] ssize_t r = read(event_fd_, &v, sizeof v);
    }
    if (stop_.load()) return;
    if (live != nullptr && fds[1].fd >= 0) {
      const short re = fds[1].revents;
      if (re & (POLLIN | POLLHUP | POLLERR)) {
        if (up)
          read_replies(live);
        else
          nbd_aio_notify_read(live);
      }
      if ((re & POLLOUT) && !handle_dead(live)) nbd_aio_notify_write(live);
    }
    if (answered_.load(std::memory_order_relaxed)) {
      answered_.store(false, std::memory_order_relaxed);
      stalled_ = false;
    }
    const auto now = Clock::now();
    bool timed_out = false;
    if (now >= next_tick_) {
      next_tick_ = now + tick;
      if (epoch_tick() && up && !handle_dead(h_)) {
        // As if the server had closed it: libnbd answers what is in
        // flight with ENOTCONN, and the reconnect path takes over.
        timed_out = true;
        ::shutdown(nbd_aio_get_fd(h_), SHUT_RDWR);
        nbd_aio_notify_read(h_);
        if (!handle_dead(h_)) nbd_aio_notify_write(h_);
      }
    }
    if (up && handle_dead(h_)) connection_lost(now, timed_out);
    drain();
    if (closing_.load(std::memory_order_relaxed)) fail_waiting(Status::kOffline);
    if (!up_.load(std::memory_order_relaxed)) {
      try_reconnect(now);
      if (!up_.load(std::memory_order_relaxed) && !failing_ &&
          now >= down_since_ + std::chrono::nanoseconds(options_.dead_conn_timeout_ns)) {
        failing_ = true;  // new I/O fails at once until a reconnect succeeds
        fail_waiting(Status::kTransport);
      }
    }
  }
}

bool NbdConnection::block_status(uint64_t offset, uint64_t max_length, Extent* out) {
  if (!info_.base_allocation) return false;
  // Shared with libnbd's two callbacks, each of which releases it through
  // its free hook: we may stop waiting before the answer comes.
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    int error = 0;
    uint64_t length = 0;
    uint32_t flags = 0;
    std::atomic<int> refs{3};
    static void release(void* p) {
      auto* s = static_cast<State*>(p);
      if (s->refs.fetch_sub(1) == 1) delete s;
    }
  };
  auto* st = new State;
  const nbd_extent_callback ext{
      [](void* p, const char* context, uint64_t, uint32_t* entries, size_t n, int*) {
        auto* s = static_cast<State*>(p);
        if (std::strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) == 0 && n >= 2 &&
            s->length == 0) {
          s->length = entries[0];
          s->flags = entries[1];
        }
        return 0;
      },
      st, State::release};
  const nbd_completion_callback done{[](void* p, int* error) {
                                       auto* s = static_cast<State*>(p);
                                       std::lock_guard lock(s->mu);
                                       s->error = *error;
                                       s->done = true;
                                       s->cv.notify_all();
                                       return 1;
                                     },
                                     st, State::release};
  // Within the export (libnbd refuses a range past its end) and 32 bits.
  if (offset >= info_.size) return false;
  const uint64_t count =
      std::min({max_length, info_.size - offset, uint64_t{UINT32_MAX & ~uint32_t{4095}}});
  bool issued = false;
  {
    std::lock_guard lock(issue_mu_);
    if (up_.load(std::memory_order_relaxed)) {
      issued = nbd_aio_block_status(h_, count, offset, ext, done,
                                    LIBNBD_CMD_FLAG_REQ_ONE) != -1;
      if (issued && (nbd_aio_get_direction(h_) & LIBNBD_AIO_DIRECTION_WRITE)) kick();
    }
  }
  bool ok = false;
  if (issued) {
    std::unique_lock lock(st->mu);
    st->cv.wait_for(lock, std::chrono::nanoseconds(options_.connect_timeout_ns),
                    [&] { return st->done; });
    if (st->done && st->error == 0 && st->length > 0) {
      out->length = std::min<uint64_t>(st->length, max_length);
      out->allocated = !(st->flags & LIBNBD_STATE_HOLE);
      out->zero = (st->flags & LIBNBD_STATE_ZERO) != 0;
      ok = true;
    }
  }
  State::release(st);
  return ok;
}

}  // namespace blkstack::nbd
