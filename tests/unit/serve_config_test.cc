// blkstack serve's configuration: TOML and --export, and the errors that
// name file, line and key.
#include "export/serve_config.h"

#include <gtest/gtest.h>

#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "export/export_table.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Contains;
using testing_util::ErrorOf;

constexpr const char* kGood = R"(
[server]
sockets = ["/tmp/a.sock", "/tmp/b.sock"]
listen = ["127.0.0.1:10809"]
threads = 2
coalesce_us = 0

[[device]]
name = "ram0"
spec = "ram:8M"

[[device]]
name = "gold"
spec = "ram:4M,ro=1"

[[export]]
name = "disk"
device = "ram0"
type = "nbd"
description = "scratch"

[[export]]
name = "golden"
device = "gold"

[[export]]
name = "files"
device = "ram0"
type = "fuse"
)";

TEST(ServeConfig, ParsesEverySection) {
  ServeConfig c = parse_serve_config(kGood, "good.toml");
  EXPECT_EQ(c.sockets, (std::vector<std::string>{"/tmp/a.sock", "/tmp/b.sock"}));
  EXPECT_EQ(c.listen, std::vector<std::string>{"127.0.0.1:10809"});
  EXPECT_EQ(c.threads, 2u);
  EXPECT_EQ(c.coalesce_us, 0u);  // set, to off
  EXPECT_FALSE(parse_serve_config("", "empty.toml").coalesce_us.has_value());
  ASSERT_EQ(c.devices.size(), 2u);
  EXPECT_EQ(c.devices[1].spec, "ram:4M,ro=1");
  ASSERT_EQ(c.exports.size(), 3u);
  EXPECT_EQ(c.exports[0].description, "scratch");
  EXPECT_EQ(c.exports[1].type, "nbd");  // the default
  EXPECT_EQ(c.exports[2].type, "fuse");
}

TEST(ServeConfig, BuildsNbdExportsNamedAfterTheirDevices) {
  DiskRegistry reg;
  auto t = build_exports(parse_serve_config(kGood, "good.toml"), reg);
  ASSERT_EQ(t->list().size(), 2u);  // the fuse export is not the NBD server's
  EXPECT_EQ(t->find("disk")->disk()->name(), "ram0");
  EXPECT_TRUE(t->find("golden")->disk()->read_only());
  EXPECT_EQ(t->find("")->name, "disk");
  // A reload reuses the disks already made (their data survives).
  auto again = build_exports(parse_serve_config(kGood, "good.toml"), reg);
  EXPECT_EQ(again->find("disk")->disk(), t->find("disk")->disk());
}

TEST(ServeConfig, CliExports) {
  ServeConfig c;
  add_cli_export(c, "disk=ram:1M");
  add_cli_export(c, "n=null:1G,name=mynull");
  DiskRegistry reg;
  auto t = build_exports(c, reg);
  EXPECT_EQ(t->find("disk")->disk()->name(), "disk");
  EXPECT_EQ(t->find("n")->disk()->name(), "mynull");
  EXPECT_TRUE(Contains(ErrorOf([&] { add_cli_export(c, "justaname"); }), "NAME=SPEC"));
}

