// Partitions served like any block device: an NBD export of a partition
// (its size, its bytes and no others, its flags), the export keeping it
// open so that its disk's table cannot be rescanned away, blkstack serve
// exporting one by name, holders of a replaced partition that never
// dangle, disks that take no partitions (mapped, passthrough), and
// BlockHandle by partition name.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/error.h"
#include "blkstack/io_context.h"
#include "blkstack/page_cache.h"
#include "dm/mapped_device.h"
#include "export/export_table.h"
#include "export/log.h"
#include "export/nbd/handshake.h"
#include "export/nbd/server.h"
#include "nbd_test_util.h"
#include "serve/control_protocol.h"
#include "serve/control_verbs.h"
#include "serve/service.h"
#include "serve_test_util.h"
#include "test_util.h"

namespace blkstack {
namespace {

using nbd::testing::Client;
using testing_util::Contains;
using testing_util::ErrorOf;
using testing_util::ScratchDir;

// An MBR with two primary partitions, in 512-byte sectors: 1 from 2048
// and 2 from 6144, 4096 sectors (2 MiB) each; more with `extra`.
std::vector<std::byte> mbr(bool extra = false) {
  std::vector<std::byte> b(512);
  auto entry = [&](int i, uint32_t start, uint32_t size) {
    const size_t off = 446 + 16 * i;
    b[off + 4] = std::byte{0x83};
    std::memcpy(&b[off + 8], &start, 4);
    std::memcpy(&b[off + 12], &size, 4);
  };
  entry(0, 2048, 4096);
  entry(1, 6144, 4096);
  if (extra) entry(2, 10240, 2048);
  b[510] = std::byte{0x55};
  b[511] = std::byte{0xAA};
  return b;
}

constexpr uint64_t kP1Start = 2048 * 512, kP2Start = 6144 * 512, kPartBytes = 2 << 20;

std::shared_ptr<Disk> disk_with_table(DiskRegistry& reg, const std::string& spec,
                                      bool extra = false) {
  auto disk = reg.create(spec);
  std::vector<std::byte> t = mbr(extra);
  EXPECT_EQ(BlockHandle(disk).pwrite(t.data(), t.size(), 0), Status::kOk);
  disk->rescan_partitions();
  EXPECT_EQ(disk->partitions().size(), extra ? 3u : 2u);
  return disk;
}

std::string bytes_at(Disk& disk, uint64_t off, size_t len) {
  std::string s(len, '\0');
  EXPECT_EQ(
      BlockHandle(Disk::whole(std::shared_ptr<Disk>(std::shared_ptr<Disk>(), &disk)))
          .pread(s.data(), len, off),
      Status::kOk);
  return s;
}

// --- the NBD export of a partition ------------------------------------------

class PartitionExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    set_serve_log_enabled(false);
    disk_ = disk_with_table(registry_, "ram:8M,name=ram0");
    nbd::ServerOptions o;
    o.threads = 1;
    auto p1 = registry_.open("ram0p1", OpenMode::kWrite);
    auto p2 = registry_.open("ram0p2", OpenMode::kRead);
    p2->set_read_only(true);
    server_ = std::make_unique<nbd::Server>(
        o, std::make_shared<const ExportTable>(std::vector<Export>{
               {"p1", "", p1}, {"p2", "", p2}, {"whole", "", disk_}}));
    server_->start();
  }
  void TearDown() override { server_->stop(std::chrono::seconds(2)); }

  std::unique_ptr<Client> open(std::string_view name, uint16_t* flags = nullptr) {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    server_->adopt(sv[0]);
    auto c = std::make_unique<Client>(sv[1]);
    const uint16_t f = c->negotiate(name, /*structured=*/false);
    if (flags) *flags = f;
    return c;
  }

  DiskRegistry registry_;
  std::shared_ptr<Disk> disk_;
  std::unique_ptr<nbd::Server> server_;
};

