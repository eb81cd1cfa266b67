#include "blkstack/block_handle.h"

#include <chrono>
#include <thread>

#include "blkstack/completion.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/submit.h"

namespace blkstack {
namespace {

// The largest bio the synchronous calls build: 1 GiB, a multiple of any
// logical block size.
constexpr uint64_t kMaxBioBytes = uint64_t{1} << 30;

void wake_waiter(Bio& bio) { static_cast<Completion*>(bio.context())->complete(); }

}  // namespace

BlockHandle::BlockHandle(std::shared_ptr<Disk> disk) : bdev_(Disk::whole(disk)) {}

BlockHandle::BlockHandle(std::shared_ptr<BlockDevice> bdev) : bdev_(std::move(bdev)) {}

BlockHandle BlockHandle::open(const DiskRegistry& registry, std::string_view name) {
  return BlockHandle(registry.open(name, OpenMode::kWrite));
}

Disk& BlockHandle::disk() const { return bdev_->disk(); }

BlockHandle BlockHandle::buffered(std::shared_ptr<Disk> disk) {
  BlockHandle h(std::move(disk));
  h.cache_ = &PageCache::attach(h.disk());
  h.opener_ = h.cache_->open();
  return h;
}

uint64_t BlockHandle::size() const { return bdev_->size_bytes(); }

Status BlockHandle::submit_and_wait(Op op, void* buf, uint64_t len, uint64_t offset,
                                    BioFlag flags) {
  if ((offset & (kSectorSize - 1)) != 0) return Status::kInvalid;
  Completion done;
  Bio bio;
  Segment seg(buf, static_cast<uint32_t>(len));
  if (op_has_data(op)) {
    bio.init(bdev_.get(), op, offset >> kSectorShift, {&seg, 1}, wake_waiter, &done);
  } else {
    bio.init_nodata(bdev_.get(), op, offset >> kSectorShift, static_cast<uint32_t>(len),
                    wake_waiter, &done);
  }
  bio.set_flags(flags);
  const BioStart start = bio.start();
  submit_bio(bio);
  done.wait("synchronous I/O");
  // Busy is back-pressure, not an error (DESIGN.md invariant 3): wait as
  // the asynchronous paths do (resubmit_busy) and send it again.
  while (status_is_busy(bio.status())) {
    done.reinit();
    std::this_thread::sleep_for(std::chrono::nanoseconds(BioDriver::kBusyRetryNs));
    bio.restart(start);
    submit_bio(bio);
    done.wait("synchronous I/O");
  }
  return bio.status();
}

Status BlockHandle::in_pieces(Op op, std::byte* buf, uint64_t len, uint64_t offset,
                              BioFlag flags) {
  // A request cut into several bios is checked whole first: a piece refused
  // after earlier ones were done would leave it half done (invariant 6).
  if (len > kMaxBioBytes) {
    const uint64_t lbs = bdev_->disk().limits().logical_block_size;
    if (((offset | len) & (lbs - 1)) != 0) return Status::kInvalid;
    if (offset > size() || len > size() - offset) return Status::kOutOfRange;
  }
  while (len > 0) {
    uint64_t n = std::min(len, kMaxBioBytes);
    if (Status s = submit_and_wait(op, buf, n, offset, flags); s != Status::kOk) return s;
    if (buf) buf += n;
    offset += n;
    len -= n;
  }
  return Status::kOk;
}

Status BlockHandle::pread(void* buf, size_t len, uint64_t offset, BioFlag flags) {
  if (cache_ && flags == BioFlag::kNone) return cache_->read(buf, len, offset);
  return in_pieces(Op::kRead, static_cast<std::byte*>(buf), len, offset, flags);
}

Status BlockHandle::pwrite(const void* buf, size_t len, uint64_t offset, BioFlag flags) {
  if (cache_ && flags == BioFlag::kNone) return cache_->write(buf, len, offset);
  // Writes only read the buffer; segments are not const so that one type
  // serves both directions.
  return in_pieces(Op::kWrite, static_cast<std::byte*>(const_cast<void*>(buf)), len,
                   offset, flags);
}

Status BlockHandle::flush() {
  if (cache_) return cache_->fsync(opener_);
  return submit_and_wait(Op::kFlush, nullptr, 0, 0, BioFlag::kNone);
}

Status BlockHandle::discard(uint64_t offset, uint64_t len) {
  return in_pieces(Op::kDiscard, nullptr, len, offset, BioFlag::kNone);
}

Status BlockHandle::write_zeroes(uint64_t offset, uint64_t len) {
  return in_pieces(Op::kWriteZeroes, nullptr, len, offset, BioFlag::kNone);
}

}  // namespace blkstack
