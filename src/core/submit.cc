#include "blkstack/submit.h"

#include "blkstack/debug/submit_context.h"
#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"

namespace blkstack {
namespace {

// The bios submitted by the driver call running on this thread, or null when
// no submit_bio() is active (the kernel's current->bio_list).
thread_local BioList* tls_bio_list = nullptr;

constexpr BioFlag kCacheFlags = BioFlag::kPreflush | BioFlag::kFua;

Status check_bio(const Bio& bio, const Disk& disk) {
  const QueueLimits& lim = disk.limits();
  const Op op = bio.op();
  if (op == Op::kFlush) return Status::kOk;
  if (op_is_write(op) && disk.read_only()) return Status::kReadOnly;
  const uint64_t lbs_sectors = lim.logical_block_size >> kSectorShift;
  if ((bio.size() & (kSectorSize - 1)) != 0 ||
      ((bio.sector() | bio.sectors()) & (lbs_sectors - 1)) != 0)
    return Status::kInvalid;
  const uint64_t capacity = disk.capacity();
  if (bio.sector() > capacity || bio.sectors() > capacity - bio.sector())
    return Status::kOutOfRange;
  if (op == Op::kDiscard && lim.max_discard_sectors == 0) return Status::kNotSupported;
  if (op == Op::kWriteZeroes && lim.max_write_zeroes_sectors == 0)
    return Status::kNotSupported;
  return Status::kOk;
}

// Checks, accounts, splits and dispatches one bio to its disk's driver.
void submit_one(Bio& bio) {
  Disk* disk = bio.disk();
  if (disk == nullptr) debug::fatal("submit_bio: the bio has no disk");
  if (BioSet* pool = bio.pool()) pool->mempool().disown(&bio);
  // The whole of it, not just the driver call: a bio refused below completes
  // here too, and its callback waiting for new I/O would wait forever (that
  // I/O is only queued on this thread's list).
  debug::SubmitScope scope(disk->name().c_str());
  Disk::SubmitGuard guard(*disk);

  // An address compare, no load: the whole-disk path costs nothing more.
  if (bio.bdev() != &disk->part0()) [[unlikely]] {
    // Checked against the partition, then addressed to the whole disk;
    // the partition counts it too (blk_partition_remap).
    if (Status s = bio.bdev()->remap_to_disk(bio); s != Status::kOk) {
      bio.complete(s);
      return;
    }
  }
  if (Status s = check_bio(bio, *disk); s != Status::kOk) {
    // A remainder back from waiting for a split bio (the disk shrank or
    // turned read-only meanwhile) gives back the one it was handed.
    disk->split_set().drop_handed(bio);
    bio.complete(s);
    return;
  }
  // Without a volatile cache every completed write is already durable:
  // PREFLUSH and FUA mean nothing, and an empty flush is done at once.
  if (!disk->write_cache() && any(bio.flags() & kCacheFlags)) {
    bio.clear_flags(kCacheFlags);
  }
  // Nobody would complete a polled bio on a disk that cannot be polled.
  if (bio.has_flag(BioFlag::kPolled) && !disk->driver().can_poll()) {
    bio.clear_flags(BioFlag::kPolled);
  }
  if (bio.size() == 0 && (bio.op() != Op::kFlush || !disk->write_cache())) {
    bio.complete(Status::kOk);
    return;
  }
  if (bio.acct_disk == nullptr && !disk->start_io(bio)) {
    disk->refused(bio);  // dying: fails; frozen: parks until unfrozen
    return;
  }
  Status split_error = Status::kOk;
  Bio* front = split_to_limits(bio, disk->limits(), disk->split_set(), &split_error);
  if (front == nullptr) {
    if (split_error == Status::kResource) {
      // Out of split bios: back-pressure, not an error (DESIGN.md invariant
      // 4). It waits, holding its accounting, until one of its disk's split
      // bios comes back, and then goes on from here; this thread does not
      // wait.
      disk->split_set().park(bio);
      return;
    }
    bio.complete(split_error);
    return;
  }
  if (front != &bio) {
    // The rest goes back on this thread's list, after what the driver
    // submits; the piece is on its way back to the pool.
    tls_bio_list->push_back(&bio);
    disk->split_set().mempool().disown(front);
  }
  disk->driver().submit(*front);
}

}  // namespace

void submit_bio(Bio& bio) {
  if (tls_bio_list != nullptr) {  // inside a driver's submit: queue it
    tls_bio_list->push_back(&bio);
    return;
  }
  BioList on_stack[2];
  tls_bio_list = &on_stack[0];
  Bio* next = &bio;
  do {
    const Disk* disk = next->disk();
    // A fresh list for what this bio's driver submits; earlier work waits.
    on_stack[1] = on_stack[0];
    on_stack[0] = BioList();
    submit_one(*next);
    // Lower devices first, then this device's own, then the older siblings.
    BioList lower, same;
    while (Bio* b = on_stack[0].pop_front()) {
      (b->disk() == disk ? same : lower).push_back(b);
    }
    on_stack[0].splice_back(lower);
    on_stack[0].splice_back(same);
    on_stack[0].splice_back(on_stack[1]);
  } while ((next = on_stack[0].pop_front()) != nullptr);
  tls_bio_list = nullptr;
}

}  // namespace blkstack
