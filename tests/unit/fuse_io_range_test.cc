// The FUSE export's arithmetic: where a byte-addressed I/O lands on a block
// device (clamp_io), and the mount table lookup the stale-mount check uses.
#include <gtest/gtest.h>

#include "export/fuse/io_range.h"
#include "export/fuse/stale_mount.h"

namespace blkstack::fuse {
namespace {

TEST(FuseIoRange, AlignedIsUnchanged) {
  const IoRange r = clamp_io(4096, 8192, 1 << 20, 512);
  EXPECT_EQ(r.len, 8192u);
  EXPECT_EQ(r.block_start, 4096u);
  EXPECT_EQ(r.block_end, 12288u);
  EXPECT_TRUE(r.aligned());
}

TEST(FuseIoRange, UnalignedEdgesWidenToBlocks) {
  const IoRange r = clamp_io(4095, 4098, 1 << 20, 4096);
  EXPECT_EQ(r.block_start, 0u);
  EXPECT_EQ(r.block_end, 12288u);
  EXPECT_EQ(r.head, 4095u);
  EXPECT_EQ(r.tail, 12288u - 4095 - 4098);
  EXPECT_FALSE(r.aligned());
  EXPECT_EQ(r.block_bytes(), 12288u);
}

TEST(FuseIoRange, InsideOneBlock) {
  const IoRange r = clamp_io(513, 10, 1 << 20, 512);
  EXPECT_EQ(r.block_start, 512u);
  EXPECT_EQ(r.block_end, 1024u);
  EXPECT_EQ(r.head, 1u);
  EXPECT_EQ(r.tail, 512u - 11);
}

TEST(FuseIoRange, CutAtTheEnd) {
  const IoRange r = clamp_io((1 << 20) - 10, 4096, 1 << 20, 512);
  EXPECT_EQ(r.len, 10u);
  EXPECT_EQ(r.block_end, uint64_t{1} << 20);
  EXPECT_EQ(r.tail, 0u);
}

TEST(FuseIoRange, AtOrPastTheEndIsEmpty) {
  EXPECT_EQ(clamp_io(1 << 20, 4096, 1 << 20, 512).len, 0u);
  EXPECT_EQ(clamp_io((1 << 20) + 512, 4096, 1 << 20, 512).len, 0u);
  EXPECT_EQ(clamp_io(0, 0, 1 << 20, 512).len, 0u);
}

TEST(FuseIoRange, LargerThan32Bits) {
  const uint64_t size = uint64_t{8} << 30;
  const IoRange r = clamp_io(100, size, size, 4096);
  EXPECT_EQ(r.len, size - 100);
  EXPECT_EQ(r.block_start, 0u);
  EXPECT_EQ(r.block_end, size);
  EXPECT_EQ(r.head, 100u);
}

TEST(FuseStaleMount, MountTableLookup) {
  EXPECT_TRUE(is_mounted("/proc", "proc"));
  EXPECT_FALSE(is_mounted("/proc", "fuse"));
  EXPECT_FALSE(is_mounted("/nonexistent-dir-for-blkstack", ""));
}

}  // namespace
}  // namespace blkstack::fuse
