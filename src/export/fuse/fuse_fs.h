// FuseFs: the file system the FUSE export mounts — one directory with one
// regular file per exported device — and the handlers that turn FUSE
// requests on those files into bios.
//
// The set of files changes with reloads (update()): a file is never
// freed while mounted, only marked removed, so a request that names its
// inode finds it without a lock. Every operation that reaches a disk is
// counted on its file by the worker that runs it (enter()/leave(), one
// cache line per worker), which is how drain() knows when a removed file's
// disk is no longer used.
//
//   READ   -> clamp at the end of the device, widen to whole logical blocks
//             -> one read bio into the slot's buffer -> fuse_reply_buf of the
//             part asked for (no copy: the reply is a writev of that buffer)
//   WRITE  -> (FUA when the writer asked for O_SYNC/O_DSYNC/RWF_DSYNC)
//             aligned: one write bio straight from the receive buffer (see
//             worker.h) -> fuse_reply_write. Unaligned: the partial first and
//             last blocks are read, patched and written with the aligned
//             middle in one bio (read-modify-write of the edges only, under
//             the file's rmw lock)
//   FLUSH, FSYNC -> a flush bio (PREFLUSH)
//   FALLOCATE    PUNCH_HOLE|KEEP_SIZE -> discard; ZERO_RANGE -> zeroout()
//                keeping the range allocated (zeroout.h: write-zeroes where
//                the device keeps space with it, else zero data); partial
//                blocks at the edges are zeroed by read-modify-write
//
// Completions answer the kernel from whatever thread completes the bio.
// Files are opened with FOPEN_DIRECT_IO: the kernel's page cache is not used
// for them (the device below has its own, and a loop device above has the
// one that matters), so every read and write reaches the device.
#pragma once

#include <fuse_lowlevel.h>

#include <atomic>
#include <cstdint>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "blkstack/status.h"
#include "export/fuse/sysfs_tree.h"

namespace blkstack {
class BlockDevice;
class Disk;
class ExportTable;
struct Export;
}  // namespace blkstack

namespace blkstack::fuse {

// The errno a reply carries for a block-layer status (0 for kOk). Busy
// ones never get here: the bio goes again (status_is_busy).
int status_errno(Status s, bool write);

// One worker's share of a file's counts, on a cache line of its own.
struct alignas(64) FileCounts {
  std::atomic<int64_t> busy{0};  // operations using the disk now
  std::atomic<uint64_t> requests{0};
};

struct File {
  std::string name;
  // The exported device, a whole disk or a partition (Export::bdev):
  // released once removed and drained.
  std::shared_ptr<BlockDevice> bdev;
  fuse_ino_t ino = 0;
  uint64_t size = 0;  // bytes
  uint32_t lbs = 512;
  bool read_only = false;
  // Serialises read-modify-write of partial blocks, so two unaligned writes
  // into the same block do not undo each other.
  std::mutex rmw;
  // A reload dropped the export: operations find it set and fail with EIO.
  std::atomic<bool> removed{false};
  std::atomic<uint32_t> open_handles{0};  // open()s not yet released
  std::unique_ptr<FileCounts[]> counts;   // one per worker
  unsigned workers = 0;

  // Operations that reach the disk are bracketed by FuseFs::enter() and
  // leave(worker), the index of the worker that entered.
  void leave(unsigned worker) { counts[worker].busy.fetch_sub(1); }
  uint64_t requests() const;
};

// Flushes the disk under `f`'s device (a partition's flush is its disk's,
// as in Linux), waiting for it. Not from a submit path.
Status flush_device(const File& f);

class FuseFs {
 public:
  // Files for the exports whose names can be file names (others are logged
  // and left out); `workers`: how many workers will serve them;
  // `sysfs_disks`: what sys/block shows (unset: the files' disks).
  FuseFs(const ExportTable& exports, unsigned workers,
         SysfsTree::DiskList sysfs_disks = nullptr);

  static const fuse_lowlevel_ops& ops();
  // Whether an export called `name` can be a file in the mount's root: a
  // file name (1 to 255 bytes, no '/', not "." or "..") other than the
  // sys/ tree's.
  static bool valid_file_name(std::string_view name);
  // The file with inode `ino`, removed or not; null if none. Lock-free.
  File* file(fuse_ino_t ino) const;
  // The live file called `name`; null if none.
  File* find(std::string_view name) const;
  // The live files, by inode.
  std::vector<File*> files() const;

  // On a worker: the file `ino`, counted as busy until leave(), for an
  // operation that reaches its disk; null with *err set (ENOENT, EISDIR, or
  // EIO once removed).
  File* enter(fuse_ino_t ino, int* err) const;

  // Makes the file set match `exports`: a file whose export is new, or now
  // has another disk, is added (a new inode); files whose export is gone or
  // changed are marked removed and returned, for the caller to tell the
  // kernel and drain(). Unchanged files stay as they are.
  std::vector<File*> update(const ExportTable& exports);
  // Waits until no operation uses `f`'s disk, then releases the disk.
  static void drain(File* f);

  void fill_attr(fuse_ino_t ino, struct stat* st) const;

  // The sys/block tree beside the files (sysfs_tree.h), over the disks
  // given at construction, else those of the exported files, each once.
  SysfsTree& sysfs() { return *sysfs_; }
  std::vector<std::shared_ptr<Disk>> disks() const;

 private:
  // Inodes are never reused: a removed file's inode stays (removed) for
  // handles still open on it. The table is two levels of chunks published
  // with release stores, so lookups on the I/O path take no lock.
  static constexpr size_t kChunk = 1024;
  static constexpr size_t kChunks = 1024;
  void add(const Export& e);  // under mu_

  unsigned workers_;
  std::atomic<std::atomic<File*>*> chunks_[kChunks] = {};
  mutable std::mutex mu_;                   // adding and removing; the name space below
  std::vector<std::unique_ptr<File>> all_;  // every file made
  std::vector<std::unique_ptr<std::atomic<File*>[]>> mem_;  // the chunks
  fuse_ino_t next_ino_;
  time_t mtime_;
  std::unique_ptr<SysfsTree> sysfs_;
};

}  // namespace blkstack::fuse
