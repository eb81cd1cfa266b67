#include "export/nbd/connection.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "blkstack/disk.h"
#include "blkstack/submit.h"
#include "blkstack/zeroout.h"
#include "core/bio_gate.h"
#include "export/log.h"
#include "export/nbd/protocol.h"

namespace blkstack::nbd {
namespace {

constexpr size_t kRecvBufSize = 64u << 10;
// Buffers above this are freed when their request is answered, so one
// large request does not leave a slot holding 32 MiB for good.
constexpr uint32_t kKeepBufferBytes = 4u << 20;
constexpr int kMaxIov = 64;
constexpr uint16_t kKnownCmdFlags =
    kCmdFlagFua | kCmdFlagNoHole | kCmdFlagDf | kCmdFlagReqOne | kCmdFlagFastZero;
// Option replies waiting to be sent above which the handshake stops reading.
constexpr size_t kMaxHandshakeOutput = 256u << 10;
// Replies to requests at least this large are sent before the next request
// is parsed (see complete()), their header on its own (see send_output()).
constexpr uint32_t kEagerSendBytes = 256u << 10;
// Batches of fewer replies are sent whole, even when asked to split.
constexpr uint32_t kMinSplitReplies = 4;
// BLOCK_STATUS answers at most this many extents per request.
constexpr uint32_t kMaxExtents = 1024;

// The buffer a BLOCK_STATUS reply is built in: context id, then extents.
uint32_t block_status_bytes(uint16_t flags) {
  return 4 + 8 * ((flags & kCmdFlagReqOne) ? 1 : kMaxExtents);
}

// Request buffers are whole pages (4096-aligned for O_DIRECT drivers).
uint32_t buffer_size(uint32_t bytes) { return (bytes + 4095) & ~uint32_t{4095}; }
std::atomic<uint64_t> next_id{1};

}  // namespace

// The NBD error for a block-layer status. Busy ones never get here:
// bio_done() sends their bio again (status_is_busy).
uint32_t nbd_error(Status s, bool write) {
  switch (s) {
    case Status::kOk:
      return 0;
    case Status::kReadOnly:
      return kEperm;
    case Status::kNoSpace:
      return kEnospc;
    case Status::kOutOfRange:
      return write ? kEnospc : kEinval;
    case Status::kInvalid:
      return kEinval;
    case Status::kNotSupported:
      return kEnotsup;
    case Status::kResource:
      return kEnomem;
    default:
      return kEio;
  }
}

namespace {

int clamp_to_int(uint64_t n) {
  return static_cast<int>(std::min<uint64_t>(n, std::numeric_limits<int>::max()));
}

bool is_write_type(uint16_t type) {
  return type == kCmdWrite || type == kCmdTrim || type == kCmdWriteZeroes;
}

}  // namespace

Connection::Connection(int fd, std::shared_ptr<const ExportTable> exports,
                       Reactor& reactor, ConnectionLimits limits)
    : fd_(fd),
      name_(fmt::format("conn {}", next_id.fetch_add(1, std::memory_order_relaxed))),
      exports_(std::move(exports)),
      reactor_(reactor),
      limits_(limits),
      handshake_(std::make_unique<Handshake>(exports_)),
      rbuf_(new std::byte[kRecvBufSize]) {
  const int fl = fcntl(fd_, F_GETFL);
  if (fl >= 0) fcntl(fd_, F_SETFL, fl | O_NONBLOCK);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  unix_socket_ = ::getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len) == 0 &&
                 ss.ss_family == AF_UNIX;
  out_ = std::move(handshake_->output());
  handshake_->output().clear();
  reactor_.buffers_changed(int64_t{kRecvBufSize});
}

Connection::~Connection() {
  if (in_flight_ != 0) {
    // Destroying a slot under a running bio would be a use-after-free.
    std::fprintf(stderr, "blkstack serve: fatal: %s destroyed with I/O in flight\n",
                 name_.c_str());
    std::abort();
  }
  for (auto& s : slots_) free_buffer(s.get());
  reactor_.buffers_changed(-int64_t{kRecvBufSize});
  ::close(fd_);
}

void Connection::log(const std::string& what) const {
  serve_log(fmt::format("{}{}{}: {}", name_, nego_.export_name.empty() ? "" : " ",
                        nego_.export_name, what));
}

