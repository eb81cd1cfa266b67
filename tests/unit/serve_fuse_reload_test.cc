// The serve service's reloads over the FUSE export: one reload adds,
// removes, changes and keeps files while a verified workload runs on an
// open handle of the kept one; a removed file's open handle gets EIO; a bad
// config changes nothing; a reload that would close a file in use is
// refused when the config says so. Needs root and /dev/fuse (skipped
// without them).
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <set>
#include <thread>

#include "blkstack/disk.h"
#include "export/fuse/fuse_export.h"
#include "serve/service.h"
#include "serve_test_util.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Contains;
using testing_util::ScratchDir;

std::string devices_and_files(const std::vector<std::pair<std::string, std::string>>& d) {
  std::string s;
  for (const auto& [name, spec] : d) {
    s += "[[device]]\nname = \"" + name + "\"\nspec = \"" + spec + "\"\n";
    s += "[[export]]\nname = \"" + name + "\"\ndevice = \"" + name +
         "\"\ntype = \"fuse\"\n";
  }
  return s;
}

std::string pattern(size_t n, uint32_t seed) {
  std::string s(n, 0);
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed * 31 + i * 7);
  return s;
}

class ServeFuseReloadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (getuid() != 0 || access("/dev/fuse", R_OK | W_OK) != 0)
      GTEST_SKIP() << "needs root and /dev/fuse";
    mnt_ = dir_.path("mnt");
  }
  void Start(const std::string& body) {
    ServiceOptions o;
    o.config = Write(body);
    o.default_listen = "";
    service_ = std::make_unique<Service>(o);
    service_->start();
  }
  std::string Write(const std::string& body) {
    return dir_.write("serve.toml",
                      "[server]\nfuse = \"" + mnt_ + "\"\nfuse_threads = 2\n" + body);
  }
  void TearDown() override {
    for (int fd : fds_) ::close(fd);
    if (service_) service_->stop();
  }
  int Open(const std::string& name) {
    const int fd = ::open((mnt_ + "/" + name).c_str(), O_RDWR);
    EXPECT_GE(fd, 0) << name << ": " << strerror(errno);
    fds_.push_back(fd);
    return fd;
  }
  void Close(int fd) {
    std::erase(fds_, fd);
    ::close(fd);
  }
  std::set<std::string> Listing() {
    std::set<std::string> names;
    DIR* d = opendir(mnt_.c_str());
    if (!d) return names;
    while (dirent* e = readdir(d))
      if (e->d_type == DT_REG) names.insert(e->d_name);  // not sys/
    closedir(d);
    return names;
  }
  off_t Size(const std::string& name) {
    struct stat st;
    return ::stat((mnt_ + "/" + name).c_str(), &st) == 0 ? st.st_size : -1;
  }

  ScratchDir dir_;
  std::string mnt_;
  std::vector<int> fds_;
  std::unique_ptr<Service> service_;
};

