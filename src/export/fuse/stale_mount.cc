#include "export/fuse/stale_mount.h"

#include <fmt/format.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "blkstack/error.h"
#include "export/log.h"

extern char** environ;

namespace blkstack::fuse {
namespace {

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      const std::string oct = s.substr(i + 1, 3);
      if (oct.size() == 3 && oct.find_first_not_of("01234567") == std::string::npos) {
        out.push_back(static_cast<char>(std::strtol(oct.c_str(), nullptr, 8)));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

// The directory's absolute path without resolving the last component (a
// stale mount point cannot be resolved: stat fails on it).
std::string absolute(const std::string& dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  const size_t slash = d.rfind('/');
  std::string parent =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : d.substr(0, slash));
  const std::string base = slash == std::string::npos ? d : d.substr(slash + 1);
  char buf[PATH_MAX];
  if (!realpath(parent.c_str(), buf)) return d;
  std::string p = buf;
  if (p != "/") p += '/';
  return p + base;
}

int run(const char* const argv[]) {
  pid_t pid = 0;
  if (posix_spawnp(&pid, argv[0], nullptr, nullptr, const_cast<char* const*>(argv),
                   environ) != 0)
    return -1;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

bool is_mounted(const std::string& dir, const std::string& fstype_prefix) {
  const std::string want = absolute(dir);
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
    std::istringstream f(line);
    std::string id, parent, devno, root, mnt;
    f >> id >> parent >> devno >> root >> mnt;
    if (unescape(mnt) != want) continue;
    std::string word;
    while (f >> word && word != "-") {
    }
    std::string fstype;
    f >> fstype;
    if (fstype.rfind(fstype_prefix, 0) == 0) return true;
  }
  return false;
}

std::string lazy_unmount(const std::string& dir) {
  if (umount2(dir.c_str(), MNT_DETACH) == 0) return {};
  const int err = errno;
  const char* const argv[] = {"fusermount3", "-u", "-z", dir.c_str(), nullptr};
  if (run(argv) == 0) return {};
  return fmt::format("umount2(MNT_DETACH): {}; fusermount3 -u -z failed too",
                     error_text(err));
}

bool prepare_mountpoint(const std::string& dir) {
  struct stat st;
  int err = 0;
  if (stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode))
      throw Error(fmt::format("--fuse '{}': not a directory", dir));
    if (!is_mounted(dir, "fuse")) return false;
    // stat() may be answered from attributes the kernel cached; statfs()
    // always asks the server, so it tells a dead mount from a live one.
    struct statfs sf;
    if (statfs(dir.c_str(), &sf) == 0) {
      if (!is_mounted(dir, "fuse.blkstack"))
        return false;  // someone else's: mount over it
      throw Error(fmt::format(
          "--fuse '{}': a live blkstack FUSE export is mounted there already (another "
          "blkstack serve?); stop it or unmount it first",
          dir));
    }
    err = errno;
  } else {
    err = errno;
  }
  if (err == ENOENT) {
    if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
      throw Error(fmt::format("--fuse '{}': cannot create the directory: {}", dir,
                              error_text(errno)));
    }
    return false;
  }
  if (err != ENOTCONN) {
    throw Error(fmt::format("--fuse '{}': {}", dir, error_text(err)));
  }
  serve_log(fmt::format(
      "{}: stale FUSE mount (transport endpoint is not connected: its server was "
      "killed?); clearing it with a lazy unmount",
      dir));
  if (std::string why = lazy_unmount(dir); !why.empty()) {
    throw Error(fmt::format("--fuse '{}': cannot clear the stale mount: {}", dir, why));
  }
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    throw Error(
        fmt::format("--fuse '{}': still unusable after clearing the stale mount: {}", dir,
                    error_text(errno)));
  }
  serve_log(fmt::format("{}: stale mount cleared", dir));
  return true;
}

}  // namespace blkstack::fuse
