#include "export/fuse/sysfs_tree.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <string_view>

#include "blkstack/disk.h"
#include "serve/control_protocol.h"
#include "serve/disk_attributes.h"

namespace blkstack::fuse {
namespace {

constexpr std::string_view kBlock = "block";

// The handlers install() wrapped, and how to find a request's tree. Set
// once, when the mount's operations table is built.
fuse_lowlevel_ops g_base;
SysfsTree& (*g_tree_of)(fuse_req_t) = nullptr;

int errno_of(const serve::ControlError& e) {
  if (e.code() == serve::control_code::kNotFound) return ENOENT;
  if (e.code() == serve::control_code::kInvalidArgument) return EINVAL;
  if (e.code() == serve::control_code::kBusy) return EBUSY;
  return EIO;
}

std::string join(const std::string& dir, std::string_view name) {
  return dir.empty() ? std::string(name) : dir + "/" + std::string(name);
}

// --- the wrappers: the tree's inodes here, the rest to the base handlers ----

void w_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  if (SysfsTree::owns(parent) ||
      (parent == FUSE_ROOT_ID && std::strcmp(name, SysfsTree::kName) == 0)) {
    return g_tree_of(req).lookup(req, parent, name);
  }
  g_base.lookup(req, parent, name);
}

void w_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (SysfsTree::owns(ino)) return g_tree_of(req).getattr(req, ino);
  g_base.getattr(req, ino, fi);
}

// `echo x > FILE` truncates first: as sysfs, ignored.
void w_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
               fuse_file_info* fi) {
  if (SysfsTree::owns(ino)) return g_tree_of(req).getattr(req, ino);
  g_base.setattr(req, ino, attr, to_set, fi);
}

void w_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (SysfsTree::owns(ino)) return g_tree_of(req).opendir(req, ino, fi);
  g_base.opendir(req, ino, fi);
}

void w_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
               fuse_file_info* fi) {
  if (SysfsTree::owns(ino)) return g_tree_of(req).readdir(req, ino, size, off);
  g_base.readdir(req, ino, size, off, fi);
}

void w_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (SysfsTree::owns(ino)) return g_tree_of(req).open(req, ino, fi);
  g_base.open(req, ino, fi);
}

void w_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  if (SysfsTree::owns(ino)) return g_tree_of(req).read(req, size, off, fi);
  g_base.read(req, ino, size, off, fi);
}

void w_write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off,
             fuse_file_info* fi) {
  if (SysfsTree::owns(ino)) return g_tree_of(req).write(req, ino, buf, size);
  g_base.write(req, ino, buf, size, off, fi);
}

void w_flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (SysfsTree::owns(ino)) return (void)fuse_reply_err(req, 0);
  g_base.flush(req, ino, fi);
}

void w_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  if (SysfsTree::owns(ino)) return (void)fuse_reply_err(req, 0);
  g_base.fsync(req, ino, datasync, fi);
}

void w_release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (SysfsTree::owns(ino)) return g_tree_of(req).release(req, fi);
  g_base.release(req, ino, fi);
}

void w_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                 fuse_file_info* fi) {
  if (SysfsTree::owns(ino)) return (void)fuse_reply_err(req, EOPNOTSUPP);
  g_base.fallocate(req, ino, mode, off, len, fi);
}

}  // namespace

SysfsTree::SysfsTree(DiskList disks) : disks_(std::move(disks)) {
  paths_.push_back("");  // kSysIno: sys/ itself
  inos_.emplace("", kSysIno);
}

void SysfsTree::install(fuse_lowlevel_ops& ops, SysfsTree& (*tree_of)(fuse_req_t)) {
  g_base = ops;
  g_tree_of = tree_of;
  ops.lookup = w_lookup;
  ops.getattr = w_getattr;
  ops.setattr = w_setattr;
  ops.opendir = w_opendir;
  ops.readdir = w_readdir;
  ops.open = w_open;
  ops.read = w_read;
  ops.write = w_write;
  ops.flush = w_flush;
  ops.fsync = w_fsync;
  ops.release = w_release;
  ops.fallocate = w_fallocate;
}

std::shared_ptr<Disk> SysfsTree::find_disk(const std::string& name) const {
  for (auto& d : disks_()) {
    if (d->name() == name) return d;
  }
  return nullptr;
}

