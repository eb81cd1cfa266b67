// Page: one 4 KiB page of a disk's page cache (the kernel's struct folio
// of order 0) and the bits of its state.
//
// The state is one atomic word, waited on with std::atomic::wait (the
// kernel's page wait queues): a waiter sleeps in the futex of the word
// itself, so nothing is allocated to wait and a bit cleared with no one
// waiting costs no system call.
//
// Ownership: the index holds one reference; each lookup takes another and
// drops it with put(). Eviction removes a page only when it holds the
// index's reference alone, is clean, unlocked and not under write-back,
// and does so under its index shard's writer lock, which every lookup
// takes to get a reference: so no one can reach a page being freed.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace blkstack::pagecache {

inline constexpr uint64_t kPageSize = 4096;
inline constexpr unsigned kPageShift = 12;

enum PageBit : uint32_t {
  kLocked = 1u << 0,      // PG_locked: being read in, written, or taken out
  kUptodate = 1u << 1,    // PG_uptodate: holds the device's (or newer) data
  kDirty = 1u << 2,       // PG_dirty: newer than the device
  kWriteback = 1u << 3,   // PG_writeback: on its way to the device
  kReferenced = 1u << 4,  // PG_referenced: hit since the LRU last looked
  kActive = 1u << 5,      // PG_active: on the active list
  kReadahead = 1u << 6,   // PG_readahead: a hit here starts the next window
  kError = 1u << 7,       // PG_error: its read failed
};

struct Page {
  // Pages come from a PagePool, which owns them and their data.
  Page() = default;
  Page(const Page&) = delete;
  Page& operator=(const Page&) = delete;

  // Back to a new page's state, keeping `data`, for a page taken from the
  // pool's free list (no one else can reach it there).
  void reset() {
    index = 0;
    flags.store(0, std::memory_order_relaxed);
    refs.store(1, std::memory_order_relaxed);
    lru_prev = lru_next = nullptr;
    on_lru = false;
    dirty_prev = dirty_next = nullptr;
    dirtied_ns = 0;
  }

  // kPageSize bytes, apart from the rest: an aligned array inside would
  // round the struct up to two pages. Set once by the pool.
  std::byte* data = nullptr;
  uint64_t index = 0;  // offset / kPageSize
  std::atomic<uint32_t> flags{0};
  std::atomic<uint32_t> refs{1};  // the index's
  // The LRU lists (under Lru's lock) and the dirty list (under the dirty
  // lock), intrusive: moving a page allocates nothing.
  Page* lru_prev = nullptr;
  Page* lru_next = nullptr;
  bool on_lru = false;
  Page* dirty_prev = nullptr;
  Page* dirty_next = nullptr;
  uint64_t dirtied_ns = 0;  // when it became dirty (under the dirty lock)

  bool test(uint32_t bits) const {
    return (flags.load(std::memory_order_acquire) & bits) != 0;
  }
  void set(uint32_t bits) { flags.fetch_or(bits, std::memory_order_acq_rel); }
  // Clears `bits` and wakes whoever waits for the word.
  void clear_and_wake(uint32_t bits) {
    flags.fetch_and(~bits, std::memory_order_acq_rel);
    flags.notify_all();
  }
  bool trylock() {
    return (flags.fetch_or(kLocked, std::memory_order_acquire) & kLocked) == 0;
  }
  void lock() {
    for (;;) {
      uint32_t f = flags.load(std::memory_order_relaxed);
      if ((f & kLocked) == 0) {
        if (flags.compare_exchange_weak(f, f | kLocked, std::memory_order_acquire))
          return;
        continue;
      }
      flags.wait(f, std::memory_order_relaxed);
    }
  }
  void unlock() { clear_and_wake(kLocked); }
  // Sleeps until none of `bits` is set.
  void wait_clear(uint32_t bits) const {
    for (;;) {
      uint32_t f = flags.load(std::memory_order_acquire);
      if ((f & bits) == 0) return;
      flags.wait(f, std::memory_order_acquire);
    }
  }
  void get() { refs.fetch_add(1, std::memory_order_acq_rel); }
  void put() { refs.fetch_sub(1, std::memory_order_acq_rel); }
};

}  // namespace blkstack::pagecache
