// The nbd client driver (src/drivers/nbd/) against real nbdkit servers,
// each started on a unix socket in a temporary directory and killed at
// the end of its test (also when it fails): a reference model from several
// threads in both queue modes, the server killed and restarted under load
// (retried, or failed by dead_conn_timeout=0), faults and slowness from
// nbdkit's error and delay filters, a server that never answers (the I/O
// timeout), block status, the server's block sizes as limits, large writes
// and deep queues, unreachable servers and missing exports (a clear error
// in bounded time), and a dm mirror over two servers losing one. nbdkit comes with
// scripts/install-deps.sh; without it the tests fail, naming the package.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/completion.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/driver_type.h"
#include "blkstack/submit.h"
#include "dm/mapped_device.h"
#include "test_util.h"

namespace blkstack {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using testing_util::Contains;
using testing_util::ErrorOf;

constexpr uint64_t kMiB = 1 << 20;

bool have_nbdkit() { return std::system("nbdkit --version >/dev/null 2>&1") == 0; }

fs::path make_temp_dir() {
  char tmpl[] = "/tmp/blkstack-nbdc-XXXXXX";
  const char* d = mkdtemp(tmpl);
  if (d == nullptr) throw std::runtime_error("mkdtemp");
  return d;
}

// One nbdkit in the foreground on a unix socket, ready once its pidfile
// exists; killed (SIGKILL) by kill() or the destructor.
class Nbdkit {
 public:
  Nbdkit(fs::path dir, std::vector<std::string> args)
      : dir_(std::move(dir)), args_(args) {}
  ~Nbdkit() { kill(); }
  Nbdkit(const Nbdkit&) = delete;
  Nbdkit& operator=(const Nbdkit&) = delete;

  std::string socket() const { return (dir_ / "nbdkit.sock").string(); }
  // For the next start(): a server that comes back different.
  void set_args(std::vector<std::string> args) { args_ = std::move(args); }
  std::string uri(const std::string& exp = "") const {
    return "nbd+unix:///" + exp + "?socket=" + socket();
  }

