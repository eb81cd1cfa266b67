// The serve service's lifecycle: what start() refuses (naming the file,
// line and key), the pidfile written once it serves and removed at stop(),
// the statistics it logs, and the command line on top of the config file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "blkstack/disk.h"
#include "export/nbd/server.h"
#include "serve/service.h"
#include "serve_test_util.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Contains;
using testing_util::ScratchDir;

std::string start_error(ServiceOptions o) {
  o.default_listen = "";
  try {
    Service(o).start();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(started)";
}

TEST(ServeService, StartRefusesWhatCannotBeServed) {
  ScratchDir dir;
  ServiceOptions o;
  EXPECT_TRUE(Contains(start_error(o), "nothing to export")) << start_error(o);
  o.config = dir.write("a.toml",
                       "[[device]]\nname = \"d\"\nspec = \"ram:1M\"\n"
                       "[[export]]\nname = \"f\"\ndevice = \"d\"\ntype = \"fuse\"\n");
  const std::string e = start_error(o);
  EXPECT_TRUE(Contains(e, o.config + ":4")) << e;
  EXPECT_TRUE(Contains(e, "--fuse")) << e;
  o.config = dir.path("missing.toml");
  EXPECT_TRUE(Contains(start_error(o), "cannot open")) << start_error(o);
  o.config.clear();
  o.exports = {"noequals"};
  EXPECT_TRUE(Contains(start_error(o), "NAME=SPEC")) << start_error(o);
}

TEST(ServeService, PidfileWhileServingCommandLineOnTopAndStatistics) {
  ScratchDir dir;
  ServiceOptions o;
  o.config = dir.write("a.toml",
                       "[server]\nthreads = 3\n[[device]]\nname = \"d\"\n"
                       "spec = \"ram:1M\"\n[[export]]\nname = \"d\"\n"
                       "device = \"d\"\n");
  o.exports = {"cli=ram:2M"};
  o.threads = 1;
  o.sockets = {dir.path("nbd.sock")};
  o.pidfile = dir.path("pid");
  Service s(o);
  s.start();
  std::ifstream pid(o.pidfile);
  long n = 0;
  pid >> n;
  EXPECT_EQ(n, getpid());
  EXPECT_EQ(s.nbd()->loop_stats().size(), 1u);  // --threads over the file's 3
  EXPECT_EQ(s.nbd()->addresses(), std::vector<std::string>{"unix:" + o.sockets[0]});
  ASSERT_EQ(s.exports().size(), 2u);
  EXPECT_EQ(s.device("cli")->size_bytes(), 2u << 20);
  const std::string report = s.stats_report();
  EXPECT_TRUE(Contains(report, "export cli (nbd): 0 connections, 0 requests")) << report;
  s.stop();
  EXPECT_NE(::access(o.pidfile.c_str(), F_OK), 0);
  EXPECT_NE(::access(o.sockets[0].c_str(), F_OK), 0);
  EXPECT_THROW(s.reload(), Error);  // stopped
}

}  // namespace
}  // namespace blkstack
