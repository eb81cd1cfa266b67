// What each acknowledgement of the NBD export promises across a host
// crash: a real nbd::Server, one end of a socketpair per client, over a
// file disk whose host file is a CrashHost (crash_host.h). A cut that keeps
// nothing of the host's page cache shows what NBD_CMD_FLUSH and
// NBD_CMD_FLAG_FUA made durable and that a plain write is not; a client
// that drops its connection with writes in flight leaves each sector whole
// (old or new) and its acknowledged writes in place, and gets no flush.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "crash_host.h"
#include "durability_model.h"
#include "export/export_table.h"
#include "export/log.h"
#include "export/nbd/handshake.h"
#include "export/nbd/server.h"
#include "file_test_util.h"
#include "nbd_test_util.h"

namespace blkstack {
namespace {

using durability::kSector;
using durability::stamp;
using durability::stamp_id;
using nbd::testing::Client;
using testing_util::CrashHost;

constexpr uint64_t kBytes = 1 << 20;

std::string stamped(uint64_t first, uint64_t n, uint64_t id) {
  std::string s(n * kSector, '\0');
  for (uint64_t i = 0; i < n; ++i)
    stamp(reinterpret_cast<std::byte*>(s.data()) + i * kSector, first + i, id);
  return s;
}

class DurabilityNbd : public ScratchDirTest {
 protected:
  void SetUp() override {
    ScratchDirTest::SetUp();
    set_serve_log_enabled(false);
    host_ = std::make_unique<CrashHost>(std::vector<std::byte>(kBytes), 1);
    {
      ScopedHostIoFactory f(host_->factory());
      disk_ = registry_.create("file:" + path_ + ",size=1M,direct=off");
    }
    nbd::ServerOptions o;
    o.threads = 1;
    server_ = std::make_unique<nbd::Server>(
        o, std::make_shared<const ExportTable>(std::vector<Export>{{"disk", "", disk_}}));
    server_->start();
  }
  void TearDown() override {
    server_->stop(std::chrono::seconds(2));
    registry_.remove(disk_->name());
    ScratchDirTest::TearDown();
  }

  std::unique_ptr<Client> open() {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    server_->adopt(sv[0]);
    auto c = std::make_unique<Client>(sv[1]);
    flags_ = c->negotiate("disk", /*structured=*/false);
    return c;
  }
  std::optional<uint64_t> after_cut(uint64_t s) {
    if (cut_.empty()) cut_ = host_->crash(0.0);
    return stamp_id(&cut_[s * kSector], s);
  }

  std::unique_ptr<CrashHost> host_;
  DiskRegistry registry_;
  std::shared_ptr<Disk> disk_;
  std::unique_ptr<nbd::Server> server_;
  uint16_t flags_ = 0;
  std::vector<std::byte> cut_;
};

TEST_F(DurabilityNbd, AFileDiskAdvertisesFlushFuaAndMultiConn) {
  auto c = open();
  EXPECT_TRUE(flags_ & nbd::kFlagSendFlush);
  EXPECT_TRUE(flags_ & nbd::kFlagSendFua);
  EXPECT_TRUE(flags_ & nbd::kFlagCanMultiConn);
  EXPECT_TRUE(disk_->write_cache());
}

TEST_F(DurabilityNbd, FlushMakesEveryWriteAnsweredBeforeItDurable) {
  auto c = open();
  ASSERT_EQ(c->io(nbd::kCmdWrite, 0, 4 * kSector, stamped(0, 4, 1)), 0u);
  ASSERT_EQ(c->io(nbd::kCmdFlush, 0, 0), 0u);
  ASSERT_EQ(c->io(nbd::kCmdWrite, 8 * kSector, kSector, stamped(8, 1, 2)), 0u);
  for (uint64_t s = 0; s < 4; ++s) EXPECT_EQ(after_cut(s), 1u);
  EXPECT_EQ(after_cut(8), 0u) << "an unflushed write survived a cut that kept nothing";
}

TEST_F(DurabilityNbd, FuaWriteIsDurableWhenAnswered) {
  auto c = open();
  ASSERT_EQ(c->io(nbd::kCmdWrite, 16 * kSector, 2 * kSector, stamped(16, 2, 3),
                  nbd::kCmdFlagFua),
            0u);
  EXPECT_EQ(after_cut(16), 3u);
  EXPECT_EQ(after_cut(17), 3u);
}

// A flush on one connection covers writes answered on another (the
// export advertises multi-conn).
TEST_F(DurabilityNbd, FlushCoversWritesAnsweredOnOtherConnections) {
  auto a = open();
  auto b = open();
  ASSERT_EQ(a->io(nbd::kCmdWrite, 20 * kSector, kSector, stamped(20, 1, 4)), 0u);
  ASSERT_EQ(b->io(nbd::kCmdFlush, 0, 0), 0u);
  EXPECT_EQ(after_cut(20), 4u);
}

TEST_F(DurabilityNbd, ADroppedConnectionKeepsItsAnsweredWritesAndIsNotFlushed) {
  auto c = open();
  ASSERT_EQ(c->io(nbd::kCmdWrite, 32 * kSector, 8 * kSector, stamped(32, 8, 5)), 0u);
  // Eight more writes over the same sectors, sent without waiting, then
  // the connection goes.
  std::string burst;
  for (uint64_t i = 0; i < 8; ++i)
    burst += nbd::testing::request(nbd::kCmdWrite, 100 + i, 32 * kSector, 8 * kSector) +
             stamped(32, 8, 6 + i);
  c->send(burst);
  c->close();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto d = open();
  std::string data;
  ASSERT_EQ(d->io(nbd::kCmdRead, 32 * kSector, 8 * kSector, {}, 0, &data), 0u);
  for (uint64_t i = 0; i < 8; ++i) {
    const auto id =
        stamp_id(reinterpret_cast<const std::byte*>(data.data()) + i * kSector, 32 + i);
    ASSERT_TRUE(id.has_value()) << "sector " << 32 + i << " is torn";
    EXPECT_GE(*id, 5u);
    EXPECT_LE(*id, 13u);
  }
  EXPECT_EQ(host_->fdatasyncs(), 0u) << "the dropped connection was flushed";
}

// SIGTERM (Server::stop) flushes every exported disk before it returns.
TEST_F(DurabilityNbd, StoppingTheServerFlushes) {
  auto c = open();
  ASSERT_EQ(c->io(nbd::kCmdWrite, 40 * kSector, kSector, stamped(40, 1, 20)), 0u);
  c->send(nbd::testing::request(nbd::kCmdDisc, 99, 0, 0));
  server_->stop(std::chrono::seconds(2));
  EXPECT_EQ(after_cut(40), 20u);
}

}  // namespace
}  // namespace blkstack