  void start() {
    const fs::path pidfile = dir_ / "nbdkit.pid";
    fs::remove(pidfile);
    fs::remove(socket());  // left behind by a killed nbdkit
    std::vector<std::string> argv = {"nbdkit", "--foreground", "--exit-with-parent", "-U",
                                     socket(), "--pidfile",    pidfile.string()};
    argv.insert(argv.end(), args_.begin(), args_.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    ASSERT_EQ(posix_spawnp(&pid_, "nbdkit", nullptr, nullptr, cargv.data(), environ), 0);
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (!fs::exists(pidfile) || fs::file_size(pidfile) == 0) {
      int st;
      ASSERT_EQ(waitpid(pid_, &st, WNOHANG), 0) << "nbdkit exited at start";
      ASSERT_LT(Clock::now(), deadline) << "nbdkit did not start";
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  fs::path dir_;
  std::vector<std::string> args_;
  pid_t pid_ = -1;
};

class NbdDriverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(have_nbdkit()) << "nbdkit not found: install the nbdkit package "
                                  "(scripts/install-deps.sh)";
    ASSERT_NE(find_driver_type("nbd"), nullptr);
    dir_ = make_temp_dir();
  }
  void TearDown() override {
    servers_.clear();  // killed before the directory goes
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  // A server in a directory of its own, started.
  Nbdkit& server(std::vector<std::string> args) {
    const fs::path d = dir_ / std::to_string(servers_.size());
    fs::create_directory(d);
    servers_.push_back(std::make_unique<Nbdkit>(d, std::move(args)));
    servers_.back()->start();
    return *servers_.back();
  }

  fs::path dir_;
  std::vector<std::unique_ptr<Nbdkit>> servers_;
};

// The bytes each thread owns, and what they must read back as; -1: unknown
// (after a trim, which NBD leaves unspecified).
struct Region {
  uint64_t base;
  std::vector<int> model;
};

// Random writes, reads (checked), flushes, trims and write-zeroes, every
// thread on its own region of `h`'s disk, until `ops` each or `stop`.
// Returns the first failure, or an empty string; with `models`, leaves
// each thread's region there.
std::string run_model(BlockHandle& h, unsigned threads, unsigned ops,
                      uint64_t region_bytes, const std::atomic<bool>* stop = nullptr,
                      std::atomic<uint64_t>* done_ops = nullptr,
                      std::vector<Region>* models = nullptr) {
  std::vector<std::string> errors(threads);
  std::vector<std::thread> ts;
  std::vector<Region> regions(threads);
  for (unsigned t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      Region& r = regions[t];
      r = Region{t * region_bytes, std::vector<int>(region_bytes, 0)};
      std::mt19937_64 rng(1234 + t);
      std::vector<std::byte> buf;
      for (unsigned i = 0; i < ops && !(stop && stop->load()); ++i) {
        const uint64_t blocks = region_bytes / 4096;
        const uint64_t off = (rng() % blocks) * 4096;
        const uint64_t len =
            std::min<uint64_t>((1 + rng() % 16) * 4096, region_bytes - off);
        const unsigned kind = rng() % 100;
        Status s = Status::kOk;
        std::string what;
        if (kind < 40) {
          buf.resize(len);
          const uint8_t seed = static_cast<uint8_t>(rng());
          for (uint64_t k = 0; k < len; ++k) buf[k] = std::byte(seed + k * 7);
          s = h.pwrite(buf.data(), len, r.base + off);
          for (uint64_t k = 0; k < len; ++k) r.model[off + k] = uint8_t(seed + k * 7);
          what = "write";
        } else if (kind < 80) {
          buf.resize(len);
          s = h.pread(buf.data(), len, r.base + off);
          what = "read";
          for (uint64_t k = 0; ok(s) && k < len; ++k) {
            const int want = r.model[off + k];
            if (want >= 0 && std::to_integer<int>(buf[k]) != want) {
              errors[t] = "thread " + std::to_string(t) + ": byte " +
                          std::to_string(r.base + off + k) + " reads " +
                          std::to_string(std::to_integer<int>(buf[k])) + ", wrote " +
                          std::to_string(want);
              return;
            }
          }
        } else if (kind < 86) {
          s = h.flush();
          what = "flush";
        } else if (kind < 93) {
          s = h.discard(r.base + off, len);
          std::fill_n(r.model.begin() + off, len, -1);
          what = "discard";
        } else if (h.disk().limits().max_write_zeroes_sectors == 0) {
          // A dm mirror has no write-zeroes: zeroes written.
          buf.assign(len, std::byte{0});
          s = h.pwrite(buf.data(), len, r.base + off);
          std::fill_n(r.model.begin() + off, len, 0);
          what = "write";
        } else {
          s = h.write_zeroes(r.base + off, len);
          std::fill_n(r.model.begin() + off, len, 0);
          what = "write-zeroes";
        }
        if (!ok(s)) {
          errors[t] = what + " failed: " + std::string(status_name(s));
          return;
        }
        if (done_ops) done_ops->fetch_add(1);
      }
    });
  }
  for (auto& th : ts) th.join();
  if (models) *models = std::move(regions);
  for (auto& e : errors) {
    if (!e.empty()) return e;
  }
  return {};
}

TEST_F(NbdDriverTest, ReferenceModelBioBased) {
  Nbdkit& s = server({"memory", "16M"});
  DiskRegistry reg;
  auto disk = reg.create("nbd:" + s.uri());
  EXPECT_EQ(disk->capacity() << kSectorShift, 16 * kMiB);
  EXPECT_TRUE(disk->limits().volatile_write_cache);
  EXPECT_TRUE(disk->limits().fua);
  BlockHandle h(disk);
  EXPECT_EQ(run_model(h, 4, 400, 4 * kMiB), "");
}

TEST_F(NbdDriverTest, ReferenceModelMultiQueueTwoConnections) {
  Nbdkit& s = server({"memory", "16M"});
  DiskRegistry reg;
  auto disk = reg.create("nbd:" + s.uri() + ",connections=2,queue_mode=mq,hw_queues=2");
  EXPECT_TRUE(Contains(disk->describe(), "connections=2/2 up=2"));
  BlockHandle h(disk);
  EXPECT_EQ(run_model(h, 4, 400, 4 * kMiB), "");
}

// Without multi-conn a flush would cover one connection's writes only:
// the driver keeps to one and says so.
TEST_F(NbdDriverTest, OneConnectionWithoutMultiConn) {
  Nbdkit& s = server({"--filter=multi-conn", "memory", "16M", "multi-conn-mode=disable"});
  DiskRegistry reg;
  auto disk = reg.create("nbd:" + s.uri() + ",connections=4");
  EXPECT_TRUE(Contains(disk->describe(), "connections=1/4 up=1 (no multi-conn)"));
}

// Many requests in flight: 16 reads behind a 300 ms delay take about one
// delay, not sixteen.
TEST_F(NbdDriverTest, ManyInFlightBehindDelayFilter) {
  Nbdkit& s = server({"--filter=delay", "memory", "16M", "rdelay=300ms"});
  DiskRegistry reg;
  BlockHandle h(reg.create("nbd:" + s.uri()));
  const auto t0 = Clock::now();
  std::vector<std::thread> ts;
  std::atomic<int> good{0};
  for (int i = 0; i < 16; ++i) {
    ts.emplace_back([&, i] {
      std::vector<std::byte> b(4096);
      if (ok(h.pread(b.data(), b.size(), i * 4096))) good.fetch_add(1);
    });
  }
  for (auto& t : ts) t.join();
  const auto took = Clock::now() - t0;
  EXPECT_EQ(good.load(), 16);
  EXPECT_GE(took, std::chrono::milliseconds(300));
  EXPECT_LT(took, std::chrono::milliseconds(2500));
}

// A slow read in flight holds nothing else up: writes answered meanwhile
// go out and complete at once. (Reading for more replies on a socket with
// none left parks libnbd outside READY, where a new command is queued
// until the next reply comes: here, the slow read's.)
TEST_F(NbdDriverTest, SlowReadDoesNotHoldUpLaterWrites) {
  Nbdkit& s = server({"--filter=delay", "memory", "16M", "rdelay=2"});
  DiskRegistry reg;
  BlockHandle h(reg.create("nbd:" + s.uri() + ",partscan=0"));
  std::atomic<bool> read_done{false};
  std::thread reader([&] {
    std::vector<std::byte> b(4096);
    EXPECT_EQ(h.pread(b.data(), b.size(), 0), Status::kOk);
    read_done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the read is out
  std::vector<std::byte> w(4096, std::byte{5});
  const auto t0 = Clock::now();
  for (int i = 0; i < 8; ++i)
    ASSERT_EQ(h.pwrite(w.data(), w.size(), (i + 1) * 4096), Status::kOk);
  EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(1000));
  EXPECT_FALSE(read_done.load());
  reader.join();
}

// The server's errors reach the caller with their meaning: EIO as
// kIoError, ENOSPC as kNoSpace; the other operations go on working.
TEST_F(NbdDriverTest, ServerErrorsBecomeStatuses) {
  Nbdkit& eio = server(
      {"--filter=error", "memory", "16M", "error-pread=EIO", "error-pread-rate=100%"});
  Nbdkit& nospc = server({"--filter=error", "memory", "16M", "error-pwrite=ENOSPC",
                          "error-pwrite-rate=100%"});
  DiskRegistry reg;
  BlockHandle a(reg.create("nbd:" + eio.uri()));
  BlockHandle b(reg.create("nbd:" + nospc.uri()));
  std::vector<std::byte> buf(8192, std::byte{1});
  EXPECT_EQ(a.pread(buf.data(), buf.size(), 0), Status::kIoError);
  EXPECT_EQ(a.pwrite(buf.data(), buf.size(), 0), Status::kOk);
  EXPECT_EQ(b.pwrite(buf.data(), buf.size(), 0), Status::kNoSpace);
  EXPECT_EQ(b.pread(buf.data(), buf.size(), 0), Status::kOk);
}

// A bio of scattered segments (one NBD command each, straight from its
// memory) with PREFLUSH and FUA: the flush first, then the data with FUA.
// (nbdkit 1.32's fua filter refuses fuamode=none, so the emulated FUA of
// a server without it, a flush after the write, is not tested here.)
TEST_F(NbdDriverTest, ScatteredSegmentsWithPreflushAndFua) {
  Nbdkit& s = server({"memory", "16M"});
  DiskRegistry reg;
  auto disk = reg.create("nbd:" + s.uri());
  EXPECT_TRUE(disk->limits().fua);
  std::vector<std::byte> a(4096, std::byte{1}), b(512, std::byte{2}),
      c(3584, std::byte{3});
  Segment segs[] = {{a.data(), 4096}, {b.data(), 512}, {c.data(), 3584}};
  Bio bio;
  Completion done;
  bio.init(
      disk.get(), Op::kWrite, 16, segs,
      [](Bio& b) { static_cast<Completion*>(b.context())->complete(); }, &done);
  bio.set_flags(BioFlag::kPreflush | BioFlag::kFua);
  submit_bio(bio);
  done.wait();
  EXPECT_EQ(bio.status(), Status::kOk);
  std::vector<std::byte> back(8192);
  BlockHandle h(disk);
  ASSERT_EQ(h.pread(back.data(), back.size(), 16 * 512), Status::kOk);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), back.begin()));
  EXPECT_TRUE(std::equal(b.begin(), b.end(), back.begin() + 4096));
  EXPECT_TRUE(std::equal(c.begin(), c.end(), back.begin() + 4608));
}

