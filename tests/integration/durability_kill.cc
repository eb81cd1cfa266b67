// durability_kill: the kill harness. `blkstack serve` exports a file disk
// over NBD (clients on libnbd's C API) or FUSE (clients with pwrite,
// RWF_DSYNC and fdatasync on the mounted file); four client threads write
// stamped sectors (durability_model.h), a fifth of them FUA, with flushes
// in between, and record what was acknowledged; the server is SIGKILLed at
// a random moment, restarted on the same file, and the whole device is
// read back through it and checked: every acknowledged write is there
// (the file driver's completed writes are in the host's page cache, which
// outlives the server; those acknowledged as durable a fortiori), and every
// sector holds one whole version. Last, a ram disk's flushed write is gone
// after a kill: its bytes lived in the server.
//
//   durability_kill BLKSTACK nbd|fuse KILLS [SEED]
//
// Prints one RESULT line (kills, writes, FUA, flushes, time, seed); exits 0
// if every check passed. BLKSTACK_SEED overrides SEED. FUSE needs root.
#include <fcntl.h>
#include <libnbd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "durability_model.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using blkstack::durability::DurabilityModel;
using blkstack::durability::kSector;
using namespace std::chrono_literals;

constexpr uint64_t kDiskBytes = 8 << 20;
constexpr uint64_t kSectors = kDiskBytes / kSector;
constexpr unsigned kThreads = 4;
constexpr uint64_t kSectorsPerThread = kSectors / kThreads;
constexpr unsigned kMaxWriteSectors = 64;

// What die() cleans up: the server, the FUSE mount, the directory.
std::atomic<pid_t> g_server_pid{-1};
fs::path g_dir;
bool g_fuse = false;

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "durability_kill: %s\n", why.c_str());
  if (const pid_t pid = g_server_pid.exchange(-1); pid > 0) {
    ::kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  if (!g_dir.empty()) {
    if (g_fuse) umount2((g_dir / "mnt").c_str(), MNT_DETACH);
    std::error_code ec;
    fs::remove_all(g_dir, ec);
  }
  std::_Exit(1);
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One `blkstack serve` process.
class Server {
 public:
  Server(std::string blkstack, bool fuse, fs::path dir, std::string spec)
      : blkstack_(std::move(blkstack)),
        fuse_(fuse),
        dir_(std::move(dir)),
        spec_(std::move(spec)) {}
  ~Server() { kill(); }

  std::string socket() const { return (dir_ / "nbd.sock").string(); }
  std::string mounted_file() const { return (dir_ / "mnt" / "disk").string(); }

  void start() {
    const fs::path pidfile = dir_ / "serve.pid";
    fs::remove(pidfile);
    std::vector<std::string> argv = {blkstack_, "serve", "--pidfile", pidfile.string()};
    if (fuse_) {
      argv.insert(argv.end(), {"--fuse", (dir_ / "mnt").string()});
    } else {
      fs::remove(socket());
      argv.insert(argv.end(), {"--socket", socket()});
    }
    argv.insert(argv.end(), {"--export", "disk=" + spec_});
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    const std::string log = (dir_ / "serve.log").string();
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    const int rc = posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) die("cannot run " + blkstack_ + ": " + std::strerror(rc));
    g_server_pid.store(pid_);
    const auto deadline = std::chrono::steady_clock::now() + 15s;
    while (std::chrono::steady_clock::now() < deadline) {
      const std::string content = slurp(pidfile);
      if (!content.empty() && std::stol(content) == pid_) return;
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        g_server_pid.store(-1);
        die("the server exited before it was ready:\n" + slurp(log));
      }
      std::this_thread::sleep_for(5ms);
    }
    die("the server was not ready within 15 s:\n" + slurp(log));
  }

  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
    g_server_pid.store(-1);
  }

  // SIGTERM: must exit 0.
  void stop() {
    ::kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    g_server_pid.store(-1);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      die("the server did not exit 0 after SIGTERM:\n" + slurp(dir_ / "serve.log"));
  }

 private:
  std::string blkstack_;
  bool fuse_;
  fs::path dir_;
  std::string spec_;
  pid_t pid_ = -1;
};

