// Loop devices, set up and torn down with the kernel's ioctls (what
// `losetup -f --show --direct-io=on --sector-size=N FILE` and `losetup -d`
// do), for `blkstack attach` and `blkstack detach`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace blkstack::cli {

struct LoopOptions {
  uint32_t sector_size =
      0;                   // 0: the file's st_blksize on a blkstack FUSE mount, else 512
  bool read_only = false;  // also chosen when the file cannot be opened for writing
  bool direct_io = true;
};

struct LoopAttached {
  std::string device;  // /dev/loopN
  uint32_t sector_size = 0;
  bool read_only = false;
  bool direct_io = false;  // false if the kernel refused it and buffered I/O is used
};

// Attaches `file` to a free loop device. Throws Error with a message that
// says what to do (not root, no such file, no free device).
LoopAttached loop_attach(const std::string& file, const LoopOptions& options);

// The loop devices whose backing file is `file` (by device and inode).
std::vector<std::string> loops_backed_by(const std::string& file);

// Detaches `device` (LOOP_CLR_FD). Returns true when it is gone now, false
// when the kernel deferred it because the device is still open (mounted):
// it then goes away on the last close. Throws Error otherwise.
bool loop_detach(const std::string& device);

}  // namespace blkstack::cli
