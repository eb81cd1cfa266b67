#include "blkstack/disk.h"

#include "blkstack/debug/submit_context.h"
#include "blkstack/driver/reports.h"
#include "blkstack/error.h"
#include "blkstack/pow2_histogram.h"
#include "core/clock.h"
#include "core/percpu.h"
#include "core/percpu_ref.h"
#include "core/wait.h"
#include "blkstack/submit.h"
#include <thread>
#include <fmt/format.h>

namespace blkstack {

// One thread slot's statistics (see core/percpu.h): plain stores in an
// exclusively owned slot.
struct alignas(kCacheLine) Disk::Shard {
  std::atomic<uint64_t> ios[kStatGroups];
  std::atomic<uint64_t> merges[kStatGroups];
  std::atomic<uint64_t> sectors[kStatGroups];
  std::atomic<uint64_t> nsecs[kStatGroups];
  std::atomic<uint64_t> latency[kStatGroups][DiskStats::kLatencyBuckets];
};

namespace {

StatGroup stat_group(Op op) {
  switch (op) {
    case Op::kRead: return kStatRead;
    case Op::kFlush: return kStatFlush;
    case Op::kDiscard: return kStatDiscard;
    default: return kStatWrite;  // write, write-zeroes
  }
}

}  // namespace

Disk::Disk(std::string name, uint64_t capacity, QueueLimits limits,
           std::unique_ptr<BioDriver> driver)
    : Disk(std::move(name), capacity, limits, std::move(driver), nullptr) {}

Disk::Disk(std::string name, uint64_t capacity, QueueLimits limits,
           std::unique_ptr<BioDriver> driver, std::unique_ptr<DiskReports> reports)
    : name_(std::move(name)),
      capacity_(capacity),
      limits_(limits),
      read_only_(limits.read_only),
      usage_(std::make_unique<PercpuRef>()),
      pollers_(std::make_unique<PercpuRef>()),
      shards_(new Shard[kSlotCount]()),
      split_set_(name_ + "-split", kSplitReserve, kSplitMax),
      reports_(reports ? std::move(reports) : std::make_unique<DiskReports>()),
      driver_(std::move(driver)) {
  if (std::string why = limits_.check(); !why.empty()) {
    throw Error(fmt::format("disk '{}': {}", name_, why));
  }
  if (capacity % (limits_.logical_block_size >> kSectorShift) != 0) {
    throw Error(fmt::format("disk '{}': size {} bytes is not a multiple of the logical "
                            "block size {}",
                            name_, capacity << kSectorShift, limits_.logical_block_size));
  }
  per_bio_stats_ = !driver_->accounts_requests();
  driver_->attach(*this);
}

Disk::~Disk() {
  if (!dying()) shutdown();
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
  return true;
}

void Disk::end_io(Bio& bio) {
  bio.acct_disk = nullptr;
  if (per_bio_stats_) {
    const uint64_t now = now_ns();
    account_done(bio.op(), bio.acct_sectors, now - bio.start_ns, now);
  }
  usage_->put();
}

void Disk::account_done(Op op, uint32_t sectors, uint64_t duration_ns, uint64_t now) {
  const StatGroup g = stat_group(op);
  const SlotRef slot = this_slot();
  Shard& s = shards_[slot.index];
  update_io_ticks(now, true);
  slot_add(s.ios[g], 1, slot);
  slot_add(s.sectors[g], sectors, slot);
  slot_add(s.nsecs[g], duration_ns, slot);
  slot_add(s.latency[g][pow2_bucket(duration_ns, DiskStats::kLatencyBuckets)], 1, slot);
}

void Disk::account_request_done(Op op, uint32_t sectors, uint64_t start_ns, uint64_t now) {
  // Times may come from a plug's cached clock, a little behind: never wrap.
  account_done(op, sectors, now > start_ns ? now - start_ns : 0, now);
}

void Disk::account_merge(Op op) {
  const SlotRef slot = this_slot();
  slot_add(shards_[slot.index].merges[stat_group(op)], 1, slot);
}

void Disk::update_io_ticks(uint64_t now, bool end) {
  const uint64_t now_ms = now / 1'000'000;
  uint64_t stamp = stamp_ms_.load(std::memory_order_relaxed);
  if (now_ms == stamp) return;
  if (!stamp_ms_.compare_exchange_strong(stamp, now_ms, std::memory_order_relaxed)) return;
  if (stamp != 0 && (end || in_flight() > 0)) {
    io_ticks_ms_.fetch_add(now_ms - stamp, std::memory_order_relaxed);
  }
}

uint64_t Disk::in_flight() const { return usage_->count(); }

DiskStats Disk::stats() const {
  DiskStats out;
  for (unsigned i = 0; i < kSlotCount; ++i) {
    const Shard& s = shards_[i];
    for (int g = 0; g < kStatGroups; ++g) {
      out.ios[g] += s.ios[g].load(std::memory_order_relaxed);
      out.merges[g] += s.merges[g].load(std::memory_order_relaxed);
      out.sectors[g] += s.sectors[g].load(std::memory_order_relaxed);
      out.nsecs[g] += s.nsecs[g].load(std::memory_order_relaxed);
      for (unsigned k = 0; k < DiskStats::kLatencyBuckets; ++k) {
        out.latency[g][k] += s.latency[g][k].load(std::memory_order_relaxed);
      }
    }
  }
  out.in_flight = in_flight();
  out.io_ticks_ms = io_ticks_ms_.load(std::memory_order_relaxed);
  uint64_t total_ns = 0;
  for (uint64_t ns : out.nsecs) total_ns += ns;
  out.time_in_queue_ms = total_ns / 1'000'000;
  return out;
}

std::string Disk::diskstats_line() const {
  const DiskStats st = stats();
  auto ms = [](uint64_t ns) { return ns / 1'000'000; };
  // major minor name, then reads, writes, in-flight/ticks, discards, flushes.
  return fmt::format(
      "{:4} {:7} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}", major_, minor_,
      name_, st.ios[kStatRead], st.merges[kStatRead], st.sectors[kStatRead],
      ms(st.nsecs[kStatRead]), st.ios[kStatWrite], st.merges[kStatWrite],
      st.sectors[kStatWrite], ms(st.nsecs[kStatWrite]), st.in_flight, st.io_ticks_ms,
      st.time_in_queue_ms, st.ios[kStatDiscard], st.merges[kStatDiscard],
      st.sectors[kStatDiscard], ms(st.nsecs[kStatDiscard]), st.ios[kStatFlush],
      ms(st.nsecs[kStatFlush]));
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
    if (!saved_) s.exits.store(s.exits.load(std::memory_order_relaxed) + 1,
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

void Disk::shutdown() {
  BioList parked;
  {
    std::lock_guard lock(freeze_lock_);
    dying_.store(true, std::memory_order_seq_cst);
    usage_->kill();
    parked.splice_back(frozen_bios_);
  }
  while (Bio* b = parked.pop_front()) b->complete(Status::kOffline);
  driver_->shutdown();
  const std::string what = "removal of disk '" + name_ + "'";
  if (driver_->can_poll() && usage_->count() != 0) {
    // Polled I/O completes only when polled, and its owner may never poll
    // again (an IoContext nobody reaps or destroys): removal polls the
    // driver itself while it waits, as a driver reaps its completion
    // queues when its device goes away. The events are posted as usual.
    prepare_to_wait(what);
    while (usage_->count() != 0) {
      if (driver_->poll(0) <= 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  wait_until_idle(what);
  // Pollers last: until the I/O in flight is done, polling may be what
  // completes it. From here on nothing is left to poll, and a poller that
  // completed the last bio may still be inside the driver.
  pollers_->kill();
  pollers_->wait_for_zero(what);
}

std::string Disk::stats_report() const {
  const DiskStats st = stats();
  static constexpr const char* kGroupName[kStatGroups] = {"read", "write", "discard", "flush"};
  std::string out = fmt::format("{} ({}:{}): {} in flight, busy {} ms\n", name_, major_, minor_,
                                st.in_flight, st.io_ticks_ms);
  out += fmt::format("  {:<8} {:>12} {:>10} {:>14} {:>12} {:>10}\n", "", "ios", "merges",
                     "sectors", "ms", "mean");
  for (int g = 0; g < kStatGroups; ++g) {
    const double mean = st.ios[g] ? static_cast<double>(st.nsecs[g]) / static_cast<double>(st.ios[g]) : 0;
    out += fmt::format("  {:<8} {:>12} {:>10} {:>14} {:>12} {:>10}\n", kGroupName[g], st.ios[g],
                       st.merges[g], st.sectors[g], st.nsecs[g] / 1'000'000,
                       st.ios[g] ? format_duration_ns(mean) : "-");
  }
  for (int g = 0; g < kStatGroups; ++g) {
    if (st.ios[g] == 0) continue;
    out += fmt::format("  {} latency:\n", kGroupName[g]);
    out += format_pow2_histogram(st.latency[g], "    ", true);
  }
  return out;
}

}  // namespace blkstack
