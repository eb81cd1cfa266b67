// Disk: a block device with a name, a capacity, limits and statistics (the
// kernel's gendisk). Its driver is a BioDriver (driver/bio_driver.h).
//
// A Disk owns its whole-disk BlockDevice (part0()) and its partitions
// (add_partition); bios address those (block_device.h).
//
// Lifetime: disks are shared (std::shared_ptr). shutdown() — what removal
// from a DiskRegistry does — marks the disk dying, so new I/O fails with
// Status::kOffline, then waits until the I/O already in flight completes
// and no thread is inside the driver (submitting or polling). The driver is
// destroyed with the disk, after the last I/O.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/bioset.h"
#include "blkstack/block_device.h"
#include "blkstack/limits.h"
#include "blkstack/partition_table.h"

namespace blkstack {

class BioDriver;
class BioGate;
class DiskReports;
class IoStats;
class PageCache;
class PercpuRef;

// A run of bytes with one allocation state (for NBD block status, `blkstack
// disk`, and tests of discard): Disk::extent_at().
struct Extent {
  uint64_t length;
  bool allocated;  // false: a hole (no backing storage)
  bool zero;       // known to read as zeroes
};

// Index of the statistic groups, in /proc/diskstats order.
enum StatGroup : int { kStatRead = 0, kStatWrite, kStatDiscard, kStatFlush, kStatGroups };

// A snapshot of a disk's statistics, with the fields of /proc/diskstats.
struct DiskStats {
  uint64_t ios[kStatGroups] = {};      // completed I/Os
  uint64_t merges[kStatGroups] = {};   // I/Os merged into others
  uint64_t sectors[kStatGroups] = {};  // sectors moved
  uint64_t nsecs[kStatGroups] = {};    // total time spent, ns
  uint64_t in_flight = 0;              // I/Os started and not completed
  uint64_t io_ticks_ms = 0;            // time with at least one I/O in flight
  uint64_t time_in_queue_ms = 0;       // sum of all I/O durations (weighted)
  // Back-pressure of a bio-based driver (BioDriver::busy, bio depth): times
  // it said busy, bios parked for room, the longest one waited.
  unsigned bio_depth = 0;  // declared (BioQueueConfig::depth), 0: none
  uint64_t busy = 0;
  uint64_t bios_parked = 0;
  uint64_t longest_park_ns = 0;
  // Completion latency, power-of-two buckets (pow2_histogram.h); the last
  // bucket holds everything from 2^(kLatencyBuckets-2) ns (about 70 s) on.
  static constexpr unsigned kLatencyBuckets = 38;
  uint64_t latency[kStatGroups][kLatencyBuckets] = {};
};

class Disk {
 public:
  // `capacity` is in 512-byte sectors. Throws Error on inconsistent limits
  // or a capacity that is not a multiple of the logical block size.
  Disk(std::string name, uint64_t capacity, QueueLimits limits,
       std::unique_ptr<BioDriver> driver);
  // With what the driver reports about the device (driver/reports.h), set
  // once here; without, the disk reports all data and nothing more.
  Disk(std::string name, uint64_t capacity, QueueLimits limits,
       std::unique_ptr<BioDriver> driver, std::unique_ptr<DiskReports> reports);
  ~Disk();
  Disk(const Disk&) = delete;
  Disk& operator=(const Disk&) = delete;

