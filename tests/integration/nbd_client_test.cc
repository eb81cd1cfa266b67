// A client on the libnbd API against `blkstack serve`: every NBD command
// (read, write, flush, trim, write-zeroes with and without NO_HOLE and
// FAST_ZERO, cache, block status with base:allocation, disconnect), the FUA
// and DF flags, the capabilities a RAM device and a read-only device
// advertise, errors (out of range, read-only) that leave the connection
// usable, 64 requests in flight, several connections at once (multi-conn),
// and SIGTERM with requests in flight.
//
// Each test process starts its own server (exports disk=ram:64M and
// ro=ram:16M,ro=1) on a unix socket in a temporary directory and stops it at
// the end: it must exit 0 on SIGTERM within 10 s. The blkstack binary is
// BLKSTACK_BINARY (from CMake) or $BLKSTACK. BLKSTACK_TEST_NBD_SERVER=nbdkit
// runs the same tests against nbdkit's memory plugin (one nbdkit per
// export), to tell a test's mistake from the server's.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <libnbd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#ifndef BLKSTACK_BINARY
#define BLKSTACK_BINARY "blkstack"
#endif

extern char** environ;

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kDiskSize = 64 * kMiB;
constexpr uint64_t kRoSize = 16 * kMiB;

bool against_nbdkit() {
  const char* s = std::getenv("BLKSTACK_TEST_NBD_SERVER");
  return s != nullptr && std::string(s) == "nbdkit";
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One server process: started with posix_spawn, output in LOG, ready when
// its pidfile holds its pid.
class ServerProcess {
 public:
  ServerProcess(std::vector<std::string> argv, fs::path pidfile, fs::path log)
      : argv_(std::move(argv)), pidfile_(std::move(pidfile)), log_(std::move(log)) {}
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;
  ~ServerProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  // Empty on success, else what went wrong.
  std::string start() {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<char*> args;
    for (auto& a : argv_) args.push_back(a.data());
    args.push_back(nullptr);
    int rc = posix_spawnp(&pid_, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      pid_ = -1;
      return "cannot run " + argv_[0] + ": " + std::strerror(rc);
    }
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      std::string content = read_file(pidfile_);
      if (!content.empty() && std::stol(content) == pid_) return {};
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return describe() + " exited (status " + std::to_string(status) +
               ") before writing its pidfile:\n" + read_file(log_);
      }
      std::this_thread::sleep_for(20ms);
    }
    return describe() + " did not write its pidfile within 10 s:\n" + read_file(log_);
  }

  // Sends SIGTERM now; stop() then only waits.
  void terminate() {
    if (pid_ > 0 && ::kill(pid_, SIGTERM) == 0) terminated_ = true;
  }

  // SIGTERM; empty if the server exited 0 within 10 s, else what happened.
  std::string stop() {
    if (pid_ <= 0) return {};
    int status = 0;
    if (!terminated_ && ::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return describe() + " had already exited (status " + std::to_string(status) +
             ") before SIGTERM:\n" + read_file(log_);
    }
    if (!terminated_) ::kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return {};
        return describe() + " ended with " +
               (WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                  : "signal " + std::to_string(WTERMSIG(status))) +
               " after SIGTERM, expected exit 0:\n" + read_file(log_);
      }
      std::this_thread::sleep_for(20ms);
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
    return describe() + " did not exit within 10 s of SIGTERM:\n" + read_file(log_);
  }

  pid_t pid() const { return pid_; }
  std::string describe() const {
    std::string s;
    for (const auto& a : argv_) s += (s.empty() ? "" : " ") + a;
    return "'" + s + "'";
  }

 private:
  std::vector<std::string> argv_;
  fs::path pidfile_, log_;
  pid_t pid_ = -1;
  bool terminated_ = false;
};

// A server with a set of exports, each reachable through uri(name).
class Server {
 public:
  using Export = std::pair<std::string, std::string>;  // name, device spec

  explicit Server(std::vector<Export> exports) : exports_(std::move(exports)) {
    char tmpl[] = "/tmp/blkstack-nbd_client_test.XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  ~Server() {
    procs_.clear();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string start() {
    if (!against_nbdkit()) {
      const char* env = std::getenv("BLKSTACK");
      std::vector<std::string> argv = {
          env ? env : BLKSTACK_BINARY, "serve", "--socket", socket("main"), "--pidfile",
          (dir_ / "main.pid").string()};
      for (const auto& [name, spec] : exports_) {
        argv.push_back("--export");
        argv.push_back(name + "=" + spec);
        sockets_[name] = socket("main");
      }
      return launch("main", std::move(argv));
    }
    for (const auto& [name, spec] : exports_) {
      // ram:SIZE[,ro=1] -> nbdkit [-r] memory SIZE, block sizes as blkstack's.
      std::string size = spec.substr(spec.find(':') + 1);
      bool ro = false;
      if (auto comma = size.find(','); comma != std::string::npos) {
        ro = size.substr(comma + 1) == "ro=1";
        size = size.substr(0, comma);
      }
      std::vector<std::string> argv = {"nbdkit",    "-f",
                                       "-U",        socket(name),
                                       "--pidfile", (dir_ / (name + ".pid")).string()};
      if (ro) argv.push_back("-r");
      for (const char* a : {"--filter=blocksize-policy", "memory"}) argv.push_back(a);
      argv.push_back(size);
      for (const char* a : {"blocksize-minimum=512", "blocksize-preferred=4096",
                            "blocksize-maximum=33554432", "blocksize-error-policy=error"})
        argv.push_back(a);
      sockets_[name] = socket(name);
      if (auto err = launch(name, std::move(argv)); !err.empty()) return err;
    }
    return {};
  }

  // Stops every process; empty if all exited 0 on SIGTERM.
  std::string stop() {
    std::string err;
    for (auto& p : procs_) err += p->stop();
    return err;
  }

  std::string uri(const std::string& name) const {
    auto it = sockets_.find(name);
    const std::string sock = it != sockets_.end() ? it->second : sockets_.begin()->second;
    return "nbd+unix:///" + name + "?socket=" + sock;
  }
  pid_t pid() const { return procs_.front()->pid(); }
  ServerProcess& process() { return *procs_.front(); }

 private:
  std::string socket(const std::string& name) const {
    return (dir_ / (name + ".sock")).string();
  }
  std::string launch(const std::string& name, std::vector<std::string> argv) {
    procs_.push_back(std::make_unique<ServerProcess>(
        std::move(argv), dir_ / (name + ".pid"), dir_ / (name + ".log")));
    return procs_.back()->start();
  }

  std::vector<Export> exports_;
  fs::path dir_;
  std::map<std::string, std::string> sockets_;
  std::vector<std::unique_ptr<ServerProcess>> procs_;
};

Server* g_server = nullptr;

// The server for the whole test process; stopping it is checked too.
class ServerEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    server_ = std::make_unique<Server>(
        std::vector<Server::Export>{{"disk", "ram:64M"}, {"ro", "ram:16M,ro=1"}});
    std::string err = server_->start();
    ASSERT_EQ(err, "") << "the NBD server did not start";
    g_server = server_.get();
  }
  void TearDown() override {
    if (!server_) return;
    EXPECT_EQ(server_->stop(), "") << "the NBD server did not stop cleanly";
    g_server = nullptr;
    server_.reset();
  }

 private:
  std::unique_ptr<Server> server_;
};

