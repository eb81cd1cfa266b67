#include "dm/mapped_device.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <utility>

#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/error.h"
#include "blkstack/submit.h"
#include "core/percpu.h"

namespace blkstack {
namespace {

// A bio cut into several pieces counts them in its driver_data (the bio is
// this driver's until it completes): in the low bits the pieces still out,
// plus one held while they are being sent; above them how many pieces were
// sent so far (where to go on after waiting for clones); a bit for "a piece
// asked for a requeue", and one for "these are a PREFLUSH's flushes: the
// data goes after them".
constexpr uint64_t kRequeueBit = uint64_t{1} << 63;
constexpr uint64_t kDataNextBit = uint64_t{1} << 62;
constexpr unsigned kSentShift = 32;
constexpr uint64_t kCountMask = (uint64_t{1} << kSentShift) - 1;
constexpr uint64_t kSentMask = (kDataNextBit - 1) & ~kCountMask;
constexpr uint64_t kOnePiece = 1 | (uint64_t{1} << kSentShift);  // out and sent

// Bios up to Bio's own ceiling pass through uncut: the devices below split
// them to their limits, so a layer adds no split of its own.
constexpr uint32_t kMaxSectors = (UINT32_MAX >> kSectorShift) & ~7u;

// Clones made per range for `op` by `t`.
unsigned bios_for(const Target& t, Op op) {
  switch (op) {
    case Op::kRead:
    case Op::kWrite:
      return 1;
    case Op::kFlush:
      return t.num_flush_bios;
    case Op::kDiscard:
      return t.num_discard_bios;
    case Op::kWriteZeroes:
      return t.num_write_zeroes_bios;
  }
  return 0;
}

// The end of the piece that starts at `sector` inside `t`: the target's
// end or its next max_io_len boundary, whichever comes first.
uint64_t piece_end(const Target& t, uint64_t sector) {
  uint64_t end = t.begin() + t.length();
  if (t.max_io_len != 0) [[unlikely]] {
    const uint64_t off = t.offset(sector);
    end = std::min(end, t.begin() + (off / t.max_io_len + 1) * t.max_io_len);
  }
  return end;
}

// Whether `bio` is first a flush of every target: an empty flush, or a
// PREFLUSH whose data waits for those flushes (dm's __send_empty_flush and
// then, from dm_io_complete, the data without the PREFLUSH).
bool flush_phase(const Bio& bio) {
  return bio.op() == Op::kFlush || bio.has_flag(BioFlag::kPreflush);
}

// Calls fn(target, sector, sectors, bio_nr, flush_only) for each piece of
// `bio`, until fn returns false: in its flush phase, a flush for each
// target; else its data, cut at targets and max_io_len boundaries. Returns
// Status::kNotSupported if some range's target takes no bios of this op.
template <class Fn>
Status for_each_piece(const Bio& bio, const Table& table, Fn&& fn) {
  Status s = Status::kOk;
  if (flush_phase(bio)) {
    for (size_t i = 0; i < table.num_targets(); ++i) {
      Target& t = table.target(i);
      for (unsigned nr = 0; nr < t.num_flush_bios; ++nr) {
        if (!fn(t, t.begin(), 0, nr, true)) return s;
      }
    }
    return s;
  }
  uint64_t sector = bio.sector();
  while (sector < bio.end_sector()) {
    Target& t = *table.find(sector);
    const uint64_t end = std::min(piece_end(t, sector), bio.end_sector());
    const unsigned n = bios_for(t, bio.op());
    if (n == 0) s = Status::kNotSupported;
    for (unsigned nr = 0; nr < n; ++nr) {
      if (!fn(t, sector, end - sector, nr, false)) return s;
    }
    sector = end;
  }
  return s;
}

}  // namespace

MappedDevice::MappedDevice(DiskRegistry& registry, std::string uuid)
    : registry_(registry), uuid_(std::move(uuid)), pool_("dm-io", 16) {}

MappedDevice::~MappedDevice() {
  for (CloneSlot& c : clone_cache_) delete c.idle.load(std::memory_order_acquire);
}

MappedDevice& MappedDevice::create(DiskRegistry& registry, const std::string& name,
                                   const std::string& uuid, std::string_view table) {
  if (name.empty() || name.find_first_of("/ \t\n:") != std::string::npos) {
    throw Error(fmt::format("bad device name '{}': no '/', ':' or blanks", name));
  }
  if (registry.find(name)) throw Error(fmt::format("device {} already exists", name));
  std::unique_ptr<MappedDevice> md(new MappedDevice(registry, uuid));
  std::unique_ptr<Table> t;
  if (!table.empty()) t = Table::build(registry, name, table);
  QueueLimits lim;
  lim.max_hw_sectors = lim.max_sectors = kMaxSectors;
  lim.max_segments = UINT16_MAX;
  lim.max_segment_size = UINT32_MAX;
  // Without a table, a device ready for any table of 512-byte devices.
  lim.volatile_write_cache = lim.fua = true;
  if (t) {
    const QueueLimits& tl = t->limits();
    lim.logical_block_size = tl.logical_block_size;
    lim.physical_block_size = tl.physical_block_size;
    lim.max_discard_sectors = tl.max_discard_sectors != 0 ? kMaxSectors : 0;
    lim.max_write_zeroes_sectors = tl.max_write_zeroes_sectors != 0 ? kMaxSectors : 0;
    lim.discard_granularity = tl.discard_granularity;
    lim.rotational = tl.rotational;
    // The clones carry the caller's memory down as it is.
    lim.seg_boundary_mask = tl.seg_boundary_mask;
    lim.dma_alignment = tl.dma_alignment;
    lim.virt_boundary_mask = tl.virt_boundary_mask;
    lim.max_segment_size &= ~tl.virt_boundary_mask;  // whole virt units
    lim.volatile_write_cache = lim.fua = t->write_cache();
    t->set_owner(md.get());
    md->live_.store(t.get(), std::memory_order_release);
    md->live_table_ = std::move(t);
    // dmsetup create is a load and a resume: the targets' resume hooks run
    // (a mirror starts its resync there).
    for (size_t i = 0; i < md->live_table_->num_targets(); ++i) {
      md->live_table_->target(i).preresume();
      md->live_table_->target(i).resume();
    }
  }
  MappedDevice& ref = *md;
  const uint64_t size = ref.live_table_ ? ref.live_table_->size() : 0;
  auto disk = std::make_shared<Disk>(name, size, lim, std::move(md));
  disk->set_partscan(false);  // the kernel never scans a dm disk (GENHD_FL_NO_PART)
  registry.add(std::move(disk), "device-mapper");
  return ref;
}

MappedDevice* MappedDevice::of(Disk& disk) {
  return dynamic_cast<MappedDevice*>(&disk.driver());
}

const std::string& MappedDevice::name() const { return disk_->name(); }

bool MappedDevice::depends_on(Disk& disk, std::string_view name) {
  MappedDevice* md = of(disk);
  if (!md) return false;
  std::vector<Disk*> below;
  {
    std::lock_guard lock(md->ctl_lock_);
    for (const Table* t : {md->live_table_.get(), md->inactive_.get()}) {
      if (!t) continue;
      for (BlockDevice* d : t->devices()) below.push_back(&d->disk());
    }
  }
  for (Disk* d : below) {
    if (d->name() == name || depends_on(*d, name)) return true;
  }
  return false;
}

// --- the I/O path -------------------------------------------------------------

void MappedDevice::submit(Bio& bio) {
  const Table* t = live_.load(std::memory_order_acquire);
  if (t == nullptr) [[unlikely]] {
    bio.complete(Status::kIoError);  // no table: as dm without a live map
    return;
  }
  // Out of clones: a bio coming back from park() takes the clone handed to
  // it; a new one waits behind those parked before it (order kept, none
  // starved). seq_cst: pairs with park()'s increment.
  DmIo* handed = nullptr;
  if (waiting_.load(std::memory_order_seq_cst) != 0) [[unlikely]] {
    bool behind = false;
    {
      std::lock_guard lock(park_lock_);
      handed = take_handed(bio);
      behind = handed == nullptr && !parked_.empty();
    }
    if (behind) {
      bio.driver_data = 0;  // nothing sent yet
      park(bio, false);
      return;
    }
  }
  // The common case in one piece: a read or write inside one target (and a
  // flush of a table with one device to flush), cloned and mapped, no
  // countdown.
  const bool flushes = bio.op() == Op::kFlush || bio.has_flag(BioFlag::kPreflush);
  if (!flushes || (t->num_targets() == 1 && t->target(0).num_flush_bios == 1)) {
    Target& ti = *t->find(bio.op() == Op::kFlush ? 0 : bio.sector());
    if ((bio.op() == Op::kFlush || bio.end_sector() <= piece_end(ti, bio.sector())) &&
        bios_for(ti, bio.op()) == 1) [[likely]] {
      DmIo* io = handed != nullptr ? handed : alloc_io();
      if (io == nullptr) [[unlikely]] {
        bio.driver_data = 0;  // nothing sent yet
        park(bio, false);
        return;
      }
      clone_bio(bio, *io);
      io->orig = &bio;
      io->ti = &ti;
      io->md = this;
      io->bio_nr = 0;
      io->only = true;
      dispatch(*io);
      return;
    }
  }
  map_pieces(bio, *t, handed);
}

void MappedDevice::map_pieces(Bio& bio, const Table& table, DmIo* handed) {
  // A clone at a time, each mapped and sent before the next is taken (dm's
  // __split_and_process_bio): a bio of more pieces than the pool holds
  // goes on as its own pieces complete. When the pool runs dry the rest
  // parks, holding no clone, and goes on from the next piece when one
  // comes back (DESIGN.md invariant 4).
  std::atomic_ref<uint64_t> state(bio.driver_data);
  const bool from_park = handed != nullptr;
  // A bio parked part way through keeps its countdown (its hold is still
  // counted); one parked before its first piece starts like a new one.
  const bool resumed =
      from_park && (state.load(std::memory_order_relaxed) & kCountMask) != 0;
  const bool data_next = bio.op() != Op::kFlush && flush_phase(bio);
  uint64_t skip = 0;
  if (resumed) {
    skip = (state.load(std::memory_order_relaxed) & kSentMask) >> kSentShift;
  } else {
    bio.driver_data = 1 | (data_next ? kDataNextBit : 0);  // 1: the hold
  }
  // The pieces already sent are walked past again: only after waiting for
  // clones, so a rare path.
  uint64_t index = 0;
  bool dry = false;
  const Status unsupported = for_each_piece(
      bio, table,
      [&](Target& t, uint64_t sector, uint64_t sectors, unsigned nr, bool flush_only) {
        if (index < skip) {
          ++index;
          return true;
        }
        DmIo* io = handed != nullptr ? std::exchange(handed, nullptr) : alloc_io();
        if (io == nullptr) [[unlikely]] {
          dry = true;
          return false;
        }
        ++index;
        state.fetch_add(kOnePiece, std::memory_order_relaxed);  // before it can end
        if (flush_only) {
          io->init_nodata(bio.bdev(), Op::kFlush, sector, 0);
          io->set_flags(BioFlag::kPreflush);
          io->set_ioprio(bio.ioprio());
          io->set_issuer(bio.issuer());
        } else {
          clone_bio(bio, *io);
          io->clear_flags(BioFlag::kPreflush);  // sent to every target above
          const uint64_t skip_bytes = (sector - bio.sector()) << kSectorShift;
          if (skip_bytes != 0) io->advance(static_cast<uint32_t>(skip_bytes));
          io->truncate(static_cast<uint32_t>(sectors << kSectorShift));
        }
        io->orig = &bio;
        io->ti = &t;
        io->md = this;
        io->bio_nr = static_cast<uint16_t>(nr);
        io->only = false;
        dispatch(*io);
        return true;
      });
  if (handed != nullptr) free_io(*handed);  // handed to a bio of no pieces
  if (unsupported != Status::kOk) bio.set_status(unsupported);
  if (dry) {
    park(bio, from_park);  // back at the head if it came from there
    return;
  }
  if (index == 0) {  // no piece at all
    bio.driver_data = 0;
    if (data_next) {  // no target to flush: straight to the data
      bio.clear_flags(BioFlag::kPreflush);
      map_pieces(bio, table, nullptr);
      return;
    }
    bio.complete(unsupported);
    return;
  }
  const uint64_t before = state.fetch_sub(1, std::memory_order_acq_rel);  // the hold
  if ((before & kCountMask) == 1) done_orig(bio, bio.status(), before);
}

void MappedDevice::dispatch(DmIo& io) {
  io.set_end_io(&MappedDevice::clone_endio, this);
  // Field by field, each read as wide as clone_bio() just wrote it: a
  // BioStart or BioIter copied whole reads them back in wider pieces, which
  // stalls store forwarding on every clone.
  const BioIter& it = io.iter();
  io.saved.bdev = io.bdev();
  io.saved.iter.sector = it.sector;
  io.saved.iter.size = it.size;
  io.saved.iter.idx = it.idx;
  io.saved.iter.done = it.done;
  io.saved.flags = io.flags();
  if (io.home == 0) pool_.disown(&io);  // its completion frees it
  switch (io.ti->map(io)) {
    case MapResult::kRemapped:
      submit_bio(io);  // queued on this thread's list: no recursion
      return;
    case MapResult::kSubmitted:
      return;  // the target's now (it may be gone already)
    case MapResult::kKill:
      finish_piece(io, Status::kIoError, false);
      return;
    case MapResult::kRequeue:
      finish_piece(io, Status::kOk, true);
      return;
  }
}

void MappedDevice::clone_endio(Bio& clone) {
  DmIo& io = static_cast<DmIo&>(clone);
  Status s = clone.status();
  const EndIoResult r = io.ti->end_io(clone, s);
  if (r == EndIoResult::kIncomplete) return;  // the target goes on with it
  io.md->finish_piece(io, s, r == EndIoResult::kRequeue);
}

void MappedDevice::finish_piece(DmIo& io, Status status, bool requeue) {
  Bio& orig = *io.orig;
  const bool only = io.only;
  free_io(io);
  if (only) [[likely]] {
    done_orig(orig, status, requeue ? kRequeueBit : 0);
    return;
  }
  if (status != Status::kOk) orig.set_status(status);
  std::atomic_ref<uint64_t> count(orig.driver_data);
  if (requeue) count.fetch_or(kRequeueBit, std::memory_order_relaxed);
  const uint64_t before = count.fetch_sub(1, std::memory_order_acq_rel);
  if ((before & kCountMask) == 1) done_orig(orig, orig.status(), before);
}

void MappedDevice::done_orig(Bio& orig, Status status, uint64_t bits) {
  if ((bits & kDataNextBit) != 0 && (bits & kRequeueBit) == 0 && status == Status::kOk) {
    // Every target flushed: now the data, still accounted here.
    orig.clear_flags(BioFlag::kPreflush);
    submit_bio(orig);
    return;
  }
  if ((bits & kRequeueBit) != 0) [[unlikely]] {
    if (noflush_.load(std::memory_order_acquire)) {
      // Kept for after the resume, and no longer in flight here, so the
      // suspend's drain does not wait for it (dm's md->deferred).
      if (orig.acct_disk) orig.acct_disk->end_io(orig);
      orig.restart(BioStart{orig.bdev(), orig.iter(), orig.flags()});
      std::lock_guard lock(park_lock_);
      requeued_.push_back(&orig);
      return;
    }
    status = Status::kIoError;  // outside a noflush suspend, as dm does
  }
  orig.complete(status);
}

DmIo* MappedDevice::alloc_io() {
  const SlotRef slot = this_slot();
  if (slot.exclusive) [[likely]] {
    CloneSlot& c = clone_cache_[slot.index];
    if (DmIo* io = c.idle.load(std::memory_order_acquire)) [[likely]] {
      c.idle.store(nullptr, std::memory_order_relaxed);
      return io;
    }
    if (!c.made) [[unlikely]] {  // this thread's first clone here
      c.made = true;
      DmIo* io = new (std::nothrow) DmIo;
      if (io != nullptr) {
        io->home = static_cast<uint8_t>(slot.index + 1);
        return io;
      }
    }
  }
  return pool_.alloc(Wait::kNoWait);  // out (in flight), or a shared slot
}

void MappedDevice::free_io(DmIo& io) {
  if (io.home != 0) [[likely]] {
    // Its slot is empty while it is out, and only its owner takes from it.
    clone_cache_[io.home - 1].idle.store(&io, std::memory_order_release);
  } else {
    pool_.free(&io);
  }
  // seq_cst after the free: either park()'s look at the pool sees the
  // clone freed here, or this sees park()'s increment.
  if (waiting_.load(std::memory_order_seq_cst) != 0) [[unlikely]]
    resume_parked();
}

DmIo* MappedDevice::take_handed(const Bio& bio) {
  for (Bio* h = handed_.front(); h != nullptr; h = h->next) {
    DmIo* io = static_cast<DmIo*>(h);
    if (io->orig != &bio) continue;
    handed_.remove(h);  // short: one per bio being resumed right now
    waiting_.fetch_sub(1, std::memory_order_relaxed);
    return io;
  }
  return nullptr;
}

bool MappedDevice::continues(const Bio& bio) {
  // A bio handed a clone by resume_parked(), on its way back to submit().
  if (waiting_.load(std::memory_order_seq_cst) == 0) return false;
  std::lock_guard lock(park_lock_);
  for (const Bio* h = handed_.front(); h != nullptr; h = h->next) {
    if (static_cast<const DmIo*>(h)->orig == &bio) return true;
  }
  return false;
}

void MappedDevice::park(Bio& bio, bool front) {
  {
    std::lock_guard lock(park_lock_);
    if (front) {
      parked_.push_front(&bio);
    } else {
      parked_.push_back(&bio);
    }
    waiting_.fetch_add(1, std::memory_order_seq_cst);
  }
  // A clone freed between the failed allocation and the park saw nobody
  // waiting: look again now that this bio is visible.
  resume_parked();
}

void MappedDevice::resume_parked() {
  for (;;) {
    Bio* b = nullptr;
    {
      std::lock_guard lock(park_lock_);
      if (parked_.empty()) return;
      DmIo* spare = pool_.alloc(Wait::kNoWait);
      if (spare == nullptr) return;  // the next clone to come back resumes it
      b = parked_.pop_front();
      spare->orig = b;  // whose it is, until submit() takes it
      handed_.push_back(spare);
    }
    // Still accounted here: it goes on, not again. Inside a submit path it
    // is only queued, and takes its clone when this thread gets to it.
    submit_bio(*b);
  }
}

void MappedDevice::shutdown() {
  BioList requeued;
  {
    std::lock_guard lock(park_lock_);
    requeued.splice_back(requeued_);
  }
  while (Bio* b = requeued.pop_front()) b->complete(Status::kOffline);
}

// --- per-clone helpers for targets --------------------------------------------

void clone_bio(const Bio& src, Bio& dst) {
  if (op_has_data(src.op())) {
    // The whole segment table, then moved to where src is in it.
    const std::span<Segment> segs = src.segments();
    dst.init(src.bdev(), src.op(), src.sector(), segs);
    uint64_t skip = src.iter().done;
    for (uint16_t i = 0; i < src.iter().idx; ++i) skip += segs[i].len;
    if (skip != 0) dst.advance(static_cast<uint32_t>(skip));
    dst.set_sector(src.sector());
    dst.truncate(src.size());
  } else {
    dst.init_nodata(src.bdev(), src.op(), src.sector(), src.size());
  }
  dst.set_flags(src.flags());
  dst.set_ioprio(src.ioprio());
  dst.set_issuer(src.issuer());
}

void* target_per_io(Bio& clone) { return static_cast<DmIo&>(clone).per_io; }

unsigned target_bio_nr(const Bio& clone) {
  return static_cast<const DmIo&>(clone).bio_nr;
}

const BioStart& target_io_start(const Bio& clone) {
  return static_cast<const DmIo&>(clone).saved;
}

void Target::event() {
  if (md_) md_->raise_event();
}

// --- the control plane --------------------------------------------------------

void MappedDevice::load(std::string_view text) {
  std::unique_ptr<Table> t = Table::build(registry_, name(), text);
  t->set_owner(this);
  std::lock_guard lock(ctl_lock_);
  inactive_ = std::move(t);
}

void MappedDevice::clear_inactive() {
  std::unique_ptr<Table> old;
  std::lock_guard lock(ctl_lock_);
  old = std::move(inactive_);
}

void MappedDevice::suspend(bool noflush) {
  std::lock_guard lock(ctl_lock_);
  suspend_locked(noflush);
}

void MappedDevice::suspend_locked(bool noflush) {
  if (suspended_) return;
  Table* t = live_table_.get();
  noflush_.store(noflush, std::memory_order_release);
  if (t) {
    for (size_t i = 0; i < t->num_targets(); ++i) t->target(i).presuspend(noflush);
  }
  disk_->freeze();  // parks new bios, waits for those in the targets
  if (t) {
    for (size_t i = 0; i < t->num_targets(); ++i) t->target(i).postsuspend();
  }
  suspended_ = true;
}

void MappedDevice::resume() {
  std::lock_guard lock(ctl_lock_);
  if (!inactive_ && !live_table_) {
    throw Error(fmt::format("{}: no table to resume with: load one first", name()));
  }
  if (!inactive_ && !suspended_) return;
  if (inactive_) {
    const uint32_t lbs = disk_->limits().logical_block_size;
    if (inactive_->limits().logical_block_size > lbs) {
      throw Error(fmt::format(
          "{}: the new table's devices have {}-byte logical blocks; {} was made "
          "with {}: remove it and create it again",
          name(), inactive_->limits().logical_block_size, name(), lbs));
    }
    for (size_t i = 0; i < inactive_->num_targets(); ++i)
      inactive_->target(i).preresume();
    suspend_locked(false);  // dm suspends a live device before it swaps
  } else {
    for (size_t i = 0; i < live_table_->num_targets(); ++i) {
      live_table_->target(i).preresume();
    }
  }
  resume_locked();
}

void MappedDevice::resume_locked() {
  std::unique_ptr<Table> old;
  if (inactive_) {
    // Frozen: no bio is in a target nor in this driver's submit, so the
    // old table goes with nothing pointing into it.
    old = std::move(live_table_);
    live_table_ = std::move(inactive_);
    live_.store(live_table_.get(), std::memory_order_release);
    disk_->set_capacity(live_table_->size());
  }
  for (size_t i = 0; i < live_table_->num_targets(); ++i) live_table_->target(i).resume();
  old.reset();  // its claims go; the new table's were taken at load
  noflush_.store(false, std::memory_order_release);
  suspended_ = false;
  BioList requeued;
  {
    std::lock_guard plock(park_lock_);
    requeued.splice_back(requeued_);
  }
  disk_->unfreeze(requeued);  // the requeued first: they are the older
}

bool MappedDevice::suspended() const {
  std::lock_guard lock(ctl_lock_);
  return suspended_;
}

bool MappedDevice::has_live() const {
  std::lock_guard lock(ctl_lock_);
  return live_table_ != nullptr;
}

bool MappedDevice::has_inactive() const {
  std::lock_guard lock(ctl_lock_);
  return inactive_ != nullptr;
}

std::string MappedDevice::table_text(bool inactive) const {
  std::lock_guard lock(ctl_lock_);
  const Table* t = inactive ? inactive_.get() : live_table_.get();
  return t ? t->table_text() : std::string();
}

std::string MappedDevice::status_text() const {
  std::lock_guard lock(ctl_lock_);
  return live_table_ ? live_table_->status_text() : std::string();
}

std::string MappedDevice::message(uint64_t sector, std::span<const std::string> argv) {
  std::lock_guard lock(ctl_lock_);
  if (!live_table_) throw Error(fmt::format("{}: no live table", name()));
  if (sector >= live_table_->size()) {
    throw Error(fmt::format("{}: sector {} is past the end ({} sectors)", name(), sector,
                            live_table_->size()));
  }
  if (argv.empty()) throw Error(fmt::format("{}: an empty message", name()));
  return live_table_->find(sector)->message(argv);
}

size_t MappedDevice::live_targets() const {
  std::lock_guard lock(ctl_lock_);
  return live_table_ ? live_table_->num_targets() : 0;
}

std::vector<std::string> MappedDevice::lower_devices() const {
  std::lock_guard lock(ctl_lock_);
  std::vector<std::string> out;
  if (live_table_) {
    for (BlockDevice* d : live_table_->devices()) out.push_back(d->name());
  }
  return out;
}

}  // namespace blkstack
