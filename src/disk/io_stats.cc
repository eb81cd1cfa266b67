#include "disk/io_stats.h"

#include <fmt/format.h>

#include "blkstack/pow2_histogram.h"
#include "core/percpu.h"

namespace blkstack {

// One thread slot's statistics: plain stores in an exclusively owned slot.
struct alignas(kCacheLine) IoStats::Shard {
  std::atomic<uint64_t> ios[kStatGroups];
  std::atomic<uint64_t> merges[kStatGroups];
  std::atomic<uint64_t> sectors[kStatGroups];
  std::atomic<uint64_t> nsecs[kStatGroups];
  std::atomic<uint64_t> latency[kStatGroups][DiskStats::kLatencyBuckets];
  std::atomic<uint64_t> started;
};

namespace {

StatGroup stat_group(Op op) {
  switch (op) {
    case Op::kRead:
      return kStatRead;
    case Op::kFlush:
      return kStatFlush;
    case Op::kDiscard:
      return kStatDiscard;
    default:
      return kStatWrite;  // write, write-zeroes
  }
}

}  // namespace

IoStats::IoStats() : shards_(new Shard[kSlotCount]()) {}

IoStats::~IoStats() = default;

void IoStats::count_started() {
  const SlotRef slot = this_slot();
  slot_add(shards_[slot.index].started, 1, slot);
}

uint64_t IoStats::in_flight_counted() const {
  uint64_t started = 0, done = 0;
  for (unsigned i = 0; i < kSlotCount; ++i) {
    started += shards_[i].started.load(std::memory_order_relaxed);
    for (int g = 0; g < kStatGroups; ++g)
      done += shards_[i].ios[g].load(std::memory_order_relaxed);
  }
  // The slots are read one after the other, not at one instant.
  return started > done ? started - done : 0;
}

void IoStats::count_done(Op op, uint32_t sectors, uint64_t duration_ns) {
  const StatGroup g = stat_group(op);
  const SlotRef slot = this_slot();
  Shard& s = shards_[slot.index];
  slot_add(s.ios[g], 1, slot);
  slot_add(s.sectors[g], sectors, slot);
  slot_add(s.nsecs[g], duration_ns, slot);
  slot_add(s.latency[g][pow2_bucket(duration_ns, DiskStats::kLatencyBuckets)], 1, slot);
}

void IoStats::count_merge(Op op) {
  const SlotRef slot = this_slot();
  slot_add(shards_[slot.index].merges[stat_group(op)], 1, slot);
}

DiskStats IoStats::sum() const {
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
  out.io_ticks_ms = io_ticks_ms_.load(std::memory_order_relaxed);
  uint64_t total_ns = 0;
  for (uint64_t ns : out.nsecs) total_ns += ns;
  out.time_in_queue_ms = total_ns / 1'000'000;
  return out;
}

std::string format_diskstats_line(unsigned major, unsigned minor, const std::string& name,
                                  const DiskStats& st) {
  auto ms = [](uint64_t ns) { return ns / 1'000'000; };
  // major minor name, then reads, writes, in-flight/ticks, discards, flushes.
  return fmt::format("{:4} {:7} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
                     major, minor, name, st.ios[kStatRead], st.merges[kStatRead],
                     st.sectors[kStatRead], ms(st.nsecs[kStatRead]), st.ios[kStatWrite],
                     st.merges[kStatWrite], st.sectors[kStatWrite],
                     ms(st.nsecs[kStatWrite]), st.in_flight, st.io_ticks_ms,
                     st.time_in_queue_ms, st.ios[kStatDiscard], st.merges[kStatDiscard],
                     st.sectors[kStatDiscard], ms(st.nsecs[kStatDiscard]),
                     st.ios[kStatFlush], ms(st.nsecs[kStatFlush]));
}

}  // namespace blkstack
