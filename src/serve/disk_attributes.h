// The attributes of a disk by their sysfs names, relative to
// /sys/block/DEV/ ("size", "stat", "queue/scheduler", "queue/iosched/...").
// One table for every way in: the control socket's attributes/get/set verbs
// and the sys/block tree of the FUSE mount read and write through here, so
// they show the same values in the same format as Linux prints them.
//
// Which attributes a disk has depends on it: a request-based disk (a Queue)
// has queue/scheduler, queue/nr_requests, queue/nomerges and its
// scheduler's queue/iosched/* tunables; a bio-based one shows
// queue/scheduler as "none", as Linux does, and cannot switch.
//
// Thread-safe: reads and writes of all disks are serialized here, so a
// write switching schedulers never races a read of the old one's tunables.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace blkstack {
class Disk;
}

namespace blkstack::serve {

struct DiskAttribute {
  std::string name;  // "queue/nr_requests"
  bool writable;
  std::string value;  // as read_disk_attribute returns it
};

// Every attribute of `disk` with its value, sorted by name.
std::vector<DiskAttribute> list_disk_attributes(Disk& disk);
// The value as sysfs prints it, without the trailing newline. Throws
// ControlError "not_found" for an attribute the disk does not have.
std::string read_disk_attribute(Disk& disk, std::string_view name);
// Sets the attribute (a trailing newline in `value` is ignored, as sysfs
// does for `echo`) and returns its new value as read_disk_attribute would.
// Throws ControlError: "not_found"; "invalid_argument" for a read-only
// attribute or a value out of range, the message giving the valid ones;
// "failed" if the disk refused it otherwise.
std::string write_disk_attribute(Disk& disk, std::string_view name,
                                 std::string_view value);

}  // namespace blkstack::serve