std::string config_error(std::string_view text) {
  try {
    parse_serve_config(text, "bad.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a ConfigError for:\n" << text;
  return {};
}

TEST(ServeConfig, ErrorsNameFileLineAndKey) {
  std::string e = config_error("[server]\nthreads = \"two\"\n");
  EXPECT_TRUE(Contains(e, "bad.toml:2")) << e;
  EXPECT_TRUE(Contains(e, "server.threads")) << e;
  e = config_error("[server]\nsocket = [\"/x\"]\n");
  EXPECT_TRUE(Contains(e, "bad.toml:2")) << e;
  EXPECT_TRUE(Contains(e, "server.socket")) << e;
  e = config_error(
      "[[device]]\nname = \"a\"\nspec = \"ram:1M\"\n[[device]]\nname = \"b\"\nspecs = "
      "\"ram:1M\"\n");
  EXPECT_TRUE(Contains(e, "bad.toml:6")) << e;
  EXPECT_TRUE(Contains(e, "device.specs")) << e;
  e = config_error("[[device]]\nname = \"a\"\n");
  EXPECT_TRUE(Contains(e, "bad.toml:1")) << e;
  EXPECT_TRUE(Contains(e, "'spec'")) << e;
  e = config_error("[[export]]\nname = \"x\"\ndevice = \"a\"\ntype = \"iscsi\"\n");
  EXPECT_TRUE(Contains(e, "bad.toml:4")) << e;
  EXPECT_TRUE(Contains(e, "export.type")) << e;
  e = config_error("[server\n");
  EXPECT_TRUE(Contains(e, "bad.toml:1")) << e;
  e = config_error("[servers]\n");
  EXPECT_TRUE(Contains(e, "servers")) << e;
  e = config_error("[server]\nthreads = 0\n");
  EXPECT_TRUE(Contains(e, "server.threads")) << e;
  e = config_error("[server]\ncoalesce_us = 20000\n");
  EXPECT_TRUE(Contains(e, "server.coalesce_us")) << e;
  EXPECT_TRUE(Contains(e, "0 to 10000")) << e;
}

TEST(ServeConfig, ServiceKeys) {
  ServeConfig c = parse_serve_config("", "empty.toml");
  EXPECT_TRUE(c.reload_disconnects);
  EXPECT_EQ(c.control, "");
  EXPECT_EQ(c.control_mode, 0600u);
  c = parse_serve_config(
      "[server]\nreload_disconnects = false\ncontrol = \"/tmp/x.ctl\"\n"
      "control_mode = \"0660\"\n",
      "s.toml");
  EXPECT_FALSE(c.reload_disconnects);
  EXPECT_EQ(c.control, "/tmp/x.ctl");
  EXPECT_EQ(c.control_mode, 0660u);
  std::string e = config_error("[server]\nreload_disconnects = 1\n");
  EXPECT_TRUE(Contains(e, "bad.toml:2")) << e;
  EXPECT_TRUE(Contains(e, "server.reload_disconnects")) << e;
  e = config_error("[server]\ncontrol_mode = \"0400\"\n");  // owner cannot write
  EXPECT_TRUE(Contains(e, "server.control_mode")) << e;
  e = config_error("[server]\ncontrol_mode = \"0x60\"\n");
  EXPECT_TRUE(Contains(e, "server.control_mode")) << e;
  e = config_error("[server]\ncontrol = \"\"\n");
  EXPECT_TRUE(Contains(e, "server.control")) << e;
}

TEST(ServeConfig, BuildErrorsNameTheEntry) {
  DiskRegistry reg;
  ServeConfig c = parse_serve_config(
      "[[device]]\nname = \"a\"\nspec = \"ram:lots\"\n[[export]]\nname = \"x\"\ndevice = "
      "\"a\"\n",
      "b.toml");
  std::string e = ErrorOf([&] { build_exports(c, reg); });
  EXPECT_TRUE(Contains(e, "b.toml:1")) << e;
  EXPECT_TRUE(Contains(e, "device 'a'")) << e;
  c = parse_serve_config("[[export]]\nname = \"x\"\ndevice = \"nope\"\n", "b.toml");
  e = ErrorOf([&] { build_exports(c, reg); });
  EXPECT_TRUE(Contains(e, "b.toml:1")) << e;
  EXPECT_TRUE(Contains(e, "no device named 'nope'")) << e;
  ServeConfig dup;
  add_cli_export(dup, "d=ram:1M");
  add_cli_export(dup, "d=ram:2M");
  EXPECT_TRUE(Contains(ErrorOf([&] { build_exports(dup, reg); }), "defined twice"));
}

TEST(ServeConfig, MissingFile) {
  EXPECT_TRUE(Contains(ErrorOf([] { load_serve_config("/nonexistent/x.toml"); }),
                       "/nonexistent/x.toml"));
}

}  // namespace
}  // namespace blkstack
