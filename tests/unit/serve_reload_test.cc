// The serve service's reloads over NBD: one reload adds, removes, changes
// and keeps exports while a client runs a verified workload on the kept
// one; a bad config changes nothing; a reload that would close an export in
// use is refused when the config says so; connections that negotiate or
// have I/O in flight during a reload.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "blkstack/disk.h"
#include "export/nbd/server.h"
#include "nbd_test_util.h"
#include "serve/service.h"
#include "serve_test_util.h"
#include "test_util.h"

namespace blkstack {
namespace {

using nbd::testing::Client;
using nbd::testing::info_payload;
using nbd::testing::option;
using nbd::testing::put32;
using testing_util::Contains;
using testing_util::ScratchDir;
using testing_util::Workload;

constexpr const char* kBefore = R"(
[[device]]
name = "keep"
spec = "ram:8M"

[[device]]
name = "gone"
spec = "ram:4M"

[[device]]
name = "chg"
spec = "ram:4M"

[[export]]
name = "keep"
device = "keep"

[[export]]
name = "gone"
device = "gone"

[[export]]
name = "chg"
device = "chg"
)";

// keep as it was; gone dropped; chg on a bigger RAM disk; new added.
constexpr const char* kAfter = R"(
[[device]]
name = "keep"
spec = "ram:8M"

[[device]]
name = "chg"
spec = "ram:12M"

[[device]]
name = "fresh"
spec = "ram:2M"

[[export]]
name = "keep"
device = "keep"

[[export]]
name = "chg"
device = "chg"

[[export]]
name = "new"
device = "fresh"
)";

std::string pattern(size_t n, uint32_t seed) {
  std::string s(n, 0);
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed * 31 + i * 7);
  return s;
}

class ServeReloadTest : public ::testing::Test {
 protected:
  void Start(const std::string& config,
             std::chrono::milliseconds grace = std::chrono::seconds(5)) {
    ServiceOptions o;
    o.config = dir_.write("serve.toml", config);
    o.default_listen = "";  // clients come through adopt()
    o.threads = 2;
    o.drain_grace = grace;
    service_ = std::make_unique<Service>(o);
    service_->start();
  }
  void TearDown() override {
    if (service_) service_->stop();
  }
  void Rewrite(const std::string& config) { dir_.write("serve.toml", config); }

  std::unique_ptr<Client> Connect() {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    service_->nbd()->adopt(sv[0]);
    return std::make_unique<Client>(sv[1]);
  }
  std::unique_ptr<Client> Open(std::string_view name) {
    auto c = Connect();
    c->negotiate(name, /*structured=*/false);
    return c;
  }
  // GO for `name` gets an error reply: the export is not there.
  bool Refused(std::string_view name) {
    auto c = Connect();
    c->recv(18);
    std::string s;
    put32(s, nbd::kClientFixedNewstyle | nbd::kClientNoZeroes);
    c->send(s);
    c->send(option(nbd::kOptGo, info_payload(name)));
    return c->read_opt_reply().type == nbd::kRepErrUnknown;
  }

  ScratchDir dir_;
  std::unique_ptr<Service> service_;
};

TEST_F(ServeReloadTest, AddRemoveChangeAndKeepInOneReloadWhileTheKeptOneWorks) {
  Start(kBefore);
  const std::shared_ptr<Disk> keep_disk = service_->device("keep");
  const std::shared_ptr<Disk> chg_disk = service_->device("chg");
  Workload work(Open("keep"));
  auto gone = Open("gone");
  auto chg = Open("chg");
  EXPECT_EQ(chg->size(), 4u << 20);
  // A write in flight on the export that goes: answered before it closes.
  gone->send(nbd::testing::request(nbd::kCmdWrite, 77, 0, 4096) + pattern(4096, 9));
  // Sent is not received: one the server reads only after the reload began
  // is refused ESHUTDOWN (the spec's soft disconnect), as a loaded machine
  // showed. Wait until its loop has taken it.
  const auto taken_by = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (service_->nbd()->export_counts("gone").requests < 1 &&
         std::chrono::steady_clock::now() < taken_by)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_EQ(service_->nbd()->export_counts("gone").requests, 1u);
  work.await_rounds(20);

  Rewrite(kAfter);
  const ReloadResult r = service_->reload();
  EXPECT_EQ(r.added, std::vector<std::string>{"new"});
  EXPECT_EQ(r.removed, std::vector<std::string>{"gone"});
  EXPECT_EQ(r.changed, std::vector<std::string>{"chg"});
  EXPECT_EQ(r.unchanged, std::vector<std::string>{"keep"});

  // The dropped and the changed export's clients: answered, then closed.
  nbd::testing::Reply reply;
  ASSERT_TRUE(gone->read_reply(&reply));
  EXPECT_EQ(reply.cookie, 77u);
  EXPECT_EQ(reply.error, 0u);
  EXPECT_TRUE(gone->closed_by_server());
  EXPECT_TRUE(chg->closed_by_server());
  EXPECT_TRUE(Refused("gone"));
  EXPECT_EQ(service_->registry().find("gone"), nullptr);
  // The changed one is a new disk of the new size; the new one is there.
  EXPECT_NE(service_->device("chg"), chg_disk);
  EXPECT_EQ(Open("chg")->size(), 12u << 20);
  EXPECT_EQ(Open("new")->size(), 2u << 20);

  // The kept one never noticed: same disk, same connection, no error.
  work.await_rounds(20);
  work.finish();
  EXPECT_EQ(work.errors(), 0u);
  EXPECT_EQ(service_->device("keep"), keep_disk);
  EXPECT_EQ(service_->nbd()->export_counts("keep").connections, 1u);
  // The loop counts a round's requests after the round, when the last
  // reply may already be with the client: wait for the count to catch up.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (service_->nbd()->export_counts("keep").requests < 2 * work.rounds() &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_GE(service_->nbd()->export_counts("keep").requests, 2 * work.rounds());
}