// Block status (base:allocation) is the disk's extent_at: written data is
// allocated, the rest of nbdkit's sparse memory is a hole reading zeroes.
TEST_F(NbdDriverTest, BlockStatusGivesHoles) {
  Nbdkit& s = server({"memory", "16M"});
  DiskRegistry reg;
  auto disk = reg.create("nbd:" + s.uri());
  BlockHandle h(disk);
  std::vector<std::byte> buf(64 * 1024, std::byte{7});
  ASSERT_EQ(h.pwrite(buf.data(), buf.size(), 0), Status::kOk);
  const Extent data = disk->extent_at(0, 16 * kMiB);
  EXPECT_TRUE(data.allocated);
  EXPECT_GE(data.length, buf.size());
  const Extent hole = disk->extent_at(8 * kMiB, 16 * kMiB);
  EXPECT_FALSE(hole.allocated);
  EXPECT_TRUE(hole.zero);
  EXPECT_GT(hole.length, 0u);
}

// The server's block sizes become the limits: minimum -> logical block,
// preferred -> physical block, maximum -> largest I/O.
TEST_F(NbdDriverTest, BlockSizesBecomeLimits) {
  Nbdkit& s =
      server({"--filter=blocksize-policy", "memory", "16M", "blocksize-minimum=4096",
              "blocksize-preferred=65536", "blocksize-maximum=1M"});
  DiskRegistry reg;
  auto disk = reg.create("nbd:" + s.uri());
  EXPECT_EQ(disk->limits().logical_block_size, 4096u);
  EXPECT_EQ(disk->limits().physical_block_size, 65536u);
  EXPECT_EQ(disk->limits().max_io_sectors(), (1 * kMiB) >> kSectorShift);
  // A 4 MiB write is cut to the server's maximum and still lands whole.
  BlockHandle h(disk);
  std::vector<std::byte> w(4 * kMiB), r(4 * kMiB);
  for (size_t i = 0; i < w.size(); ++i) w[i] = std::byte(i * 13 + (i >> 12));
  ASSERT_EQ(h.pwrite(w.data(), w.size(), 4 * kMiB), Status::kOk);
  ASSERT_EQ(h.pread(r.data(), r.size(), 4 * kMiB), Status::kOk);
  EXPECT_EQ(w, r);
}