  const std::string& name() const { return name_; }
  unsigned major() const { return major_; }
  unsigned minor() const { return minor_; }
  void set_devt(unsigned major, unsigned minor) {
    major_ = major;
    minor_ = minor;
  }
  uint64_t capacity() const { return capacity_.load(std::memory_order_relaxed); }
  uint64_t size_bytes() const { return capacity() << kSectorShift; }
  void set_capacity(uint64_t sectors) {
    capacity_.store(sectors, std::memory_order_relaxed);
  }
  const QueueLimits& limits() const { return limits_; }
  // What the control plane changes live (/sys/block/*/queue/ attributes).
  // The write cache in use (queue/write_cache): the device's volatile cache
  // unless turned off ("write through"), which makes PREFLUSH and FUA mean
  // nothing, as without a cache. Turning on throws Error on a device that
  // has no volatile cache.
  bool write_cache() const {
    return limits_.volatile_write_cache &&
           write_cache_on_.load(std::memory_order_relaxed);
  }
  void set_write_cache(bool on);
  // queue/rotational: a hint for schedulers; starts as the driver's limit.
  bool rotational() const { return rotational_.load(std::memory_order_relaxed); }
  void set_rotational(bool r) { rotational_.store(r, std::memory_order_relaxed); }
  // queue/max_sectors_kb: the largest read or write, in sectors. Freezes
  // the disk to change it: I/O reads the limit only while it is accounted,
  // so no I/O sees it change. Throws Error outside one logical block (and
  // at least 4 KiB, as Linux) to max_hw_sectors, or not a multiple of the
  // logical block size. Not from a submit path.
  void set_max_sectors(uint32_t sectors);
  // The disk's page cache, if PageCache::attach made one (page_cache.h):
  // buffered I/O goes through it. The disk owns it; set once.
  PageCache* page_cache() const { return page_cache_.load(std::memory_order_acquire); }
  void set_page_cache(std::unique_ptr<PageCache> cache);
  bool read_only() const { return read_only_.load(std::memory_order_relaxed); }
  void set_read_only(bool ro) { read_only_.store(ro, std::memory_order_relaxed); }
  // The whole disk as a block device (the kernel's bdev_whole / part0).
  BlockDevice& part0() { return part0_; }
  const BlockDevice& part0() const { return part0_; }
  // Adds partition `number` (1 to kMaxPartitions) of `length` sectors from
  // sector `start`, named after the disk ("ram0p1", "sda1"). Partition
  // tables (MBR, GPT) are parsed above and call this. Throws Error on a
  // taken number, a range outside the disk or not aligned to the logical
  // block size. A partition lives until a rescan replaces it and the last
  // std::shared_ptr to it (partition(), partitions(), open_partition) is
  // gone; one replaced is removed() and refuses I/O (kOffline). The
  // reference returned here is valid until the next rescan only.
  static constexpr unsigned kMaxPartitions = 15;
  // The name of partition `number` of a disk called `disk` (disk_name()).
  static std::string partition_name(std::string_view disk, unsigned number);
  BlockDevice& add_partition(unsigned number, uint64_t start, uint64_t length,
                             bool read_only = false);
  // Shares the partition, not the disk: hold the disk as well to use it.
  std::shared_ptr<BlockDevice> partition(unsigned number) const;  // null if none
  std::vector<std::shared_ptr<BlockDevice>> partitions() const;   // by number
  // Whether the disk takes partitions at all (false: the kernel's
  // GENHD_FL_NO_PART): device-mapper and passthrough disks do not, as the
  // kernel never scans device-mapper disks. rescan_partitions() refuses.
  bool partscan() const { return partscan_.load(std::memory_order_relaxed); }
  void set_partscan(bool on) { partscan_.store(on, std::memory_order_relaxed); }
  // Reads the partition table (MBR or GPT, src/disk/partitions/) and makes
  // its partitions the disk's, in place of those it had (the kernel's
  // BLKRRPART; done when a disk is made from a spec, unless partscan=0).
  // Throws BusyError ("cannot rescan ram0: ram0p1 is open") while a
  // partition is open (open_partition) or any device of the disk is
  // claimed, as Linux answers EBUSY. A table refused as malformed, or an
  // I/O error, leaves no partitions and says why in the table's error.
  // Throws Error on a disk without partscan(). Not from a submit path.
  PartitionTable rescan_partitions();
  // What the last rescan read (an empty table before any).
  PartitionTable partition_table() const;
  // The whole disk as a shared block device: shares `self`'s ownership
  // (null for a null `self`).
  static std::shared_ptr<BlockDevice> whole(const std::shared_ptr<Disk>& self) {
    return self ? std::shared_ptr<BlockDevice>(self, &self->part0_) : nullptr;
  }
  // The partition called `name` ("ram0p1"), opened: it keeps `self` (this
  // disk) alive, and rescans are refused while it is held. Null if the
  // disk has no partition of that name.
  static std::shared_ptr<BlockDevice> open_partition(const std::shared_ptr<Disk>& self,
                                                     std::string_view name);
  // Claims that this disk holds on the devices it is stacked on; they are
  // released once shutdown() has waited for this disk's I/O.
  void hold(Claim claim);
  // Refuses new claims on this disk's devices, for its removal from a
  // DiskRegistry; throws BusyError naming the holder when one is held.
  void close_claims();

