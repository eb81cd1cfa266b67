// The device-mapper core (src/dm/): a mapped device on a table of dmsetup
// lines, its table and status lines, table checks, suspend and resume.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/target.h"
#include "blkstack/error.h"
#include "dm/mapped_device.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Contains;
using testing_util::ErrorOf;

std::vector<std::byte> pattern(size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte((i * 131 + seed * 7) >> 3);
  return v;
}

std::string devt(DiskRegistry& r, const std::string& name) {
  auto d = r.get(name);
  return fmt::format("{}:{}", d->major(), d->minor());
}

TEST(Dm, LinearMapsOntoTheDeviceAtItsOffset) {
  DiskRegistry registry;
  registry.create("ram:1M");
  MappedDevice& md = MappedDevice::create(registry, "lin", "", "0 1024 linear ram0 512");
  EXPECT_EQ(md.disk().capacity(), 1024u);
  EXPECT_EQ(md.table_text(),
            fmt::format("0 1024 linear {} 512\n", devt(registry, "ram0")));
  EXPECT_EQ(md.status_text(), "0 1024 linear \n");  // dmsetup's blank

  const auto data = pattern(64 << 10, 1);
  std::vector<std::byte> back(data.size());
  {
    BlockHandle top = BlockHandle::open(registry, "lin");
    ASSERT_EQ(top.pwrite(data.data(), data.size(), 4096), Status::kOk);
    ASSERT_EQ(top.pread(back.data(), back.size(), 4096), Status::kOk);
    EXPECT_EQ(back, data);
    EXPECT_EQ(top.flush(), Status::kOk);
  }
  // The lower device is claimed while the mapped device uses it.
  EXPECT_TRUE(
      Contains(ErrorOf([&] { registry.remove("ram0"); }), "held by device-mapper"));
  EXPECT_TRUE(Contains(ErrorOf([&] { BlockHandle::open(registry, "ram0"); }),
                       "held by device-mapper"));
  // Another mapped device may share it (logical volumes on one disk).
  MappedDevice::create(registry, "lin2", "", "0 100 linear ram0 1600");
  registry.remove("lin2");
  registry.remove("lin");
  BlockHandle ram = BlockHandle::open(registry, "ram0");
  ASSERT_EQ(ram.pread(back.data(), back.size(), 512 * 512 + 4096), Status::kOk);
  EXPECT_EQ(back, data);
}

// A disk that completes every bio at once, for limits that no spec sets.
class OkDriver final : public BioDriver {
 public:
  void submit(Bio& bio) override { bio.complete(Status::kOk); }
};

// A mapped device shares its bios' memory with the devices below, so it
// must ask the strictest memory layout of any of them (blk_stack_limits):
// an SgMapper on top then lays memory out as every one below needs.
TEST(Dm, TheStrictestMemoryLayoutOfTheDevicesBelowIsStacked) {
  DiskRegistry registry;
  QueueLimits a, b;
  a.dma_alignment = 511;
  a.seg_boundary_mask = 65535;
  b.dma_alignment = 3;
  b.seg_boundary_mask = 8191;
  b.virt_boundary_mask = 4095;
  registry.add(std::make_shared<Disk>("la", 2048, a, std::make_unique<OkDriver>()), "ok");
  registry.add(std::make_shared<Disk>("lb", 2048, b, std::make_unique<OkDriver>()), "ok");
  MappedDevice& md = MappedDevice::create(registry, "both", "",
                                          "0 1024 linear la 0\n1024 1024 linear lb 0");
  const QueueLimits& top = md.disk().limits();
  EXPECT_EQ(top.dma_alignment, 511u);
  EXPECT_EQ(top.seg_boundary_mask, 8191u);
  EXPECT_EQ(top.virt_boundary_mask, 4095u);
  EXPECT_EQ(top.check(), "");
  registry.remove("both");
}

