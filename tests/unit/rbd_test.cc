// The rbd driver against a throwaway Ceph cluster (one monitor, one
// memstore OSD) that the ctest fixture rbd_cluster starts once for all of
// these tests (tests/unit/rbd_cluster.sh) and passes in RBD_TEST_CONF.
// Without the Ceph packages the fixture starts nothing and each test is
// skipped, saying why.
#include <gtest/gtest.h>
#include <rbd/librbd.h>
#include <signal.h>
#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/error.h"
#include "blkstack/io_context.h"

namespace blkstack {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kImageBytes = 16 << 20;

// The cluster's config, or why there is none.
const char* ClusterConf(std::string* why) {
  const char* conf = std::getenv("RBD_TEST_CONF");
  if (conf == nullptr || *conf == '\0') {
    *why = "RBD_TEST_CONF is not set (run through ctest: the rbd_cluster fixture)";
    return nullptr;
  }
  if (!std::ifstream(conf)) {
    *why = std::string("no Ceph cluster (") + conf +
           " missing: ceph-mon, ceph-osd and ceph-common are not installed; "
           "scripts/install-deps.sh installs them)";
    return nullptr;
  }
  return conf;
}

class RbdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    conf_ = ClusterConf(&why);
    if (conf_ == nullptr) GTEST_SKIP() << why;
    ASSERT_EQ(rados_create(&cluster_, nullptr), 0);
    ASSERT_EQ(rados_conf_read_file(cluster_, conf_), 0);
    ASSERT_EQ(rados_connect(cluster_), 0);
    ASSERT_EQ(rados_ioctx_create(cluster_, "rbd", &io_), 0);
    // One image per test, named after it: tests may run in parallel.
    image_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    rbd_remove(io_, image_.c_str());  // left over from an interrupted run
    int order = 22;                   // 4 MiB objects
    ASSERT_EQ(rbd_create(io_, image_.c_str(), kImageBytes, &order), 0);
  }
  void TearDown() override {
    registry_.reset();  // closes the disks before the image goes
    if (io_ != nullptr) {
      rbd_image_t img;
      if (rbd_open(io_, image_.c_str(), &img, nullptr) == 0) {
        rbd_snap_remove(img, "s1");  // SnapshotOpensReadOnlyWithItsData's
        rbd_close(img);
      }
      rbd_remove(io_, image_.c_str());
      rados_ioctx_destroy(io_);
    }
    if (cluster_ != nullptr) rados_shutdown(cluster_);
  }

  std::string Spec(const std::string& extra = "") const {
    return "rbd:rbd/" + image_ + ",conf=" + conf_ + extra;
  }

  const char* conf_ = nullptr;
  rados_t cluster_ = nullptr;
  rados_ioctx_t io_ = nullptr;
  std::string image_;
  std::unique_ptr<DiskRegistry> registry_ = std::make_unique<DiskRegistry>();
};

// Runs one iocb and returns its result (bytes or -errno).
int64_t RunIocb(IoContext& ctx, Iocb cb) {
  Iocb* list[] = {&cb};
  if (int r = ctx.submit(list); r != 1) return r;
  IoEvent ev;
  if (ctx.get_events(1, {&ev, 1}, 30s) != 1) return -ETIMEDOUT;
  return ev.res;
}

Iocb Make(IoOp op, Disk* d, uint64_t off, uint64_t len, uint32_t flags = 0) {
  Iocb cb;
  cb.op = op;
  cb.disk = d;
  cb.offset = off;
  cb.len = len;
  cb.flags = flags;
  return cb;
}

