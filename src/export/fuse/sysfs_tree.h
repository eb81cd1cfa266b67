// SysfsTree: the sys/block/DEV/ tree of the FUSE mount, beside the exported
// files — what /sys/block/DEV/ holds (size, stat, inflight, ro, queue/*,
// queue/iosched/*), for the disks it is given (serve: all of them), read
// and written through serve/disk_attributes.h so that it shows what the
// control socket shows:
//
//   cat MNT/sys/block/disk0/queue/scheduler         [none]
//   echo 512 > MNT/sys/block/disk0/queue/max_sectors_kb
//
// The tree is not stored: a node is a path ("block/disk0/queue"), and
// whether it exists, and what a directory holds, is asked of the disk's
// attributes each time, so a scheduler's queue/iosched/ appears when it is
// switched to and a reload's disks come and go. Each path gets an inode
// number the first time it is looked up, kept for the life of the mount.
//
// A file's value is read when it is opened (as sysfs does) and each write()
// sets it: a bad value fails the write with EINVAL, a read-only attribute
// with EACCES.
#pragma once

#include <fuse_lowlevel.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace blkstack {
class Disk;
}

namespace blkstack::fuse {

class SysfsTree {
 public:
  // The disks to show, asked for each time (the export table may change).
  using DiskList = std::function<std::vector<std::shared_ptr<Disk>>()>;
  // The inode of MNT/sys; those of the tree below it follow it.
  static constexpr fuse_ino_t kSysIno = fuse_ino_t{1} << 48;
  static constexpr const char* kName = "sys";

  explicit SysfsTree(DiskList disks);

  static bool owns(fuse_ino_t ino) { return ino >= kSysIno; }
  // Makes `ops` send what concerns the tree (its inodes, and "sys" in the
  // root) here and the rest to the handlers `ops` had. `tree_of` finds the
  // tree of a request's mount.
  static void install(fuse_lowlevel_ops& ops, SysfsTree& (*tree_of)(fuse_req_t));

  // --- the handlers, for the tree's inodes ---------------------------------
  void lookup(fuse_req_t req, fuse_ino_t parent, const char* name);
  void getattr(fuse_req_t req, fuse_ino_t ino);
  void opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off);
  void open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void read(fuse_req_t req, size_t size, off_t off, fuse_file_info* fi);
  void write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size);
  void release(fuse_req_t req, fuse_file_info* fi);

 private:
  enum class Kind { kNone, kDir, kFile, kWritableFile };
  struct Resolved {
    Kind kind = Kind::kNone;
    std::shared_ptr<Disk> disk;  // for block/DEV and below
    std::string attribute;       // for files: its name under block/DEV/
  };
  // What `path` (relative to sys/) is now.
  Resolved resolve(const std::string& path) const;
  // The entries of directory `path`: name and whether each is a directory.
  std::vector<std::pair<std::string, bool>> children(const std::string& path) const;
  std::shared_ptr<Disk> find_disk(const std::string& name) const;
  fuse_ino_t ino_of(const std::string& path);
  bool path_of(fuse_ino_t ino, std::string& path) const;
  void fill_attr(fuse_ino_t ino, Kind kind, struct stat* st) const;

  DiskList disks_;
  mutable std::mutex lock_;         // the inode table
  std::vector<std::string> paths_;  // by inode - kSysIno
  std::map<std::string, fuse_ino_t, std::less<>> inos_;
};

}  // namespace blkstack::fuse
