// Mempool<T>: a pool of objects with a guaranteed reserve (the kernel's
// mempool_t).
//
// The pool keeps at least `min_nr` elements allocated at all times, so that
// I/O can always make progress: alloc(Wait::kMayWait) never fails; when the
// pool is exhausted it waits until another element is freed. Freed elements
// go to the longest waiter first (FIFO), then refill the reserve. With a cap
// (`max_nr`), the pool never holds more than that many elements in total,
// which is how a fixed budget of memory is modelled; without one it grows on
// demand and keeps what it grew (no heap allocation per I/O once warm).
//
// THE RULE (seed 004): never wait on a pool while holding an element of that
// same pool that is not yet on its way back. If every element is held by
// threads that each wait for one more, nobody frees and all wait forever.
// Either allocate everything you need from different pools, or submit the
// first element's I/O (so its completion frees it) before allocating the
// next. Mark an element as "on its way back" with disown() — submit_bio()
// does that for bios — and debug builds abort with a clear message when a
// thread that still owns an element of a pool waits on it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <utility>

namespace blkstack {

enum class Wait : uint8_t { kNoWait, kMayWait };

// The type-independent part: storage, reserve, FIFO waiters, debug ownership.
class MempoolBase {
 public:
  MempoolBase(std::string name, size_t elem_size, size_t elem_align, size_t min_nr,
              size_t max_nr);
  ~MempoolBase();
  MempoolBase(const MempoolBase&) = delete;
  MempoolBase& operator=(const MempoolBase&) = delete;

  // Raw storage for one element, or nullptr (only with kNoWait).
  void* alloc_raw(Wait wait);
  void free_raw(void* p);
  // Declares that `p`, allocated by this thread, is now owned by the I/O it
  // was submitted with (its completion will free it). Debug bookkeeping only.
  void disown(void* p);

  const std::string& name() const { return name_; }
  size_t min_nr() const { return min_nr_; }
  size_t max_nr() const { return max_nr_; }
  size_t total() const;      // elements allocated from the heap, ever held
  size_t available() const;  // idle elements in the pool
  size_t waiters() const;    // threads waiting in alloc

  // Fault injection: while on, growing the pool from the heap fails as it
  // does when the system is out of memory, so the reserve and what is in
  // use are all there is (tests of the back-pressure path).
  void simulate_out_of_memory(bool on);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string name_;
  size_t min_nr_;
  size_t max_nr_;
};

template <class T>
class Mempool {
 public:
  // max_nr == 0 means "no cap": grow on demand, keep what was grown.
  explicit Mempool(std::string name, size_t min_nr, size_t max_nr = 0)
      : base_(std::move(name), sizeof(T), alignof(T), min_nr, max_nr) {}

  // Constructs a T in pooled storage. Never null with Wait::kMayWait.
  template <class... Args>
  T* alloc(Wait wait, Args&&... args) {
    void* p = base_.alloc_raw(wait);
    return p ? new (p) T(std::forward<Args>(args)...) : nullptr;
  }
  void free(T* obj) {
    obj->~T();
    base_.free_raw(obj);
  }
  void disown(T* obj) { base_.disown(obj); }

  MempoolBase& base() { return base_; }
  const MempoolBase& base() const { return base_; }

 private:
  MempoolBase base_;
};

}  // namespace blkstack
