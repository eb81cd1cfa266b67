#include "mm/ram_store.h"

#include <fmt/format.h>
#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <new>
#include <utility>

#include "blkstack/device_spec.h"  // format_size
#include "blkstack/error.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

namespace blkstack {

struct RamStore::Chunk {
  explicit Chunk(std::byte* mem) : base(mem) {}
  ~Chunk() { ::munmap(base, kChunkBytes); }

  bool present(uint64_t page) const {
    return bits[page / 64].load(std::memory_order_acquire) >> (page % 64) & 1;
  }
  // Sets or clears the bits of pages [first, last]; returns how many changed.
  uint64_t mark(uint64_t first, uint64_t last, bool set) {
    uint64_t changed = 0;
    for (uint64_t w = first / 64; w <= last / 64; ++w) {
      const uint64_t lo = w == first / 64 ? first % 64 : 0;
      const uint64_t hi = w == last / 64 ? last % 64 : 63;
      const uint64_t mask = (~uint64_t{0} >> (63 - hi)) & (~uint64_t{0} << lo);
      const uint64_t old = set ? bits[w].fetch_or(mask, std::memory_order_acq_rel)
                               : bits[w].fetch_and(~mask, std::memory_order_acq_rel);
      changed += std::popcount(set ? mask & ~old : mask & old);
    }
    return changed;
  }
  // Whether every page of [first, last] holds data.
  bool all_present(uint64_t first, uint64_t last) const {
    for (uint64_t w = first / 64; w <= last / 64; ++w) {
      const uint64_t lo = w == first / 64 ? first % 64 : 0;
      const uint64_t hi = w == last / 64 ? last % 64 : 63;
      const uint64_t mask = (~uint64_t{0} >> (63 - hi)) & (~uint64_t{0} << lo);
      if ((bits[w].load(std::memory_order_acquire) & mask) != mask) return false;
    }
    return true;
  }
  bool full() const { return all_present(0, kPagesPerChunk - 1); }
  bool empty() const {
    for (const auto& w : bits)
      if (w.load(std::memory_order_acquire) != 0) return false;
    return true;
  }

  std::byte* const base;  // kChunkBytes, mapped
  std::atomic<uint64_t> bits[kPagesPerChunk / 64] = {};
  // Mapped for a huge page, until a discard makes a hole in it.
  std::atomic<bool> huge{false};
  // Emptied by a discard: the next write decides its pages afresh.
  std::atomic<bool> undecided{false};
  Chunk* next_made = nullptr;  // the list of every chunk made (made_)
};

// Calls fn(chunk, offset in chunk, bytes, present) for each run of pages of
// the range that are alike (all holding data, or none), chunk by chunk;
// chunk is null where none was ever written. Stops when fn returns false.
template <class Fn>
void RamStore::for_each_run(uint64_t off, uint64_t len, Fn&& fn) const {
  while (len > 0) {
    const uint64_t in_chunk = off % kChunkBytes;
    uint64_t n = std::min(len, kChunkBytes - in_chunk);
    Chunk* chunk = slot(off / kChunkBytes).load(std::memory_order_acquire);
    bool present = false;
    if (chunk) {
      uint64_t page = in_chunk / kPageSize;
      present = chunk->present(page);
      uint64_t run = (page + 1) * kPageSize - in_chunk;
      while (run < n && chunk->present(++page) == present) run += kPageSize;
      n = std::min(n, run);
    }
    if (!fn(chunk, in_chunk, n, present)) return;
    off += n;
    len -= n;
  }
}

namespace {

// Whether the kernel gives transparent huge pages to memory advised for
// them. Where it does not, no chunk is marked huge (which would skip the
// populate of its 4 KiB pages) or counted as such.
bool transparent_huge_pages() {
  static const bool available = [] {
    std::FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "re");
    if (!f) return false;
    char mode[128] = {};
    const bool read = std::fgets(mode, sizeof mode, f) != nullptr;
    std::fclose(f);
    return read && std::strstr(mode, "[never]") == nullptr;
  }();
  return available;
}

}  // namespace

