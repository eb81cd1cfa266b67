// Partition tables: the MBR and GPT parsers over hand-made images (every
// field, the numbering, the malformed tables each refused with a message),
// and Disk::rescan_partitions (names, busy while open or claimed, a scan
// when a disk is made from a spec).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/error.h"
#include "disk/partitions/check.h"
#include "test_util.h"

namespace blkstack {
namespace {

using partitions::ScanSource;
using testing_util::Contains;
using testing_util::ErrorOf;

// A disk image in memory, `blocks` blocks of `bs` bytes.
struct Image {
  unsigned bs;
  std::vector<std::byte> bytes;
  Image(uint64_t blocks, unsigned bs_) : bs(bs_), bytes(blocks * bs_) {}

  std::byte* at(uint64_t lba, size_t off = 0) { return bytes.data() + lba * bs + off; }
  void put16(uint64_t lba, size_t off, uint16_t v) { std::memcpy(at(lba, off), &v, 2); }
  void put32(uint64_t lba, size_t off, uint32_t v) { std::memcpy(at(lba, off), &v, 4); }
  void put64(uint64_t lba, size_t off, uint64_t v) { std::memcpy(at(lba, off), &v, 8); }

  // One 16-byte MBR-style entry `i` in the record at `lba`.
  void mbr_entry(uint64_t lba, int i, uint8_t boot, uint8_t type, uint32_t start,
                 uint32_t size) {
    const size_t off = 446 + 16 * i;
    *at(lba, off) = std::byte{boot};
    *at(lba, off + 4) = std::byte{type};
    put32(lba, off + 8, start);
    put32(lba, off + 12, size);
    *at(lba, 510) = std::byte{0x55};
    *at(lba, 511) = std::byte{0xAA};
  }