TEST(Dm, BadTablesAreRefusedNamingTheLine) {
  DiskRegistry registry;
  registry.create("ram:1M");
  registry.create("ram:1M");
  registry.create("passthrough:lower=ram1,name=other");  // holds ram1
  struct Case {
    const char* table;
    const char* error;
  } cases[] = {
      {"# nothing here\n", "the table is empty"},
      {"0 100 linear ram0", "line 1 '0 100 linear ram0': expected 2 arguments"},
      {"0 100 linear ram0 0\n200 100 linear ram0 0",
       "line 2 '200 100 linear ram0 0': gap: "
       "sectors 100 to 199 are not mapped"},
      {"0 100 zero\n50 100 zero",
       "line 2 '50 100 zero': overlaps the line before, which "
       "ends at sector 100"},
      {"10 100 zero", "gap: sectors 0 to 9"},
      {"0 100 mirrorr ram0 0", "unknown target type 'mirrorr' (known: error, linear"},
      {"0 0 zero", "bad length '0'"},
      {"0 x zero", "bad length 'x'"},
      {"0 100", "expected 'start length target [args...]'"},
      {"0 100 linear nosuch 0", "nosuch"},
      {"0 100 linear 7:99 0", "no device has the numbers 7:99"},
      {"0 100 linear ram0 -1", "invalid device offset '-1'"},
      {"0 2048 linear ram0 1",
       "ram0 has 2048 sectors: sectors 1 to 2048 are past its end"},
      {"0 100 linear ram1 0", "ram1 is held by other"},
      {"0 100 zero 1", "line 1 '0 100 zero 1': no arguments required"},
      {"0 1000 striped 3 8 ram0 0 ram0 400 ram0 800",
       "target length 1000 is not divisible by the number of stripes 3"},
      {"0 96 striped 2 64 ram0 0 ram0 100",
       "per stripe (48) is not divisible by the chunk size 64"},
      {"0 128 striped 2 64 ram0 0", "2 stripes need 2 device and offset pairs"},
      {"0 128 striped 0 64", "invalid stripe count '0'"},
      {"0 128 striped 2 0 ram0 0 ram0 64", "invalid chunk size '0'"},
      {"0 4096 striped 2 64 ram0 0 ram0 1024", "stripe 1: ram0 has 2048 sectors"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.table);
    EXPECT_TRUE(Contains(
        ErrorOf([&] { MappedDevice::create(registry, "bad", "", c.table); }), c.error));
    EXPECT_EQ(registry.find("bad"), nullptr);
  }
  // Nothing was left claimed by the failed attempts.
  EXPECT_EQ(registry.open("ram0", OpenMode::kWrite)->holder(), "");
  // A load that fails leaves the live table and no inactive one.
  MappedDevice& md = MappedDevice::create(registry, "ok", "", "0 100 linear ram0 0");
  EXPECT_TRUE(
      Contains(ErrorOf([&] { md.load("0 100 linear ram0 2000"); }), "ok: table "));
  EXPECT_FALSE(md.has_inactive());
  EXPECT_TRUE(Contains(ErrorOf([&] { md.load("0 100 linear ok 0"); }),
                       "cannot stack ok on itself"));
  // Nor through another: ok2 is on ok, so ok cannot go on ok2.
  MappedDevice::create(registry, "ok2", "", "0 50 linear ok 0");
  EXPECT_TRUE(Contains(ErrorOf([&] { md.load("0 50 linear ok2 0"); }),
                       "cannot stack ok on ok2: ok2 is stacked on ok"));
  EXPECT_TRUE(Contains(ErrorOf([&] { MappedDevice::create(registry, "ok", "", ""); }),
                       "device ok already exists"));
  EXPECT_TRUE(Contains(ErrorOf([&] { MappedDevice::create(registry, "a/b", "", ""); }),
                       "bad device name"));
}

TEST(Dm, ADeviceWithoutATableFailsIoUntilATableIsResumed) {
  DiskRegistry registry;
  registry.create("ram:1M");
  MappedDevice& md = MappedDevice::create(registry, "empty", "", "");
  EXPECT_EQ(md.disk().capacity(), 0u);
  EXPECT_FALSE(md.has_live());
  EXPECT_TRUE(Contains(ErrorOf([&] { md.resume(); }), "no table to resume with"));
  md.load("0 2048 linear ram0 0");
  EXPECT_EQ(md.table_text(), "");
  EXPECT_NE(md.table_text(true), "");
  md.resume();
  EXPECT_EQ(md.disk().capacity(), 2048u);
  BlockHandle h = BlockHandle::open(registry, "empty");
  std::vector<std::byte> buf(4096);
  EXPECT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOk);
}

// A test target that keeps every clone it maps until told to let go: the
// hold point that makes "suspend with I/O in flight" deterministic. On a
// noflush suspend it hands what it holds back (requeue).
struct Held {
  std::mutex mu;
  std::vector<Bio*> bios;
  std::atomic<int> mapped{0};
  std::atomic<bool> requeue{false};
};
Held g_held;

