// TransferDriver: a driver that writes its transfer once and runs bio-based
// or request-based, as the disk's queue_mode= says (null_blk's nullb_cmd,
// which carries either a bio or a request).
//
// make_disk() (driver/queue_mode.h) puts the driver under the disk:
// bio-based, every bio that passed submit_bio()'s checks reaches
// queue_cmd() as an IoCmd; multi-queue, a Queue in front merges bios into
// requests, takes tags, plugs and schedules, and every request reaches
// queue_cmd() the same way. The driver moves the data of each bio of the
// command (one bio, or a request's bios, contiguous on the device, in
// order) and ends the command exactly once, now or later, on any thread,
// with complete(status). queue_cmd() must not block (DESIGN.md invariant
// 2) and cannot refuse: a driver short of something completes the command
// with a Status. A driver that needs the request machinery itself (a
// doorbell rung at the end of a batch, its own timeout handling, poll
// queues) is a RequestDriver (request_driver.h), as the file driver is.
//
// The cost is what it was with one driver class per mode: make_disk<D>()
// builds the driver inside BioTransfer<D> or RequestTransfer<D>, which call
// D::queue_cmd() directly (D is final), so a bio or a request still costs
// one virtual call; an IoCmd is one word.
#pragma once

#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>

#include "blkstack/bio.h"
#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/hw_queue.h"
#include "blkstack/driver/request.h"
#include "blkstack/driver/request_driver.h"

namespace blkstack {

template <class D>
class BioTransfer;
template <class D>
class RequestTransfer;

// One bio (bio-based) or one request (multi-queue), as the driver sees it.
class IoCmd {
 public:
  IoCmd() = default;  // none: an empty link
  explicit operator bool() const { return bits_ != 0; }

  Op op() const { return is_request() ? rq().op() : bio().op(); }
  bool has_flag(BioFlag f) const {
    return is_request() ? rq().has_flag(f) : bio().has_flag(f);
  }
  uint64_t sector() const { return is_request() ? rq().pos() : bio().sector(); }
  uint32_t bytes() const { return is_request() ? rq().bytes() : bio().size(); }
  // The hardware queue the command came on, for per-queue resources: from
  // 0 to the disk's hw_queues - 1, always 0 when bio-based.
  unsigned queue_index() const { return is_request() ? rq().hctx().index() : 0; }

  // Calls fn(const Bio&) for each bio, in order on the device.
  template <class Fn>
  void for_each_bio(Fn&& fn) const {
    if (is_request())
      rq().for_each_bio(fn);
    else
      fn(static_cast<const Bio&>(bio()));
  }
  // Calls fn(const BioChunk&) for every piece of memory of every bio.
  template <class Fn>
  void for_each_chunk(Fn&& fn) const {
    if (is_request())
      rq().for_each_chunk(fn);
    else
      bio().for_each_chunk(fn);
  }

  // Ends the command (Bio::complete, Request::end_request_all): once.
  void complete(Status status) const {
    if (is_request())
      rq().end_request_all(status);
    else
      bio().complete(status);
  }

  // One word of the driver's own while it holds the command (a deadline,
  // an index): the bio's driver_data, or a word of the request's pdu.
  uint64_t& driver_data() const {
    return is_request() ? *rq().pdu_as<uint64_t>() : bio().driver_data;
  }
  // A link for the driver's own lists while it holds the command, through
  // the bio's or the request's `next`. Every command of one driver is of
  // one kind (a disk runs in one mode), which is what makes a link one
  // word: next() reads it back as this command's kind.
  IoCmd next() const { return is_request() ? IoCmd(rq().next) : IoCmd(bio().next); }
  void set_next(IoCmd n) const {
    if (is_request())
      rq().next = n.as_request();
    else
      bio().next = n.as_bio();
  }

  // The bio or the request under the command (the other is null).
  Bio* as_bio() const { return is_request() ? nullptr : reinterpret_cast<Bio*>(bits_); }
  Request* as_request() const {
    return is_request() ? reinterpret_cast<Request*>(bits_ & ~kRequestBit) : nullptr;
  }
  bool is_request() const { return (bits_ & kRequestBit) != 0; }

  // Bytes a request keeps for the command's driver_data (its pdu).
  static constexpr size_t kPduBytes = sizeof(uint64_t);

 private:
  template <class D>
  friend class BioTransfer;
  template <class D>
  friend class RequestTransfer;

  static constexpr uintptr_t kRequestBit = 1;  // bios and requests are aligned
  // Every Bio and Request, however allocated, sits at a multiple of its
  // alignment (mempools honour alignof, see mempool.h), so bit 0 of its
  // address is free: a packed Bio would make the kind bit lie.
  static_assert(alignof(Bio) > kRequestBit && alignof(Request) > kRequestBit);

  // Telling the compiler the pointers are aligned lets it see the kind
  // where the command is made (in the adapters) and drop the other branch.
  explicit IoCmd(Bio* bio)
      : bits_(reinterpret_cast<uintptr_t>(__builtin_assume_aligned(bio, alignof(Bio)))) {}
  explicit IoCmd(Request* rq)
      : bits_(rq ? reinterpret_cast<uintptr_t>(
                       __builtin_assume_aligned(rq, alignof(Request))) |
                       kRequestBit
                 : 0) {}
  Bio& bio() const { return *reinterpret_cast<Bio*>(bits_); }
  Request& rq() const { return *reinterpret_cast<Request*>(bits_ & ~kRequestBit); }

  uintptr_t bits_ = 0;
};

class TransferDriver {
 public:
  virtual ~TransferDriver() = default;
  // Starts `cmd`; the driver ends it with cmd.complete(status).
  virtual void queue_cmd(IoCmd cmd) = 0;
  // The disk is going (BioDriver::shutdown, RequestDriver::shutdown).
  virtual void shutdown() {}
  // Multi-queue: a request overstayed the queue's timeout
  // (RequestDriver::timeout); a driver that times its commands out itself
  // says kResetTimer.
  virtual TimeoutAction timeout(IoCmd cmd) {
    (void)cmd;
    return TimeoutAction::kFailWhenDone;
  }
};

// What make_disk() puts under a bio-based disk for a TransferDriver D,
// which it holds in place: the call to queue_cmd() is then direct and
// needs no load of a pointer to the driver.
template <class D>
class BioTransfer final : public BioDriver {
 public:
  template <class... Args>
  explicit BioTransfer(Args&&... args) : driver_(std::forward<Args>(args)...) {}
  void submit(Bio& bio) override { driver_.queue_cmd(IoCmd(&bio)); }
  void shutdown() override { driver_.shutdown(); }
  // Before the disk is made: the core counts this many bios (bio_depth=).
  void set_bio_depth(unsigned depth) { depth_ = depth; }
  BioQueueConfig bio_queue_config() const override { return {depth_, false}; }

 private:
  D driver_;
  unsigned depth_ = 0;
};

// What make_disk() puts under a Queue for a TransferDriver D, held in
// place. Its tag set gives each request IoCmd::kPduBytes of pdu.
template <class D>
class RequestTransfer final : public RequestDriver {
 public:
  template <class... Args>
  explicit RequestTransfer(Args&&... args) : driver_(std::forward<Args>(args)...) {}
  Status queue_rq(HwQueue&, Request& rq, bool) override {
    driver_.queue_cmd(IoCmd(&rq));
    return Status::kOk;
  }
  void shutdown() override { driver_.shutdown(); }
  TimeoutAction timeout(Request& rq) override { return driver_.timeout(IoCmd(&rq)); }

 private:
  D driver_;
};

}  // namespace blkstack
