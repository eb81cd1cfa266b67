#include "export/fuse/fuse_fs.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <thread>
#include <utility>

#include "blkstack/block_handle.h"
#include "blkstack/completion.h"
#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/error.h"
#include "blkstack/submit.h"
#include "blkstack/zeroout.h"
#include "export/export_table.h"
#include "export/fuse/io_range.h"
#include "export/fuse/worker.h"
#include "export/log.h"

namespace blkstack::fuse {
namespace {

constexpr fuse_ino_t kFirstFileIno = FUSE_ROOT_ID + 1;
// Sizes never change while mounted, so the kernel may keep what it learns.
constexpr double kAttrTimeout = 3600.0;

FuseFs& fs_of(fuse_req_t req) { return *static_cast<FuseFs*>(fuse_req_userdata(req)); }

}  // namespace

int status_errno(Status s, bool write) {
  return write && s == Status::kOutOfRange ? ENOSPC : status_to_errno(s);
}

namespace {

int write_errno(Status s) { return status_errno(s, true); }

// Busy is back-pressure, not an error for the client: the bio goes again.
bool again_if_busy(Bio& bio) {
  if (!status_is_busy(bio.status())) [[likely]]
    return false;
  resubmit_busy(bio, static_cast<Slot*>(bio.context())->start);
  return true;
}

// An operation's hold on a file (FuseFs::enter). An asynchronous one hands
// it to its slot with release(); the bio's completion then leaves.
class Entered {
 public:
  Entered(File* f, unsigned worker) : f_(f), worker_(worker) {}
  ~Entered() {
    if (f_) f_->leave(worker_);
  }
  Entered(const Entered&) = delete;
  Entered& operator=(const Entered&) = delete;
  File* operator->() const { return f_; }
  File& operator*() const { return *f_; }
  File* release() { return std::exchange(f_, nullptr); }