// Four threads, each on a region of its own, run random writes (one to
// three pieces of memory, some FUA), reads, flushes, discards and
// write-zeroes through IoContext, checking every read against a model of
// the region. A discard may leave a sector as it was or zero it
// (rbd_skip_partial_discard), so the model takes either there.
TEST_F(RbdTest, ReferenceModelFromSeveralThreads) {
  auto disk = registry_->create(Spec(",depth=16"));
  ASSERT_EQ(disk->size_bytes(), kImageBytes);
  constexpr int kThreads = 4;
  constexpr int kOpsPerThread = 100;
  constexpr uint64_t kRegion = kImageBytes / kThreads;
  constexpr uint64_t kSector = 512;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      IoContext ctx(4);
      std::mt19937_64 rng(1234 + t);
      const uint64_t base = t * kRegion;
      std::vector<uint8_t> model(kRegion, 0);  // a new image reads as zeroes
      std::vector<uint8_t> maybe_zero(kRegion / kSector, 0);  // discarded sectors
      std::vector<uint8_t> buf(256 << 10);
      auto fail = [&](const std::string& what) {
        ADD_FAILURE() << "thread " << t << ": " << what;
        ++failures;
      };
      for (int i = 0; i < kOpsPerThread && failures == 0; ++i) {
        const uint64_t sectors = 1 + rng() % (buf.size() / kSector);
        const uint64_t len = sectors * kSector;
        const uint64_t off = (rng() % (kRegion / kSector - sectors + 1)) * kSector;
        const int kind = static_cast<int>(rng() % 10);
        if (kind < 4) {  // write, in one to three pieces
          for (uint64_t j = 0; j < len; ++j) buf[j] = static_cast<uint8_t>(rng());
          iovec iov[3];
          const unsigned n = len >= 3 * kSector ? 1 + rng() % 3 : 1;
          const uint64_t piece = (len / kSector / n) * kSector;
          for (unsigned k = 0; k < n; ++k)
            iov[k] = {buf.data() + k * piece, k + 1 == n ? len - k * piece : piece};
          Iocb cb = Make(IoOp::kPwritev, disk.get(), base + off, 0,
                         rng() % 4 == 0 ? uint32_t{kIocbDsync} : 0u);
          cb.iov = iov;
          cb.iovcnt = n;
          if (int64_t r = RunIocb(ctx, cb); r != static_cast<int64_t>(len))
            return fail("write returned " + std::to_string(r));
          std::memcpy(model.data() + off, buf.data(), len);
          std::fill(maybe_zero.begin() + off / kSector,
                    maybe_zero.begin() + (off + len) / kSector, 0);
        } else if (kind < 7) {  // read, in two pieces when it can
          iovec iov[2];
          const unsigned n = sectors >= 2 ? 2 : 1;
          iov[0] = {buf.data(), n == 2 ? kSector : len};
          iov[1] = {buf.data() + kSector, len - kSector};
          Iocb cb = Make(IoOp::kPreadv, disk.get(), base + off, 0);
          cb.iov = iov;
          cb.iovcnt = n;
          if (int64_t r = RunIocb(ctx, cb); r != static_cast<int64_t>(len))
            return fail("read returned " + std::to_string(r));
          for (uint64_t s = 0; s < sectors; ++s) {
            const uint8_t* got = buf.data() + s * kSector;
            uint8_t* want = model.data() + off + s * kSector;
            if (std::memcmp(got, want, kSector) == 0) continue;
            const bool zero =
                std::all_of(got, got + kSector, [](uint8_t b) { return !b; });
            if (maybe_zero[off / kSector + s] && zero) {
              std::memset(want, 0, kSector);  // the discard zeroed it
              continue;
            }
            return fail("read at " + std::to_string(base + off + s * kSector) +
                        ": data differs from the model");
          }
        } else if (kind == 7) {
          if (int64_t r = RunIocb(ctx, Make(IoOp::kFdsync, disk.get(), 0, 0)); r != 0)
            return fail("flush returned " + std::to_string(r));
        } else if (kind == 8) {
          if (int64_t r = RunIocb(ctx, Make(IoOp::kDiscard, disk.get(), base + off, len));
              r != 0)
            return fail("discard returned " + std::to_string(r));
          std::fill(maybe_zero.begin() + off / kSector,
                    maybe_zero.begin() + (off + len) / kSector, 1);
        } else {
          if (int64_t r =
                  RunIocb(ctx, Make(IoOp::kWriteZeroes, disk.get(), base + off, len));
              r != 0)
            return fail("write-zeroes returned " + std::to_string(r));
          std::memset(model.data() + off, 0, len);
          std::fill(maybe_zero.begin() + off / kSector,
                    maybe_zero.begin() + (off + len) / kSector, 0);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures, 0);
}

// Through the other completion path (rbd_poll_io_events), FUA writes in
// one piece (the fadvise flag), and what the disk reports.
TEST_F(RbdTest, EventfdCompletionAndLimits) {
  auto disk = registry_->create(Spec(",completion=eventfd"));
  EXPECT_EQ(disk->limits().optimal_io_size, 4u << 20) << "the image's object size";
  EXPECT_TRUE(disk->limits().volatile_write_cache);
  EXPECT_NE(disk->describe().find("completion=eventfd"), std::string::npos);
  BlockHandle h(disk);
  std::vector<uint8_t> w(64 << 10), r(64 << 10);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<uint8_t>(i * 7 + 1);
  for (int i = 0; i < 20; ++i) {
    const uint64_t off = static_cast<uint64_t>(i) * 512 * 1024;
    ASSERT_EQ(h.pwrite(w.data(), w.size(), off, i % 2 ? BioFlag::kFua : BioFlag::kNone),
              Status::kOk);
    ASSERT_EQ(h.pread(r.data(), r.size(), off), Status::kOk);
    ASSERT_EQ(r, w) << "at " << off;
  }
  EXPECT_EQ(h.flush(), Status::kOk);
}

// librbd's write-around cache (and no cache) writes a write carrying
// LIBRADOS_OP_FLAG_FADVISE_FUA through; with rbd_cache_policy=writeback
// the ObjectCacher may hold it, so there a FUA write is followed by a flush.
TEST_F(RbdTest, FuaUnderAWritebackCacheIsWriteThenFlush) {
  auto plain = registry_->create(Spec());
  EXPECT_EQ(plain->describe().find("fua=flush"), std::string::npos)
      << "rbd cache = false: the fadvise flag is enough";
  plain.reset();
  ASSERT_EQ(setenv("CEPH_ARGS", "--rbd_cache=true --rbd_cache_policy=writeback", 1), 0);
  std::shared_ptr<Disk> disk;
  try {
    disk = registry_->create(Spec(",name=wb"));
  } catch (...) {
    unsetenv("CEPH_ARGS");
    throw;
  }
  unsetenv("CEPH_ARGS");
  EXPECT_NE(disk->describe().find("fua=flush"), std::string::npos) << disk->describe();
  BlockHandle h(disk);
  std::vector<uint8_t> w(8 << 10, 0x5a), r(8 << 10);
  ASSERT_EQ(h.pwrite(w.data(), w.size(), 4096, BioFlag::kFua), Status::kOk);
  ASSERT_EQ(h.pread(r.data(), r.size(), 4096), Status::kOk);
  EXPECT_EQ(r, w);
}

// librbd runs an I/O's dispatch on the submitting thread when
// rbd_non_blocking_aio is false, where the objecter's throttles
// (objecter_inflight_ops, objecter_inflight_op_bytes) can block it: the
// driver turns it on, and refuses an image whose own settings turn it off.
TEST_F(RbdTest, SubmitNeverRunsLibrbdDispatchInline) {
  ASSERT_EQ(setenv("CEPH_ARGS", "--rbd_non_blocking_aio=false", 1), 0);
  std::shared_ptr<Disk> disk;
  try {
    disk = registry_->create(Spec(",name=conf"));
  } catch (...) {
    unsetenv("CEPH_ARGS");
    throw;
  }
  unsetenv("CEPH_ARGS");
  disk.reset();
  rbd_image_t img;
  ASSERT_EQ(rbd_open(io_, image_.c_str(), &img, nullptr), 0);
  ASSERT_EQ(rbd_metadata_set(img, "conf_rbd_non_blocking_aio", "false"), 0);
  rbd_close(img);
  try {
    registry_->create(Spec(",name=image"));
    ADD_FAILURE() << "opened with the image's rbd_non_blocking_aio=false";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rbd_non_blocking_aio"), std::string::npos)
        << e.what();
  }
}

// The disk goes the moment its last I/O has completed, while librbd's
// thread may still be returning from the completion (signalling the
// eventfd): the reaper is joined and the image closed only after that, so
// nothing runs on a freed driver (ASan). Both completion paths, many rounds.
TEST_F(RbdTest, RemovedRightAfterTheLastCompletion) {
  std::vector<uint8_t> buf(4096, 0x11);
  for (int round = 0; round < 16; ++round) {
    auto reg = std::make_unique<DiskRegistry>();
    auto disk = reg->create(Spec(round % 2 ? ",completion=eventfd" : ""));
    IoContext ctx(8);
    std::vector<Iocb> cbs;
    for (int i = 0; i < 8; ++i) {
      cbs.push_back(Make(IoOp::kPwrite, disk.get(), 4096 * i, buf.size()));
      cbs.back().buf = buf.data();
    }
    std::vector<Iocb*> list;
    for (auto& cb : cbs) list.push_back(&cb);
    ASSERT_EQ(ctx.submit(list), 8);
    IoEvent ev[8];
    unsigned got = 0;
    while (got < 8) {
      const int n = ctx.get_events(1, {ev + got, 8 - got}, 30s);
      ASSERT_GT(n, 0);
      got += static_cast<unsigned>(n);
    }
    for (const IoEvent& e : ev) EXPECT_EQ(e.res, 4096);
    disk.reset();
    reg.reset();
  }
}

// What an open that cannot succeed says, and that it says it quickly.
void ExpectOpenFails(DiskRegistry& reg, const std::string& spec,
                     const std::string& needle, std::chrono::seconds limit) {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    reg.create(spec);
    ADD_FAILURE() << spec << " opened";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "'" << e.what() << "' does not say '" << needle << "'";
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, limit) << spec;
}

