// BlockHandle: a small synchronous API over a block device (a whole disk
// or a partition), for tools and tests.
//
// Each call builds bios on its own stack, submits them and waits for their
// completion; one the device completes busy (status_is_busy) goes again
// after BioDriver::kBusyRetryNs, never returned as an error. Large
// requests are cut into bios of at most 1 GiB. Calls are thread-safe (each
// waits for its own bios). Do not call these from inside a driver's submit
// path: that wait could never end, and the submit-context check aborts
// with a message naming the device instead.
//
// A handle made by buffered() reads and writes through the disk's page
// cache instead (page_cache.h), at any byte offset, and its flush() is an
// fsync: write-back of what is dirty, a device flush, and the write-back
// errors since this handle was opened (errseq), each reported once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "blkstack/bio.h"
#include "blkstack/page_cache.h"
#include "blkstack/status.h"

namespace blkstack {

class BlockDevice;
class Disk;
class DiskRegistry;

class BlockHandle {
 public:
  explicit BlockHandle(std::shared_ptr<Disk> disk);  // the whole disk
  // `bdev` should keep its disk alive (DiskRegistry::open does).
  explicit BlockHandle(std::shared_ptr<BlockDevice> bdev);
  // Opens the device called `name` in `registry` — a disk, or a partition
  // ("ram0p1") — for writing (unless it is read-only); throws Error if
  // there is none, and BusyError naming the holder if a stacked disk holds
  // it (DiskRegistry::open).
  static BlockHandle open(const DiskRegistry& registry, std::string_view name);
  // A handle through the disk's page cache (attached if it has none).
  static BlockHandle buffered(std::shared_ptr<Disk> disk);
  bool is_buffered() const { return cache_ != nullptr; }

  BlockDevice& device() const { return *bdev_; }
  Disk& disk() const;     // the device's disk
  uint64_t size() const;  // bytes, of the device

  // Offsets and lengths are in bytes and must be multiples of the logical
  // block size (any bytes when buffered, unless `flags` are given: those
  // go to the device directly). Return the first error, or kOk.
  Status pread(void* buf, size_t len, uint64_t offset, BioFlag flags = BioFlag::kNone);
  Status pwrite(const void* buf, size_t len, uint64_t offset,
                BioFlag flags = BioFlag::kNone);
  Status flush();
  Status discard(uint64_t offset, uint64_t len);
  Status write_zeroes(uint64_t offset, uint64_t len);

  // One bio, submitted and waited for: for ops without data pass buf=nullptr.
  Status submit_and_wait(Op op, void* buf, uint64_t len, uint64_t offset, BioFlag flags);

 private:
  Status in_pieces(Op op, std::byte* buf, uint64_t len, uint64_t offset, BioFlag flags);

  std::shared_ptr<BlockDevice> bdev_;
  PageCache* cache_ = nullptr;  // buffered(): the whole disk's cache
  PageCache::Opener opener_;
};

}  // namespace blkstack