 private:
  File* f_;
  unsigned worker_;
};

// Enters `ino` for an operation on the current worker (FuseFs::enter), or
// answers the request with the error and returns false.
bool enter(fuse_req_t req, fuse_ino_t ino, std::optional<Entered>* out) {
  int err = 0;
  File* f = fs_of(req).enter(ino, &err);
  if (!f) {
    fuse_reply_err(req, err);
    return false;
  }
  out->emplace(f, Worker::current()->index());
  return true;
}

// The completion of a slot's bio: its file is no longer used by it.
void leave_slot(Slot* s) { s->file->leave(s->owner->index()); }

// --- synchronous bios, for the rare paths (partial blocks, fallocate) ------

void wake(Bio& bio) { static_cast<Completion*>(bio.context())->complete(); }

Status run_bio(BlockDevice* bdev, Op op, uint64_t offset, std::span<Segment> segs,
               uint32_t nodata_len = 0, BioFlag flags = BioFlag::kNone) {
  Completion done;
  Bio bio;
  if (op_has_data(op))
    bio.init(bdev, op, offset >> kSectorShift, segs, wake, &done);
  else
    bio.init_nodata(bdev, op, offset >> kSectorShift, nodata_len, wake, &done);
  bio.set_flags(flags);
  const BioStart start = bio.start();
  submit_bio(bio);
  done.wait("FUSE export I/O");
  // Busy is back-pressure: wait and send it again (a rare, waiting path).
  while (status_is_busy(bio.status())) {
    done.reinit();
    std::this_thread::sleep_for(std::chrono::nanoseconds(BioDriver::kBusyRetryNs));
    bio.restart(start);
    submit_bio(bio);
    done.wait("FUSE export I/O");
  }
  return bio.status();
}

}  // namespace

Status flush_device(const File& f) {
  return BlockHandle(std::shared_ptr<Disk>(f.bdev, &f.bdev->disk())).flush();
}

namespace {

Status read_block(File& f, std::byte* buf, uint64_t offset) {
  Segment seg(buf, f.lbs);
  return run_bio(f.bdev.get(), Op::kRead, offset, {&seg, 1});
}

// Zeroes [offset, offset + len) inside one block by read-modify-write.
Status zero_partial(File& f, std::byte* bounce, uint64_t offset, uint32_t len) {
  const uint64_t block = offset & ~uint64_t{f.lbs - 1};
  if (Status s = read_block(f, bounce, block); !ok(s)) return s;
  std::memset(bounce + (offset - block), 0, len);
  Segment seg(bounce, f.lbs);
  return run_bio(f.bdev.get(), Op::kWrite, block, {&seg, 1});
}

// Whole blocks [offset, offset + len): discarded (PUNCH_HOLE), or zeroed
// and kept allocated (ZERO_RANGE, as the kernel's blkdev_fallocate asks
// blkdev_issue_zeroout with NOUNMAP): zeroout() picks write-zeroes or
// zero data.
Status zero_blocks(File& f, Op op, uint64_t offset, uint64_t len) {
  if (op == Op::kWriteZeroes) {
    // Busy is back-pressure here too: wait and zero the range again.
    Status s;
    while (status_is_busy(
        s = zeroout(f.bdev.get(), offset >> kSectorShift, len, ZeroFlag::kNoUnmap)))
      std::this_thread::sleep_for(std::chrono::nanoseconds(BioDriver::kBusyRetryNs));
    return s;
  }
  // One bio carries at most 1 GiB here (its size field is 32 bits).
  constexpr uint64_t kMaxBio = uint64_t{1} << 30;
  while (len > 0) {
    const uint64_t n = std::min(len, kMaxBio);
    if (Status s = run_bio(f.bdev.get(), op, offset, {}, static_cast<uint32_t>(n));
        !ok(s))
      return s;
    offset += n;
    len -= n;
  }
  return Status::kOk;
}

// --- completions -------------------------------------------------------------

void read_done(Bio& bio) {
  if (again_if_busy(bio)) return;
  Slot* s = static_cast<Slot*>(bio.context());
  if (ok(bio.status()))
    fuse_reply_buf(s->req, reinterpret_cast<const char*>(s->buf) + s->reply_off,
                   s->reply_len);
  else
    fuse_reply_err(s->req, status_errno(bio.status(), false));
  leave_slot(s);
  Worker::put_slot(s);
}

void write_done(Bio& bio) {
  if (again_if_busy(bio)) return;
  Slot* s = static_cast<Slot*>(bio.context());
  if (ok(bio.status()))
    fuse_reply_write(s->req, s->reply_len);
  else
    fuse_reply_err(s->req, write_errno(bio.status()));
  leave_slot(s);
  Worker::put_slot(s);
}

void flush_done(Bio& bio) {
  if (again_if_busy(bio)) return;
  Slot* s = static_cast<Slot*>(bio.context());
  fuse_reply_err(s->req, status_errno(bio.status(), false));
  leave_slot(s);
  Worker::put_slot(s);
}

// --- the name space ------------------------------------------------------------

void op_init(void*, fuse_conn_info* conn) {
  // libfuse derives max_pages from max_write (and caps max_write at its
  // buffer size, 1 MiB); max_read stays as mounted (unlimited), so reads are
  // cut at max_pages.
  conn->max_write = kMaxIo;
  conn->max_readahead = 0;
  // Splice costs more system calls than it saves at the sizes that matter
  // (a 4 KiB read is one writev of header and data); see export-fuse.md.
  conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  // Let the kernel send the pieces of one large direct I/O concurrently.
  if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  // Requests the kernel may queue in the background (async direct I/O).
  conn->max_background = 256;
  conn->congestion_threshold = 192;
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  FuseFs& fs = fs_of(req);
  File* f = parent == FUSE_ROOT_ID ? fs.find(name) : nullptr;
  if (!f) return (void)fuse_reply_err(req, ENOENT);
  fuse_entry_param e{};
  e.ino = f->ino;
  e.generation = 1;
  fs.fill_attr(f->ino, &e.attr);
  e.attr_timeout = kAttrTimeout;
  e.entry_timeout = kAttrTimeout;
  fuse_reply_entry(req, &e);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  FuseFs& fs = fs_of(req);
  if (ino != FUSE_ROOT_ID && !fs.file(ino)) return (void)fuse_reply_err(req, ENOENT);
  struct stat st;
  fs.fill_attr(ino, &st);
  fuse_reply_attr(req, &st, kAttrTimeout);
}

// A block device ignores truncation (O_TRUNC, ftruncate) and keeps its size;
// so do these files, so that `dd of=FILE` without conv=notrunc works.
// Ownership, mode and time changes are ignored too.
void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat*, int, fuse_file_info* fi) {
  op_getattr(req, ino, fi);
}

void op_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (ino != FUSE_ROOT_ID) return (void)fuse_reply_err(req, ENOTDIR);
  fuse_reply_open(req, fi);
}

