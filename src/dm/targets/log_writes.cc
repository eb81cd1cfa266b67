// log-writes: passes all I/O to a device and logs every write, with its
// data, to a second device in the kernel's format (dm-log-writes.c;
// dm/log_writes_format.h), so that `blkstack replay-log` can rebuild the
// device as it was at any entry or mark.
//
//   log-writes <dev> <log_dev>          message: mark <name>
//
// Writes are logged in the order they became durable, as the kernel does:
// a completed write waits on an "unflushed" list; a flush takes the
// writes that had completed when it was submitted and, once it completes,
// logs them and then itself; a FUA write is logged as soon as it completes
// (so it may come before earlier writes that no flush has covered yet); a
// mark is logged when it is asked for. Discards are logged in completion
// order like writes. Removing the target logs the unflushed writes and the
// mark "dm-log-writes-end".
//
// The log is written by one thread of the target's own (the kernel's
// log_writes_kthread), one entry at a time, the super block after each FUA
// or mark entry. A write's data is copied when it is mapped, as the kernel
// copies it into pages: the caller's buffer may be reused once it
// completes, long before it is logged.
//
// `dmsetup status`: <entries logged> <last log sector used>, and
// "logging_disabled" once the log is full or failed.
#include <fmt/format.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <list>
#include <mutex>
#include <thread>
#include <vector>

#include "blkstack/completion.h"
#include "blkstack/disk.h"
#include "blkstack/driver/target.h"
#include "blkstack/error.h"
#include "blkstack/submit.h"
#include "dm/log_writes_format.h"

namespace blkstack {
namespace {

using namespace logwrites;

// One entry to log (struct pending_block).
struct PendingBlock {
  uint64_t flags = 0;
  uint64_t sector = 0;      // in sectorsize blocks
  uint64_t nr_sectors = 0;  // likewise
  std::string mark;
  std::vector<std::byte> data;
  // For a flush: the writes it covers, logged before it.
  std::list<PendingBlock*> covered;
};

struct LogWritesIo {
  PendingBlock* block;
};

class LogWrites final : public Target {
 public:
  LogWrites(TargetDevice dev, TargetDevice log, uint32_t sectorsize)
      : dev_(std::move(dev)), log_(std::move(log)), bs_(sectorsize) {
    shift_ = static_cast<unsigned>(__builtin_ctz(bs_)) - kSectorShift;
    next_sector_ = bs_ >> kSectorShift;
    end_sector_ = log_.bdev->size_bytes() >> kSectorShift;
    thread_ = std::thread([this] { run(); });
  }

