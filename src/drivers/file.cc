// file: a disk backed by a file or a block device, through io_uring (the
// kernel's loop driver, in user space).
//
// Always multi-queue: each hardware queue has its own io_uring and
// completion thread (uring_queue.h). With inline_read=1 a read alone on
// an idle ring is done in line when it cannot block (UringQueue::read_now);
// the rest go through the ring. Reads and writes go straight between
// the bios' memory and the file (vectored, no copy); a short transfer is
// resumed where it stopped; EAGAIN, ENOMEM and EINTR are retried with a
// bounded back-off (kMaxTransientRetries); other errors become the
// matching Status. Flush is fdatasync (the flush machinery sends
// it only after the writes it must cover have completed), FUA is a write
// with RWF_DSYNC, discard punches a hole, write-zeroes zeroes the range (or
// punches, with zeroes=unmap). The limits come from the file: direct I/O
// alignment from statx; discard and zero-range support from a private
// temporary file on the same file system, or a block device's queue limits
// (never from the file's own bytes: see FallocateSupport).
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/driver_type.h"
#include "blkstack/driver/hw_queue.h"
#include "blkstack/driver/limit_options.h"
#include "blkstack/driver/queue.h"
#include "blkstack/driver/queue_mode.h"
#include "blkstack/driver/reports.h"
#include "blkstack/driver/request.h"
#include "blkstack/error.h"
#include "core/clock.h"
#include "drivers/uring_queue.h"
#include "queue/tag_set.h"

namespace blkstack {
namespace {

constexpr unsigned kMaxSegments = 128;

// Transient host errors (EAGAIN, ENOMEM, EINTR) are retried: the first at
// once, the next after a back-off that doubles from 100 us to 50 ms (blk-mq
// reruns a queue that ran out of resources after 3 ms). The host waits it
// out (HostIo::delay_ns), so the reaper thread goes on completing the rest
// of its ring meanwhile. After kMaxTransientRetries in a row, about 0.75 s
// of waiting, the request fails with kIoError: not kResource, which IoContext,
// BlockHandle and the exports take for back-pressure and send again forever
// (status_is_busy), so that this bound would never reach anyone.
constexpr unsigned kMaxTransientRetries = 24;
constexpr uint64_t kFirstBackoffNs = 100'000;
constexpr uint64_t kMaxBackoffNs = 50'000'000;

// The back-off before retry number `retry` (0-based).
constexpr uint64_t transient_backoff_ns(unsigned retry) {
  if (retry == 0) return 0;
  const unsigned doublings = retry - 1;
  return doublings >= 10 ? kMaxBackoffNs
                         : std::min(kMaxBackoffNs, kFirstBackoffNs << doublings);
}

// The driver's part of each request (its pdu): the host I/O being done.
struct FileCmd {
  Request* rq;
  HostIoQueue* io;
  HostIo op;
  uint64_t done;               // bytes transferred so far
  uint64_t total;              // bytes to transfer
  unsigned first;              // first iovec not yet done
  unsigned transient_retries;  // in a row, since the last progress
  unsigned nr_iov;
  iovec iov[kMaxSegments];
};

class FileDriver final : public RequestDriver {
 public:
  // `fd` is the file as opened (O_DIRECT or not). With O_DIRECT, memory not
  // aligned to `mem_align` goes through `buffered_fd`, a second descriptor
  // without O_DIRECT (Linux keeps the two coherent), instead of failing.
  FileDriver(int fd, int buffered_fd, uint32_t mem_align, bool zeroes_unmap,
             bool inline_read)
      : fd_(fd),
        buffered_fd_(buffered_fd),
        mem_align_(mem_align),
        zeroes_unmap_(zeroes_unmap),
        inline_read_(inline_read) {}
  ~FileDriver() override {
    queues_.clear();  // completion threads stop before the file closes
    if (buffered_fd_ >= 0) close(buffered_fd_);
    close(fd_);
  }