void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  FuseFs& fs = fs_of(req);
  if (ino != FUSE_ROOT_ID) return (void)fuse_reply_err(req, ENOTDIR);
  std::vector<char> buf(size);
  size_t used = 0;
  // ".", "..", sys/, then the files by inode. An entry's offset is where
  // the next starts: 1, 2 and 3 for the first three, a file's inode + 3 for
  // a file, so a reload between two calls neither repeats nor skips a file
  // that stays.
  const auto add = [&](const char* name, fuse_ino_t entry_ino, mode_t mode, off_t next) {
    struct stat st {};
    st.st_ino = entry_ino;
    st.st_mode = mode;
    const size_t n =
        fuse_add_direntry(req, buf.data() + used, size - used, name, &st, next);
    if (n > size - used) return false;
    used += n;
    return true;
  };
  bool room = true;
  if (off < 1) room = add(".", FUSE_ROOT_ID, S_IFDIR, 1);
  if (room && off < 2) room = add("..", FUSE_ROOT_ID, S_IFDIR, 2);
  if (room && off < 3) room = add(SysfsTree::kName, SysfsTree::kSysIno, S_IFDIR, 3);
  for (File* f : fs.files()) {
    if (!room) break;
    const off_t pos = static_cast<off_t>(f->ino + 2);
    if (pos < off) continue;
    room = add(f->name.c_str(), f->ino, S_IFREG, pos + 1);
  }
  fuse_reply_buf(req, buf.data(), used);
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  File* f = fs_of(req).file(ino);
  if (!f || f->removed.load())
    return (void)fuse_reply_err(req, ino == FUSE_ROOT_ID ? EISDIR : ENOENT);
  const bool writable = (fi->flags & O_ACCMODE) != O_RDONLY;
  if (writable && f->read_only) return (void)fuse_reply_err(req, EROFS);
  fi->direct_io = 1;
  fi->keep_cache = 0;
#if FUSE_MAJOR_VERSION > 3 || (FUSE_MAJOR_VERSION == 3 && FUSE_MINOR_VERSION >= 15)
  // Writes to one file need not be serialised by the kernel: a device takes
  // concurrent writes, and overlapping ones are the writers' business.
  fi->parallel_direct_writes = 1;
#endif
  fi->fh = writable ? 1 : 0;  // FLUSH (each close) skips read-only handles
  f->open_handles.fetch_add(1, std::memory_order_relaxed);
  // An open interrupted meanwhile fails here, and no RELEASE will come.
  if (fuse_reply_open(req, fi) != 0)
    f->open_handles.fetch_sub(1, std::memory_order_relaxed);
}

void op_statfs(fuse_req_t req, fuse_ino_t) {
  FuseFs& fs = fs_of(req);
  struct statvfs sv {};
  uint64_t bytes = 0;
  const std::vector<File*> files = fs.files();
  for (const File* f : files) bytes += f->size;
  sv.f_bsize = 4096;
  sv.f_frsize = 4096;
  sv.f_blocks = bytes / 4096;
  sv.f_files = files.size() + 1;
  sv.f_namemax = 255;
  fuse_reply_statfs(req, &sv);
}

