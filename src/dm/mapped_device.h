// MappedDevice: a device-mapper device (the kernel's struct mapped_device,
// drivers/md/dm.c): a bio-based Disk whose driver sends each bio through
// the target of its live Table.
//
// For every bio: find the target covering its start; if the bio reaches
// past that target's end (or a max_io_len boundary) cut it into pieces
// there; clone each piece from the device's pool (DmIo) and call
// Target::map(clone). A remapped clone is submitted with submit_bio(),
// which only queues it on this thread's list (stacking is flattened: a
// stack of any depth uses bounded C++ stack). The original bio stays
// accounted on this disk until its last piece completes, so the disk's
// freeze() waits for every bio in the targets: that is what suspend is.
//
// Tables are swapped atomically (dmsetup load, suspend, resume): load()
// builds an inactive table beside the live one; suspend() stops new I/O
// (parked, not failed) and drains what is in flight; resume() makes the
// inactive table live and lets the parked bios through it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "blkstack/driver/bio_driver.h"
#include "blkstack/mempool.h"
#include "core/percpu.h"
#include "dm/dm_io.h"
#include "dm/table.h"

namespace blkstack {

class Disk;
class DiskRegistry;

class MappedDevice final : public BioDriver {
 public:
  // Makes the mapped device `name` and adds its disk to `registry` (driver
  // "device-mapper"). With a table, the device is live on it (dmsetup create
  // --table: load and resume); without, it has no table and size 0 until a
  // load and a resume. Its limits (logical block size, discard,
  // write-zeroes, write cache) are those of the first table. Throws Error.
  static MappedDevice& create(DiskRegistry& registry, const std::string& name,
                              const std::string& uuid, std::string_view table);
  // The mapped device of `disk`, or null if it is not one.
  static MappedDevice* of(Disk& disk);
  // The claim holder of every mapped device's lower devices.
  static constexpr std::string_view kHolder = "device-mapper";
  // Whether `disk` is a mapped device whose live or inactive table uses,
  // at any depth, the disk named `name` (a table that would make a cycle).
  static bool depends_on(Disk& disk, std::string_view name);

  ~MappedDevice() override;

  const std::string& name() const;
  const std::string& uuid() const { return uuid_; }
  Disk& disk() { return *disk_; }

  // --- dmsetup's verbs (control plane; never from a submit path) ---------
  // Builds `text` as the inactive table, replacing one loaded before.
  void load(std::string_view text);
  void clear_inactive();  // dmsetup clear
  // Stops new I/O and waits for what is in flight (dm_suspend). With
  // `noflush`, targets may hand back the bios they hold (kRequeue): kept,
  // and mapped again after resume. Suspending a suspended device does
  // nothing.
  void suspend(bool noflush = false);
  // Makes the inactive table live, if one was loaded, and lets I/O in.
  // Throws Error, leaving the device suspended, when there is no table.
  void resume();
  bool suspended() const;
  bool has_live() const;
  bool has_inactive() const;
  // The table lines; `inactive`: the loaded one (empty string if none).
  std::string table_text(bool inactive = false) const;
  std::string status_text() const;
  // `dmsetup message NAME SECTOR ARGS...`: to the target covering SECTOR.
  std::string message(uint64_t sector, std::span<const std::string> argv);
  // Targets of the live table (for `dmsetup info`'s and `ls`'s numbers).
  size_t live_targets() const;
  std::vector<std::string> lower_devices() const;
  uint32_t event_nr() const { return event_nr_.load(std::memory_order_acquire); }
  void raise_event() { event_nr_.fetch_add(1, std::memory_order_acq_rel); }

  // The pool the clones come from (tests hold it to its reserve).
  MempoolBase& io_pool() { return pool_.base(); }

  // --- BioDriver --------------------------------------------------------
  void submit(Bio& bio) override;
  void shutdown() override;
  bool continues(const Bio& bio) override;

 private:
  MappedDevice(DiskRegistry& registry, std::string uuid);
  void attach(Disk& disk) override { disk_ = &disk; }
  // Maps `bio`, crossing targets or needing a flush of every target,
  // through several pieces of `table`, a clone at a time; `handed`: the
  // clone given to it when it comes back from park().
  void map_pieces(Bio& bio, const Table& table, DmIo* handed);
  void suspend_locked(bool noflush);
  void resume_locked();
  void dispatch(DmIo& io);
  static void clone_endio(Bio& clone);
  void finish_piece(DmIo& io, Status status, bool requeue);
  // `bits`: the requeue and data-next bits of orig's countdown.
  void done_orig(Bio& orig, Status status, uint64_t bits);
  void free_io(DmIo& io);
  // Out of clones: park `bio` (at the head of the queue if `front`) until
  // one comes back; it is then handed to `bio`, which goes on through
  // submit_bio() (DESIGN.md invariant 4). A bio parked part way keeps in
  // its driver_data how far it got; one parked before its first piece has
  // driver_data 0.
  void park(Bio& bio, bool front);
  // A clone: the calling thread's own (clone_cache_), else one from the
  // pool; null when the pool is dry.
  DmIo* alloc_io();
  // Hands free clones to parked bios, oldest first, and resubmits those.
  void resume_parked();
  // The clone handed to `bio`, if any, now the caller's. Under park_lock_.
  DmIo* take_handed(const Bio& bio);

  DiskRegistry& registry_;
  std::string uuid_;
  Disk* disk_ = nullptr;  // the disk that owns this driver
  Mempool<DmIo> pool_;
  // A clone of its own for each thread slot (core/percpu.h), made on the
  // slot's first use and kept for the device's life: the common path
  // takes it and gives it back with a plain load and store, no lock and no
  // atomic read-modify-write (the kernel's per-cpu bio_alloc_cache). Only
  // the slot's thread takes it; whichever thread completes it puts it back
  // (its slot is empty while it is out). While it is out, and on a shared
  // slot, clones come from the pool with its reserve. These clones are on
  // top of the pool: at most kPercpuSlots per device.
  struct alignas(kCacheLine) CloneSlot {
    std::atomic<DmIo*> idle{nullptr};
    bool made = false;  // the slot's thread only
  };
  CloneSlot clone_cache_[kSlotCount];
  std::atomic<const Table*> live_{nullptr};  // swapped only while frozen
  std::atomic<bool> noflush_{false};         // a noflush suspend is on
  std::atomic<uint32_t> event_nr_{0};
  // parked_ and handed_ together: nonzero sends the fast paths to the lock.
  std::atomic<uint32_t> waiting_{0};

  mutable std::mutex ctl_lock_;  // the verbs, one at a time; the tables
  std::unique_ptr<Table> live_table_;
  std::unique_ptr<Table> inactive_;
  bool suspended_ = false;

  std::mutex park_lock_;
  BioList parked_;    // out of clones, oldest first
  BioList handed_;    // clones handed to resumed bios; DmIo::orig names it
  BioList requeued_;  // handed back during a noflush suspend
};

}  // namespace blkstack
