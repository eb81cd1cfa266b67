// The device factory: makes disks from device specs (device_spec.h). It
// sits above the disk layer: it finds the driver type of the spec, checks
// the options against the driver's table, lets the driver open the devices
// it is stacked on (OpenContext), and adds the new disk to a DiskRegistry,
// which only keeps names and numbers.
#pragma once

#include <memory>
#include <string_view>

namespace blkstack {

class Disk;
class DiskRegistry;

// Creates a disk from `spec` ("ram:64M,name=scratch") and adds it to
// `registry`. Without name=, the disk is named TYPE followed by the lowest
// free index. Throws Error naming the spec on any mistake, leaving the
// registry and every device as they were.
std::shared_ptr<Disk> create_device(DiskRegistry& registry, std::string_view spec);

// What create_device() checks before it makes anything: the syntax, the
// driver type and its options. Throws the same Error. (The device may still
// fail to open, e.g. a file that is not there.)
void check_device_spec(std::string_view spec);

}  // namespace blkstack