// --- I/O ---------------------------------------------------------------------

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  std::optional<Entered> f;
  if (!enter(req, ino, &f)) return;
  if (off < 0) return (void)fuse_reply_err(req, EINVAL);
  const IoRange r = clamp_io(static_cast<uint64_t>(off), size, (*f)->size, (*f)->lbs);
  if (r.len == 0) return (void)fuse_reply_buf(req, nullptr, 0);  // at or past EOF
  Slot* s = Worker::current()->get_slot();
  // Unaligned reads read the whole blocks and answer from inside them.
  const uint32_t bytes = static_cast<uint32_t>(r.block_bytes());
  if (!s->reserve(bytes)) {
    Worker::put_slot(s);
    return (void)fuse_reply_err(req, ENOMEM);
  }
  s->req = req;
  s->file = f->release();
  s->reply_off = r.head;
  s->reply_len = r.len;
  s->segs[0] = Segment(s->buf, bytes);
  s->bio.init(s->file->bdev.get(), Op::kRead, r.block_start >> kSectorShift, {s->segs, 1},
              read_done, s);
  s->start = s->bio.start();
  submit_bio(s->bio);
}

// The flags of a write bio for a FUSE WRITE: FUA when the writer asked for
// synchronous writes (O_SYNC or O_DSYNC on its file, or RWF_SYNC/RWF_DSYNC
// on the call: the kernel passes them in the request's flags). With
// FOPEN_DIRECT_IO the kernel sends no FSYNC after such a write, so the
// write itself must be durable when answered.
BioFlag write_flags(const fuse_file_info* fi) {
  return fi && (fi->flags & O_DSYNC) ? BioFlag::kFua : BioFlag::kNone;
}

// A write that starts or ends inside a block: the edges are read, patched
// and written back with the middle (taken in place) in one bio, under the
// file's rmw lock; synchronous, as this is not the path that matters.
void write_unaligned(fuse_req_t req, File& f, const std::byte* data, const IoRange& r,
                     BioFlag flags) {
  Slot* s = Worker::current()->get_slot();
  const uint32_t lbs = f.lbs;
  const bool one_block = r.block_bytes() == lbs;
  if (!s->reserve(2 * lbs)) {
    Worker::put_slot(s);
    return (void)fuse_reply_err(req, ENOMEM);
  }
  std::byte* first = s->buf;
  std::byte* last = s->buf + lbs;
  const uint64_t mid_start = r.head ? r.block_start + lbs : r.block_start;
  const uint64_t mid_end = r.tail ? r.block_end - lbs : r.block_end;
  size_t nseg = 0;
  Status st = Status::kOk;
  {
    std::lock_guard lock(f.rmw);
    if (r.head || one_block) {
      st = read_block(f, first, r.block_start);
      const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(lbs - r.head, r.len));
      std::memcpy(first + r.head, data, n);
      s->segs[nseg++] = Segment(first, lbs);
    }
    if (ok(st) && !one_block && mid_end > mid_start) {
      s->segs[nseg++] = Segment(const_cast<std::byte*>(data + (mid_start - r.offset)),
                                static_cast<uint32_t>(mid_end - mid_start));
    }
    if (ok(st) && !one_block && r.tail) {
      st = read_block(f, last, r.block_end - lbs);
      std::memcpy(last, data + (r.block_end - lbs - r.offset), lbs - r.tail);
      s->segs[nseg++] = Segment(last, lbs);
    }
    if (ok(st))
      st = run_bio(f.bdev.get(), Op::kWrite, r.block_start, {s->segs, nseg}, 0, flags);
  }
  Worker::put_slot(s);
  if (ok(st))
    fuse_reply_write(req, r.len);
  else
    fuse_reply_err(req, write_errno(st));
}

