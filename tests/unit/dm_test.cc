// The device-mapper core (src/dm/): a mapped device on a table of dmsetup
// lines, its table and status lines, table checks, suspend and resume.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/error.h"
#include "dm/mapped_device.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Contains;
using testing_util::ErrorOf;

std::vector<std::byte> pattern(size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte((i * 131 + seed * 7) >> 3);
  return v;
}

std::string devt(DiskRegistry& r, const std::string& name) {
  auto d = r.get(name);
  return fmt::format("{}:{}", d->major(), d->minor());
}

TEST(Dm, LinearMapsOntoTheDeviceAtItsOffset) {
  DiskRegistry registry;
  registry.create("ram:1M");
  MappedDevice& md = MappedDevice::create(registry, "lin", "", "0 1024 linear ram0 512");
  EXPECT_EQ(md.disk().capacity(), 1024u);
  EXPECT_EQ(md.table_text(),
            fmt::format("0 1024 linear {} 512\n", devt(registry, "ram0")));
  EXPECT_EQ(md.status_text(), "0 1024 linear\n");

  const auto data = pattern(64 << 10, 1);
  std::vector<std::byte> back(data.size());
  {
    BlockHandle top = BlockHandle::open(registry, "lin");
    ASSERT_EQ(top.pwrite(data.data(), data.size(), 4096), Status::kOk);
    ASSERT_EQ(top.pread(back.data(), back.size(), 4096), Status::kOk);
    EXPECT_EQ(back, data);
    EXPECT_EQ(top.flush(), Status::kOk);
  }
  // The lower device is claimed by the mapped device while it exists.
  EXPECT_TRUE(Contains(ErrorOf([&] { registry.remove("ram0"); }), "held by lin"));
  EXPECT_TRUE(
      Contains(ErrorOf([&] { BlockHandle::open(registry, "ram0"); }), "held by lin"));
  registry.remove("lin");
  BlockHandle ram = BlockHandle::open(registry, "ram0");
  ASSERT_EQ(ram.pread(back.data(), back.size(), 512 * 512 + 4096), Status::kOk);
  EXPECT_EQ(back, data);
}

}  // namespace
}  // namespace blkstack
