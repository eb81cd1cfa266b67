// The control socket's CLI clients (tools/blkstack/cmd_control.cc) against a
// ControlServer with a fake handler: each sends the request of its verb,
// prints the result for people or as JSON, and fails with the server's
// message and exit 1 on an error reply.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "commands.h"
#include "serve/control_server.h"

namespace blkstack::serve {
namespace {

using nlohmann::json;

const json kDevice = {{"name", "disk0"},
                      {"spec", "ram:64M"},
                      {"size", 67108864},
                      {"ro", false},
                      {"driver", "ram"}};
const json kExport = {{"name", "disk0"},
                      {"device", "disk0"},
                      {"type", "nbd"},
                      {"description", "scratch space"},
                      {"connections", 2}};

class ControlCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ControlServerOptions o;
    o.path = path_;
    server_ = std::make_unique<ControlServer>(o, [this](const ControlRequest& r) {
      last_ = {{"verb", r.verb}, {"args", r.args}};
      return Handle(r);
    });
  }

  json Handle(const ControlRequest& r) {
    if (r.args.value("device", "") == "nope" || r.args.value("name", "") == "nope") {
      throw ControlError(control_code::kNotFound, "no device 'nope' (known: disk0)");
    }
    if (r.verb == "list") return {{"devices", {kDevice}}, {"exports", {kExport}}};
    if (r.verb == "describe") {
      json d = kDevice;
      d["attributes"] = {{"queue/scheduler", "[none] mq-deadline"}, {"size", "131072"}};
      return d;
    }
    if (r.verb == "stats") {
      return {{"devices",
               {{{"name", "disk0"},
                 {"diskstats", {{"read_ios", 11}, {"write_ios", 22}, {"in_flight", 0}}},
                 {"latency", {{"read", {{"1024", 11}}}}}}}},
              {"exports", {{{"name", "disk0"}, {"connections", 2}, {"requests", 33}}}}};
    }
    if (r.verb == "attributes") {
      return {{"attributes",
               {{{"name", "queue/nr_requests"}, {"writable", true}, {"value", "64"}},
                {{"name", "size"}, {"writable", false}, {"value", "131072"}}}}};
    }
    if (r.verb == "get") return {{"value", "[none] mq-deadline"}};
    if (r.verb == "set") {
      if (r.args["value"] == "bfq") {
        throw ControlError(control_code::kInvalidArgument,
                           "queue/scheduler: 'bfq' is not one of: [none] mq-deadline");
      }
      return {{"value", "none [mq-deadline]"}};
    }
    if (r.verb == "add-device") return kDevice;
    if (r.verb == "add-export") return kExport;
    if (r.verb == "remove-device" || r.verb == "remove-export") return json::object();
    if (r.verb == "reload") {
      return {{"added", {"new0"}},
              {"removed", json::array()},
              {"changed", {"disk1"}},
              {"unchanged", {"disk0"}}};
    }
    throw ControlError(control_code::kUnknownVerb, "unknown verb");
  }

  struct Result {
    int code;
    std::string out, err;
  };
  Result Run(std::vector<std::string> args, bool with_control = true) {
    CLI::App app;
    app.require_subcommand(1);
    cli::add_control_commands(app);
    if (with_control) {
      args.push_back("--control");
      args.push_back(path_);
    }
    std::vector<const char*> argv = {"blkstack"};
    for (const auto& a : args) argv.push_back(a.c_str());
    ::testing::internal::CaptureStdout();
    ::testing::internal::CaptureStderr();
    int code = 0;
    try {
      app.parse(static_cast<int>(argv.size()), argv.data());
    } catch (const CLI::ParseError& e) {
      code = e.get_exit_code();
    }
    std::fflush(stdout);
    std::fflush(stderr);
    Result r{code, ::testing::internal::GetCapturedStdout(),
             ::testing::internal::GetCapturedStderr()};
    return r;
  }

  std::string path_ = fmt::format("/tmp/blkstack-cli-test-{}.sock", getpid());
  std::unique_ptr<ControlServer> server_;
  json last_;  // the last request the server got
};

