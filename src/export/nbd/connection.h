// Connection: one NBD client, from the greeting to the close.
//
// A connection owns a non-blocking socket and is driven by one thread, its
// reactor's (an EventLoop, or a test that calls run() itself). It first runs
// a Handshake, then the transmission phase:
//
//   bytes -> 28-byte request header -> checks -> RequestSlot -> Bio ->
//   submit_bio -> (completion, any thread) -> reply queued -> sendmsg
//
// Data is not copied on the way: a WRITE payload is received straight into
// the slot's buffer (readv of [payload rest, receive buffer]; only payload
// bytes that arrived in the same read as their header are moved out of the
// 64 KiB receive buffer), the bio writes from that buffer, and a READ is
// sent with one sendmsg of the reply header and the buffer the bio filled.
//
// Requests run concurrently and are answered in completion order. Slots and
// their buffers are reused, so the steady state allocates nothing. What a
// client can pin is bounded: the number of requests in flight, and the
// bytes of request buffers the connection holds, in flight or kept for
// reuse (a request is charged the buffer it holds, so a tiny request on a
// slot that kept a large buffer counts all of it). Kept buffers are freed
// to make room first; past either bound, the connection stops reading its
// socket until replies drain. A client that never reads its replies
// therefore stalls only itself, and no pattern of requests makes a
// connection hold more than max(max_bytes_in_flight, 32 MiB) of buffers
// plus its 64 KiB receive buffer.
//
// Errors follow doc/proto.md: a bad request gets an error reply and the
// connection goes on; garbage magic, a WRITE longer than the advertised
// maximum (its payload cannot be skipped safely) or a socket error is a
// hard disconnect. I/O already submitted always completes before the
// connection's memory goes away.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "blkstack/bio.h"
#include "export/export_table.h"
#include "export/nbd/backlog.h"
#include "export/nbd/handshake.h"
#include "export/nbd/protocol.h"

namespace blkstack::nbd {

// The NBD error a reply carries for a block-layer status (0 for kOk).
uint32_t nbd_error(Status s, bool write);

class Connection;
struct RequestSlot;

// The thread that drives connections.
class Reactor {
 public:
  virtual ~Reactor() = default;
  // True when called on the reactor's thread.
  virtual bool on_reactor_thread() const = 0;
  // From any other thread (a driver's completion thread): the bio of `slot`
  // completed. The reactor calls slot->conn->complete(slot) and then run()
  // on its own thread soon. The slot, not the connection, is handed over:
  // the connection may be gone once complete() has run.
  virtual void post(RequestSlot* slot) = 0;
  // The connection's buffers (receive buffer and request buffers) grew or
  // shrank by `delta` bytes; on the reactor thread. For the server's count
  // of the memory its clients make it hold.
  virtual void buffers_changed(int64_t delta) { (void)delta; }
  // The connection chose its export and is about to answer the client's
  // GO; on the reactor thread. The reactor may begin_shutdown() it here
  // (its export was dropped meanwhile): nothing has been submitted yet.
  virtual void export_chosen(Connection& c) { (void)c; }
};

struct ConnectionLimits {
  // Bytes of request buffers held, by requests in flight and kept for the
  // next ones together; one request is admitted on an idle connection
  // whatever its size (up to kMaxPayload).
  uint64_t max_bytes_in_flight = 64u << 20;
  uint32_t max_requests = 512;  // requests in flight
};

// One request in flight, with a buffer that is kept for the next one.
struct RequestSlot {
  Connection* conn = nullptr;
  Bio bio;
  BioStart start;            // to send the bio again when the device is busy
  Segment seg;               // the whole buffer, for READ and WRITE
  std::byte* buf = nullptr;  // 4096-aligned, `cap` bytes
  uint32_t cap = 0;
  // The request.
  uint64_t cookie = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
  uint16_t type = 0;
  uint16_t flags = 0;
  // The reply: header bytes, then optional data; `sent` counts both.
  std::byte hdr[32];
  uint32_t hdr_len = 0;
  const std::byte* data = nullptr;
  uint32_t data_len = 0;
  uint32_t sent = 0;
  RequestSlot* next = nullptr;  // free list, send queue, reactor's list
};

class Connection {
 public:
  // Takes ownership of `fd` (made non-blocking here).
  Connection(int fd, std::shared_ptr<const ExportTable> exports, Reactor& reactor,
             ConnectionLimits limits = {});
  ~Connection();  // requires finished()
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  int fd() const { return fd_; }
  // Does all the socket allows now: sends, reads and parses, submits. On
  // the reactor thread, after an event on the socket or complete().
  void run();
  // The bio of `s` completed: queue its reply. On the reactor thread.
  void complete(RequestSlot* s);
  // Which events the connection waits for now.
  bool wants_read() const;
  bool wants_write() const { return !out_.empty() || send_head_ != nullptr; }
  // Requests wait in the receive buffer although the socket may have
  // nothing new: run() again soon without waiting for an event.
  bool wants_rerun() const;
  // Closed and no I/O in flight: may be destroyed.
  bool finished() const { return state_ == State::kClosed && in_flight_ == 0; }
  // Server shutdown: answer what is in flight, refuse requests that arrive
  // meanwhile with ESHUTDOWN, then close. With `force`, close now and drop
  // pending replies (I/O in flight still completes before finished()).
  void begin_shutdown(bool force = false);
  // Still negotiating options (for the handshake timeout).
  bool in_handshake() const { return state_ == State::kHandshake; }
  // Requests read so far (the event loop's measure of a client's depth),
  // and reads that brought a write's payload.
  uint64_t requests_seen() const { return requests_seen_; }
  uint64_t payload_reads() const { return payload_reads_; }
  // For a coalescing loop (backlog.h), before each run(): with split sends
  // on, each batch of replies goes in two parts, its last two thirds in a
  // send of their own, and before the run's first batch the connection
  // notes how much of the previous one the client had yet to read (one
  // more sendmsg and three SIOCOUTQ ioctls per batch). kNone also where
  // the socket cannot tell: TCP counts bytes not yet acknowledged by the
  // peer's kernel, not bytes its program has not read.
  void set_split_sends(bool on) {
    split_sends_ = on;
    backlog_at_send_.reset();
  }
  // The backlog noted in the last run(); empty if it sent no replies.
  std::optional<Backlog> backlog_at_last_send() const { return backlog_at_send_; }
  // Name for the log ("conn 3").
  const std::string& name() const { return name_; }
  // The export chosen (empty during the handshake), and its disk (null
  // until chosen).
  const std::string& export_name() const { return nego_.export_name; }
  const BlockDevice* bdev() const { return nego_.bdev.get(); }
  // The table the handshake chooses from (taken when the connection came).
  const ExportTable* table() const { return exports_.get(); }

