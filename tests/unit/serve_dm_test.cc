// Mapped devices in blkstack serve: dmsetup's verbs through the control
// handler, a mapped device declared in the config with its table, a reload
// that changes the table swapping it in place while an NBD client works on
// it, and bad tables refused with nothing changed.
#include <gtest/gtest.h>

#include "blkstack/disk.h"
#include "dm/mapped_device.h"
#include "export/nbd/server.h"
#include "nbd_test_util.h"
#include "serve/control_protocol.h"
#include "serve/control_verbs.h"
#include "serve/service.h"
#include "serve_test_util.h"
#include "test_util.h"

namespace blkstack {
namespace {

using nlohmann::json;
using testing_util::Contains;
using testing_util::ScratchDir;
using testing_util::Workload;

constexpr const char* kDevices = R"(
[[device]]
name = "ram0"
spec = "ram:8M"

[[device]]
name = "ram1"
spec = "ram:8M"
)";

constexpr const char* kVol = R"(
[[device]]
name = "vol"
table = "0 4096 linear ram0 0"

[[export]]
name = "vol"
device = "vol"
)";

class ServeDmTest : public ::testing::Test {
 protected:
  void Start(const std::string& config) {
    ServiceOptions o;
    o.config = dir_.write("serve.toml", config);
    o.control = dir_.path("ctl");
    o.default_listen = "";
    o.threads = 1;
    service_ = std::make_unique<Service>(o);
    service_->start();
    handler_ = serve::make_control_handler(*service_);
  }
  void TearDown() override {
    if (service_) service_->stop();
  }
  json Call(const std::string& verb, const json& args = json::object()) {
    return handler_(serve::ControlRequest{1, verb, args});
  }
  std::string ErrorCode(const std::string& verb, const json& args) {
    try {
      Call(verb, args);
    } catch (const serve::ControlError& e) {
      last_error_ = e.what();
      return e.code();
    }
    ADD_FAILURE() << verb << " succeeded";
    return "";
  }
  std::unique_ptr<nbd::testing::Client> OpenNbd(std::string_view name) {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    service_->nbd()->adopt(sv[0]);
    auto c = std::make_unique<nbd::testing::Client>(sv[1]);
    c->negotiate(name, false);
    return c;
  }
  std::string Devt(const std::string& name) {
    auto d = service_->registry().get(name);
    return std::to_string(d->major()) + ":" + std::to_string(d->minor());
  }

  ScratchDir dir_;
  std::unique_ptr<Service> service_;
  serve::ControlHandler handler_;
  std::string last_error_;
};