bool Connection::wants_read() const {
  if (eof_ || read_blocked_) return false;
  if (state_ == State::kHandshake) return out_.size() < kMaxHandshakeOutput;
  return parsing();
}

int Connection::unread_bytes() const {
  // A unix stream socket's output queue holds what was sent until the
  // peer has read it, in whole socket buffers.
  int queued = 0;
  if (!unix_socket_ || ::ioctl(fd_, SIOCOUTQ, &queued) != 0) return 0;
  return queued;
}

Backlog Connection::client_backlog() const {
  const int unread = unread_bytes();
  if (unread <= 0) return Backlog::kNone;
  return unread <= last_part_bytes_ ? Backlog::kLastPart : Backlog::kMore;
}

bool Connection::parsing() const {
  return state_ == State::kTransmission || (state_ == State::kDraining && shutting_down_);
}

bool Connection::wants_rerun() const {
  if (state_ == State::kHandshake) {
    return !eof_ && rpos_ < wpos_ && out_.size() < kMaxHandshakeOutput;
  }
  return parsing() && !read_blocked_ && !eof_ && input_ == Input::kHeader &&
         wpos_ - rpos_ >= kRequestSize;
}

// --- slots -------------------------------------------------------------------

uint32_t Connection::buffer_need(const Request& rq) const {
  switch (rq.type) {
    case kCmdRead:
    case kCmdWrite:
      return std::min(rq.length, kMaxPayload);  // a longer one is refused
    case kCmdBlockStatus:
      return block_status_bytes(rq.flags);
    default:
      return 0;
  }
}

RequestSlot* Connection::get_slot(uint32_t need) {
  if (in_flight_ >= limits_.max_requests) return nullptr;
  // Requests are charged the buffers they make us hold, not their length:
  // a tiny request on a slot that kept a large buffer holds all of it.
  RequestSlot* s = free_;
  const uint64_t cap = s ? s->cap : 0;
  const uint64_t want = buffer_size(need);
  if (want > cap && !make_room(want - cap, s)) return nullptr;
  // A request that needs less than the slot kept would hold all of it.
  // When the budget could not take another buffer that size, give it back
  // (grow() allocates what is needed): otherwise, after a burst of large
  // requests, small ones would be charged the large buffers for good and
  // the connection's depth would stay at budget / large size.
  if (want < cap && buffer_bytes_ + cap > limits_.max_bytes_in_flight) free_buffer(s);
  if (s) {
    free_ = s->next;
  } else {
    slots_.push_back(std::make_unique<RequestSlot>());
    s = slots_.back().get();
    s->conn = this;
  }
  s->next = nullptr;
  s->sent = 0;
  s->data = nullptr;
  s->data_len = 0;
  ++in_flight_;
  return s;
}

bool Connection::make_room(uint64_t extra, const RequestSlot* keep) {
  const uint64_t budget = limits_.max_bytes_in_flight;
  // Kept buffers go first: they only save an allocation.
  for (RequestSlot* f = free_; f && buffer_bytes_ + extra > budget; f = f->next)
    if (f != keep) free_buffer(f);
  // An idle connection takes any one request (every buffer but `keep`'s
  // is gone now), so the budget can never be smaller than the largest.
  return in_flight_ == 0 || buffer_bytes_ + extra <= budget;
}

bool Connection::grow(RequestSlot* s, uint32_t bytes) {
  if (s->cap >= bytes) return true;
  free_buffer(s);
  const uint32_t n = buffer_size(bytes);
  s->buf = static_cast<std::byte*>(std::aligned_alloc(4096, n));
  if (!s->buf) return false;
  s->cap = n;
  buffer_bytes_ += n;
  reactor_.buffers_changed(n);
  return true;
}

void Connection::free_buffer(RequestSlot* s) {
  if (!s->buf) return;
  std::free(s->buf);
  buffer_bytes_ -= s->cap;
  reactor_.buffers_changed(-int64_t{s->cap});
  s->buf = nullptr;
  s->cap = 0;
}

void Connection::release(RequestSlot* s) {
  --in_flight_;
  if (s->cap > kKeepBufferBytes) free_buffer(s);
  s->next = free_;
  free_ = s;
  read_blocked_ = false;
}