void op_write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off,
              fuse_file_info* fi) {
  std::optional<Entered> entered;
  if (!enter(req, ino, &entered)) return;
  File* f = &**entered;
  if (f->read_only) return (void)fuse_reply_err(req, EROFS);
  if (off < 0) return (void)fuse_reply_err(req, EINVAL);
  if (size == 0) return (void)fuse_reply_write(req, 0);
  // At the end: no space, as on a block device. Across it: the part that
  // fits is written and the count says so; the next write gets ENOSPC.
  if (static_cast<uint64_t>(off) >= f->size) return (void)fuse_reply_err(req, ENOSPC);
  const IoRange r = clamp_io(static_cast<uint64_t>(off), size, f->size, f->lbs);
  const auto* data = reinterpret_cast<const std::byte*>(buf);
  if (!r.aligned()) return write_unaligned(req, *f, data, r, write_flags(fi));
  Worker* w = Worker::current();
  Slot* s = w->get_slot();
  s->req = req;
  s->file = entered->release();
  s->reply_len = r.len;
  if (w->lend_receive_buffer(s, buf)) {
    s->segs[0] = Segment(const_cast<std::byte*>(data), static_cast<uint32_t>(r.len));
  } else {  // not from our receive buffer (cannot happen with worker.cc): copy
    if (!s->reserve(static_cast<uint32_t>(r.len))) {
      Worker::put_slot(s);
      return (void)fuse_reply_err(req, ENOMEM);
    }
    std::memcpy(s->buf, data, r.len);
    s->segs[0] = Segment(s->buf, static_cast<uint32_t>(r.len));
  }
  s->bio.init(f->bdev.get(), Op::kWrite, r.offset >> kSectorShift, {s->segs, 1},
              write_done, s);
  s->bio.set_flags(write_flags(fi));
  s->start = s->bio.start();
  submit_bio(s->bio);
}

// Takes over `f`'s hold: the flush's completion leaves.
void flush_file(fuse_req_t req, Entered& f) {
  Slot* s = Worker::current()->get_slot();
  s->req = req;
  s->file = f.release();
  s->bio.init_nodata(s->file->bdev.get(), Op::kFlush, 0, 0, flush_done, s);
  s->bio.set_flags(BioFlag::kPreflush);
  s->start = s->bio.start();
  submit_bio(s->bio);
}

// FLUSH comes with every close(): the data written through this handle is
// made durable then, as a file system's close-to-open guarantee would.
void op_flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  std::optional<Entered> f;
  if (!enter(req, ino, &f)) return;
  if (fi->fh == 0 || (*f)->read_only) return (void)fuse_reply_err(req, 0);
  flush_file(req, *f);
}

void op_fsync(fuse_req_t req, fuse_ino_t ino, int, fuse_file_info*) {
  std::optional<Entered> f;
  if (!enter(req, ino, &f)) return;
  if ((*f)->read_only) return (void)fuse_reply_err(req, 0);
  flush_file(req, *f);
}

void op_release(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  if (File* f = fs_of(req).file(ino))
    f->open_handles.fetch_sub(1, std::memory_order_relaxed);
  fuse_reply_err(req, 0);
}

void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                  fuse_file_info*) {
  std::optional<Entered> entered;
  if (!enter(req, ino, &entered)) return;
  File* f = &**entered;
  Op op;
  if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE))
    op = Op::kDiscard;
  else if (mode == FALLOC_FL_ZERO_RANGE ||
           mode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE))
    op = Op::kWriteZeroes;
  else
    return (void)fuse_reply_err(req, EOPNOTSUPP);
  if (f->read_only) return (void)fuse_reply_err(req, EROFS);
  if (off < 0 || len <= 0) return (void)fuse_reply_err(req, EINVAL);
  if (op == Op::kDiscard && f->bdev->disk().limits().max_discard_sectors == 0)
    return (void)fuse_reply_err(req, EOPNOTSUPP);
  const uint64_t end = static_cast<uint64_t>(off) + static_cast<uint64_t>(len);
  // Zeroing past the end would grow the file; a device cannot.
  if (!(mode & FALLOC_FL_KEEP_SIZE) && end > f->size)
    return (void)fuse_reply_err(req, ENOSPC);
  const IoRange r =
      clamp_io(static_cast<uint64_t>(off), static_cast<uint64_t>(len), f->size, f->lbs);
  if (r.len == 0) return (void)fuse_reply_err(req, 0);
  Slot* s = Worker::current()->get_slot();
  if (!s->reserve(f->lbs)) {
    Worker::put_slot(s);
    return (void)fuse_reply_err(req, ENOMEM);
  }
  const uint64_t io_end = r.offset + r.len;
  Status st = Status::kOk;
  {
    std::lock_guard lock(f->rmw);
    if (r.block_bytes() == f->lbs && !r.aligned()) {  // inside one block
      st = zero_partial(*f, s->buf, r.offset, static_cast<uint32_t>(r.len));
    } else {
      uint64_t mid_start = r.block_start, mid_end = r.block_end;
      if (r.head) {
        mid_start += f->lbs;
        st = zero_partial(*f, s->buf, r.offset, f->lbs - r.head);
      }
      if (ok(st) && r.tail) {
        mid_end -= f->lbs;
        st = zero_partial(*f, s->buf, mid_end, static_cast<uint32_t>(io_end - mid_end));
      }
      if (ok(st) && mid_end > mid_start)
        st = zero_blocks(*f, op, mid_start, mid_end - mid_start);
    }
  }
  Worker::put_slot(s);
  fuse_reply_err(req, write_errno(st));
}

