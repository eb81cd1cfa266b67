// ram: a sparse RAM disk (the kernel's brd, the sbd sample of seed 003).
//
// Memory is held in 4 KiB pages allocated on first write; a page never
// written reads as zeroes; discard and write-zeroes free whole pages (and
// zero the partial ones at the edges). Pages are grouped into 2 MiB chunks,
// each with a reader/writer lock: reads and writes share it, freeing a page
// takes it exclusively, so a page is never freed under a reader.
#include <fmt/format.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <shared_mutex>

#include "blkstack/disk.h"
#include "blkstack/driver.h"
#include "blkstack/error.h"
#include "blkstack/request.h"
#include "drivers/limit_options.h"
#include "drivers/queue_mode.h"

namespace blkstack {
namespace {

constexpr uint64_t kPageSize = 4096;
constexpr uint64_t kPagesPerChunk = 512;
constexpr uint64_t kChunkBytes = kPageSize * kPagesPerChunk;

class RamStore {
 public:
  explicit RamStore(uint64_t bytes)
      // Rounded up without overflow: sizes near 2^64 must not wrap to 0.
      : bytes_(bytes),
        nr_chunks_(bytes / kChunkBytes + (bytes % kChunkBytes != 0)),
        chunks_(new std::atomic<Chunk*>[nr_chunks_]()) {}

  uint64_t size() const { return bytes_; }

  ~RamStore() {
    for (uint64_t c = 0; c < nr_chunks_; ++c) {
      Chunk* chunk = chunks_[c].load(std::memory_order_relaxed);
      if (!chunk) continue;
      for (auto& p : chunk->pages) delete[] p.load(std::memory_order_relaxed);
      delete chunk;
    }
  }

  void read(uint64_t off, std::byte* dst, uint64_t len) const {
    for_each_page(off, len, [&](uint64_t page, uint64_t in_page, uint64_t n) {
      Chunk* chunk = chunks_[page / kPagesPerChunk].load(std::memory_order_acquire);
      if (chunk) {
        std::shared_lock lock(chunk->lock);
        if (std::byte* p = chunk->pages[page % kPagesPerChunk].load(std::memory_order_acquire)) {
          std::memcpy(dst, p + in_page, n);
          dst += n;
          return true;
        }
      }
      std::memset(dst, 0, n);
      dst += n;
      return true;
    });
  }

  // False when a page could not be allocated.
  bool write(uint64_t off, const std::byte* src, uint64_t len) {
    return for_each_page(off, len, [&](uint64_t page, uint64_t in_page, uint64_t n) {
      Chunk* chunk = chunk_for_write(page / kPagesPerChunk);
      if (!chunk) return false;
      std::shared_lock lock(chunk->lock);
      std::atomic<std::byte*>& slot = chunk->pages[page % kPagesPerChunk];
      std::byte* p = slot.load(std::memory_order_acquire);
      if (!p) {
        std::byte* fresh = new (std::nothrow) std::byte[kPageSize]();
        if (!fresh) return false;
        if (slot.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) {
          p = fresh;
          allocated_pages_.fetch_add(1, std::memory_order_relaxed);
        } else {
          delete[] fresh;  // another writer won the race; p is its page
        }
      }
      std::memcpy(p + in_page, src, n);
      src += n;
      return true;
    });
  }

  // Frees the pages fully inside the range and zeroes the edges.
  void discard(uint64_t off, uint64_t len) {
    for_each_page(off, len, [&](uint64_t page, uint64_t in_page, uint64_t n) {
      Chunk* chunk = chunks_[page / kPagesPerChunk].load(std::memory_order_acquire);
      if (!chunk) return true;
      std::atomic<std::byte*>& slot = chunk->pages[page % kPagesPerChunk];
      if (n == kPageSize) {
        std::unique_lock lock(chunk->lock);
        if (std::byte* p = slot.exchange(nullptr, std::memory_order_acq_rel)) {
          delete[] p;
          allocated_pages_.fetch_sub(1, std::memory_order_relaxed);
        }
      } else {
        std::shared_lock lock(chunk->lock);
        if (std::byte* p = slot.load(std::memory_order_acquire)) std::memset(p + in_page, 0, n);
      }
      return true;
    });
  }

  bool page_present(uint64_t page) const {
    Chunk* chunk = chunks_[page / kPagesPerChunk].load(std::memory_order_acquire);
    return chunk && chunk->pages[page % kPagesPerChunk].load(std::memory_order_acquire);
  }

  uint64_t allocated_bytes() const {
    return allocated_pages_.load(std::memory_order_relaxed) * kPageSize;
  }

 private:
  struct Chunk {
    std::shared_mutex lock;
    std::atomic<std::byte*> pages[kPagesPerChunk] = {};
  };

  // Calls fn(page, offset in page, bytes) for each page piece of the range;
  // stops early and returns false when fn does.
  template <class Fn>
  static bool for_each_page(uint64_t off, uint64_t len, Fn&& fn) {
    while (len > 0) {
      uint64_t page = off / kPageSize;
      uint64_t in_page = off % kPageSize;
      uint64_t n = std::min(len, kPageSize - in_page);
      if (!fn(page, in_page, n)) return false;
      off += n;
      len -= n;
    }
    return true;
  }

  Chunk* chunk_for_write(uint64_t c) {
    Chunk* chunk = chunks_[c].load(std::memory_order_acquire);
    if (chunk) return chunk;
    Chunk* fresh = new (std::nothrow) Chunk();
    if (!fresh) return nullptr;
    if (chunks_[c].compare_exchange_strong(chunk, fresh, std::memory_order_acq_rel)) return fresh;
    delete fresh;
    return chunk;
  }

  uint64_t bytes_;
  uint64_t nr_chunks_;
  std::unique_ptr<std::atomic<Chunk*>[]> chunks_;
  std::atomic<uint64_t> allocated_pages_{0};
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
    return fmt::format("allocated={}", format_size(store_->allocated_bytes()));
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
    {"size", OptionKind::kSize, "64M", "capacity in bytes (K, M, G, T suffixes)", {}, true},
    {"bs", OptionKind::kSize, "512", "logical block size: 512 to 65536, a power of two"},
    {"max_sectors", OptionKind::kUint, "2560", "largest I/O in 512-byte sectors"},
};

std::shared_ptr<Disk> create(const DeviceOptions& o, const std::string& name) {
  QueueLimits lim;
  lim.logical_block_size = block_size_option(o);
  lim.physical_block_size = std::max<uint32_t>(lim.logical_block_size, kPageSize);
  lim.max_sectors = max_sectors_option(o);
  lim.max_hw_sectors = std::max<uint32_t>(lim.max_sectors, lim.max_hw_sectors);
  lim.max_discard_sectors = lim.max_write_zeroes_sectors = UINT32_MAX >> kSectorShift;
  lim.discard_granularity = std::max<uint32_t>(lim.logical_block_size, kPageSize);
  const uint64_t size = device_size_option(o, lim.logical_block_size);
  const QueueMode qm = queue_mode(o);
  auto store = std::make_shared<RamStore>(size);
  return make_disk(name, size >> kSectorShift, lim, qm,
                   qm.mq ? nullptr : std::make_unique<RamBioDriver>(store),
                   qm.mq ? std::make_unique<RamRequestDriver>(store) : nullptr);
}

}  // namespace

extern const DriverType kRamDriver{
    "ram", "sparse RAM disk: 4 KiB pages on first write, discard frees them (brd)", 1,
    kOptions, create, /*queue_modes=*/true};

}  // namespace blkstack