class HoldTarget final : public Target {
 public:
  MapResult map(Bio& clone) override {
    std::lock_guard lock(g_held.mu);
    g_held.bios.push_back(&clone);
    g_held.mapped.fetch_add(1);
    return MapResult::kSubmitted;
  }
  EndIoResult end_io(Bio&, Status&) override {
    return g_held.requeue.load() ? EndIoResult::kRequeue : EndIoResult::kDone;
  }
  void presuspend(bool noflush) override {
    if (!noflush) return;
    g_held.requeue = true;
    Release();
  }
  void resume() override { g_held.requeue = false; }
  std::string table() const override { return {}; }
  static void Release() {
    std::vector<Bio*> bios;
    {
      std::lock_guard lock(g_held.mu);
      bios.swap(g_held.bios);
    }
    for (Bio* b : bios) {
      if (b->op() == Op::kRead) b->zero_fill();
      b->complete(Status::kOk);
    }
  }
};

const TargetType kHoldTarget{
    "test-hold", {1, 0, 0}, 0, [](TargetContext&, TargetArgs) -> std::unique_ptr<Target> {
      return std::make_unique<HoldTarget>();
    }};

void RegisterHold() {
  static const bool once = (register_target_type(kHoldTarget), true);
  (void)once;
}

TEST(Dm, SuspendWaitsForTheIoInTheTargetsAndParksNewIo) {
  RegisterHold();
  DiskRegistry registry;
  MappedDevice& md = MappedDevice::create(registry, "h", "", "0 2048 test-hold");
  g_held.mapped = 0;
  std::thread writer([&] {
    BlockHandle h = BlockHandle::open(registry, "h");
    std::vector<std::byte> buf(4096);
    EXPECT_EQ(h.pwrite(buf.data(), buf.size(), 0), Status::kOk);
  });
  while (g_held.mapped.load() < 1) std::this_thread::yield();
  std::atomic<bool> suspended{false};
  std::thread suspender([&] {
    md.suspend();
    suspended = true;
  });
  // Held in the target: the suspend drains, so it cannot finish yet.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(suspended.load());
  HoldTarget::Release();
  suspender.join();
  writer.join();
  EXPECT_TRUE(md.suspended());
  // New I/O while suspended parks before the table: the target sees nothing.
  std::thread reader([&] {
    BlockHandle h = BlockHandle::open(registry, "h");
    std::vector<std::byte> buf(4096);
    EXPECT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOk);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(g_held.mapped.load(), 1);
  md.resume();
  while (g_held.mapped.load() < 2) std::this_thread::yield();
  HoldTarget::Release();
  reader.join();
}

TEST(Dm, NoflushSuspendKeepsHandedBackBiosForTheNewTable) {
  RegisterHold();
  DiskRegistry registry;
  registry.create("ram:1M");
  MappedDevice& md = MappedDevice::create(registry, "nf", "", "0 2048 test-hold");
  g_held.mapped = 0;
  const auto data = pattern(8192, 3);
  std::thread writer([&] {
    BlockHandle h = BlockHandle::open(registry, "nf");
    EXPECT_EQ(h.pwrite(data.data(), data.size(), 8192), Status::kOk);
  });
  while (g_held.mapped.load() < 1) std::this_thread::yield();
  // The target hands the write back; it waits, not failed, for the table
  // loaded next, and lands on ram0 through it.
  md.suspend(/*noflush=*/true);
  md.load("0 2048 linear ram0 0");
  md.resume();
  writer.join();
  registry.remove("nf");
  BlockHandle ram = BlockHandle::open(registry, "ram0");
  std::vector<std::byte> back(data.size());
  ASSERT_EQ(ram.pread(back.data(), back.size(), 8192), Status::kOk);
  EXPECT_EQ(back, data);
}

// A bio handed back by a noflush suspend is older than one that arrived
// while suspended: after the resume it goes first (dm puts requeued bios
// at the head of md->deferred).
TEST(Dm, RequeuedBiosGoAheadOfThoseParkedWhileSuspended) {
  RegisterHold();
  DiskRegistry registry;
  MappedDevice& md = MappedDevice::create(registry, "ro", "", "0 2048 test-hold");
  g_held.mapped = 0;
  std::vector<std::byte> a(4096), b(4096);
  std::thread first([&] {
    BlockHandle h = BlockHandle::open(registry, "ro");
    EXPECT_EQ(h.pwrite(a.data(), a.size(), 0), Status::kOk);
  });
  while (g_held.mapped.load() < 1) std::this_thread::yield();
  md.suspend(/*noflush=*/true);  // hands the write at sector 0 back
  std::thread second([&] {
    BlockHandle h = BlockHandle::open(registry, "ro");
    EXPECT_EQ(h.pwrite(b.data(), b.size(), 8 * 512), Status::kOk);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // parked by then
  md.resume();
  while (g_held.mapped.load() < 3) std::this_thread::yield();
  std::vector<uint64_t> order;
  {
    std::lock_guard lock(g_held.mu);
    for (Bio* bio : g_held.bios) order.push_back(target_io_start(*bio).iter.sector);
  }
  EXPECT_EQ(order, (std::vector<uint64_t>{0, 8}));
  HoldTarget::Release();
  first.join();
  second.join();
}

TEST(Dm, RequeueOutsideANoflushSuspendFails) {
  RegisterHold();
  DiskRegistry registry;
  MappedDevice& md = MappedDevice::create(registry, "rq", "", "0 2048 test-hold");
  (void)md;
  g_held.mapped = 0;
  g_held.requeue = true;
  std::thread reader([&] {
    BlockHandle h = BlockHandle::open(registry, "rq");
    std::vector<std::byte> buf(4096);
    EXPECT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kIoError);
  });
  while (g_held.mapped.load() < 1) std::this_thread::yield();
  HoldTarget::Release();
  reader.join();
  g_held.requeue = false;
}

// A write with PREFLUSH across several targets: its data goes down only
// once every target's flush is done (dm sends the data after the empty
// flush), or it could reach the media before the writes the flush is for.
TEST(Dm, APreflushWriteSendsItsDataAfterEveryFlush) {
  RegisterHold();
  DiskRegistry registry;
  registry.create("null:1M,wc=1");
  MappedDevice::create(registry, "pf", "", "0 1024 test-hold\n1024 1024 linear null0 0");
  g_held.mapped = 0;
  const uint64_t w0 = registry.get("null0")->stats().ios[kStatWrite];
  std::thread writer([&] {
    BlockHandle h = BlockHandle::open(registry, "pf");
    std::vector<std::byte> buf(4096);
    EXPECT_EQ(h.pwrite(buf.data(), buf.size(), 1024 * 512, BioFlag::kPreflush),
              Status::kOk);
  });
  while (g_held.mapped.load() < 1) std::this_thread::yield();  // the flush, held
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(registry.get("null0")->stats().ios[kStatWrite], w0);
  HoldTarget::Release();
  writer.join();
  EXPECT_EQ(registry.get("null0")->stats().ios[kStatWrite], w0 + 1);
  EXPECT_EQ(g_held.mapped.load(), 1);
}

TEST(Dm, FlushesReachEveryStripeAndAFailingStripeRaisesAnEvent) {
  DiskRegistry registry;
  registry.create("null:1M,wc=1");
  registry.create("null:1M,wc=1");
  MappedDevice& md =
      MappedDevice::create(registry, "sf", "", "0 2048 striped 2 8 null0 0 null1 0");
  const uint64_t f0 = registry.get("null0")->stats().ios[kStatFlush];
  const uint64_t f1 = registry.get("null1")->stats().ios[kStatFlush];
  {
    BlockHandle h = BlockHandle::open(registry, "sf");
    ASSERT_EQ(h.flush(), Status::kOk);
  }
  EXPECT_EQ(registry.get("null0")->stats().ios[kStatFlush], f0 + 1);
  EXPECT_EQ(registry.get("null1")->stats().ios[kStatFlush], f1 + 1);

  // A stripe on an error device: its chunks fail, the stripe shows 'D'
  // and the first failure is an event.
  registry.create("ram:1M");
  MappedDevice::create(registry, "bad", "", "0 1024 error");
  MappedDevice& st =
      MappedDevice::create(registry, "st", "", "0 2048 striped 2 8 ram0 0 bad 0");
  BlockHandle h = BlockHandle::open(registry, "st");
  std::vector<std::byte> buf(4096);
  EXPECT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOk);          // stripe 0
  EXPECT_EQ(h.pread(buf.data(), buf.size(), 4096), Status::kIoError);  // stripe 1
  EXPECT_EQ(h.pread(buf.data(), buf.size(), 4096), Status::kIoError);
  EXPECT_EQ(st.status_text(), fmt::format("0 2048 striped 2 {} {} 1 AD\n",
                                          devt(registry, "ram0"), devt(registry, "bad")));
  EXPECT_EQ(st.event_nr(), 1u);
  EXPECT_EQ(md.event_nr(), 0u);
}

TEST(Dm, MessagesGoToTheTargetAtTheSector) {
  DiskRegistry registry;
  MappedDevice& md = MappedDevice::create(registry, "m", "", "0 100 zero\n100 100 error");
  const std::vector<std::string> argv = {"hello"};
  EXPECT_TRUE(Contains(ErrorOf([&] { md.message(150, argv); }),
                       "this target takes no messages (got 'hello')"));
  EXPECT_TRUE(Contains(ErrorOf([&] { md.message(200, argv); }), "past the end"));
}

}  // namespace
}  // namespace blkstack