TEST_F(ControlCliTest, LsPrintsTablesAndJson) {
  Result r = Run({"ls"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(last_["verb"], "list");
  EXPECT_EQ(r.out,
            "NAME  DRIVER SIZE   RO SPEC\n"
            "disk0 ram    64 MiB 0  ram:64M\n"
            "\n"
            "EXPORT DEVICE TYPE CONNECTIONS DESCRIPTION\n"
            "disk0  disk0  nbd  2           scratch space\n");
  r = Run({"ls", "--json"});
  ASSERT_EQ(r.code, 0);
  EXPECT_EQ(json::parse(r.out), Handle({1, "list", json::object()}));
}

TEST_F(ControlCliTest, DescribeAndStats) {
  Result r = Run({"describe", "disk0"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(last_["args"], json({{"device", "disk0"}}));
  EXPECT_NE(r.out.find("size: 64 MiB (67108864 bytes)\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("queue/scheduler [none] mq-deadline\n"), std::string::npos)
      << r.out;

  r = Run({"stats"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(last_["args"], json::object());
  EXPECT_NE(r.out.find("disk0  11       -            22"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("read: {\"1024\":11}"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("disk0  2           33"), std::string::npos) << r.out;
  r = Run({"stats", "disk0", "--json"});
  EXPECT_EQ(last_["args"], json({{"device", "disk0"}}));
  EXPECT_EQ(json::parse(r.out)["exports"][0]["requests"], 33);
}

TEST_F(ControlCliTest, AttrListsReadsAndWrites) {
  Result r = Run({"attr", "disk0"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(last_["verb"], "attributes");
  EXPECT_EQ(r.out,
            "ATTRIBUTE         MODE VALUE\n"
            "queue/nr_requests rw   64\n"
            "size              ro   131072\n");
  r = Run({"attr", "disk0", "queue/scheduler"});
  EXPECT_EQ(last_["verb"], "get");
  EXPECT_EQ(r.out, "[none] mq-deadline\n");
  r = Run({"attr", "disk0", "queue/scheduler", "mq-deadline"});
  EXPECT_EQ(last_["verb"], "set");
  EXPECT_EQ(last_["args"]["value"], "mq-deadline");
  EXPECT_EQ(r.out, "none [mq-deadline]\n");
  r = Run({"attr", "disk0", "queue/scheduler", "bfq"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err,
            "blkstack attr: queue/scheduler: 'bfq' is not one of: [none] mq-deadline "
            "(invalid_argument)\n");
  EXPECT_EQ(r.out, "");
}

TEST_F(ControlCliTest, AddAndRemoveDevicesAndExports) {
  Result r = Run({"add-device", "disk0", "ram:64M"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(last_["args"], json({{"name", "disk0"}, {"spec", "ram:64M"}}));
  EXPECT_NE(r.out.find("disk0 ram    64 MiB"), std::string::npos) << r.out;
  r = Run({"add-export", "e0", "disk0", "--type", "fuse", "--description", "hi"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(last_["args"], json({{"name", "e0"},
                                 {"device", "disk0"},
                                 {"type", "fuse"},
                                 {"description", "hi"}}));
  r = Run({"add-export", "e1", "disk0"});
  EXPECT_EQ(last_["args"], json({{"name", "e1"}, {"device", "disk0"}}));
  r = Run({"remove-export", "e0"});
  EXPECT_EQ(r.out, "removed export e0\n");
  r = Run({"remove-device", "disk0"});
  EXPECT_EQ(r.out, "removed device disk0\n");
  r = Run({"remove-device", "nope"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err,
            "blkstack remove-device: no device 'nope' (known: disk0) (not_found)\n");
}

TEST_F(ControlCliTest, Reload) {
  Result r = Run({"reload"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "added:     new0\n"
            "removed:   -\n"
            "changed:   disk1\n"
            "unchanged: disk0\n");
}

TEST_F(ControlCliTest, ControlPathFromTheEnvironmentAndAClearErrorWithoutServer) {
  setenv("BLKSTACK_CONTROL", path_.c_str(), 1);
  Result r = Run({"ls"}, false);
  unsetenv("BLKSTACK_CONTROL");
  EXPECT_EQ(r.code, 0) << r.err;
  server_.reset();
  r = Run({"ls"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("blkstack ls: cannot connect to the control socket " + path_),
            std::string::npos)
      << r.err;
}

}  // namespace
}  // namespace blkstack::serve