SysfsTree::Resolved SysfsTree::resolve(const std::string& path) const {
  Resolved r;
  if (path.empty() || path == kBlock) {
    r.kind = Kind::kDir;
    return r;
  }
  if (!path.starts_with(std::string(kBlock) + "/")) return r;
  const std::string rest = path.substr(kBlock.size() + 1);
  const size_t slash = rest.find('/');
  r.disk = find_disk(rest.substr(0, slash));
  if (r.disk == nullptr) return r;
  if (slash == std::string::npos) {
    r.kind = Kind::kDir;
    return r;
  }
  const std::string attr = rest.substr(slash + 1);
  for (const serve::DiskAttribute& a : serve::list_disk_attributes(*r.disk)) {
    if (a.name == attr) {
      r.kind = a.writable ? Kind::kWritableFile : Kind::kFile;
      r.attribute = attr;
      return r;
    }
    if (a.name.size() > attr.size() && a.name.starts_with(attr) &&
        a.name[attr.size()] == '/') {
      r.kind = Kind::kDir;
    }
  }
  return r;
}

std::vector<std::pair<std::string, bool>> SysfsTree::children(
    const std::string& path) const {
  std::vector<std::pair<std::string, bool>> out;
  if (path.empty()) {
    out.emplace_back(kBlock, true);
    return out;
  }
  std::set<std::string> seen;
  if (path == kBlock) {
    for (auto& d : disks_()) {
      if (d->name().find('/') == std::string::npos && seen.insert(d->name()).second) {
        out.emplace_back(d->name(), true);
      }
    }
    return out;
  }
  const Resolved r = resolve(path);
  if (r.kind != Kind::kDir || r.disk == nullptr) return out;
  // The part of the path below block/DEV, as a prefix of attribute names.
  const std::string rest = path.substr(kBlock.size() + 1);
  const size_t slash = rest.find('/');
  const std::string prefix =
      slash == std::string::npos ? "" : rest.substr(slash + 1) + "/";
  for (const serve::DiskAttribute& a : serve::list_disk_attributes(*r.disk)) {
    if (!a.name.starts_with(prefix)) continue;
    const std::string below = a.name.substr(prefix.size());
    const size_t next = below.find('/');
    const std::string name = below.substr(0, next);
    if (seen.insert(name).second) out.emplace_back(name, next != std::string::npos);
  }
  return out;
}

fuse_ino_t SysfsTree::ino_of(const std::string& path) {
  std::lock_guard lock(lock_);
  auto [it, added] = inos_.emplace(path, kSysIno + paths_.size());
  if (added) paths_.push_back(path);
  return it->second;
}

bool SysfsTree::path_of(fuse_ino_t ino, std::string& path) const {
  std::lock_guard lock(lock_);
  if (ino < kSysIno || ino - kSysIno >= paths_.size()) return false;
  path = paths_[ino - kSysIno];
  return true;
}

void SysfsTree::fill_attr(fuse_ino_t ino, Kind kind, struct stat* st) const {
  *st = {};
  st->st_ino = ino;
  st->st_uid = getuid();
  st->st_gid = getgid();
  if (kind == Kind::kDir) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
  } else {
    // As sysfs: a page, whatever the value's length.
    st->st_mode = S_IFREG | (kind == Kind::kWritableFile ? 0644 : 0444);
    st->st_nlink = 1;
    st->st_size = 4096;
  }
  st->st_blksize = 4096;
}

void SysfsTree::lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  std::string path;
  if (parent != FUSE_ROOT_ID) {
    if (!path_of(parent, path)) return (void)fuse_reply_err(req, ENOENT);
    path = join(path, name);
  }
  const Resolved r = resolve(path);
  if (r.kind == Kind::kNone) return (void)fuse_reply_err(req, ENOENT);
  fuse_entry_param e{};
  e.ino = ino_of(path);
  e.generation = 1;
  fill_attr(e.ino, r.kind, &e.attr);
  // No caching: attributes come and go (a scheduler's iosched/, a reload).
  e.attr_timeout = 0;
  e.entry_timeout = 0;
  fuse_reply_entry(req, &e);
}

