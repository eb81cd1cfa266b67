#include "blkstack/mempool.h"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <unordered_map>

#include "blkstack/debug/submit_context.h"
#include "core/wait.h"

namespace blkstack {
namespace {

// Each element is preceded by a header: the free-list link and, for the
// debug ownership check, the token of the thread that owns it.
struct alignas(std::max_align_t) Header {
  Header* next = nullptr;
  const void* owner = nullptr;
};

thread_local char tls_thread_token;
const void* this_thread_token() { return &tls_thread_token; }

}  // namespace

struct MempoolBase::Impl {
  size_t elem_size;
  size_t elem_offset;  // header rounded up to the element's alignment
  size_t elem_align;

  struct Waiter {
    void* elem = nullptr;
    Waiter* next = nullptr;
    std::condition_variable cv;
  };

  mutable std::mutex mu;
  Header* free_list = nullptr;
  size_t free_count = 0;
  size_t total = 0;
  Waiter* wait_head = nullptr;
  Waiter* wait_tail = nullptr;
  size_t nr_waiters = 0;
  std::atomic<bool> out_of_memory{false};  // simulate_out_of_memory()
#ifdef BLKSTACK_DEBUG_CHECKS
  std::unordered_map<const void*, size_t> held;  // thread token -> elements owned
#endif

  Header* header_of(void* elem) const {
    return reinterpret_cast<Header*>(static_cast<char*>(elem) - elem_offset);
  }
  void* elem_of(Header* h) const { return reinterpret_cast<char*>(h) + elem_offset; }

  Header* heap_alloc() const {
    if (out_of_memory.load(std::memory_order_relaxed)) [[unlikely]]
      return nullptr;
    void* p = ::operator new (elem_offset + elem_size, std::align_val_t{elem_align},
                              std::nothrow);
    return p ? new (p) Header{} : nullptr;
  }
  void heap_free(Header* h) const { ::operator delete (h, std::align_val_t{elem_align}); }

  // An idle element, now owned by the calling thread, or nullptr. Locked.
  void* pop_free() {
    Header* h = free_list;
    if (!h) return nullptr;
    free_list = h->next;
    --free_count;
    void* elem = elem_of(h);
    take_ownership(elem);
    return elem;
  }

  void take_ownership(void* elem) {
    Header* h = header_of(elem);
    h->owner = this_thread_token();
#ifdef BLKSTACK_DEBUG_CHECKS
    ++held[h->owner];
#endif
  }
  void drop_ownership(Header* h) {
#ifdef BLKSTACK_DEBUG_CHECKS
    if (h->owner) {
      auto it = held.find(h->owner);
      if (it != held.end() && --it->second == 0) held.erase(it);
    }
#endif
    h->owner = nullptr;
  }
};

MempoolBase::MempoolBase(std::string name, size_t elem_size, size_t elem_align,
                         size_t min_nr, size_t max_nr)
    : impl_(std::make_unique<Impl>()),
      name_(std::move(name)),
      min_nr_(min_nr),
      max_nr_(max_nr) {
  if (max_nr_ != 0 && max_nr_ < min_nr_) max_nr_ = min_nr_;
  if (elem_align < alignof(Header)) elem_align = alignof(Header);
  impl_->elem_align = elem_align;
  impl_->elem_size = elem_size;
  impl_->elem_offset = (sizeof(Header) + elem_align - 1) / elem_align * elem_align;
  for (size_t i = 0; i < min_nr_; ++i) {
    Header* h = impl_->heap_alloc();
    if (!h) throw std::bad_alloc();
    h->next = impl_->free_list;
    impl_->free_list = h;
    ++impl_->free_count;
    ++impl_->total;
  }
}

MempoolBase::~MempoolBase() {
  Header* h = impl_->free_list;
  while (h) {
    Header* next = h->next;
    impl_->heap_free(h);
    h = next;
  }
}

void* MempoolBase::alloc_raw(Wait wait) {
  Impl& m = *impl_;
  std::unique_lock lock(m.mu);
  if (void* elem = m.pop_free()) return elem;
  if (max_nr_ == 0 || m.total < max_nr_) {
    ++m.total;
    lock.unlock();
    if (Header* h = m.heap_alloc()) {
      void* elem = m.elem_of(h);
      lock.lock();
      m.take_ownership(elem);
      return elem;
    }
    lock.lock();
    --m.total;  // the heap is out of memory: fall back to waiting
  }
  if (wait == Wait::kNoWait) return nullptr;

  lock.unlock();
  prepare_to_wait("allocation from mempool '" + name_ + "'");
  lock.lock();
  if (void* elem = m.pop_free()) return elem;  // the plug flush freed one
#ifdef BLKSTACK_DEBUG_CHECKS
  if (m.held.count(this_thread_token())) {
    debug::fatal("thread waits on mempool '" + name_ +
                 "' while it still owns an element of it that is not submitted; "
                 "this can deadlock (seed 004). Submit (or free) the elements you "
                 "hold before allocating more from the same pool.");
  }
#endif
  Impl::Waiter w;
  if (m.wait_tail)
    m.wait_tail->next = &w;
  else
    m.wait_head = &w;
  m.wait_tail = &w;
  ++m.nr_waiters;
  w.cv.wait(lock, [&] { return w.elem != nullptr; });
  m.take_ownership(w.elem);
  return w.elem;
}

void MempoolBase::free_raw(void* p) {
  if (!p) return;
  Impl& m = *impl_;
  Header* h = m.header_of(p);
  std::lock_guard lock(m.mu);
  m.drop_ownership(h);
  if (Impl::Waiter* w = m.wait_head) {  // the longest waiter gets it directly
    m.wait_head = w->next;
    if (!m.wait_head) m.wait_tail = nullptr;
    --m.nr_waiters;
    w->elem = p;
    w->cv.notify_one();
    return;
  }
  h->next = m.free_list;
  m.free_list = h;
  ++m.free_count;
}

void MempoolBase::disown(void* p) {
  Impl& m = *impl_;
  Header* h = m.header_of(p);
#ifdef BLKSTACK_DEBUG_CHECKS
  if (!h->owner) return;
  std::lock_guard lock(m.mu);
  m.drop_ownership(h);
#else
  h->owner = nullptr;
#endif
}

void MempoolBase::simulate_out_of_memory(bool on) {
  impl_->out_of_memory.store(on, std::memory_order_relaxed);
}

size_t MempoolBase::total() const {
  std::lock_guard lock(impl_->mu);
  return impl_->total;
}
size_t MempoolBase::available() const {
  std::lock_guard lock(impl_->mu);
  return impl_->free_count;
}
size_t MempoolBase::waiters() const {
  std::lock_guard lock(impl_->mu);
  return impl_->nr_waiters;
}

}  // namespace blkstack
