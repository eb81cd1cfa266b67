// nbd: a disk on a remote NBD server, through libnbd (the kernel's
// drivers/block/nbd.c, in user space): `nbd:nbd://HOST[:PORT]/EXPORT` or
// `nbd:nbd+unix:///EXPORT?socket=PATH`, the URIs libnbd parses.
//
// Bio-based or multi-queue (queue_mode=). Every command goes to one of
// `connections=` connections (NbdConnection: a libnbd handle and its own
// event loop thread); more than one only when the server allows multi-conn,
// whose promise (a flush on any connection covers the writes completed on
// all of them) is what lets flushes go anywhere. The server's answers at
// the handshake become the disk: its size, read-only, flush and FUA (the
// write cache), trim and write-zeroes, its block sizes (the logical and
// physical block size and the largest I/O), and base:allocation block
// status (extent_at: holes).
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <memory>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/driver/driver_type.h"
#include "blkstack/driver/limit_options.h"
#include "blkstack/driver/queue_mode.h"
#include "blkstack/driver/reports.h"
#include "blkstack/driver/transfer.h"
#include "blkstack/error.h"
#include "drivers/nbd/connection.h"

namespace blkstack {
namespace {

using nbd::ConnectOptions;
using nbd::ExportInfo;
using nbd::kDefaultMaxBlock;
using nbd::NbdConnection;

// The connections, shared by the driver (I/O) and its reports.
struct Connections {
  ExportInfo info;
  std::string uri;
  unsigned wanted = 1;
  std::vector<std::unique_ptr<NbdConnection>> conns;
};

class NbdDriver final : public TransferDriver {
 public:
  explicit NbdDriver(std::shared_ptr<Connections> c)
      : c_(std::move(c)), n_(static_cast<unsigned>(c_->conns.size())) {}

  void queue_cmd(IoCmd cmd) override { pick(cmd).start(cmd); }
  // What waits for a server to come back fails now: the disk is going.
  void shutdown() override {
    for (auto& conn : c_->conns) conn->shutdown();
  }
  // Multi-queue: the connection times its commands out itself (the
  // kernel's nbd_xmit_timeout resets the timer too) and sends them again
  // or fails them by dead_conn_timeout.
  TimeoutAction timeout(IoCmd) override { return TimeoutAction::kResetTimer; }

 private:
  NbdConnection& pick(IoCmd cmd) {
    if (n_ == 1) return *c_->conns[0];
    if (cmd.is_request()) return *c_->conns[cmd.queue_index() % n_];
    // Bio-based: each submitting thread goes round the connections on its
    // own counter (no cache line shared by all submitters).
    thread_local unsigned next = 0;
    return *c_->conns[next++ % n_];
  }

  std::shared_ptr<Connections> c_;
  unsigned n_;
};

class NbdReports final : public DiskReports {
 public:
  explicit NbdReports(std::shared_ptr<Connections> c) : c_(std::move(c)) {}

  std::string describe() const override {
    const ExportInfo& i = c_->info;
    unsigned up = 0;
    uint64_t reconnects = 0;
    std::string error;
    for (const auto& conn : c_->conns) {
      up += conn->up();
      reconnects += conn->reconnects();
      if (error.empty()) error = conn->last_error();
    }
    std::string s = fmt::format("{} connections={}/{} up={}", c_->uri, c_->conns.size(),
                                c_->wanted, up);
    if (c_->wanted > c_->conns.size()) s += " (no multi-conn)";
    s += fmt::format(" flush={} fua={} trim={} zero={} block_status={}", i.can_flush,
                     i.can_fua, i.can_trim, i.can_zero, i.base_allocation);
    if (reconnects) s += fmt::format(" reconnects={}", reconnects);
    if (!error.empty()) s += " last error: " + error;
    return s;
  }

  Extent extent_at(uint64_t offset, uint64_t max_length) const override {
    for (const auto& conn : c_->conns) {
      Extent e;
      if (conn->up() && conn->block_status(offset, max_length, &e)) return e;
    }
    return {max_length, true, false};  // cannot tell: data
  }

