// The sysfs-named attributes of a disk: every one reads as Linux prints it,
// the writable ones change the disk live and refuse bad values naming the
// valid ones, read-only and unknown ones say so, and a bio-based disk has
// no scheduler to switch.
#include "serve/disk_attributes.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <map>
#include <mutex>
#include <sstream>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/queue.h"
#include "blkstack/driver/request.h"
#include "blkstack/driver/scheduler.h"
#include "blkstack/error.h"
#include "blkstack/page_cache.h"
#include "serve/control_protocol.h"

namespace blkstack::serve {
namespace {

// A FIFO scheduler with one tunable, as issue 16's schedulers will have.
class TunedFifo final : public Scheduler {
 public:
  void insert(HwQueue&, RequestList& list, bool) override {
    std::lock_guard lock(mu_);
    while (Request* rq = list.pop_front()) held_.push_back(rq);
  }
  Request* dispatch(HwQueue&) override {
    std::lock_guard lock(mu_);
    if (held_.empty()) return nullptr;
    Request* rq = held_.front();
    held_.erase(held_.begin());
    return rq;
  }
  bool has_work(const HwQueue&) const override {
    std::lock_guard lock(mu_);
    return !held_.empty();
  }
  std::vector<std::pair<std::string, std::string>> tunables() const override {
    return {{"fifo_batch", std::to_string(batch_)}};
  }
  void set_tunable(std::string_view name, std::string_view value) override {
    if (name != "fifo_batch") Scheduler::set_tunable(name, value);
    const int v = std::atoi(std::string(value).c_str());
    if (v < 1 || v > 64) throw Error("fifo_batch must be 1 to 64");
    batch_ = v;
  }

