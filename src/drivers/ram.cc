// ram: a sparse RAM disk (the kernel's brd, the sbd sample of seed 003).
//
// The data lives in a RamStore (src/mm/ram_store.h): 2 MiB chunks of
// anonymous memory mapped on first write, 4 KiB pages tracked by a bitmap,
// discard handing pages back, and a 2 MiB huge page for the chunks a
// first write is about to fill (huge=auto). The driver is written once for both queue
// modes (driver/transfer.h): it copies each bio of a command to or from
// the store.
#include <fmt/format.h>

#include <memory>
#include <string>
#include <utility>

#include "blkstack/disk.h"
#include "blkstack/driver/driver_type.h"
#include "blkstack/driver/limit_options.h"
#include "blkstack/driver/queue_mode.h"
#include "blkstack/driver/reports.h"
#include "blkstack/driver/transfer.h"
#include "blkstack/error.h"
#include "mm/ram_store.h"

namespace blkstack {
namespace {

constexpr uint64_t kPageSize = RamStore::kPageSize;
constexpr uint64_t kMaxRamBytes = RamStore::kMaxBytes;

// Moves one bio's data to or from the store.
Status transfer(RamStore& store, const Bio& bio) {
  Status status = Status::kOk;
  // Segments need not be whole sectors: follow the byte position, not
  // each chunk's sector.
  uint64_t pos = bio.sector() << kSectorShift;
  switch (bio.op()) {
    case Op::kRead:
      bio.for_each_chunk([&](const BioChunk& c) {
        store.read(pos, c.ptr, c.len);
        pos += c.len;
      });
      break;
    case Op::kWrite:
      bio.for_each_chunk([&](const BioChunk& c) {
        if (status == Status::kOk && !store.write(pos, c.ptr, c.len))
          status = Status::kResource;
        pos += c.len;
      });
      break;
    case Op::kDiscard:
    case Op::kWriteZeroes:
      store.discard(bio.sector() << kSectorShift, bio.size());
      break;
    case Op::kFlush:
      break;  // RAM has no volatile cache
  }
  return status;
}

class RamDriver final : public TransferDriver {
 public:
  explicit RamDriver(std::shared_ptr<RamStore> store) : store_(std::move(store)) {}
  void queue_cmd(IoCmd cmd) override {
    Status status = Status::kOk;
    cmd.for_each_bio([&](const Bio& bio) {
      if (status == Status::kOk) status = transfer(*store_, bio);
    });
    cmd.complete(status);
  }

 private:
  std::shared_ptr<RamStore> store_;
};

class RamReports final : public DiskReports {
 public:
  explicit RamReports(std::shared_ptr<const RamStore> store) : store_(std::move(store)) {}
  std::string describe() const override {
    return fmt::format("allocated={} huge_chunks={}",
                       format_size(store_->allocated_bytes()), store_->huge_chunks());
  }
  Extent extent_at(uint64_t offset, uint64_t max_length) const override {
    const RamStore::Run run = store_->extent_at(offset, max_length);
    if (run.length == 0) return {0, false, true};
    return {run.length, run.present, !run.present};
  }
  uint64_t allocated_bytes() const override { return store_->allocated_bytes(); }

 private:
  std::shared_ptr<const RamStore> store_;
};

constexpr OptionDef kOptions[] = {
    ranged({"size",
            OptionKind::kSize,
            "64M",
            "capacity in bytes (K, M, G, T, P suffixes)",
            {},
            true},
           kMinBlockSize, kMaxRamBytes),
    ranged({"bs", OptionKind::kSize, "512",
            "logical block size: 512 to 65536, a power of two"},
           kMinBlockSize, kMaxBlockSize),
    ranged({"max_sectors", OptionKind::kUint, "2560", "largest I/O in 512-byte sectors"},
           1, kMaxSectorsLimit),
    {"huge", OptionKind::kChoice, "auto",
     "2 MiB transparent huge pages for a chunk: auto (the chunks a first write "
     "is about to fill: half of it, or a stream from the full chunk before), "
     "always (every chunk touched: 2 MiB each), never (4 KiB pages)",
     "auto|always|never"},
};

std::shared_ptr<Disk> create(const DeviceOptions& o, const std::string& name,
                             OpenContext&) {
  QueueLimits lim;
  lim.logical_block_size = block_size_option(o);
  lim.physical_block_size = std::max<uint32_t>(lim.logical_block_size, kPageSize);
  lim.max_sectors = max_sectors_option(o);
  lim.max_hw_sectors = std::max<uint32_t>(lim.max_sectors, lim.max_hw_sectors);
  lim.max_discard_sectors = lim.max_write_zeroes_sectors = UINT32_MAX >> kSectorShift;
  lim.discard_granularity = std::max<uint32_t>(lim.logical_block_size, kPageSize);
  const uint64_t size = device_size_option(o, lim.logical_block_size);
  const QueueMode qm = queue_mode(o);
  const std::string& huge = o.str("huge");
  const HugePages policy = huge == "always"  ? HugePages::kAlways
                           : huge == "never" ? HugePages::kNever
                                             : HugePages::kAuto;
  auto store = std::make_shared<RamStore>(size, policy);
  return make_disk<RamDriver>(name, size >> kSectorShift, lim, qm,
                              std::make_unique<RamReports>(store), store);
}

}  // namespace

extern const DriverType kRamDriver{
    "ram",  "sparse RAM disk: 4 KiB pages on first write, discard frees them (brd)",
    1,      kOptions,
    create, /*queue_modes=*/true};

}  // namespace blkstack