// --- replies -----------------------------------------------------------------

void Connection::set_reply(RequestSlot* s, uint32_t error) {
  std::byte* h = s->hdr;
  s->data = nullptr;
  s->data_len = 0;
  const bool structured =
      nego_.structured_replies && (s->type == kCmdRead || s->type == kCmdBlockStatus);
  if (!structured) {
    store32(h, kSimpleReplyMagic);
    store32(h + 4, error);
    store64(h + 8, s->cookie);
    s->hdr_len = kSimpleReplySize;
    if (s->type == kCmdRead && error == 0) {
      s->data = s->buf;
      s->data_len = s->length;
    }
    return;
  }
  store32(h, kStructuredReplyMagic);
  store16(h + 4, kReplyFlagDone);
  store64(h + 8, s->cookie);
  if (error != 0) {
    store16(h + 6, kReplyTypeError);
    store32(h + 16, 6);  // error and an empty message
    store32(h + 20, error);
    store16(h + 24, 0);
    s->hdr_len = 26;
  } else if (s->type == kCmdRead) {
    // One data chunk for the whole read: what DF asks, and the fewest bytes.
    store16(h + 6, kReplyTypeOffsetData);
    store32(h + 16, 8 + s->length);
    store64(h + 20, s->offset);
    s->hdr_len = kChunkHeaderSize + 8;
    s->data = s->buf;
    s->data_len = s->length;
  } else {  // block status: the payload was built in the buffer
    store16(h + 6, kReplyTypeBlockStatus);
    store32(h + 16, s->data_len);
    s->hdr_len = kChunkHeaderSize;
  }
}

void Connection::queue_reply(RequestSlot* s) {
  if (state_ == State::kClosed) {  // nobody to answer
    release(s);
    return;
  }
  s->sent = 0;
  s->next = nullptr;
  ++queued_replies_;
  if (send_tail_)
    send_tail_->next = s;
  else
    send_head_ = s;
  send_tail_ = s;
}

void Connection::reply_now(RequestSlot* s, uint32_t error) {
  set_reply(s, error);
  queue_reply(s);
}

void Connection::send_output() {
  if (!split_sends_ || queued_replies_ == 0) {
    send_queued(0);
    return;
  }
  // The run's first batch: where is the client?
  if (!backlog_at_send_) backlog_at_send_ = client_backlog();
  // The batch in two parts, its first third and the rest, with the
  // socket's queue noted between them. The last part is the larger: a
  // client still in it when the next batch goes out has not run dry, with
  // room to spare for the time the loop takes to serve that batch. The
  // queue counts whole socket buffers, their overhead included, so the
  // last part is at least the bytes it carried; a client that frees a
  // buffer between the two readings cannot make it look smaller.
  const uint64_t start = bytes_sent_;
  if (!unix_socket_ || !out_.empty() || queued_replies_ < kMinSplitReplies) {
    send_queued(0);
    last_part_bytes_ = clamp_to_int(bytes_sent_ - start);  // all of it
    return;
  }
  last_part_bytes_ = 0;
  if (!send_queued(queued_replies_ / 3)) return;
  const int at_split = unread_bytes();
  const uint64_t split_at = bytes_sent_;
  if (!send_queued(0)) return;
  last_part_bytes_ =
      std::max(unread_bytes() - at_split, clamp_to_int(bytes_sent_ - split_at));
}

