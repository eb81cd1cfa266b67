// Tags: the scalable tag allocator (the kernel's sbitmap), and TagSet, the
// requests and tags shared by the hardware queues of one or more request
// queues (blk_mq_tag_set).
//
// A tag is a bit in a bitmap spread over several cache lines; each thread
// starts looking where it last succeeded (a per-thread hint), so threads
// mostly touch different words and no lock is taken. When no tag is free
// the queue parks the bio on the Tags' wait list, and the next tag freed is
// handed to the oldest parked bio (see Queue): a full queue makes I/O wait,
// never fail.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/driver/request.h"
#include "blkstack/driver/request_driver.h"

namespace blkstack {

class TagAllocator {
 public:
  explicit TagAllocator(unsigned depth);
  ~TagAllocator();

  // A free tag, or -1.
  int try_get();
  // A free tag below `limit` (the sbitmap's shallow allocation, as a
  // scheduler's limit_depth asks), or -1.
  int try_get_below(unsigned limit);
  // Up to `max` free tags from one word with one atomic operation; returns
  // how many were written to `out`.
  unsigned try_get_batch(int* out, unsigned max);
  void put(int tag);
  // Frees the tags of `mask` in word `word` at once.
  void put_word(unsigned word, uint64_t mask);
  unsigned word_of(int tag) const { return static_cast<unsigned>(tag) / bits_per_word_; }
  uint64_t bit_of(int tag) const {
    return uint64_t{1} << (static_cast<unsigned>(tag) % bits_per_word_);
  }
  unsigned depth() const { return depth_; }
  unsigned in_use() const;  // for tests and statistics

 private:
  struct alignas(64) Word {
    std::atomic<uint64_t> bits{0};
  };
  unsigned depth_;
  unsigned bits_per_word_;
  unsigned nr_words_;
  std::unique_ptr<Word[]> words_;
  std::unique_ptr<std::atomic<unsigned>[]> hints_;  // per thread slot
};

class HwQueue;

// One tag space with its requests and the bios waiting for a tag. A
// driver tag space (the TagSet's) or, with an I/O scheduler, a hardware
// queue's scheduler tag space (blk_mq_hw_ctx.sched_tags: `sched` true,
// requests carrying their index as internal_tag and `priv_size` bytes of
// scheduler-private space each).
struct Tags {
  Tags(unsigned depth, size_t cmd_size, size_t priv_size = 0, bool sched = false);
  ~Tags();

  // The scheduler-private area of request `i` (nullptr if priv_size is 0).
  std::byte* priv_at(int i) const {
    return privs ? privs.get() + priv_stride * static_cast<size_t>(i) : nullptr;
  }

  TagAllocator alloc;
  unsigned depth;
  std::unique_ptr<Request[]> requests;  // indexed by tag
  std::unique_ptr<std::byte[]> pdus;
  size_t priv_stride = 0;
  std::unique_ptr<std::byte[]> privs;
  // Bios waiting for a tag, oldest first, and (driver tags only) hardware
  // queues waiting for a driver tag to dispatch a scheduler's request,
  // linked through HwQueue::next_tag_waiter_. Touched only when tags run
  // out; nr_waiters counts both.
  std::mutex wait_lock;
  BioList waiters;
  HwQueue* hctx_waiters = nullptr;
  std::atomic<uint32_t> nr_waiters{0};
};

// Frees tags in batches while a thread completes a batch of requests
// (the kernel's io_comp_batch): one atomic operation per bitmap word
// instead of one per request. Tags stay taken until the batch ends.
class TagFreeBatch {
 public:
  TagFreeBatch();
  ~TagFreeBatch();  // frees what it holds
  TagFreeBatch(const TagFreeBatch&) = delete;
  TagFreeBatch& operator=(const TagFreeBatch&) = delete;

  // The batch active on this thread, or nullptr.
  static TagFreeBatch* current();
  // Holds `tag` of `tags` for freeing at the end; false if it cannot (a
  // different tag space or word: the caller frees it at once).
  bool hold(Tags& tags, int tag);
  // Frees everything held now; returns the Tags (for waking waiters).
  Tags* release();

 private:
  bool active_;
  Tags* tags_ = nullptr;
  unsigned word_ = 0;
  uint64_t mask_ = 0;
};

class TagSet {
 public:
  TagSet(const TagSetConfig& config, RequestDriver& driver);
  ~TagSet();
  TagSet(const TagSet&) = delete;
  TagSet& operator=(const TagSet&) = delete;

  const TagSetConfig& config() const { return config_; }
  RequestDriver& driver() const { return driver_; }
  // The tag space of hardware queue `hctx` (the same one for all with
  // shared tags).
  Tags& tags(unsigned hctx) { return *tags_[config_.shared_tags ? 0 : hctx]; }
  unsigned nr_tag_spaces() const { return static_cast<unsigned>(tags_.size()); }
  Tags& tag_space(unsigned i) { return *tags_[i]; }

 private:
  TagSetConfig config_;
  RequestDriver& driver_;
  std::vector<std::unique_ptr<Tags>> tags_;
};

}  // namespace blkstack