 private:
  enum class State { kHandshake, kTransmission, kDraining, kClosed };
  enum class Input { kHeader, kPayload, kDiscard };

  static void bio_done(Bio& bio);
  // From the busy timer: a busy write-zeroes back to its event loop.
  static void post_slot(void* slot);
  void read_input();
  bool process_staged();  // false: stop reading for now
  bool handle_request(const Request& rq);
  void payload_received();
  void submit(RequestSlot* s);
  void block_status(RequestSlot* s);
  // The bytes of buffer a request will hold (its payload or its
  // BLOCK_STATUS reply; WRITE_ZEROES holds none, see zeroout.h).
  uint32_t buffer_need(const Request& rq) const;
  // A free slot for a request that needs `need` bytes of buffer, or null
  // when the request limit or the buffer budget does not admit it now.
  RequestSlot* get_slot(uint32_t need);
  // Frees kept buffers (not `keep`'s) until `extra` more bytes fit the
  // budget; false if they do not and requests are in flight.
  bool make_room(uint64_t extra, const RequestSlot* keep);
  bool grow(RequestSlot* s, uint32_t bytes);
  void free_buffer(RequestSlot* s);
  void release(RequestSlot* s);
  void reply_now(RequestSlot* s, uint32_t error);
  void set_reply(RequestSlot* s, uint32_t error);
  void queue_reply(RequestSlot* s);
  void send_output();
  // Sends what the socket takes of out_ and then of the replies, at most
  // `max_replies` of them (0: all); true when all of that went out.
  bool send_queued(uint32_t max_replies);
  int unread_bytes() const;
  Backlog client_backlog() const;
  void hard_close(const std::string& why);
  void maybe_close();
  bool parsing() const;  // request headers are parsed now
  void log(const std::string& what) const;

  int fd_;
  bool unix_socket_ = false;
  std::string name_;
  std::shared_ptr<const ExportTable> exports_;
  Reactor& reactor_;
  ConnectionLimits limits_;
  State state_ = State::kHandshake;
  std::unique_ptr<Handshake> handshake_;
  Negotiated nego_;
  uint64_t size_ = 0;
  uint32_t lbs_ = 512;

  // Receive buffer: bytes [rpos_, wpos_) are unparsed.
  std::unique_ptr<std::byte[]> rbuf_;
  size_t rpos_ = 0, wpos_ = 0;
  bool eof_ = false;
  Input input_ = Input::kHeader;
  RequestSlot* payload_slot_ = nullptr;  // kPayload: where the bytes go
  uint32_t payload_got_ = 0;
  uint64_t discard_left_ = 0;   // kDiscard: bytes to drop
  uint32_t discard_error_ = 0;  // and the error to answer with
  RequestSlot* discard_slot_ = nullptr;

  // Slots.
  std::vector<std::unique_ptr<RequestSlot>> slots_;
  RequestSlot* free_ = nullptr;
  uint32_t in_flight_ = 0;      // slots taken (bio running or reply unsent)
  uint64_t requests_seen_ = 0;  // request headers read
  uint64_t payload_reads_ = 0;  // reads that brought payload bytes
  uint64_t buffer_bytes_ = 0;   // request buffers, in flight or kept (slots_)
  bool read_blocked_ = false;   // budget or slots exhausted
  bool shutting_down_ = false;  // server stopping: answer new requests ESHUTDOWN
  bool eager_send_ = false;     // a large request completed: send before parsing on

  // Output: handshake bytes first, then replies in completion order.
  std::string out_;
  RequestSlot* send_head_ = nullptr;
  RequestSlot* send_tail_ = nullptr;
  uint32_t queued_replies_ = 0;  // on the send list
  bool split_sends_ = false;
  uint64_t bytes_sent_ = 0;  // all sent so far
  // Bytes of the socket's queue that the last part of the latest split
  // batch took (0: not split), for client_backlog().
  int last_part_bytes_ = 0;
  std::optional<Backlog> backlog_at_send_;  // at this run's first batch

 public:
  void* reactor_data = nullptr;  // the reactor's own bookkeeping
};

}  // namespace blkstack::nbd
