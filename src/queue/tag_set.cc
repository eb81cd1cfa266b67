#include "queue/tag_set.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>

#include "blkstack/driver/queue.h"
#include "blkstack/error.h"
#include "core/percpu.h"

namespace blkstack {

TagAllocator::TagAllocator(unsigned depth) : depth_(depth) {
  // Spread the tags over several words (cache lines), as sbitmap does, so
  // that threads starting from different hints rarely share a word.
  bits_per_word_ = depth_ >= 256 ? 64 : depth_ >= 32 ? 8 : depth_ >= 4 ? 4 : 1;
  nr_words_ = (depth_ + bits_per_word_ - 1) / bits_per_word_;
  words_.reset(new Word[nr_words_]);
  // Bits past the depth in the last word are permanently taken.
  unsigned tail = depth_ % bits_per_word_;
  if (tail != 0)
    words_[nr_words_ - 1].bits.store(~uint64_t{0} << tail, std::memory_order_relaxed);
  for (unsigned w = 0; w < nr_words_; ++w) {
    if (bits_per_word_ < 64) {
      uint64_t cur = words_[w].bits.load(std::memory_order_relaxed);
      words_[w].bits.store(cur | (~uint64_t{0} << bits_per_word_),
                           std::memory_order_relaxed);
    }
  }
  hints_.reset(new std::atomic<unsigned>[kSlotCount]);
  for (unsigned i = 0; i < kSlotCount; ++i) {
    hints_[i].store((i * depth_ / kSlotCount) % depth_, std::memory_order_relaxed);
  }
}

TagAllocator::~TagAllocator() = default;

int TagAllocator::try_get() {
  std::atomic<unsigned>& hint = hints_[this_slot().index];
  const unsigned start = hint.load(std::memory_order_relaxed);
  unsigned w = start / bits_per_word_;
  for (unsigned n = 0; n < nr_words_; ++n, w = (w + 1 == nr_words_ ? 0 : w + 1)) {
    std::atomic<uint64_t>& word = words_[w].bits;
    uint64_t cur = word.load(std::memory_order_relaxed);
    while (~cur != 0) {
      unsigned bit = static_cast<unsigned>(std::countr_one(cur));
      uint64_t mask = uint64_t{1} << bit;
      uint64_t prev = word.fetch_or(mask, std::memory_order_acquire);
      if ((prev & mask) == 0) {
        unsigned tag = w * bits_per_word_ + bit;
        hint.store(tag + 1 >= depth_ ? 0 : tag + 1, std::memory_order_relaxed);
        return static_cast<int>(tag);
      }
      cur = prev | mask;
    }
  }
  return -1;
}

int TagAllocator::try_get_below(unsigned limit) {
  if (limit >= depth_) return try_get();
  // Rare enough (requests a scheduler limits) to scan from the first word:
  // no hint, the low tags are the only ones allowed.
  for (unsigned w = 0; w * bits_per_word_ < limit; ++w) {
    const unsigned first = w * bits_per_word_;
    const unsigned allowed = std::min(bits_per_word_, limit - first);
    const uint64_t usable = allowed >= 64 ? ~uint64_t{0} : (uint64_t{1} << allowed) - 1;
    std::atomic<uint64_t>& word = words_[w].bits;
    uint64_t cur = word.load(std::memory_order_relaxed);
    while ((~cur & usable) != 0) {
      const unsigned bit = static_cast<unsigned>(std::countr_zero(~cur & usable));
      const uint64_t mask = uint64_t{1} << bit;
      const uint64_t prev = word.fetch_or(mask, std::memory_order_acquire);
      if ((prev & mask) == 0) return static_cast<int>(first + bit);
      cur = prev | mask;
    }
  }
  return -1;
}

unsigned TagAllocator::try_get_batch(int* out, unsigned max) {
  std::atomic<unsigned>& hint = hints_[this_slot().index];
  unsigned w = hint.load(std::memory_order_relaxed) / bits_per_word_;
  for (unsigned n = 0; n < nr_words_; ++n, w = (w + 1 == nr_words_ ? 0 : w + 1)) {
    std::atomic<uint64_t>& word = words_[w].bits;
    uint64_t cur = word.load(std::memory_order_relaxed);
    while (~cur != 0) {
      uint64_t want = 0;
      uint64_t free_bits = ~cur;
      for (unsigned i = 0; i < max && free_bits; ++i) {
        want |= free_bits & -free_bits;  // lowest free bit
        free_bits &= free_bits - 1;
      }
      if (word.compare_exchange_weak(cur, cur | want, std::memory_order_acquire)) {
        unsigned got = 0;
        while (want) {
          unsigned bit = static_cast<unsigned>(std::countr_zero(want));
          want &= want - 1;
          out[got++] = static_cast<int>(w * bits_per_word_ + bit);
        }
        unsigned next = static_cast<unsigned>(out[got - 1]) + 1;
        hint.store(next >= depth_ ? 0 : next, std::memory_order_relaxed);
        return got;
      }
    }
  }
  return 0;
}

void TagAllocator::put_word(unsigned word, uint64_t mask) {
  // seq_cst: pairs with the waiter count a freer reads next (see Queue).
  words_[word].bits.fetch_and(~mask, std::memory_order_seq_cst);
}

void TagAllocator::put(int tag) {
  const unsigned t = static_cast<unsigned>(tag);
  // seq_cst: pairs with the waiter count a freer reads next (see Queue).
  words_[t / bits_per_word_].bits.fetch_and(~(uint64_t{1} << (t % bits_per_word_)),
                                            std::memory_order_seq_cst);
  // The next allocation on this thread starts here: recently freed tags
  // (and their requests) are warm in this thread's cache.
  hints_[this_slot().index].store(t, std::memory_order_relaxed);
}

unsigned TagAllocator::in_use() const {
  unsigned n = 0;
  for (unsigned w = 0; w < nr_words_; ++w) {
    uint64_t bits = words_[w].bits.load(std::memory_order_relaxed);
    if (bits_per_word_ < 64) bits &= ~(~uint64_t{0} << bits_per_word_);
    if (w == nr_words_ - 1 && depth_ % bits_per_word_ != 0) {
      bits &= ~(~uint64_t{0} << (depth_ % bits_per_word_));
    }
    n += static_cast<unsigned>(std::popcount(bits));
  }
  return n;
}

Tags::Tags(unsigned d, size_t cmd_size, size_t priv_size, bool sched)
    : alloc(d), depth(d), requests(new Request[d]) {
  const size_t pdu_size = (cmd_size + 15) / 16 * 16;
  if (pdu_size) pdus.reset(new std::byte[pdu_size * d]());
  // Made once with the tags, so a scheduler allocates nothing per I/O.
  // operator new aligns to 16 (__STDCPP_DEFAULT_NEW_ALIGNMENT__), as pdus.
  priv_stride = (priv_size + 15) / 16 * 16;
  if (priv_stride) privs.reset(new std::byte[priv_stride * d]());
  for (unsigned t = 0; t < d; ++t) {
    // A scheduler request gets its driver tag only at dispatch.
    requests[t].tag_ = sched ? -1 : static_cast<int>(t);
    requests[t].internal_tag_ = sched ? static_cast<int>(t) : -1;
    requests[t].pdu_ = pdu_size ? pdus.get() + pdu_size * t : nullptr;
  }
}

Tags::~Tags() = default;

namespace {
thread_local TagFreeBatch* tls_free_batch = nullptr;
}  // namespace

TagFreeBatch::TagFreeBatch() : active_(tls_free_batch == nullptr) {
  if (active_) tls_free_batch = this;
}

TagFreeBatch::~TagFreeBatch() {
  if (!active_) return;
  tls_free_batch = nullptr;
  if (Tags* tags = release()) Queue::wake_tag_waiters_if_any(*tags);
}

TagFreeBatch* TagFreeBatch::current() { return tls_free_batch; }

bool TagFreeBatch::hold(Tags& tags, int tag) {
  const unsigned word = tags.alloc.word_of(tag);
  if (mask_ != 0 && (tags_ != &tags || word_ != word)) return false;
  tags_ = &tags;
  word_ = word;
  mask_ |= tags.alloc.bit_of(tag);
  return true;
}

Tags* TagFreeBatch::release() {
  if (mask_ == 0) return nullptr;
  tags_->alloc.put_word(word_, mask_);
  mask_ = 0;
  return tags_;
}

TagSet::TagSet(const TagSetConfig& config, RequestDriver& driver)
    : config_(config), driver_(driver) {
  if (config_.nr_hw_queues == 0) config_.nr_hw_queues = 1;
  if (config_.queue_depth == 0) config_.queue_depth = 1;
  if (config_.timeout_ns < TagSetConfig::kMinTimeoutNs ||
      config_.timeout_ns > TagSetConfig::kMaxTimeoutNs) {
    throw Error(
        fmt::format("request timeout {} ns is out of range: expected from 1ms to "
                    "4294967295ms (about 49 days)",
                    config_.timeout_ns));
  }
  unsigned spaces = config_.shared_tags ? 1 : config_.nr_queues();
  for (unsigned i = 0; i < spaces; ++i) {
    tags_.push_back(std::make_unique<Tags>(config_.queue_depth, config_.cmd_size));
    for (unsigned t = 0; t < config_.queue_depth; ++t)
      driver_.init_request(tags_[i]->requests[t]);
  }
}

TagSet::~TagSet() = default;

}  // namespace blkstack
