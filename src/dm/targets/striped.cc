// striped: spreads its range over N devices, CHUNK sectors at a time, round
// robin (dm-stripe.c). CHUNK need not be a power of two.
//
//     start length striped STRIPES CHUNK DEVICE OFFSET [DEVICE OFFSET]...
//
// The length must divide into STRIPES equal parts, each a whole number of
// chunks. table: "STRIPES CHUNK MAJ:MIN OFFSET ...". status: "STRIPES
// MAJ:MIN ... 1 AA..." with 'D' for a stripe that returned an I/O error
// (an event is raised the first time).
#include <fmt/format.h>

#include <atomic>
#include <bit>
#include <vector>

#include "blkstack/disk.h"
#include "blkstack/driver/target.h"
#include "blkstack/error.h"

namespace blkstack {
namespace {

struct Stripe {
  TargetDevice dev;
  uint64_t start = 0;  // sectors on the device
  std::atomic<uint32_t> errors{0};
};

class Striped final : public Target {
 public:
  Striped(std::vector<Stripe>&& stripes, uint64_t chunk)
      : stripes_(std::move(stripes)),
        nr_(static_cast<uint32_t>(stripes_.size())),
        chunk_(chunk),
        chunk_shift_(std::has_single_bit(chunk) ? std::countr_zero(chunk) : -1) {
    max_io_len = static_cast<uint32_t>(chunk);
    num_flush_bios = nr_;
    num_discard_bios = 1;  // cut at chunks (max_io_len): one stripe each
    num_write_zeroes_bios = 1;
  }

  MapResult map(Bio& clone) override {
    auto* idx = static_cast<uint32_t*>(target_per_io(clone));
    if (clone.op() == Op::kFlush) {
      *idx = target_bio_nr(clone);
      clone.set_dev(*stripes_[*idx].dev.bdev, stripes_[*idx].start);
      return MapResult::kRemapped;
    }
    // stripe_map_sector: the chunk, its offset, the stripe, and the chunk
    // on that stripe.
    uint64_t chunk = offset(clone.sector());
    uint64_t in_chunk;
    if (chunk_shift_ >= 0) [[likely]] {
      in_chunk = chunk & (chunk_ - 1);
      chunk >>= chunk_shift_;
    } else {
      in_chunk = chunk % chunk_;
      chunk /= chunk_;
    }
    *idx = static_cast<uint32_t>(chunk % nr_);
    const Stripe& s = stripes_[*idx];
    clone.set_dev(*s.dev.bdev, s.start + (chunk / nr_) * chunk_ + in_chunk);
    return MapResult::kRemapped;
  }

  EndIoResult end_io(Bio& clone, Status& status) override {
    if (status == Status::kIoError || status == Status::kMedium) [[unlikely]] {
      const uint32_t idx = *static_cast<uint32_t*>(target_per_io(clone));
      if (stripes_[idx].errors.fetch_add(1, std::memory_order_relaxed) == 0) event();
    }
    return EndIoResult::kDone;
  }

  std::string table() const override {
    std::string out = fmt::format("{} {}", nr_, chunk_);
    for (const Stripe& s : stripes_) out += fmt::format(" {} {}", s.dev.devt(), s.start);
    return out;
  }

  std::string status() const override {
    std::string out = fmt::format("{}", nr_);
    for (const Stripe& s : stripes_) out += " " + s.dev.devt();
    out += " 1 ";
    for (const Stripe& s : stripes_) {
      out += s.errors.load(std::memory_order_relaxed) != 0 ? 'D' : 'A';
    }
    return out;
  }

  void iterate_devices(const DeviceFn& fn) const override {
    for (const Stripe& s : stripes_) fn(*s.dev.bdev, s.start, length() / nr_);
  }

 private:
  std::vector<Stripe> stripes_;
  uint32_t nr_;
  uint64_t chunk_;   // sectors
  int chunk_shift_;  // log2(chunk_), or -1 when not a power of two
};

std::unique_ptr<Target> create(TargetContext& ctx, TargetArgs args) {
  if (args.size() < 2) {
    throw Error("not enough arguments: <stripes> <chunk> [<device> <offset>]...");
  }
  const uint64_t nr = parse_target_u64(args[0], "stripe count", 1, 1024);
  const uint64_t chunk = parse_target_u64(args[1], "chunk size", 1, UINT32_MAX);
  if (ctx.length() % nr != 0) {
    throw Error(
        fmt::format("target length {} is not divisible by the number of stripes {}",
                    ctx.length(), nr));
  }
  const uint64_t width = ctx.length() / nr;
  if (width % chunk != 0) {
    throw Error(
        fmt::format("target length {} per stripe ({}) is not divisible by the "
                    "chunk size {}",
                    ctx.length(), width, chunk));
  }
  if (args.size() != 2 + 2 * nr) {
    throw Error(
        fmt::format("{} stripes need {} device and offset pairs; got {} "
                    "arguments after the chunk size",
                    nr, nr, args.size() - 2));
  }
  std::vector<Stripe> stripes(nr);
  for (uint64_t i = 0; i < nr; ++i) {
    Stripe& s = stripes[i];
    s.dev = ctx.open_device(args[2 + 2 * i]);
    s.start = parse_target_u64(args[3 + 2 * i], "device offset", 0, UINT64_MAX >> 9);
    const uint64_t lbs = s.dev.bdev->disk().limits().logical_block_size >> kSectorShift;
    if (chunk % lbs != 0) {
      throw Error(
          fmt::format("chunk size {} is not a multiple of {}'s logical block "
                      "size ({} sectors)",
                      chunk, s.dev.bdev->name(), lbs));
    }
    const uint64_t cap = s.dev.bdev->capacity();
    if (s.start > cap || width > cap - s.start) {
      throw Error(
          fmt::format("stripe {}: {} has {} sectors: sectors {} to {} are past "
                      "its end",
                      i, s.dev.bdev->name(), cap, s.start, s.start + width - 1));
    }
  }
  return std::make_unique<Striped>(std::move(stripes), chunk);
}

}  // namespace

extern const TargetType kStripedTarget{"striped", {1, 6, 0}, sizeof(uint32_t), create};

}  // namespace blkstack
