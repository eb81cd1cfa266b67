#include "blkstack/driver/request.h"

#include "blkstack/driver/queue.h"
#include "queue/tag_set.h"

namespace blkstack {

uint32_t Request::cur_bytes() const {
  if (!head_) return 0;
  if (!op_has_data(op_)) return head_->size();
  const BioIter& it = head_->iter();
  uint32_t in_seg = head_->segments()[it.idx].len - it.done;
  return in_seg < head_->size() ? in_seg : head_->size();
}

void* Request::sched_priv() const {
  if (internal_tag_ < 0) return nullptr;
  return hctx_->sched_tags()->priv_at(internal_tag_);
}

bool Request::end_request(Status status, uint32_t bytes) {
  if (bytes >= bytes_) {
    // All that is left. The queue claims the request from the driver first
    // (the timeout may own it) and only then touches it; once finished the
    // tag may be reused and the disk and this queue may be gone.
    queue_->end_from_driver(*this, status);
    return false;
  }
  if (status != Status::kOk && error_ == Status::kOk) error_ = status;
  if (internal_flush_ || flush_policy_ != 0) {
    // A stage of a flush sequence: the bios end when the sequence does.
    bytes_ -= bytes;
    return true;
  }
  uint32_t left = bytes;
  while (left > 0 && head_ != nullptr) {
    Bio* b = head_;
    if (left >= b->size()) {
      left -= b->size();
      head_ = b->next;
      if (!head_) tail_ = nullptr;
      b->next = nullptr;
      b->complete(status);
    } else {
      b->set_status(status);
      b->advance(left);
      left = 0;
    }
  }
  sector_ += bytes >> kSectorShift;
  bytes_ -= bytes;
  return true;
}

void Request::end_request_all(Status status) { end_request(status, bytes_); }

void RequestList::push_back(Request* rq) {
  rq->next = nullptr;
  rq->prev = tail_;
  if (tail_)
    tail_->next = rq;
  else
    head_ = rq;
  tail_ = rq;
  ++size_;
}

void RequestList::push_front(Request* rq) {
  rq->prev = nullptr;
  rq->next = head_;
  if (head_)
    head_->prev = rq;
  else
    tail_ = rq;
  head_ = rq;
  ++size_;
}

void RequestList::remove(Request* rq) {
  if (rq->prev)
    rq->prev->next = rq->next;
  else
    head_ = rq->next;
  if (rq->next)
    rq->next->prev = rq->prev;
  else
    tail_ = rq->prev;
  rq->next = rq->prev = nullptr;
  --size_;
}

void RequestList::insert_before(Request* pos, Request* rq) {
  rq->next = pos;
  rq->prev = pos->prev;
  if (pos->prev)
    pos->prev->next = rq;
  else
    head_ = rq;
  pos->prev = rq;
  ++size_;
}

Request* RequestList::pop_front() {
  Request* rq = head_;
  if (rq) remove(rq);
  return rq;
}

void RequestList::splice_back(RequestList& other) {
  if (other.empty()) return;
  if (tail_) {
    tail_->next = other.head_;
    other.head_->prev = tail_;
  } else {
    head_ = other.head_;
  }
  tail_ = other.tail_;
  size_ += other.size_;
  other.head_ = other.tail_ = nullptr;
  other.size_ = 0;
}

void RequestList::splice_front(RequestList& other) {
  other.splice_back(*this);
  *this = other;
  other = RequestList();
}

}  // namespace blkstack