  BioDriver& driver() { return *driver_; }
  const BioDriver& driver() const { return *driver_; }
  // Whether bios go through the disk's BioGate (src/core/bio_gate.h) rather
  // than straight to the driver: a bio depth, batches, or bios parked.
  bool gated() const { return gated_.load(std::memory_order_relaxed); }
  BioGate& bio_gate() { return *gate_; }
  // What the driver reports (its DiskReports): one line about its
  // configuration, for `blkstack disk`; the allocation state of the bytes
  // at `offset` as one run of at most `max_length` bytes; the bytes of
  // backing storage in use.
  std::string describe() const;
  Extent extent_at(uint64_t offset, uint64_t max_length) const;
  uint64_t allocated_bytes() const;
  // The pool this disk splits bios from (its own, see bioset.h). Its
  // reserve: submit_bio issues each piece before it splits off the next,
  // and a piece returns its split bio when it completes, without needing
  // another from this pool; so one split bio lets the largest bio finish,
  // and a few let pieces overlap. Capped, so that a huge bio (or many)
  // holds a bounded number, the rest waiting (parked, see bioset.h) as it
  // would when the heap is out of memory.
  static constexpr size_t kSplitReserve = 4;
  static constexpr size_t kSplitMax = 256;
  BioSet& split_set() { return split_set_; }

  // Statistics summed over all threads.
  DiskStats stats() const;
  uint64_t in_flight() const;
  // The /proc/diskstats line of this disk.
  std::string diskstats_line() const;
  // The statistics for people: the diskstats fields by name, and a latency
  // histogram per kind of operation that has any.
  std::string stats_report() const;

  bool dying() const { return dying_.load(std::memory_order_acquire); }
  // Refuses new I/O (kOffline) and waits for in-flight I/O to complete.
  void shutdown();
  // Holds new I/O back (parked, not failed; NOWAIT bios fail with kAgain)
  // and waits until the I/O in flight has completed and no thread is in
  // this disk's submit path (blk_mq_freeze_queue): for changing a scheduler
  // or a table. Nests. Not from a submit path.
  void freeze();
  // Lets parked and new I/O in again once every freeze() is undone.
  void unfreeze();
  // The same, letting `first` in ahead of the bios parked while frozen (a
  // stacked driver's requeued bios, older than those: dm's md->deferred).
  void unfreeze(BioList& first);
  // Polled I/O (BioFlag::kPolled; the kernel's bio_poll): completes what
  // is ready on the driver's poll queues, waiting up to `wait_ns` for the
  // first; returns how many, or BioDriver::kPollBusy. The caller holds a
  // poll reference across the call: completing the last bio may let
  // another thread reap its event and remove the disk while this one is
  // still inside the driver, and the reference makes removal wait.
  int poll(uint64_t wait_ns);
  // A poll reference (q_usage_counter as bio_poll takes it): shutdown()
  // does not return while one is held. Taken while the disk is known to be
  // alive (an I/O of the caller's in flight on it, or another reference
  // held); refused once removal is past the I/O in flight, when nothing is
  // left to poll.
  bool get_poll_ref();
  void put_poll_ref();  // the disk may be gone once this returns

#ifdef BLKSTACK_DEBUG_CHECKS
  // Test hook: runs on a thread on the shared slot between reading the
  // epoch and counting itself in (to hold it there across a wait).
  static inline std::atomic<void (*)(Disk&)> shared_slot_entry_hook{nullptr};
#endif

  // Completes `bio` with Status::kCancelled if none of it has reached a
  // device yet (parked while frozen, or waiting for a tag, with no piece
  // split off and issued). Returns whether it did.
  bool cancel(Bio& bio);