fuse_lowlevel_ops make_ops() {
  fuse_lowlevel_ops o{};
  o.init = op_init;
  o.lookup = op_lookup;
  o.getattr = op_getattr;
  o.setattr = op_setattr;
  o.opendir = op_opendir;
  o.readdir = op_readdir;
  o.open = op_open;
  o.read = op_read;
  o.write = op_write;
  o.flush = op_flush;
  o.fsync = op_fsync;
  o.release = op_release;
  o.statfs = op_statfs;
  o.fallocate = op_fallocate;
  SysfsTree::install(o, [](fuse_req_t req) -> SysfsTree& { return fs_of(req).sysfs(); });
  return o;
}

}  // namespace

bool FuseFs::valid_file_name(std::string_view n) {
  return !n.empty() && n != "." && n != ".." && n != SysfsTree::kName &&
         n.size() <= 255 && n.find('/') == std::string_view::npos;
}

uint64_t File::requests() const {
  uint64_t n = 0;
  for (unsigned i = 0; i < workers; ++i)
    n += counts[i].requests.load(std::memory_order_relaxed);
  return n;
}

FuseFs::FuseFs(const ExportTable& exports, unsigned workers,
               SysfsTree::DiskList sysfs_disks)
    : workers_(std::max(1u, workers)), next_ino_(kFirstFileIno), mtime_(time(nullptr)) {
  update(exports);
  if (!sysfs_disks) sysfs_disks = [this] { return disks(); };
  sysfs_ = std::make_unique<SysfsTree>(std::move(sysfs_disks));
}

std::vector<std::shared_ptr<Disk>> FuseFs::disks() const {
  std::lock_guard lock(mu_);  // a removed file's disk is released without it
  std::vector<std::shared_ptr<Disk>> out;
  for (const auto& f : all_) {
    if (f->removed.load(std::memory_order_relaxed)) continue;
    // A partition shows its disk (sys/block lists disks).
    std::shared_ptr<Disk> d(f->bdev, &f->bdev->disk());
    if (std::find(out.begin(), out.end(), d) == out.end()) out.push_back(std::move(d));
  }
  return out;
}

void FuseFs::add(const Export& e) {
  const size_t i = next_ino_ - kFirstFileIno;
  if (i >= kChunk * kChunks)
    throw Error(fmt::format("fuse: export '{}': no inode left ({} files were made)",
                            e.name, kChunk * kChunks));
  if (!chunks_[i / kChunk].load(std::memory_order_relaxed)) {
    mem_.push_back(std::make_unique<std::atomic<File*>[]>(kChunk));
    chunks_[i / kChunk].store(mem_.back().get(), std::memory_order_release);
  }
  auto f = std::make_unique<File>();
  f->name = e.name;
  f->bdev = e.bdev;
  f->ino = next_ino_++;
  f->size = e.bdev->size_bytes();
  f->lbs = e.bdev->disk().limits().logical_block_size;
  f->read_only = e.bdev->read_only();
  f->counts = std::make_unique<FileCounts[]>(workers_);
  f->workers = workers_;
  chunks_[i / kChunk].load(std::memory_order_relaxed)[i % kChunk].store(
      f.get(), std::memory_order_release);
  all_.push_back(std::move(f));
}