TEST_F(ServeDmTest, DmsetupVerbsCreateLoadSwapAndRemove) {
  Start(std::string(kDevices) + "[server]\n");
  json info = Call("dm-create", {{"name", "lv"}, {"table", "0 2048 linear ram0 0"}});
  EXPECT_EQ(info.at("live_table"), true);
  EXPECT_EQ(info.at("targets"), 1);
  EXPECT_EQ(info.at("size"), 2048 * 512);
  // A second volume on the same disk, as logical volumes share one.
  Call("dm-create", {{"name", "lv2"}, {"table", "0 2048 linear ram0 2048"}});
  json t = Call("dm-table", {{"name", "lv"}});
  EXPECT_EQ(t.at("devices")[0].at("lines"), "0 2048 linear " + Devt("ram0") + " 0\n");
  Call("dm-load", {{"name", "lv"}, {"table", "0 4096 striped 2 8 ram0 4096 ram1 0"}});
  EXPECT_EQ(Call("dm-info", {{"name", "lv"}}).at("devices")[0].at("inactive_table"),
            true);
  EXPECT_EQ(
      Call("dm-table", {{"name", "lv"}, {"inactive", true}}).at("devices")[0].at("lines"),
      "0 4096 striped 2 8 " + Devt("ram0") + " 4096 " + Devt("ram1") + " 0\n");
  EXPECT_EQ(Call("dm-suspend", {{"name", "lv"}, {"noflush", true}}).at("suspended"),
            true);
  info = Call("dm-resume", {{"name", "lv"}});
  EXPECT_EQ(info.at("suspended"), false);
  EXPECT_EQ(info.at("size"), 4096 * 512);
  EXPECT_EQ(Call("dm-status", {{"name", "lv"}}).at("devices")[0].at("lines"),
            "0 4096 striped 2 " + Devt("ram0") + " " + Devt("ram1") + " 1 AA\n");
  EXPECT_EQ(Call("dm-info").at("devices").size(), 2u);
  // Bad input: the codes the protocol gives, and nothing made.
  EXPECT_EQ(ErrorCode("dm-create", {{"name", "bad"}, {"table", "0 10 nosuch"}}),
            "invalid_argument");
  EXPECT_TRUE(Contains(last_error_, "unknown target type 'nosuch'"));
  EXPECT_EQ(service_->device("bad"), nullptr);
  EXPECT_EQ(ErrorCode("dm-load", {{"name", "lv"}, {"table", "0 10 zero\n20 10 zero"}}),
            "failed");
  EXPECT_TRUE(Contains(last_error_, "line 2 '20 10 zero': gap"));
  EXPECT_EQ(ErrorCode("dm-table", {{"name", "ram0"}}), "not_found");
  EXPECT_EQ(ErrorCode("dm-remove", {{"name", "ram0"}}), "not_found");
  EXPECT_EQ(ErrorCode("dm-message", {{"name", "lv"}, {"sector", "x"}, {"message", "m"}}),
            "invalid_argument");
  EXPECT_EQ(ErrorCode("dm-suspend", {{"name", "lv"}, {"noflush", "yes"}}), "bad_request");
  // ram0 is held while the volumes use it.
  EXPECT_EQ(ErrorCode("remove-device", {{"name", "ram0"}}), "busy");
  Call("dm-remove", {{"name", "lv"}});
  Call("dm-suspend", {{"name", "lv2"}});  // removed suspended, as dm allows
  Call("dm-remove", {{"name", "lv2"}});
  EXPECT_EQ(Call("dm-info").at("devices").size(), 0u);
  Call("remove-device", {{"name", "ram0"}});
  const json targets = Call("dm-targets").at("targets");
  bool linear = false;
  for (const json& x : targets) linear |= x.at("name") == "linear";
  EXPECT_TRUE(linear);
}

TEST_F(ServeDmTest, ReloadSwapsAChangedTableInPlaceUnderAnNbdClient) {
  Start(std::string(kDevices) + kVol);
  auto disk = service_->device("vol");
  Workload w(OpenNbd("vol"));
  w.await_rounds(20);
  // The same bytes through two lines: the client keeps its connection and
  // its data (the workload checks each block it wrote).
  dir_.write("serve.toml", std::string(kDevices) + R"(
[[device]]
name = "vol"
table = "0 1000 linear ram0 0\n1000 3096 linear ram0 1000"

[[export]]
name = "vol"
device = "vol"
)");
  const ReloadResult r = service_->reload();
  w.await_rounds(20);
  w.finish();
  EXPECT_EQ(w.errors(), 0u);
  EXPECT_EQ(service_->device("vol"), disk);  // the same disk: swapped, not made again
  EXPECT_EQ(r.unchanged, std::vector<std::string>{"vol"});
  EXPECT_EQ(MappedDevice::of(*disk)->live_targets(), 2u);
  // A bad table in the file changes nothing and says where.
  dir_.write("serve.toml", std::string(kDevices) + R"(
[[device]]
name = "vol"
table = "0 4096 linear ram0 99999"
)");
  try {
    service_->reload();
    ADD_FAILURE() << "a bad table was accepted";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(Contains(e.what(), "device 'vol'"));
    EXPECT_TRUE(Contains(e.what(), "past its end"));
  }
  EXPECT_EQ(MappedDevice::of(*disk)->live_targets(), 2u);
  EXPECT_FALSE(MappedDevice::of(*disk)->has_inactive());
}

TEST_F(ServeDmTest, ConfigNeedsEitherSpecOrTable) {
  ServiceOptions o;
  o.config = dir_.write("serve.toml", R"(
[server]
control = "x"
[[device]]
name = "vol"
spec = "ram:1M"
table = "0 8 zero"
)");
  Service s(o);
  try {
    s.start();
    ADD_FAILURE() << "started";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(Contains(e.what(), "give either spec or table"));
  }
}

}  // namespace
}  // namespace blkstack