bool Connection::send_queued(uint32_t max_replies) {
  uint32_t left_to_send = max_replies != 0 ? max_replies : UINT32_MAX;
  while (state_ != State::kClosed && (!out_.empty() || send_head_)) {
    iovec iov[kMaxIov];
    int n = 0;
    size_t want = 0;
    if (!out_.empty()) {
      iov[n++] = {out_.data(), out_.size()};
      want += out_.size();
    }
    uint32_t replies = 0;
    for (RequestSlot* s = send_head_; s && n + 2 <= kMaxIov && replies < left_to_send;
         s = s->next, ++replies) {
      if (s->sent < s->hdr_len) {
        iov[n++] = {s->hdr + s->sent, s->hdr_len - s->sent};
        want += s->hdr_len - s->sent;
        // On a unix socket, a large reply's data goes in a send of its own,
        // so that it starts a socket buffer: copied at the same alignment
        // as it lies in our buffer, which makes the kernel's copy (and the
        // client's) about a tenth cheaper than 28 bytes off. (TCP would
        // only get an extra small segment.)
        if (unix_socket_ && s->data_len >= kEagerSendBytes) break;
      }
      const uint32_t data_done = s->sent > s->hdr_len ? s->sent - s->hdr_len : 0;
      if (s->data_len > data_done) {
        iov[n++] = {const_cast<std::byte*>(s->data) + data_done, s->data_len - data_done};
        want += s->data_len - data_done;
      }
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = n;
    const ssize_t r = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
      hard_close(fmt::format("send: {}", error_text(errno)));
      return false;
    }
    size_t left = static_cast<size_t>(r);
    bytes_sent_ += left;
    if (!out_.empty()) {
      const size_t k = std::min(left, out_.size());
      out_.erase(0, k);
      left -= k;
    }
    while (left > 0 && send_head_) {
      RequestSlot* s = send_head_;
      const uint32_t total = s->hdr_len + s->data_len;
      const uint32_t k = static_cast<uint32_t>(std::min<size_t>(left, total - s->sent));
      s->sent += k;
      left -= k;
      if (s->sent < total) break;
      send_head_ = s->next;
      if (!send_head_) send_tail_ = nullptr;
      --queued_replies_;
      --left_to_send;
      release(s);
    }
    if (static_cast<size_t>(r) < want) return false;  // the socket is full
    if (left_to_send == 0) return true;
  }
  return state_ != State::kClosed;
}

// --- completions -------------------------------------------------------------

void Connection::bio_done(Bio& bio) {
  auto* s = static_cast<RequestSlot*>(bio.context());
  // Busy is back-pressure, not an error for the client: again, after the
  // retry delay. A write-zeroes is issued anew whole (issue_zeroout picks
  // its bio), by the event loop once the delay has passed (complete()).
  if (status_is_busy(bio.status())) [[unlikely]] {
    if (s->type != kCmdWriteZeroes) return resubmit_busy(bio, s->start);
    return call_after_busy_retry(&Connection::post_slot, s);
  }
  Connection* c = s->conn;
  if (c->reactor_.on_reactor_thread()) return c->complete(s);
  c->reactor_.post(s);  // not c afterwards: it may be gone once s is answered
}

void Connection::post_slot(void* slot) {
  auto* s = static_cast<RequestSlot*>(slot);
  s->conn->reactor_.post(s);
}

void Connection::complete(RequestSlot* s) {
  if (status_is_busy(s->bio.status())) [[unlikely]]
    return submit(s);  // a write-zeroes, whole again (see bio_done)
  set_reply(s, nbd_error(s->bio.status(), is_write_type(s->type)));
  queue_reply(s);
  // Answering a large request at once frees its buffer while it is still
  // in the cache, for the next request to reuse (the free list is LIFO):
  // eight 1 MiB buffers in turn cost a quarter more CPU than one.
  if (s->length >= kEagerSendBytes) eager_send_ = true;
}

// --- input -------------------------------------------------------------------

void Connection::run() {
  // Sending frees slots, which unblocks parsing of requests already in the
  // receive buffer: go round while that happens, a bounded number of times
  // so one busy client cannot starve the others of its loop.
  for (int round = 0; round < 16; ++round) {
    send_output();
    if (!wants_read()) break;
    read_input();
    send_output();
    if (!wants_rerun()) break;
  }
  maybe_close();
}