void SysfsTree::getattr(fuse_req_t req, fuse_ino_t ino) {
  std::string path;
  if (!path_of(ino, path)) return (void)fuse_reply_err(req, ENOENT);
  const Resolved r = resolve(path);
  if (r.kind == Kind::kNone) return (void)fuse_reply_err(req, ENOENT);
  struct stat st;
  fill_attr(ino, r.kind, &st);
  fuse_reply_attr(req, &st, 0);
}

void SysfsTree::opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  std::string path;
  if (!path_of(ino, path)) return (void)fuse_reply_err(req, ENOENT);
  const Resolved r = resolve(path);
  if (r.kind == Kind::kNone) return (void)fuse_reply_err(req, ENOENT);
  if (r.kind != Kind::kDir) return (void)fuse_reply_err(req, ENOTDIR);
  fuse_reply_open(req, fi);
}

void SysfsTree::readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off) {
  std::string path;
  if (!path_of(ino, path)) return (void)fuse_reply_err(req, ENOENT);
  const auto entries = children(path);
  std::vector<char> buf(size);
  size_t used = 0;
  // Entry i is ".", "..", then the children; `off` is the next entry's index.
  for (size_t i = static_cast<size_t>(off); i < entries.size() + 2; ++i) {
    struct stat st {};
    std::string name;
    if (i < 2) {
      st.st_ino = ino;
      st.st_mode = S_IFDIR;
      name = i == 0 ? "." : "..";
    } else {
      const auto& [n, dir] = entries[i - 2];
      name = n;
      st.st_ino = ino_of(join(path, n));
      st.st_mode = dir ? S_IFDIR : S_IFREG;
    }
    const size_t n = fuse_add_direntry(req, buf.data() + used, size - used, name.c_str(),
                                       &st, static_cast<off_t>(i + 1));
    if (n > size - used) break;
    used += n;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void SysfsTree::open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  std::string path;
  if (!path_of(ino, path)) return (void)fuse_reply_err(req, ENOENT);
  const Resolved r = resolve(path);
  if (r.kind == Kind::kNone) return (void)fuse_reply_err(req, ENOENT);
  if (r.kind == Kind::kDir) return (void)fuse_reply_err(req, EISDIR);
  const int access = fi->flags & O_ACCMODE;
  if (access != O_RDONLY && r.kind != Kind::kWritableFile) {
    return (void)fuse_reply_err(req, EACCES);
  }
  fi->direct_io = 1;  // the value, not the page cache's copy of an old one
  fi->keep_cache = 0;
  fi->fh = 0;
  if (access != O_WRONLY) {
    // Read once, at open, as sysfs fills its buffer; freed at release.
    try {
      fi->fh = reinterpret_cast<uint64_t>(
          new std::string(serve::read_disk_attribute(*r.disk, r.attribute) + "\n"));
    } catch (const serve::ControlError& e) {
      return (void)fuse_reply_err(req, errno_of(e));
    }
  }
  if (fuse_reply_open(req, fi) != 0) delete reinterpret_cast<std::string*>(fi->fh);
}

void SysfsTree::read(fuse_req_t req, size_t size, off_t off, fuse_file_info* fi) {
  const auto* value = reinterpret_cast<const std::string*>(fi->fh);
  if (value == nullptr) return (void)fuse_reply_err(req, EBADF);
  if (off < 0 || static_cast<size_t>(off) >= value->size()) {
    return (void)fuse_reply_buf(req, nullptr, 0);
  }
  const size_t n = std::min(size, value->size() - static_cast<size_t>(off));
  fuse_reply_buf(req, value->data() + off, n);
}

void SysfsTree::write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size) {
  std::string path;
  if (!path_of(ino, path)) return (void)fuse_reply_err(req, ENOENT);
  const Resolved r = resolve(path);
  if (r.kind != Kind::kWritableFile) {
    return (void)fuse_reply_err(req, r.kind == Kind::kNone ? ENOENT : EACCES);
  }
  try {
    serve::write_disk_attribute(*r.disk, r.attribute, std::string_view(buf, size));
  } catch (const serve::ControlError& e) {
    return (void)fuse_reply_err(req, errno_of(e));
  }
  fuse_reply_write(req, size);
}

void SysfsTree::release(fuse_req_t req, fuse_file_info* fi) {
  delete reinterpret_cast<std::string*>(fi->fh);
  fuse_reply_err(req, 0);
}

}  // namespace blkstack::fuse