 private:
  mutable std::mutex mu_;
  std::vector<Request*> held_;
  int batch_ = 16;
};

const SchedulerType kTunedFifo{
    "test-tuned", "tests: FIFO with a tunable",
    [](Queue&) -> std::unique_ptr<Scheduler> { return std::make_unique<TunedFifo>(); }};

void RegisterOnce() {
  static const bool done = [] {
    register_scheduler_type(kTunedFifo);
    return true;
  }();
  (void)done;
}

// queue/scheduler as Linux prints it: every scheduler, the current one in
// brackets.
std::string Line(std::string_view current) {
  std::string out;
  for (const SchedulerType* t : scheduler_types()) {
    if (!out.empty()) out += ' ';
    out += t->name == current ? fmt::format("[{}]", t->name) : std::string(t->name);
  }
  return out;
}

std::string CodeOf(std::function<void()> fn) {
  try {
    fn();
  } catch (const ControlError& e) {
    return e.code() + ": " + e.what();
  }
  return "";
}

class DiskAttributesTest : public ::testing::Test {
 protected:
  void SetUp() override { RegisterOnce(); }
  DiskRegistry registry_;
};

TEST_F(DiskAttributesTest, RequestBasedDiskListsEveryAttribute) {
  auto disk = registry_.create("ram:4M,queue_mode=mq,name=mq0");
  std::map<std::string, bool> seen;
  for (const DiskAttribute& a : list_disk_attributes(*disk)) {
    seen[a.name] = a.writable;
    EXPECT_EQ(a.value, read_disk_attribute(*disk, a.name)) << a.name;
  }
  const std::map<std::string, bool> want = {
      {"dev", false},
      {"inflight", false},
      {"queue/discard_granularity", false},
      {"queue/discard_max_bytes", false},
      {"queue/fua", false},
      {"queue/hw_sector_size", false},
      {"queue/io_poll", false},
      {"queue/logical_block_size", false},
      {"queue/max_hw_sectors_kb", false},
      {"queue/max_sectors_kb", true},
      {"queue/max_segment_size", false},
      {"queue/max_segments", false},
      {"queue/nomerges", true},
      {"queue/nr_requests", true},
      {"queue/optimal_io_size", false},
      {"queue/physical_block_size", false},
      {"queue/read_ahead_kb", true},
      {"queue/rotational", true},
      {"queue/scheduler", true},
      {"queue/write_cache", true},
      {"queue/write_zeroes_max_bytes", false},
      {"ro", false},
      {"size", false},
      {"stat", false},
      {"vm/cache_budget_kb", true},
      {"vm/dirty_background_ratio", true},
      {"vm/dirty_expire_centisecs", true},
      {"vm/dirty_ratio", true},
      {"vm/dirty_writeback_centisecs", true},
  };
  EXPECT_EQ(seen, want);
}

TEST_F(DiskAttributesTest, PageCacheSettingsReadAndSet) {
  auto disk = registry_.create("ram:4M,name=pc0");
  // Linux's defaults, before any cache is attached.
  EXPECT_EQ(read_disk_attribute(*disk, "queue/read_ahead_kb"), "128");
  EXPECT_EQ(read_disk_attribute(*disk, "vm/dirty_ratio"), "20");
  EXPECT_EQ(read_disk_attribute(*disk, "vm/dirty_background_ratio"), "10");
  EXPECT_EQ(read_disk_attribute(*disk, "vm/dirty_expire_centisecs"), "3000");
  EXPECT_EQ(read_disk_attribute(*disk, "vm/dirty_writeback_centisecs"), "500");
  EXPECT_EQ(disk->page_cache(), nullptr);
  EXPECT_EQ(write_disk_attribute(*disk, "vm/dirty_ratio", "30\n"), "30");
  ASSERT_NE(disk->page_cache(), nullptr);
  EXPECT_EQ(disk->page_cache()->settings().dirty_ratio, 30u);
  EXPECT_EQ(write_disk_attribute(*disk, "queue/read_ahead_kb", "512"), "512");
  try {
    write_disk_attribute(*disk, "vm/dirty_background_ratio", "40");
    FAIL() << "a background ratio above dirty_ratio was taken";
  } catch (const ControlError& e) {
    EXPECT_NE(std::string(e.what()).find("dirty_ratio"), std::string::npos) << e.what();
  }
  EXPECT_THROW(write_disk_attribute(*disk, "vm/dirty_ratio", "0"), ControlError);
  EXPECT_EQ(read_disk_attribute(*disk, "vm/dirty_background_ratio"), "10");
}

TEST_F(DiskAttributesTest, ValuesAreFormattedAsLinuxPrintsThem) {
  auto disk = registry_.create("ram:4M,queue_mode=mq,name=mq0");
  EXPECT_EQ(read_disk_attribute(*disk, "size"), "8192");
  EXPECT_EQ(read_disk_attribute(*disk, "ro"), "0");
  EXPECT_EQ(read_disk_attribute(*disk, "dev"),
            fmt::format("{}:{}", disk->major(), disk->minor()));
  EXPECT_EQ(read_disk_attribute(*disk, "queue/logical_block_size"), "512");
  EXPECT_EQ(read_disk_attribute(*disk, "queue/scheduler"), Line("none"));
  EXPECT_EQ(read_disk_attribute(*disk, "queue/write_cache"), "write through");
  EXPECT_EQ(read_disk_attribute(*disk, "queue/max_hw_sectors_kb"),
            std::to_string(disk->limits().max_hw_sectors / 2));
  EXPECT_EQ(read_disk_attribute(*disk, "queue/max_sectors_kb"),
            std::to_string(disk->limits().max_io_sectors() / 2));
  EXPECT_EQ(read_disk_attribute(*disk, "inflight"), "       0        0");

  // stat: 17 fields of width 8, counting what was done.
  BlockHandle h(disk);
  std::vector<char> buf(4096, 'x');
  ASSERT_EQ(h.pwrite(buf.data(), buf.size(), 0), Status::kOk);
  ASSERT_EQ(h.pread(buf.data(), buf.size(), 0), Status::kOk);
  const std::string stat = read_disk_attribute(*disk, "stat");
  EXPECT_EQ(stat.size(), 17u * 9 - 1) << stat;
  std::istringstream in(stat);
  std::vector<uint64_t> f;
  for (uint64_t v; in >> v;) f.push_back(v);
  ASSERT_EQ(f.size(), 17u);
  EXPECT_EQ(f[0], 1u);  // read ios
  EXPECT_EQ(f[2], 8u);  // read sectors
  EXPECT_EQ(f[4], 1u);  // write ios
  EXPECT_EQ(f[6], 8u);  // write sectors
  EXPECT_EQ(f[8], 0u);  // in flight
}

TEST_F(DiskAttributesTest, SchedulerSwitchesAndItsTunablesAppear) {
  auto disk = registry_.create("ram:4M,queue_mode=mq,name=mq0");
  auto* q = dynamic_cast<Queue*>(&disk->driver());
  ASSERT_NE(q, nullptr);
  EXPECT_NE(CodeOf([&] { read_disk_attribute(*disk, "queue/iosched/fifo_batch"); }), "");
  EXPECT_EQ(write_disk_attribute(*disk, "queue/scheduler", "test-tuned\n"),
            Line("test-tuned"));
  EXPECT_EQ(q->scheduler_name(), "test-tuned");
  EXPECT_EQ(read_disk_attribute(*disk, "queue/iosched/fifo_batch"), "16");
  EXPECT_EQ(write_disk_attribute(*disk, "queue/iosched/fifo_batch", "4"), "4");
  bool listed = false;
  for (const DiskAttribute& a : list_disk_attributes(*disk)) {
    if (a.name == "queue/iosched/fifo_batch") listed = a.writable && a.value == "4";
  }
  EXPECT_TRUE(listed);
  EXPECT_EQ(
      CodeOf([&] { write_disk_attribute(*disk, "queue/iosched/fifo_batch", "99"); }),
      "invalid_argument: queue/iosched/fifo_batch: fifo_batch must be 1 to 64");
  EXPECT_EQ(CodeOf([&] { write_disk_attribute(*disk, "queue/iosched/quantum", "1"); }),
            "not_found: disk 'mq0' has no attribute 'queue/iosched/quantum'");
  // I/O still flows through it.
  BlockHandle h(disk);
  std::vector<char> buf(4096, 'x');
  EXPECT_EQ(h.pwrite(buf.data(), buf.size(), 0), Status::kOk);
  const std::string bad =
      CodeOf([&] { write_disk_attribute(*disk, "queue/scheduler", "nope"); });
  EXPECT_EQ(bad, "invalid_argument: queue/scheduler: 'nope' is not one of: " +
                     Line("test-tuned"));
  EXPECT_EQ(write_disk_attribute(*disk, "queue/scheduler", "none"), Line("none"));
}

TEST_F(DiskAttributesTest, NrRequestsAndNomerges) {
  auto disk = registry_.create("ram:4M,queue_mode=mq,name=mq0");
  auto* q = dynamic_cast<Queue*>(&disk->driver());
  EXPECT_EQ(write_disk_attribute(*disk, "queue/nr_requests", "32"), "32");
  EXPECT_EQ(q->nr_requests(), 32u);
  EXPECT_EQ(CodeOf([&] { write_disk_attribute(*disk, "queue/nr_requests", "0"); }),
            "invalid_argument: queue/nr_requests: '0' is not a number from 1 to 2048");
  EXPECT_NE(CodeOf([&] { write_disk_attribute(*disk, "queue/nr_requests", "12abc"); }),
            "");
  EXPECT_NE(CodeOf([&] { write_disk_attribute(*disk, "queue/nr_requests", "-1"); }), "");
  EXPECT_EQ(write_disk_attribute(*disk, "queue/nomerges", "2"), "2");
  EXPECT_EQ(q->nomerges(), 2u);
  EXPECT_EQ(CodeOf([&] { write_disk_attribute(*disk, "queue/nomerges", "3"); }),
            "invalid_argument: queue/nomerges: '3' is not a number from 0 to 2");
}

TEST_F(DiskAttributesTest, MaxSectorsKbWithinTheHardwareLimit) {
  auto disk = registry_.create("ram:4M,queue_mode=mq,name=mq0");
  const std::string hw = read_disk_attribute(*disk, "queue/max_hw_sectors_kb");
  EXPECT_EQ(write_disk_attribute(*disk, "queue/max_sectors_kb", "64"), "64");
  EXPECT_EQ(disk->limits().max_io_sectors(), 128u);
  EXPECT_EQ(
      CodeOf([&] { write_disk_attribute(*disk, "queue/max_sectors_kb", "2"); }),
      "invalid_argument: queue/max_sectors_kb: '2' is not a number from 4 to " + hw);
  const std::string over = std::to_string(std::stoul(hw) + 1);
  EXPECT_NE(CodeOf([&] { write_disk_attribute(*disk, "queue/max_sectors_kb", over); }),
            "");
  // I/O larger than the new limit splits and still works.
  BlockHandle h(disk);
  std::vector<char> buf(256 << 10, 'z'), back(256 << 10);
  ASSERT_EQ(h.pwrite(buf.data(), buf.size(), 0), Status::kOk);
  ASSERT_EQ(h.pread(back.data(), back.size(), 0), Status::kOk);
  EXPECT_EQ(buf, back);
  EXPECT_EQ(write_disk_attribute(*disk, "queue/max_sectors_kb", hw), hw);
}

TEST_F(DiskAttributesTest, RotationalAndWriteCache) {
  auto disk = registry_.create("null:4M,wc=1,name=wc0");
  EXPECT_EQ(read_disk_attribute(*disk, "queue/rotational"), "0");
  EXPECT_EQ(write_disk_attribute(*disk, "queue/rotational", "1"), "1");
  EXPECT_TRUE(disk->rotational());
  EXPECT_EQ(CodeOf([&] { write_disk_attribute(*disk, "queue/rotational", "yes"); }),
            "invalid_argument: queue/rotational: 'yes' is not 0 or 1");

  // With the cache on a flush reaches the disk; written through, it is done
  // at once (nothing to make durable) and never counted.
  BlockHandle h(disk);
  EXPECT_EQ(read_disk_attribute(*disk, "queue/write_cache"), "write back");
  ASSERT_EQ(h.flush(), Status::kOk);
  EXPECT_EQ(disk->stats().ios[kStatFlush], 1u);
  EXPECT_EQ(write_disk_attribute(*disk, "queue/write_cache", "write through\n"),
            "write through");
  EXPECT_FALSE(disk->write_cache());
  ASSERT_EQ(h.flush(), Status::kOk);
  EXPECT_EQ(disk->stats().ios[kStatFlush], 1u);
  EXPECT_EQ(write_disk_attribute(*disk, "queue/write_cache", "write back"), "write back");
  ASSERT_EQ(h.flush(), Status::kOk);
  EXPECT_EQ(disk->stats().ios[kStatFlush], 2u);
  EXPECT_NE(
      CodeOf([&] { write_disk_attribute(*disk, "queue/write_cache", "sometimes"); }), "");

  // A device without a cache cannot have one turned on.
  auto plain = registry_.create("null:4M,name=plain0");
  EXPECT_EQ(
      CodeOf([&] { write_disk_attribute(*plain, "queue/write_cache", "write back"); }),
      "invalid_argument: queue/write_cache: the device has no volatile cache; only "
      "\"write through\"");
}

TEST_F(DiskAttributesTest, ReadOnlyAndUnknownAttributes) {
  auto disk = registry_.create("ram:4M,queue_mode=mq,name=mq0");
  EXPECT_EQ(CodeOf([&] { write_disk_attribute(*disk, "size", "1"); }),
            "invalid_argument: size is read-only");
  EXPECT_EQ(
      CodeOf([&] { write_disk_attribute(*disk, "queue/logical_block_size", "4096"); }),
      "invalid_argument: queue/logical_block_size is read-only");
  EXPECT_EQ(CodeOf([&] { read_disk_attribute(*disk, "queue/bogus"); }),
            "not_found: disk 'mq0' has no attribute 'queue/bogus'");
  EXPECT_EQ(CodeOf([&] { write_disk_attribute(*disk, "../../etc/passwd", "x"); }),
            "not_found: disk 'mq0' has no attribute '../../etc/passwd'");
  EXPECT_EQ(CodeOf([&] { read_disk_attribute(*disk, "queue/iosched/"); }),
            "not_found: disk 'mq0' has no attribute 'queue/iosched/'");
}

TEST_F(DiskAttributesTest, BioBasedDiskHasNoSchedulerToSwitch) {
  auto disk = registry_.create("ram:4M,queue_mode=bio,name=bio0");
  EXPECT_EQ(read_disk_attribute(*disk, "queue/scheduler"), "none");
  EXPECT_EQ(CodeOf([&] { write_disk_attribute(*disk, "queue/scheduler", "test-tuned"); }),
            "invalid_argument: queue/scheduler: a bio-based disk has no I/O scheduler");
  EXPECT_NE(CodeOf([&] { read_disk_attribute(*disk, "queue/nr_requests"); }), "");
  for (const DiskAttribute& a : list_disk_attributes(*disk)) {
    EXPECT_NE(a.name, "queue/nr_requests");
    EXPECT_NE(a.name, "queue/nomerges");
    if (a.name == "queue/scheduler") {
      EXPECT_FALSE(a.writable);
    }
  }
  EXPECT_EQ(write_disk_attribute(*disk, "queue/max_sectors_kb", "16"), "16");
}

}  // namespace
}  // namespace blkstack::serve
