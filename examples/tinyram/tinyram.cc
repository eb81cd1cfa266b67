// tinyram: a RAM disk in one file, built outside the blkstack tree against
// the installed headers. It is the example of docs/howto/driver.md: a bio-based
// driver (every bio arrives whole, already checked and split to the limits
// the driver declared), its options, and its registration.
//
// As a module:   blkstack --module ./tinyram.so disk tinyram:64M
// In a program:  blkstack::register_driver_type(tinyram::kDriver);
#include "tinyram.h"

#include <cstring>
#include <memory>

#include "blkstack/disk.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/module.h"
#include "blkstack/driver/open_context.h"
#include "blkstack/driver/reports.h"
#include "blkstack/error.h"

namespace tinyram {

using namespace blkstack;

namespace {

class TinyRam final : public BioDriver {
 public:
  explicit TinyRam(uint64_t bytes) : mem_(new std::byte[bytes]()) {}

  // Runs on the submitting thread and must not block; the bio may be
  // completed here or later, on any thread, exactly once.
  void submit(Bio& bio) override {
    uint64_t pos = bio.sector() << kSectorShift;
    switch (bio.op()) {
      case Op::kRead:
      case Op::kWrite:
        // A bio's memory comes in segments: visit each piece.
        bio.for_each_chunk([&](const BioChunk& c) {
          if (bio.op() == Op::kRead)
            std::memcpy(c.ptr, mem_.get() + pos, c.len);
          else
            std::memcpy(mem_.get() + pos, c.ptr, c.len);
          pos += c.len;
        });
        break;
      case Op::kDiscard:
      case Op::kWriteZeroes:
        std::memset(mem_.get() + pos, 0, bio.size());
        break;
      case Op::kFlush:  // nothing volatile: memory is as durable as it gets
        break;
    }
    bio.complete(Status::kOk);
  }

 private:
  std::unique_ptr<std::byte[]> mem_;
};

// What `blkstack disk` prints about it (and where NBD block status would
// learn of holes: this disk has none to report).
class TinyRamReports final : public DiskReports {
 public:
  std::string describe() const override { return "tinyram (an example module)"; }
};

constexpr OptionDef kOptions[] = {
    // Positional: "tinyram:64M" means size=64M. The range is checked
    // before create() runs, with an error naming it.
    ranged({"size", OptionKind::kSize, "", "capacity (bytes, K/M/G suffixes)", {}, true},
           4096, uint64_t{1} << 34),
};

// `lower` would open the devices below a stacked driver; tinyram has none.
std::shared_ptr<Disk> create(const DeviceOptions& options, const std::string& name,
                             OpenContext& lower) {
  (void)lower;
  const uint64_t bytes = options.size("size");
  if (bytes % 4096 != 0) throw Error("tinyram: size must be a multiple of 4096 bytes");
  QueueLimits limits;
  limits.logical_block_size = limits.physical_block_size = 4096;
  limits.max_sectors = limits.max_hw_sectors = 2048;  // 1 MiB per bio
  limits.max_discard_sectors = limits.max_write_zeroes_sectors = 2048;
  limits.discard_granularity = 4096;
  return std::make_shared<Disk>(name, bytes >> kSectorShift, limits,
                                std::make_unique<TinyRam>(bytes),
                                std::make_unique<TinyRamReports>());
}

}  // namespace

const DriverType kDriver{
    "tinyram", "a RAM disk in one file (examples/tinyram)",
    0,  // major: allocate one
    kOptions,  create,
};

}  // namespace tinyram

// Only the module build defines this (see CMakeLists.txt): a program that
// links tinyram.cc registers the driver itself.
#ifdef TINYRAM_MODULE
BLKSTACK_MODULE_INIT() { blkstack::register_driver_type(tinyram::kDriver); }
#endif