// Write a block, read it back, compare, on one open handle until told to
// stop.
class FileWorkload {
 public:
  explicit FileWorkload(int fd) : fd_(fd) {
    thread_ = std::thread([this] { run(); });
  }
  ~FileWorkload() { finish(); }
  void finish() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  void await_rounds(uint64_t n) {
    const uint64_t until = rounds_.load() + n;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (rounds_.load() < until && errors_.load() == 0 &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  uint64_t errors() const { return errors_.load(); }

 private:
  void run() {
    std::string back(4096, 0);
    for (uint32_t i = 0; !stop_; ++i) {
      const off_t off = off_t{i % 256} * 4096;
      const std::string data = pattern(4096, i);
      if (::pwrite(fd_, data.data(), data.size(), off) != 4096 ||
          ::pread(fd_, back.data(), back.size(), off) != 4096 || back != data) {
        errors_.fetch_add(1);
        return;
      }
      rounds_.fetch_add(1);
    }
  }
  int fd_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> rounds_{0};
  std::atomic<uint64_t> errors_{0};
};

TEST_F(ServeFuseReloadTest, AddRemoveChangeAndKeepInOneReloadWhileTheKeptOneWorks) {
  Start(devices_and_files({{"keep", "ram:8M"}, {"gone", "ram:4M"}, {"chg", "ram:4M"}}));
  EXPECT_EQ(Listing(), (std::set<std::string>{"keep", "gone", "chg"}));
  const std::shared_ptr<Disk> keep_disk = service_->device("keep");
  const int keep = Open("keep");
  const int gone = Open("gone");
  const int chg = Open("chg");
  FileWorkload work(keep);
  work.await_rounds(20);

  Write(devices_and_files({{"keep", "ram:8M"}, {"chg", "ram:12M"}, {"new", "ram:2M"}}));
  const ReloadResult r = service_->reload();
  EXPECT_EQ(r.added, std::vector<std::string>{"new"});
  EXPECT_EQ(r.removed, std::vector<std::string>{"gone"});
  EXPECT_EQ(r.changed, std::vector<std::string>{"chg"});
  EXPECT_EQ(r.unchanged, std::vector<std::string>{"keep"});

  EXPECT_EQ(Listing(), (std::set<std::string>{"keep", "chg", "new"}));
  EXPECT_EQ(Size("gone"), -1);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_EQ(Size("chg"), 12 << 20);
  EXPECT_EQ(Size("new"), 2 << 20);
  EXPECT_EQ(::access((mnt_ + "/sys/block/new/size").c_str(), R_OK), 0);
  // Handles on the removed and the replaced file: errors, not the new disk.
  char buf[4096];
  EXPECT_EQ(::pread(gone, buf, sizeof buf, 0), -1);
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(::pread(chg, buf, sizeof buf, 0), -1);
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(service_->registry().find("gone"), nullptr);
  // The new ones work.
  const std::string data = pattern(4096, 7);
  const int fresh = Open("chg");
  EXPECT_EQ(::pwrite(fresh, data.data(), data.size(), (12 << 20) - 4096), 4096);

  work.await_rounds(20);
  work.finish();
  EXPECT_EQ(work.errors(), 0u);
  EXPECT_EQ(service_->device("keep"), keep_disk);
  EXPECT_GT(service_->fuse()->requests("keep"), 40u);
}

TEST_F(ServeFuseReloadTest, InvalidConfigChangesNothing) {
  Start(devices_and_files({{"keep", "ram:8M"}, {"gone", "ram:4M"}}));
  const int keep = Open("keep");
  FileWorkload work(keep);
  const std::string path =
      Write(devices_and_files({{"keep", "ram:8M"}}) + "[[export]]\nname = \"x\"\n");
  try {
    service_->reload();
    ADD_FAILURE() << "reload took";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(Contains(e.what(), path + ":")) << e.what();
    EXPECT_TRUE(Contains(e.what(), "'device'")) << e.what();
  }
  EXPECT_EQ(Listing(), (std::set<std::string>{"keep", "gone"}));
  work.await_rounds(20);
  work.finish();
  EXPECT_EQ(work.errors(), 0u);
}

// A FUSE export whose name cannot be a file there ("sys" is the sys/block
// tree's) is refused with the reason, not taken and left without a file.
TEST_F(ServeFuseReloadTest, ExportThatCannotBeAFileIsRefused) {
  Start(devices_and_files({{"a", "ram:4M"}}));
  for (const std::string& name :
       std::vector<std::string>{"sys", "x/y", "..", std::string(256, 'n')}) {
    try {
      service_->add_export(name, "a", "fuse", "");
      ADD_FAILURE() << name << ": taken";
    } catch (const ConfigError& e) {
      EXPECT_TRUE(Contains(e.what(), "file name")) << e.what();
    }
  }
  const std::string path = Write(devices_and_files({{"a", "ram:4M"}}) +
                                 "[[export]]\nname = \"sys\"\ndevice = \"a\"\n"
                                 "type = \"fuse\"\n");
  try {
    service_->reload();
    ADD_FAILURE() << "reload took";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(Contains(e.what(), path + ":")) << e.what();
    EXPECT_TRUE(Contains(e.what(), "'sys'")) << e.what();
  }
  EXPECT_EQ(service_->exports().size(), 1u);
  EXPECT_EQ(Listing(), std::set<std::string>{"a"});
}

// With a mount and no socket or address, NBD is not served: an NBD export
// (the default type) is refused, naming it, rather than taken and served
// nowhere.
TEST_F(ServeFuseReloadTest, NbdExportWithoutNbdIsRefused) {
  const std::string nbd_export = "[[export]]\nname = \"n\"\ndevice = \"a\"\n";
  {
    ServiceOptions o;
    o.config = Write(devices_and_files({{"a", "ram:4M"}}) + nbd_export);
    o.default_listen = "";
    Service s(o);
    try {
      s.start();
      ADD_FAILURE() << "started";
    } catch (const ConfigError& e) {
      EXPECT_TRUE(Contains(e.what(), "'n'")) << e.what();
    }
  }
  Start(devices_and_files({{"a", "ram:4M"}}));
  const std::string path = Write(devices_and_files({{"a", "ram:4M"}}) + nbd_export);
  try {
    service_->reload();
    ADD_FAILURE() << "reload took";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(Contains(e.what(), path + ":")) << e.what();
    EXPECT_TRUE(Contains(e.what(), "'n'")) << e.what();
  }
  EXPECT_EQ(service_->exports().size(), 1u);
}

// sys/block holds every device serve has, as /sys/block holds every disk:
// one exported over NBD only, one not exported, one added by a reload.
TEST_F(ServeFuseReloadTest, SysBlockHoldsEveryDevice) {
  ServiceOptions o;
  o.config = Write(devices_and_files({{"a", "ram:4M"}}) +
                   "[[device]]\nname = \"quiet\"\nspec = \"ram:1M\"\n");
  o.default_listen = "";
  o.sockets = {dir_.path("nbd.sock")};
  service_ = std::make_unique<Service>(o);
  service_->start();
  service_->add_export("n", "quiet", "nbd", "");
  service_->add_device("later", "ram:2M");
  for (const char* dev : {"a", "quiet", "later"})
    EXPECT_EQ(::access((mnt_ + "/sys/block/" + dev + "/size").c_str(), R_OK), 0) << dev;
  EXPECT_EQ(Listing(), std::set<std::string>{"a"});
  service_->remove_device("later");
  EXPECT_NE(::access((mnt_ + "/sys/block/later").c_str(), F_OK), 0);
}

TEST_F(ServeFuseReloadTest, RefusedNamingTheFileInUseWhenTheConfigSaysNotToDisconnect) {
  const std::string no = "reload_disconnects = false\n";
  ServiceOptions o;
  o.config =
      dir_.write("serve.toml", "[server]\nfuse = \"" + mnt_ + "\"\n" + no +
                                   devices_and_files({{"a", "ram:4M"}, {"b", "ram:4M"}}));
  o.default_listen = "";
  service_ = std::make_unique<Service>(o);
  service_->start();
  const int b = Open("b");
  dir_.write("serve.toml", "[server]\nfuse = \"" + mnt_ + "\"\n" + no +
                               devices_and_files({{"a", "ram:4M"}}));
  try {
    service_->reload();
    ADD_FAILURE() << "reload took";
  } catch (const BusyError& e) {
    EXPECT_TRUE(Contains(e.what(), "'b'")) << e.what();
  }
  EXPECT_EQ(Listing(), (std::set<std::string>{"a", "b"}));
  char buf[512];
  EXPECT_EQ(::pread(b, buf, sizeof buf, 0), 512);
  Close(b);
  // The kernel sends RELEASE after close() returns.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (service_->fuse()->open_handles("b") != 0 &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  service_->reload();
  EXPECT_EQ(Listing(), std::set<std::string>{"a"});
}

}  // namespace
}  // namespace blkstack
