// blkstack attach / blkstack detach: a loop device over a file — typically a
// device exported by `blkstack serve --fuse` — so that a kernel file system
// can go on it (the kernel here has no nbd or ublk driver).
#include <fmt/format.h>
#include <sys/stat.h>

#include <cstdio>

#include "blkstack/error.h"
#include "commands.h"
#include "loop_device.h"

namespace blkstack::cli {
namespace {

struct AttachArgs {
  std::string file;
  uint32_t sector_size = 0;
  bool read_only = false;
  bool buffered = false;
};

struct DetachArgs {
  std::string target;
};

void fail(std::string_view cmd, const std::string& why) {
  fmt::print(stderr, "blkstack {}: {}\n", cmd, why);
  throw CLI::RuntimeError(1);
}

void attach(const AttachArgs& a) {
  LoopOptions o;
  o.sector_size = a.sector_size;
  o.read_only = a.read_only;
  o.direct_io = !a.buffered;
  LoopAttached r;
  try {
    r = loop_attach(a.file, o);
  } catch (const Error& e) {
    fail("attach", e.what());
  }
  fmt::print("{}\n", r.device);
  std::fflush(stdout);
  if (!a.buffered && !r.direct_io)
    fmt::print(stderr,
               "blkstack attach: {}: the kernel refused direct I/O; using buffered I/O\n",
               r.device);
}

void detach(const DetachArgs& a) {
  try {
    struct stat st;
    std::vector<std::string> devices;
    if (stat(a.target.c_str(), &st) == 0 &&
        !S_ISREG(st.st_mode)) {  // a device: loop_detach checks it
      devices.push_back(a.target);
    } else {
      devices = loops_backed_by(a.target);
      if (devices.empty())
        fail("detach", fmt::format("{}: no loop device is attached to it", a.target));
    }
    for (const std::string& dev : devices) {
      if (loop_detach(dev))
        fmt::print("detached {}\n", dev);
      else
        fmt::print("{} is still in use (mounted?): it will detach when it is closed\n",
                   dev);
    }
  } catch (const Error& e) {
    fail("detach", e.what());
  }
}

}  // namespace

void add_attach_command(CLI::App& app) {
  static AttachArgs args;
  auto* cmd = app.add_subcommand(
      "attach", "Attach a loop device to a file (a device exported with serve --fuse)");
  cmd->add_option("FILE", args.file, "The file, e.g. MOUNTPOINT/EXPORT")->required();
  cmd->add_option("--sector-size", args.sector_size,
                  "Logical block size of the loop device (default: the device's, from "
                  "the FUSE file's st_blksize; 512 for other files)")
      ->check(CLI::IsMember({512, 1024, 2048, 4096}));
  cmd->add_flag("--read-only,-r", args.read_only,
                "Read-only loop device (chosen anyway when FILE is not writable)");
  cmd->add_flag("--buffered", args.buffered,
                "Without direct I/O (default: direct I/O, as losetup --direct-io=on)");
  cmd->footer(
      "Prints the loop device it set up (like losetup -f --show --direct-io=on\n"
      "--sector-size=N FILE). Needs root.\n"
      "Example:\n"
      "  blkstack serve --fuse /tmp/mnt --export disk=ram:1G --pidfile /tmp/bs.pid &\n"
      "  dev=$(blkstack attach /tmp/mnt/disk)      # /dev/loop0\n"
      "  mkfs.ext4 -q $dev && mount $dev /mnt/x\n"
      "  ...; umount /mnt/x; blkstack detach $dev");
  cmd->callback([] { attach(args); });
}

void add_detach_command(CLI::App& app) {
  static DetachArgs args;
  auto* cmd = app.add_subcommand(
      "detach", "Detach a loop device (by its name, or every one attached to a file)");
  cmd->add_option("LOOPDEV|FILE", args.target,
                  "/dev/loopN, or the file it is attached to")
      ->required();
  cmd->footer(
      "A device still mounted is detached when it is unmounted (the kernel defers it).\n"
      "Examples:\n"
      "  blkstack detach /dev/loop0\n"
      "  blkstack detach /tmp/mnt/disk");
  cmd->callback([] { detach(args); });
}

}  // namespace blkstack::cli
