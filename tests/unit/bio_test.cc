#include "blkstack/bio.h"

#include <gtest/gtest.h>

#include <vector>

#include "blkstack/bioset.h"

namespace blkstack {
namespace {


TEST(Bio, InitComputesSizeFromSegments) {
  std::vector<std::byte> a(4096), b(1024);
  Segment segs[] = {{a.data(), 4096}, {b.data(), 1024}};
  Bio bio;
  bio.init(nullptr, Op::kWrite, 8, segs);
  EXPECT_EQ(bio.size(), 5120u);
  EXPECT_EQ(bio.sectors(), 10u);
  EXPECT_EQ(bio.end_sector(), 18u);
  EXPECT_EQ(bio.count_segments(), 2u);
}

}  // namespace
}  // namespace blkstack
