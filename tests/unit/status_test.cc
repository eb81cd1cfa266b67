#include "blkstack/status.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <set>
#include <string>

namespace blkstack {
namespace {

TEST(Status, EveryStatusHasAUniqueNameAndErrnoThatMapsBack) {
  std::set<std::string> names;
  std::set<int> errnos;
  for (int i = 0; i < kStatusCount; ++i) {
    auto s = static_cast<Status>(i);
    std::string name(status_name(s));
    EXPECT_FALSE(name.empty());
    EXPECT_TRUE(names.insert(name).second) << "duplicate name " << name;
    EXPECT_TRUE(errnos.insert(status_to_errno(s)).second) << name;
    EXPECT_EQ(status_from_errno(status_to_errno(s)), s) << name;
    EXPECT_EQ(status_from_errno(-status_to_errno(s)), s) << name;
    EXPECT_FALSE(status_description(s).empty());
  }
}

TEST(Status, KernelErrnoMapping) {
  EXPECT_EQ(status_to_errno(Status::kOk), 0);
  EXPECT_EQ(status_to_errno(Status::kNotSupported), EOPNOTSUPP);
  EXPECT_EQ(status_to_errno(Status::kNoSpace), ENOSPC);
  EXPECT_EQ(status_to_errno(Status::kIoError), EIO);
  EXPECT_EQ(status_to_errno(Status::kAgain), EAGAIN);
  EXPECT_EQ(status_to_errno(Status::kOffline), ENODEV);
  EXPECT_EQ(status_to_errno(Status::kResource), ENOMEM);
  EXPECT_EQ(status_to_errno(Status::kTimeout), ETIMEDOUT);
  EXPECT_EQ(status_to_errno(Status::kMedium), ENODATA);
  EXPECT_EQ(status_to_errno(Status::kProtection), EILSEQ);
  EXPECT_EQ(status_to_errno(Status::kTransport), ENOLINK);
  EXPECT_EQ(status_to_errno(Status::kTarget), EREMOTEIO);
  EXPECT_EQ(status_to_errno(Status::kDeviceResource), EBUSY);
}

TEST(Status, HostErrnosMapToTheirMeaning) {
  EXPECT_EQ(status_from_errno(EDQUOT), Status::kNoSpace);
  EXPECT_EQ(status_from_errno(ECONNRESET), Status::kTransport);
  EXPECT_EQ(status_from_errno(EPIPE), Status::kTransport);
  EXPECT_EQ(status_from_errno(ENXIO), Status::kOffline);
  EXPECT_EQ(status_from_errno(12345), Status::kIoError);
  EXPECT_EQ(status_from_errno(0), Status::kOk);
}

}  // namespace
}  // namespace blkstack