TEST_F(RbdTest, MissingImagePoolOrSnapshotIsAClearError) {
  ExpectOpenFails(*registry_, "rbd:rbd/no-such-image,conf=" + std::string(conf_),
                  "image 'no-such-image' does not exist in pool 'rbd'", 15s);
  ExpectOpenFails(*registry_, "rbd:nopool/x,conf=" + std::string(conf_),
                  "pool 'nopool' does not exist", 15s);
  ExpectOpenFails(*registry_, "rbd:rbd/" + image_ + "@nosnap,conf=" + std::string(conf_),
                  "snapshot 'nosnap' does not exist", 15s);
  ExpectOpenFails(*registry_, "rbd:rbd,conf=" + std::string(conf_),
                  "expected POOL/IMAGE or POOL/IMAGE@SNAP", 1s);
}

// Monitors that do not answer (a port nobody listens on): an error naming
// them once connect_timeout= has passed, not a hang.
TEST_F(RbdTest, UnreachableClusterFailsWithinTheConnectTimeout) {
  const std::string conf = std::string(conf_) + ".unreachable";
  {
    std::ofstream f(conf);
    f << "[global]\nmon host = 127.0.0.1:9\nauth client required = none\n";
  }
  ExpectOpenFails(*registry_, "rbd:rbd/x,conf=" + conf + ",connect_timeout=2s",
                  "no answer from the monitors at 127.0.0.1:9 within 2s", 10s);
  std::remove(conf.c_str());
  ExpectOpenFails(*registry_, "rbd:rbd/x,conf=/nonexistent/ceph.conf",
                  "cannot read conf '/nonexistent/ceph.conf'", 2s);
}