  ScanSource source() {
    ScanSource s;
    s.blocks = bytes.size() / bs;
    s.block_size = bs;
    s.read = [this](uint64_t lba, std::span<std::byte> out) {
      if (lba * bs > bytes.size() || out.size() > bytes.size() - lba * bs) return false;
      std::memcpy(out.data(), at(lba), out.size());
      return true;
    };
    return s;
  }
  PartitionTable scan() { return partitions::scan(source()); }
};

// --- MBR ------------------------------------------------------------------

// Primaries 1 and 3 (slot 2 empty), an extended 4 with two logicals.
Image mbr_with_logicals() {
  Image img(8192, 512);
  img.put32(0, 440, 0x1234abcd);
  img.mbr_entry(0, 0, 0x80, 0x83, 2048, 1024);
  img.mbr_entry(0, 2, 0, 0x0c, 3072, 1024);
  img.mbr_entry(0, 3, 0, 0x05, 4096, 4096);
  // EBR at 4096: logical at +2048, link to the next EBR at ext+1024.
  img.mbr_entry(4096, 0, 0, 0x82, 2048, 512);
  img.mbr_entry(4096, 1, 0, 0x05, 1024, 1024);
  // EBR at 5120: logical at +64, no link.
  img.mbr_entry(5120, 0, 0, 0x83, 64, 512);
  return img;
}

TEST(MbrTest, PrimaryExtendedAndLogicalsNumberedAsLinux) {
  Image img = mbr_with_logicals();
  const PartitionTable t = img.scan();
  EXPECT_EQ(t.error, "");
  EXPECT_EQ(t.label, "dos");
  EXPECT_EQ(t.id, "0x1234abcd");
  ASSERT_EQ(t.partitions.size(), 5u);
  const unsigned numbers[] = {1, 3, 4, 5, 6};
  const uint64_t starts[] = {2048, 3072, 4096, 6144, 5184};
  const char* types[] = {"83", "c", "5", "82", "83"};
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(t.partitions[i].number, numbers[i]);
    EXPECT_EQ(t.partitions[i].start, starts[i]);
    EXPECT_EQ(t.partitions[i].type, types[i]);
  }
  EXPECT_TRUE(t.partitions[0].bootable);
  EXPECT_FALSE(t.partitions[1].bootable);
  EXPECT_TRUE(t.partitions[2].extended);
  EXPECT_EQ(t.partitions[2].size, 4096u);
  EXPECT_EQ(t.partitions[3].uuid, "1234abcd-05");
}

TEST(MbrTest, NoSignatureOrBadBootByteIsNoTable) {
  Image img(64, 512);
  EXPECT_EQ(img.scan().label, "");
  img.mbr_entry(0, 0, 0x12, 0x83, 8, 8);  // a boot sector's code, not a table
  EXPECT_EQ(img.scan().label, "");
}

TEST(MbrTest, EbrLoopIsRefused) {
  Image img = mbr_with_logicals();
  img.mbr_entry(5120, 1, 0, 0x05, 0, 1024);  // back to the first EBR
  const PartitionTable t = img.scan();
  EXPECT_TRUE(Contains(t.error, "loops back to block 4096")) << t.error;
  EXPECT_TRUE(t.partitions.empty());
}

TEST(MbrTest, SelfLinkedEbrIsRefused) {
  Image img = mbr_with_logicals();
  img.mbr_entry(4096, 1, 0, 0x05, 0, 1024);
  EXPECT_TRUE(Contains(img.scan().error, "loops back")) << img.scan().error;
}

TEST(MbrTest, EntriesPastTheEndAreRefused) {
  Image img = mbr_with_logicals();
  img.mbr_entry(0, 1, 0, 0x83, 8000, 1000);
  PartitionTable t = img.scan();
  EXPECT_TRUE(Contains(t.error, "partition 2 (blocks 8000 to 8999) is outside the disk"))
      << t.error;
  EXPECT_TRUE(t.partitions.empty());

  Image img2 = mbr_with_logicals();
  img2.mbr_entry(5120, 0, 0, 0x83, 64, 5000);  // beyond its extended partition
  t = img2.scan();
  EXPECT_TRUE(Contains(t.error, "logical partition 6")) << t.error;
  EXPECT_TRUE(Contains(t.error, "extended partition")) << t.error;
  EXPECT_TRUE(t.partitions.empty());
}

TEST(MbrTest, FourKiBBlocks) {
  Image img(1024, 4096);
  img.mbr_entry(0, 0, 0, 0x83, 256, 512);
  const PartitionTable t = img.scan();
  EXPECT_EQ(t.sector_size, 4096u);
  ASSERT_EQ(t.partitions.size(), 1u);
  EXPECT_EQ(t.partitions[0].start, 256u);
  EXPECT_EQ(t.partitions[0].size, 512u);
}

// --- GPT ------------------------------------------------------------------

constexpr uint8_t kLinuxFs[16] = {0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47,
                                  0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4};

// Writes a header at `lba` and its array at `array_lba` (count entries of
// `esize` bytes, already filled in at the array's place), with both CRCs.
void write_gpt_header(Image& img, uint64_t lba, uint64_t alt, uint64_t array_lba,
                      uint32_t count, uint32_t esize) {
  std::memset(img.at(lba), 0, img.bs);
  std::memcpy(img.at(lba), "EFI PART", 8);
  img.put32(lba, 8, 0x00010000);
  img.put32(lba, 12, 92);
  img.put64(lba, 24, lba);
  img.put64(lba, 32, alt);
  const uint64_t blocks = img.bytes.size() / img.bs;
  img.put64(lba, 40, 34);
  img.put64(lba, 48, blocks - 34);
  for (int i = 0; i < 16; ++i) *img.at(lba, 56 + i) = std::byte(0x10 + i);
  img.put64(lba, 72, array_lba);
  img.put32(lba, 80, count);
  img.put32(lba, 84, esize);
  img.put32(lba, 88, partitions::crc32({img.at(array_lba), uint64_t{count} * esize}));
  img.put32(lba, 16, partitions::crc32({img.at(lba), 92}));
}

// A protective MBR, entries 1 and 3 of `count` (a gap at 2), both headers.
Image gpt_image(uint64_t blocks, unsigned bs, uint32_t count = 128,
                uint32_t esize = 128) {
  Image img(blocks, bs);
  img.mbr_entry(0, 0, 0, 0xEE, 1, static_cast<uint32_t>(blocks - 1));
  const uint64_t array_blocks = (uint64_t{count} * esize + bs - 1) / bs;
  auto fill = [&](uint64_t array_lba) {
    auto entry = [&](uint32_t i, uint64_t first, uint64_t last, const char* name) {
      std::byte* e = img.at(array_lba) + uint64_t{i} * esize;
      std::memcpy(e, kLinuxFs, 16);
      for (int k = 0; k < 16; ++k) e[16 + k] = std::byte(i * 16 + k);
      std::memcpy(e + 32, &first, 8);
      std::memcpy(e + 40, &last, 8);
      const uint64_t attrs = (uint64_t{1} << 60) | 1;
      std::memcpy(e + 48, &attrs, 8);
      for (size_t k = 0; name[k]; ++k) e[56 + 2 * k] = std::byte(name[k]);
    };
    entry(0, 40, 99, "root");
    entry(2, 200, 299, "data");
  };
  fill(2);
  write_gpt_header(img, 1, blocks - 1, 2, count, esize);
  fill(blocks - 1 - array_blocks);
  write_gpt_header(img, blocks - 1, 1, blocks - 1 - array_blocks, count, esize);
  return img;
}

TEST(GptTest, EntriesWithGapsAndEveryField) {
  Image img = gpt_image(1024, 512);
  const PartitionTable t = img.scan();
  EXPECT_EQ(t.error, "");
  EXPECT_EQ(t.label, "gpt");
  EXPECT_EQ(t.id, "13121110-1514-1716-1819-1A1B1C1D1E1F");
  EXPECT_EQ(t.first_lba, 34u);
  EXPECT_EQ(t.last_lba, 990u);
  ASSERT_EQ(t.partitions.size(), 2u);
  EXPECT_EQ(t.partitions[0].number, 1u);
  EXPECT_EQ(t.partitions[1].number, 3u);
  EXPECT_EQ(t.partitions[0].start, 40u);
  EXPECT_EQ(t.partitions[0].size, 60u);
  EXPECT_EQ(t.partitions[0].type, "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
  EXPECT_EQ(t.partitions[1].uuid, "23222120-2524-2726-2829-2A2B2C2D2E2F");
  EXPECT_EQ(t.partitions[1].name, "data");
  EXPECT_EQ(gpt_attrs_string(t.partitions[0].attrs), "RequiredPartition GUID:60");
}

TEST(GptTest, DamagedPrimaryFallsBackToTheBackup) {
  Image img = gpt_image(1024, 512);
  *img.at(1, 60) ^= std::byte{1};  // the disk GUID: the header CRC no longer matches
  const PartitionTable t = img.scan();
  EXPECT_EQ(t.error, "");
  ASSERT_EQ(t.partitions.size(), 2u);
  ASSERT_EQ(t.warnings.size(), 1u);
  EXPECT_TRUE(Contains(t.warnings[0], "bad header CRC")) << t.warnings[0];
}

TEST(GptTest, BadCrcsOnBothHeadersGiveNoPartitions) {
  Image img = gpt_image(1024, 512);
  *img.at(1, 60) ^= std::byte{1};
  *img.at(2, 33) ^= std::byte{1};     // primary array, too
  *img.at(1023, 60) ^= std::byte{1};  // backup header
  const PartitionTable t = img.scan();
  EXPECT_EQ(t.label, "gpt");
  EXPECT_TRUE(Contains(t.error, "both GPT headers are invalid")) << t.error;
  EXPECT_TRUE(Contains(t.error, "backup: bad header CRC")) << t.error;
  EXPECT_TRUE(t.partitions.empty());

  Image img2 = gpt_image(1024, 512);
  *img2.at(2, 33) ^= std::byte{1};          // primary array CRC
  *img2.at(1023 - 32, 33) ^= std::byte{1};  // backup array CRC
  EXPECT_TRUE(Contains(img2.scan().error, "bad entry array CRC")) << img2.scan().error;
}

TEST(GptTest, AnyEntryCountAndSizeWithinBounds) {
  Image img = gpt_image(2048, 512, 16, 256);
  PartitionTable t = img.scan();
  EXPECT_EQ(t.error, "");
  ASSERT_EQ(t.partitions.size(), 2u);
  EXPECT_EQ(t.partitions[1].name, "data");

  Image absurd = gpt_image(1024, 512, 8, 128);
  for (uint64_t lba : {uint64_t{1}, uint64_t{1023}}) {
    absurd.put32(lba, 80, 0x10000000);
    absurd.put32(lba, 16, 0);
    absurd.put32(lba, 16, partitions::crc32({absurd.at(lba), 92}));
  }
  t = absurd.scan();
  EXPECT_TRUE(Contains(t.error, "268435456 entries of 128 bytes is more than"))
      << t.error;
  EXPECT_TRUE(t.partitions.empty());
}

TEST(GptTest, EntryPastTheEndIsRefused) {
  Image img = gpt_image(1024, 512);
  for (uint64_t array : {uint64_t{2}, uint64_t{1023 - 32}}) {
    const uint64_t last = 5000;
    std::memcpy(img.at(array) + 2 * 128 + 40, &last, 8);
  }
  write_gpt_header(img, 1, 1023, 2, 128, 128);
  write_gpt_header(img, 1023, 1, 1023 - 32, 128, 128);
  const PartitionTable t = img.scan();
  EXPECT_TRUE(Contains(t.error, "partition 3 (blocks 200 to 5000) is outside"))
      << t.error;
  EXPECT_TRUE(t.partitions.empty());
}

TEST(GptTest, HybridMbrIsReadAsGpt) {
  Image img = gpt_image(1024, 512);
  img.mbr_entry(0, 0, 0, 0xEE, 1, 39);
  img.mbr_entry(0, 1, 0x80, 0x83, 40, 60);
  const PartitionTable t = img.scan();
  EXPECT_EQ(t.label, "gpt");
  EXPECT_EQ(t.partitions.size(), 2u);
}

TEST(GptTest, FourKiBBlocks) {
  Image img = gpt_image(1024, 4096);
  const PartitionTable t = img.scan();
  EXPECT_EQ(t.error, "");
  EXPECT_EQ(t.sector_size, 4096u);
  ASSERT_EQ(t.partitions.size(), 2u);
  EXPECT_EQ(t.partitions[1].start, 200u);
}

TEST(GptTest, Utf16NamesBecomeUtf8) {
  Image img = gpt_image(1024, 512);
  for (uint64_t array : {uint64_t{2}, uint64_t{1023 - 32}}) {
    std::byte* name = img.at(array) + 56;
    const uint16_t units[] = {0x00E9, 0x20AC, 0xD83D, 0xDE00, 0};  // é € 😀
    std::memcpy(name, units, sizeof units);
  }
  write_gpt_header(img, 1, 1023, 2, 128, 128);
  write_gpt_header(img, 1023, 1, 1023 - 32, 128, 128);
  EXPECT_EQ(img.scan().partitions[0].name, "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
}

TEST(GptTest, Crc32MatchesZlib) {
  const char* s = "123456789";
  EXPECT_EQ(partitions::crc32({reinterpret_cast<const std::byte*>(s), 9}), 0xCBF43926u);
}

// --- adversarial tables ----------------------------------------------------

// Re-signs the header at `lba` after a field was changed (size 92).
void resign(Image& img, uint64_t lba) {
  img.put32(lba, 16, 0);
  img.put32(lba, 16, partitions::crc32({img.at(lba), 92}));
}

TEST(MbrTest, LongChainWithoutLoopIsBounded) {
  // 300 EBRs, each one logical and a link to the next: no loop, but more
  // records than kMaxLogicals, so the walk stops with a message.
  Image img(4096, 512);
  img.mbr_entry(0, 0, 0, 0x05, 8, 4000);
  for (uint32_t i = 0; i < 300; ++i) {
    const uint64_t ebr = 8 + 8 * i;
    img.mbr_entry(ebr, 0, 0, 0x83, 1, 4);
    if (i + 1 < 300) img.mbr_entry(ebr, 1, 0, 0x05, 8 * (i + 1), 8);
  }
  const PartitionTable t = img.scan();
  EXPECT_TRUE(Contains(t.error, "longer than 256 records")) << t.error;
  EXPECT_TRUE(t.partitions.empty());
}

TEST(MbrTest, OverlappingPartitionsAreKeptAsLinuxKeepsThem) {
  // Neither the kernel's msdos.c nor libblkid refuses overlaps.
  Image img(1024, 512);
  img.mbr_entry(0, 0, 0, 0x83, 8, 100);
  img.mbr_entry(0, 1, 0, 0x83, 50, 100);
  const PartitionTable t = img.scan();
  EXPECT_EQ(t.error, "");
  EXPECT_EQ(t.partitions.size(), 2u);
}

TEST(GptTest, HeaderSizeOutsideItsBoundsIsRefused) {
  for (uint32_t size : {91u, 513u, 0xFFFFFFFFu}) {
    Image img = gpt_image(1024, 512);
    for (uint64_t lba : {uint64_t{1}, uint64_t{1023}}) {
      img.put32(lba, 12, size);
      resign(img, lba);
    }
    const PartitionTable t = img.scan();
    EXPECT_TRUE(
        Contains(t.error, fmt::format("header size {} is not from 92 to 512", size)))
        << t.error;
    EXPECT_TRUE(t.partitions.empty());
  }
}

TEST(GptTest, UsableRangeInconsistentIsRefused) {
  Image img = gpt_image(1024, 512);
  for (uint64_t lba : {uint64_t{1}, uint64_t{1023}}) {
    img.put64(lba, 40, 500);  // first usable past last usable (990)
    img.put64(lba, 48, 400);
    resign(img, lba);
  }
  EXPECT_TRUE(Contains(img.scan().error, "usable blocks 500 to 400")) << img.scan().error;

  Image past = gpt_image(1024, 512);
  for (uint64_t lba : {uint64_t{1}, uint64_t{1023}}) {
    past.put64(lba, 48, 1024);  // last usable past the disk
    resign(past, lba);
  }
  EXPECT_TRUE(Contains(past.scan().error, "not inside the disk's 1024"))
      << past.scan().error;
}

TEST(GptTest, EntryCountTimesSizeDoesNotOverflow) {
  // 0xFFFFFFFF entries of 0xFFFFFFF8 bytes: the product needs 64 bits.
  Image img = gpt_image(1024, 512);
  for (uint64_t lba : {uint64_t{1}, uint64_t{1023}}) {
    img.put32(lba, 80, 0xFFFFFFFFu);
    img.put32(lba, 84, 0xFFFFFFF8u);
    resign(img, lba);
  }
  const PartitionTable t = img.scan();
  EXPECT_TRUE(Contains(t.error, "4294967295 entries of 4294967288 bytes is more than"))
      << t.error;
  EXPECT_TRUE(t.partitions.empty());
}

TEST(GptTest, A512ByteTableOnA4KiBDiskIsRefusedWithAMessage) {
  // sfdisk on a 512-byte device, then the image served with 4096-byte
  // blocks: the headers are not where a 4096-byte reader looks for them.
  Image small = gpt_image(1024, 512);
  Image img(128, 4096);
  std::memcpy(img.bytes.data(), small.bytes.data(), small.bytes.size() / 2);
  std::memcpy(img.bytes.data() + img.bytes.size() - small.bytes.size() / 2,
              small.bytes.data() + small.bytes.size() / 2, small.bytes.size() / 2);
  const PartitionTable t = img.scan();
  EXPECT_EQ(t.label, "gpt");
  EXPECT_TRUE(Contains(t.error, "both GPT headers are invalid")) << t.error;
  EXPECT_TRUE(t.partitions.empty());
}

// --- rescan -----------------------------------------------------------------

void write_image(Disk& disk, Image& img) {
  BlockHandle h(std::shared_ptr<Disk>(std::shared_ptr<Disk>(), &disk));
  ASSERT_EQ(h.pwrite(img.bytes.data(), img.bytes.size(), 0), Status::kOk);
}

TEST(RescanTest, MakesPartitionsNamedAsLinux) {
  DiskRegistry reg;
  auto disk = reg.create("ram:4M,name=ram0");
  EXPECT_TRUE(disk->partitions().empty());
  EXPECT_EQ(disk->partition_table().label, "");
  Image img = mbr_with_logicals();
  write_image(*disk, img);
  const PartitionTable t = disk->rescan_partitions();
  EXPECT_EQ(t.label, "dos");
  const auto parts = disk->partitions();
  ASSERT_EQ(parts.size(), 5u);
  EXPECT_EQ(parts[0]->name(), "ram0p1");
  EXPECT_EQ(parts[0]->start(), 2048u);
  EXPECT_EQ(parts[0]->capacity(), 1024u);
  EXPECT_EQ(parts[2]->name(), "ram0p4");
  EXPECT_EQ(parts[2]->capacity(), 2u);  // the extended partition's 1 KiB
  EXPECT_EQ(parts[4]->name(), "ram0p6");

  auto vda = reg.create("ram:4M,name=vda");
  write_image(*vda, img);
  vda->rescan_partitions();
  EXPECT_EQ(vda->partition(5)->name(), "vda5");
}

TEST(RescanTest, ScannedWhenMadeFromASpecUnlessPartscanOff) {
  DiskRegistry reg;
  Image img = mbr_with_logicals();
  char path[] = "/tmp/blkstack-parts-XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, img.bytes.data(), img.bytes.size(), 0),
            static_cast<ssize_t>(img.bytes.size()));
  ::close(fd);
  auto scanned = reg.create(fmt::format("file:{},name=b", path));
  EXPECT_EQ(scanned->partitions().size(), 5u);
  EXPECT_EQ(scanned->partition_table().id, "0x1234abcd");
  scanned.reset();
  reg.remove("b");
  auto off = reg.create(fmt::format("file:{},name=c,partscan=0", path));
  EXPECT_TRUE(off->partitions().empty());
  // A passthrough disk's bytes are its lower device's: never scanned.
  auto over = reg.create("passthrough:lower=c,name=d");
  EXPECT_TRUE(over->partitions().empty());
  ::unlink(path);
}

TEST(RescanTest, DisksWithoutDataAreNotRead) {
  DiskRegistry reg;
  // null keeps nothing (DriverType::partitions false); a new RAM disk is
  // all holes: neither is read when it is added.
  EXPECT_EQ(reg.create("null:16M")->stats().ios[kStatRead], 0u);
  EXPECT_EQ(reg.create("ram:16M")->stats().ios[kStatRead], 0u);
}

TEST(RescanTest, RefusedWhileAPartitionIsOpenOrClaimed) {
  DiskRegistry reg;
  auto disk = reg.create("ram:4M,name=ram0");
  Image img = mbr_with_logicals();
  write_image(*disk, img);
  disk->rescan_partitions();
  {
    auto p1 = reg.open("ram0p1", OpenMode::kWrite);
    EXPECT_EQ(p1->capacity(), 1024u);
    EXPECT_EQ(ErrorOf([&] { disk->rescan_partitions(); }),
              "cannot rescan ram0: ram0p1 is open");
    EXPECT_THROW(disk->rescan_partitions(), BusyError);
  }
  EXPECT_EQ(disk->rescan_partitions().partitions.size(), 5u);
  auto stacked = reg.create("passthrough:lower=ram0p3,name=up,partscan=0");
  EXPECT_TRUE(Contains(ErrorOf([&] { disk->rescan_partitions(); }), "is held by up"));
  reg.remove("up");
  stacked.reset();
  // The table wiped: the partitions go.
  std::vector<std::byte> zero(512);
  BlockHandle h(disk);
  ASSERT_EQ(h.pwrite(zero.data(), zero.size(), 0), Status::kOk);
  EXPECT_EQ(disk->rescan_partitions().label, "");
  EXPECT_TRUE(disk->partitions().empty());
  EXPECT_THROW(reg.open("ram0p1", OpenMode::kRead), Error);
}

TEST(RescanTest, MalformedTableLeavesNoPartitionsAndSaysWhy) {
  DiskRegistry reg;
  auto disk = reg.create("ram:4M,name=ram0");
  Image img = mbr_with_logicals();
  img.mbr_entry(5120, 1, 0, 0x05, 0, 1024);
  write_image(*disk, img);
  const PartitionTable t = disk->rescan_partitions();
  EXPECT_TRUE(Contains(t.error, "loops back")) << t.error;
  EXPECT_TRUE(disk->partitions().empty());
}

TEST(RescanTest, FourKiBDisk) {
  DiskRegistry reg;
  auto disk = reg.create("ram:4M,name=ram0,bs=4096");
  Image img = gpt_image(1024, 4096);
  write_image(*disk, img);
  disk->rescan_partitions();
  ASSERT_NE(disk->partition(3), nullptr);
  EXPECT_EQ(disk->partition(3)->start(), 200u * 8);
  EXPECT_EQ(disk->partition(3)->capacity(), 100u * 8);
}

}  // namespace
}  // namespace blkstack