struct HandleDeleter {
  void operator()(nbd_handle* h) const { nbd_close(h); }
};
using Handle = std::unique_ptr<nbd_handle, HandleDeleter>;

std::string nbd_error_text() {
  const char* e = nbd_get_error();
  return std::string(e ? e : "(no message)") + " (errno " +
         std::to_string(nbd_get_errno()) + ")";
}

// Expects a libnbd call to succeed (return >= 0), naming the error if not.
#define NBD_OK(call) ASSERT_NE((call), -1) << #call << ": " << nbd_error_text()
#define NBD_EXPECT_OK(call) EXPECT_NE((call), -1) << #call << ": " << nbd_error_text()

// Connects to EXPORT with base:allocation requested. strict=false turns off
// libnbd's own checks (bounds, read-only, flags) so that the request reaches
// the server and the server's answer is what the test sees.
Handle connect(const std::string& export_name, bool strict = true) {
  Handle h(nbd_create());
  if (!h) {
    ADD_FAILURE() << "nbd_create: " << nbd_error_text();
    return h;
  }
  nbd_add_meta_context(h.get(), LIBNBD_CONTEXT_BASE_ALLOCATION);
  if (!strict) nbd_set_strict_mode(h.get(), 0);
  if (nbd_connect_uri(h.get(), g_server->uri(export_name).c_str()) == -1) {
    ADD_FAILURE() << "connect to " << g_server->uri(export_name) << ": "
                  << nbd_error_text();
    return nullptr;
  }
  return h;
}

std::vector<uint8_t> pattern(size_t len, uint64_t seed) {
  std::vector<uint8_t> v(len);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < len; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v[i] = static_cast<uint8_t>(x);
  }
  return v;
}

std::vector<uint8_t> read_back(nbd_handle* h, size_t len, uint64_t off) {
  std::vector<uint8_t> v(len, 0xcd);
  if (nbd_pread(h, v.data(), len, off, 0) == -1) {
    ADD_FAILURE() << "pread " << len << " at " << off << ": " << nbd_error_text();
  }
  return v;
}

bool all_zero(const std::vector<uint8_t>& v, size_t from = 0, size_t len = SIZE_MAX) {
  len = std::min(len, v.size() - from);
  return std::all_of(v.begin() + from, v.begin() + from + len,
                     [](uint8_t b) { return b == 0; });
}

// base:allocation extents (offset, length, flags) covering [off, off+len),
// asking again where a reply covered less.
struct Extent {
  uint64_t off, len;
  uint32_t flags;
};
std::vector<Extent> extents(nbd_handle* h, uint64_t off, uint64_t len,
                            uint32_t flags = 0) {
  struct Ctx {
    std::vector<Extent> out;
    uint64_t pos;
    int calls = 0;
    std::string bad;
  } ctx{{}, off, 0, {}};
  auto cb = [](void* user, const char* meta, uint64_t, uint32_t* entries, size_t n,
               int*) -> int {
    auto* c = static_cast<Ctx*>(user);
    c->calls++;
    if (std::string(meta) != LIBNBD_CONTEXT_BASE_ALLOCATION) {
      c->bad = std::string("unexpected metadata context ") + meta;
      return 0;
    }
    for (size_t i = 0; i + 1 < n; i += 2) {
      c->out.push_back({c->pos, entries[i], entries[i + 1]});
      c->pos += entries[i];
    }
    return 0;
  };
  while (ctx.pos < off + len) {
    uint64_t before = ctx.pos;
    ctx.calls = 0;
    if (nbd_block_status(h, off + len - ctx.pos, ctx.pos,
                         nbd_extent_callback{cb, &ctx, nullptr}, flags) == -1) {
      ADD_FAILURE() << "block_status at " << ctx.pos << ": " << nbd_error_text();
      break;
    }
    EXPECT_EQ(ctx.calls, 1) << "one base:allocation chunk per reply";
    EXPECT_EQ(ctx.bad, "");
    if (ctx.pos == before) {
      ADD_FAILURE() << "block_status at " << before << " returned no extent";
      break;
    }
    if (flags & LIBNBD_CMD_FLAG_REQ_ONE) break;
  }
  return ctx.out;
}