TEST_F(NbdDriverTest, UnreachableServerFailsClearlyAndFast) {
  DiskRegistry reg;
  const std::string missing = (dir_ / "nobody.sock").string();
  const auto t0 = Clock::now();
  const std::string e =
      ErrorOf([&] { reg.create("nbd:nbd+unix:///?socket=" + missing); });
  EXPECT_TRUE(Contains(e, "cannot open")) << e;
  EXPECT_TRUE(Contains(e, missing)) << e;
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2));
}

// A server that accepts and never speaks: the open gives up at
// connect_timeout.
TEST_F(NbdDriverTest, SilentServerTimesOut) {
  const std::string path = (dir_ / "silent.sock").string();
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(fd, 4), 0);
  DiskRegistry reg;
  const auto t0 = Clock::now();
  const std::string e = ErrorOf(
      [&] { reg.create("nbd:nbd+unix:///?socket=" + path + ",connect_timeout=300ms"); });
  const auto took = Clock::now() - t0;
  close(fd);
  EXPECT_TRUE(Contains(e, "connect timeout")) << e;
  EXPECT_GE(took, std::chrono::milliseconds(250));
  EXPECT_LT(took, std::chrono::seconds(2));
}

TEST_F(NbdDriverTest, MissingExportIsRefused) {
  Nbdkit& s = server({"--filter=exportname", "memory", "16M", "exportname=disk",
                      "exportname-strict=true"});
  DiskRegistry reg;
  EXPECT_NE(reg.create("nbd:" + s.uri("disk")), nullptr);
  const std::string e = ErrorOf([&] { reg.create("nbd:" + s.uri("nosuch")); });
  EXPECT_TRUE(Contains(e, "cannot open")) << e;
}

