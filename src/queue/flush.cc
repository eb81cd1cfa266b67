#include <bit>

#include "blkstack/driver/queue.h"
#include "queue/flush_queue.h"
#include "queue/tag_set.h"

namespace blkstack {

bool FlushQueue::insert(Request& rq) {
  const QueueLimits& lim = q_.limits();
  uint8_t policy = 0;
  if (rq.bytes_ != 0) policy |= kData;
  if (lim.volatile_write_cache) {
    if (rq.has_flag(BioFlag::kPreflush) || rq.op_ == Op::kFlush) policy |= kPreflush;
    if (rq.has_flag(BioFlag::kFua) && !lim.fua) policy |= kPostflush;
  }
  rq.clear_flags(BioFlag::kPreflush);
  if (!lim.fua || !lim.volatile_write_cache) rq.clear_flags(BioFlag::kFua);
  if (policy == kData) return false;  // plain write (FUA, if any, is native)
  rq.flush_seq_ = 0;
  rq.flush_policy_ = policy;
  complete_seq(rq, static_cast<uint8_t>((kPreflush | kData | kPostflush) & ~policy),
               Status::kOk);
  return true;
}

void FlushQueue::complete_seq(Request& rq, uint8_t seq, Status status) {
  rq.flush_seq_ |= seq;
  if (status != Status::kOk) {
    rq.flush_policy_ = 0;
    q_.finish_request(rq, status);
    return;
  }
  const uint8_t todo =
      static_cast<uint8_t>(~rq.flush_seq_ & (kPreflush | kData | kPostflush | kDone));
  const uint8_t next = static_cast<uint8_t>(todo & -todo);  // lowest stage not done
  switch (next) {
    case kPreflush:
    case kPostflush: {
      bool issue;
      {
        std::lock_guard lock(lock_);
        pending_.push_back(&rq);
        issue = !flush_in_flight_;
      }
      if (issue) kick();
      break;
    }
    case kData:
      q_.dispatch_internal(rq);
      break;
    default:  // kDone
      rq.flush_policy_ = 0;
      q_.finish_request(rq, rq.error_);
      break;
  }
}

void FlushQueue::kick() {
  Request* first;
  {
    std::lock_guard lock(lock_);
    if (flush_in_flight_ || pending_.empty()) return;
    flush_in_flight_ = true;
    running_.splice_back(pending_);
    first = running_.front();
  }
  // The flush borrows the tag of the first request it serves (which is
  // waiting here, not in the driver), as the kernel's flush_rq does.
  Request& f = flush_rq_;
  f.op_ = Op::kFlush;
  f.flags_ = BioFlag::kNone;
  f.set_state(Request::State::kIdle, std::memory_order_relaxed);
  f.error_ = Status::kOk;
  // With a scheduler the flush takes a driver tag of its own at dispatch
  // (the first request may hold none), as the kernel's flush_rq does.
  f.internal_tag_ = first->internal_tag_;
  f.tag_ = first->internal_tag_ >= 0 ? -1 : first->tag_;
  f.nr_segments_ = 0;
  f.internal_flush_ = true;
  f.flush_policy_ = 0;
  f.sector_ = 0;
  f.bytes_ = 0;
  f.stats_sectors_ = 0;
  f.head_ = f.tail_ = nullptr;
  f.hctx_ = first->hctx_;
  f.queue_ = &q_;
  f.pdu_ = first->pdu_;
  q_.dispatch_internal(f);
}

void FlushQueue::flush_done(Request& flush_rq, Status status) {
  // Bios end in here and the sequence goes on after them (the next flush).
  // Once the last bio has ended its submitter may remove and free the
  // disk: make removal wait until this thread is out, as for a thread in
  // the submit path.
  Disk::SubmitGuard guard(q_.disk());
  q_.leave_driver(flush_rq);
  RequestList done;
  {
    std::lock_guard lock(lock_);
    done.splice_back(running_);
  }
  // Requests that reach a flush stage now wait for the next flush: the one
  // that just finished may have started before their data completed.
  while (Request* rq = done.pop_front()) {
    const uint8_t stage = (rq->flush_seq_ & kPreflush) ? kPostflush : kPreflush;
    complete_seq(*rq, stage, status);
  }
  {
    std::lock_guard lock(lock_);
    flush_in_flight_ = false;
  }
  kick();
}

void FlushQueue::data_done(Request& rq, Status status) {
  q_.leave_driver(rq);
  complete_seq(rq, kData, status);
}

}  // namespace blkstack
