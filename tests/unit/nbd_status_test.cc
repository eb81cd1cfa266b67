// Every Status through the NBD export's error map: each error is
// an error for the client, and busy ones (status_is_busy) never reach the
// map (the bio is sent again), so the map is all a client can see. Then
// every status from a driver, through a real server: a busy one is sent
// again and the client sees success.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
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

// Completes each write-zeroes with kResource `busy_times` times, then
// zeroes it: a device out of room for a while.
class BusyZeroesDriver final : public BioDriver {
 public:
  explicit BusyZeroesDriver(int busy_times) : left_(busy_times) {}
  void submit(Bio& bio) override {
    if (bio.op() == Op::kWriteZeroes) ++attempts;
    bio.complete(bio.op() == Op::kWriteZeroes && left_-- > 0 ? Status::kResource
                                                             : Status::kOk);
  }
  std::atomic<int> attempts{0};

 private:
  std::atomic<int> left_;
};

// A busy write-zeroes goes again after BioDriver::kBusyRetryNs as every
// other busy bio does, not at once from the event loop (which spun on a
// device that stayed busy, and never read another request meanwhile).
TEST(NbdStatus, ABusyWriteZeroesWaitsTheRetryDelayEachTime) {
  set_serve_log_enabled(false);
  constexpr int kBusyTimes = 5;
  QueueLimits lim;
  lim.max_write_zeroes_sectors = 2048;
  auto drv = std::make_unique<BusyZeroesDriver>(kBusyTimes);
  BusyZeroesDriver* d = drv.get();
  auto disk = std::make_shared<Disk>("wz0", 2048, lim, std::move(drv));
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
  const auto t0 = std::chrono::steady_clock::now();
  c.send(nbd::testing::request(nbd::kCmdWriteZeroes, 1, 0, 4096));
  nbd::testing::Reply r;
  ASSERT_TRUE(c.read_reply(&r));
  const auto waited = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(r.error, 0u);
  EXPECT_EQ(d->attempts.load(), kBusyTimes + 1);
  EXPECT_GE(waited, std::chrono::nanoseconds(kBusyTimes * BioDriver::kBusyRetryNs));
  server.stop();
}

}  // namespace
}  // namespace blkstack
