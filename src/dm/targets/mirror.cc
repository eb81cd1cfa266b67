// mirror: RAID1 over N legs (the kernel's dm-raid1.c with a core dirty log).
//
//   mirror core <#log_args> <region_size> [sync|nosync]
//          <#legs> <dev> <offset> ... [<#features> handle_errors]
//
// Writes go to every leg that has not failed and complete when all of them
// did. With handle_errors a leg whose I/O fails is taken out (an event is
// raised, its status letter turns from A to D or R) and the bio succeeds
// if one leg did; without it the error goes up, as dm-mirror does. Reads
// go round robin to legs in sync; a failed read is retried on another leg.
//
// Resynchronisation: a core log keeps nothing across a table load, so a
// new table starts with every region out of sync (unless "nosync") and a
// thread of the target's own (kmirrord and kcopyd's part), from the first
// resume, copies region by region from the default leg (the first one that
// has not failed: list the good leg first when a leg comes back) to the
// others. Writes to a region being copied wait on a list and go on once it
// is in sync; the copy waits for writes already in flight to it. Nothing
// waits in map(). Progress is in `dmsetup status` as dm-mirror prints it:
//   <#legs> <dev>... <in sync regions>/<regions> 1 <health letters> 1 core
// A leg comes back with a table load that lists it again (dm-mirror has no
// message for it).
#include <fmt/format.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include "blkstack/bioset.h"
#include "blkstack/completion.h"
#include "blkstack/driver/target.h"
#include "blkstack/error.h"
#include "blkstack/submit.h"

namespace blkstack {
namespace {

constexpr unsigned kMaxLegs = 8;

enum RegionState : uint8_t { kInSync, kOutOfSync, kRecovering };

struct Leg {
  TargetDevice dev;
  uint64_t start = 0;
  std::atomic<bool> failed{false};
  std::atomic<char> health{'A'};
};

// Per clone (fits TargetType::kMaxPerIoBytes).
class Mirror;
struct MirrorIo {
  Mirror* self;
  std::array<Bio*, kMaxLegs> subs;  // a write's bio per leg
  std::atomic<uint32_t> remaining;
  std::atomic<bool> any_ok;
  std::atomic<Status> error;
  uint8_t read_leg;
  uint8_t read_tries;
};
static_assert(sizeof(MirrorIo) <= TargetType::kMaxPerIoBytes);

class Mirror final : public Target {
 public:
  std::vector<std::unique_ptr<Leg>> legs;
  uint64_t region_size = 0;  // sectors, a power of two
  uint64_t nr_regions = 0;
  bool handle_errors = false;
  bool nosync = false;
  unsigned log_argc = 1;

  Mirror() : pool_("mirror", 64) {}