// The server is killed and started again (on the same file: the file
// plugin keeps what was written) under a workload from four threads: with
// the retry policy every operation completes, once, and the data verifies.
TEST_F(NbdDriverTest, ServerRestartRetriedAndVerified) {
  const fs::path img = dir_ / "img";
  { std::ofstream(img).close(); }
  fs::resize_file(img, 16 * kMiB);
  Nbdkit& s = server({"file", img.string()});
  DiskRegistry reg;
  auto disk = reg.create("nbd:" + s.uri() + ",dead_conn_timeout=20");
  BlockHandle h(disk);
  std::atomic<uint64_t> done{0};
  std::string result;
  std::thread work([&] { result = run_model(h, 4, 400, 4 * kMiB, nullptr, &done); });
  // Kill it while I/O is in flight, leave it dead a while, start it again.
  while (done.load() < 100) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  s.kill();
  const uint64_t at_kill = done.load();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_LE(done.load(), at_kill + 4);  // nothing completes without a server
  s.start();
  work.join();
  EXPECT_EQ(result, "");
  EXPECT_EQ(done.load(), 4u * 400);
  EXPECT_TRUE(Contains(disk->describe(), "reconnects=1")) << disk->describe();
}

// dead_conn_timeout=0: I/O fails at once with kTransport while the server
// is gone, and works again once it is back.
TEST_F(NbdDriverTest, ServerDeathFailsAtOnceWithZeroTimeout) {
  const fs::path img = dir_ / "img";
  { std::ofstream(img).close(); }
  fs::resize_file(img, 16 * kMiB);
  Nbdkit& s = server({"file", img.string()});
  DiskRegistry reg;
  auto disk = reg.create("nbd:" + s.uri() + ",dead_conn_timeout=0");
  BlockHandle h(disk);
  std::vector<std::byte> buf(4096, std::byte{5});
  ASSERT_EQ(h.pwrite(buf.data(), buf.size(), 0), Status::kOk);
  s.kill();
  const auto t0 = Clock::now();
  Status st = Status::kOk;
  // The first may still find the old connection open; soon all fail.
  for (int i = 0; i < 100 && ok(st); ++i) {
    st = h.pread(buf.data(), buf.size(), 0);
    if (ok(st)) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(st, Status::kTransport);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2));
  EXPECT_TRUE(Contains(disk->describe(), "up=0")) << disk->describe();
  s.start();
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    st = h.pread(buf.data(), buf.size(), 0);
  } while (!ok(st) && Clock::now() < deadline);
  EXPECT_EQ(st, Status::kOk);
  EXPECT_EQ(buf[0], std::byte{5});
}

// Removing the disk while its server is away does not wait out
// dead_conn_timeout: the I/O waiting for a reconnect fails at once
// (kOffline), as the disk goes.
TEST_F(NbdDriverTest, RemovalWhileServerGoneFailsWaitingIo) {
  Nbdkit& s = server({"memory", "16M"});
  for (const std::string mode : {"bio", "mq"}) {
    SCOPED_TRACE(mode);
    DiskRegistry reg;
    auto disk = reg.create("nbd:" + s.uri() +
                           ",name=gone,dead_conn_timeout=20,queue_mode=" + mode);
    {
      BlockHandle h(disk);
      std::vector<std::byte> buf(4096);
      ASSERT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOk);
    }
    s.kill();
    Status st = Status::kOk;
    std::thread reader([&st, d = disk] {
      BlockHandle h(d);
      std::vector<std::byte> b(4096);
      st = h.pread(b.data(), b.size(), 0);
    });
    // Let the read reach the driver and wait there for the server.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    disk.reset();
    const auto t0 = Clock::now();
    reg.remove("gone");
    EXPECT_LT(Clock::now() - t0, std::chrono::seconds(3));
    reader.join();
    EXPECT_EQ(st, Status::kOffline);
    s.start();
  }
}

