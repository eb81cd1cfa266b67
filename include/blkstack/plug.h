// Plug: per-thread batching of requests (the kernel's blk_plug).
//
//   {
//     Plug plug;           // blk_start_plug
//     submit_bio(a); submit_bio(b); ...
//   }                      // blk_finish_plug: the batch goes out
//
// While a plug is active on a thread, requests made by that thread are held
// in the plug, where later bios can merge into them, and leave as one batch
// when the plug is finished, when 32 have gathered, or when the thread is
// about to wait (Completion::wait and the other blocking waits flush it
// first, as schedule() does in Linux). Plugs nest: only the outermost one
// collects.
#pragma once

#include "blkstack/request.h"

namespace blkstack {

class Queue;

class Plug {
 public:
  static constexpr unsigned kMaxRequests = 32;  // BLK_MAX_REQUEST_COUNT

  Plug();
  ~Plug();
  Plug(const Plug&) = delete;
  Plug& operator=(const Plug&) = delete;

  // Sends everything held to the drivers now.
  void flush();
  unsigned count() const { return count_; }

  // The plug collecting on this thread, or nullptr.
  static Plug* current();
  // Flushes the current plug, if any; called before a thread waits.
  static void flush_current();

 private:
  friend class Queue;
  void add(Request& rq);
  // The most recent request held for `q`, for merging.
  Request* last_for(const Queue& q) const;

  bool active_;  // false for a nested plug
  RequestList list_;
  unsigned count_ = 0;
};

}  // namespace blkstack