  ~Mirror() override {
    {
      std::lock_guard lock(lock_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  void start() {
    state_ = std::make_unique<std::atomic<uint8_t>[]>(nr_regions);
    inflight_ = std::make_unique<std::atomic<uint32_t>[]>(nr_regions);
    for (uint64_t r = 0; r < nr_regions; ++r) {
      state_[r].store(nosync ? kInSync : kOutOfSync);
      inflight_[r].store(0);
    }
    sync_count_.store(nosync ? nr_regions : 0);
  }

  MapResult map(Bio& clone) override {
    auto* io = new (target_per_io(clone)) MirrorIo{};
    io->self = this;
    if (clone.op() == Op::kRead) {
      const int leg = pick_read_leg(region_of(offset(clone.sector())));
      if (leg < 0) return MapResult::kKill;
      io->read_leg = static_cast<uint8_t>(leg);
      remap(clone, leg);
      return MapResult::kRemapped;
    }
    write(clone);  // sent, or waiting to be sent
    return MapResult::kSubmitted;
  }

  EndIoResult end_io(Bio& clone, Status& status) override {
    if (clone.op() != Op::kRead || status == Status::kOk || status_is_busy(status))
      return EndIoResult::kDone;
    auto* io = static_cast<MirrorIo*>(target_per_io(clone));
    fail_leg(io->read_leg, 'R');
    if (!handle_errors || ++io->read_tries >= legs.size()) return EndIoResult::kDone;
    const int leg = pick_read_leg(region_of(offset(target_io_start(clone).iter.sector)));
    if (leg < 0) return EndIoResult::kDone;
    io->read_leg = static_cast<uint8_t>(leg);
    clone.restart(target_io_start(clone));
    remap(clone, leg);
    submit_bio(clone);
    return EndIoResult::kIncomplete;
  }

  std::string table() const override {
    std::string out = fmt::format("core {} {}", log_argc, region_size);
    if (log_argc == 2) out += nosync ? " nosync" : " sync";
    out += fmt::format(" {}", legs.size());
    for (const auto& l : legs) out += fmt::format(" {} {}", l->dev.devt(), l->start);
    if (handle_errors) out += " 1 handle_errors";
    return out;
  }

  std::string status() const override {
    std::string out = fmt::format("{}", legs.size());
    std::string health;
    for (const auto& l : legs) {
      out += " " + l->dev.devt();
      health += l->health.load();
    }
    out += fmt::format(" {}/{} 1 {} 1 core", sync_count_.load(), nr_regions, health);
    return out;
  }

  void iterate_devices(const DeviceFn& fn) const override {
    for (const auto& l : legs) fn(*l->dev.bdev, l->start, length());
  }

  // Holds the resync (so that a suspended device does no I/O).
  void presuspend(bool noflush) override {
    (void)noflush;
    std::lock_guard lock(lock_);
    paused_ = true;
  }
  void postsuspend() override {
    std::unique_lock lock(lock_);
    cv_.wait(lock, [&] { return !copying_; });
  }
  // The resync starts when the table goes live, as dm-raid1 starts its
  // recovery in mirror_resume(): a table only loaded must not copy while
  // the old one still writes to the legs, and the core sets length() after
  // create() returns.
  void resume() override {
    {
      std::lock_guard lock(lock_);
      paused_ = false;
    }
    cv_.notify_all();
    if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
  }

 private:
  uint64_t region_of(uint64_t target_sector) const { return target_sector / region_size; }

  void remap(Bio& b, int leg) {
    b.set_dev(*legs[leg]->dev.bdev, legs[leg]->start + offset(b.sector()));
  }

  // The default leg: the first that has not failed.
  int default_leg() const {
    for (size_t i = 0; i < legs.size(); ++i)
      if (!legs[i]->failed.load()) return static_cast<int>(i);
    return -1;
  }

  int pick_read_leg(uint64_t region) {
    if (state_[region].load() != kInSync) return default_leg();
    const size_t n = legs.size();
    const size_t first = next_read_.fetch_add(1, std::memory_order_relaxed);
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (first + k) % n;
      if (!legs[i]->failed.load()) return static_cast<int>(i);
    }
    return -1;
  }

  void fail_leg(unsigned i, char why) {
    if (!handle_errors) return;
    if (legs[i]->failed.exchange(true)) return;
    legs[i]->health.store(why);
    fmt::print(stderr, "mirror: leg {} failed ({}), taken out\n", legs[i]->dev.devt(),
               why);
    event();
  }

  // Counts the write in every region it touches, unless one is being
  // copied: then it waits on deferred_ (false).
  bool enter_regions(Bio& clone) {
    const uint64_t first = region_of(offset(clone.sector()));
    const uint64_t last =
        region_of(offset(clone.sector()) + std::max(clone.sectors(), 1u) - 1);
    for (uint64_t r = first; r <= last; ++r) inflight_[r].fetch_add(1);
    for (uint64_t r = first; r <= last; ++r) {
      if (state_[r].load() != kRecovering) continue;
      leave_regions(clone);
      std::lock_guard lock(lock_);
      if (state_[r].load() == kRecovering) {  // still: the copy releases it
        deferred_.push_back(&clone);
        return false;
      }
      return enter_regions(clone);
    }
    return true;
  }

  void leave_regions(const Bio& clone) {
    const uint64_t first = region_of(offset(clone.sector()));
    const uint64_t last =
        region_of(offset(clone.sector()) + std::max(clone.sectors(), 1u) - 1);
    bool wake = false;
    for (uint64_t r = first; r <= last; ++r)
      if (inflight_[r].fetch_sub(1) == 1 && state_[r].load() == kRecovering) wake = true;
    if (wake) {
      std::lock_guard lock(lock_);
      cv_.notify_all();
    }
  }

  // Sends a write (or flush, discard) to every leg that has not failed.
  // False if it waits instead: for a region being copied, or for a bio of
  // the pool (it goes again when one comes back).
  bool write(Bio& clone) {
    const bool ranged = clone.op() != Op::kFlush;
    if (ranged && !enter_regions(clone)) return false;
    auto* io = static_cast<MirrorIo*>(target_per_io(clone));
    unsigned n = 0;
    for (size_t i = 0; i < legs.size(); ++i) {
      io->subs[i] = nullptr;
      if (legs[i]->failed.load()) continue;
      Bio* b = pool_.alloc(Wait::kNoWait);
      if (!b) {
        for (size_t j = 0; j < i; ++j)
          if (io->subs[j]) io->subs[j]->put();
        if (ranged) leave_regions(clone);
        std::lock_guard lock(lock_);
        no_mem_.push_back(&clone);
        return false;
      }
      clone_bio(clone, *b);
      b->set_end_io(&Mirror::write_done, &clone);
      b->set_dev(*legs[i]->dev.bdev, legs[i]->start + offset(clone.sector()));
      io->subs[i] = b;
      ++n;
    }
    if (n == 0) {
      if (ranged) leave_regions(clone);
      clone.complete(Status::kIoError);
      return true;
    }
    io->remaining.store(n);
    // From a copy: once the last leg's bio is sent the clone may complete
    // and be reused, so neither it nor `io` is read after that.
    const std::array<Bio*, kMaxLegs> subs = io->subs;
    const size_t nlegs = legs.size();
    for (size_t i = 0; i < nlegs; ++i)
      if (subs[i]) submit_bio(*subs[i]);
    return true;
  }

  static void write_done(Bio& b) {
    Bio& clone = *static_cast<Bio*>(b.context());
    auto* io = static_cast<MirrorIo*>(target_per_io(clone));
    Mirror* self = io->self;
    unsigned leg = 0;
    while (io->subs[leg] != &b) ++leg;
    const Status s = b.status();
    if (s == Status::kOk) {
      io->any_ok.store(true);
    } else {
      Status expected = Status::kOk;
      io->error.compare_exchange_strong(expected, s);
      self->fail_leg(leg, 'D');
    }
    b.put();
    self->retry_no_mem();
    if (io->remaining.fetch_sub(1) != 1) return;
    if (clone.op() != Op::kFlush) self->leave_regions(clone);
    const Status err = io->error.load();
    const bool ok = err == Status::kOk || (self->handle_errors && io->any_ok.load());
    clone.complete(ok ? Status::kOk : err);
  }

  void retry_no_mem() {
    BioList again;
    {
      std::lock_guard lock(lock_);
      if (no_mem_.empty()) return;
      again.splice_back(no_mem_);
    }
    while (Bio* b = again.pop_front()) write(*b);
  }

  // --- the resync thread ---------------------------------------------------
  static void wake_waiter(Bio& bio) {
    static_cast<Completion*>(bio.context())->complete();
  }

  Status sync_io(Op op, int leg, std::byte* buf, uint64_t sector, uint32_t bytes) {
    Completion done;
    Bio bio;
    Segment seg(buf, bytes);
    bio.init(legs[leg]->dev.bdev.get(), op, legs[leg]->start + sector, {&seg, 1},
             wake_waiter, &done);
    submit_bio(bio);
    done.wait("mirror resync");
    return bio.status();
  }

  // Copies region `r` from the default leg to the others.
  void recover(uint64_t r, std::vector<std::byte>& buf) {
    const uint64_t first = r * region_size;
    const uint64_t sectors = std::min(region_size, length() - first);
    const int src = default_leg();
    if (src < 0) return;
    constexpr uint64_t kChunk = 256;  // sectors per copy I/O
    for (uint64_t s = first; s < first + sectors; s += kChunk) {
      const uint32_t bytes =
          static_cast<uint32_t>(std::min(kChunk, first + sectors - s) << kSectorShift);
      if (sync_io(Op::kRead, src, buf.data(), s, bytes) != Status::kOk) {
        fail_leg(static_cast<unsigned>(src), 'S');
        return;
      }
      for (size_t i = 0; i < legs.size(); ++i) {
        if (static_cast<int>(i) == src || legs[i]->failed.load()) continue;
        if (sync_io(Op::kWrite, static_cast<int>(i), buf.data(), s, bytes) != Status::kOk)
          fail_leg(static_cast<unsigned>(i), 'S');
      }
    }
  }

  void run() {
    std::vector<std::byte> buf(256 << kSectorShift);
    for (uint64_t r = 0; r < nr_regions; ++r) {
      std::unique_lock lock(lock_);
      cv_.wait(lock, [&] { return stop_ || !paused_; });
      if (stop_) return;
      if (state_[r].load() == kInSync) continue;
      // Stop new writes to the region, then wait for those in flight.
      state_[r].store(kRecovering);
      copying_ = true;
      cv_.wait(lock, [&] { return inflight_[r].load() == 0; });
      lock.unlock();
      recover(r, buf);
      lock.lock();
      state_[r].store(kInSync);
      sync_count_.fetch_add(1);
      copying_ = false;
      BioList again;
      again.splice_back(deferred_);
      lock.unlock();
      cv_.notify_all();
      while (Bio* b = again.pop_front()) write(*b);
      if (r + 1 == nr_regions) event();  // in sync: dm raises an event too
    }
  }

  BioSet pool_;
  std::unique_ptr<std::atomic<uint8_t>[]> state_;
  std::unique_ptr<std::atomic<uint32_t>[]> inflight_;
  std::atomic<uint64_t> sync_count_{0};
  std::atomic<size_t> next_read_{0};
  std::mutex lock_;
  std::condition_variable cv_;
  BioList deferred_;  // writes to a region being copied
  BioList no_mem_;    // writes that found no bio free
  bool stop_ = false;
  bool paused_ = false;
  bool copying_ = false;
  std::thread thread_;
};

std::unique_ptr<Target> create(TargetContext& ctx, TargetArgs args) {
  size_t i = 0;
  auto next = [&](std::string_view what) -> const std::string& {
    if (i >= args.size()) throw Error(fmt::format("mirror: missing {}", what));
    return args[i++];
  };
  auto t = std::make_unique<Mirror>();
  if (next("log type") != "core")
    throw Error(
        "mirror: only the 'core' log is supported (a disk log needs a log device)");
  t->log_argc =
      static_cast<unsigned>(parse_target_u64(next("#log args"), "#log args", 1, 2));
  t->region_size = parse_target_u64(next("region size"), "region size", 8, 1u << 30);
  if (t->region_size & (t->region_size - 1))
    throw Error(
        fmt::format("mirror: region size {} is not a power of two", t->region_size));
  if (t->log_argc == 2) {
    const std::string& s = next("sync|nosync");
    if (s != "sync" && s != "nosync")
      throw Error(fmt::format("mirror: log argument '{}' (valid: sync, nosync)", s));
    t->nosync = s == "nosync";
  }
  const uint64_t n = parse_target_u64(next("#legs"), "number of legs", 2, kMaxLegs);
  for (uint64_t k = 0; k < n; ++k) {
    auto leg = std::make_unique<Leg>();
    const std::string& name = next("leg device");
    leg->dev = ctx.open_device(name);
    leg->start = parse_target_u64(next("leg offset"), "offset", 0, UINT64_MAX >> 10);
    if (leg->start + ctx.length() > (leg->dev.bdev->size_bytes() >> kSectorShift))
      throw Error(fmt::format("mirror: leg {} at {} is shorter than {} sectors", name,
                              leg->start, ctx.length()));
    t->legs.push_back(std::move(leg));
  }
  if (i < args.size()) {
    const uint64_t nf = parse_target_u64(next("#features"), "#features", 0, 1);
    if (nf == 1) {
      const std::string& f = next("feature");
      if (f != "handle_errors")
        throw Error(fmt::format("mirror: unknown feature '{}'", f));
      t->handle_errors = true;
    }
  }
  if (i != args.size()) throw Error("mirror: too many arguments");
  t->nr_regions = (ctx.length() + t->region_size - 1) / t->region_size;
  t->num_flush_bios = 1;
  t->num_discard_bios = 1;
  t->max_io_len = static_cast<uint32_t>(std::min<uint64_t>(t->region_size, UINT32_MAX));
  t->start();
  return t;
}

}  // namespace

extern const TargetType kMirrorTarget{"mirror", {1, 14, 0}, sizeof(MirrorIo), create};

}  // namespace blkstack
