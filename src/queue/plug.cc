#include "blkstack/plug.h"

#include "blkstack/queue.h"

namespace blkstack {
namespace {
thread_local Plug* tls_plug = nullptr;
}  // namespace

Plug::Plug() : active_(tls_plug == nullptr) {
  if (active_) tls_plug = this;
}

Plug::~Plug() {
  if (!active_) return;
  flush();
  tls_plug = nullptr;
}

Plug* Plug::current() { return tls_plug; }

void Plug::flush_current() {
  if (Plug* p = tls_plug) p->flush();
}

void Plug::add(Request& rq) {
  list_.push_back(&rq);
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
  count_ = 0;
  while (!all.empty()) {
    Queue& q = all.front()->queue();
    RequestList mine;
    for (Request* rq = all.front(); rq != nullptr;) {
      Request* next = rq->next;
      if (&rq->queue() == &q) {
        all.remove(rq);
        mine.push_back(rq);
      }
      rq = next;
    }
    q.issue_plugged(mine);
  }
}

}  // namespace blkstack
