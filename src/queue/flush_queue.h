// FlushQueue: the flush state machine of a request queue (the kernel's
// blk-flush.c).
//
// A write with PREFLUSH and/or FUA on a device with a volatile write cache
// runs as a sequence of stages:
//
//   PREFLUSH -> DATA -> POSTFLUSH -> DONE
//
// PREFLUSH is a flush issued before the data (it makes every write that
// completed before this request durable). POSTFLUSH emulates FUA on a device
// without native FUA: the request completes only after a flush that started
// after its data completed. Stages a request does not need are skipped; a
// device with native FUA gets the data with FUA set and no POSTFLUSH.
//
// Requests waiting for a flush stage wait on `pending_`. When no flush is in
// flight, one flush is issued for all of them; requests that arrive while it
// is in flight wait for the next one (that flush may have started before
// their writes completed). So concurrent flushes coalesce, and every flush
// covers every write that completed before the request that asked for it.
#pragma once

#include <mutex>

#include "blkstack/driver/request.h"

namespace blkstack {

class HwQueue;
class Queue;

class FlushQueue {
 public:
  explicit FlushQueue(Queue& q) : q_(q) {}

  // Takes `rq` into a flush sequence if it needs one. Returns false when
  // the request needs no sequence and goes the normal way.
  bool insert(Request& rq);
  // The DATA stage of `rq` came back from the driver.
  void data_done(Request& rq, Status status);
  // The internal flush request came back from the driver.
  void flush_done(Request& flush_rq, Status status);

  // The internal flush request, for the timeout scan.
  Request& flush_request() { return flush_rq_; }

  static constexpr uint8_t kPreflush = 1, kData = 2, kPostflush = 4, kDone = 8;

 private:
  // Marks `seq` stages done and moves `rq` on to its next stage.
  void complete_seq(Request& rq, uint8_t seq, Status status);
  // Issues a flush for the pending requests if none is in flight.
  void kick();

  Queue& q_;
  std::mutex lock_;
  RequestList pending_;  // waiting for the next flush
  RequestList running_;  // waiting for the flush in flight
  bool flush_in_flight_ = false;
  Request flush_rq_;
};

}  // namespace blkstack