// The OSD stops answering mid-workload (SIGSTOP): I/O fails with kTimeout
// once osd_timeout= has passed, not a hang, and works again once the OSD
// is back.
TEST_F(RbdTest, StoppedOsdFailsIoWithinTheOsdTimeout) {
  BlockHandle h(registry_->create(Spec(",osd_timeout=2s,name=stall")));
  std::vector<uint8_t> w(4096, 0x3c), r(4096);
  ASSERT_EQ(h.pwrite(w.data(), w.size(), 0), Status::kOk);
  const std::string conf(conf_);
  std::ifstream pidfile(conf.substr(0, conf.rfind('/')) + "/run/osd.0.pid");
  pid_t osd = 0;
  ASSERT_TRUE(pidfile >> osd) << "the fixture's osd.0.pid";
  ASSERT_EQ(kill(osd, SIGSTOP), 0);
  const auto t0 = std::chrono::steady_clock::now();
  const Status st = h.pwrite(w.data(), w.size(), 8192);
  const auto took = std::chrono::steady_clock::now() - t0;
  kill(osd, SIGCONT);
  EXPECT_EQ(st, Status::kTimeout);
  EXPECT_LT(took, 15s);
  EXPECT_GE(took, 1s);
  // Back: the same disk serves again.
  ASSERT_EQ(h.pwrite(w.data(), w.size(), 8192), Status::kOk);
  ASSERT_EQ(h.pread(r.data(), r.size(), 8192), Status::kOk);
  EXPECT_EQ(r, w);
}