// A server that comes back offering less than the disk was set up with is
// refused: without multi-conn a flush on one connection would no longer
// cover the writes of the other (durability lost in silence), and a
// read-only server would fail every write of a writable disk. I/O keeps
// waiting, then fails by dead_conn_timeout, as if the server were gone.
TEST_F(NbdDriverTest, ReconnectRefusesServerOfferingLess) {
  const fs::path img = dir_ / "img";
  { std::ofstream(img).close(); }
  fs::resize_file(img, 16 * kMiB);
  Nbdkit& s = server({"file", img.string()});
  DiskRegistry reg;
  auto disk = reg.create("nbd:" + s.uri() + ",connections=2,dead_conn_timeout=1");
  ASSERT_TRUE(Contains(disk->describe(), "connections=2/2 up=2")) << disk->describe();
  BlockHandle h(disk);
  std::vector<std::byte> buf(4096, std::byte{7});
  ASSERT_EQ(h.pwrite(buf.data(), buf.size(), 0), Status::kOk);
  for (const auto& args :
       {std::vector<std::string>{"--filter=multi-conn", "file", img.string(),
                                 "multi-conn-mode=disable"},
        std::vector<std::string>{"-r", "file", img.string()}}) {
    s.kill();
    s.set_args(args);
    s.start();
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    Status st = Status::kOk;
    // The first may still find an old connection open; then all fail.
    while (ok(st) && Clock::now() < deadline) {
      st = h.pwrite(buf.data(), buf.size(), 0);
      if (ok(st)) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_EQ(st, Status::kTransport) << args[0];
    EXPECT_FALSE(Contains(disk->describe(), "reconnects=")) << disk->describe();
    EXPECT_TRUE(Contains(disk->describe(), "up=0")) << disk->describe();
  }
  // The same server as before is taken back.
  s.kill();
  s.set_args({"file", img.string()});
  s.start();
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  Status st;
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    st = h.pread(buf.data(), buf.size(), 0);
  } while (!ok(st) && Clock::now() < deadline);
  EXPECT_EQ(st, Status::kOk);
  EXPECT_EQ(buf[0], std::byte{7});
}

// Large writes, split by the block layer to the server's largest I/O, and
// many commands in flight at once land whole: 1 MiB and 32 MiB (the
// default largest) on one server, 4 MiB + 4 KiB on one that takes 1 MiB
// at most, and 64 writers at once, each read back.
TEST_F(NbdDriverTest, LargeWritesAndDeepQueuesVerify) {
  Nbdkit& big = server({"memory", "64M"});
  Nbdkit& small =
      server({"--filter=blocksize-policy", "memory", "64M", "blocksize-maximum=1M"});
  for (Nbdkit* s : {&big, &small}) {
    DiskRegistry reg;
    BlockHandle h(reg.create("nbd:" + s->uri()));
    const std::vector<uint64_t> lens =
        s == &big ? std::vector{1 * kMiB, 32 * kMiB} : std::vector{4 * kMiB + 4096};
    for (const uint64_t len : lens) {
      std::vector<std::byte> w(len), r(len);
      for (size_t i = 0; i < len; ++i) w[i] = std::byte(i * 31 + (i >> 12) + len);
      const auto t0 = Clock::now();
      ASSERT_EQ(h.pwrite(w.data(), len, 4096), Status::kOk) << len;
      ASSERT_EQ(h.pread(r.data(), len, 4096), Status::kOk) << len;
      EXPECT_TRUE(w == r) << len;
      // A write whose sending stalls behind a read of no reply (waiting
      // out poll timeouts) takes a second a piece: far longer than this.
      EXPECT_LT(Clock::now() - t0, std::chrono::seconds(10)) << len;
    }
    std::vector<std::thread> ts;
    std::atomic<int> good{0};
    for (int t = 0; t < 64; ++t) {
      ts.emplace_back([&, t] {
        const uint64_t off = t * 64 * 1024;
        std::vector<std::byte> w(64 * 1024, std::byte(t + 1)), r(w.size());
        if (ok(h.pwrite(w.data(), w.size(), off)) &&
            ok(h.pread(r.data(), r.size(), off)) && r == w)
          good.fetch_add(1);
      });
    }
    for (auto& t : ts) t.join();
    EXPECT_EQ(good.load(), 64);
  }
}