TEST_F(PartitionExportTest, ServesThePartitionsSizeAndOnlyItsBytes) {
  uint16_t flags = 0;
  auto c = open("p1", &flags);
  EXPECT_EQ(c->size(), kPartBytes);
  EXPECT_EQ(flags & nbd::kFlagReadOnly, 0);
  const std::string before_p2 = bytes_at(*disk_, kP2Start, kPartBytes);
  const std::string a(4096, 'a'), z(4096, 'z');
  EXPECT_EQ(c->io(nbd::kCmdWrite, 0, 4096, a), 0u);
  EXPECT_EQ(c->io(nbd::kCmdWrite, kPartBytes - 4096, 4096, z), 0u);
  EXPECT_EQ(c->io(nbd::kCmdWriteZeroes, 8192, 4096), 0u);
  EXPECT_EQ(c->io(nbd::kCmdFlush, 0, 0), 0u);
  // Past its end: refused, the next partition untouched.
  EXPECT_EQ(c->io(nbd::kCmdWrite, kPartBytes, 4096, a), nbd::kEnospc);
  std::string back;
  EXPECT_EQ(c->io(nbd::kCmdRead, kPartBytes - 4096, 4096, {}, 0, &back), 0u);
  EXPECT_EQ(back, z);
  // On the disk at the partition's start, seen through the whole disk.
  EXPECT_EQ(bytes_at(*disk_, kP1Start, 4096), a);
  EXPECT_EQ(bytes_at(*disk_, kP1Start + kPartBytes - 4096, 4096), z);
  EXPECT_EQ(bytes_at(*disk_, kP2Start, kPartBytes), before_p2);
  EXPECT_EQ(bytes_at(*disk_, 0, 512),
            std::string(reinterpret_cast<const char*>(mbr().data()), 512));
  // The partition counted its I/O.
  EXPECT_EQ(disk_->partition(1)->stats().ios[kStatWrite], 3u);
}

// NBD_CMD_BLOCK_STATUS on a partition: extents at the partition's offsets
// (not the disk's), ending at its end even where the next partition holds
// data.
TEST_F(PartitionExportTest, BlockStatusIsRelativeToThePartitionAndEndsAtIt) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  server_->adopt(sv[0]);
  Client c(sv[1]);
  c.negotiate("p1");  // structured replies, base:allocation
  constexpr uint32_t kKiB64 = 64 << 10, kMiB = 1 << 20;
  // Data at p1's 1 MiB and at the first bytes of p2, right after p1's end.
  ASSERT_EQ(c.io(nbd::kCmdWrite, kMiB, kKiB64, std::string(kKiB64, 'd')), 0u);
  ASSERT_EQ(BlockHandle(disk_).pwrite(std::string(4096, 'n').data(), 4096, kP2Start),
            Status::kOk);
  c.send(nbd::testing::request(nbd::kCmdBlockStatus, 7, 0, kPartBytes, 0));
  nbd::testing::Reply r;
  ASSERT_TRUE(c.read_reply(&r));
  ASSERT_EQ(r.chunk_type, nbd::kReplyTypeBlockStatus);
  std::vector<std::pair<uint32_t, uint32_t>> e;
  for (size_t i = 4; i + 8 <= r.payload.size(); i += 8)
    e.emplace_back(nbd::load32(r.payload.data() + i),
                   nbd::load32(r.payload.data() + i + 4));
  const uint32_t hole = nbd::kStateHole | nbd::kStateZero;
  ASSERT_EQ(e.size(), 3u);
  EXPECT_EQ(e[0], std::make_pair(kMiB, hole));
  EXPECT_EQ(e[1], std::make_pair(kKiB64, 0u));
  EXPECT_EQ(e[2],
            std::make_pair(static_cast<uint32_t>(kPartBytes) - kMiB - kKiB64, hole));
}

TEST_F(PartitionExportTest, ReadOnlyPartitionIsAdvertisedAndRefusesWrites) {
  uint16_t flags = 0;
  auto c = open("p2", &flags);
  EXPECT_EQ(c->size(), kPartBytes);
  EXPECT_NE(flags & nbd::kFlagReadOnly, 0);
  EXPECT_EQ(c->io(nbd::kCmdWrite, 0, 4096, std::string(4096, 'x')), nbd::kEperm);
  std::string back;
  EXPECT_EQ(c->io(nbd::kCmdRead, 0, 4096, {}, 0, &back), 0u);
  EXPECT_EQ(back, bytes_at(*disk_, kP2Start, 4096));
}

