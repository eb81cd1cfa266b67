// The sys/block tree of the FUSE export, mounted for real: `cat` reads every
// attribute the disk has, `echo` writes a writable one and the change is
// what disk_attributes (so the control socket) reads; bad values and
// read-only files fail as sysfs's do, and a scheduler's iosched/ comes and
// goes with it. Needs root and /dev/fuse (skipped without).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "export/fuse/fuse_export.h"
#include "serve/disk_attributes.h"

namespace blkstack::fuse {
namespace {

namespace fs = std::filesystem;

// What `sh -c CMD` prints (both streams, the shell's own errors too), and
// its exit status. Writes use coreutils' echo, which names the error.
std::pair<std::string, int> Shell(const std::string& cmd) {
  FILE* p = popen(("{ " + cmd + "; } 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {out, WIFEXITED(status) ? WEXITSTATUS(status) : -1};
}

class FuseSysfsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0 || access("/dev/fuse", R_OK | W_OK) != 0) {
      GTEST_SKIP() << "needs root and /dev/fuse";
    }
    mnt_ = fmt::format("/tmp/blkstack-sysfs-test-{}", getpid());
    mq_ = registry_.create("ram:4M,queue_mode=mq,name=mq0");
    bio_ = registry_.create("null:8M,wc=1,name=bio0");
    auto table = std::make_shared<const ExportTable>(
        std::vector<Export>{{"one", "", mq_}, {"two", "", bio_}, {"again", "", mq_}});
    FuseOptions o;
    o.mountpoint = mnt_;
    o.threads = 2;
    export_ = std::make_unique<FuseExport>(o, table);
    export_->start();
  }
  void TearDown() override {
    if (export_) export_->stop();
    if (!mnt_.empty()) rmdir(mnt_.c_str());
  }
  std::string Sys(const std::string& rel) { return mnt_ + "/sys/block/" + rel; }

  DiskRegistry registry_;
  std::shared_ptr<Disk> mq_, bio_;
  std::string mnt_;
  std::unique_ptr<FuseExport> export_;
};

TEST_F(FuseSysfsTest, TreeHoldsEveryDiskOnceBesideTheFiles) {
  std::set<std::string> root, block;
  for (auto& e : fs::directory_iterator(mnt_)) root.insert(e.path().filename());
  EXPECT_EQ(root, (std::set<std::string>{"one", "two", "again", "sys"}));
  for (auto& e : fs::directory_iterator(mnt_ + "/sys/block")) {
    block.insert(e.path().filename());
    EXPECT_TRUE(e.is_directory());
  }
  EXPECT_EQ(block, (std::set<std::string>{"mq0", "bio0"}));
  EXPECT_FALSE(fs::exists(Sys("nope")));
  EXPECT_FALSE(fs::exists(Sys("mq0/queue/nope")));
}

TEST_F(FuseSysfsTest, CatReadsEveryAttribute) {
  for (const auto& disk : {mq_, bio_}) {
    std::set<std::string> files;
    for (auto& e : fs::recursive_directory_iterator(Sys(disk->name()))) {
      if (e.is_regular_file()) {
        files.insert(fs::relative(e.path(), Sys(disk->name())).string());
      }
    }
    std::set<std::string> want;
    for (const auto& a : serve::list_disk_attributes(*disk)) {
      want.insert(a.name);
      auto [out, rc] = Shell("cat " + Sys(disk->name() + "/" + a.name));
      EXPECT_EQ(rc, 0) << a.name << ": " << out;
      if (a.name != "stat" && a.name != "inflight") {
        EXPECT_EQ(out, a.value + "\n") << a.name;
      }
      struct stat st;
      ASSERT_EQ(stat(Sys(disk->name() + "/" + a.name).c_str(), &st), 0);
      EXPECT_EQ(st.st_mode & 0777, a.writable ? 0644u : 0444u) << a.name;
    }
    EXPECT_EQ(files, want) << disk->name();
  }
  EXPECT_EQ(Shell("cat " + Sys("bio0/queue/scheduler")).first, "none\n");
}

TEST_F(FuseSysfsTest, EchoWritesAndTheControlPathSeesIt) {
  auto [out, rc] = Shell("/bin/echo 32 > " + Sys("mq0/queue/nr_requests"));
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(serve::read_disk_attribute(*mq_, "queue/nr_requests"), "32");
  EXPECT_EQ(Shell("cat " + Sys("mq0/queue/nr_requests")).first, "32\n");

  std::tie(out, rc) =
      Shell("/bin/echo 'write through' > " + Sys("bio0/queue/write_cache"));
  EXPECT_EQ(rc, 0) << out;
  EXPECT_FALSE(bio_->write_cache());

  // And the other way: a change made through disk_attributes shows here.
  serve::write_disk_attribute(*mq_, "queue/rotational", "1");
  EXPECT_EQ(Shell("cat " + Sys("mq0/queue/rotational")).first, "1\n");
}

TEST_F(FuseSysfsTest, BadValuesAndReadOnlyFilesFail) {
  auto [out, rc] = Shell("/bin/echo 0 > " + Sys("mq0/queue/nr_requests"));
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("Invalid argument"), std::string::npos) << out;
  std::tie(out, rc) = Shell("/bin/echo no-such > " + Sys("mq0/queue/scheduler"));
  EXPECT_NE(out.find("Invalid argument"), std::string::npos) << out;
  std::tie(out, rc) = Shell("/bin/echo none > " + Sys("bio0/queue/scheduler"));
  EXPECT_NE(rc, 0) << out;
  // Root passes the mode bits; the file system still refuses.
  std::tie(out, rc) = Shell("/bin/echo 1 > " + Sys("mq0/size"));
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("Permission denied"), std::string::npos) << out;
  EXPECT_EQ(Shell("cat " + Sys("mq0/size")).first, "8192\n");
}

}  // namespace
}  // namespace blkstack::fuse