  // --- used by submit_bio() and Bio::endio() ---------------------------
  // Starts accounting `bio` on this disk; false when the disk is dying or
  // frozen: then call refused(bio).
  bool start_io(Bio& bio);
  // Fails a bio refused by start_io (dying) or parks it until unfreeze().
  void refused(Bio& bio);
  // Finishes the accounting begun by start_io (from the completion path).
  void end_io(Bio& bio);

  // --- used by request queues (accounts_requests()) ----------------------
  void account_request_start(uint64_t now_ns) { update_io_ticks(now_ns, false); }
  void account_request_done(Op op, uint32_t sectors, uint64_t start_ns, uint64_t now_ns);
  void account_merge(Op op);

  // Publishes that the calling thread is inside this disk's submit path,
  // so that shutdown() and freeze() wait for it to leave even when the bio
  // it submitted completed (and let go of the disk) before the driver call
  // returned. A plain store per submit for all but the rare thread beyond
  // kPercpuSlots.
  class SubmitGuard {
   public:
    explicit SubmitGuard(Disk& disk);
    ~SubmitGuard();
    SubmitGuard(const SubmitGuard&) = delete;
    SubmitGuard& operator=(const SubmitGuard&) = delete;

   private:
    Disk& disk_;
    unsigned slot_;
    const Disk* saved_;
    unsigned shared_half_ = 0;  // on the shared slot: the half counted in
  };

 private:
  friend class BlockDevice;  // claims_closed_
  void update_io_ticks(uint64_t now_ns, bool end);
  // add_partition's checks and work, under parts_lock_.
  BlockDevice& add_partition_locked(unsigned number, uint64_t start, uint64_t length,
                                    bool read_only);
  // Why the partitions cannot be replaced now, or empty: a claim (under
  // the claim lock), an open partition (under parts_lock_).
  std::string rescan_busy_locked() const;
  std::string open_partition_locked() const;
  void account_done(Op op, uint32_t sectors, uint64_t duration_ns, uint64_t now_ns);
  // Waits until no I/O is in flight and no thread is in the submit path.
  void wait_until_idle(const std::string& what);

  std::string name_;
  BlockDevice part0_;
  unsigned major_ = 0;
  unsigned minor_ = 0;
  std::atomic<uint64_t> capacity_;
  QueueLimits limits_;
  std::atomic<bool> read_only_;
  std::atomic<bool> write_cache_on_{true};
  std::unique_ptr<PageCache> page_cache_owner_;
  std::atomic<PageCache*> page_cache_{nullptr};
  std::atomic<bool> rotational_;
  std::mutex limits_lock_;  // one set_max_sectors at a time
  bool per_bio_stats_;
  std::atomic<bool> dying_{false};
  std::unique_ptr<PercpuRef> usage_;    // bios between start_io and end_io
  std::unique_ptr<PercpuRef> pollers_;  // poll references (get_poll_ref)
  std::mutex freeze_lock_;              // the parked bios and the freeze depth
  BioList frozen_bios_;
  unsigned freeze_depth_ = 0;
  // Threads on the shared slot inside the submit path, counted in two
  // halves by the epoch they entered in: a wait flips the epoch and waits
  // for the old half only, so threads that keep arriving after it (and are
  // refused) cannot starve it, however many share the slot.
  std::atomic<uint32_t> shared_epoch_{0};
  std::atomic<uint32_t> shared_submitters_[2] = {};
  std::mutex idle_wait_lock_;  // one wait_until_idle() at a time
  std::unique_ptr<IoStats> stats_;
  mutable std::mutex parts_lock_;  // parts_ and holds_
  std::shared_ptr<BlockDevice> parts_[kMaxPartitions];
  std::atomic<bool> partscan_{true};
  PartitionTable table_;    // under parts_lock_
  std::mutex rescan_lock_;  // one rescan at a time
  std::vector<Claim> holds_;
  bool claims_closed_ = false;  // being removed: no new claims (claim lock)
  BioSet split_set_;
  std::unique_ptr<DiskReports> reports_;  // never null
  std::atomic<bool> gated_{false};
  std::unique_ptr<BioGate> gate_;      // after the driver's other users
  std::unique_ptr<BioDriver> driver_;  // last member: destroyed first
};

}  // namespace blkstack