// The flags of the extent holding byte OFF.
uint32_t state_at(nbd_handle* h, uint64_t off) {
  auto ex = extents(h, off, 512, LIBNBD_CMD_FLAG_REQ_ONE);
  if (ex.empty()) return 0xffffffff;
  return ex.front().flags;
}

// Region of the 64 MiB disk each test uses, so that the tests may run in
// one process against one server.
constexpr uint64_t kRwBase = 0;
constexpr uint64_t kFuaBase = 1 * kMiB;
constexpr uint64_t kTrimBase = 2 * kMiB;
constexpr uint64_t kZeroBase = 3 * kMiB;
constexpr uint64_t kCacheBase = 4 * kMiB;
constexpr uint64_t kStatusBase = 5 * kMiB;
constexpr uint64_t kDfBase = 6 * kMiB;
constexpr uint64_t kErrBase = 7 * kMiB;
constexpr uint64_t kAioBase = 8 * kMiB;     // 8 .. 24 MiB
constexpr uint64_t kMultiBase = 24 * kMiB;  // 24 .. 28 MiB
constexpr uint64_t kDiscBase = 28 * kMiB;
constexpr uint64_t kBigBase = 32 * kMiB;  // 32 .. 64 MiB

TEST(NbdClient, CapabilitiesOfARamExport) {
  Handle h = connect("disk");
  ASSERT_TRUE(h);
  EXPECT_EQ(nbd_get_size(h.get()), static_cast<int64_t>(kDiskSize));
  EXPECT_STREQ(nbd_get_protocol(h.get()), "newstyle-fixed");
  EXPECT_EQ(nbd_get_structured_replies_negotiated(h.get()), 1);
  EXPECT_EQ(nbd_can_meta_context(h.get(), LIBNBD_CONTEXT_BASE_ALLOCATION), 1);
  EXPECT_EQ(nbd_is_read_only(h.get()), 0);
  EXPECT_EQ(nbd_can_flush(h.get()), 1);
  EXPECT_EQ(nbd_can_fua(h.get()), 1);
  EXPECT_EQ(nbd_can_trim(h.get()), 1);
  EXPECT_EQ(nbd_can_zero(h.get()), 1);
  EXPECT_EQ(nbd_can_fast_zero(h.get()), 1);
  EXPECT_EQ(nbd_can_df(h.get()), 1);
  EXPECT_EQ(nbd_can_multi_conn(h.get()), 1);
  EXPECT_EQ(nbd_can_cache(h.get()), 1);
  EXPECT_EQ(nbd_is_rotational(h.get()), 0);
  const int64_t mn = nbd_get_block_size(h.get(), LIBNBD_SIZE_MINIMUM);
  const int64_t pr = nbd_get_block_size(h.get(), LIBNBD_SIZE_PREFERRED);
  const int64_t mx = nbd_get_block_size(h.get(), LIBNBD_SIZE_MAXIMUM);
  EXPECT_EQ(mn, 512) << "minimum block size: the RAM disk's logical block size";
  EXPECT_TRUE(pr >= mn && (pr & (pr - 1)) == 0) << "preferred block size " << pr;
  EXPECT_TRUE(mx >= pr && mx % std::max<int64_t>(mn, 1) == 0)
      << "maximum block size " << mx;
}

TEST(NbdClient, EmptyExportNameIsTheFirstExport) {
  Handle h = connect("");
  ASSERT_TRUE(h);
  EXPECT_EQ(nbd_get_size(h.get()), static_cast<int64_t>(kDiskSize));
  EXPECT_EQ(nbd_is_read_only(h.get()), 0);
}

TEST(NbdClient, UnknownExportNameIsRefused) {
  if (against_nbdkit()) GTEST_SKIP() << "nbdkit's memory plugin serves any export name";
  Handle h(nbd_create());
  ASSERT_TRUE(h);
  EXPECT_EQ(nbd_connect_uri(h.get(), g_server->uri("nope").c_str()), -1);
  // The server is still there for everyone else.
  Handle again = connect("disk");
  EXPECT_TRUE(again);
}

TEST(NbdClient, ListsItsExports) {
  if (against_nbdkit()) GTEST_SKIP() << "one nbdkit per export here";
  Handle h(nbd_create());
  ASSERT_TRUE(h);
  nbd_set_opt_mode(h.get(), true);
  NBD_OK(nbd_connect_uri(h.get(), g_server->uri("").c_str()));
  std::vector<std::string> names;
  auto cb = [](void* user, const char* name, const char*) -> int {
    static_cast<std::vector<std::string>*>(user)->push_back(name);
    return 0;
  };
  NBD_OK(nbd_opt_list(h.get(), nbd_list_callback{cb, &names, nullptr}));
  EXPECT_EQ(names, (std::vector<std::string>{"disk", "ro"}));
  NBD_EXPECT_OK(nbd_opt_abort(h.get()));
}

