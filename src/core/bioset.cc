#include "blkstack/bioset.h"

#include <memory>
#include <new>

#include "blkstack/submit.h"

namespace blkstack {

BioSet::BioSet(std::string name, size_t min_nr, size_t max_nr, unsigned inline_segments)
    : inline_nr_(inline_segments),
      pool_(std::move(name), sizeof(Bio) + inline_segments * sizeof(Segment),
            alignof(Bio), min_nr, max_nr) {}

Bio* BioSet::alloc(Wait wait) {
  void* raw = pool_.alloc_raw(wait);
  if (!raw) return nullptr;
  Bio* p = new (raw) Bio();
  std::uninitialized_default_construct_n(reinterpret_cast<Segment*>(p + 1), inline_nr_);
  p->pool_ = this;
  p->init(nullptr, Op::kRead, 0, {});
  return p;
}

std::span<Segment> BioSet::inline_segments(Bio& bio) {
  return {reinterpret_cast<Segment*>(&bio + 1), bio.pool()->inline_nr_};
}

Bio* BioSet::take_handed(const Bio& bio) {
  for (Bio* h = handed_.front(); h != nullptr; h = h->next) {
    if (h->context() != &bio) continue;
    handed_.remove(h);  // a short list: one per bio being resumed right now
    waiting_.fetch_sub(1, std::memory_order_relaxed);
    h->set_context(nullptr);
    return h;
  }
  return nullptr;
}

Bio* BioSet::alloc_for_split(const Bio& bio) {
  // seq_cst: pairs with park()'s increment (see release()).
  if (waiting_.load(std::memory_order_seq_cst) != 0) [[unlikely]] {
    std::lock_guard lock(park_lock_);
    if (Bio* h = take_handed(bio)) return h;
    if (!parked_.empty()) return nullptr;  // behind those parked first
  }
  return alloc(Wait::kNoWait);
}

void BioSet::park(Bio& bio) {
  {
    std::lock_guard lock(park_lock_);
    parked_.push_back(&bio);
    waiting_.fetch_add(1, std::memory_order_seq_cst);
  }
  // A bio that came back between our failed allocation and the push saw
  // nobody parked: look again now that we are visible.
  resume_parked();
}

bool BioSet::unpark(Bio& bio) {
  if (waiting_.load(std::memory_order_acquire) == 0) return false;
  std::lock_guard lock(park_lock_);
  // Pieces split off it are issued: under way (read under the lock it was
  // parked with, so a split just before parking is seen).
  if (bio.has_chained_children() || !parked_.remove(&bio)) return false;
  waiting_.fetch_sub(1, std::memory_order_relaxed);
  return true;
}

void BioSet::drop_handed(const Bio& bio) {
  if (waiting_.load(std::memory_order_acquire) == 0) return;
  Bio* h;
  {
    std::lock_guard lock(park_lock_);
    h = take_handed(bio);
  }
  if (h) h->put();  // comes back here, for the next parked bio
}

void BioSet::release(Bio* bio) {
  bio->~Bio();  // Segment is trivially destructible
  pool_.free_raw(bio);
  // seq_cst after the free: either park()'s retry sees the bio we freed,
  // or we see its increment here.
  if (waiting_.load(std::memory_order_seq_cst) != 0) [[unlikely]]
    resume_parked();
}

void BioSet::resume_parked() {
  for (;;) {
    Bio* parked;
    {
      std::lock_guard lock(park_lock_);
      if (parked_.empty()) return;
      Bio* spare = alloc(Wait::kNoWait);
      if (spare == nullptr) return;  // the next one to come back resumes it
      parked = parked_.pop_front();
      spare->set_context(parked);
      handed_.push_back(spare);
    }
    // On this thread: inside a submit path it is only queued, and its split
    // takes the bio handed to it when this thread gets to it.
    submit_bio(*parked);
  }
}

}  // namespace blkstack
