// IoStats: the I/O statistics of one block device, kept per thread slot
// (core/percpu.h) so that counting an I/O is plain stores in a slot the
// thread owns (the kernel's per-cpu disk_stats). A Disk keeps one for all
// its I/O; each partition keeps one more for its own.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "blkstack/bio.h"
#include "blkstack/disk.h"

namespace blkstack {

class IoStats {
 public:
  IoStats();
  ~IoStats();
  IoStats(const IoStats&) = delete;
  IoStats& operator=(const IoStats&) = delete;

  // Counts one started I/O, for owners that have no other in-flight count
  // (partitions): in_flight_counted() is started minus completed.
  void count_started();
  uint64_t in_flight_counted() const;

  // One I/O of `sectors` done after `duration_ns`.
  void count_done(Op op, uint32_t sectors, uint64_t duration_ns);
  void count_merge(Op op);

  // Adds the time since the last stamp to io_ticks if the device was busy
  // through it: at the end of an I/O (`end`), or when `in_flight()` says
  // other I/O is in flight (the kernel's update_io_ticks). `in_flight` is
  // only called when a millisecond has passed.
  template <class InFlight>
  void update_io_ticks(uint64_t now_ns, bool end, InFlight&& in_flight) {
    const uint64_t now_ms = now_ns / 1'000'000;
    uint64_t stamp = stamp_ms_.load(std::memory_order_relaxed);
    if (now_ms == stamp) return;
    if (!stamp_ms_.compare_exchange_strong(stamp, now_ms, std::memory_order_relaxed))
      return;
    if (stamp != 0 && (end || in_flight() > 0)) {
      io_ticks_ms_.fetch_add(now_ms - stamp, std::memory_order_relaxed);
    }
  }

  // The counters summed over all slots; in_flight is left 0 for the owner.
  DiskStats sum() const;

 private:
  struct Shard;
  std::unique_ptr<Shard[]> shards_;
  std::atomic<uint64_t> stamp_ms_{0};
  std::atomic<uint64_t> io_ticks_ms_{0};
};

// The /proc/diskstats line for a device with these numbers.
std::string format_diskstats_line(unsigned major, unsigned minor, const std::string& name,
                                  const DiskStats& st);

}  // namespace blkstack
