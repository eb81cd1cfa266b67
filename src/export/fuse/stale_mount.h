// Getting a mount point ready for the FUSE export.
//
// A server that was killed (SIGKILL, a crash) leaves its mount behind: the
// kernel keeps the mount, but nobody answers it, and every stat() of the
// directory fails with ENOTCONN ("transport endpoint is not connected").
// The next server finds that, says so on stderr, and detaches the dead
// mount (umount2 MNT_DETACH, or `fusermount3 -u -z` when not root) before
// mounting again. A loop device still attached to a file in the dead mount
// keeps the old FUSE connection alive (its I/O fails) until it is detached;
// the lazy unmount does not wait for it.
#pragma once

#include <string>

namespace blkstack::fuse {

// Creates `dir` if it does not exist, clears a stale FUSE mount on it, and
// refuses a directory that a live blkstack export is mounted on. Throws
// Error with a message naming `dir`. Returns true when it cleared a mount.
bool prepare_mountpoint(const std::string& dir);

// True if `dir` is the mount point of a mount (per /proc/self/mountinfo)
// whose file system type starts with `fstype_prefix` (e.g. "fuse").
bool is_mounted(const std::string& dir, const std::string& fstype_prefix);

// Lazily unmounts `dir`: umount2(MNT_DETACH), or fusermount3 -u -z when
// that is not allowed. Returns an empty string or what went wrong.
std::string lazy_unmount(const std::string& dir);

}  // namespace blkstack::fuse