 private:
  std::shared_ptr<Connections> c_;
};

constexpr OptionDef kOptions[] = {
    {"uri",
     OptionKind::kString,
     "",
     "the server, as libnbd parses it: nbd://HOST[:PORT]/EXPORT or "
     "nbd+unix:///EXPORT?socket=PATH",
     {},
     true},
    ranged({"connections", OptionKind::kUint, "1",
            "connections to the server (more than 1 only if it allows multi-conn)"},
           1, 16),
    ranged({"connect_timeout", OptionKind::kDuration, "10s",
            "longest wait for a connection and handshake (open, each reconnect)"},
           1'000'000, 3'600'000'000'000),
    ranged({"dead_conn_timeout", OptionKind::kUint, "30",
            "seconds I/O waits for a reconnect after the connection drops, then "
            "fails; 0: fail at once"},
           0, 86400),
};

// The server's block sizes as queue limits: its minimum is the logical
// block (at least 512), its preferred the physical block, its maximum the
// largest read or write.
QueueLimits limits_from(const ExportInfo& info, const std::string& spec) {
  QueueLimits lim;
  const uint32_t min = std::max<uint32_t>(info.min_block, kMinBlockSize);
  if (!std::has_single_bit(min) || min > kMaxBlockSize)
    throw Error(
        fmt::format("{}: the server's minimum block size {} is not a power of two "
                    "from 512 to 65536",
                    spec, info.min_block));
  lim.logical_block_size = min;
  lim.physical_block_size =
      std::clamp<uint32_t>(std::bit_floor(std::max(info.preferred_block, min)), min,
                           static_cast<uint32_t>(kMaxBlockSize));
  uint32_t max =
      info.max_block ? std::min(info.max_block, kDefaultMaxBlock) : kDefaultMaxBlock;
  max &= ~(min - 1);
  if (max < min) max = min;
  lim.max_hw_sectors = lim.max_sectors = max >> kSectorShift;
  lim.max_segment_size = max;  // one NBD command per piece of memory
  // NBD lengths are 32 bits: trims and zeroes up to the last whole block.
  const uint32_t max_len_sectors = (UINT32_MAX & ~(min - 1)) >> kSectorShift;
  if (info.can_trim && !info.read_only) {
    lim.max_discard_sectors = max_len_sectors;
    lim.discard_granularity = min;
  }
  if (info.can_zero && !info.read_only) {
    lim.max_write_zeroes_sectors = max_len_sectors;
    lim.write_zeroes_nounmap = true;  // NBD_CMD_FLAG_NO_HOLE
  }
  lim.volatile_write_cache = info.can_flush;
  lim.fua = info.can_flush && info.can_fua;
  lim.read_only = info.read_only;
  return lim;
}

std::shared_ptr<Disk> create(const DeviceOptions& o, const std::string& name,
                             OpenContext&) {
  const std::string spec = o.spec().text;
  ConnectOptions co;
  co.uri = o.str("uri");
  co.connect_timeout_ns = o.duration_ns("connect_timeout");
  co.dead_conn_timeout_ns = o.uint("dead_conn_timeout") * 1'000'000'000;
  // The queue modes' `timeout` (default 30 s, the kernel nbd's), in both.
  co.timeout_ns = o.duration_ns("timeout");

  auto c = std::make_shared<Connections>();
  c->uri = co.uri;
  c->wanted = static_cast<unsigned>(o.uint("connections"));
  std::string error;
  nbd_handle* h = nbd::connect_blocking(co.uri, co.connect_timeout_ns, &error);
  if (h == nullptr)
    throw Error(fmt::format("{}: cannot open {}: {}", spec, co.uri, error));
  c->info = nbd::read_export_info(h);
  // Without multi-conn a flush covers only its own connection's writes:
  // one connection then, said in describe().
  const unsigned n = c->info.can_multi_conn ? c->wanted : 1;
  co.multi_conn = n > 1;
  c->conns.push_back(std::make_unique<NbdConnection>(h, c->info, co, 0));

  const QueueLimits lim = limits_from(c->info, spec);
  const uint64_t size = c->info.size & ~uint64_t{lim.logical_block_size - 1};
  if (size == 0)
    throw Error(fmt::format("{}: the export is {} bytes, less than one {}-byte block",
                            spec, c->info.size, lim.logical_block_size));

  for (unsigned i = 1; i < n; ++i) {
    nbd_handle* more = nbd::connect_blocking(co.uri, co.connect_timeout_ns, &error);
    if (more == nullptr)
      throw Error(fmt::format("{}: cannot open connection {} to {}: {}", spec, i + 1,
                              co.uri, error));
    c->conns.push_back(std::make_unique<NbdConnection>(more, c->info, co, i));
  }
  return make_disk<NbdDriver>(name, size >> kSectorShift, lim, queue_mode(o),
                              std::make_unique<NbdReports>(c), c);
}

}  // namespace

extern const DriverType kNbdDriver{"nbd",  "a remote NBD export, through libnbd",
                                   43,     kOptions,
                                   create, /*queue_modes=*/true};

namespace {
// An optional module (BLKSTACK_WITH_NBD_CLIENT): linked as objects into
// the programs that want it, it registers itself when they start.
const bool kRegistered = (register_driver_type(kNbdDriver), true);
}  // namespace

}  // namespace blkstack
