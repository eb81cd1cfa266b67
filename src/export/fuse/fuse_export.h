// FuseExport: blkstack devices as files in a FUSE mount.
//
// One directory (the mount point) holds one regular file per export, named
// after it, as large as the device, mode 0600 (0400 read-only). A real file
// system reaches a device through it and a loop device (see export-fuse.md):
//
//   ext4 -> /dev/loopN (direct I/O) -> MNT/disk (FUSE) -> Worker -> Bio -> Disk
//
// The kernel's requests are read from /dev/fuse by a fixed pool of workers
// (worker.h) and become bios on the device (fuse_fs.h).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "export/export_table.h"

struct fuse_session;

namespace blkstack::fuse {

class FuseFs;
class Worker;

struct FuseOptions {
  std::string mountpoint;  // created if missing; a stale mount on it is cleared
  unsigned threads = 0;    // workers reading /dev/fuse; 0: one per core
  // How long stop() lets open files (a loop device still attached) keep the
  // mount alive before it cuts the connection.
  std::chrono::milliseconds grace = std::chrono::seconds(5);
  // The disks MNT/sys/block/ shows, asked for at each lookup; unset: those
  // of the exported files. blkstack serve gives all of its devices, as
  // /sys/block holds every disk, exported or not.
  std::function<std::vector<std::shared_ptr<Disk>>()> sysfs_disks;
};

class FuseExport {
 public:
  FuseExport(FuseOptions options, std::shared_ptr<const ExportTable> exports);
  ~FuseExport();  // stop()
  FuseExport(const FuseExport&) = delete;
  FuseExport& operator=(const FuseExport&) = delete;

  // Prepares the mount point (stale_mount.h), mounts, starts the workers and
  // returns once the mount answers. Throws Error naming what failed.
  void start();
  // Unmounts (lazily: a file still open keeps the connection for up to
  // `grace`), waits for the I/O in flight, flushes every device. Idempotent.
  void stop();

  // A reload: makes the files match `exports`. New exports appear as files;
  // a file whose export is gone, or now has another disk, disappears from
  // the directory (the kernel is told to forget it), its operations in
  // flight finish, and the handles still open on it then get EIO; its disk
  // is flushed and released before this returns. A file whose export
  // stays with the same disk is not touched. Before start(): replaces the
  // table start() mounts.
  void set_exports(std::shared_ptr<const ExportTable> exports);
  std::shared_ptr<const ExportTable> exports() const;

  const std::string& mountpoint() const { return options_.mountpoint; }
  // The exported file names, in order.
  std::vector<std::string> files() const;
  // The handles open on the file `name` now, and the operations that
  // reached its disk since it appeared; zero for an unknown name.
  uint64_t open_handles(std::string_view name) const;
  uint64_t requests(std::string_view name) const;
  unsigned threads() const { return static_cast<unsigned>(workers_.size()); }

 private:
  FuseOptions options_;
  mutable std::mutex mu_;  // exports_; set_exports() one at a time
  std::shared_ptr<const ExportTable> exports_;
  std::unique_ptr<FuseFs> fs_;
  fuse_session* se_ = nullptr;
  std::vector<std::unique_ptr<Worker>> workers_;
  bool mounted_ = false;
  bool stopped_ = false;
};

}  // namespace blkstack::fuse