TEST_F(PartitionExportTest, RescanRefusedWhileExportedAndHandshakeSizes) {
  EXPECT_EQ(ErrorOf([&] { disk_->rescan_partitions(); }),
            "cannot rescan ram0: ram0p1 is open");
  // The handshake on its own: EXPORT_NAME answers the partition's size.
  auto table = std::make_shared<const ExportTable>(
      std::vector<Export>{{"p1", "", registry_.open("ram0p1", OpenMode::kRead)}});
  nbd::Handshake hs(table);
  hs.output().clear();
  std::string in;
  nbd::testing::put32(in, nbd::kClientFixedNewstyle | nbd::kClientNoZeroes);
  in += nbd::testing::option(nbd::kOptExportName, "p1");
  hs.feed({reinterpret_cast<const std::byte*>(in.data()), in.size()});
  ASSERT_TRUE(hs.done());
  ASSERT_EQ(hs.output().size(), 10u);
  EXPECT_EQ(nbd::load64(hs.output().data()), kPartBytes);
  EXPECT_EQ(hs.result().bdev->name(), "ram0p1");
}

// --- the export table's rules --------------------------------------------------

TEST(PartitionExportTable, KeepsThePartitionOpenAndRespectsClaims) {
  DiskRegistry reg;
  auto disk = disk_with_table(reg, "ram:8M,name=ram0");
  {
    ExportTable t({{"p2", "", reg.open("ram0p2", OpenMode::kWrite)}});
    EXPECT_THROW(disk->rescan_partitions(), BusyError);
  }
  EXPECT_EQ(disk->rescan_partitions().partitions.size(), 2u);
  // A stacked disk holding the whole disk: no partition of it is exported
  // for writing (their bytes overlap).
  auto up = reg.create("passthrough:lower=ram0,name=up");
  EXPECT_TRUE(
      Contains(ErrorOf([&] {
                 ExportTable t({{"p1", "", Disk::open_partition(disk, "ram0p1")}});
               }),
               "is held by up"));
  disk->partition(1)->set_read_only(true);  // read-only: nothing to refuse
  EXPECT_NO_THROW(ExportTable({{"p1", "", Disk::open_partition(disk, "ram0p1")}}));
}

// --- ownership: a rescan never leaves a holder dangling ------------------------

TEST(PartitionOwnership, HolderOfAReplacedPartitionKeepsAValidDevice) {
  DiskRegistry reg;
  auto disk = disk_with_table(reg, "ram:8M,name=ram0");
  std::shared_ptr<BlockDevice> held = disk->partitions()[0];
  // A new table: partition 1 is replaced by a new one.
  std::vector<std::byte> t = mbr(/*extra=*/true);
  ASSERT_EQ(BlockHandle(disk).pwrite(t.data(), t.size(), 0), Status::kOk);
  ASSERT_EQ(disk->rescan_partitions().partitions.size(), 3u);
  ASSERT_NE(disk->partition(1), held);
  // Valid memory (ASan): its name and range, and I/O refused.
  EXPECT_EQ(held->name(), "ram0p1");
  EXPECT_EQ(held->capacity(), 4096u);
  EXPECT_TRUE(held->removed());
  std::vector<std::byte> buf(4096);
  EXPECT_EQ(BlockHandle(held).pread(buf.data(), buf.size(), 0), Status::kOffline);
  EXPECT_FALSE(disk->partition(1)->removed());
  EXPECT_EQ(BlockHandle(reg.open("ram0p1", OpenMode::kRead)).pread(buf.data(), 4096, 0),
            Status::kOk);
}

// --- disks that take no partitions -----------------------------------------

