// Every verb of the control protocol through a real socket of a running
// Service: results of the documented shapes, and each error code where a
// verb can give it.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <set>

#include "export/nbd/server.h"
#include "nbd_test_util.h"
#include "serve/control_protocol.h"
#include "serve/service.h"
#include "serve_test_util.h"
#include "test_util.h"

namespace blkstack {
namespace {

using nlohmann::json;
using serve::ControlReply;
using testing_util::Contains;
using testing_util::ScratchDir;
using testing_util::Workload;

constexpr const char* kConfig = R"(
[[device]]
name = "mq"
spec = "ram:8M,queue_mode=mq"

[[device]]
name = "plain"
spec = "ram:4M"

[[export]]
name = "mq"
device = "mq"
description = "the request-based one"
)";

// A blocking client: one request, one reply.
class ControlClient {
 public:
  explicit ControlClient(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0)
        << strerror(errno);
    timeval tv{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~ControlClient() { ::close(fd_); }

  ControlReply call(std::string_view verb, const json& args = json::object()) {
    const std::string line = serve::format_control_request(++id_, verb, args);
    EXPECT_EQ(::send(fd_, line.data(), line.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(line.size()));
    std::string in;
    char c;
    while (::recv(fd_, &c, 1, 0) == 1 && c != '\n') in += c;
    ControlReply r = serve::parse_control_reply(in);
    EXPECT_EQ(r.id, id_);
    return r;
  }
  // The result of a call that must succeed.
  json ok(std::string_view verb, const json& args = json::object()) {
    ControlReply r = call(verb, args);
    EXPECT_FALSE(r.error) << verb << ": " << (r.error ? r.error->what() : "");
    return r.result;
  }
  // The error code of a call that must fail.
  std::string error(std::string_view verb, const json& args = json::object()) {
    ControlReply r = call(verb, args);
    EXPECT_TRUE(r.error) << verb << " succeeded: " << r.result.dump();
    return r.error ? r.error->code() : "";
  }

 private:
  int fd_ = -1;
  int id_ = 0;
};

class ServeVerbsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServiceOptions o;
    o.config = dir_.write("serve.toml", kConfig);
    o.control = dir_.path("ctl");
    o.default_listen = "";
    o.threads = 1;
    service_ = std::make_unique<Service>(o);
    service_->start();
    client_ = std::make_unique<ControlClient>(o.control);
  }
  void TearDown() override {
    client_.reset();
    service_->stop();
  }
  std::unique_ptr<nbd::testing::Client> OpenNbd(std::string_view name) {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    service_->nbd()->adopt(sv[0]);
    auto c = std::make_unique<nbd::testing::Client>(sv[1]);
    c->negotiate(name, false);
    return c;
  }
  static const json* Named(const json& list, std::string_view name) {
    for (const json& x : list)
      if (x.at("name") == name) return &x;
    return nullptr;
  }

