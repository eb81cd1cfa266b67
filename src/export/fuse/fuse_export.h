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
#include <memory>
#include <string>
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

  const std::string& mountpoint() const { return options_.mountpoint; }
  // The exported file names, in order.
  std::vector<std::string> files() const;
  unsigned threads() const { return static_cast<unsigned>(workers_.size()); }

 private:
  FuseOptions options_;
  std::shared_ptr<const ExportTable> exports_;
  std::unique_ptr<FuseFs> fs_;
  fuse_session* se_ = nullptr;
  std::vector<std::unique_ptr<Worker>> workers_;
  bool mounted_ = false;
  bool stopped_ = false;
};

}  // namespace blkstack::fuse
