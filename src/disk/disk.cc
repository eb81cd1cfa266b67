#include "blkstack/disk.h"

#include <fmt/format.h>

#include <algorithm>
#include <thread>

#include "blkstack/debug/submit_context.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/reports.h"
#include "blkstack/error.h"
#include "blkstack/page_cache.h"
#include "blkstack/pow2_histogram.h"
#include "blkstack/submit.h"
#include "core/bio_gate.h"
#include "core/clock.h"
#include "core/percpu.h"
#include "core/percpu_ref.h"
#include "core/wait.h"
#include "disk/io_stats.h"

namespace blkstack {

Disk::Disk(std::string name, uint64_t capacity, QueueLimits limits,
           std::unique_ptr<BioDriver> driver)
    : Disk(std::move(name), capacity, limits, std::move(driver), nullptr) {}

Disk::Disk(std::string name, uint64_t capacity, QueueLimits limits,
           std::unique_ptr<BioDriver> driver, std::unique_ptr<DiskReports> reports)
    : name_(std::move(name)),
      part0_(*this, name_, 0, 0, 0, false),
      capacity_(capacity),
      limits_(limits),
      read_only_(limits.read_only),
      rotational_(limits.rotational),
      usage_(std::make_unique<PercpuRef>()),
      pollers_(std::make_unique<PercpuRef>()),
      stats_(std::make_unique<IoStats>()),
      split_set_(name_ + "-split", kSplitReserve, kSplitMax),
      reports_(reports ? std::move(reports) : std::make_unique<DiskReports>()),
      driver_(std::move(driver)) {
  if (std::string why = limits_.check(); !why.empty()) {
    throw Error(fmt::format("disk '{}': {}", name_, why));
  }
  if (capacity % (limits_.logical_block_size >> kSectorShift) != 0) {
    throw Error(
        fmt::format("disk '{}': size {} bytes is not a multiple of the logical "
                    "block size {}",
                    name_, capacity << kSectorShift, limits_.logical_block_size));
  }
  per_bio_stats_ = !driver_->accounts_requests();
  driver_->disk_ = this;
  gate_ = std::make_unique<BioGate>(*this, *driver_, driver_->bio_queue_config(), gated_);
  driver_->attach(*this);
}

void Disk::set_write_cache(bool on) {
  if (on && !limits_.volatile_write_cache) {
    throw Error(fmt::format("disk '{}' has no volatile write cache to turn on", name_));
  }
  write_cache_on_.store(on, std::memory_order_relaxed);
}

void Disk::set_max_sectors(uint32_t sectors) {
  std::lock_guard lock(limits_lock_);
  const uint32_t lbs_sectors = limits_.logical_block_size >> kSectorShift;
  const uint32_t min = std::max<uint32_t>(lbs_sectors, 8);
  if (sectors < min || sectors > limits_.max_hw_sectors || sectors % lbs_sectors != 0) {
    throw Error(
        fmt::format("disk '{}': max_sectors must be {} to {} sectors, a multiple of {}",
                    name_, min, limits_.max_hw_sectors, lbs_sectors));
  }
  if (sectors == limits_.max_sectors) return;
  freeze();
  limits_.max_sectors = sectors;
  unfreeze();
}

Disk::~Disk() {
  // The cache first: it writes back what is dirty while the disk still
  // takes I/O, and its flusher stops.
  page_cache_.store(nullptr, std::memory_order_release);
  page_cache_owner_.reset();
  if (!dying()) shutdown();
}

void Disk::set_page_cache(std::unique_ptr<PageCache> cache) {
  if (page_cache_owner_) throw Error(fmt::format("{} has a page cache already", name_));
  page_cache_owner_ = std::move(cache);
  page_cache_.store(page_cache_owner_.get(), std::memory_order_release);
}

std::string Disk::describe() const { return reports_->describe(); }

Extent Disk::extent_at(uint64_t offset, uint64_t max_length) const {
  return reports_->extent_at(offset, max_length);
}

uint64_t Disk::allocated_bytes() const { return reports_->allocated_bytes(); }

bool Disk::start_io(Bio& bio) {
  // Ticks before this I/O counts as in flight (the kernel's order in
  // bdev_start_io_acct): the time since the last stamp was busy only if
  // *other* I/O was in flight, otherwise idle time would count as io_ticks.
  uint64_t now = 0;
  if (per_bio_stats_) {
    now = now_ns();
    update_io_ticks(now, false);
  }
  if (!usage_->tryget_live()) [[unlikely]]
    return false;
  bio.acct_disk = this;
  if (per_bio_stats_) {
    bio.acct_sectors = bio.sectors();
    bio.start_ns = now;
  }
  if (BlockDevice* part = bio.acct_part) [[unlikely]] {
    // A partition counts its bios itself, whatever the disk counts.
    if (!per_bio_stats_) {
      now = now_ns();
      bio.acct_sectors = bio.sectors();
      bio.start_ns = now;
    }
    part->account_start(now);
  }
  return true;
}

void Disk::end_io(Bio& bio) {
  bio.acct_disk = nullptr;
  uint64_t now = 0;
  if (per_bio_stats_) {
    now = now_ns();
    account_done(bio.op(), bio.acct_sectors, now - bio.start_ns, now);
  }
  if (BlockDevice* part = bio.acct_part) [[unlikely]] {
    bio.acct_part = nullptr;
    part->account_done(bio, now ? now : now_ns());
  }
  usage_->put();
}

void Disk::account_done(Op op, uint32_t sectors, uint64_t duration_ns, uint64_t now) {
  update_io_ticks(now, true);
  stats_->count_done(op, sectors, duration_ns);
}

void Disk::account_request_done(Op op, uint32_t sectors, uint64_t start_ns,
                                uint64_t now) {
  // Times may come from a plug's cached clock, a little behind: never wrap.
  account_done(op, sectors, now > start_ns ? now - start_ns : 0, now);
}

void Disk::account_merge(Op op) { stats_->count_merge(op); }

void Disk::update_io_ticks(uint64_t now, bool end) {
  stats_->update_io_ticks(now, end, [this] { return in_flight(); });
}

uint64_t Disk::in_flight() const { return usage_->count(); }

DiskStats Disk::stats() const {
  DiskStats out = stats_->sum();
  out.in_flight = in_flight();
  const BioGateStats g = gate_->stats();
  out.bio_depth = gate_->depth();
  out.busy = g.busy;
  out.bios_parked = g.parked;
  out.longest_park_ns = g.longest_park_ns;
  return out;
}

std::string Disk::diskstats_line() const {
  return format_diskstats_line(major_, minor_, name_, stats());
}

namespace {
// The disk whose submit path each exclusively owned thread slot is in.
struct alignas(kCacheLine) SubmitSlot {
  std::atomic<const Disk*> disk{nullptr};
  std::atomic<uint32_t> exits{0};  // outermost guards left, for wait_until_idle
};
SubmitSlot submit_slots[kPercpuSlots];
}  // namespace

Disk::SubmitGuard::SubmitGuard(Disk& disk) : disk_(disk) {
  const SlotRef ref = this_slot();
  slot_ = ref.index;
  if (ref.exclusive) {
    // A plain store: start_io's locked increment, which follows, orders it,
    // so whoever sees that count (and then its drop to zero) sees this
    // marker. A bio that skips start_io (a split remainder) already holds
    // the disk by its own count.
    saved_ = submit_slots[slot_].disk.load(std::memory_order_relaxed);
    submit_slots[slot_].disk.store(&disk, std::memory_order_release);
  } else {
    // Sequentially consistent, like start_io's increment that follows: a
    // waiter that flipped the epoch before our count is waited for only if
    // we count in the half it waits for, so we count ourselves in and then
    // read the epoch again. Unchanged, any later flip (and its wait) comes
    // after our count and sees it; changed, our count may be in the half a
    // later wait skips (we read the epoch, were preempted across a whole
    // wait, and counted in the half new arrivals use): count again. A
    // waiter that flipped before our count gets our start_io refused by
    // the kill it made before flipping.
    saved_ = nullptr;
    for (;;) {
      const uint32_t epoch = disk.shared_epoch_.load(std::memory_order_seq_cst);
      shared_half_ = epoch & 1;
#ifdef BLKSTACK_DEBUG_CHECKS
      if (auto hook = shared_slot_entry_hook.load(std::memory_order_acquire)) hook(disk);
#endif
      disk.shared_submitters_[shared_half_].fetch_add(1, std::memory_order_seq_cst);
      if (disk.shared_epoch_.load(std::memory_order_seq_cst) == epoch) break;
      disk.shared_submitters_[shared_half_].fetch_sub(1, std::memory_order_release);
    }
  }
}

Disk::SubmitGuard::~SubmitGuard() {
  if (slot_ != kSharedSlot) {
    SubmitSlot& s = submit_slots[slot_];
    s.disk.store(saved_, std::memory_order_release);
    if (!saved_)
      s.exits.store(s.exits.load(std::memory_order_relaxed) + 1,
                    std::memory_order_release);
  } else {
    disk_.shared_submitters_[shared_half_].fetch_sub(1, std::memory_order_release);
  }
}

void Disk::wait_until_idle(const std::string& what) {
  usage_->wait_for_zero(what);
  std::lock_guard one_at_a_time(idle_wait_lock_);
  // Slot by slot, and only for the guard each slot is in now: a thread that
  // enters later is refused (dying or frozen) before the driver. Waiting
  // for all slots to be free at one instant starved under a stream of
  // refused submissions (removal under load took tens of seconds).
  for (const SubmitSlot& s : submit_slots) {
    const uint32_t exits = s.exits.load(std::memory_order_acquire);
    while (s.disk.load(std::memory_order_acquire) == this &&
           s.exits.load(std::memory_order_acquire) == exits) {
      std::this_thread::yield();
    }
  }
  // The shared slot: flip the epoch so that arrivals from now on count in
  // the other half, and wait for the half counted before. Any number of
  // threads may keep passing through the shared slot; those counting in
  // the old half are the ones that were in when we flipped.
  const uint32_t old_half = shared_epoch_.fetch_add(1, std::memory_order_seq_cst) & 1;
  while (shared_submitters_[old_half].load(std::memory_order_seq_cst) != 0) {
    std::this_thread::yield();
  }
}

bool Disk::get_poll_ref() { return pollers_->tryget_live(); }

void Disk::put_poll_ref() { pollers_->put(); }

void Disk::refused(Bio& bio) {
  bool would_wait = false;
  {
    std::lock_guard lock(freeze_lock_);
    if (!dying() && freeze_depth_ > 0) {
      // NOWAIT I/O fails rather than wait for the unfreeze, as
      // bio_queue_enter() does with REQ_NOWAIT.
      would_wait = bio.has_flag(BioFlag::kNowait);
      if (!would_wait) {
        frozen_bios_.push_back(&bio);
        return;
      }
    }
  }
  if (would_wait) {
    bio.complete(Status::kAgain);
  } else if (dying()) {
    bio.complete(Status::kOffline);
  } else {
    submit_bio(bio);  // unfrozen meanwhile: try again
  }
}

bool Disk::cancel(Bio& bio) {
  bool found;
  {
    std::lock_guard lock(freeze_lock_);
    found = frozen_bios_.remove(&bio);
  }
  if (!found) found = split_set_.unpark(bio);
  if (!found) found = gate_->cancel(bio);
  if (!found) found = driver_->cancel(bio);
  if (found) bio.complete(Status::kCancelled);
  return found;
}

void Disk::freeze() {
  {
    std::lock_guard lock(freeze_lock_);
    if (freeze_depth_++ == 0) usage_->kill();
  }
  wait_until_idle("freeze of disk '" + name_ + "'");
}

void Disk::unfreeze() {
  BioList parked;
  {
    std::lock_guard lock(freeze_lock_);
    if (freeze_depth_ == 0 || --freeze_depth_ > 0 || dying()) return;
    usage_->resurrect();
    parked.splice_back(frozen_bios_);
  }
  while (Bio* b = parked.pop_front()) submit_bio(*b);
}

void Disk::unfreeze(BioList& first) {
  {
    std::lock_guard lock(freeze_lock_);
    if (!dying()) {
      first.splice_back(frozen_bios_);
      frozen_bios_.splice_back(first);
    }
  }
  while (Bio* b = first.pop_front()) b->complete(Status::kOffline);  // removed
  unfreeze();
}

void Disk::shutdown() {
  // Acknowledged buffered writes reach the device before it stops taking
  // I/O; what cannot is reported (errseq and stderr), never dropped silently.
  if (PageCache* cache = page_cache(); cache != nullptr && !dying()) {
    cache->write_back_for_removal();
  }
  BioList parked;
  {
    std::lock_guard lock(freeze_lock_);
    dying_.store(true, std::memory_order_seq_cst);
    usage_->kill();
    parked.splice_back(frozen_bios_);
  }
  while (Bio* b = parked.pop_front()) b->complete(Status::kOffline);
  gate_->shutdown();  // bios parked for room in the driver fail too
  driver_->shutdown();
  const std::string what = "removal of disk '" + name_ + "'";
  if (driver_->can_poll() && usage_->count() != 0) {
    // Polled I/O completes only when polled, and its owner may never poll
    // again (an IoContext nobody reaps or destroys): removal polls the
    // driver itself while it waits, as a driver reaps its completion
    // queues when its device goes away. The events are posted as usual.
    prepare_to_wait(what);
    while (usage_->count() != 0) {
      if (driver_->poll(0) <= 0)
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  wait_until_idle(what);
  // Pollers last: until the I/O in flight is done, polling may be what
  // completes it. From here on nothing is left to poll, and a poller that
  // completed the last bio may still be inside the driver.
  pollers_->kill();
  pollers_->wait_for_zero(what);
  // Pieces split from this disk's bios and remapped to a lower device
  // (Bio::set_dev) are counted there, not here, yet they come from this
  // disk's split set and return to it when they complete: wait for them,
  // or the set (and the disk) could go first. Only stacked disks ever wait.
  if (split_set_.mempool().available() != split_set_.mempool().total()) {
    prepare_to_wait(what);
    while (split_set_.mempool().available() != split_set_.mempool().total()) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  // Nothing of this disk reaches the devices below any more: let them go.
  std::vector<Claim> holds;
  {
    std::lock_guard lock(parts_lock_);
    holds.swap(holds_);
  }
}

void Disk::hold(Claim claim) {
  std::lock_guard lock(parts_lock_);
  holds_.push_back(std::move(claim));
}

std::string Disk::partition_name(std::string_view disk, unsigned number) {
  // Linux's rule (disk_name()): "sda" + "1", but "nvme0n1" + "p1" after a digit.
  const bool digit = !disk.empty() && disk.back() >= '0' && disk.back() <= '9';
  return fmt::format("{}{}{}", disk, digit ? "p" : "", number);
}

BlockDevice& Disk::add_partition(unsigned number, uint64_t start, uint64_t length,
                                 bool read_only) {
  std::lock_guard lock(parts_lock_);
  return add_partition_locked(number, start, length, read_only);
}

BlockDevice& Disk::add_partition_locked(unsigned number, uint64_t start, uint64_t length,
                                        bool read_only) {
  if (number < 1 || number > kMaxPartitions) {
    throw Error(fmt::format("disk '{}': partition number {} is not from 1 to {}", name_,
                            number, kMaxPartitions));
  }
  const uint64_t lbs_sectors = limits_.logical_block_size >> kSectorShift;
  if (length == 0 || start > capacity() || length > capacity() - start) {
    throw Error(
        fmt::format("disk '{}': partition {} ({} sectors from sector {}) is not "
                    "inside the disk's {} sectors",
                    name_, number, length, start, capacity()));
  }
  if (((start | length) & (lbs_sectors - 1)) != 0) {
    throw Error(
        fmt::format("disk '{}': partition {} is not aligned to the logical block "
                    "size {}",
                    name_, number, limits_.logical_block_size));
  }
  std::string part_name = partition_name(name_, number);
  if (parts_[number - 1]) {
    throw Error(fmt::format("disk '{}': partition {} exists already", name_, number));
  }
  parts_[number - 1] = std::make_shared<BlockDevice>(*this, std::move(part_name), number,
                                                     start, length, read_only);
  return *parts_[number - 1];
}

std::shared_ptr<BlockDevice> Disk::partition(unsigned number) const {
  if (number < 1 || number > kMaxPartitions) return nullptr;
  std::lock_guard lock(parts_lock_);
  return parts_[number - 1];
}

std::vector<std::shared_ptr<BlockDevice>> Disk::partitions() const {
  std::vector<std::shared_ptr<BlockDevice>> out;
  std::lock_guard lock(parts_lock_);
  for (const auto& p : parts_) {
    if (p) out.push_back(p);
  }
  return out;
}

std::string Disk::stats_report() const {
  const DiskStats st = stats();
  static constexpr const char* kGroupName[kStatGroups] = {"read", "write", "discard",
                                                          "flush"};
  std::string out = fmt::format("{} ({}:{}): {} in flight, busy {} ms\n", name_, major_,
                                minor_, st.in_flight, st.io_ticks_ms);
  out += fmt::format("  {:<8} {:>12} {:>10} {:>14} {:>12} {:>10}\n", "", "ios", "merges",
                     "sectors", "ms", "mean");
  for (int g = 0; g < kStatGroups; ++g) {
    const double mean =
        st.ios[g] ? static_cast<double>(st.nsecs[g]) / static_cast<double>(st.ios[g]) : 0;
    out += fmt::format("  {:<8} {:>12} {:>10} {:>14} {:>12} {:>10}\n", kGroupName[g],
                       st.ios[g], st.merges[g], st.sectors[g], st.nsecs[g] / 1'000'000,
                       st.ios[g] ? format_duration_ns(mean) : "-");
  }
  if (st.bio_depth != 0 || st.busy != 0 || st.bios_parked != 0) {
    out += fmt::format("  bio depth {}: busy {} times, {} bios parked, longest park {}\n",
                       st.bio_depth ? std::to_string(st.bio_depth) : "-", st.busy,
                       st.bios_parked, format_duration_ns(double(st.longest_park_ns)));
  }
  for (int g = 0; g < kStatGroups; ++g) {
    if (st.ios[g] == 0) continue;
    out += fmt::format("  {} latency:\n", kGroupName[g]);
    out += format_pow2_histogram(st.latency[g], "    ", true);
  }
  return out;
}

int Disk::poll(uint64_t wait_ns) { return driver_->poll(wait_ns); }

}  // namespace blkstack