RamStore::RamStore(uint64_t bytes, HugePages huge_pages)
    // Rounded up without overflow: sizes near 2^64 must not wrap to 0.
    : bytes_(bytes),
      huge_pages_(transparent_huge_pages() ? huge_pages : HugePages::kNever),
      nr_chunks_(bytes / kChunkBytes + (bytes % kChunkBytes != 0)),
      table_bytes_(nr_chunks_ * sizeof(Chunk*)) {
  // Anonymous memory reads as zeroes (null pointers) without being
  // written: a sparse 1 PiB store does not zero-fill a 4 GiB table.
  void* table = ::mmap(nullptr, table_bytes_, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (table == MAP_FAILED) {
    throw Error(fmt::format("cannot map the chunk table of a {} RAM store ({}): {}",
                            format_size(bytes), format_size(table_bytes_),
                            std::strerror(errno)));
  }
  chunks_ = static_cast<Chunk**>(table);
}

RamStore::~RamStore() {
  // Through the list, not the table: walking a 1 PiB store's table would
  // fault in 4 GiB of it to find a few chunks.
  for (Chunk* c = made_.load(std::memory_order_acquire); c != nullptr;)
    delete std::exchange(c, c->next_made);
  ::munmap(chunks_, table_bytes_);
}

void RamStore::read(uint64_t off, std::byte* dst, uint64_t len) const {
  for_each_run(off, len, [&](Chunk* chunk, uint64_t in_chunk, uint64_t n, bool present) {
    if (present)
      std::memcpy(dst, chunk->base + in_chunk, n);
    else
      std::memset(dst, 0, n);
    dst += n;
    return true;
  });
}

bool RamStore::write(uint64_t off, const std::byte* src, uint64_t len) {
  while (len > 0) {
    const uint64_t in_chunk = off % kChunkBytes;
    const uint64_t n = std::min(len, kChunkBytes - in_chunk);
    Chunk* chunk = chunk_for_write(off / kChunkBytes, in_chunk, n);
    if (!chunk) return false;
    const uint64_t first = in_chunk / kPageSize;
    const uint64_t last = (in_chunk + n - 1) / kPageSize;
    // Missing 4 KiB pages, more than one: made in one call, not a fault
    // each (~2x faster on the development VM). Best effort: where it
    // fails, the copy faults them in as usual.
    if (last > first && !chunk->huge.load(std::memory_order_relaxed) &&
        !chunk->all_present(first, last)) {
      ::madvise(chunk->base + first * kPageSize, (last - first + 1) * kPageSize,
                MADV_POPULATE_WRITE);
    }
    std::memcpy(chunk->base + in_chunk, src, n);
    const uint64_t added = chunk->mark(first, last, true);
    allocated_pages_.fetch_add(static_cast<int64_t>(added), std::memory_order_relaxed);
    off += n;
    src += n;
    len -= n;
  }
  return true;
}

void RamStore::discard(uint64_t off, uint64_t len) {
  for_each_run(off, len, [&](Chunk* chunk, uint64_t in_chunk, uint64_t n, bool present) {
    if (!present) return true;
    const uint64_t end = in_chunk + n;
    const uint64_t whole_first = (in_chunk + kPageSize - 1) / kPageSize;
    const uint64_t whole_end = end / kPageSize;
    if (whole_first >= whole_end) {  // inside one page
      std::memset(chunk->base + in_chunk, 0, n);
      return true;
    }
    std::memset(chunk->base + in_chunk, 0, whole_first * kPageSize - in_chunk);
    std::memset(chunk->base + whole_end * kPageSize, 0, end - whole_end * kPageSize);
    const uint64_t removed = chunk->mark(whole_first, whole_end - 1, false);
    allocated_pages_.fetch_sub(static_cast<int64_t>(removed), std::memory_order_relaxed);
    // Holes in a huge chunk: 4 KiB pages from now on, or khugepaged would
    // fill the holes again to make the huge page whole.
    if (removed != 0 && chunk->huge.load(std::memory_order_relaxed) &&
        chunk->huge.exchange(false, std::memory_order_relaxed))
      ::madvise(chunk->base, kChunkBytes, MADV_NOHUGEPAGE);
    std::byte* const whole = chunk->base + whole_first * kPageSize;
    const size_t whole_bytes = (whole_end - whole_first) * kPageSize;
    // Discard is also write-zeroes: if the pages cannot be dropped (locked
    // memory), they must still read as zeroes.
    if (::madvise(whole, whole_bytes, MADV_DONTNEED) != 0)
      std::memset(whole, 0, whole_bytes);
    // Emptied (a whole-device discard, mkfs on a used disk, fstrim): a
    // stream refilling it may have a huge page again. (A write racing in
    // between may leave it with 4 KiB pages advised huge, which khugepaged
    // could collapse once; its data is safe either way.)
    if (removed != 0 && chunk->empty())
      chunk->undecided.store(true, std::memory_order_relaxed);
    return true;
  });
}

bool RamStore::page_present(uint64_t page) const {
  const Chunk* chunk = slot(page / kPagesPerChunk).load(std::memory_order_acquire);
  return chunk && chunk->present(page % kPagesPerChunk);
}

RamStore::Run RamStore::extent_at(uint64_t off, uint64_t max_len) const {
  // Pages exist only inside the store: clamp, so a range past the end
  // neither reads past the chunk table nor walks 2^52 pages.
  if (off >= bytes_) return {0, false};
  max_len = std::min(max_len, bytes_ - off);
  uint64_t page = off / kPageSize;
  const bool present = page_present(page);
  uint64_t len = std::min(max_len, (page + 1) * kPageSize - off);
  while (len < max_len && page_present(++page) == present)
    len = std::min(max_len, len + kPageSize);
  return {len, present};
}

uint64_t RamStore::allocated_bytes() const {
  // A discard may count a page off before the write that set its bit
  // counted it on: the sum is exact once both are done.
  const int64_t pages = allocated_pages_.load(std::memory_order_relaxed);
  return pages > 0 ? static_cast<uint64_t>(pages) * kPageSize : 0;
}

// Whether chunk c, about to take its first write of `len` bytes at
// `in_chunk`, is worth a huge page (see ram_store.h).
bool RamStore::wants_huge_page(uint64_t c, uint64_t in_chunk, uint64_t len) const {
  switch (huge_pages_) {
    case HugePages::kAlways:
      return true;
    case HugePages::kNever:
      return false;
    case HugePages::kAuto:
      break;
  }
  // A short last chunk holds only its part inside the store: at most that
  // much is ever written to it.
  if (bytes_ - c * kChunkBytes < kChunkBytes / 2) return false;
  if (len >= kChunkBytes / 2) return true;
  if (in_chunk != 0 || c == 0) return false;
  const Chunk* before = slot(c - 1).load(std::memory_order_acquire);
  return before && before->full();
}

RamStore::Chunk* RamStore::chunk_for_write(uint64_t c, uint64_t in_chunk, uint64_t len) {
  Chunk* chunk = slot(c).load(std::memory_order_acquire);
  if (chunk) {
    if (chunk->undecided.load(std::memory_order_relaxed) &&
        chunk->undecided.exchange(false, std::memory_order_relaxed) &&
        wants_huge_page(c, in_chunk, len)) {
      ::madvise(chunk->base, kChunkBytes, MADV_HUGEPAGE);
      chunk->huge.store(true, std::memory_order_relaxed);
      huge_chunks_.fetch_add(1, std::memory_order_relaxed);
    }
    return chunk;
  }
  void* mem = map_aligned_chunk();
  if (!mem) return nullptr;
  const bool huge = wants_huge_page(c, in_chunk, len);
  // Advice before the first touch: the first fault then maps either one
  // huge page or one 4 KiB page (not a huge page, even where
  // transparent_hugepage is "always").
  ::madvise(mem, kChunkBytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  Chunk* fresh = new (std::nothrow) Chunk(static_cast<std::byte*>(mem));
  if (!fresh) {
    ::munmap(mem, kChunkBytes);
    return nullptr;
  }
  fresh->huge.store(huge, std::memory_order_relaxed);
  if (slot(c).compare_exchange_strong(chunk, fresh, std::memory_order_acq_rel)) {
    if (huge) huge_chunks_.fetch_add(1, std::memory_order_relaxed);
    fresh->next_made = made_.load(std::memory_order_relaxed);
    while (!made_.compare_exchange_weak(fresh->next_made, fresh,
                                        std::memory_order_release)) {
    }
    return fresh;
  }
  delete fresh;  // another writer won the race; chunk is its
  return chunk;
}

// kChunkBytes at a kChunkBytes boundary, where a huge page can back it:
// twice that is mapped and the ends trimmed. Null if mapping failed.
void* RamStore::map_aligned_chunk() {
  const auto map = [](size_t bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  };
  // Recent kernels align mappings of this size by themselves.
  void* mem = map(kChunkBytes);
  if (!mem || reinterpret_cast<uintptr_t>(mem) % kChunkBytes == 0) return mem;
  ::munmap(mem, kChunkBytes);
  void* raw = map(2 * kChunkBytes);
  if (!raw) return nullptr;
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kChunkBytes - 1) & ~uintptr_t{kChunkBytes - 1};
  if (aligned > start) ::munmap(raw, aligned - start);
  const uintptr_t end = aligned + kChunkBytes;
  if (start + 2 * kChunkBytes > end)
    ::munmap(reinterpret_cast<void*>(end), start + 2 * kChunkBytes - end);
  return reinterpret_cast<void*>(aligned);
}

}  // namespace blkstack
