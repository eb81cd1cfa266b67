#include "blkstack/submit.h"

#include "blkstack/debug/submit_context.h"
#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "core/bio_gate.h"

namespace blkstack {
namespace {

// The bios submitted by the driver call running on this thread, or null when
// no submit_bio() is active (the kernel's current->bio_list).
thread_local BioList* tls_bio_list = nullptr;
// Work for this thread's submit loop besides bios, run when its list is
// empty: gates to drain (linked through next_pending) and bios a plug
// gathered for gated disks. Never nested inside a driver call.
thread_local BioGate* tls_gates = nullptr;
thread_local BioList tls_plugged;

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
  // Rare: a split remainder (checked again below) or a bio its bio-based
  // driver held part way and sends on (not checked again: pieces of it are
  // out). One compare on the plain path, of a field read below anyway.
  if (bio.acct_disk == disk && disk->driver().continues(bio)) [[unlikely]] {
    if (disk->gated())
      disk->bio_gate().submit(bio);
    else
      disk->driver().submit(bio);
    return;
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
  // One predictable branch for the plain path: a disk that declared
  // nothing and is not busy has no gate in the way.
  if (disk->gated()) [[unlikely]]
    disk->bio_gate().submit(*front);
  else
    disk->driver().submit(*front);
}

// Runs one piece of work queued for the loop; returns the disk it was for.
const Disk* run_job() {
  if (BioGate* g = tls_gates) {
    tls_gates = g->next_pending;
    g->next_pending = nullptr;
    g->drain();
    return &g->disk();
  }
  // Plugged bios, one batch per disk, in the order they were gathered.
  BioList all;
  all.splice_back(tls_plugged);
  Disk* disk = all.front()->disk();
  BioList mine, rest;
  while (Bio* b = all.pop_front()) (b->disk() == disk ? mine : rest).push_back(b);
  tls_plugged.splice_back(rest);
  disk->bio_gate().submit_batch(mine);
  return disk;
}

bool have_jobs() { return tls_gates != nullptr || !tls_plugged.empty(); }

// Lower devices first, then `disk`'s own, then the older siblings.
void order_new(BioList (&on_stack)[2], const Disk* disk) {
  BioList lower, same;
  while (Bio* b = on_stack[0].pop_front()) {
    (b->disk() == disk ? same : lower).push_back(b);
  }
  on_stack[0].splice_back(lower);
  on_stack[0].splice_back(same);
  on_stack[0].splice_back(on_stack[1]);
}

// The submit loop of a thread: `next` (may be null) and then whatever the
// driver calls queue, bios or jobs, until nothing is left.
[[gnu::always_inline]] inline void submit_loop(Bio* next) {
  BioList on_stack[2];
  tls_bio_list = &on_stack[0];
  for (;;) {
    while (next != nullptr) {
      const Disk* disk = next->disk();
      // A fresh list for what this bio's driver submits; earlier work waits.
      on_stack[1] = on_stack[0];
      on_stack[0] = BioList();
      submit_one(*next);
      order_new(on_stack, disk);
      next = on_stack[0].pop_front();
    }
    // Checked once the list is empty: nothing on the plain path per bio.
    if (!have_jobs()) [[likely]]
      break;
    on_stack[1] = BioList();
    order_new(on_stack, run_job());
    next = on_stack[0].pop_front();
  }
  tls_bio_list = nullptr;
}

}  // namespace

void schedule_gate_drain(BioGate& gate) {
  gate.next_pending = tls_gates;
  tls_gates = &gate;
  if (tls_bio_list == nullptr) submit_loop(nullptr);
}

void submit_plugged_bios(BioList& bios) {
  tls_plugged.splice_back(bios);
  if (tls_bio_list == nullptr) submit_loop(nullptr);
}

void submit_bio(Bio& bio) {
  if (tls_bio_list != nullptr) {  // inside a driver's submit: queue it
    tls_bio_list->push_back(&bio);
    return;
  }
  submit_loop(&bio);
}

}  // namespace blkstack
