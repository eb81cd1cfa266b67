// tinyram-demo: a program linking the installed library (pkg-config
// blkstack) that registers tinyram, makes a disk from a spec and moves
// data through the block layer.
#include <cstdio>
#include <cstring>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/error.h"
#include "tinyram.h"

int main() {
  using namespace blkstack;
  try {
    register_driver_type(tinyram::kDriver);
    DiskRegistry registry;
    registry.create("tinyram:16M,name=demo");
    BlockHandle disk = BlockHandle::open(registry, "demo");
    std::vector<char> out(1 << 20, 'x'), in(1 << 20);
    // 1 MiB at 3 MiB; the limits split nothing here, but a bigger write
    // would be split into 1 MiB bios by the block layer.
    if (disk.pwrite(out.data(), out.size(), 3 << 20) != Status::kOk ||
        disk.pread(in.data(), in.size(), 3 << 20) != Status::kOk || in != out) {
      std::fprintf(stderr, "tinyram-demo: data did not come back\n");
      return 1;
    }
    std::printf("tinyram-demo: %s, %llu bytes, 1 MiB written and read back\n",
                disk.disk().name().c_str(), static_cast<unsigned long long>(disk.size()));
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "tinyram-demo: %s\n", e.what());
    return 1;
  }
}
