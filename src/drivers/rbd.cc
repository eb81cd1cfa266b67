// rbd: a Ceph RBD image through librbd's asynchronous C API (the kernel's
// drivers/block/rbd.c in user space, as rbd-nbd is).
//
// Always multi-queue: each request becomes one librbd call (rbd_aio_read or
// rbd_aio_write for one piece of memory, rbd_aio_readv/writev for several,
// rbd_aio_discard, rbd_aio_write_zeroes, rbd_aio_flush), its iovecs kept in
// the request's pdu until librbd is done with them. librbd completes on its
// own threads (the image's op work queue); blkstack's completions, which
// may run a submitter's callback and dispatch more requests, run instead on
// one reaper thread of the driver, woken through an eventfd:
//   completion=eventfd  librbd queues the completion inside the image and
//                       signals the eventfd (rbd_set_image_notification);
//                       the reaper takes them in batches (rbd_poll_io_events).
//   completion=callback librbd's callback only links the command onto a
//                       lock-free list and signals the eventfd when the list
//                       was empty; the reaper takes the whole list at once.
// The callback is the default: librbd signals the eventfd for every
// completion, the callback only when the reaper's list was empty, so fewer
// wake-ups at depth; docs/drivers.md ("rbd") has the figures of both.
//
// Opening connects to the cluster with bounded waits (connect_timeout=,
// osd_timeout=), so that an unreachable cluster, a missing pool, image or
// snapshot or a refused key is an Error naming it, never a hang.
#include <fmt/format.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/driver/driver_type.h"
#include "blkstack/driver/hw_queue.h"
#include "blkstack/driver/limit_options.h"
#include "blkstack/driver/queue_mode.h"
#include "blkstack/driver/reports.h"
#include "blkstack/driver/request.h"
#include "blkstack/error.h"

namespace blkstack {
namespace {

constexpr unsigned kMaxSegments = 128;
constexpr int kPollBatch = 32;

// The driver's part of each request (its pdu).
class RbdDriver;
struct RbdCmd {
  Request* rq;
  RbdDriver* driver;
  RbdCmd* next;      // completion=callback: the reaper's list
  ssize_t result;    // completion=callback: librbd's return value
  bool flush_after;  // a FUA write of several pieces: a flush follows it
  unsigned nr_iov;
  iovec iov[kMaxSegments];
};

// The cluster handle, the pool's I/O context and the image, closed in the
// reverse order whatever step of opening failed.
struct RbdHandles {
  rados_t cluster = nullptr;
  rados_ioctx_t io = nullptr;
  rbd_image_t image = nullptr;
  RbdHandles() = default;
  RbdHandles(const RbdHandles&) = delete;
  RbdHandles& operator=(const RbdHandles&) = delete;
  ~RbdHandles() {
    if (image) rbd_close(image);
    if (io) rados_ioctx_destroy(io);
    if (cluster) rados_shutdown(cluster);
  }
};

enum class CompletionMode { kEventfd, kCallback };

class RbdDriver final : public RequestDriver {
 public:
  RbdDriver(std::unique_ptr<RbdHandles> h, int efd, CompletionMode mode, bool fua_flag)
      : h_(std::move(h)), image_(h_->image), efd_(efd), mode_(mode), fua_flag_(fua_flag) {
    reaper_ = std::thread([this] { reap(); });
  }
  ~RbdDriver() override {
    // The disk has waited for every request: nothing is in librbd.
    stop_.store(true, std::memory_order_seq_cst);
    signal();
    reaper_.join();
    h_.reset();  // rbd_close before the eventfd it may still signal goes
    close(efd_);
  }