std::vector<File*> FuseFs::update(const ExportTable& exports) {
  std::lock_guard lock(mu_);
  std::vector<File*> gone;
  for (auto& f : all_) {
    if (f->removed.load(std::memory_order_relaxed)) continue;
    const Export* x = exports.find(f->name);
    if (x && x->name == f->name && x->bdev == f->bdev) continue;
    // Ordered against enter()'s count and check (both sequentially
    // consistent): an operation either counted itself before this (drain()
    // waits for it) or sees the mark.
    f->removed.store(true);
    gone.push_back(f.get());
  }
  for (const Export& e : exports.list()) {
    if (!valid_file_name(e.name)) {
      serve_log(fmt::format("fuse: export '{}' left out: not a file name (or '{}')",
                            e.name, SysfsTree::kName));
      continue;
    }
    bool live = false;
    for (auto& f : all_)
      live |= !f->removed.load(std::memory_order_relaxed) && f->name == e.name;
    if (!live) add(e);
  }
  return gone;
}

void FuseFs::drain(File* f) {
  const auto busy = [f] {
    int64_t n = 0;
    for (unsigned i = 0; i < f->workers; ++i) n += f->counts[i].busy.load();
    return n != 0;
  };
  while (busy()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (!f->read_only) {
    if (Status s = flush_device(*f); !ok(s))
      serve_log(fmt::format("fuse: flushing {}: {}", f->name, status_description(s)));
  }
  f->bdev.reset();  // no operation reaches it any more
}

File* FuseFs::enter(fuse_ino_t ino, int* err) const {
  File* f = file(ino);
  if (!f) {
    *err = ino == FUSE_ROOT_ID ? EISDIR : ENOENT;
    return nullptr;
  }
  FileCounts& c = f->counts[Worker::current()->index()];
  c.busy.fetch_add(1);
  if (f->removed.load()) {
    c.busy.fetch_sub(1);
    *err = EIO;
    return nullptr;
  }
  // This worker's own count: a plain increment, no locked instruction.
  c.requests.store(c.requests.load(std::memory_order_relaxed) + 1,
                   std::memory_order_relaxed);
  return f;
}

const fuse_lowlevel_ops& FuseFs::ops() {
  static const fuse_lowlevel_ops o = make_ops();
  return o;
}

File* FuseFs::file(fuse_ino_t ino) const {
  if (ino < kFirstFileIno) return nullptr;
  const size_t i = ino - kFirstFileIno;
  if (i >= kChunk * kChunks) return nullptr;
  std::atomic<File*>* chunk = chunks_[i / kChunk].load(std::memory_order_acquire);
  return chunk ? chunk[i % kChunk].load(std::memory_order_acquire) : nullptr;
}

File* FuseFs::find(std::string_view name) const {
  std::lock_guard lock(mu_);
  for (auto& f : all_)
    if (!f->removed.load(std::memory_order_relaxed) && f->name == name) return f.get();
  return nullptr;
}

std::vector<File*> FuseFs::files() const {
  std::lock_guard lock(mu_);
  std::vector<File*> live;
  for (auto& f : all_)
    if (!f->removed.load(std::memory_order_relaxed)) live.push_back(f.get());
  return live;  // all_ is in inode order
}

void FuseFs::fill_attr(fuse_ino_t ino, struct stat* st) const {
  *st = {};
  st->st_ino = ino;
  st->st_uid = getuid();
  st->st_gid = getgid();
  st->st_atime = st->st_mtime = st->st_ctime = mtime_;
  if (ino == FUSE_ROOT_ID) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    st->st_blksize = 4096;
    return;
  }
  const File& f = *file(ino);
  st->st_mode = S_IFREG | (f.read_only ? 0400 : 0600);
  st->st_nlink = 1;
  st->st_size = static_cast<off_t>(f.size);
  // `blkstack attach` gives the loop device this logical block size.
  st->st_blksize = f.lbs;
  st->st_blocks = static_cast<blkcnt_t>(f.size / 512);
}

}  // namespace blkstack::fuse