  // One io_uring per hardware queue; poll queues (after the others) have
  // no completion thread.
  void start(const TagSetConfig& tags, UringQueue::Options o) {
    const HostIoFactory* factory = ScopedHostIoFactory::current();
    for (unsigned i = 0; i < tags.nr_queues(); ++i) {
      o.completion_thread = i < tags.nr_hw_queues;
      if (factory) {
        queues_.push_back((*factory)(HostIoSetup{
            i, fd_, buffered_fd_, !o.completion_thread, &FileDriver::on_complete}));
      } else {
        queues_.push_back(
            std::make_unique<UringQueue>(fd_, buffered_fd_, o, &FileDriver::on_complete));
      }
    }
  }

  Status queue_rq(HwQueue& hctx, Request& rq, bool last) override {
    FileCmd& c = *rq.pdu_as<FileCmd>();
    c.rq = &rq;
    c.io = queues_[hctx.index()].get();
    c.done = 0;
    c.transient_retries = 0;
    c.first = 0;
    c.op = HostIo{};
    const uint64_t offset = rq.pos() << kSectorShift;
    switch (rq.op()) {
      case Op::kRead:
      case Op::kWrite: {
        unsigned n = 0;
        bool overflow = false;
        uintptr_t align_bits = 0;
        rq.for_each_chunk([&](const BioChunk& ch) {
          if (n == kMaxSegments) {
            overflow = true;
            return;
          }
          align_bits |= reinterpret_cast<uintptr_t>(ch.ptr) | ch.len;
          c.iov[n++] = iovec{ch.ptr, ch.len};
        });
        if (overflow) return Status::kInvalid;  // the limits forbid this
        c.op.alternate_file = buffered_fd_ >= 0 && (align_bits & (mem_align_ - 1)) != 0;
        c.op.kind = rq.op() == Op::kRead ? HostIo::kRead : HostIo::kWrite;
        c.op.rw_flags = rq.has_flag(BioFlag::kFua) ? RWF_DSYNC : 0;
        c.op.offset = offset;
        c.op.iov = c.iov;
        c.op.iovcnt = c.nr_iov = n;
        c.total = rq.bytes();
        break;
      }
      case Op::kFlush:
        c.op.kind = HostIo::kFdatasync;
        break;
      case Op::kDiscard:
      case Op::kWriteZeroes:
        c.op.kind = rq.op() == Op::kDiscard || zeroes_unmap_ ? HostIo::kPunchHole
                                                             : HostIo::kZeroRange;
        c.op.offset = offset;
        c.op.len = rq.bytes();
        break;
    }
    // With inline_read=1, a lone read (the end of its batch, the ring
    // idle) is tried on this thread first: the host's worker hop is what a
    // depth-1 reader waits for, and the loop device does not pay it. Off by
    // default: an application at depth 32 that submits one I/O per
    // completion reaped looks the same from here (each read done in line
    // leaves the ring idle), and then reads one at a time instead of in
    // parallel on the host's workers (0.54x fio measured, loaded machine). Writes always
    // take the ring: tmpfs cannot write without perhaps allocating (and reclaiming)
    // pages, and no RWF_NOWAIT tells us first.
    if (inline_read_ && last && rq.op() == Op::kRead) {
      const int r = c.io->read_now(c.op);
      if (r != -EAGAIN) {
        on_complete(&c, r);  // ends it, or resumes a short read on the ring
        return Status::kOk;
      }
    }
    if (!c.io->queue(c.op, &c)) return Status::kResource;  // ring full: retried later
    if (last) c.io->submit();
    return Status::kOk;
  }

  void commit_rqs(HwQueue& hctx) override { queues_[hctx.index()]->submit(); }

  int poll(HwQueue& hctx, uint64_t wait_ns) override {
    const int r = queues_[hctx.index()]->poll(wait_ns);
    return r < 0 ? kPollBusy : r;
  }

  // The host cannot be made to give an operation back: a read may still
  // land in the caller's buffer, a write still reach the file, and its
  // answer would end whichever request holds the tag by then (and come
  // after the disk is gone, if removal did not wait for it). So a request
  // past its timeout stays the driver's until the host answers, as in the
  // kernel's loop driver (which has no timeout handler: the timer is
  // reset); that answer then ends it, with kTimeout where it would have
  // been retried or resumed (on_complete).
  TimeoutAction timeout(Request& rq) override {
    (void)rq;
    return TimeoutAction::kResetTimer;
  }

