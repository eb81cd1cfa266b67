// RequestDriver: what a request-based driver implements (the kernel's
// blk_mq_ops), and TagSetConfig, the shape of its queues.
//
// queue_rq() receives one request and must not block (DESIGN.md invariant
// 2). Its return value says what happened:
//   Status::kOk              the request is the driver's; it will end it.
//   Status::kResource        no resource now: the queue requeues the request
//                            and runs again when another request completes
//                            (or after a short delay if none is in flight).
//   Status::kDeviceResource  busy: the queue requeues the request and stops
//                            this hardware queue until the driver calls
//                            HwQueue::start() (blk_mq_stop_hw_queue + BUSY).
//                            A start() on another thread while queue_rq is
//                            still returning counts: it is not lost.
//   any other status         the request fails with that status.
// `last` is false when more requests follow at once in this batch; a driver
// may hold back a doorbell until last, and must then ring it in commit_rqs()
// if the batch ends early.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "blkstack/disk.h"
#include "blkstack/driver/request.h"
#include "blkstack/status.h"

namespace blkstack {

class HwQueue;

struct TagSetConfig {
  unsigned nr_hw_queues = 1;  // submit_queues
  // More hardware queues after those, for polled I/O only (nvme's
  // poll_queues): their requests complete when RequestDriver::poll() runs.
  unsigned nr_poll_queues = 0;
  unsigned queue_depth = 64;  // tags per hardware queue (hw_queue_depth)
  bool shared_tags = false;   // one tag space for all hardware queues
  size_t cmd_size = 0;        // bytes of driver data per request (pdu)
  // A request in the driver longer than this times out (RequestDriver::
  // timeout). From 1 ms (the resolution of the timeout scan) to 2^32-1 ms
  // (about 49 days, the kernel's io_timeout range; no deadline can wrap);
  // TagSet refuses anything else.
  uint64_t timeout_ns = 30'000'000'000;
  static constexpr uint64_t kMinTimeoutNs = 1'000'000;
  static constexpr uint64_t kMaxTimeoutNs = uint64_t{UINT32_MAX} * 1'000'000;

  unsigned nr_queues() const { return nr_hw_queues + nr_poll_queues; }
};

// What the driver's timeout() did with a request that overstayed the
// timeout (the kernel's blk_eh_timer_return).
enum class TimeoutAction : uint8_t {
  kResetTimer,    // the driver keeps it for another timeout period
  kDone,          // the handler ended (or requeued) it; or the driver will end
                  // it later with a status of its own
  kFailWhenDone,  // the driver keeps it until it ends it, and then the
                  // request fails with Status::kTimeout (the default)
};

class RequestDriver {
 public:
  virtual ~RequestDriver() = default;

  virtual Status queue_rq(HwQueue& hctx, Request& rq, bool last) = 0;
  // The batch ended before a request with last == true was queued.
  virtual void commit_rqs(HwQueue& hctx) { (void)hctx; }
  // A request has been with the driver longer than the timeout. The queue
  // has claimed it first (DESIGN.md invariant 9): while this runs, a
  // completion or requeue_request() of `rq` from another thread is held
  // back; it is carried out when this returns, or dropped if this ended the
  // request itself (a late completion of a timed-out request is ignored).
  // The handler may end or requeue `rq` itself only if the driver will not
  // touch it again (it aborted the I/O); the timer is not reset after that.
  //
  // The default fails the request with Status::kTimeout when the driver
  // ends it: the queue never hands a submitter its memory back while the
  // driver may still be reading or writing it.
  virtual TimeoutAction timeout(Request& rq) {
    (void)rq;
    return TimeoutAction::kFailWhenDone;
  }
  // Completes what is ready on a poll queue without waiting for an
  // interrupt-like event. With `wait_ns` > 0 it may wait that long for the
  // first completion if requests are in flight there. Returns how many it
  // completed, or kPollBusy if another thread is polling `hctx` (that
  // thread completes them).
  static constexpr int kPollBusy = -1;
  virtual int poll(HwQueue& hctx, uint64_t wait_ns) {
    (void)hctx;
    (void)wait_ns;
    return 0;
  }
  // Once per preallocated request, to set up its pdu.
  virtual void init_request(Request& rq) { (void)rq; }
  // The disk is going (BioDriver::shutdown): new I/O is refused, and what
  // the driver holds waiting on something that may never come (a server
  // to come back) should fail now, not hold up the removal.
  virtual void shutdown() {}
  // What the driver reports about the device goes to the disk once, as a
  // DiskReports (driver/reports.h), not through the queue.
};

}  // namespace blkstack
