// Target: one kind of mapping in a device-mapper table (the kernel's struct
// dm_target and struct target_type, include/linux/device-mapper.h).
//
// A mapped device (src/dm/mapped_device.h) is a bio-based Disk whose table
// is a list of lines `start length type args...`, each line a Target that
// covers `length` sectors of the device from `start`. For every bio the
// mapped device finds the target (splitting a bio that crosses a line, or a
// target's max_io_len boundary), makes a clone of the piece and calls
// Target::map(clone). A target then:
//
//  - remaps the clone to a lower device (clone.set_dev(dev, sector)) and
//    returns MapResult::kRemapped: the core submits it (dm_mapio_remapped);
//  - or takes the clone (MapResult::kSubmitted): it has submitted it
//    itself, completed it (clone.complete(status): the zero and error
//    targets), or keeps it to do either later from another thread or a
//    completion callback: deferred (a delay target's timer, a mirror's
//    recovery);
//  - or returns kKill (fails with Status::kIoError) or kRequeue (sends the
//    bio back to be mapped again after the next resume: kept across a
//    `suspend --noflush`, failed with kIoError otherwise, as dm does).
//
// A target never waits in map() or end_io() (DESIGN.md invariant 2): work
// that must wait for other I/O goes on in a completion callback, or on a
// thread of the target's own.
//
// More clones (a mirror writing to each leg) come from a BioSet the target
// owns, so it never starves the core's pool (bioset.h): clone_bio() onto a
// bio from BioSet::alloc_for_split(), and BioSet::park() when none is free.
//
// A new target is one .cc file that defines a TargetType and one line in
// src/dm/target_registry.cc (or register_target_type() at run time); see
// docs/targets.md.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/block_device.h"
#include "blkstack/limits.h"

namespace blkstack {

class MappedDevice;
class Target;

// What map() did with the clone (DM_MAPIO_*).
enum class MapResult : uint8_t {
  kRemapped,   // pointed at a lower device: the core submits it
  kSubmitted,  // the target's now: submitted, completed, or deferred
  kKill,       // fail the piece with Status::kIoError
  kRequeue,    // map the bio again after the next resume (see above)
};

// What end_io() decided (DM_ENDIO_*).
enum class EndIoResult : uint8_t {
  kDone,        // the piece is finished with `status` (which end_io may change)
  kIncomplete,  // the target took the clone back and finishes it later: it
                // restarts it (Bio::restart from target_io_start()) and
                // submits it again, or completes it again
  kRequeue,     // as MapResult::kRequeue
};

// A lower device opened for a table line: the device and its name as given.
struct TargetDevice {
  std::shared_ptr<BlockDevice> bdev;  // claimed by the mapped device
  // "MAJ:MIN", as the kernel prints a device in `dmsetup table`.
  std::string devt() const;
};

// What a target's constructor gets besides its arguments (the dm_target
// under construction in the kernel's ctr).
class TargetContext {
 public:
  virtual ~TargetContext() = default;
  // The mapped device being loaded (the claim holder's name).
  virtual const std::string& device_name() const = 0;
  uint64_t begin() const { return begin_; }    // first sector of the line
  uint64_t length() const { return length_; }  // sectors
  // Opens a lower device for reading and writing, claimed by the mapped
  // device for as long as the table lives (dm_get_device). `name` is a disk
  // or partition name ("ram0", "ram0p1"), the same with "/dev/" in front,
  // "/dev/mapper/NAME", or "MAJ:MIN". Throws Error for an unknown device
  // and BusyError when another disk holds it. The same device may be
  // opened by several lines of one table.
  virtual TargetDevice open_device(std::string_view name) = 0;

 protected:
  TargetContext(uint64_t begin, uint64_t length) : begin_(begin), length_(length) {}

 private:
  uint64_t begin_;
  uint64_t length_;
};

// The arguments of a table line after the target name, split on blanks.
using TargetArgs = std::span<const std::string>;

class Target {
 public:
  virtual ~Target() = default;

  // --- I/O (never waits) --------------------------------------------------
  // `clone` covers a range inside this target (never across a max_io_len
  // boundary), at device sectors: offset(clone.sector()) is the target's
  // own sector. Empty flushes (Op::kFlush, size 0) come num_flush_bios
  // times, target_bio_nr(clone) telling which; discards and write-zeroes
  // likewise with num_discard_bios and num_write_zeroes_bios.
  virtual MapResult map(Bio& clone) = 0;
  // Runs when the clone completes, before the bio above sees `status`.
  virtual EndIoResult end_io(Bio& clone, Status& status) {
    (void)clone;
    (void)status;
    return EndIoResult::kDone;
  }