TEST(NoPartitions, MappedAndPassthroughDisksAreNotScanned) {
  DiskRegistry reg;
  auto disk = disk_with_table(reg, "ram:8M,name=ram0");
  // The same bytes (a table at block 0) under a mapped and a passthrough
  // disk: neither reads it, nor rescans on demand (GENHD_FL_NO_PART).
  MappedDevice::create(reg, "vol", "", "0 16384 linear ram0 0");
  auto vol = reg.get("vol");
  EXPECT_TRUE(vol->partitions().empty());
  EXPECT_FALSE(vol->partscan());
  EXPECT_TRUE(
      Contains(ErrorOf([&] { vol->rescan_partitions(); }), "does not take partitions"));
  reg.remove("vol");
  vol.reset();
  auto pt = reg.create("passthrough:lower=ram0,name=pt");
  EXPECT_TRUE(pt->partitions().empty());
  EXPECT_THROW(pt->rescan_partitions(), Error);
  EXPECT_EQ(pt->stats().ios[kStatRead], 0u);
  // A disk of a driver that keeps data does.
  EXPECT_TRUE(disk->partscan());
}

// --- BlockHandle by name --------------------------------------------------------

TEST(PartitionHandle, OpensAPartitionByName) {
  DiskRegistry reg;
  auto disk = disk_with_table(reg, "ram:8M,name=ram0");
  BlockHandle h = BlockHandle::open(reg, "ram0p2");
  EXPECT_EQ(h.size(), kPartBytes);
  EXPECT_EQ(h.device().name(), "ram0p2");
  EXPECT_EQ(&h.disk(), disk.get());
  const std::string x(512, 'x');
  EXPECT_EQ(h.pwrite(x.data(), 512, 0), Status::kOk);
  EXPECT_EQ(bytes_at(*disk, kP2Start, 512), x);
  EXPECT_EQ(h.pwrite(x.data(), 512, kPartBytes), Status::kOutOfRange);
}

// --- blkstack serve --------------------------------------------------------------

class ServePartitionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    set_serve_log_enabled(false);
    image_ = dir_.path("disk.img");
    const int fd = ::open(image_.c_str(), O_CREAT | O_RDWR, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, 8 << 20), 0);
    std::vector<std::byte> t = mbr();
    ASSERT_EQ(::pwrite(fd, t.data(), t.size(), 0), 512);
    ::close(fd);
  }
  void Start(const std::string& exports) {
    ServiceOptions o;
    o.config =
        dir_.write("serve.toml", "[[device]]\nname = \"sda\"\nspec = \"file:" + image_ +
                                     "\"\n" + exports);
    o.control = dir_.path("ctl");
    o.default_listen = "";
    o.threads = 1;
    service_ = std::make_unique<Service>(o);
    service_->start();
    handler_ = serve::make_control_handler(*service_);
  }
  void TearDown() override {
    if (service_) service_->stop();
  }
  std::unique_ptr<Client> Open(std::string_view name) {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    service_->nbd()->adopt(sv[0]);
    auto c = std::make_unique<Client>(sv[1]);
    c->negotiate(name, false);
    return c;
  }
  std::string ErrorCode(const std::string& verb, const nlohmann::json& args) {
    try {
      handler_(serve::ControlRequest{1, verb, args});
    } catch (const serve::ControlError& e) {
      last_error_ = e.what();
      return e.code();
    }
    return "(ok)";
  }

  ScratchDir dir_;
  std::string image_;
  std::unique_ptr<Service> service_;
  serve::ControlHandler handler_;
  std::string last_error_;
};

TEST_F(ServePartitionTest, ExportsAPartitionByNameAndGuardsItsTable) {
  Start("[[export]]\nname = \"boot\"\ndevice = \"sda1\"\n");
  const auto exports = service_->exports();
  ASSERT_EQ(exports.size(), 1u);
  EXPECT_EQ(exports[0].device, "sda1");
  auto c = Open("boot");
  EXPECT_EQ(c->size(), kPartBytes);
  EXPECT_EQ(c->io(nbd::kCmdWrite, 0, 4096, std::string(4096, 'b')), 0u);
  EXPECT_EQ(bytes_at(*service_->device("sda"), kP1Start, 4096), std::string(4096, 'b'));
  // Rescan refused (busy), the device not removed while its partition is
  // exported; once the export goes, both are allowed.
  EXPECT_EQ(ErrorCode("rescan", {{"device", "sda"}}), serve::control_code::kBusy);
  EXPECT_TRUE(Contains(last_error_, "sda1 is open")) << last_error_;
  EXPECT_TRUE(
      Contains(ErrorOf([&] { service_->remove_device("sda"); }), "exported as 'boot'"));
  c.reset();
  service_->remove_export("boot");
  EXPECT_EQ(ErrorCode("rescan", {{"device", "sda"}}), "(ok)");
  service_->add_export("p2", "sda2", "nbd", "");
  EXPECT_EQ(Open("p2")->size(), kPartBytes);
  EXPECT_TRUE(Contains(ErrorOf([&] { service_->add_export("p9", "sda9", "nbd", ""); }),
                       "no partition 'sda9'"));
  EXPECT_TRUE(Contains(ErrorOf([&] { service_->add_export("x", "sdb1", "nbd", ""); }),
                       "no device 'sdb1'"));
}