void Connection::read_input() {
  for (int round = 0; round < 8; ++round) {
    if (!process_staged() || !wants_read()) return;
    // Receive: a payload in progress goes straight to its buffer, with the
    // receive buffer behind it for the requests that follow.
    if (rpos_ == wpos_) rpos_ = wpos_ = 0;
    if (kRecvBufSize - wpos_ < kRequestSize) {
      std::memmove(rbuf_.get(), rbuf_.get() + rpos_, wpos_ - rpos_);
      wpos_ -= rpos_;
      rpos_ = 0;
    }
    iovec iov[2];
    int n = 0;
    uint32_t payload_want = 0;
    if (input_ == Input::kPayload) {
      payload_want = payload_slot_->length - payload_got_;
      iov[n++] = {payload_slot_->buf + payload_got_, payload_want};
    }
    iov[n++] = {rbuf_.get() + wpos_, kRecvBufSize - wpos_};
    size_t want = 0;
    for (int i = 0; i < n; ++i) want += iov[i].iov_len;
    const ssize_t r = ::readv(fd_, iov, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      return hard_close(fmt::format("receive: {}", error_text(errno)));
    }
    if (r == 0) {
      eof_ = true;
      if (state_ == State::kHandshake)
        return hard_close("client closed during the handshake");
      if (input_ != Input::kHeader) {
        // Vanished mid-request: the partial write is never applied, and
        // there is nobody to answer.
        log("client closed in the middle of a request; it is dropped");
        release(input_ == Input::kPayload ? payload_slot_ : discard_slot_);
        payload_slot_ = discard_slot_ = nullptr;
        input_ = Input::kHeader;
      }
      return;
    }
    size_t got = static_cast<size_t>(r);
    if (payload_want) {
      ++payload_reads_;
      const uint32_t k = static_cast<uint32_t>(std::min<size_t>(got, payload_want));
      payload_got_ += k;
      got -= k;
      if (payload_got_ == payload_slot_->length) payload_received();
    }
    wpos_ += got;
    if (static_cast<size_t>(r) < want) break;  // drained: wait for the next event
  }
  process_staged();
}

bool Connection::process_staged() {
  if (state_ == State::kHandshake) {
    // Option by option, and not while the client leaves our replies
    // unread: a client sending LIST in a loop without reading would
    // otherwise grow out_ without bound.
    while (rpos_ < wpos_ && out_.size() < kMaxHandshakeOutput && !handshake_->done() &&
           !handshake_->closed()) {
      const size_t n = std::min<size_t>(wpos_ - rpos_, 4096);
      rpos_ += handshake_->feed({rbuf_.get() + rpos_, n});
      out_ += handshake_->output();
      handshake_->output().clear();
    }
    if (handshake_->closed()) {
      log(handshake_->close_reason());
      send_output();  // the last option reply (ABORT's ACK), if it fits
      hard_close("");
      return false;
    }
    if (!handshake_->done()) return true;
    nego_ = std::move(handshake_->result());
    handshake_.reset();
    size_ = nego_.bdev->size_bytes();
    lbs_ = nego_.bdev->disk().limits().logical_block_size;
    state_ = State::kTransmission;
    log(fmt::format("export chosen ({} bytes{}{})", size_,
                    nego_.structured_replies ? ", structured replies" : "",
                    nego_.base_allocation ? ", base:allocation" : ""));
    reactor_.export_chosen(*this);
  }
  while (true) {
    const size_t avail = wpos_ - rpos_;
    if (input_ == Input::kPayload) {
      const uint32_t k = static_cast<uint32_t>(
          std::min<size_t>(avail, payload_slot_->length - payload_got_));
      std::memcpy(payload_slot_->buf + payload_got_, rbuf_.get() + rpos_, k);
      rpos_ += k;
      payload_got_ += k;
      if (payload_got_ < payload_slot_->length) return true;
      payload_received();
      continue;
    }
    if (input_ == Input::kDiscard) {
      const uint64_t k = std::min<uint64_t>(avail, discard_left_);
      rpos_ += k;
      discard_left_ -= k;
      if (discard_left_ != 0) return true;
      input_ = Input::kHeader;
      reply_now(discard_slot_, discard_error_);
      discard_slot_ = nullptr;
      continue;
    }
    if (!parsing()) return false;
    if (avail < kRequestSize) return true;
    if (!handle_request(decode_request(rbuf_.get() + rpos_))) return false;
    if (eager_send_) {
      eager_send_ = false;
      send_output();
    }
  }
}

void Connection::payload_received() {
  RequestSlot* s = payload_slot_;
  payload_slot_ = nullptr;
  input_ = Input::kHeader;
  submit(s);
}

