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
// collects. Bios for a bio-based driver that takes batches
// (BioQueueConfig::batches) are held the same way and reach it as one
// batch per disk, the last one marked.
#pragma once

#include <cstdint>

#include "blkstack/bio.h"
#include "blkstack/driver/request.h"

namespace blkstack {

class BioGate;
class Queue;
struct Tags;

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

  // The time the block layer stamps requests with (blk_time_get_ns): while
  // a plug is active on the thread, one clock read serves the whole batch,
  // until the plug is flushed.
  static uint64_t time_ns();

 private:
  friend class Queue;
  friend class BioGate;
  static constexpr unsigned kTagBatch = 8;

  void add(Request& rq);
  void add_bio(Bio& bio);
  // The most recent request held for `q`, for merging.
  Request* last_for(const Queue& q) const;
  // A tag from the plug's batch for `tags` (taking a new batch when empty),
  // or -1. Tags are taken several at a time with one atomic operation, as
  // the kernel's plug request cache does; unused ones go back at flush.
  int take_tag(Tags& tags);
  void return_tags();

  bool active_;  // false for a nested plug
  RequestList list_;
  BioList bios_;  // for gated bio-based disks, in submission order
  unsigned count_ = 0;
  uint64_t time_ns_ = 0;  // 0: not read yet
  Tags* tag_tags_ = nullptr;
  unsigned nr_tags_ = 0;
  int tags_[kTagBatch];
};

}  // namespace blkstack