 private:
  // On the completion thread of the request's ring.
  static void on_complete(void* ctx, int res) {
    FileCmd& c = *static_cast<FileCmd*>(ctx);
    Request& rq = *c.rq;
    if (res == -EAGAIN || res == -ENOMEM || res == -EINTR) {
      if (past_timeout(rq)) {
        rq.end_request_all(Status::kTimeout);
        return;
      }
      if (c.transient_retries == kMaxTransientRetries) {
        // The host stayed short: fail rather than spin on the reaper.
        rq.end_request_all(Status::kIoError);
        return;
      }
      c.op.delay_ns = transient_backoff_ns(c.transient_retries++);
      resubmit(c);  // the same operation again, after the back-off
      return;
    }
    c.op.delay_ns = 0;
    if (res < 0) {
      rq.end_request_all(status_from_errno(-res));
      return;
    }
    if (c.op.kind != HostIo::kRead && c.op.kind != HostIo::kWrite) {
      rq.end_request_all(Status::kOk);
      return;
    }
    if (res == 0) {
      if (c.op.kind == HostIo::kWrite) {
        rq.end_request_all(Status::kIoError);  // no progress: do not spin
        return;
      }
      zero_rest(c);  // reading past the end of a file that shrank: zeroes
      rq.end_request_all(Status::kOk);
      return;
    }
    c.done += static_cast<uint64_t>(res);
    if (c.done >= c.total) {
      rq.end_request_all(Status::kOk);
      return;
    }
    if (past_timeout(rq)) {
      rq.end_request_all(Status::kTimeout);
      return;
    }
    c.transient_retries = 0;                 // progress: a later shortage starts afresh
    advance(c, static_cast<uint64_t>(res));  // short: resume where it stopped
    resubmit(c);
  }

  // Whether the request has been with the driver past the queue's
  // timeout (see timeout()). Read only when a request would go back to
  // the host, never for one that completes at once.
  static bool past_timeout(const Request& rq) {
    const uint64_t now = now_ns();  // (a start stamped later: not past it)
    return now > rq.start_ns() && now - rq.start_ns() >= rq.queue().config().timeout_ns;
  }

  static void advance(FileCmd& c, uint64_t bytes) {
    while (bytes > 0) {
      iovec& v = c.iov[c.first];
      if (bytes < v.iov_len) {
        v.iov_base = static_cast<char*>(v.iov_base) + bytes;
        v.iov_len -= bytes;
        break;
      }
      bytes -= v.iov_len;
      ++c.first;
    }
    c.op.iov = c.iov + c.first;
    c.op.iovcnt = c.nr_iov - c.first;
    c.op.offset = (c.rq->pos() << kSectorShift) + c.done;
  }

  // What is left to read is exactly iov[first..] (advance() trimmed the
  // first of them).
  static void zero_rest(FileCmd& c) {
    for (unsigned i = c.first; i < c.nr_iov; ++i)
      std::memset(c.iov[i].iov_base, 0, c.iov[i].iov_len);
  }

  static void resubmit(FileCmd& c) {
    while (!c.io->queue(c.op, &c)) c.io->submit();
    c.io->submit();
  }

  int fd_;
  int buffered_fd_;
  uint32_t mem_align_;
  bool zeroes_unmap_;
  bool inline_read_;
  std::vector<std::unique_ptr<HostIoQueue>> queues_;
};

// What the disk reports about the file: its holes (SEEK_DATA/SEEK_HOLE)
// and its blocks. The descriptor is the FileDriver's, which the disk
// destroys only after the last report.
class FileReports final : public DiskReports {
 public:
  FileReports(int fd, std::string describe) : fd_(fd), describe_(std::move(describe)) {}

  std::string describe() const override { return describe_; }