TEST_F(ServePartitionTest, AMissingPartitionIsRefusedAtStart) {
  EXPECT_TRUE(
      Contains(ErrorOf([&] { Start("[[export]]\nname = \"x\"\ndevice = \"sda3\"\n"); }),
               "has no partition 'sda3'"));
}

// --- buffered I/O on a partition ----------------------------------------------

// The page cache is the disk's: a buffered iocb on a partition lands at the
// partition's start on the disk, and never past the partition's end.
TEST(PartitionBuffered, AnIocbOnAPartitionUsesTheDisksCacheAtItsStart) {
  DiskRegistry registry;
  auto disk = disk_with_table(registry, "ram:8M,name=ram9");
  PageCache::attach(*disk);
  auto p2 = registry.open("ram9p2", OpenMode::kWrite);
  IoContext ctx(4);
  std::string data(4096, 'q');
  Iocb w = Iocb::pwrite(nullptr, data.data(), data.size(), 512);
  w.bdev = p2.get();
  Iocb* list[] = {&w};
  ASSERT_EQ(ctx.submit(list), 1);
  IoEvent ev;
  ASSERT_EQ(ctx.get_events(1, {&ev, 1}, std::chrono::seconds(10)), 1);
  EXPECT_EQ(ev.res, 4096);
  Iocb f = Iocb::fsync(nullptr);
  f.bdev = p2.get();
  list[0] = &f;
  ASSERT_EQ(ctx.submit(list), 1);
  ASSERT_EQ(ctx.get_events(1, {&ev, 1}, std::chrono::seconds(10)), 1);
  EXPECT_EQ(ev.res, 0);
  EXPECT_EQ(bytes_at(*disk, (p2->start() << kSectorShift) + 512, 4096), data)
      << "written back at the partition's start on the disk";
  EXPECT_NE(bytes_at(*disk, 512, 4096), data) << "not at the disk's own offset";

  // Past the partition's end (inside the disk): refused, nothing written.
  const uint64_t tail = (p2->start() << kSectorShift) + p2->size_bytes() - 2048;
  const std::string before = bytes_at(*disk, tail, 2048);
  Iocb past = Iocb::pwrite(nullptr, data.data(), data.size(), p2->size_bytes() - 2048);
  past.bdev = p2.get();
  list[0] = &past;
  ASSERT_EQ(ctx.submit(list), 1);
  ASSERT_EQ(ctx.get_events(1, {&ev, 1}, std::chrono::seconds(10)), 1);
  EXPECT_LT(ev.res, 0);
  list[0] = &f;
  ASSERT_EQ(ctx.submit(list), 1);
  ASSERT_EQ(ctx.get_events(1, {&ev, 1}, std::chrono::seconds(10)), 1);
  EXPECT_EQ(bytes_at(*disk, tail, 2048), before) << "the refused write left no trace";
  char back[4096];
  Iocb r = Iocb::pread(nullptr, back, sizeof back, 512);
  r.bdev = p2.get();
  list[0] = &r;
  ASSERT_EQ(ctx.submit(list), 1);
  ASSERT_EQ(ctx.get_events(1, {&ev, 1}, std::chrono::seconds(10)), 1);
  EXPECT_EQ(ev.res, 4096);
  EXPECT_EQ(std::string(back, sizeof back), data) << "read back through the cache";
}

}  // namespace
}  // namespace blkstack