  Status queue_rq(HwQueue&, Request& rq, bool) override {
    RbdCmd& c = *rq.pdu_as<RbdCmd>();
    c.rq = &rq;
    c.driver = this;
    c.next = nullptr;
    c.flush_after = false;
    rbd_completion_t comp;
    if (rbd_aio_create_completion(
            &c, mode_ == CompletionMode::kCallback ? &RbdDriver::on_callback : nullptr,
            &comp) < 0)
      return Status::kResource;
    const int r = start(c, comp);
    if (r < 0) {
      rbd_aio_release(comp);
      return status_from_rbd(r);
    }
    return Status::kOk;
  }

  // librbd cannot take an operation back: a late read could still land in
  // the buffer. As the file driver does, the request stays the driver's
  // until librbd answers (osd_timeout= bounds that wait).
  TimeoutAction timeout(Request&) override { return TimeoutAction::kResetTimer; }

 private:
  int start(RbdCmd& c, rbd_completion_t comp) {
    Request& rq = *c.rq;
    const uint64_t off = rq.pos() << kSectorShift;
    const uint64_t len = rq.bytes();
    switch (rq.op()) {
      case Op::kRead:
      case Op::kWrite: {
        unsigned n = 0;
        bool overflow = false;
        rq.for_each_chunk([&](const BioChunk& ch) {
          if (n == kMaxSegments) {
            overflow = true;
            return;
          }
          c.iov[n++] = iovec{ch.ptr, ch.len};
        });
        if (overflow) return -EINVAL;  // the limits forbid this
        c.nr_iov = n;
        if (rq.op() == Op::kRead) {
          return n == 1 ? rbd_aio_read(image_, off, len,
                                       static_cast<char*>(c.iov[0].iov_base), comp)
                        : rbd_aio_readv(image_, c.iov, static_cast<int>(n), off, comp);
        }
        const bool fua = rq.has_flag(BioFlag::kFua);
        if (n == 1 && (!fua || fua_flag_)) {
          // FUA as librados' fadvise flag: the write-around cache writes it
          // through, and the OSD answers once the write is committed.
          return rbd_aio_write2(image_, off, len,
                                static_cast<const char*>(c.iov[0].iov_base), comp,
                                fua ? LIBRADOS_OP_FLAG_FADVISE_FUA : 0);
        }
        // rbd_aio_writev takes no flags, and a writeback cache may hold a
        // write whatever its flags: a flush follows.
        c.flush_after = fua;
        return rbd_aio_writev(image_, c.iov, static_cast<int>(n), off, comp);
      }
      case Op::kFlush:
        return rbd_aio_flush(image_, comp);
      case Op::kDiscard:
        return rbd_aio_discard(image_, off, len, comp);
      case Op::kWriteZeroes:
        // Thick provisioning keeps the range allocated (NBD_CMD_FLAG_NO_HOLE).
        return rbd_aio_write_zeroes(
            image_, off, len, comp,
            rq.has_flag(BioFlag::kNoUnmap) ? RBD_WRITE_ZEROES_FLAG_THICK_PROVISION : 0,
            0);
    }
    return -EINVAL;
  }

  // On a librbd thread (completion=callback): only hand the command over.
  static void on_callback(rbd_completion_t comp, void* arg) {
    RbdCmd& c = *static_cast<RbdCmd*>(arg);
    c.result = rbd_aio_get_return_value(comp);
    rbd_aio_release(comp);
    RbdDriver& d = *c.driver;
    RbdCmd* head = d.done_.load(std::memory_order_relaxed);
    do {
      c.next = head;
    } while (!d.done_.compare_exchange_weak(head, &c, std::memory_order_release,
                                            std::memory_order_relaxed));
    if (head == nullptr) d.signal();  // the reaper takes the whole list
  }