// A client connection: NBD (a libnbd handle) or FUSE (a descriptor on the
// mounted file). Every call returns false once the server is gone.
class Client {
 public:
  Client(const Server& s, bool fuse) {
    if (fuse) {
      fd_ = open(s.mounted_file().c_str(), O_RDWR | O_CLOEXEC);
      ok_ = fd_ >= 0;
      return;
    }
    nbd_ = nbd_create();
    ok_ = nbd_ && nbd_connect_unix(nbd_, s.socket().c_str()) == 0;
  }
  ~Client() {
    if (nbd_) nbd_close(nbd_);
    if (fd_ >= 0) close(fd_);
  }
  bool ok() const { return ok_; }
  std::string error() const {
    return nbd_ ? (nbd_get_error() ? nbd_get_error() : "?") : std::strerror(errno);
  }

  bool write(const void* buf, size_t len, uint64_t off, bool fua) {
    if (nbd_) return nbd_pwrite(nbd_, buf, len, off, fua ? LIBNBD_CMD_FLAG_FUA : 0) == 0;
    iovec v{const_cast<void*>(buf), len};
    return pwritev2(fd_, &v, 1, static_cast<off_t>(off), fua ? RWF_DSYNC : 0) ==
           static_cast<ssize_t>(len);
  }
  bool flush() { return nbd_ ? nbd_flush(nbd_, 0) == 0 : fdatasync(fd_) == 0; }
  bool read(void* buf, size_t len, uint64_t off) {
    if (nbd_) return nbd_pread(nbd_, buf, len, off, 0) == 0;
    return pread(fd_, buf, len, static_cast<off_t>(off)) == static_cast<ssize_t>(len);
  }

 private:
  nbd_handle* nbd_ = nullptr;
  int fd_ = -1;
  bool ok_ = false;
};

struct Totals {
  std::atomic<uint64_t> writes{0}, fua{0}, flushes{0};
};

// Until the server dies: writes and flushes on the thread's
// own sectors, recorded in the model.
// A failure before `killed` is the server's fault, not the kill's.
void workload(const Server& s, bool fuse, unsigned index, uint64_t seed,
              DurabilityModel& model, Totals& t, const std::atomic<bool>& killed,
              std::atomic<unsigned>& connected) {
  Client c(s, fuse);
  if (!c.ok()) die("a client cannot connect: " + c.error());
  connected.fetch_add(1);  // the kill waits for every client to be in
  std::mt19937_64 rng(seed);
  std::vector<std::byte> buf(kMaxWriteSectors * kSector);
  const uint64_t base = index * kSectorsPerThread;
  const auto failed = [&](const char* what) {
    if (!killed.load()) die(std::string(what) + " failed before the kill: " + c.error());
  };
  for (;;) {
    if (rng() % 10 == 0) {
      const size_t covers = model.begin_flush();
      if (!c.flush()) return failed("a flush");
      model.flush_acked(covers);
      t.flushes.fetch_add(1);
      continue;
    }
    const uint64_t n = 1 + rng() % kMaxWriteSectors;
    const uint64_t first = base + rng() % (kSectorsPerThread - n + 1);
    const uint64_t id = model.begin_write(first, n);
    for (uint64_t i = 0; i < n; ++i)
      blkstack::durability::stamp(&buf[i * kSector], first + i, id);
    const bool fua = rng() % 5 == 0;
    if (!c.write(buf.data(), n * kSector, first * kSector, fua)) return failed("a write");
    model.write_acked(first, n, id, fua);
    t.writes.fetch_add(1);
    if (fua) t.fua.fetch_add(1);
  }
}

// Reads the whole device through the server and checks it.
void verify(const Server& s, bool fuse, DurabilityModel& model, unsigned kill) {
  std::vector<std::byte> image(kDiskBytes);
  Client c(s, fuse);
  if (!c.ok()) die("the verifier cannot connect: " + c.error());
  constexpr size_t kChunk = 1 << 20;
  for (uint64_t off = 0; off < kDiskBytes; off += kChunk)
    if (!c.read(&image[off], kChunk, off)) die("reading back failed: " + c.error());
  const std::string bad = model.check(image.data(), /*acked_is_floor=*/true);
  if (!bad.empty())
    die("after kill " + std::to_string(kill) + ", the device breaks the contract:\n" +
        bad);
  model.restart_from(image.data());
}