bool Connection::handle_request(const Request& rq) {
  ++requests_seen_;
  if (rq.magic != kRequestMagic) {
    hard_close(fmt::format("bad request magic {:#x}", rq.magic));
    return false;
  }
  if (rq.type == kCmdDisc) {
    rpos_ += kRequestSize;
    state_ = State::kDraining;
    shutting_down_ = false;  // nothing more to read
    return false;
  }
  if (rq.type == kCmdWrite && rq.length > kMaxPayload) {
    // Skipping 4 GiB of payload would let the client keep us busy for
    // nothing, and the spec allows a disconnect here.
    hard_close(fmt::format("WRITE of {} bytes is over the {} byte maximum", rq.length,
                           kMaxPayload));
    return false;
  }
  RequestSlot* s = get_slot(buffer_need(rq));
  if (!s) {
    read_blocked_ = true;  // resumes when a reply has been sent
    return false;
  }
  rpos_ += kRequestSize;
  s->cookie = rq.cookie;
  s->offset = rq.offset;
  s->length = rq.length;
  s->type = rq.type;
  s->flags = rq.flags;

  // The checks, in the order doc/proto.md implies: unknown, read-only,
  // out of range (ENOSPC for writes, EINVAL otherwise), misaligned.
  uint32_t err = 0;
  const bool in_range = rq.offset <= size_ && rq.length <= size_ - rq.offset;
  const bool aligned = rq.offset % lbs_ == 0 && rq.length % lbs_ == 0;
  const QueueLimits& lim = nego_.bdev->disk().limits();
  switch (rq.type) {
    case kCmdRead:
      if (rq.length == 0 || rq.length > kMaxPayload || !in_range || !aligned)
        err = kEinval;
      break;
    case kCmdWrite:
    case kCmdWriteZeroes:
      if (nego_.bdev->read_only())
        err = kEperm;
      else if (rq.length == 0 || !aligned)
        err = kEinval;
      else if (!in_range)
        err = kEnospc;
      break;
    case kCmdTrim:
      if (nego_.bdev->read_only())
        err = kEperm;
      else if (lim.max_discard_sectors == 0 || rq.length == 0 || !in_range || !aligned)
        err = kEinval;
      break;
    case kCmdFlush:
      break;
    case kCmdCache:
    case kCmdBlockStatus:
      if (rq.length == 0 || !in_range) err = kEinval;
      if (rq.type == kCmdBlockStatus && !nego_.base_allocation) err = kEinval;
      break;
    default:
      err = kEinval;
      break;
  }
  if (rq.flags & ~kKnownCmdFlags) err = kEinval;
  // The server is stopping: requests that arrive while the ones in flight
  // finish are refused, as the spec's soft disconnect asks.
  if (shutting_down_) err = kEshutdown;

  if (rq.type == kCmdWrite) {
    // The payload follows the header whatever we answer: receive it into
    // the buffer, or drop it when the answer is already known.
    if (err == 0 && !grow(s, rq.length)) err = kEnomem;
    if (err != 0) {
      input_ = Input::kDiscard;
      discard_left_ = rq.length;
      discard_error_ = err;
      discard_slot_ = s;
    } else {
      input_ = Input::kPayload;
      payload_slot_ = s;
      payload_got_ = 0;
    }
    return true;
  }
  if (err == 0 && rq.type == kCmdRead && !grow(s, rq.length)) err = kEnomem;
  if (err != 0) {
    reply_now(s, err);
    return true;
  }
  switch (rq.type) {
    case kCmdCache:  // our devices have no slower tier to warm
      reply_now(s, 0);
      break;
    case kCmdBlockStatus:
      block_status(s);
      break;
    default:
      submit(s);
      break;
  }
  return true;
}

