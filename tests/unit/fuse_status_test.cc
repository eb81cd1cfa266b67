// Every Status through the FUSE export's error map: each error is
// an error for the client, and busy ones (status_is_busy) never reach the
// map (the bio is sent again), so the map is all a client can see.
#include <gtest/gtest.h>

#include <string>

#include "export/fuse/fuse_fs.h"

namespace blkstack {
namespace {

TEST(FuseStatus, EveryStatusButOkIsAnErrorAndBusyNeverIsReported) {
  for (int i = 0; i < kStatusCount; ++i) {
    const auto s = static_cast<Status>(i);
    SCOPED_TRACE(std::string(status_name(s)));
    for (bool write : {false, true}) {
      EXPECT_EQ(fuse::status_errno(s, write) == 0, s == Status::kOk);
    }
  }
  EXPECT_TRUE(status_is_busy(Status::kResource));
  EXPECT_TRUE(status_is_busy(Status::kDeviceResource));
}

}  // namespace
}  // namespace blkstack