// A ram disk keeps nothing once its server is killed, flushed or not.
void ram_check(const std::string& blkstack, bool fuse, const fs::path& dir) {
  Server server(blkstack, fuse, dir, "ram:" + std::to_string(kDiskBytes));
  server.start();
  std::vector<std::byte> sector(kSector), back(kSector);
  blkstack::durability::stamp(sector.data(), 0, 1);
  {
    Client c(server, fuse);
    if (!c.ok() || !c.write(sector.data(), kSector, 0, true) || !c.flush())
      die("ram: writing failed: " + c.error());
  }
  server.kill();
  server.start();
  {
    Client c(server, fuse);
    if (!c.ok() || !c.read(back.data(), kSector, 0))
      die("ram: reading failed: " + c.error());
  }
  server.stop();
  if (blkstack::durability::stamp_id(back.data(), 0) != 0u)
    die("ram: a flushed write outlived the killed server");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || (std::string(argv[2]) != "nbd" && std::string(argv[2]) != "fuse")) {
    std::fprintf(stderr, "usage: %s BLKSTACK nbd|fuse KILLS [SEED]\n", argv[0]);
    return 2;
  }
  const std::string blkstack = fs::absolute(argv[1]).string();
  const bool fuse = std::string(argv[2]) == "fuse";
  const unsigned kills = static_cast<unsigned>(std::strtoul(argv[3], nullptr, 10));
  uint64_t seed = argc > 4 ? std::strtoull(argv[4], nullptr, 0) : std::random_device{}();
  if (const char* e = std::getenv("BLKSTACK_SEED"); e && *e)
    seed = std::strtoull(e, nullptr, 0);
  std::printf("durability_kill %s: %u kills, seed %llu\n", argv[2], kills,
              static_cast<unsigned long long>(seed));
  std::fflush(stdout);

  char tmpl[] = "/var/tmp/blkstack-durability-kill-XXXXXX";
  if (!mkdtemp(tmpl)) die("mkdtemp failed");
  const fs::path dir = tmpl;
  g_dir = dir;
  g_fuse = fuse;
  std::mt19937_64 rng(seed);
  DurabilityModel model(kSectors);
  Totals t;
  const auto start = std::chrono::steady_clock::now();
  {
    Server server(
        blkstack, fuse, dir,
        "file:" + (dir / "disk.img").string() + ",size=" + std::to_string(kDiskBytes));
    for (unsigned k = 0; k < kills; ++k) {
      server.start();
      verify(server, fuse, model, k);
      std::atomic<bool> killed{false};
      std::atomic<unsigned> connected{0};
      std::vector<std::thread> threads;
      for (unsigned i = 0; i < kThreads; ++i) {
        const uint64_t s = rng();
        threads.emplace_back(
            [&, i, s] { workload(server, fuse, i, s, model, t, killed, connected); });
      }
      while (connected.load() < kThreads) std::this_thread::sleep_for(1ms);
      // The kill comes 5 to 300 ms into the workload.
      std::this_thread::sleep_for(std::chrono::microseconds(5000 + rng() % 295000));
      killed.store(true);
      server.kill();
      for (auto& th : threads) th.join();
    }
    server.start();
    verify(server, fuse, model, kills);
    server.stop();
  }
  ram_check(blkstack, fuse, dir);
  if (fuse) umount2((dir / "mnt").c_str(), MNT_DETACH);
  fs::remove_all(dir);
  g_dir.clear();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "RESULT durability.kill_%s: %u kills, %llu writes (%llu FUA), %llu flushes, "
      "every acknowledged write intact, no torn sector; ram lost all; %.1f s, seed "
      "%llu\n",
      argv[2], kills, static_cast<unsigned long long>(t.writes.load()),
      static_cast<unsigned long long>(t.fua.load()),
      static_cast<unsigned long long>(t.flushes.load()), secs,
      static_cast<unsigned long long>(seed));
  return 0;
}