// A server that stays connected and never answers (nbdkit's delay filter,
// 100 s per read; partscan=0: no read at open): at `timeout=` the
// connection counts as dead. With
// dead_conn_timeout=0 the read fails at once; with 1 s it is sent again
// on a new connection, times out again, and fails once the connection has
// been without an answer for dead_conn_timeout. Either way: once.
TEST_F(NbdDriverTest, StuckServerTimesOutAndFailsByPolicy) {
  Nbdkit& s = server({"--filter=delay", "memory", "16M", "rdelay=100"});
  for (const std::string dead : {"0", "1"}) {
    SCOPED_TRACE(dead);
    DiskRegistry reg;
    auto disk = reg.create("nbd:" + s.uri() +
                           ",partscan=0,timeout=300ms,dead_conn_timeout=" + dead);
    BlockHandle h(disk);
    std::vector<std::byte> buf(4096, std::byte{3});
    ASSERT_EQ(h.pwrite(buf.data(), buf.size(), 0), Status::kOk);  // writes answer
    const auto t0 = Clock::now();
    EXPECT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kTransport);
    const auto took = Clock::now() - t0;
    EXPECT_GE(took, std::chrono::milliseconds(300));
    EXPECT_LT(took, std::chrono::seconds(dead == "0" ? 2 : 4));
    EXPECT_TRUE(Contains(disk->describe(), "timed out")) << disk->describe();
  }
}

// The stuck server's socket is taken over by a good one (the same file):
// the timed-out read goes out again on a new connection and succeeds.
TEST_F(NbdDriverTest, TimedOutIoIsRetriedOnANewConnection) {
  const fs::path img = dir_ / "img";
  { std::ofstream(img).close(); }
  fs::resize_file(img, 16 * kMiB);
  Nbdkit& stuck = server({"--filter=delay", "file", img.string(), "rdelay=100"});
  DiskRegistry reg;
  auto disk =
      reg.create("nbd:" + stuck.uri() + ",partscan=0,timeout=300ms,dead_conn_timeout=20");
  BlockHandle h(disk);
  std::vector<std::byte> w(64 * 1024), r(w.size());
  for (size_t i = 0; i < w.size(); ++i) w[i] = std::byte(i * 7 + 1);
  ASSERT_EQ(h.pwrite(w.data(), w.size(), 0), Status::kOk);
  // A second nbdkit on the same socket path (the stuck one keeps serving
  // the connection it has): reconnecting finds the good one.
  servers_.push_back(std::make_unique<Nbdkit>(
      dir_ / "0", std::vector<std::string>{"file", img.string()}));
  servers_.back()->start();
  const auto t0 = Clock::now();
  ASSERT_EQ(h.pread(r.data(), r.size(), 0), Status::kOk);
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(300));
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(3));
  EXPECT_TRUE(w == r);
  EXPECT_TRUE(Contains(disk->describe(), "reconnects=1")) << disk->describe();
}

