// FuseFs: the file system the FUSE export mounts — one directory with one
// regular file per exported device — and the handlers that turn FUSE
// requests on those files into bios.
//
//   READ   -> clamp at the end of the device, widen to whole logical blocks
//             -> one read bio into the slot's buffer -> fuse_reply_buf of the
//             part asked for (no copy: the reply is a writev of that buffer)
//   WRITE  -> aligned: one write bio straight from the receive buffer (see
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

#include <cstdint>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "export/fuse/sysfs_tree.h"

namespace blkstack {
class Disk;
class ExportTable;
}  // namespace blkstack

namespace blkstack::fuse {

struct File {
  std::string name;
  std::shared_ptr<Disk> disk;
  fuse_ino_t ino = 0;
  uint64_t size = 0;  // bytes
  uint32_t lbs = 512;
  bool read_only = false;
  // Serialises read-modify-write of partial blocks, so two unaligned writes
  // into the same block do not undo each other.
  std::mutex rmw;
};

class FuseFs {
 public:
  // Files for the exports whose names can be file names (others are logged
  // and left out).
  explicit FuseFs(const ExportTable& exports);

  static const fuse_lowlevel_ops& ops();
  File* file(fuse_ino_t ino);
  File* find(const char* name);
  const std::vector<std::unique_ptr<File>>& files() const { return files_; }

  void fill_attr(fuse_ino_t ino, struct stat* st) const;

  // The sys/block tree beside the files (sysfs_tree.h), over the disks of
  // the exported files, each once.
  SysfsTree& sysfs() { return *sysfs_; }
  std::vector<std::shared_ptr<Disk>> disks() const;

 private:
  std::vector<std::unique_ptr<File>> files_;
  time_t mtime_;
  std::unique_ptr<SysfsTree> sysfs_;
};

}  // namespace blkstack::fuse