void Connection::submit(RequestSlot* s) {
  // A partition's bios are remapped onto its disk by submit_bio.
  BlockDevice* bdev = nego_.bdev.get();
  const uint64_t sector = s->offset >> kSectorShift;
  Bio& bio = s->bio;
  switch (s->type) {
    case kCmdRead:
    case kCmdWrite:
      s->seg = Segment(s->buf, s->length);
      bio.init(bdev, s->type == kCmdRead ? Op::kRead : Op::kWrite, sector, {&s->seg, 1},
               &Connection::bio_done, s);
      break;
    case kCmdFlush:
      bio.init_nodata(bdev, Op::kFlush, 0, 0, &Connection::bio_done, s);
      bio.set_flags(BioFlag::kPreflush);
      break;
    case kCmdTrim:
      bio.init_nodata(bdev, Op::kDiscard, sector, s->length, &Connection::bio_done, s);
      break;
    case kCmdWriteZeroes: {
      // NO_HOLE keeps the range allocated; FAST_ZERO refuses (ENOTSUP)
      // where zeroing would be no faster than the client writing zeroes.
      ZeroFlag how = ZeroFlag::kNone;
      if (s->flags & kCmdFlagNoHole) how = how | ZeroFlag::kNoUnmap;
      if (s->flags & kCmdFlagFastZero) how = how | ZeroFlag::kNoFallback;
      const BioFlag fua = (s->flags & kCmdFlagFua) ? BioFlag::kFua : BioFlag::kNone;
      return issue_zeroout(bio, bdev, sector, s->length, how, &Connection::bio_done, s,
                           fua);
    }
    default:
      return reply_now(s, kEinval);
  }
  if ((s->flags & kCmdFlagFua) && s->type != kCmdRead) bio.set_flags(BioFlag::kFua);
  s->start = bio.start();
  submit_bio(bio);
}

void Connection::block_status(RequestSlot* s) {
  const uint32_t max = (s->flags & kCmdFlagReqOne) ? 1 : kMaxExtents;
  if (!grow(s, block_status_bytes(s->flags))) return reply_now(s, kEnomem);
  const Disk& disk = nego_.bdev->disk();
  const uint64_t base = nego_.bdev->start() << kSectorShift;  // a partition's start
  store32(s->buf, kBaseAllocationId);
  uint32_t n = 0;
  uint64_t pos = s->offset;
  const uint64_t end = s->offset + s->length;
  while (pos < end && n < max) {
    const Extent e = disk.extent_at(base + pos, end - pos);
    if (e.length == 0) break;
    const uint64_t len = std::min(e.length, end - pos);
    store32(s->buf + 4 + 8 * n, static_cast<uint32_t>(len));
    store32(s->buf + 8 + 8 * n,
            (e.allocated ? 0 : kStateHole) | (e.zero ? kStateZero : 0));
    ++n;
    pos += len;
  }
  if (n == 0) return reply_now(s, kEio);
  s->data_len = 4 + 8 * n;
  set_reply(s, 0);
  s->data = s->buf;
  s->data_len = 4 + 8 * n;
  store32(s->hdr + 16, s->data_len);
  queue_reply(s);
}

// --- closing -----------------------------------------------------------------

void Connection::hard_close(const std::string& why) {
  if (state_ == State::kClosed) return;
  if (!why.empty()) log(why);
  state_ = State::kClosed;
  ::shutdown(fd_, SHUT_RDWR);
  out_.clear();
  while (send_head_) {
    RequestSlot* s = send_head_;
    send_head_ = s->next;
    release(s);
  }
  send_tail_ = nullptr;
  queued_replies_ = 0;
  if (payload_slot_) release(payload_slot_);
  if (discard_slot_) release(discard_slot_);
  payload_slot_ = discard_slot_ = nullptr;
  input_ = Input::kHeader;
}

void Connection::maybe_close() {
  if (state_ == State::kClosed) return;
  const bool done_reading = eof_ || state_ == State::kDraining;
  if (!done_reading || in_flight_ != 0 || !out_.empty()) return;
  if (state_ == State::kDraining)
    log("disconnect");
  else
    log("client closed");
  state_ = State::kClosed;
  ::shutdown(fd_, SHUT_RDWR);
}

void Connection::begin_shutdown(bool force) {
  if (force || state_ == State::kHandshake) return hard_close(force ? "shut down" : "");
  if (state_ != State::kTransmission) return;
  state_ = State::kDraining;
  shutting_down_ = true;
  // A write whose payload is still arriving is not submitted: its payload
  // is received and dropped, and the write answered ESHUTDOWN.
  if (input_ == Input::kPayload) {
    input_ = Input::kDiscard;
    discard_slot_ = payload_slot_;
    discard_left_ = payload_slot_->length - payload_got_;
    discard_error_ = kEshutdown;
    payload_slot_ = nullptr;
  }
}

}  // namespace blkstack::nbd
