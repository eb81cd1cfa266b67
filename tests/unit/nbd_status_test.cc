// Every Status through the NBD export's error map: each error is
// an error for the client, and busy ones (status_is_busy) never reach the
// map (the bio is sent again), so the map is all a client can see. Then
// every status from a driver, through a real server: a busy one is sent
// again and the client sees success.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "export/export_table.h"
#include "export/log.h"
#include "export/nbd/connection.h"
#include "export/nbd/server.h"
#include "nbd_test_util.h"

namespace blkstack {
namespace {

TEST(NbdStatus, EveryStatusButOkIsAnErrorAndBusyNeverIsReported) {
  for (int i = 0; i < kStatusCount; ++i) {
    const auto s = static_cast<Status>(i);
    SCOPED_TRACE(std::string(status_name(s)));
    for (bool write : {false, true}) {
      EXPECT_EQ(nbd::nbd_error(s, write) == 0, s == Status::kOk);
    }
  }
  EXPECT_TRUE(status_is_busy(Status::kResource));
  EXPECT_TRUE(status_is_busy(Status::kDeviceResource));
}

// Fails each bio's first attempt with `status`, then lets it through.
class FailOnceDriver final : public BioDriver {
 public:
  explicit FailOnceDriver(Status s) : status_(s) {}
  void submit(Bio& bio) override {
    bool first;
    {
      std::lock_guard lock(mu_);
      first = seen_.insert(&bio).second;
    }
    bio.complete(first ? status_ : Status::kOk);
  }

 private:
  Status status_;
  std::mutex mu_;
  std::set<Bio*> seen_;
};

TEST(NbdStatus, EveryStatusFromADriverReachesTheClientAndBusyIsSentAgain) {
  set_serve_log_enabled(false);
  for (int i = 1; i < kStatusCount; ++i) {
    const auto s = static_cast<Status>(i);
    SCOPED_TRACE(std::string(status_name(s)));
    auto disk = std::make_shared<Disk>("st0", 2048, QueueLimits{},
                                       std::make_unique<FailOnceDriver>(s));
    nbd::ServerOptions o;
    o.threads = 1;
    nbd::Server server(
        o, std::make_shared<const ExportTable>(std::vector<Export>{{"disk", "", disk}}));
    server.start();
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    server.adopt(sv[0]);
    nbd::testing::Client c(sv[1]);
    c.negotiate("disk");
    c.send(nbd::testing::request(nbd::kCmdWrite, 1, 0, 4096) + std::string(4096, 'x'));
    nbd::testing::Reply r;
    ASSERT_TRUE(c.read_reply(&r));
    EXPECT_EQ(r.error, status_is_busy(s) ? 0u : nbd::nbd_error(s, true));
    server.stop();
  }
}

}  // namespace
}  // namespace blkstack
