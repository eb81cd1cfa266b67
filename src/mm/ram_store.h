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
// Huge pages: a chunk is mapped at a 2 MiB boundary but kept out of
// transparent huge pages while it has holes: one 4 KiB write must not take
// 2 MiB. Once every page of a chunk holds data it costs nothing more as one
// huge page, and copies from it miss the TLB far less (1 MiB reads through
// `blkstack serve` ~25% faster, 4 KiB random reads ~7% less CPU on the
// development VM). So a write that fills a chunk, or a discard that makes
// a hole in a full one, hands the chunk to a thread of the store's own,
// the only one that changes its advice: a full chunk is collapsed into a
// huge page (MADV_COLLAPSE, Linux 6.1; a huge page allocation and a 2 MiB
// copy are not for a submitting thread), one with holes is advised out of
// huge pages again so that khugepaged does not refill them. Data is safe
// throughout: the kernel unmaps the chunk while it copies, so a write
// meanwhile waits and lands in the huge page. What a discard in a huge
// chunk frees comes back when the kernel splits the page (under memory
// pressure), and a collapse stalls I/O to that one chunk for its copy.
// With huge_pages every chunk asks for huge pages from its first write
// instead (where /sys/kernel/mm/transparent_hugepage allows): 2 MiB per
// chunk touched.
//
// Every range passed in must lie inside [0, size()); any number of threads
// may call read, write, discard and the queries at once.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>

namespace blkstack {

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
  RamStore(uint64_t bytes, bool huge_pages);
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
  // Chunks the advice thread moved into huge pages, over the store's life.
  uint64_t collapsed_chunks() const { return collapsed_.load(std::memory_order_relaxed); }

 private:
  struct Chunk;

  template <class Fn>
  void for_each_run(uint64_t off, uint64_t len, Fn&& fn) const;
  Chunk* chunk_for_write(uint64_t c);
  static void* map_aligned_chunk();
  void queue_advice(Chunk* chunk);
  void advice_loop();
  void advise(Chunk* chunk);
  // Chunk c's entry in the table, null until its first write.
  std::atomic_ref<Chunk*> slot(uint64_t c) const {
    return std::atomic_ref<Chunk*>(chunks_[c]);
  }

  uint64_t bytes_;
  bool huge_pages_;
  uint64_t nr_chunks_;
  size_t table_bytes_;
  Chunk** chunks_;                     // nr_chunks_ entries, mapped (see the constructor)
  std::atomic<Chunk*> made_{nullptr};  // every chunk in the table, to free them
  std::atomic<int64_t> allocated_pages_{0};

  // The advice thread (started by the first full chunk) and its queue.
  std::mutex advice_mu_;
  std::condition_variable advice_cv_;
  std::deque<Chunk*> advice_todo_;
  bool advice_stop_ = false;
  std::thread advice_thread_;
  std::atomic<uint64_t> collapsed_{0};  // chunks moved into huge pages
};

}  // namespace blkstack
