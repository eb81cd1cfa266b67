// RamStore: sparse memory addressed by byte offset, for the ram driver
// (the kernel's brd) and for a page cache to keep its pages in.
//
// The store is cut into 2 MiB chunks. A chunk's memory is an anonymous
// mapping made on the first write into it, so the kernel provides a page
// only where data is written, and discard hands whole pages back with
// MADV_DONTNEED; a bitmap per chunk says which 4 KiB pages hold data, and
// pages outside it read as zeroes without being touched. Pages of one
// chunk are contiguous and page-aligned: a 4 KiB read is one aligned copy
// from one page, a 1 MiB read one copy of 256 pages.
//
// No lock on the I/O path: a mapping lives as long as the store, so an I/O
// never touches freed memory. A discard racing a read or write of the same
// page can only leave, byte by byte, the old data, the new data or zeroes,
// which is what the block layer already allows for requests that are not
// ordered.
//
// Huge pages. A chunk is mapped at a 2 MiB boundary, so one transparent
// huge page can back it, and whether it does is decided by its first write
// (and again by the first write after a discard empties it), never while
// it holds data: nothing moves a chunk's pages, so no I/O waits behind
// huge-page work done for another. Under HugePages::kAuto a chunk gets a
// huge page when it is about to be filled: its first write covers at least
// half of it (so it never holds more than twice the memory its data
// needs), or starts at its first page while the chunk before it is full (a
// sequential stream crossing into it); a short last chunk, only if half of
// it lies inside the store. Every other chunk gets 4 KiB pages: one 4 KiB
// write costs 4 KiB. A discard that makes a hole in a huge chunk gives it
// back to 4 KiB pages (the freed memory returns when the kernel splits the
// page), so khugepaged never fills its holes again.
//
// Page faults are the cost of a first write. On the development VM (a PVM
// guest, where every page-table entry is shadowed by the host) a 4 KiB
// fault costs 12-18 us, so 4 KiB pages fill at 200-330 MiB/s; a write
// reaching several missing 4 KiB pages has them populated in one call
// (~7 us a page). A huge page needs one entry but 2 MiB of zeroing: ~0.3
// ms where the host backs the memory (5-8 GiB/s), 4-17 ms where the host
// took it back while the machine idled (docs/bench.md, "Cold devices").
// Every range passed in must lie inside [0, size()); any number of threads
// may call read, write, discard and the queries at once.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace blkstack {

// Which chunks a RamStore backs with 2 MiB transparent huge pages (where
// /sys/kernel/mm/transparent_hugepage allows them at all).
enum class HugePages : uint8_t {
  kAuto,    // the chunks a first write is about to fill (see above)
  kAlways,  // every chunk written: 2 MiB per chunk touched
  kNever,   // none: 4 KiB pages only
};

class RamStore {
 public:
  static constexpr uint64_t kPageSize = 4096;
  static constexpr uint64_t kPagesPerChunk = 512;
  static constexpr uint64_t kChunkBytes = kPageSize * kPagesPerChunk;
  // The largest store: its chunk table (one pointer per 2 MiB) is then
  // 4 GiB of address space, of which only the pages that writes reach are
  // ever backed by memory.
  static constexpr uint64_t kMaxBytes = uint64_t{1} << 50;

  // `bytes` up to kMaxBytes. Throws Error if the chunk table's address
  // space cannot be had.
  RamStore(uint64_t bytes, HugePages huge_pages);
  ~RamStore();
  RamStore(const RamStore&) = delete;
  RamStore& operator=(const RamStore&) = delete;

  uint64_t size() const { return bytes_; }

  // Copies out; holes read as zeroes and stay holes.
  void read(uint64_t off, std::byte* dst, uint64_t len) const;
  // Copies in, mapping chunks as needed; false when memory for a chunk
  // could not be mapped (what was written before that stays written).
  bool write(uint64_t off, const std::byte* src, uint64_t len);
  // Zeroes the range: whole pages are given back (holes again), the parts
  // of pages at its edges are zeroed in place. Discard and write-zeroes.
  void discard(uint64_t off, uint64_t len);

  // Whether page `page` (offset / kPageSize) holds data.
  bool page_present(uint64_t page) const;
  // The run of pages alike (all holding data, or all holes) from `off`,
  // at most `max_len` bytes and never past size(): a length of 0 at or
  // past the end.
  struct Run {
    uint64_t length;
    bool present;
  };
  Run extent_at(uint64_t off, uint64_t max_len) const;
  // Pages holding data, in bytes.
  uint64_t allocated_bytes() const;
  // Chunks mapped for huge pages by their first write, over the store's
  // life (the kernel may still have backed some with 4 KiB pages).
  uint64_t huge_chunks() const { return huge_chunks_.load(std::memory_order_relaxed); }

 private:
  struct Chunk;

  template <class Fn>
  void for_each_run(uint64_t off, uint64_t len, Fn&& fn) const;
  Chunk* chunk_for_write(uint64_t c, uint64_t in_chunk, uint64_t len);
  bool wants_huge_page(uint64_t c, uint64_t in_chunk, uint64_t len) const;
  static void* map_aligned_chunk();
  // Chunk c's entry in the table, null until its first write.
  std::atomic_ref<Chunk*> slot(uint64_t c) const {
    return std::atomic_ref<Chunk*>(chunks_[c]);
  }

  uint64_t bytes_;
  HugePages huge_pages_;
  uint64_t nr_chunks_;
  size_t table_bytes_;
  Chunk** chunks_;                     // nr_chunks_ entries, mapped (see the constructor)
  std::atomic<Chunk*> made_{nullptr};  // every chunk in the table, to free them
  std::atomic<int64_t> allocated_pages_{0};
  std::atomic<uint64_t> huge_chunks_{0};
};

}  // namespace blkstack
