#include "blkstack/request.h"

#include "blkstack/queue.h"
#include "queue/flush_queue.h"

namespace blkstack {

uint32_t Request::cur_bytes() const {
  if (!head_) return 0;
  if (!op_has_data(op_)) return head_->size();
  const BioIter& it = head_->iter();
  uint32_t in_seg = head_->segments()[it.idx].len - it.done;
  return in_seg < head_->size() ? in_seg : head_->size();
}

bool Request::end_request(Status status, uint32_t bytes) {
  if (status != Status::kOk && error_ == Status::kOk) error_ = status;
  if (bytes > bytes_) bytes = bytes_;
  if (internal_flush_ || flush_policy_ != 0) {
    // A stage of a flush sequence: the bios end when the sequence does.
    bytes_ -= bytes;
    if (bytes_ > 0) return true;
    if (internal_flush_) {
      queue_->flush_->flush_done(*this, error_);
    } else {
      queue_->flush_->data_done(*this, error_);
    }
    return false;
  }
  if (bytes == bytes_) {
    // All that is left: finish_request() ends the bios, after accounting and
    // freeing the tag, because once the last bio has ended the disk and
    // this queue may be gone.
    bytes_ = 0;
    queue_->finish_request(*this, status);
    return false;
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
  if (tail_) tail_->next = rq; else head_ = rq;
  tail_ = rq;
  ++size_;
}

void RequestList::push_front(Request* rq) {
  rq->prev = nullptr;
  rq->next = head_;
  if (head_) head_->prev = rq; else tail_ = rq;
  head_ = rq;
  ++size_;
}

void RequestList::remove(Request* rq) {
  if (rq->prev) rq->prev->next = rq->next; else head_ = rq->next;
  if (rq->next) rq->next->prev = rq->prev; else tail_ = rq->prev;
  rq->next = rq->prev = nullptr;
  --size_;
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