// A snapshot opens read-only and reads what the image held when it was
// taken; writes to it are refused with kReadOnly.
TEST_F(RbdTest, SnapshotOpensReadOnlyWithItsData) {
  std::vector<uint8_t> a(8192, 0xaa), b(8192, 0xbb), r(8192);
  {
    BlockHandle h(registry_->create(Spec(",name=live")));
    ASSERT_EQ(h.pwrite(a.data(), a.size(), 4096), Status::kOk);
    ASSERT_EQ(h.flush(), Status::kOk);
    rbd_image_t img;
    ASSERT_EQ(rbd_open(io_, image_.c_str(), &img, nullptr), 0);
    ASSERT_EQ(rbd_snap_create(img, "s1"), 0);
    rbd_close(img);
    ASSERT_EQ(h.pwrite(b.data(), b.size(), 4096), Status::kOk);
  }
  auto snap = registry_->create("rbd:rbd/" + image_ + "@s1,conf=" + conf_ + ",name=snap");
  EXPECT_TRUE(snap->read_only());
  BlockHandle h(snap);
  ASSERT_EQ(h.pread(r.data(), r.size(), 4096), Status::kOk);
  EXPECT_EQ(r, a) << "the snapshot's data, not the later write";
  EXPECT_EQ(h.pwrite(b.data(), b.size(), 0), Status::kReadOnly);
  EXPECT_EQ(h.discard(0, 4096), Status::kReadOnly);
  BlockHandle live(registry_->find("live"));
  ASSERT_EQ(live.pread(r.data(), r.size(), 4096), Status::kOk);
  EXPECT_EQ(r, b);
}

// exclusive=1 keeps the image's lock: a second client cannot take it, and
// its writes fail (EROFS) while reads go on. Without exclusive=1 two
// clients both write, the lock passing between them.
TEST_F(RbdTest, ExclusiveLockKeepsOtherWritersOut) {
  std::vector<uint8_t> buf(4096, 0x5a);
  {
    BlockHandle one(registry_->create(Spec(",name=one")));
    BlockHandle two(registry_->create(Spec(",name=two")));
    EXPECT_EQ(one.pwrite(buf.data(), buf.size(), 0), Status::kOk);
    EXPECT_EQ(two.pwrite(buf.data(), buf.size(), 4096), Status::kOk);
    EXPECT_EQ(one.pwrite(buf.data(), buf.size(), 8192), Status::kOk);
  }
  registry_ = std::make_unique<DiskRegistry>();
  BlockHandle owner(registry_->create(Spec(",exclusive=1,name=owner")));
  ExpectOpenFails(*registry_, Spec(",exclusive=1,name=rival"), "exclusive lock", 30s);
  BlockHandle other(registry_->create(Spec(",name=other")));
  EXPECT_EQ(other.pread(buf.data(), buf.size(), 0), Status::kOk);
  EXPECT_EQ(other.pwrite(buf.data(), buf.size(), 0), Status::kReadOnly);
  EXPECT_EQ(owner.pwrite(buf.data(), buf.size(), 0), Status::kOk);
}

}  // namespace
}  // namespace blkstack