TEST_F(ServeReloadTest, NewDescriptionKeepsTheConnections) {
  Start(kBefore);
  auto keep = Open("keep");
  std::string described = kBefore;
  described.replace(described.find("device = \"keep\"\n"), 16,
                    "device = \"keep\"\ndescription = \"now described\"");
  Rewrite(described);
  const ReloadResult r = service_->reload();
  EXPECT_EQ(r.changed, std::vector<std::string>{"keep"});
  EXPECT_EQ(keep->io(nbd::kCmdWrite, 0, 4096, pattern(4096, 2)), 0u);
  EXPECT_EQ(service_->nbd()->exports()->find("keep")->description, "now described");
  EXPECT_EQ(service_->nbd()->export_counts("keep").connections, 1u);
}

TEST_F(ServeReloadTest, InvalidConfigChangesNothingAndSaysFileLineAndKey) {
  Start(kBefore);
  const std::shared_ptr<Disk> gone_disk = service_->device("gone");
  Workload work(Open("keep"));
  const auto before = service_->exports();
  const std::string path = dir_.path("serve.toml");
  struct Case {
    std::string text, where, what;
  };
  const std::string after_lines =
      ":" + std::to_string(std::count(kAfter, kAfter + strlen(kAfter), '\n') + 1);
  const std::vector<Case> cases = {
      {std::string(kAfter) + "[[export]]\nname = \"x\"\ndevice = \"nope\"\n", after_lines,
       "no device named 'nope'"},
      {"[[device]]\nname = \"keep\"\nspec = \"ram:8M\"\nspce = \"x\"\n", ":4",
       "device.spce"},
      {"[[device]]\nname = \"keep\"\nspec = \"bogus:8M\"\n", ":1", "device 'keep'"},
      {"[[device]]\nname = \"keep\"\nspec = \"ram:8M,colour=red\"\n", ":1", "colour"},
      {"[server]\nthreads = \"two\"\n", ":2", "server.threads"},
      {"[[device]\n", ":1", ""},
  };
  for (const Case& c : cases) {
    Rewrite(c.text);
    try {
      service_->reload();
      ADD_FAILURE() << "reload took: " << c.text;
    } catch (const ConfigError& e) {
      EXPECT_TRUE(Contains(e.what(), path + c.where)) << e.what();
      EXPECT_TRUE(Contains(e.what(), c.what)) << e.what();
    }
  }
  EXPECT_EQ(service_->device("gone"), gone_disk);
  const auto after = service_->exports();
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) EXPECT_EQ(after[i].name, before[i].name);
  auto gone = Open("gone");
  EXPECT_EQ(gone->io(nbd::kCmdRead, 0, 4096), 0u);
  work.await_rounds(10);
  work.finish();
  EXPECT_EQ(work.errors(), 0u);
}

