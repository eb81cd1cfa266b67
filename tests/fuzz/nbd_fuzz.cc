// Fuzzes the NBD server's parsing end to end: arbitrary bytes from a
// "client" go through a real Connection (handshake, then the transmission
// phase with its request parser, payload handling and replies) over a
// socketpair, against a small RAM disk. The same bytes also go through a
// bare Handshake one byte at a time. Any input must end with the
// connection closed and no I/O in flight; a crash, a hang, a sanitizer
// report or a broken invariant (__builtin_trap) is a bug.
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "export/export_table.h"
#include "export/log.h"
#include "export/nbd/connection.h"
#include "export/nbd/handshake.h"

namespace {

using namespace blkstack;
using namespace blkstack::nbd;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

// Everything runs on the fuzzer's thread; RAM disks complete inline, so
// post() is never needed, but a late completion would still be handled.
class InlineReactor final : public Reactor {
 public:
  bool on_reactor_thread() const override { return true; }
  void post(RequestSlot* s) override {
    std::lock_guard lock(mu_);
    posted_.push_back(s);
  }
  void drain() {
    std::vector<RequestSlot*> v;
    {
      std::lock_guard lock(mu_);
      v.swap(posted_);
    }
    for (RequestSlot* s : v) s->conn->complete(s);
  }

 private:
  std::mutex mu_;
  std::vector<RequestSlot*> posted_;
};

struct World {
  DiskRegistry registry;
  std::shared_ptr<const ExportTable> exports;
  World() {
    set_serve_log_enabled(false);
    exports = std::make_shared<const ExportTable>(std::vector<Export>{
        {"disk", "fuzz", registry.create("ram:1M,name=fz0")},
        {"ro", "", registry.create("ram:64K,name=fz1,ro=1,bs=4096")}});
  }
};

void drain_client(int fd) {
  char buf[65536];
  while (::recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World world;

  // 1. The handshake alone, a byte at a time.
  {
    Handshake hs(world.exports);
    size_t used = 0;
    while (used < size && !hs.done() && !hs.closed()) {
      const size_t n = hs.feed({reinterpret_cast<const std::byte*>(data + used), 1});
      check(n <= 1);
      if (n == 0) break;
      used += n;
    }
    check(hs.output().size() < (size_t{64} << 20));
  }

  // 2. A real connection over a socketpair.
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 0;
  InlineReactor reactor;
  ConnectionLimits limits;
  limits.max_bytes_in_flight = 4u << 20;
  limits.max_requests = 64;
  auto conn = std::make_unique<Connection>(sv[0], world.exports, reactor, limits);
  size_t off = 0;
  bool shut = false;
  for (int step = 0; step < 100000 && !conn->finished(); ++step) {
    if (off < size) {
      const ssize_t n = ::send(sv[1], data + off, std::min<size_t>(size - off, 8192),
                               MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) off += static_cast<size_t>(n);
    } else if (!shut) {
      ::shutdown(sv[1], SHUT_WR);
      shut = true;
    }
    reactor.drain();
    conn->run();
    drain_client(sv[1]);
    if (shut && !conn->wants_read() && !conn->wants_write() && !conn->wants_rerun())
      break;
  }
  // Whatever state it is in, a forced shutdown must leave nothing in flight.
  conn->begin_shutdown(/*force=*/true);
  reactor.drain();
  conn->run();
  check(conn->finished());
  conn.reset();  // closes sv[0]
  ::close(sv[1]);
  return 0;
}
