#include "loop_device.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "blkstack/error.h"

namespace blkstack::cli {
namespace {

constexpr unsigned kLoopMajor = 7;
constexpr long kFuseSuperMagic = 0x65735546;

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

bool power_of_two(uint32_t v) { return v && (v & (v - 1)) == 0; }

std::string not_root_hint(int err) {
  return err == EPERM || err == EACCES ? " (loop devices need root: run it with sudo)"
                                       : "";
}

// What the loop device serves, per sysfs; empty when it is free.
std::string backing_file(const std::string& loop_name) {
  std::ifstream in("/sys/block/" + loop_name + "/loop/backing_file");
  std::string s;
  std::getline(in, s);
  return s;
}

}  // namespace

LoopAttached loop_attach(const std::string& file, const LoopOptions& o) {
  bool read_only = o.read_only;
  int fd = ::open(file.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (fd < 0 && !read_only && (errno == EACCES || errno == EROFS || errno == EPERM)) {
    fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);  // a read-only export (0400)
    read_only = fd >= 0;
  }
  if (fd < 0) throw Error(fmt::format("{}: {}", file, std::strerror(errno)));
  Fd file_fd(fd);
  struct stat st;
  if (fstat(fd, &st) != 0) throw Error(fmt::format("{}: {}", file, std::strerror(errno)));
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    throw Error(fmt::format("{}: not a regular file", file));

  uint32_t sector_size = o.sector_size;
  if (sector_size == 0) {
    // A blkstack FUSE file says its device's logical block size in
    // st_blksize; other files get losetup's default.
    struct statfs sf;
    sector_size = 512;
    if (fstatfs(fd, &sf) == 0 && sf.f_type == kFuseSuperMagic && st.st_blksize >= 512 &&
        st.st_blksize <= 4096 && power_of_two(static_cast<uint32_t>(st.st_blksize)))
      sector_size = static_cast<uint32_t>(st.st_blksize);
  }
  if (!power_of_two(sector_size) || sector_size < 512 || sector_size > 4096)
    throw Error(
        fmt::format("--sector-size {}: expected 512, 1024, 2048 or 4096", sector_size));

  const int ctl = ::open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) {
    const int err = errno;
    throw Error(
        fmt::format("/dev/loop-control: {}{}", std::strerror(err), not_root_hint(err)));
  }
  Fd ctl_fd(ctl);
  // Another program may take the device between GET_FREE and CONFIGURE.
  for (int attempt = 0; attempt < 16; ++attempt) {
    const int n = ioctl(ctl, LOOP_CTL_GET_FREE);
    if (n < 0) {
      const int err = errno;
      throw Error(fmt::format("no free loop device: LOOP_CTL_GET_FREE: {}{}",
                              std::strerror(err), not_root_hint(err)));
    }
    const std::string dev = fmt::format("/dev/loop{}", n);
    const int lfd = ::open(dev.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (lfd < 0) {
      const int err = errno;
      if (err == ENOENT || err == ENXIO) continue;
      throw Error(fmt::format("{}: {}{}", dev, std::strerror(err), not_root_hint(err)));
    }
    Fd loop_fd(lfd);
    loop_config cfg{};
    cfg.fd = static_cast<uint32_t>(fd);
    cfg.block_size = sector_size;
    cfg.info.lo_flags =
        (read_only ? LO_FLAGS_READ_ONLY : 0) | (o.direct_io ? LO_FLAGS_DIRECT_IO : 0);
    char path[PATH_MAX];
    // The name losetup shows (truncated to LO_NAME_SIZE like losetup's).
    const std::string shown = realpath(file.c_str(), path) ? path : file;
    const size_t name_len = std::min(shown.size(), size_t{LO_NAME_SIZE - 1});
    std::memcpy(cfg.info.lo_file_name, shown.data(), name_len);
    if (ioctl(lfd, LOOP_CONFIGURE, &cfg) == 0) {
      loop_info64 info{};
      bool dio = false;
      if (ioctl(lfd, LOOP_GET_STATUS64, &info) == 0)
        dio = info.lo_flags & LO_FLAGS_DIRECT_IO;
      return LoopAttached{dev, sector_size, read_only, dio};
    }
    const int err = errno;
    if (err == EBUSY) continue;  // taken meanwhile: ask for another
    if (err == EINVAL && o.direct_io && (cfg.info.lo_flags & LO_FLAGS_DIRECT_IO)) {
      // Older kernels refuse direct I/O they cannot do; buffered still works.
      cfg.info.lo_flags &= ~LO_FLAGS_DIRECT_IO;
      if (ioctl(lfd, LOOP_CONFIGURE, &cfg) == 0)
        return LoopAttached{dev, sector_size, read_only, false};
    }
    throw Error(fmt::format("{}: LOOP_CONFIGURE of {}: {}{}", dev, file,
                            std::strerror(err), not_root_hint(err)));
  }
  throw Error("no free loop device: each one found was taken by someone else first");
}

std::vector<std::string> loops_backed_by(const std::string& file) {
  struct stat want;
  if (stat(file.c_str(), &want) != 0)
    throw Error(fmt::format("{}: {}", file, std::strerror(errno)));
  std::vector<std::string> out;
  DIR* d = opendir("/sys/block");
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.rfind("loop", 0) != 0 || backing_file(name).empty()) continue;
    const std::string dev = "/dev/" + name;
    Fd lfd(::open(dev.c_str(), O_RDONLY | O_CLOEXEC));
    loop_info64 info{};
    if (lfd.get() < 0 || ioctl(lfd.get(), LOOP_GET_STATUS64, &info) != 0) continue;
    if (info.lo_device == want.st_dev && info.lo_inode == want.st_ino) out.push_back(dev);
  }
  closedir(d);
  return out;
}

bool loop_detach(const std::string& device) {
  struct stat st;
  if (stat(device.c_str(), &st) != 0)
    throw Error(fmt::format("{}: {}", device, std::strerror(errno)));
  if (!S_ISBLK(st.st_mode) || major(st.st_rdev) != kLoopMajor)
    throw Error(fmt::format("{}: not a loop device", device));
  {
    Fd fd(::open(device.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
      const int err = errno;
      throw Error(
          fmt::format("{}: {}{}", device, std::strerror(err), not_root_hint(err)));
    }
    if (ioctl(fd.get(), LOOP_CLR_FD, 0) != 0) {
      const int err = errno;
      if (err == ENXIO) throw Error(fmt::format("{}: not attached to anything", device));
      throw Error(fmt::format("{}: LOOP_CLR_FD: {}{}", device, std::strerror(err),
                              not_root_hint(err)));
    }
  }
  // The kernel detaches at the last close (ours, just now, unless someone
  // else — a mounted file system — still has the device open).
  const std::string name = device.substr(device.rfind('/') + 1);
  for (int i = 0; i < 100; ++i) {
    if (backing_file(name).empty()) return true;
    usleep(10000);
  }
  return false;
}

}  // namespace blkstack::cli
