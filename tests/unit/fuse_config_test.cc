// blkstack serve's FUSE settings in the config: [server] fuse and
// fuse_threads, and exports of type "fuse" kept apart from the NBD ones.
#include <gtest/gtest.h>

#include "blkstack/disk_registry.h"
#include "export/export_table.h"
#include "export/serve_config.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Contains;
using testing_util::ErrorOf;

TEST(FuseConfig, ServerKeys) {
  const ServeConfig c = parse_serve_config(R"(
[server]
fuse = "/mnt/blkstack"
fuse_threads = 3
[[device]]
name = "r0"
spec = "ram:4M"
[[device]]
name = "r1"
spec = "ram:4M"
[[export]]
name = "f"
device = "r0"
type = "fuse"
[[export]]
name = "n"
device = "r1"
)",
                                           "t.toml");
  EXPECT_EQ(c.fuse_mountpoint, "/mnt/blkstack");
  EXPECT_EQ(c.fuse_threads, 3u);
  DiskRegistry registry;
  auto fuse = build_exports(c, registry, "fuse");
  auto nbd = build_exports(c, registry, "nbd");
  ASSERT_EQ(fuse->list().size(), 1u);
  EXPECT_EQ(fuse->list()[0].name, "f");
  ASSERT_EQ(nbd->list().size(), 1u);
  EXPECT_EQ(nbd->list()[0].name, "n");
}

TEST(FuseConfig, BadValuesNameTheKey) {
  EXPECT_TRUE(Contains(
      ErrorOf([] { parse_serve_config("[server]\nfuse_threads = 0\n", "t.toml"); }),
      "server.fuse_threads"));
  EXPECT_TRUE(
      Contains(ErrorOf([] { parse_serve_config("[server]\nfuse = 3\n", "t.toml"); }),
               "server.fuse"));
  EXPECT_TRUE(
      Contains(ErrorOf([] { parse_serve_config("[server]\nfusee = 3\n", "t.toml"); }),
               "fuse_threads"));
}

}  // namespace
}  // namespace blkstack