  ScratchDir dir_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<ControlClient> client_;
};

TEST_F(ServeVerbsTest, SocketIsOwnerOnly) {
  struct stat st;
  ASSERT_EQ(::stat(dir_.path("ctl").c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(service_->control_path(), dir_.path("ctl"));
}

TEST_F(ServeVerbsTest, HelloNamesProtocolVersionAndEveryVerb) {
  const json r = client_->ok("hello");
  EXPECT_EQ(r.at("protocol"), 1);
  EXPECT_FALSE(r.at("version").get<std::string>().empty());
  const std::set<std::string> verbs = r.at("verbs").get<std::set<std::string>>();
  for (const char* v :
       {"hello", "list", "describe", "add-device", "remove-device", "add-export",
        "remove-export", "stats", "attributes", "get", "set", "reload"})
    EXPECT_TRUE(verbs.count(v)) << v;
  EXPECT_EQ(client_->error("frobnicate"), "unknown_verb");
}

TEST_F(ServeVerbsTest, ListAndDescribe) {
  const json r = client_->ok("list");
  ASSERT_EQ(r.at("devices").size(), 2u);
  const json* mq = Named(r.at("devices"), "mq");
  ASSERT_TRUE(mq);
  EXPECT_EQ(mq->at("spec"), "ram:8M,queue_mode=mq");
  EXPECT_EQ(mq->at("size"), 8u << 20);
  EXPECT_EQ(mq->at("ro"), false);
  EXPECT_EQ(mq->at("driver"), "ram");
  ASSERT_EQ(r.at("exports").size(), 1u);
  const json& e = r.at("exports")[0];
  EXPECT_EQ(e.at("name"), "mq");
  EXPECT_EQ(e.at("device"), "mq");
  EXPECT_EQ(e.at("type"), "nbd");
  EXPECT_EQ(e.at("description"), "the request-based one");
  EXPECT_EQ(e.at("connections"), 0);

  const json d = client_->ok("describe", {{"device", "mq"}});
  EXPECT_EQ(d.at("name"), "mq");
  EXPECT_EQ(d.at("attributes").at("size"), std::to_string((8u << 20) / 512));
  EXPECT_TRUE(Contains(d.at("attributes").at("queue/scheduler"), "[")) << d.dump();
  EXPECT_EQ(client_->error("describe", {{"device", "nope"}}), "not_found");
  EXPECT_EQ(client_->error("describe"), "bad_request");
  EXPECT_EQ(client_->error("describe", {{"device", 3}}), "bad_request");
  EXPECT_EQ(client_->error("describe", {{"device", "mq"}, {"colour", "red"}}),
            "bad_request");
}

TEST_F(ServeVerbsTest, AddAndRemoveDevicesAndExports) {
  const json d = client_->ok("add-device", {{"name", "extra"}, {"spec", "ram:2M"}});
  EXPECT_EQ(d.at("name"), "extra");
  EXPECT_EQ(d.at("size"), 2u << 20);
  EXPECT_EQ(client_->error("add-device", {{"name", "extra"}, {"spec", "ram:2M"}}),
            "invalid_argument");
  EXPECT_EQ(client_->error("add-device", {{"name", "bad"}, {"spec", "bogus:2M"}}),
            "invalid_argument");

  const json e = client_->ok("add-export", {{"name", "x"}, {"device", "extra"}});
  EXPECT_EQ(e.at("name"), "x");
  EXPECT_EQ(e.at("type"), "nbd");
  EXPECT_EQ(OpenNbd("x")->size(), 2u << 20);
  EXPECT_EQ(client_->error("add-export", {{"name", "y"}, {"device", "nope"}}),
            "not_found");
  EXPECT_EQ(client_->error("add-export",
                           {{"name", "y"}, {"device", "extra"}, {"type", "scsi"}}),
            "invalid_argument");
  // No FUSE mount here.
  EXPECT_EQ(client_->error("add-export",
                           {{"name", "y"}, {"device", "extra"}, {"type", "fuse"}}),
            "invalid_argument");

  EXPECT_EQ(client_->error("remove-device", {{"name", "extra"}}), "busy");
  EXPECT_EQ(client_->ok("remove-export", {{"name", "x"}}), json::object());
  EXPECT_EQ(client_->error("remove-export", {{"name", "x"}}), "not_found");
  EXPECT_EQ(client_->ok("remove-device", {{"name", "extra"}}), json::object());
  EXPECT_EQ(client_->error("remove-device", {{"name", "extra"}}), "not_found");
  EXPECT_EQ(client_->ok("list").at("devices").size(), 2u);
  EXPECT_EQ(service_->registry().find("extra"), nullptr);
}

TEST_F(ServeVerbsTest, StatsHaveDiskstatsLatencyAndExportCounts) {
  auto c = OpenNbd("mq");
  ASSERT_EQ(c->io(nbd::kCmdWrite, 0, 4096, std::string(4096, 'x')), 0u);
  ASSERT_EQ(c->io(nbd::kCmdRead, 0, 4096), 0u);
  const json r = client_->ok("stats");
  const json* mq = Named(r.at("devices"), "mq");
  ASSERT_TRUE(mq);
  const json& ds = mq->at("diskstats");
  EXPECT_EQ(ds.size(), 17u) << ds.dump();
  for (const char* f :
       {"read_ios", "read_merges", "read_sectors", "read_ticks", "write_ios",
        "write_merges", "write_sectors", "write_ticks", "in_flight", "io_ticks",
        "time_in_queue", "discard_ios", "discard_merges", "discard_sectors",
        "discard_ticks", "flush_ios", "flush_ticks"})
    EXPECT_TRUE(ds.contains(f)) << f;
  EXPECT_EQ(ds.at("write_ios"), 1);
  EXPECT_EQ(ds.at("write_sectors"), 8);
  EXPECT_EQ(ds.at("read_ios"), 1);
  EXPECT_EQ(mq->at("latency").at("write").at("count"), 1);
  const json* e = Named(r.at("exports"), "mq");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->at("connections"), 1);
  // The loop adds a round's requests after the round, when the replies
  // may have gone out already.
  json counted;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  do {
    counted = *Named(client_->ok("stats").at("exports"), "mq");
  } while (counted.at("requests") != 2 && std::chrono::steady_clock::now() < deadline);
  EXPECT_EQ(counted.at("requests"), 2);

  const json one = client_->ok("stats", {{"device", "plain"}});
  ASSERT_EQ(one.at("devices").size(), 1u);
  EXPECT_EQ(one.at("devices")[0].at("name"), "plain");
  EXPECT_EQ(one.at("exports").size(), 0u);
  EXPECT_EQ(client_->error("stats", {{"device", "nope"}}), "not_found");
}

TEST_F(ServeVerbsTest, AttributesGetAndSetBySysfsNames) {
  const json r = client_->ok("attributes", {{"device", "mq"}});
  bool scheduler_writable = false;
  for (const json& a : r.at("attributes"))
    if (a.at("name") == "queue/scheduler") scheduler_writable = a.at("writable");
  EXPECT_TRUE(scheduler_writable) << r.dump();

  // (The tunables are tested with B's attribute table.)
  const std::string line =
      client_->ok("get", {{"device", "mq"}, {"attribute", "queue/scheduler"}})
          .at("value");
  EXPECT_EQ(line.rfind("[none] mq-deadline", 0), 0u) << line;
  // bfq's tunables appear under queue/iosched/ once it is chosen.
  client_->ok("set",
              {{"device", "mq"}, {"attribute", "queue/scheduler"}, {"value", "bfq"}});
  EXPECT_EQ(
      client_->ok("get", {{"device", "mq"}, {"attribute", "queue/iosched/slice_idle"}})
          .at("value"),
      "8");
  EXPECT_EQ(client_->error("set", {{"device", "mq"},
                                   {"attribute", "queue/iosched/slice_idle"},
                                   {"value", "5000"}}),
            "invalid_argument");
  client_->ok("set",
              {{"device", "mq"}, {"attribute", "queue/scheduler"}, {"value", "none"}});
  EXPECT_EQ(
      client_->ok("get", {{"device", "mq"}, {"attribute", "queue/nomerges"}}).at("value"),
      "0");
  const json set = client_->ok(
      "set", {{"device", "mq"}, {"attribute", "queue/nomerges"}, {"value", "2"}});
  EXPECT_EQ(set.at("value"), "2");
  EXPECT_EQ(
      client_->ok("get", {{"device", "mq"}, {"attribute", "queue/nomerges"}}).at("value"),
      "2");
  EXPECT_EQ(
      client_->error("set", {{"device", "mq"}, {"attribute", "size"}, {"value", "1"}}),
      "invalid_argument");
  EXPECT_EQ(
      client_->error(
          "set", {{"device", "mq"}, {"attribute", "queue/nr_requests"}, {"value", "0"}}),
      "invalid_argument");
  EXPECT_EQ(client_->error("get", {{"device", "mq"}, {"attribute", "queue/nope"}}),
            "not_found");
  EXPECT_EQ(client_->error("get", {{"device", "nope"}, {"attribute", "size"}}),
            "not_found");
  EXPECT_EQ(client_->error("get", {{"device", "mq"}}), "bad_request");
  EXPECT_EQ(client_->error(
                "set", {{"device", "mq"}, {"attribute", "queue/nomerges"}, {"value", 1}}),
            "bad_request");
}

TEST_F(ServeVerbsTest, ReloadSaysWhatChanged) {
  dir_.write("serve.toml", std::string(kConfig) + R"(
[[export]]
name = "p"
device = "plain"
)");
  const json r = client_->ok("reload");
  EXPECT_EQ(r.at("added"), json::array({"p"}));
  EXPECT_EQ(r.at("removed"), json::array());
  EXPECT_EQ(r.at("changed"), json::array());
  EXPECT_EQ(r.at("unchanged"), json::array({"mq"}));
  dir_.write("serve.toml", "[[device]]\nname = 1\n");
  EXPECT_EQ(client_->error("reload"), "invalid_argument");
  EXPECT_EQ(OpenNbd("p")->size(), 4u << 20);
}

// Raw bytes to the control socket; returns what came back before the
// server closed or `n` lines arrived.
std::string Exchange(const std::string& path, const std::string& bytes, int lines) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  [[maybe_unused]] ssize_t w = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  std::string in;
  char c;
  while (lines > 0 && ::recv(fd, &c, 1, 0) == 1) {
    in += c;
    if (c == '\n') --lines;
  }
  ::close(fd);
  return in;
}

TEST_F(ServeVerbsTest, BadRequestsLeaveTheServerServingIo) {
  Workload work(OpenNbd("mq"));
  const std::string path = dir_.path("ctl");
  EXPECT_TRUE(Contains(Exchange(path, "{not json\n", 1), "bad_request"));
  EXPECT_TRUE(Contains(Exchange(path, "[1,2]\n", 1), "bad_request"));
  EXPECT_TRUE(
      Contains(Exchange(path, "{\"id\":1,\"verb\":\"nope\"}\n", 1), "unknown_verb"));
  EXPECT_TRUE(Contains(Exchange(path,
                                "{\"id\":2,\"verb\":\"get\",\"args\":{\"device\":\"mq\","
                                "\"attribute\":\"x\"}}\n",
                                1),
                       "not_found"));
  EXPECT_TRUE(Contains(
      Exchange(path,
               "{\"id\":3,\"verb\":\"set\",\"args\":{\"device\":\"mq\",\"attribute\":"
               "\"queue/nr_requests\",\"value\":\"99999999\"}}\n",
               1),
      "invalid_argument"));
  EXPECT_TRUE(
      Contains(Exchange(path, std::string(100 * 1024, 'x') + "\n", 1), "too_long"));
  Exchange(path, "{\"id\":4,\"verb\":\"li", 0);  // gone mid-request
  {
    std::vector<std::unique_ptr<ControlClient>> many;
    for (int i = 0; i < 20; ++i) many.push_back(std::make_unique<ControlClient>(path));
    for (auto& c : many) EXPECT_EQ(c->ok("hello").at("protocol"), 1);
  }
  EXPECT_EQ(client_->ok("list").at("devices").size(), 2u);  // still answering
  work.await_rounds(20);
  work.finish();
  EXPECT_EQ(work.errors(), 0u);
  EXPECT_GT(work.rounds(), 20u);
}

}  // namespace
}  // namespace blkstack
