#include "blkstack/disk.h"

#include <chrono>
#include <thread>

#include "blkstack/debug/submit_context.h"
#include "blkstack/error.h"
#include "core/clock.h"
#include "core/percpu.h"
#include <fmt/format.h>

namespace blkstack {

// One thread slot's counters (see core/percpu.h). `started` is bumped with a
// locked instruction because it pairs with `dying_` (below); everything the
// completion side writes is a plain store in an exclusively owned slot.
struct alignas(kCacheLine) Disk::Shard {
  std::atomic<uint64_t> started;   // start_io calls, including refused ones
  std::atomic<uint64_t> finished;  // end_io calls and refused starts
  std::atomic<uint64_t> ios[kStatGroups];
  std::atomic<uint64_t> merges[kStatGroups];
  std::atomic<uint64_t> sectors[kStatGroups];
  std::atomic<uint64_t> nsecs[kStatGroups];
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

// Counts one finished I/O in the calling thread's slot. Release, so that a
// reader who sees the count also sees the statistics written before it.
void add_finished(std::atomic<uint64_t>& finished, SlotRef slot) {
  if (slot.exclusive) {
    finished.store(finished.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  } else {
    finished.fetch_add(1, std::memory_order_release);
  }
}

}  // namespace

Disk::Disk(std::string name, uint64_t capacity, QueueLimits limits,
           std::unique_ptr<BioDriver> driver)
    : name_(std::move(name)), capacity_(capacity), limits_(limits),
      read_only_(limits.read_only), shards_(new Shard[kSlotCount]()),
      split_set_(name_ + "-split", 4), driver_(std::move(driver)) {
  if (std::string why = limits_.check(); !why.empty()) {
    throw Error(fmt::format("disk '{}': {}", name_, why));
  }
  if (capacity % (limits_.logical_block_size >> kSectorShift) != 0) {
    throw Error(fmt::format("disk '{}': size {} bytes is not a multiple of the logical "
                            "block size {}",
                            name_, capacity << kSectorShift, limits_.logical_block_size));
  }
}

Disk::~Disk() = default;

bool Disk::start_io(Bio& bio) {
  const SlotRef slot = this_slot();
  Shard& s = shards_[slot.index];
  // Dekker with shutdown(): either shutdown() sees this start in its sum of
  // `started`, or this load sees `dying_`. Both sides are sequentially
  // consistent for that reason.
  s.started.fetch_add(1, std::memory_order_seq_cst);
  if (dying_.load(std::memory_order_seq_cst)) [[unlikely]] {
    add_finished(s.finished, slot);
    return false;
  }
  bio.acct_disk = this;
  bio.acct_sectors = bio.sectors();
  bio.start_ns = now_ns();
  update_io_ticks(bio.start_ns, false);
  return true;
}

void Disk::end_io(Bio& bio) {
  const uint64_t now = now_ns();
  const StatGroup g = stat_group(bio.op());
  const SlotRef slot = this_slot();
  Shard& s = shards_[slot.index];
  update_io_ticks(now, true);
  slot_add(s.ios[g], 1, slot);
  slot_add(s.sectors[g], bio.acct_sectors, slot);  // the iterator may have moved on
  slot_add(s.nsecs[g], now - bio.start_ns, slot);
  bio.acct_disk = nullptr;
  add_finished(s.finished, slot);
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

uint64_t Disk::in_flight() const {
  // Finished first: an I/O counted there was started before, so the
  // difference never goes negative even while both move.
  uint64_t finished = 0, started = 0;
  for (unsigned i = 0; i < kSlotCount; ++i) {
    finished += shards_[i].finished.load(std::memory_order_acquire);
  }
  for (unsigned i = 0; i < kSlotCount; ++i) {
    started += shards_[i].started.load(std::memory_order_seq_cst);
  }
  return started - finished;
}

DiskStats Disk::stats() const {
  DiskStats out;
  for (unsigned i = 0; i < kSlotCount; ++i) {
    const Shard& s = shards_[i];
    for (int g = 0; g < kStatGroups; ++g) {
      out.ios[g] += s.ios[g].load(std::memory_order_relaxed);
      out.merges[g] += s.merges[g].load(std::memory_order_relaxed);
      out.sectors[g] += s.sectors[g].load(std::memory_order_relaxed);
      out.nsecs[g] += s.nsecs[g].load(std::memory_order_relaxed);
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

void Disk::shutdown() {
  dying_.store(true, std::memory_order_seq_cst);
  if (in_flight() == 0) return;
  debug::check_may_wait("removal of disk '" + name_ + "'");
  // Removal is rare and may wait for slow devices: poll, do not burden the
  // completion path with a wake-up.
  auto delay = std::chrono::microseconds(10);
  while (in_flight() != 0) {
    std::this_thread::sleep_for(delay);
    if (delay < std::chrono::milliseconds(5)) delay *= 2;
  }
}

}  // namespace blkstack
