#include "blkstack/plug.h"

#include <algorithm>

#include "blkstack/driver/queue.h"
#include "core/bio_gate.h"
#include "core/clock.h"
#include "core/wait.h"
#include "queue/software_queue.h"
#include "queue/tag_set.h"

namespace blkstack {
namespace {
thread_local Plug* tls_plug = nullptr;

// A thread about to wait flushes its plug (core/wait.h), as schedule()
// calls blk_flush_plug(). Registered from here, when the plug code is
// linked in: no plug can exist before (its constructor is in this file).
[[maybe_unused]] const bool plug_flush_registered =
    (set_plug_flush_hook(&Plug::flush_current), true);
}  // namespace

Plug::Plug() : active_(tls_plug == nullptr) {
  if (active_) tls_plug = this;
}

Plug::~Plug() {
  if (!active_) return;
  flush();
  tls_plug = nullptr;
}

uint64_t Plug::time_ns() {
  Plug* p = tls_plug;
  if (!p) return now_ns();
  if (p->time_ns_ == 0) p->time_ns_ = now_ns();
  return p->time_ns_;
}

int Plug::take_tag(Tags& tags) {
  if (tag_tags_ != &tags) {
    return_tags();
    tag_tags_ = &tags;
  }
  if (nr_tags_ == 0) {
    // Small queues get no batch: a plug must not sit on a large share of
    // the tags while other threads wait.
    const unsigned batch = std::min(kTagBatch, tags.depth / 8);
    if (batch <= 1) return tags.alloc.try_get();
    nr_tags_ = tags.alloc.try_get_batch(tags_, batch);
    if (nr_tags_ == 0) return -1;
    std::reverse(tags_, tags_ + nr_tags_);  // hand them out lowest first
  }
  return tags_[--nr_tags_];
}

void Plug::return_tags() {
  if (nr_tags_ == 0) return;
  Tags& tags = *tag_tags_;
  while (nr_tags_ > 0) tags.alloc.put(tags_[--nr_tags_]);
  Queue::wake_tag_waiters_if_any(tags);
}

Plug* Plug::current() { return tls_plug; }

void Plug::flush_current() {
  if (Plug* p = tls_plug) p->flush();
}

void Plug::add(Request& rq) {
  list_.push_back(&rq);
  if (++count_ >= kMaxRequests) flush();
}

void Plug::add_bio(Bio& bio) {
  bios_.push_back(&bio);
  if (++count_ >= kMaxRequests) flush();
}

Request* Plug::last_for(const Queue& q) const {
  for (Request* rq = list_.back(); rq != nullptr; rq = rq->prev) {
    if (&rq->queue() == &q) return rq;
  }
  return nullptr;
}

void Plug::flush() {
  // Taken out first: issuing may complete requests and submit more bios
  // from completion callbacks on this thread, which must not see the list
  // half-issued.
  RequestList all;
  all.splice_back(list_);
  BioList bios;
  bios.splice_back(bios_);
  count_ = 0;
  return_tags();
  while (!all.empty()) {
    Queue& q = all.front()->queue();
    RequestList mine =
        all.extract_if([&](const Request& rq) { return &rq.queue() == &q; });
    q.issue_plugged(mine);
  }
  // From a submit path, they go when this thread's submit loop is free.
  if (!bios.empty()) submit_plugged_bios(bios);
  time_ns_ = 0;  // the next batch reads the clock again
}

}  // namespace blkstack