  // --- suspend and resume -------------------------------------------------
  // presuspend: before the device stops new I/O and waits for what is in
  // flight; a target that holds bios finishes them now (`noflush`: it may
  // instead hand them back with kRequeue, to go again after resume).
  // postsuspend: once nothing is in flight. preresume: before a table
  // goes live (may throw Error to refuse the resume). resume: once live.
  virtual void presuspend(bool noflush) { (void)noflush; }
  virtual void postsuspend() {}
  virtual void preresume() {}
  virtual void resume() {}

  // --- output (dmsetup table / status / message) -------------------------
  // The arguments of this line as `dmsetup table` prints them
  // (STATUSTYPE_TABLE), devices as MAJ:MIN: "8:16 2048".
  virtual std::string table() const = 0;
  // The line's part of `dmsetup status` (STATUSTYPE_INFO); may be empty.
  virtual std::string status() const { return {}; }
  // `dmsetup message DEV SECTOR ARGS...` addressed to this target; returns
  // the reply (often empty). Throws Error for a message it does not know.
  virtual std::string message(std::span<const std::string> argv);

  // --- devices and limits ---------------------------------------------------
  // Calls fn(device, start, length) for each range of a lower device this
  // target uses (iterate_devices): for limits stacking and `dmsetup deps`.
  using DeviceFn = std::function<void(BlockDevice& dev, uint64_t start, uint64_t len)>;
  virtual void iterate_devices(const DeviceFn& fn) const { (void)fn; }
  // Adjusts the stacked limits of the table (io_hints): a striped target
  // sets its chunk as the optimal I/O size, say.
  virtual void io_hints(QueueLimits& limits) const { (void)limits; }

  // --- set by the core ------------------------------------------------------
  uint64_t begin() const { return begin_; }
  uint64_t length() const { return length_; }
  // The target's own sector for a device sector (dm_target_offset).
  uint64_t offset(uint64_t sector) const { return sector - begin_; }
  // Raises a table event (dm_table_event): the device's event number goes
  // up and `dmsetup wait`-style watchers see it. From any thread.
  void event();

  // --- set by the target's constructor (as ti->num_flush_bios, ...) -------
  // Bios never cross a multiple of this many target sectors (0: no limit):
  // a striped target's chunk (ti->max_io_len).
  uint32_t max_io_len = 0;
  unsigned num_flush_bios = 1;         // clones per empty flush
  unsigned num_discard_bios = 0;       // 0: discards not supported
  unsigned num_write_zeroes_bios = 0;  // 0: write-zeroes not supported

 private:
  friend class Table;
  uint64_t begin_ = 0;
  uint64_t length_ = 0;
  MappedDevice* md_ = nullptr;
};

// Per-clone helpers for targets.
//
// The target's scratch space for this clone (TargetType::per_io_bytes of
// it; dm_per_bio_data), aligned to 16 bytes and free from map() to the end
// of end_io().
void* target_per_io(Bio& clone);
// Which of the num_*_bios clones of an empty flush, a discard or
// write-zeroes this is (dm_bio_get_target_bio_nr); 0 for reads and writes.
unsigned target_bio_nr(const Bio& clone);
// Makes `dst` (a reset bio, from a pool, without a callback) a clone of
// `src`'s remaining range: the same device, op, sector, flags, priority
// and memory (no data copied; bio_alloc_clone).
void clone_bio(const Bio& src, Bio& dst);
// Where the clone started when the core handed it to map(): for a target
// that sends it again (Bio::restart) after end_io() returned kIncomplete.
const BioStart& target_io_start(const Bio& clone);

// A kind of target (struct target_type).
struct TargetType {
  std::string_view name;  // "linear"
  // The version `dmsetup targets` prints: {1, 4, 0}.
  unsigned version[3];
  // Bytes of target_per_io() each clone carries (at most kMaxPerIoBytes).
  size_t per_io_bytes;
  // The constructor (ctr): checks `args` and makes the target. Throws
  // Error with a message saying what is wrong with which argument; the
  // table adds the line it came from.
  std::unique_ptr<Target> (*create)(TargetContext& ctx, TargetArgs args);
  static constexpr size_t kMaxPerIoBytes = 96;
};

// The built-in types, then the registered ones in the order they came.
std::vector<const TargetType*> target_types();
const TargetType* find_target_type(std::string_view name);
// Adds a type for the life of the program. Throws Error if the name is
// taken or per_io_bytes is over kMaxPerIoBytes. Thread-safe.
void register_target_type(const TargetType& type);

// Argument helpers for constructors: the value, or Error naming `what` and
// the valid range ("invalid chunk size '0': valid 8 to 2^31").
uint64_t parse_target_u64(std::string_view arg, std::string_view what, uint64_t min,
                          uint64_t max);

}  // namespace blkstack