  Extent extent_at(uint64_t offset, uint64_t max_length) const override {
    // SEEK_DATA/SEEK_HOLE tell holes of sparse files.
    off_t data = lseek(fd_, static_cast<off_t>(offset), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) return {max_length, false, true};  // a hole to the end
      return {max_length, true, false};                      // unknown: data
    }
    if (static_cast<uint64_t>(data) > offset) {
      return {std::min<uint64_t>(max_length, static_cast<uint64_t>(data) - offset), false,
              true};
    }
    off_t hole = lseek(fd_, static_cast<off_t>(offset), SEEK_HOLE);
    uint64_t len = hole < 0 ? max_length : static_cast<uint64_t>(hole) - offset;
    return {std::min(max_length, len), true, false};
  }

  uint64_t allocated_bytes() const override {
    struct stat st;
    return fstat(fd_, &st) == 0 ? static_cast<uint64_t>(st.st_blocks) * 512 : 0;
  }

 private:
  int fd_;
  std::string describe_;
};

constexpr uint64_t kMaxPollQueues = 64;

constexpr OptionDef kOptions[] = {
    {"path", OptionKind::kString, "", "the file or block device", {}, true},
    ranged({"size", OptionKind::kSize, "",
            "capacity; a missing file is created and a smaller one grown (sparse) to it"},
           kMinBlockSize, kMaxDeviceBytes),
    {"direct", OptionKind::kChoice, "auto",
     "O_DIRECT: on, off, or auto (on where the file system supports it)",
     "auto|on|off|1|0"},
    {"sqpoll", OptionKind::kBool, "0", "a kernel thread polls each submission queue"},
    {"fixed_file", OptionKind::kBool, "1", "register the file with each ring"},
    ranged({"poll_queues", OptionKind::kUint, "0",
            "extra queues for polled I/O (RWF_HIPRI, bench --hipri): no completion "
            "thread, the "
            "waiting thread reaps its ring"},
           0, kMaxPollQueues),
    {"inline_read", OptionKind::kBool, "0",
     "a read alone on an idle ring is done on the submitting thread when it cannot "
     "block (tmpfs, page-cache hits): faster at depth 1, slower for one-at-a-time "
     "submitters at depth"},
    {"zeroes", OptionKind::kChoice, "zero",
     "write-zeroes as a zeroed range (zero) or a punched hole (unmap)", "zero|unmap"},
    ranged({"max_sectors", OptionKind::kUint, "2048", "largest I/O in 512-byte sectors"},
           1, kMaxSectorsLimit),
    ranged({"bs", OptionKind::kSize, "",
            "logical block size: 512 to 65536, a power of two; at least the file's "
            "direct I/O "
            "alignment or the device's own (the default)"},
           kMinBlockSize, kMaxBlockSize),
};

// Which fallocate modes the host supports for the file (discard punches a
// hole, write-zeroes zeroes a range), learnt without writing a byte of it.
//
// Never probe the file itself: every fallocate call that could answer
// changes bytes somewhere, and no offset of the file is safe to change.
// The end of the device is not the end of the file (size= may be smaller,
// the length need not be a multiple of the block size, a block device may
// be bigger), and past the real end of the file another writer may be
// appending. The kernel's loop driver does not probe either: it trusts the
// file's fallocate method and, on a block device, the queue limits.
struct FallocateSupport {
  bool punch_hole = false;
  bool zero_range = false;
};

// A block device: ZERO_RANGE is blkdev_issue_zeroout() with a fallback to
// writing zeroes, which every device can do; PUNCH_HOLE is the same without
// the fallback, so it needs the device to zero (write_zeroes_max_bytes in
// sysfs; a partition's queue is its disk's, one directory up).
FallocateSupport block_device_support(dev_t rdev) {
  FallocateSupport s;
  s.zero_range = true;
  const std::string dev = fmt::format("/sys/dev/block/{}:{}/", major(rdev), minor(rdev));
  for (const char* queue : {"queue/", "../queue/"}) {
    int fd = open((dev + queue + "write_zeroes_max_bytes").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    char text[32] = {};
    const ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    s.punch_hole = n > 0 && std::strtoull(text, nullptr, 10) > 0;
    break;
  }
  return s;
}

// A regular file: both modes are tried on a private, nameless file made
// with O_TMPFILE in the same directory (so on the same file system, which
// st_dev confirms: a file bind-mounted from elsewhere is not), which
// vanishes when closed. Knowing up front, rather than on the first discard,
// keeps what the disk reports true from the start: `blkstack disk` shows
// it, and an NBD client is told at the handshake, once. Where no such file
// can be made (a read-only directory, a file system without O_TMPFILE),
// neither mode is claimed: a missing discard costs space, a claimed one
// that fails costs the client's I/O.
FallocateSupport regular_file_support(const std::string& given_path, dev_t file_dev) {
  FallocateSupport s;
  // The directory the file is really in, not a symbolic link's.
  std::unique_ptr<char, decltype(&std::free)> real(realpath(given_path.c_str(), nullptr),
                                                   &std::free);
  const std::string path = real ? real.get() : given_path;
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path.substr(0, slash);
  const int tmp = open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (tmp < 0) return s;
  struct stat st;
  constexpr off_t kProbeBytes = 4096;
  if (fstat(tmp, &st) == 0 && st.st_dev == file_dev &&
      ftruncate(tmp, 2 * kProbeBytes) == 0) {
    auto works = [&](int mode) {
      return fallocate(tmp, mode | FALLOC_FL_KEEP_SIZE, 0, kProbeBytes) == 0;
    };
    s.punch_hole = works(FALLOC_FL_PUNCH_HOLE);
    s.zero_range = works(FALLOC_FL_ZERO_RANGE);
  }
  close(tmp);
  return s;
}

std::shared_ptr<Disk> create(const DeviceOptions& o, const std::string& name,
                             OpenContext&) {
  const std::string& path = o.str("path");
  const bool ro = o.flag("ro");
  const std::string& direct = o.str("direct");
  const std::string where = fmt::format("device spec '{}'", o.spec().text);

  QueueMode qm = queue_mode(o);
  if (o.given("queue_mode") && !qm.mq) {
    throw Error(where + ": file disks are always multi-queue (queue_mode=mq)");
  }
  qm.mq = true;
  qm.tags.cmd_size = sizeof(FileCmd);
  qm.tags.nr_poll_queues = static_cast<unsigned>(o.uint("poll_queues"));  // in range
  check_total_tags(o, qm.tags);

  int flags = (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  if (o.given("size") && !ro) flags |= O_CREAT;
  int fd = -1;
  bool is_direct = false;
  if (direct != "off" && direct != "0") {
    fd = open(path.c_str(), flags | O_DIRECT, 0644);
    is_direct = fd >= 0;
    if (fd < 0 && (direct == "on" || direct == "1")) {
      throw Error(fmt::format("{}: cannot open '{}' with O_DIRECT: {}", where, path,
                              std::strerror(errno)));
    }
  }
  if (fd < 0) fd = open(path.c_str(), flags, 0644);
  if (fd < 0)
    throw Error(
        fmt::format("{}: cannot open '{}': {}", where, path, std::strerror(errno)));
  auto fail = [&](const std::string& why) {
    close(fd);
    throw Error(fmt::format("{}: '{}': {}", where, path, why));
  };

  struct stat st;
  if (fstat(fd, &st) != 0) fail(std::strerror(errno));
  const bool blockdev = S_ISBLK(st.st_mode);
  if (!blockdev && !S_ISREG(st.st_mode)) fail("not a regular file or block device");
  uint64_t file_size = static_cast<uint64_t>(st.st_size);
  QueueLimits lim;
  lim.logical_block_size = 512;
  uint32_t mem_align = 512;
  if (blockdev) {
    if (ioctl(fd, BLKGETSIZE64, &file_size) != 0) fail(std::strerror(errno));
    int lbs = 512;
    if (ioctl(fd, BLKSSZGET, &lbs) == 0 && lbs >= 512)
      lim.logical_block_size = static_cast<uint32_t>(lbs);
  }
  if (is_direct) {
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
        (sx.stx_mask & STATX_DIOALIGN)) {
      if (!blockdev && sx.stx_dio_offset_align >= 512)
        lim.logical_block_size = sx.stx_dio_offset_align;
      if (sx.stx_dio_mem_align > 0) mem_align = sx.stx_dio_mem_align;
    }
  }
  if (o.given("bs"))
    lim.logical_block_size = std::max(lim.logical_block_size, block_size_option(o));
  lim.physical_block_size =
      std::max<uint32_t>(lim.logical_block_size,
                         st.st_blksize > 0 ? static_cast<uint32_t>(st.st_blksize) : 4096);
  if ((lim.physical_block_size & (lim.physical_block_size - 1)) != 0)
    lim.physical_block_size = lim.logical_block_size;

  uint64_t size = file_size;
  if (o.given("size")) {
    size = device_size_option(o, lim.logical_block_size);
    if (size > file_size) {
      if (ro || blockdev)
        fail(fmt::format("is {} bytes, smaller than size={}", file_size, size));
      if (ftruncate(fd, static_cast<off_t>(size)) != 0)
        fail(fmt::format("bad value for 'size' '{}': the file cannot grow to it: {}",
                         o.str("size"), std::strerror(errno)));
    }
  }
  size -= size % lim.logical_block_size;
  if (size == 0) fail("is empty; give size= to create or grow it");

  lim.max_sectors = max_sectors_option(o);
  lim.max_hw_sectors = std::max<uint32_t>(lim.max_sectors, lim.max_hw_sectors);
  lim.max_segments = kMaxSegments;
  lim.max_segment_size = 1u << 30;
  lim.volatile_write_cache = true;  // written data needs fdatasync to be durable
  lim.fua = true;                   // RWF_DSYNC
  // Write-zeroes zeroes the range where the file system can (ZERO_RANGE),
  // else punches a hole, which reads back as zeroes too (tmpfs has only
  // that); zeroes=unmap always punches, as the kernel's loop driver does.
  bool zeroes_unmap = o.str("zeroes") == "unmap";
  if (!ro) {
    const FallocateSupport host = blockdev ? block_device_support(st.st_rdev)
                                           : regular_file_support(path, st.st_dev);
    const bool punch = host.punch_hole;
    const bool zero_range = host.zero_range;
    if (punch) {
      lim.max_discard_sectors = UINT32_MAX >> kSectorShift;
      lim.discard_granularity = std::max<uint32_t>(lim.logical_block_size, 4096);
    }
    if (!zero_range) zeroes_unmap = true;
    if (zero_range || punch) lim.max_write_zeroes_sectors = UINT32_MAX >> kSectorShift;
    // FALLOC_FL_ZERO_RANGE keeps the range allocated: zeroing that must not
    // unmap (BioFlag::kNoUnmap) may use it rather than write zeroes as data.
    // Not on a host block device without write-zeroes (no punch): there the
    // host kernel writes zero pages itself, no faster than we would, and a
    // zeroing that asked for speed only (NBD FAST_ZERO) must be refused.
    lim.write_zeroes_nounmap = !zeroes_unmap && (!blockdev || punch);
  }
  lim.read_only = ro;

  std::string describe = fmt::format("{} {}{}", path, is_direct ? "direct" : "buffered",
                                     blockdev ? " blockdev" : "");
  int buffered_fd = -1;
  if (is_direct) {
    buffered_fd = open(path.c_str(), (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (buffered_fd < 0)
      fail(std::string("cannot open it a second time: ") + std::strerror(errno));
  }
  auto driver = std::make_unique<FileDriver>(fd, buffered_fd, mem_align, zeroes_unmap,
                                             o.flag("inline_read"));
  UringQueue::Options uo;
  uo.entries = std::max(2 * qm.tags.queue_depth, 8u);
  uo.sqpoll = o.flag("sqpoll");
  uo.fixed_file = o.flag("fixed_file");
  driver->start(qm.tags, uo);
  return make_disk(name, size >> kSectorShift, lim, qm, nullptr, std::move(driver),
                   std::make_unique<FileReports>(fd, describe));
}

}  // namespace

extern const DriverType kFileDriver{
    "file",
    "a file or block device through io_uring (the loop driver)",
    7,
    kOptions,
    create,
    /*queue_modes=*/true};

}  // namespace blkstack