// A timeout that ended in failure (dead_conn_timeout) and a reconnect
// with nothing to send again must not shorten the next outage: when that
// server later goes away, a read waits dead_conn_timeout for it as usual
// and succeeds once a good server is back.
TEST_F(NbdDriverTest, PastTimeoutDoesNotShortenLaterOutage) {
  const fs::path img = dir_ / "img";
  { std::ofstream(img).close(); }
  fs::resize_file(img, 16 * kMiB);
  Nbdkit& s = server({"--filter=delay", "file", img.string(), "rdelay=100"});
  DiskRegistry reg;
  auto disk =
      reg.create("nbd:" + s.uri() + ",partscan=0,timeout=300ms,dead_conn_timeout=2");
  BlockHandle h(disk);
  std::vector<std::byte> buf(4096, std::byte{9});
  ASSERT_EQ(h.pwrite(buf.data(), buf.size(), 0), Status::kOk);
  ASSERT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kTransport);  // timed out
  auto wait_for = [&](const char* what) {
    const auto until = Clock::now() + std::chrono::seconds(10);
    while (!Contains(disk->describe(), what)) {
      ASSERT_LT(Clock::now(), until) << disk->describe();
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  };
  wait_for("up=1");  // reconnected to the stuck server, nothing to resend
  s.kill();
  wait_for("up=0");
  // The read waits for the server, started here: nbdkit's
  // --exit-with-parent follows the thread that started it.
  Status got = Status::kInvalid;
  std::thread reader([&] { got = h.pread(buf.data(), buf.size(), 0); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  s.set_args({"file", img.string()});
  s.start();
  reader.join();
  EXPECT_EQ(got, Status::kOk) << disk->describe();
  EXPECT_EQ(buf[0], std::byte{9});
}

// A dm mirror (src/dm/targets/mirror.cc, handle_errors) over two nbd
// devices: one server is killed under a verified workload from four
// threads; I/O goes on, the leg is taken out (an event, its health letter);
// the server comes back, the table is loaded again (how the mirror target
// brings a leg back) and the leg resynchronised: both servers' files then
// hold what the model says.
TEST_F(NbdDriverTest, MirrorOverTwoServersSurvivesOne) {
  const fs::path img0 = dir_ / "img0", img1 = dir_ / "img1";
  for (const auto& p : {img0, img1}) {
    std::ofstream(p).close();
    fs::resize_file(p, 8 * kMiB);
  }
  Nbdkit& s0 = server({"file", img0.string()});
  Nbdkit& s1 = server({"file", img1.string()});
  DiskRegistry reg;
  reg.create("nbd:" + s0.uri() + ",name=leg0,dead_conn_timeout=0");
  auto leg1 = reg.create("nbd:" + s1.uri() + ",name=leg1,dead_conn_timeout=0");
  const std::string table = "0 16384 mirror core 1 1024 2 leg0 0 leg1 0 1 handle_errors";
  MappedDevice& md = MappedDevice::create(reg, "mi", "", table);
  auto wait_in_sync = [&] {
    const auto until = Clock::now() + std::chrono::seconds(10);
    while (!Contains(md.status_text(), " 16/16 ")) {
      ASSERT_LT(Clock::now(), until) << md.status_text();
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  };
  wait_in_sync();
  const uint32_t ev = md.event_nr();

  std::vector<Region> models;
  std::atomic<uint64_t> done{0};
  std::string result;
  {
    BlockHandle h = BlockHandle::open(reg, "mi");
    std::atomic<bool> finished{false};
    std::thread work([&] {
      result = run_model(h, 4, 300, 2 * kMiB, nullptr, &done, &models);
      finished = true;
    });
    // Killed mid-workload; `result` is the worker's until it has finished.
    const auto kill_by = Clock::now() + std::chrono::seconds(10);
    while (done.load() < 150 && !finished.load() && Clock::now() < kill_by)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    s1.kill();
    work.join();
  }
  EXPECT_EQ(result, "");
  EXPECT_EQ(done.load(), 4u * 300);
  EXPECT_GT(md.event_nr(), ev);
  const std::string st = md.status_text();
  EXPECT_TRUE(Contains(st, " AD 1 core") || Contains(st, " AR 1 core")) << st;

  // Back: the nbd device reconnects on its own; the table loaded again
  // (the good leg first, the source) copies leg0 to leg1.
  s1.start();
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (!Contains(leg1->describe(), "up=1")) {
    ASSERT_LT(Clock::now(), until) << leg1->describe();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  md.load(table);
  md.suspend();
  md.resume();
  wait_in_sync();
  EXPECT_TRUE(Contains(md.status_text(), " AA 1 core")) << md.status_text();

  auto slurp = [](const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(f), {});
  };
  const std::vector<char> a = slurp(img0), b = slurp(img1);
  ASSERT_EQ(a.size(), 8 * kMiB);
  EXPECT_TRUE(a == b);
  size_t wrong = 0;
  for (const Region& r : models)
    for (size_t k = 0; k < r.model.size(); ++k)
      wrong += r.model[k] >= 0 && static_cast<uint8_t>(a[r.base + k]) != r.model[k];
  EXPECT_EQ(wrong, 0u);
}

}  // namespace
}  // namespace blkstack