TEST(NbdClient, ReadOnlyExport) {
  Handle h = connect("ro", /*strict=*/false);
  ASSERT_TRUE(h);
  EXPECT_EQ(nbd_get_size(h.get()), static_cast<int64_t>(kRoSize));
  EXPECT_EQ(nbd_is_read_only(h.get()), 1);
  EXPECT_NE(nbd_can_trim(h.get()), 1) << "trim advertised on a read-only export";
  EXPECT_NE(nbd_can_zero(h.get()), 1) << "write-zeroes advertised on a read-only export";
  EXPECT_NE(nbd_can_fua(h.get()), 1) << "FUA advertised on a read-only export";
  auto data = read_back(h.get(), 64 * kKiB, 0);
  EXPECT_TRUE(all_zero(data));
  auto buf = pattern(4096, 1);
  // libnbd's strict mode is off: these reach the server, which refuses them.
  EXPECT_EQ(nbd_pwrite(h.get(), buf.data(), buf.size(), 0, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EPERM) << nbd_error_text();
  EXPECT_EQ(nbd_trim(h.get(), 4096, 0, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EPERM) << nbd_error_text();
  EXPECT_EQ(nbd_zero(h.get(), 4096, 0, 0), -1);
  EXPECT_TRUE(nbd_get_errno() == EPERM || nbd_get_errno() == EINVAL) << nbd_error_text();
  // Nothing was written, and the connection still works.
  EXPECT_TRUE(all_zero(read_back(h.get(), 4096, 0)));
  EXPECT_EQ(nbd_aio_is_ready(h.get()), 1);
  // With strict mode on, libnbd refuses before sending (the advertised flags).
  Handle strict = connect("ro");
  ASSERT_TRUE(strict);
  EXPECT_EQ(nbd_pwrite(strict.get(), buf.data(), buf.size(), 0, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EPERM);
}

TEST(NbdClient, WriteThenRead) {
  Handle h = connect("disk");
  ASSERT_TRUE(h);
  auto a = pattern(kMiB, 2);
  NBD_OK(nbd_pwrite(h.get(), a.data(), a.size(), kRwBase, 0));
  EXPECT_EQ(read_back(h.get(), kMiB, kRwBase), a);
  // A sub-range, and a 512-byte write inside a 4 KiB page.
  auto part = read_back(h.get(), 3 * 512, kRwBase + 5 * 512);
  EXPECT_TRUE(std::equal(part.begin(), part.end(), a.begin() + 5 * 512));
  auto small = pattern(512, 3);
  NBD_OK(nbd_pwrite(h.get(), small.data(), 512, kRwBase + 4096 + 1024, 0));
  std::copy(small.begin(), small.end(), a.begin() + 4096 + 1024);
  EXPECT_EQ(read_back(h.get(), kMiB, kRwBase), a);
}

TEST(NbdClient, FuaWritesAndFlush) {
  Handle h = connect("disk");
  ASSERT_TRUE(h);
  auto a = pattern(256 * kKiB, 4);
  NBD_OK(nbd_pwrite(h.get(), a.data(), a.size(), kFuaBase, LIBNBD_CMD_FLAG_FUA));
  auto b = pattern(4096, 5);
  NBD_OK(nbd_pwrite(h.get(), b.data(), b.size(), kFuaBase + 512 * kKiB, 0));
  NBD_OK(nbd_flush(h.get(), 0));
  NBD_OK(nbd_trim(h.get(), 64 * kKiB, kFuaBase + 192 * kKiB, LIBNBD_CMD_FLAG_FUA));
  NBD_OK(nbd_zero(h.get(), 4096, kFuaBase + 512 * kKiB, LIBNBD_CMD_FLAG_FUA));
  NBD_OK(nbd_flush(h.get(), 0));
  // Seen from a new connection.
  Handle other = connect("disk");
  ASSERT_TRUE(other);
  auto got = read_back(other.get(), 256 * kKiB, kFuaBase);
  EXPECT_TRUE(std::equal(got.begin(), got.begin() + 192 * kKiB, a.begin()));
  EXPECT_TRUE(all_zero(got, 192 * kKiB)) << "trimmed 64 KiB of a RAM disk read as zeroes";
  EXPECT_TRUE(all_zero(read_back(other.get(), 4096, kFuaBase + 512 * kKiB)));
}

TEST(NbdClient, Trim) {
  Handle h = connect("disk");
  ASSERT_TRUE(h);
  auto a = pattern(256 * kKiB, 6);
  NBD_OK(nbd_pwrite(h.get(), a.data(), a.size(), kTrimBase, 0));
  EXPECT_EQ(state_at(h.get(), kTrimBase + 64 * kKiB) & LIBNBD_STATE_HOLE, 0u);
  NBD_OK(nbd_trim(h.get(), 128 * kKiB, kTrimBase + 64 * kKiB, 0));
  auto got = read_back(h.get(), 256 * kKiB, kTrimBase);
  EXPECT_TRUE(std::equal(got.begin(), got.begin() + 64 * kKiB, a.begin()));
  EXPECT_TRUE(all_zero(got, 64 * kKiB, 128 * kKiB))
      << "a trimmed RAM range reads as zeroes";
  EXPECT_TRUE(std::equal(got.begin() + 192 * kKiB, got.end(), a.begin() + 192 * kKiB));
  // The trimmed pages are holes again; the rest is data.
  if (!against_nbdkit()) {  // nbdkit frees whole 32 KiB pages only
    EXPECT_EQ(state_at(h.get(), kTrimBase + 64 * kKiB),
              LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);
  }
  EXPECT_EQ(state_at(h.get(), kTrimBase) & LIBNBD_STATE_HOLE, 0u);
  EXPECT_EQ(state_at(h.get(), kTrimBase + 192 * kKiB) & LIBNBD_STATE_HOLE, 0u);
}

TEST(NbdClient, WriteZeroesWithAndWithoutNoHoleAndFastZero) {
  Handle h = connect("disk");
  ASSERT_TRUE(h);
  auto a = pattern(kMiB, 7);
  NBD_OK(nbd_pwrite(h.get(), a.data(), a.size(), kZeroBase, 0));
  const uint64_t z = kZeroBase;
  // Plain: may punch a hole.
  NBD_OK(nbd_zero(h.get(), 64 * kKiB, z, 0));
  // NO_HOLE: zeroes stay allocated.
  NBD_OK(nbd_zero(h.get(), 64 * kKiB, z + 128 * kKiB, LIBNBD_CMD_FLAG_NO_HOLE));
  // FAST_ZERO: RAM zeroes fast, so it must succeed (not ENOTSUP).
  NBD_OK(nbd_zero(h.get(), 64 * kKiB, z + 256 * kKiB, LIBNBD_CMD_FLAG_FAST_ZERO));
  // FAST_ZERO with NO_HOLE: a server may decline a zeroing it cannot do
  // fast with ENOTSUP (and must then leave the range untouched); anything
  // else must succeed.
  bool fast_no_hole = true;
  if (nbd_zero(h.get(), 64 * kKiB, z + 384 * kKiB,
               LIBNBD_CMD_FLAG_FAST_ZERO | LIBNBD_CMD_FLAG_NO_HOLE) == -1) {
    EXPECT_EQ(nbd_get_errno(), ENOTSUP) << nbd_error_text();
    fast_no_hole = false;
    std::cerr << "note: write-zeroes with FAST_ZERO|NO_HOLE declined with ENOTSUP\n";
  }
  // Sector-aligned but not page-aligned.
  NBD_OK(nbd_zero(h.get(), 1024, z + 512 * kKiB + 512, 0));
  NBD_OK(nbd_zero(h.get(), 1024, z + 576 * kKiB + 512, LIBNBD_CMD_FLAG_NO_HOLE));

  std::vector<uint8_t> want = a;
  for (uint64_t off : {0ul, 128 * kKiB, 256 * kKiB, 384 * kKiB}) {
    if (off == 384 * kKiB && !fast_no_hole) continue;
    std::fill(want.begin() + off, want.begin() + off + 64 * kKiB, 0);
  }
  for (uint64_t off : {512 * kKiB + 512, 576 * kKiB + 512})
    std::fill(want.begin() + off, want.begin() + off + 1024, 0);
  auto got = read_back(h.get(), kMiB, kZeroBase);
  EXPECT_TRUE(got == want) << "contents after the zeroes differ";
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      ADD_FAILURE() << "first difference at +" << i << ": " << int(got[i])
                    << " != " << int(want[i]);
      break;
    }
  }
  // After NO_HOLE the range is "fully provisioned" (the spec): not reported
  // as a hole. (nbdkit's memory plugin frees zeroed pages whatever the flag.)
  for (uint64_t off : {128 * kKiB, 384 * kKiB}) {
    if (against_nbdkit()) break;
    uint32_t s = state_at(h.get(), z + off);
    EXPECT_EQ(s & LIBNBD_STATE_HOLE, 0u)
        << "zero with NO_HOLE at +" << off << " left a hole";
  }
  // Partly-zeroed pages are data.
  EXPECT_EQ(state_at(h.get(), z + 512 * kKiB) & LIBNBD_STATE_HOLE, 0u);
}

TEST(NbdClient, Cache) {
  Handle h = connect("disk");
  ASSERT_TRUE(h);
  auto a = pattern(64 * kKiB, 8);
  NBD_OK(nbd_pwrite(h.get(), a.data(), a.size(), kCacheBase, 0));
  NBD_OK(nbd_cache(h.get(), kMiB, kCacheBase, 0));
  NBD_OK(nbd_cache(h.get(), kDiskSize, 0, 0));
  EXPECT_EQ(read_back(h.get(), a.size(), kCacheBase), a);
}

TEST(NbdClient, BlockStatusBaseAllocation) {
  Handle h = connect("disk");
  ASSERT_TRUE(h);
  // Untouched: one hole reading as zeroes.
  auto fresh = extents(h.get(), kStatusBase, kMiB);
  ASSERT_FALSE(fresh.empty());
  for (const auto& e : fresh) EXPECT_EQ(e.flags, LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);
  auto a = pattern(4096, 9);
  NBD_OK(nbd_pwrite(h.get(), a.data(), a.size(), kStatusBase + 64 * kKiB, 0));
  auto ex = extents(h.get(), kStatusBase, kMiB);
  uint64_t covered = 0;
  for (const auto& e : ex) {
    covered += e.len;
    const bool written =
        e.off < kStatusBase + 68 * kKiB && e.off + e.len > kStatusBase + 64 * kKiB;
    if (written) {
      EXPECT_EQ(e.flags & LIBNBD_STATE_HOLE, 0u) << "written 4 KiB reported as a hole";
      EXPECT_EQ(e.flags & LIBNBD_STATE_ZERO, 0u) << "written 4 KiB reported as zeroes";
    } else {
      EXPECT_EQ(e.flags, LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO)
          << "extent at +" << e.off - kStatusBase << " length " << e.len;
    }
  }
  EXPECT_EQ(covered, kMiB);
  if (!against_nbdkit()) {  // nbdkit's pages are 32 KiB
    ASSERT_EQ(ex.size(), 3u) << "hole, 4 KiB of data, hole";
    EXPECT_EQ(ex[1].off, kStatusBase + 64 * kKiB);
    EXPECT_EQ(ex[1].len, 4096u);
  }
  // REQ_ONE: one extent.
  auto one = extents(h.get(), kStatusBase, kMiB, LIBNBD_CMD_FLAG_REQ_ONE);
  EXPECT_EQ(one.size(), 1u);
  // The whole export: at least one extent, within the request.
  auto all = extents(h.get(), 0, kDiskSize);
  uint64_t sum = 0;
  for (const auto& e : all) sum += e.len;
  EXPECT_EQ(sum, kDiskSize);
}

// Chunks of a structured read reply as libnbd hands them to the callback.
struct Chunk {
  uint64_t off;
  size_t len;
  unsigned status;
};
int record_chunk(void* user, const void*, size_t count, uint64_t offset, unsigned status,
                 int*) {
  static_cast<std::vector<Chunk>*>(user)->push_back({offset, count, status});
  return 0;
}

TEST(NbdClient, ReadWithDfIsOneChunk) {
  Handle h = connect("disk");
  ASSERT_TRUE(h);
  ASSERT_EQ(nbd_can_df(h.get()), 1);
  // 32 KiB of data followed by 32 KiB never written.
  auto a = pattern(32 * kKiB, 10);
  NBD_OK(nbd_pwrite(h.get(), a.data(), a.size(), kDfBase, 0));
  std::vector<uint8_t> buf(64 * kKiB, 0xcd);
  std::vector<Chunk> chunks;
  NBD_OK(nbd_pread_structured(h.get(), buf.data(), buf.size(), kDfBase,
                              nbd_chunk_callback{record_chunk, &chunks, nullptr},
                              LIBNBD_CMD_FLAG_DF));
  ASSERT_EQ(chunks.size(), 1u) << "DF: the server must send one content chunk";
  EXPECT_EQ(chunks[0].status, unsigned{LIBNBD_READ_DATA})
      << "data and hole together: one data chunk";
  EXPECT_EQ(chunks[0].off, kDfBase);
  EXPECT_EQ(chunks[0].len, buf.size());
  EXPECT_TRUE(std::equal(a.begin(), a.end(), buf.begin()));
  EXPECT_TRUE(all_zero(buf, 32 * kKiB));
  // Without DF the server may split into data and hole chunks: they must
  // not overlap, must cover the request, and hold the right bytes.
  chunks.clear();
  std::vector<uint8_t> buf3(256 * kKiB, 0xcd);
  NBD_OK(nbd_pread_structured(h.get(), buf3.data(), buf3.size(), kDfBase,
                              nbd_chunk_callback{record_chunk, &chunks, nullptr}, 0));
  std::sort(chunks.begin(), chunks.end(), [](auto& x, auto& y) { return x.off < y.off; });
  uint64_t pos = kDfBase;
  for (const auto& c : chunks) {
    EXPECT_EQ(c.off, pos) << "chunks overlap or leave a gap";
    EXPECT_NE(c.status, unsigned{LIBNBD_READ_ERROR});
    pos = c.off + c.len;
  }
  EXPECT_EQ(pos, kDfBase + buf3.size());
  EXPECT_TRUE(std::equal(a.begin(), a.end(), buf3.begin()));
  EXPECT_TRUE(all_zero(buf3, 32 * kKiB));
}

TEST(NbdClient, OutOfRangeFailsAndTheConnectionGoesOn) {
  Handle h = connect("disk", /*strict=*/false);
  ASSERT_TRUE(h);
  auto a = pattern(4096, 11);
  NBD_OK(nbd_pwrite(h.get(), a.data(), a.size(), kErrBase, 0));
  std::vector<uint8_t> buf(8192);
  EXPECT_EQ(nbd_pread(h.get(), buf.data(), 4096, kDiskSize, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL) << "read at the end: " << nbd_error_text();
  EXPECT_EQ(nbd_pread(h.get(), buf.data(), 8192, kDiskSize - 4096, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL) << "read across the end: " << nbd_error_text();
  EXPECT_EQ(nbd_pread(h.get(), buf.data(), 4096, kDiskSize + 1024 * kMiB, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL) << "read far past the end: " << nbd_error_text();
  EXPECT_EQ(nbd_pwrite(h.get(), a.data(), 4096, kDiskSize, 0), -1);
  EXPECT_EQ(nbd_get_errno(), ENOSPC)
      << "write past the end (the spec: SHOULD be ENOSPC): " << nbd_error_text();
  EXPECT_EQ(nbd_trim(h.get(), 4096, kDiskSize, 0), -1);
  EXPECT_EQ(nbd_zero(h.get(), 4096, kDiskSize - 2048, 0), -1);
  EXPECT_EQ(nbd_cache(h.get(), 4096, kDiskSize, 0), -1);
  auto noop = [](void*, const char*, uint64_t, uint32_t*, size_t, int*) -> int {
    return 0;
  };
  EXPECT_EQ(nbd_block_status(h.get(), 4096, kDiskSize,
                             nbd_extent_callback{noop, nullptr, nullptr}, 0),
            -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL) << "block status past the end: " << nbd_error_text();
  // Nothing near the end changed; the connection still works.
  EXPECT_EQ(nbd_aio_is_ready(h.get()), 1) << nbd_connection_state(h.get());
  EXPECT_TRUE(all_zero(read_back(h.get(), 4096, kDiskSize - 4096)));
  EXPECT_EQ(read_back(h.get(), 4096, kErrBase), a);
  // A request not aligned to the 512-byte minimum block size either works
  // (read-modify-write) or fails with EINVAL; either way the connection goes on.
  std::vector<uint8_t> odd(100);
  if (nbd_pread(h.get(), odd.data(), odd.size(), kErrBase + 100, 0) == 0) {
    EXPECT_TRUE(std::equal(odd.begin(), odd.end(), a.begin() + 100));
  } else {
    EXPECT_EQ(nbd_get_errno(), EINVAL) << nbd_error_text();
  }
  EXPECT_EQ(read_back(h.get(), 4096, kErrBase), a);
  // An unknown command flag is refused (EINVAL) and the connection goes on.
  EXPECT_EQ(nbd_pread(h.get(), buf.data(), 4096, kErrBase, 0x8000), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL) << "unknown flag: " << nbd_error_text();
  EXPECT_EQ(read_back(h.get(), 4096, kErrBase), a);
  // A zero-length read, and a read longer than the maximum block size
  // (the spec lets a server refuse it; blkstack does, with EINVAL).
  EXPECT_EQ(nbd_pread(h.get(), buf.data(), 0, kErrBase, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL) << "zero-length read: " << nbd_error_text();
  const int64_t mx = nbd_get_block_size(h.get(), LIBNBD_SIZE_MAXIMUM);
  if (mx > 0 && mx < static_cast<int64_t>(kDiskSize)) {
    std::vector<uint8_t> big(mx + 4096);
    EXPECT_EQ(nbd_pread(h.get(), big.data(), big.size(), 0, 0), -1)
        << "a read of " << big.size() << " bytes, over the maximum block size " << mx;
    EXPECT_EQ(nbd_get_errno(), EINVAL) << nbd_error_text();
  }
  EXPECT_EQ(nbd_aio_is_ready(h.get()), 1) << nbd_connection_state(h.get());
  EXPECT_EQ(read_back(h.get(), 4096, kErrBase), a);
}

// Completion callbacks record the error they were given.
struct Done {
  int error = -1;
};
int record_done(void* user, int* error) {
  static_cast<Done*>(user)->error = *error;
  return 1;  // retire the command
}

// Runs the handle until nothing is in flight (30 s at most).
void drain(nbd_handle* h) {
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (nbd_aio_in_flight(h) > 0) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "requests did not complete";
    ASSERT_NE(nbd_poll(h, 1000), -1) << nbd_error_text();
  }
}

TEST(NbdClient, SixtyFourRequestsInFlight) {
  Handle h = connect("disk");
  ASSERT_TRUE(h);
  constexpr int kN = 64;
  constexpr size_t kLen = 64 * kKiB;
  std::vector<std::vector<uint8_t>> data(kN);
  std::vector<Done> done(kN);
  for (int i = 0; i < kN; ++i) {
    data[i] = pattern(kLen, 100 + i);
    ASSERT_NE(nbd_aio_pwrite(h.get(), data[i].data(), kLen, kAioBase + i * kLen,
                             nbd_completion_callback{record_done, &done[i], nullptr},
                             i % 8 == 0 ? LIBNBD_CMD_FLAG_FUA : 0),
              -1)
        << nbd_error_text();
  }
  EXPECT_EQ(nbd_aio_in_flight(h.get()), kN);
  drain(h.get());
  for (int i = 0; i < kN; ++i) EXPECT_EQ(done[i].error, 0) << "write " << i;

  // 64 reads of what was written, in flight together with 64 writes to
  // the next 4 MiB, and a flush among them.
  std::vector<std::vector<uint8_t>> got(kN, std::vector<uint8_t>(kLen, 0xcd));
  std::vector<std::vector<uint8_t>> data2(kN);
  std::vector<Done> rdone(kN), wdone(kN);
  Done fdone;
  for (int i = 0; i < kN; ++i) {
    int j = (i * 37) % kN;  // not in offset order
    ASSERT_NE(nbd_aio_pread(h.get(), got[j].data(), kLen, kAioBase + j * kLen,
                            nbd_completion_callback{record_done, &rdone[j], nullptr}, 0),
              -1);
    data2[i] = pattern(kLen, 1000 + i);
    ASSERT_NE(nbd_aio_pwrite(h.get(), data2[i].data(), kLen, kAioBase + (kN + i) * kLen,
                             nbd_completion_callback{record_done, &wdone[i], nullptr}, 0),
              -1);
    if (i == kN / 2) {
      ASSERT_NE(nbd_aio_flush(h.get(),
                              nbd_completion_callback{record_done, &fdone, nullptr}, 0),
                -1);
    }
  }
  drain(h.get());
  EXPECT_EQ(fdone.error, 0);
  for (int i = 0; i < kN; ++i) {
    EXPECT_EQ(rdone[i].error, 0) << "read " << i;
    EXPECT_EQ(wdone[i].error, 0) << "write " << i;
    EXPECT_TRUE(got[i] == data[i]) << "read " << i << " returned other data";
  }
  for (int i = 0; i < kN; ++i) {
    EXPECT_TRUE(read_back(h.get(), kLen, kAioBase + (kN + i) * kLen) == data2[i])
        << "write " << i;
  }
}

TEST(NbdClient, MultiConnWriteFlushReadElsewhere) {
  Handle h1 = connect("disk");
  Handle h2 = connect("disk");
  ASSERT_TRUE(h1 && h2);
  ASSERT_EQ(nbd_can_multi_conn(h1.get()), 1);
  auto a = pattern(256 * kKiB, 12);
  NBD_OK(nbd_pwrite(h1.get(), a.data(), a.size(), kMultiBase, 0));
  NBD_OK(nbd_flush(h1.get(), 0));
  EXPECT_EQ(read_back(h2.get(), a.size(), kMultiBase), a);
  // And the other way, with FUA instead of a flush.
  auto b = pattern(4096, 13);
  NBD_OK(nbd_pwrite(h2.get(), b.data(), b.size(), kMultiBase + 512 * kKiB,
                    LIBNBD_CMD_FLAG_FUA));
  EXPECT_EQ(read_back(h1.get(), b.size(), kMultiBase + 512 * kKiB), b);

  // Four connections writing their own 512 KiB at once (aio), each flushes,
  // then each reads what the next one wrote.
  constexpr int kConns = 4;
  std::vector<Handle> hs;
  std::vector<std::vector<uint8_t>> data(kConns);
  std::vector<Done> done(kConns * 8);
  for (int c = 0; c < kConns; ++c) {
    hs.push_back(connect("disk"));
    ASSERT_TRUE(hs.back());
    data[c] = pattern(512 * kKiB, 20 + c);
  }
  for (int c = 0; c < kConns; ++c) {
    for (int k = 0; k < 8; ++k) {
      ASSERT_NE(nbd_aio_pwrite(
                    hs[c].get(), data[c].data() + k * 64 * kKiB, 64 * kKiB,
                    kMultiBase + kMiB + c * 512 * kKiB + k * 64 * kKiB,
                    nbd_completion_callback{record_done, &done[c * 8 + k], nullptr}, 0),
                -1);
    }
  }
  for (int c = 0; c < kConns; ++c) {
    drain(hs[c].get());
    NBD_OK(nbd_flush(hs[c].get(), 0));
  }
  for (const auto& d : done) EXPECT_EQ(d.error, 0);
  for (int c = 0; c < kConns; ++c) {
    int n = (c + 1) % kConns;
    EXPECT_TRUE(read_back(hs[c].get(), 512 * kKiB, kMultiBase + kMiB + n * 512 * kKiB) ==
                data[n])
        << "connection " << c << " reading connection " << n << "'s data";
  }
}

TEST(NbdClient, DisconnectCleanlyAndAbruptly) {
  auto a = pattern(64 * kKiB, 14);
  {
    Handle h = connect("disk");
    ASSERT_TRUE(h);
    NBD_OK(nbd_pwrite(h.get(), a.data(), a.size(), kDiscBase, 0));
    // NBD_CMD_DISC after the outstanding requests: the server closes.
    std::vector<uint8_t> buf(64 * kKiB);
    Done d;
    ASSERT_NE(nbd_aio_pread(h.get(), buf.data(), buf.size(), kDiscBase,
                            nbd_completion_callback{record_done, &d, nullptr}, 0),
              -1);
    NBD_OK(nbd_shutdown(h.get(), 0));
    // The spec: on NBD_CMD_DISC the server MUST handle all outstanding
    // requests. (nbdkit, threaded, sometimes answers ESHUTDOWN instead.)
    if (!(against_nbdkit() && d.error == ESHUTDOWN)) {
      EXPECT_EQ(d.error, 0) << "a read sent just before NBD_CMD_DISC";
      EXPECT_TRUE(buf == a) << "a read sent just before NBD_CMD_DISC returned other data";
    }
    EXPECT_TRUE(nbd_aio_is_closed(h.get()) || nbd_aio_is_dead(h.get()))
        << nbd_connection_state(h.get());
  }
  {
    // Gone with 32 writes in flight, no NBD_CMD_DISC.
    Handle h = connect("disk");
    ASSERT_TRUE(h);
    static std::vector<uint8_t> junk = pattern(64 * kKiB, 15);
    for (int i = 0; i < 32; ++i) {
      ASSERT_NE(nbd_aio_pwrite(h.get(), junk.data(), junk.size(),
                               kDiscBase + kMiB + i * 64 * kKiB, NBD_NULL_COMPLETION, 0),
                -1);
    }
    nbd_aio_notify_write(h.get());
  }
  {
    // Gone in the middle of the handshake.
    Handle h(nbd_create());
    nbd_set_opt_mode(h.get(), true);
    NBD_OK(nbd_connect_uri(h.get(), g_server->uri("disk").c_str()));
  }
  // The server is still serving, with the data from before.
  Handle h = connect("disk");
  ASSERT_TRUE(h);
  EXPECT_EQ(read_back(h.get(), a.size(), kDiscBase), a);
}

TEST(NbdClient, LargeRequestsUpToTheMaximumBlockSize) {
  Handle h = connect("disk");
  ASSERT_TRUE(h);
  const int64_t mx = nbd_get_block_size(h.get(), LIBNBD_SIZE_MAXIMUM);
  ASSERT_GT(mx, 0);
  const size_t len = std::min<uint64_t>(mx, 32 * kMiB);
  auto a = pattern(len, 16);
  NBD_OK(nbd_pwrite(h.get(), a.data(), a.size(), kBigBase, 0));
  EXPECT_TRUE(read_back(h.get(), len, kBigBase) == a);
  NBD_OK(nbd_zero(h.get(), len, kBigBase, 0));
  EXPECT_TRUE(all_zero(read_back(h.get(), len, kBigBase)));
}

// Its own server: SIGTERM with writes in flight and an idle connection
// open. The server finishes what it has, exits 0 within 10 s; every write
// it answered succeeded.
TEST(NbdClient, SigtermWithRequestsInFlight) {
  Server server(std::vector<Server::Export>{{"disk", "ram:64M"}});
  ASSERT_EQ(server.start(), "");
  Handle idle(nbd_create());
  NBD_OK(nbd_connect_uri(idle.get(), server.uri("disk").c_str()));
  Handle h(nbd_create());
  NBD_OK(nbd_connect_uri(h.get(), server.uri("disk").c_str()));
  constexpr int kN = 64;
  auto data = pattern(256 * kKiB, 17);
  std::vector<Done> done(kN);
  for (int i = 0; i < kN; ++i) {
    ASSERT_NE(nbd_aio_pwrite(h.get(), data.data(), data.size(), i * data.size(),
                             nbd_completion_callback{record_done, &done[i], nullptr}, 0),
              -1);
  }
  // Let some of the requests reach the server, then SIGTERM.
  for (int i = 0; i < 4 && nbd_aio_in_flight(h.get()) > 0; ++i) nbd_poll(h.get(), 10);
  server.process().terminate();
  const auto deadline = std::chrono::steady_clock::now() + 15s;
  while (nbd_aio_in_flight(h.get()) > 0 && std::chrono::steady_clock::now() < deadline) {
    if (nbd_poll(h.get(), 100) == -1) break;  // the server closed the connection
  }
  int ok = 0, refused = 0;
  for (const auto& d : done) {
    if (d.error == 0)
      ++ok;
    else if (d.error == ESHUTDOWN)
      ++refused;
  }
  // Answers are success or ESHUTDOWN; requests the server never read end
  // with a connection error on the client side.
  for (const auto& d : done) {
    EXPECT_TRUE(d.error == 0 || d.error == ESHUTDOWN || d.error == ENOTCONN ||
                d.error == ECONNRESET || d.error == EPIPE || d.error == -1)
        << "error " << d.error;
  }
  std::cerr << "SIGTERM: " << ok << " writes succeeded, " << refused
            << " refused with ESHUTDOWN, " << kN - ok - refused << " never answered\n";
  // Exit 0 within 10 s of the SIGTERM, the idle connection notwithstanding.
  // (nbdkit waits for its clients to go: close them first there.)
  if (against_nbdkit()) {
    idle.reset();
    h.reset();
  }
  EXPECT_EQ(server.stop(), "");
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new ServerEnvironment);
  return RUN_ALL_TESTS();
}
