// ram: a sparse RAM disk (the kernel's brd, the sbd sample of seed 003).
//
// The device is cut into 2 MiB chunks. A chunk's memory is an anonymous
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
// With huge=1 every chunk asks for huge pages from its first write instead
// (where /sys/kernel/mm/transparent_hugepage allows): 2 MiB per chunk
// touched.
#include <fmt/format.h>
#include <sys/mman.h>

#include <atomic>
#include <bit>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <utility>

#include "blkstack/disk.h"
#include "blkstack/driver.h"
#include "blkstack/error.h"
#include "blkstack/request.h"
#include "drivers/limit_options.h"
#include "drivers/queue_mode.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25  // Linux 6.1; glibc 2.36's headers lack it
#endif

namespace blkstack {
namespace {

constexpr uint64_t kPageSize = 4096;
constexpr uint64_t kPagesPerChunk = 512;
constexpr uint64_t kChunkBytes = kPageSize * kPagesPerChunk;

// The largest RAM disk: its chunk table (one pointer per 2 MiB) is then
// 4 GiB of address space, of which only the pages that writes reach are
// ever backed by memory.
constexpr uint64_t kMaxRamBytes = uint64_t{1} << 50;

class RamStore {
 public:
  // Throws Error if the chunk table's address space cannot be had.
  RamStore(uint64_t bytes, bool huge_pages)
      // Rounded up without overflow: sizes near 2^64 must not wrap to 0.
      : bytes_(bytes),
        huge_pages_(huge_pages),
        nr_chunks_(bytes / kChunkBytes + (bytes % kChunkBytes != 0)),
        table_bytes_(nr_chunks_ * sizeof(Chunk*)) {
    // Anonymous memory reads as zeroes (null pointers) without being
    // written: a sparse 1 PiB disk does not zero-fill a 4 GiB table.
    void* table = ::mmap(nullptr, table_bytes_, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (table == MAP_FAILED) {
      throw Error(fmt::format("cannot map the chunk table of a {} RAM disk ({}): {}",
                              format_size(bytes), format_size(table_bytes_),
                              std::strerror(errno)));
    }
    chunks_ = static_cast<Chunk**>(table);
  }

  uint64_t size() const { return bytes_; }

  ~RamStore() {
    {
      std::lock_guard lock(advice_mu_);
      advice_stop_ = true;
    }
    advice_cv_.notify_one();
    if (advice_thread_.joinable()) advice_thread_.join();
    // Through the list, not the table: walking a 1 PiB disk's table would
    // fault in 4 GiB of it to find a few chunks.
    for (Chunk* c = made_.load(std::memory_order_acquire); c != nullptr;)
      delete std::exchange(c, c->next_made);
    ::munmap(chunks_, table_bytes_);
  }
  RamStore(const RamStore&) = delete;
  RamStore& operator=(const RamStore&) = delete;

  void read(uint64_t off, std::byte* dst, uint64_t len) const {
    for_each_run(off, len,
                 [&](Chunk* chunk, uint64_t in_chunk, uint64_t n, bool present) {
                   if (present)
                     std::memcpy(dst, chunk->base + in_chunk, n);
                   else
                     std::memset(dst, 0, n);
                   dst += n;
                   return true;
                 });
  }

  // False when memory for a chunk could not be mapped.
  bool write(uint64_t off, const std::byte* src, uint64_t len) {
    while (len > 0) {
      const uint64_t in_chunk = off % kChunkBytes;
      const uint64_t n = std::min(len, kChunkBytes - in_chunk);
      Chunk* chunk = chunk_for_write(off / kChunkBytes);
      if (!chunk) return false;
      std::memcpy(chunk->base + in_chunk, src, n);
      const uint64_t first = in_chunk / kPageSize;
      const uint64_t last = (in_chunk + n - 1) / kPageSize;
      const uint64_t added = chunk->mark(first, last, true);
      allocated_pages_.fetch_add(static_cast<int64_t>(added), std::memory_order_relaxed);
      if (added != 0 && chunk->full()) queue_advice(chunk);
      off += n;
      src += n;
      len -= n;
    }
    return true;
  }

  // Gives whole pages back and zeroes the parts of pages at the edges.
  void discard(uint64_t off, uint64_t len) {
    for_each_run(
        off, len, [&](Chunk* chunk, uint64_t in_chunk, uint64_t n, bool present) {
          if (!present) return true;
          const uint64_t end = in_chunk + n;
          const uint64_t whole_first = (in_chunk + kPageSize - 1) / kPageSize;
          const uint64_t whole_end = end / kPageSize;
          if (whole_first >= whole_end) {  // inside one page
            std::memset(chunk->base + in_chunk, 0, n);
            return true;
          }
          std::memset(chunk->base + in_chunk, 0, whole_first * kPageSize - in_chunk);
          std::memset(chunk->base + whole_end * kPageSize, 0,
                      end - whole_end * kPageSize);
          const uint64_t removed = chunk->mark(whole_first, whole_end - 1, false);
          allocated_pages_.fetch_sub(static_cast<int64_t>(removed),
                                     std::memory_order_relaxed);
          // Holes again: out of huge pages. (The fence pairs with the one
          // in advise(): one of the two sees the other's change.)
          std::atomic_thread_fence(std::memory_order_seq_cst);
          if (removed != 0 && chunk->advised_huge.load()) queue_advice(chunk);
          std::byte* const whole = chunk->base + whole_first * kPageSize;
          const size_t whole_bytes = (whole_end - whole_first) * kPageSize;
          // Discard is also write-zeroes: if the pages cannot be dropped
          // (locked memory), they must still read as zeroes.
          if (::madvise(whole, whole_bytes, MADV_DONTNEED) != 0)
            std::memset(whole, 0, whole_bytes);
          return true;
        });
  }

  bool page_present(uint64_t page) const {
    const Chunk* chunk = slot(page / kPagesPerChunk).load(std::memory_order_acquire);
    return chunk && chunk->present(page % kPagesPerChunk);
  }

  // Chunks the advice thread moved into huge pages, over the store's life.
  uint64_t collapsed_chunks() const { return collapsed_.load(std::memory_order_relaxed); }

  uint64_t allocated_bytes() const {
    // A discard may count a page off before the write that set its bit
    // counted it on: the sum is exact once both are done.
    const int64_t pages = allocated_pages_.load(std::memory_order_relaxed);
    return pages > 0 ? static_cast<uint64_t>(pages) * kPageSize : 0;
  }

 private:
  struct Chunk {
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

    std::byte* const base;  // kChunkBytes, mapped
    std::atomic<uint64_t> bits[kPagesPerChunk / 64] = {};
    bool full() const {
      for (const auto& w : bits)
        if (w.load(std::memory_order_acquire) != ~uint64_t{0}) return false;
      return true;
    }
    // Set by the advice thread only; read by discards.
    std::atomic<bool> advised_huge{false};
    std::atomic<bool> queued{false};  // for the advice thread
    Chunk* next_made = nullptr;       // the list of every chunk made (made_)
  };

  // Calls fn(chunk, offset in chunk, bytes, present) for each run of pages
  // of the range that are alike (all holding data, or none), chunk by
  // chunk; chunk is null where none was ever written. Stops when fn
  // returns false.
  template <class Fn>
  void for_each_run(uint64_t off, uint64_t len, Fn&& fn) const {
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

  Chunk* chunk_for_write(uint64_t c) {
    Chunk* chunk = slot(c).load(std::memory_order_acquire);
    if (chunk) return chunk;
    void* mem = map_aligned_chunk();
    if (!mem) return nullptr;
    ::madvise(mem, kChunkBytes, huge_pages_ ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);  // advice
    Chunk* fresh = new (std::nothrow) Chunk(static_cast<std::byte*>(mem));
    if (!fresh) {
      ::munmap(mem, kChunkBytes);
      return nullptr;
    }
    if (slot(c).compare_exchange_strong(chunk, fresh, std::memory_order_acq_rel)) {
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
  static void* map_aligned_chunk() {
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

  // A chunk that became full, or got a hole while advised huge: to the
  // advice thread, once until it has looked at it.
  void queue_advice(Chunk* chunk) {
    if (huge_pages_ || chunk->queued.exchange(true)) return;
    try {
      {
        std::lock_guard lock(advice_mu_);
        if (advice_stop_) return;
        advice_todo_.push_back(chunk);
        if (!advice_thread_.joinable())
          advice_thread_ = std::thread([this] { advice_loop(); });
      }
      advice_cv_.notify_one();
    } catch (const std::exception&) {
      // No memory or no thread: the chunk stays as it is (advice only).
      // It is not queued again; nothing is wrong with its data.
    }
  }

  void advice_loop() {
    std::unique_lock lock(advice_mu_);
    while (true) {
      advice_cv_.wait(lock, [&] { return advice_stop_ || !advice_todo_.empty(); });
      if (advice_stop_) return;
      Chunk* chunk = advice_todo_.front();
      advice_todo_.pop_front();
      lock.unlock();
      advise(chunk);
      lock.lock();
    }
  }

  // On the advice thread. A chunk that changes while it is looked at is
  // queued again by whoever changed it (queued is cleared first).
  void advise(Chunk* chunk) {
    chunk->queued.store(false, std::memory_order_release);
    if (chunk->full()) {
      if (!chunk->advised_huge.exchange(true))
        ::madvise(chunk->base, kChunkBytes, MADV_HUGEPAGE);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      // Full still? Else a discard made a hole and may not have seen the
      // advice: take it back below. (A discard from now on sees it.)
      if (chunk->full()) {
        // Fails on kernels without it or without a huge page to spare;
        // the advice then lets khugepaged do it later.
        if (::madvise(chunk->base, kChunkBytes, MADV_COLLAPSE) == 0)
          collapsed_.fetch_add(1, std::memory_order_relaxed);
        return;
      }
    }
    if (chunk->advised_huge.exchange(false))
      ::madvise(chunk->base, kChunkBytes, MADV_NOHUGEPAGE);
  }

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

// Moves one bio's data to or from the store.
Status transfer(RamStore& store, const Bio& bio) {
  Status status = Status::kOk;
  // Segments need not be whole sectors: follow the byte position, not
  // each chunk's sector.
  uint64_t pos = bio.sector() << kSectorShift;
  switch (bio.op()) {
    case Op::kRead:
      bio.for_each_chunk([&](const BioChunk& c) {
        store.read(pos, c.ptr, c.len);
        pos += c.len;
      });
      break;
    case Op::kWrite:
      bio.for_each_chunk([&](const BioChunk& c) {
        if (status == Status::kOk && !store.write(pos, c.ptr, c.len))
          status = Status::kResource;
        pos += c.len;
      });
      break;
    case Op::kDiscard:
    case Op::kWriteZeroes:
      store.discard(bio.sector() << kSectorShift, bio.size());
      break;
    case Op::kFlush:
      break;  // RAM has no volatile cache
  }
  return status;
}

// The reports both modes give about the store.
template <class Base>
class RamReports : public Base {
 public:
  explicit RamReports(std::shared_ptr<RamStore> store) : store_(std::move(store)) {}

  std::string describe() const override {
    return fmt::format("allocated={} huge_chunks={}",
                       format_size(store_->allocated_bytes()),
                       store_->collapsed_chunks());
  }

  Extent extent_at(uint64_t offset, uint64_t max_length) const override {
    // Pages exist only inside the device: clamp, so a range past the end
    // neither reads past the chunk table nor walks 2^52 pages.
    const uint64_t size = store_->size();
    if (offset >= size) return {0, false, true};
    max_length = std::min(max_length, size - offset);
    uint64_t page = offset / kPageSize;
    const bool present = store_->page_present(page);
    uint64_t len = std::min(max_length, (page + 1) * kPageSize - offset);
    while (len < max_length && store_->page_present(++page) == present) {
      len = std::min(max_length, len + kPageSize);
    }
    return {len, present, !present};
  }

  uint64_t allocated_bytes() const override { return store_->allocated_bytes(); }

 protected:
  std::shared_ptr<RamStore> store_;
};

class RamBioDriver final : public RamReports<BioDriver> {
 public:
  using RamReports::RamReports;
  void submit(Bio& bio) override { bio.complete(transfer(*store_, bio)); }
};

class RamRequestDriver final : public RamReports<RequestDriver> {
 public:
  using RamReports::RamReports;
  Status queue_rq(HwQueue&, Request& rq, bool) override {
    Status status = Status::kOk;
    rq.for_each_bio([&](const Bio& bio) {
      if (status == Status::kOk) status = transfer(*store_, bio);
    });
    rq.end_request_all(status);
    return Status::kOk;
  }
};

constexpr OptionDef kOptions[] = {
    ranged({"size",
            OptionKind::kSize,
            "64M",
            "capacity in bytes (K, M, G, T, P suffixes)",
            {},
            true},
           kMinBlockSize, kMaxRamBytes),
    ranged({"bs", OptionKind::kSize, "512",
            "logical block size: 512 to 65536, a power of two"},
           kMinBlockSize, kMaxBlockSize),
    ranged({"max_sectors", OptionKind::kUint, "2560", "largest I/O in 512-byte sectors"},
           1, kMaxSectorsLimit),
    {"huge", OptionKind::kBool, "0",
     "back every written chunk with 2 MiB transparent huge pages, not only full "
     "ones (faster large I/O, 2 MiB per chunk touched)"},
};

std::shared_ptr<Disk> create(const DeviceOptions& o, const std::string& name,
                             OpenContext&) {
  QueueLimits lim;
  lim.logical_block_size = block_size_option(o);
  lim.physical_block_size = std::max<uint32_t>(lim.logical_block_size, kPageSize);
  lim.max_sectors = max_sectors_option(o);
  lim.max_hw_sectors = std::max<uint32_t>(lim.max_sectors, lim.max_hw_sectors);
  lim.max_discard_sectors = lim.max_write_zeroes_sectors = UINT32_MAX >> kSectorShift;
  lim.discard_granularity = std::max<uint32_t>(lim.logical_block_size, kPageSize);
  const uint64_t size = device_size_option(o, lim.logical_block_size);
  const QueueMode qm = queue_mode(o);
  auto store = std::make_shared<RamStore>(size, o.flag("huge"));
  return make_disk(name, size >> kSectorShift, lim, qm,
                   qm.mq ? nullptr : std::make_unique<RamBioDriver>(store),
                   qm.mq ? std::make_unique<RamRequestDriver>(store) : nullptr);
}

}  // namespace

extern const DriverType kRamDriver{
    "ram",  "sparse RAM disk: 4 KiB pages on first write, discard frees them (brd)",
    1,      kOptions,
    create, /*queue_modes=*/true};

}  // namespace blkstack