  // The kernel's dtr: what no flush covered is logged too, then the end
  // mark, and the thread drains the list before it stops.
  ~LogWrites() override {
    {
      std::lock_guard lock(lock_);
      logging_.splice(logging_.end(), unflushed_);
      auto* m = new PendingBlock;
      m->flags = kMark;
      m->mark = kEndMark;
      logging_.push_back(m);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  MapResult map(Bio& clone) override {
    auto* io = static_cast<LogWritesIo*>(target_per_io(clone));
    io->block = nullptr;
    const bool flush = clone.op() == Op::kFlush || clone.has_flag(BioFlag::kPreflush);
    if (!logging_enabled() || !op_is_write(clone.op()) || (clone.size() == 0 && !flush)) {
      remap(clone);
      return MapResult::kRemapped;
    }
    auto* b = new PendingBlock;
    if (flush) b->flags |= kFlush;
    if (clone.has_flag(BioFlag::kFua)) b->flags |= kFua;
    if (clone.op() == Op::kDiscard) b->flags |= kDiscard;
    if (clone.has_flag(BioFlag::kMeta)) b->flags |= kMetadata;
    b->sector = offset(clone.sector()) >> shift_;
    b->nr_sectors = (clone.size() >> kSectorShift) >> shift_;
    if (clone.op() == Op::kWrite) {
      b->data.resize(clone.size());
      clone.copy_to(b->data.data(), clone.size());
    }
    if (flush) {
      std::lock_guard lock(lock_);
      b->covered.splice(b->covered.end(), unflushed_);
    }
    io->block = b;
    remap(clone);
    return MapResult::kRemapped;
  }

  EndIoResult end_io(Bio& clone, Status& status) override {
    (void)status;
    auto* io = static_cast<LogWritesIo*>(target_per_io(clone));
    PendingBlock* b = io->block;
    if (!b) return EndIoResult::kDone;
    io->block = nullptr;
    bool wake = false;
    {
      std::lock_guard lock(lock_);
      if (b->flags & kFlush) {
        logging_.splice(logging_.end(), b->covered);
        logging_.push_back(b);
        wake = true;
      } else if (b->flags & kFua) {
        logging_.push_back(b);
        wake = true;
      } else {
        unflushed_.push_back(b);
      }
    }
    if (wake) cv_.notify_one();
    return EndIoResult::kDone;
  }

  std::string message(std::span<const std::string> argv) override {
    if (argv.size() != 2 || argv[0] != "mark")
      throw Error("log-writes: the message is 'mark NAME'");
    auto* m = new PendingBlock;
    m->flags = kMark;
    // As the kernel: the name is cut to what fits the entry's block.
    m->mark = argv[1].substr(0, bs_ - kEntryBytes - 1);
    {
      std::lock_guard lock(lock_);
      logging_.push_back(m);
    }
    cv_.notify_one();
    return {};
  }

  std::string table() const override { return dev_.devt() + " " + log_.devt(); }
  std::string status() const override {
    std::lock_guard lock(lock_);
    std::string s = fmt::format("{} {}", logged_entries_, next_sector_ - 1);
    if (!enabled_) s += " logging_disabled";
    return s;
  }
  void iterate_devices(const DeviceFn& fn) const override { fn(*dev_.bdev, 0, length()); }

  // Waits until every entry queued so far is on the log (for tests and
  // for suspend: a suspended device's log is complete up to its last FUA
  // or flush).
  void postsuspend() override {
    std::unique_lock lock(lock_);
    idle_cv_.wait(lock, [&] { return logging_.empty() && !busy_; });
  }

 private:
  bool logging_enabled() const { return enabled_.load(std::memory_order_relaxed); }
  void remap(Bio& clone) { clone.set_dev(*dev_.bdev, offset(clone.sector())); }

  static void wake_waiter(Bio& bio) {
    static_cast<Completion*>(bio.context())->complete();
  }

  // One synchronous write to the log device (this thread may wait).
  Status write_log(std::byte* buf, uint64_t len, uint64_t sector, BioFlag flags) {
    Completion done;
    Bio bio;
    Segment seg(buf, static_cast<uint32_t>(len));
    bio.init(log_.bdev.get(), Op::kWrite, sector, {&seg, 1}, wake_waiter, &done);
    bio.set_flags(flags);
    submit_bio(bio);
    done.wait("log-writes log write");
    return bio.status();
  }

  // log_one_block: the entry's block, then its data, in one write.
  Status log_one(PendingBlock& b, uint64_t sector) {
    const uint64_t data = (b.flags & kDiscard) ? 0 : b.data.size();
    buf_.assign(bs_ + data, std::byte{0});
    encode(Entry{b.sector, b.nr_sectors, b.flags, (b.flags & kMark) ? b.mark.size() : 0},
           buf_.data());
    if (b.flags & kMark)
      std::memcpy(buf_.data() + kEntryBytes, b.mark.data(), b.mark.size());
    if (data) std::memcpy(buf_.data() + bs_, b.data.data(), data);
    return write_log(buf_.data(), buf_.size(), sector, BioFlag::kNone);
  }

  Status log_super(uint64_t entries) {
    std::vector<std::byte> block(bs_);
    Super s;
    s.nr_entries = entries;
    s.sectorsize = bs_;
    encode(s, block.data());
    return write_log(block.data(), bs_, 0, BioFlag::kFua);
  }

  void run() {
    std::unique_lock lock(lock_);
    for (;;) {
      if (logging_.empty()) {
        idle_cv_.notify_all();
        if (stop_) break;
        cv_.wait(lock);
        continue;
      }
      PendingBlock* b = logging_.front();
      logging_.pop_front();
      bool write = enabled_;
      uint64_t sector = next_sector_;
      bool super = false;
      if (write) {
        uint64_t next = next_sector_;
        if (!(b->flags & kDiscard)) next += b->nr_sectors << shift_;
        next += bs_ >> kSectorShift;
        if (next >= end_sector_) {
          fmt::print(stderr, "log-writes: ran out of space on the log device\n");
          enabled_ = write = false;
        } else {
          next_sector_ = next;
          ++logged_entries_;
          super = (b->flags & (kFua | kMark)) != 0;
        }
      }
      const uint64_t entries = logged_entries_;
      busy_ = true;
      lock.unlock();
      Status st = Status::kOk;
      if (write) {
        st = log_one(*b, sector);
        if (st == Status::kOk && super) st = log_super(entries);
      }
      for (PendingBlock* c : b->covered) delete c;  // none: spliced at end_io
      delete b;
      lock.lock();
      busy_ = false;
      if (st != Status::kOk) enabled_ = false;
    }
    for (PendingBlock* b : unflushed_) delete b;
    unflushed_.clear();
  }

  TargetDevice dev_, log_;
  uint32_t bs_;
  unsigned shift_;  // sectorsize blocks to 512-byte sectors
  mutable std::mutex lock_;
  std::condition_variable cv_, idle_cv_;
  std::list<PendingBlock*> unflushed_;  // completed, no flush yet
  std::list<PendingBlock*> logging_;    // to log, in order
  uint64_t logged_entries_ = 0;
  uint64_t next_sector_;  // 512-byte sectors on the log
  uint64_t end_sector_;
  std::atomic<bool> enabled_{true};  // written under lock_; read without on map()
  bool busy_ = false;
  bool stop_ = false;
  std::vector<std::byte> buf_;  // the thread's
  std::thread thread_;
};

std::unique_ptr<Target> create(TargetContext& ctx, TargetArgs args) {
  if (args.size() != 2) throw Error("log-writes: want <dev> <log_dev>");
  TargetDevice dev = ctx.open_device(args[0]);
  TargetDevice log = ctx.open_device(args[1]);
  if (ctx.length() > (dev.bdev->size_bytes() >> kSectorShift))
    throw Error(fmt::format("log-writes: length {} goes past the end of {}", ctx.length(),
                            args[0]));
  const uint32_t bs = dev.bdev->disk().limits().logical_block_size;
  if (!valid_sectorsize(bs))
    throw Error(fmt::format("log-writes: {} has block size {}", args[0], bs));
  if (log.bdev->size_bytes() < 2ull * bs)
    throw Error(fmt::format("log-writes: log device {} is too small", args[1]));
  auto t = std::make_unique<LogWrites>(std::move(dev), std::move(log), bs);
  t->num_flush_bios = 1;
  t->num_discard_bios = 1;
  return t;
}

}  // namespace

extern const TargetType kLogWritesTarget{
    "log-writes", {1, 1, 0}, sizeof(LogWritesIo), create};

}  // namespace blkstack