TEST_F(ServeReloadTest, RefusedNamingTheExportInUseWhenTheConfigSaysNotToDisconnect) {
  const std::string keep_only = std::string("[server]\nreload_disconnects = false\n") +
                                R"(
[[device]]
name = "keep"
spec = "ram:8M"

[[export]]
name = "keep"
device = "keep"
)";
  Start(std::string("[server]\nreload_disconnects = false\n") + kBefore);
  auto gone = Open("gone");
  Rewrite(keep_only);
  try {
    service_->reload();
    ADD_FAILURE() << "reload took";
  } catch (const BusyError& e) {
    EXPECT_TRUE(Contains(e.what(), "'gone'")) << e.what();
    EXPECT_TRUE(Contains(e.what(), "reload_disconnects")) << e.what();
  }
  EXPECT_EQ(gone->io(nbd::kCmdWrite, 0, 4096, pattern(4096, 1)), 0u);  // untouched
  EXPECT_NE(service_->device("chg"), nullptr);
  gone->close();
  // Without clients the same reload goes through (the client's close is
  // seen by its loop first).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (service_->nbd()->export_counts("gone").connections != 0 &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const ReloadResult r = service_->reload();
  EXPECT_EQ(r.removed, (std::vector<std::string>{"gone", "chg"}));
}

TEST_F(ServeReloadTest, ClientNegotiatingThroughAReloadCannotReachADroppedExport) {
  Start(kBefore, std::chrono::seconds(5));
  // The handshake has begun with the old table, which still has "gone".
  auto c = Connect();
  c->recv(18);
  std::string s;
  put32(s, nbd::kClientFixedNewstyle | nbd::kClientNoZeroes);
  c->send(s);
  Rewrite(kAfter);
  std::thread reload([&] { service_->reload(); });
  // The reload waits for this client to choose; it chooses the dropped one
  // (from its table) with a write right behind the GO.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // (The server may close before the write arrives: a send error is fine.)
  const std::string go = option(nbd::kOptGo, info_payload("gone")) +
                         nbd::testing::request(nbd::kCmdWrite, 5, 0, 4096) +
                         pattern(4096, 3);
  [[maybe_unused]] ssize_t n = ::send(c->fd(), go.data(), go.size(), MSG_NOSIGNAL);
  reload.join();
  // Whatever it got before, the connection ends, and the reload completed
  // with the device gone.
  EXPECT_TRUE(c->closed_by_server());
  EXPECT_EQ(service_->registry().find("gone"), nullptr);
}

TEST_F(ServeReloadTest, DeviceHeldByAStackedDiskIsNotRemoved) {
  const std::string keep = R"(
[[device]]
name = "keep"
spec = "ram:8M"

[[device]]
name = "top"
spec = "passthrough:lower=base"

[[export]]
name = "top"
device = "top"
)";
  Start("[[device]]\nname = \"base\"\nspec = \"ram:4M\"\n" + keep);
  // base goes, top (stacked on it) stays: refused, naming the holder.
  Rewrite(keep);
  try {
    service_->reload();
    ADD_FAILURE() << "reload took";
  } catch (const BusyError& e) {
    EXPECT_TRUE(Contains(e.what(), "'base'")) << e.what();
    EXPECT_TRUE(Contains(e.what(), "top")) << e.what();
  }
  EXPECT_NE(service_->device("base"), nullptr);
  EXPECT_EQ(Open("top")->io(nbd::kCmdRead, 0, 4096), 0u);
}

// A stacked disk and the device under it, both dropped in one reload
// (listed in either order): the upper one goes first, then the lower.
TEST_F(ServeReloadTest, StackedDiskAndItsLowerDeviceGoTogether) {
  const std::string keep =
      "[[device]]\nname = \"keep\"\nspec = \"ram:8M\"\n"
      "[[export]]\nname = \"keep\"\ndevice = \"keep\"\n";
  // "a_top" sorts before "z_base": removal must not follow the names.
  Start(keep +
        "[[device]]\nname = \"z_base\"\nspec = \"ram:4M\"\n"
        "[[device]]\nname = \"a_top\"\nspec = \"passthrough:lower=z_base\"\n"
        "[[export]]\nname = \"top\"\ndevice = \"a_top\"\n");
  auto top = Open("top");
  Rewrite(keep);
  const ReloadResult r = service_->reload();
  EXPECT_EQ(r.removed, std::vector<std::string>{"top"});
  EXPECT_TRUE(top->closed_by_server());
  EXPECT_EQ(service_->device("a_top"), nullptr);
  EXPECT_EQ(service_->device("z_base"), nullptr);
  EXPECT_EQ(service_->registry().find("a_top"), nullptr);
  EXPECT_EQ(service_->registry().find("z_base"), nullptr);
  // Both names are free again.
  Rewrite(keep + "[[device]]\nname = \"z_base\"\nspec = \"ram:4M\"\n");
  service_->reload();
  EXPECT_NE(service_->registry().find("z_base"), nullptr);
}

}  // namespace
}  // namespace blkstack