  void signal() {
    const uint64_t one = 1;
    while (write(efd_, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }

  // The reaper thread: sleeps on the eventfd, ends what librbd finished.
  void reap() {
    prctl(PR_SET_NAME, "rbd-reaper", 0, 0, 0);
    for (;;) {
      uint64_t count;
      if (read(efd_, &count, sizeof count) < 0 && errno != EINTR) return;
      if (mode_ == CompletionMode::kEventfd) {
        rbd_completion_t comps[kPollBatch];
        int n;
        while ((n = rbd_poll_io_events(image_, comps, kPollBatch)) > 0) {
          for (int i = 0; i < n; ++i) {
            RbdCmd& c = *static_cast<RbdCmd*>(rbd_aio_get_arg(comps[i]));
            const ssize_t r = rbd_aio_get_return_value(comps[i]);
            rbd_aio_release(comps[i]);
            finish(c, r);
          }
        }
      } else {
        RbdCmd* list = done_.exchange(nullptr, std::memory_order_acquire);
        while (list) {
          RbdCmd* next = list->next;
          finish(*list, list->result);
          list = next;
        }
      }
      if (stop_.load(std::memory_order_seq_cst)) return;
    }
  }

  void finish(RbdCmd& c, ssize_t r) {
    if (r >= 0 && c.flush_after) {
      c.flush_after = false;  // the write is done; now make it durable
      rbd_completion_t comp;
      int e = rbd_aio_create_completion(
          &c, mode_ == CompletionMode::kCallback ? &RbdDriver::on_callback : nullptr,
          &comp);
      if (e == 0) {
        e = rbd_aio_flush(image_, comp);
        if (e == 0) return;
        rbd_aio_release(comp);
      }
      r = e;
    }
    c.rq->end_request_all(r < 0 ? status_from_rbd(static_cast<int>(r)) : Status::kOk);
  }

  // librbd fails writes with EROFS while another client keeps the
  // exclusive lock (exclusive=1 there): kReadOnly, as the core's own
  // refusal; ETIMEDOUT past osd_timeout= is kTimeout; ESHUTDOWN, a client
  // the cluster fenced (blocklisted), kTransport.
  static Status status_from_rbd(int r) { return status_from_errno(-r); }

  std::unique_ptr<RbdHandles> h_;
  rbd_image_t image_;
  int efd_;
  CompletionMode mode_;
  bool fua_flag_;  // the fadvise flag makes a write durable (fua_by_flag)
  std::atomic<RbdCmd*> done_{nullptr};  // completion=callback
  std::atomic<bool> stop_{false};
  std::thread reaper_;
};

class RbdReports final : public DiskReports {
 public:
  explicit RbdReports(std::string describe) : describe_(std::move(describe)) {}
  std::string describe() const override { return describe_; }

 private:
  std::string describe_;
};

constexpr uint64_t kSecond = 1'000'000'000;
constexpr uint64_t kHour = 3600 * kSecond;

constexpr OptionDef kOptions[] = {
    {"image",
     OptionKind::kString,
     "",
     "POOL/IMAGE or POOL/IMAGE@SNAP (a snapshot: read-only)",
     {},
     true},
    {"conf", OptionKind::kString, "",
     "ceph.conf to read (default: $CEPH_CONF, then Ceph's search path)"},
    {"id", OptionKind::kString, "admin", "the client's name, without 'client.'"},
    {"cluster", OptionKind::kString, "ceph", "the cluster's name"},
    ranged({"connect_timeout", OptionKind::kDuration, "10s",
            "how long to wait for the monitors (client_mount_timeout, "
            "rados_mon_op_timeout)"},
           kSecond, kHour),
    ranged({"osd_timeout", OptionKind::kDuration, "60s",
            "an OSD operation unanswered this long fails with a timeout "
            "(rados_osd_op_timeout; 0: wait for ever)"},
           0, kHour),
    {"exclusive", OptionKind::kBool, "0",
     "take the image's exclusive lock when opening and keep it: other clients cannot "
     "write"},
    {"completion", OptionKind::kChoice, "callback",
     "how librbd's completions reach the reaper thread: queued in the image "
     "(rbd_poll_io_events) or through a callback that only enqueues",
     "eventfd|callback"},
    ranged({"max_sectors", OptionKind::kUint, "8192", "largest I/O in 512-byte sectors"},
           1, kMaxSectorsLimit),
};

std::string errno_text(int r) { return std::strerror(r < 0 ? -r : r); }

// Seconds for a Ceph config value, at least 1 (0 means "none" to Ceph).
std::string seconds(uint64_t ns) {
  return std::to_string(std::max<uint64_t>(1, (ns + kSecond - 1) / kSecond));
}

std::string conf_value(rados_t cluster, const char* key) {
  char buf[256] = {};
  return rados_conf_get(cluster, key, buf, sizeof buf - 1) == 0 ? buf : "?";
}

// The image's effective librbd settings that the driver depends on: the
// conf, then the pool's and the image's own overrides (rbd config ... set).
struct ImageSettings {
  std::string cache, cache_policy, non_blocking_aio;
};

ImageSettings image_settings(rbd_image_t image) {
  ImageSettings s;
  int max = 0;
  rbd_config_image_list(image, nullptr, &max);  // -ERANGE, the count in max
  if (max <= 0) return s;
  std::vector<rbd_config_option_t> opts(static_cast<size_t>(max));
  if (rbd_config_image_list(image, opts.data(), &max) < 0) return s;
  for (int i = 0; i < max; ++i) {
    const std::string_view name = opts[i].name;
    if (name == "rbd_cache") s.cache = opts[i].value;
    if (name == "rbd_cache_policy") s.cache_policy = opts[i].value;
    if (name == "rbd_non_blocking_aio") s.non_blocking_aio = opts[i].value;
  }
  rbd_config_image_list_cleanup(opts.data(), max);
  return s;
}

// Whether LIBRADOS_OP_FLAG_FADVISE_FUA alone makes a write durable when it
// completes: yes without librbd's cache and through its write-around cache
// (rbd_cache_policy=writearound, the default, writes such a write through);
// the writeback cache (ObjectCacher) is not known to honour the flag, so
// there, or when the settings cannot be read, write then flush.
bool fua_by_flag(const ImageSettings& s) {
  return s.cache == "false" || s.cache_policy == "writearound";
}

std::shared_ptr<Disk> create(const DeviceOptions& o, const std::string& name,
                             OpenContext&) {
  const std::string where = fmt::format("device spec '{}'", o.spec().text);
  auto fail = [&](const std::string& why) -> void {
    throw Error(fmt::format("{}: {}", where, why));
  };

  // POOL/IMAGE[@SNAP]
  const std::string& spec = o.str("image");
  const size_t slash = spec.find('/');
  const size_t at = spec.find('@', slash == std::string::npos ? 0 : slash);
  if (slash == std::string::npos || slash == 0 || slash + 1 >= spec.size() ||
      at == slash + 1 || at + 1 == spec.size() ||
      spec.find('/', slash + 1) != std::string::npos)
    fail(fmt::format("bad image '{}': expected POOL/IMAGE or POOL/IMAGE@SNAP", spec));
  const std::string pool = spec.substr(0, slash);
  const std::string image = spec.substr(
      slash + 1, at == std::string::npos ? std::string::npos : at - slash - 1);
  const std::string snap = at == std::string::npos ? "" : spec.substr(at + 1);
  const bool read_only = o.flag("ro") || !snap.empty();
  const bool exclusive = o.flag("exclusive");
  if (exclusive && read_only)
    fail("exclusive=1 takes the lock to write: not with ro=1 or a snapshot");

  QueueMode qm = queue_mode(o);
  if (o.given("queue_mode") && !qm.mq)
    fail("rbd disks are always multi-queue (queue_mode=mq)");
  qm.mq = true;
  qm.tags.cmd_size = sizeof(RbdCmd);
  check_total_tags(o, qm.tags);

  auto h = std::make_unique<RbdHandles>();
  const std::string client = "client." + o.str("id");
  int r = rados_create2(&h->cluster, o.str("cluster").c_str(), client.c_str(), 0);
  if (r < 0)
    fail(fmt::format("cannot make a Ceph client '{}': {}", client, errno_text(r)));
  const std::string conf = o.given("conf") ? o.str("conf") : "";
  r = rados_conf_read_file(h->cluster, conf.empty() ? nullptr : conf.c_str());
  if (r < 0) {
    fail(conf.empty()
             ? fmt::format("no Ceph config found (give conf= or set CEPH_CONF): {}",
                           errno_text(r))
             : fmt::format("cannot read conf '{}': {}", conf, errno_text(r)));
  }
  rados_conf_parse_env(h->cluster, nullptr);  // CEPH_ARGS, as the rbd tool reads it
  // rbd_aio_* only queue the I/O for librbd's own thread, whatever the conf
  // says: run inline, librbd's dispatch may block the submitting thread in
  // the objecter's throttles (objecter_inflight_ops, _op_bytes).
  rados_conf_set(h->cluster, "rbd_non_blocking_aio", "true");
  // Bounded waits: without them librados waits for ever for monitors that
  // do not answer, and librbd for OSDs that do not.
  const std::string mount_s = seconds(o.duration_ns("connect_timeout"));
  const uint64_t osd_ns = o.duration_ns("osd_timeout");
  rados_conf_set(h->cluster, "client_mount_timeout", mount_s.c_str());
  rados_conf_set(h->cluster, "rados_mon_op_timeout", mount_s.c_str());
  rados_conf_set(h->cluster, "rados_osd_op_timeout",
                 osd_ns == 0 ? "0" : seconds(osd_ns).c_str());
  r = rados_connect(h->cluster);
  if (r == -EACCES || r == -EPERM || r == -EKEYREJECTED) {
    fail(fmt::format(
        "the cluster refused {}'s key ({}): check keyring= or key= in the conf", client,
        errno_text(r)));
  }
  if (r == -ETIMEDOUT || r == -ENOTCONN) {
    fail(fmt::format("no answer from the monitors at {} within {}s (connect_timeout=)",
                     conf_value(h->cluster, "mon_host"), mount_s));
  }
  if (r < 0) {
    fail(fmt::format("cannot connect to the cluster (monitors {}) as {}: {}",
                     conf_value(h->cluster, "mon_host"), client, errno_text(r)));
  }
  r = rados_ioctx_create(h->cluster, pool.c_str(), &h->io);
  if (r < 0) {
    fail(r == -ENOENT ? fmt::format("pool '{}' does not exist", pool)
                      : fmt::format("cannot open pool '{}': {}", pool, errno_text(r)));
  }
  r = read_only ? rbd_open_read_only(h->io, image.c_str(), &h->image,
                                     snap.empty() ? nullptr : snap.c_str())
                : rbd_open(h->io, image.c_str(), &h->image, nullptr);
  if (r < 0) {
    h->image = nullptr;
    if (r == -ENOENT) {
      fail(snap.empty()
               ? fmt::format("image '{}' does not exist in pool '{}'", image, pool)
               : fmt::format("image '{}' or its snapshot '{}' does not exist in "
                             "pool '{}'",
                             image, snap, pool));
    }
    if (r == -ETIMEDOUT)
      fail(fmt::format("no answer from the OSDs opening image '{}' (osd_timeout=)",
                       image));
    fail(fmt::format("cannot open image '{}' in pool '{}': {}", image, pool,
                     errno_text(r)));
  }
  if (exclusive) {
    // Managed, not cooperative: librbd keeps the lock and refuses to hand
    // it over, so other clients' writes fail with EROFS (rbd-nbd --exclusive).
    r = rbd_lock_acquire(h->image, RBD_LOCK_MODE_EXCLUSIVE);
    if (r < 0) {
      fail(r == -EINVAL ? fmt::format("image '{}' has no exclusive-lock feature", image)
                        : fmt::format("cannot take the exclusive lock of image '{}' "
                                      "(another client holds it?): {}",
                                      image, errno_text(r)));
    }
  }
  const ImageSettings settings = image_settings(h->image);
  if (settings.non_blocking_aio != "true") {
    fail(
        fmt::format("image '{}': its pool's or its own rbd_non_blocking_aio is '{}'; "
                    "librbd would block the submitting threads (set it to true)",
                    image, settings.non_blocking_aio));
  }
  rbd_image_info_t info;
  r = rbd_stat(h->image, &info, sizeof info);
  if (r < 0) fail(fmt::format("cannot stat image '{}': {}", image, errno_text(r)));

  QueueLimits lim;
  lim.logical_block_size = 512;
  lim.physical_block_size = 4096;
  lim.max_sectors = max_sectors_option(o);
  lim.max_hw_sectors = std::max<uint32_t>(lim.max_sectors, lim.max_hw_sectors);
  lim.max_segments = kMaxSegments;
  lim.max_segment_size = 1u << 30;
  // Up to an object: a larger I/O is split into several RADOS operations.
  lim.optimal_io_size =
      info.obj_size <= (uint64_t{1} << 30) ? static_cast<uint32_t>(info.obj_size) : 0;
  // librbd's cache (rbd_cache=) may hold written data: flush is rbd_aio_flush.
  lim.volatile_write_cache = true;
  lim.fua = true;  // LIBRADOS_OP_FLAG_FADVISE_FUA, or write then flush
  lim.read_only = read_only;
  if (!read_only) {
    // A discard may leave unaligned pieces as they were
    // (rbd_skip_partial_discard), so it is no zeroing; write-zeroes is.
    lim.max_discard_sectors = UINT32_MAX >> kSectorShift;
    lim.discard_granularity = 4096;
    lim.max_write_zeroes_sectors = UINT32_MAX >> kSectorShift;
    lim.write_zeroes_nounmap = true;  // RBD_WRITE_ZEROES_FLAG_THICK_PROVISION
  }
  const uint64_t size = info.size - info.size % lim.logical_block_size;
  if (size == 0) fail(fmt::format("image '{}' is empty", image));

  const int efd = eventfd(0, EFD_CLOEXEC);
  if (efd < 0) fail(fmt::format("eventfd: {}", errno_text(errno)));
  const CompletionMode mode = o.str("completion") == "callback"
                                  ? CompletionMode::kCallback
                                  : CompletionMode::kEventfd;
  if (mode == CompletionMode::kEventfd) {
    r = rbd_set_image_notification(h->image, efd, EVENT_TYPE_EVENTFD);
    if (r < 0) {
      close(efd);
      fail(fmt::format("rbd_set_image_notification: {}", errno_text(r)));
    }
  }
  const bool fua_flag = fua_by_flag(settings);
  const std::string describe =
      fmt::format("{}/{}{}{} object {}K{}{}{}", pool, image, snap.empty() ? "" : "@",
                  snap, info.obj_size >> 10, exclusive ? " exclusive" : "",
                  mode == CompletionMode::kEventfd ? " completion=eventfd" : "",
                  fua_flag ? "" : " fua=flush");
  auto driver = std::make_unique<RbdDriver>(std::move(h), efd, mode, fua_flag);
  return make_disk(name, size >> kSectorShift, lim, qm, nullptr, std::move(driver),
                   std::make_unique<RbdReports>(describe));
}

}  // namespace

extern const DriverType kRbdDriver{
    "rbd",  "a Ceph RBD image through librbd (rbd-nbd's backend)",
    0,      kOptions,
    create, /*queue_modes=*/true};

// An optional module (BLKSTACK_WITH_RBD): linked into a program as an
// object library, it registers itself when the program starts.
[[maybe_unused]] const bool kRbdRegistered = (register_driver_type(kRbdDriver), true);

}  // namespace blkstack
