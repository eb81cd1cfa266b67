#include "export/fuse/fuse_export.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <fuse_lowlevel.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/error.h"
#include "export/fuse/fuse_fs.h"
#include "export/fuse/stale_mount.h"
#include "export/fuse/worker.h"
#include "export/log.h"

namespace blkstack::fuse {

namespace {

// Mounts DIR on a new /dev/fuse descriptor (what libfuse does as root) and
// returns the descriptor, or -1 to let libfuse try (fusermount3). libfuse
// takes it as "/dev/fd/N"; mounting ourselves leaves libfuse nothing to
// unmount, which we do lazily in stop() (see there).
int mount_as_root(const std::string& mnt) {
  struct stat st;
  if (stat(mnt.c_str(), &st) != 0) return -1;
  const int fd = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) return -1;
  const std::string opts =
      fmt::format("fd={},rootmode={:o},user_id={},group_id={},default_permissions", fd,
                  st.st_mode & S_IFMT, getuid(), getgid());
  if (mount("blkstack", mnt.c_str(), "fuse.blkstack", MS_NOSUID | MS_NODEV,
            opts.c_str()) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

FuseExport::FuseExport(FuseOptions options, std::shared_ptr<const ExportTable> exports)
    : options_(std::move(options)), exports_(std::move(exports)) {}

FuseExport::~FuseExport() { stop(); }

std::vector<std::string> FuseExport::files() const {
  std::vector<std::string> names;
  if (fs_)
    for (const File* f : fs_->files()) names.push_back(f->name);
  return names;
}

uint64_t FuseExport::open_handles(std::string_view name) const {
  const File* f = fs_ ? fs_->find(name) : nullptr;
  return f ? f->open_handles.load(std::memory_order_relaxed) : 0;
}

uint64_t FuseExport::requests(std::string_view name) const {
  const File* f = fs_ ? fs_->find(name) : nullptr;
  return f ? f->requests() : 0;
}

std::shared_ptr<const ExportTable> FuseExport::exports() const {
  std::lock_guard lock(mu_);
  return exports_;
}

void FuseExport::set_exports(std::shared_ptr<const ExportTable> exports) {
  std::lock_guard lock(mu_);
  exports_ = std::move(exports);
  if (!fs_ || stopped_) return;
  const std::vector<File*> gone = fs_->update(*exports_);
  // The kernel keeps names and attributes for an hour (kAttrTimeout): tell
  // it they changed, so a dropped file goes from the directory now and a
  // replaced one is looked up afresh (a new inode, maybe a new size).
  for (const File* f : gone) {
    fuse_lowlevel_notify_inval_entry(se_, FUSE_ROOT_ID, f->name.c_str(), f->name.size());
    fuse_lowlevel_notify_inval_inode(se_, f->ino, 0, 0);
  }
  fuse_lowlevel_notify_inval_inode(se_, FUSE_ROOT_ID, 0, 0);
  for (File* f : gone) {
    FuseFs::drain(f);
    serve_log(fmt::format("fuse: {}: removed", f->name));
  }
}

void FuseExport::start() {
  const std::string& mnt = options_.mountpoint;
  prepare_mountpoint(mnt);
  unsigned n = options_.threads ? options_.threads : std::thread::hardware_concurrency();
  if (n == 0) n = 1;
  fs_ = std::make_unique<FuseFs>(*exports(), n, options_.sysfs_disks);
  if (fs_->files().empty())
    throw Error(fmt::format("--fuse '{}': no export can be a file there", mnt));

  // default_permissions: the kernel checks the mode bits (0600/0400), so a
  // read-only export cannot be opened for writing by anyone.
  const char* argv[] = {"blkstack", "-o",
                        "fsname=blkstack,subtype=blkstack,default_permissions"};
  fuse_args args = FUSE_ARGS_INIT(3, const_cast<char**>(argv));
  se_ = fuse_session_new(&args, &FuseFs::ops(), sizeof(fuse_lowlevel_ops), fs_.get());
  fuse_opt_free_args(&args);  // parsing may have copied them
  if (!se_) throw Error(fmt::format("--fuse '{}': cannot create a FUSE session", mnt));
  const int fd = getuid() == 0 ? mount_as_root(mnt) : -1;
  const std::string target = fd >= 0 ? fmt::format("/dev/fd/{}", fd) : mnt;
  if (fuse_session_mount(se_, target.c_str()) != 0) {
    fuse_session_destroy(se_);
    se_ = nullptr;
    if (fd >= 0) {
      // Our own mount: libfuse did not take the descriptor, so undo both,
      // or the mount would stay with no server behind it.
      if (std::string why = lazy_unmount(mnt); !why.empty())
        serve_log(fmt::format("fuse: {}: cannot unmount: {}", mnt, why));
      ::close(fd);
    }
    throw Error(fmt::format(
        "--fuse '{}': cannot mount (is /dev/fuse there, and fusermount3 when not root?)",
        mnt));
  }
  mounted_ = true;

  Worker::install_interrupt_handler();
  for (unsigned i = 0; i < n; ++i) {
    workers_.push_back(std::make_unique<Worker>(se_, i));
    workers_.back()->start();
  }
  // The first stat waits for the kernel's INIT to be answered: once it
  // returns, the files are there for whoever reads the pidfile next.
  struct stat st;
  if (stat(mnt.c_str(), &st) != 0) {
    const int err = errno;
    stop();
    throw Error(fmt::format("--fuse '{}': the new mount does not answer: {}", mnt,
                            error_text(err)));
  }
}

void FuseExport::stop() {
  if (stopped_ || !se_) return;
  stopped_ = true;
  const std::string& mnt = options_.mountpoint;
  // Detach the mount: with no file open the kernel ends the connection and
  // the workers' reads fail with ENODEV. An open file (a loop device) keeps
  // the connection, and its I/O is served, until the grace runs out.
  // (Not fuse_session_unmount(): it closes /dev/fuse under the workers, so
  // an open file's requests would be read and never answered.)
  if (mounted_) {
    if (std::string why = lazy_unmount(mnt); !why.empty())
      serve_log(fmt::format("fuse: {}: cannot unmount: {}", mnt, why));
    mounted_ = false;
  }
  auto all_finished = [&] {
    for (auto& w : workers_)
      if (!w->finished()) return false;
    return true;
  };
  const auto deadline = std::chrono::steady_clock::now() + options_.grace;
  while (!all_finished() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (!all_finished()) {
    serve_log(fmt::format(
        "fuse: {}: a file is still open (a loop device? `blkstack detach` it first); "
        "closing the connection, its I/O will fail",
        mnt));
  }
  while (!all_finished()) {
    for (auto& w : workers_) w->interrupt();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (auto& w : workers_) w->join();
  // Bios still running answer a kernel that no longer listens; their slots
  // belong to the workers, which must outlive them.
  for (auto& w : workers_)
    while (w->outstanding() != 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  for (const File* f : fs_->files()) {
    if (f->read_only) continue;
    if (Status s = flush_device(*f); !ok(s))
      serve_log(fmt::format("fuse: flushing {}: {}", f->name, status_description(s)));
  }
  fuse_session_destroy(se_);  // closes /dev/fuse
  se_ = nullptr;
  workers_.clear();
}

}  // namespace blkstack::fuse
