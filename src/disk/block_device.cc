#include "blkstack/block_device.h"

#include <fmt/format.h>

#include <mutex>

#include "blkstack/disk.h"
#include "blkstack/error.h"
#include "core/clock.h"
#include "disk/claim_lock.h"
#include "disk/io_stats.h"

namespace blkstack {

std::mutex& claim_lock() {
  static std::mutex m;
  return m;
}

BlockDevice::BlockDevice(Disk& disk, std::string name, unsigned partno, uint64_t start,
                         uint64_t length, bool read_only)
    : disk_(&disk),
      name_(std::move(name)),
      partno_(partno),
      start_(start),
      length_(length),
      read_only_(read_only),
      stats_(partno ? std::make_unique<IoStats>() : nullptr) {}

BlockDevice::~BlockDevice() = default;

uint64_t BlockDevice::capacity() const { return partno_ ? length_ : disk_->capacity(); }

uint64_t BlockDevice::size_bytes() const { return capacity() << kSectorShift; }

bool BlockDevice::read_only() const {
  if (!partno_) return disk_->read_only();
  return read_only_.load(std::memory_order_relaxed) || disk_->read_only();
}

void BlockDevice::set_read_only(bool ro) {
  if (!partno_) {
    disk_->set_read_only(ro);
  } else {
    read_only_.store(ro, std::memory_order_relaxed);
  }
}

unsigned BlockDevice::major() const { return disk_->major(); }

unsigned BlockDevice::minor() const { return disk_->minor() + partno_; }

DiskStats BlockDevice::stats() const {
  if (!partno_) return disk_->stats();
  DiskStats out = stats_->sum();
  out.in_flight = stats_->in_flight_counted();
  return out;
}

std::string BlockDevice::diskstats_line() const {
  return format_diskstats_line(major(), minor(), name_, stats());
}

Status BlockDevice::remap_to_disk(Bio& bio) {
  // A partition a rescan replaced is gone, as its /dev node would be.
  if (removed_.load(std::memory_order_relaxed)) [[unlikely]]
    return Status::kOffline;
  if (bio.op() != Op::kFlush) {
    if (op_is_write(bio.op()) && read_only()) return Status::kReadOnly;
    if (bio.sector() > length_ || bio.sectors() > length_ - bio.sector())
      return Status::kOutOfRange;
  }
  bio.set_dev(disk_->part0(), bio.op() == Op::kFlush ? 0 : bio.sector() + start_);
  bio.acct_part = this;
  return Status::kOk;
}

void BlockDevice::account_start(uint64_t now_ns) {
  stats_->update_io_ticks(now_ns, false, [this] { return stats_->in_flight_counted(); });
  stats_->count_started();
}

void BlockDevice::account_done(Bio& bio, uint64_t now_ns) {
  stats_->update_io_ticks(now_ns, true, [] { return uint64_t{0}; });
  stats_->count_done(bio.op(), bio.acct_sectors,
                     now_ns > bio.start_ns ? now_ns - bio.start_ns : 0);
}

// --- claims ---------------------------------------------------------------

const std::string* BlockDevice::holder_locked() const {
  if (!holder_.empty()) return &holder_;
  const BlockDevice& whole = disk_->part0();
  if (partno_) return whole.holder_.empty() ? nullptr : &whole.holder_;
  // The whole disk overlaps every partition.
  for (const auto& p : disk_->partitions()) {
    if (!p->holder_.empty()) return &p->holder_;
  }
  return nullptr;
}

void BlockDevice::claim(std::string_view holder) {
  std::lock_guard lock(claim_lock());
  if (disk_->claims_closed_ || disk_->dying()) {
    throw Error(fmt::format("cannot stack {} on {}: {} is being removed", holder, name_,
                            disk_->name()));
  }
  if (const std::string* h = holder_locked(); h && *h != holder) {
    throw BusyError(
        fmt::format("cannot stack {} on {}: {} is held by {}", holder, name_, name_, *h));
  }
  // Counted: two claims of one holder (two creates of one name racing,
  // the loser letting go) must not free the device on the first release.
  if (holder_claims_++ == 0) holder_ = holder;
}

void BlockDevice::release(std::string_view holder) {
  std::lock_guard lock(claim_lock());
  if (holder_claims_ != 0 && holder_ == holder && --holder_claims_ == 0) holder_.clear();
}

std::string BlockDevice::holder() const {
  std::lock_guard lock(claim_lock());
  const std::string* h = holder_locked();
  return h ? *h : std::string();
}

void BlockDevice::check_open_for_write() const {
  std::lock_guard lock(claim_lock());
  if (const std::string* h = holder_locked()) {
    throw BusyError(
        fmt::format("cannot open {} for writing: {} is held by {}", name_, name_, *h));
  }
}

void Disk::close_claims() {
  std::lock_guard lock(claim_lock());
  // Any device of the disk held: the whole disk's view covers them all.
  if (const std::string* h = part0_.holder_locked()) {
    throw BusyError(fmt::format("cannot remove {}: {} is held by {}", name_, name_, *h));
  }
  claims_closed_ = true;
}

Claim::Claim(std::shared_ptr<BlockDevice> bdev, std::string holder)
    : bdev_(std::move(bdev)), holder_(std::move(holder)) {
  bdev_->claim(holder_);
}

Claim& Claim::operator=(Claim&& o) noexcept {
  if (this != &o) {
    reset();
    bdev_ = std::move(o.bdev_);
    holder_ = std::move(o.holder_);
  }
  return *this;
}

void Claim::reset() {
  if (bdev_) bdev_->release(holder_);
  bdev_.reset();
}

}  // namespace blkstack
