#include "dm/table.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/open_context.h"
#include "blkstack/error.h"
#include "dm/mapped_device.h"

namespace blkstack {
namespace {

std::vector<std::string> split_words(std::string_view line) {
  std::vector<std::string> words;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t j = i;
    while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
    if (j > i) words.emplace_back(line.substr(i, j - i));
    i = j;
  }
  return words;
}

bool parse_u64(std::string_view s, uint64_t* v) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *v);
  return ec == std::errc() && p == s.data() + s.size();
}

// The registry name of `name`: as given, without "/dev/" or
// "/dev/mapper/", or the device whose numbers "MAJ:MIN" are.
std::string resolve_device(const DiskRegistry& registry, std::string_view name) {
  for (std::string_view prefix : {"/dev/mapper/", "/dev/"}) {
    if (name.starts_with(prefix)) return std::string(name.substr(prefix.size()));
  }
  const size_t colon = name.find(':');
  uint64_t major = 0;
  uint64_t minor = 0;
  if (colon == std::string_view::npos || !parse_u64(name.substr(0, colon), &major) ||
      !parse_u64(name.substr(colon + 1), &minor)) {
    return std::string(name);
  }
  for (const std::shared_ptr<Disk>& d : registry.list()) {
    if (d->major() != major || minor < d->minor() ||
        minor >= d->minor() + DiskRegistry::kMinorsPerDisk) {
      continue;
    }
    const unsigned partno = static_cast<unsigned>(minor - d->minor());
    if (partno == 0) return d->name();
    if (auto p = d->partition(partno)) return p->name();
  }
  throw Error(fmt::format("no device has the numbers {}", name));
}

class LineContext final : public TargetContext {
 public:
  LineContext(DiskRegistry& registry, const std::string& holder, uint64_t begin,
              uint64_t length, std::vector<Claim>& claims,
              std::vector<std::shared_ptr<BlockDevice>>& devices)
      : TargetContext(begin, length),
        registry_(registry),
        holder_(holder),
        claims_(claims),
        devices_(devices) {}

  const std::string& device_name() const override { return holder_; }

  TargetDevice open_device(std::string_view name) override {
    const std::string resolved = resolve_device(registry_, name);
    if (resolved == holder_)
      throw Error(fmt::format("cannot stack {} on itself", holder_));
    // All mapped devices claim as one holder, as dm's _dm_claim_ptr: two
    // may share a device (logical volumes on one physical volume), while
    // other stacked disks and writers are kept out.
    OpenContext ctx(&registry_, std::string(MappedDevice::kHolder));
    std::shared_ptr<BlockDevice> bdev = ctx.open_lower(resolved);
    if (MappedDevice::depends_on(bdev->disk(), holder_)) {
      throw Error(fmt::format("cannot stack {} on {}: {} is stacked on {}", holder_,
                              resolved, resolved, holder_));
    }
    for (Claim& c : ctx.take_claims()) claims_.push_back(std::move(c));
    if (std::find(devices_.begin(), devices_.end(), bdev) == devices_.end()) {
      devices_.push_back(bdev);
    }
    return TargetDevice{std::move(bdev)};
  }

 private:
  DiskRegistry& registry_;
  const std::string& holder_;
  std::vector<Claim>& claims_;
  std::vector<std::shared_ptr<BlockDevice>>& devices_;
};

std::string known_types() {
  std::string known;
  for (const TargetType* t : target_types()) {
    known += (known.empty() ? "" : ", ") + std::string(t->name);
  }
  return known;
}

// blk_stack_limits, for what a mapped device takes from below.
void stack_limits(QueueLimits& top, const QueueLimits& bottom) {
  top.logical_block_size = std::max(top.logical_block_size, bottom.logical_block_size);
  top.physical_block_size = std::max(top.physical_block_size, bottom.physical_block_size);
  top.max_discard_sectors = std::min(top.max_discard_sectors, bottom.max_discard_sectors);
  top.max_write_zeroes_sectors =
      std::min(top.max_write_zeroes_sectors, bottom.max_write_zeroes_sectors);
  top.discard_granularity = std::max(top.discard_granularity, bottom.discard_granularity);
  top.rotational = top.rotational || bottom.rotational;
  // The bios below carry the top's memory as it is: its layout must suit
  // every device below (masks are 2^n - 1, so the smaller is the stricter).
  top.seg_boundary_mask = std::min(top.seg_boundary_mask, bottom.seg_boundary_mask);
  top.dma_alignment = std::max(top.dma_alignment, bottom.dma_alignment);
  top.virt_boundary_mask = std::max(top.virt_boundary_mask, bottom.virt_boundary_mask);
}

}  // namespace

std::unique_ptr<Table> Table::build(DiskRegistry& registry, const std::string& holder,
                                    std::string_view text) {
  std::unique_ptr<Table> t(new Table());
  t->limits_.max_discard_sectors = UINT32_MAX;
  t->limits_.max_write_zeroes_sectors = UINT32_MAX;
  unsigned lineno = 0;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find_first_of("\n;", pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++lineno;
    const std::vector<std::string> w = split_words(line);
    if (w.empty() || w[0].starts_with('#')) continue;
    const auto bad = [&](const std::string& why) {
      return Error(fmt::format("{}: table line {} '{}': {}", holder, lineno,
                               fmt::join(w, " "), why));
    };
    if (w.size() < 3) throw bad("expected 'start length target [args...]'");
    uint64_t start = 0;
    uint64_t length = 0;
    if (!parse_u64(w[0], &start)) throw bad(fmt::format("bad start '{}'", w[0]));
    if (!parse_u64(w[1], &length) || length == 0) {
      throw bad(fmt::format("bad length '{}' (a number of sectors, at least 1)", w[1]));
    }
    if (start != t->size_) {
      throw bad(
          start < t->size_
              ? fmt::format("overlaps the line before, which ends at sector {}", t->size_)
              : fmt::format("gap: sectors {} to {} are not mapped", t->size_, start - 1));
    }
    if (length > (UINT64_MAX >> kSectorShift) - start) throw bad("too long");
    const TargetType* type = find_target_type(w[2]);
    if (!type) {
      throw bad(fmt::format("unknown target type '{}' (known: {})", w[2], known_types()));
    }
    const size_t claims_before = t->claims_.size();
    LineContext ctx(registry, holder, start, length, t->claims_, t->devices_);
    std::unique_ptr<Target> target;
    try {
      target = type->create(ctx, TargetArgs(w.data() + 3, w.size() - 3));
    } catch (const BusyError& e) {
      throw BusyError(bad(e.what()).what());
    } catch (const Error& e) {
      throw bad(e.what());
    }
    target->begin_ = start;
    target->length_ = length;
    if (target->num_discard_bios == 0) t->limits_.max_discard_sectors = 0;
    if (target->num_write_zeroes_bios == 0) t->limits_.max_write_zeroes_sectors = 0;
    for (size_t i = claims_before; i < t->claims_.size(); ++i) {
      const Disk& d = t->claims_[i].device()->disk();
      stack_limits(t->limits_, d.limits());
      t->write_cache_ = t->write_cache_ || d.write_cache();
    }
    t->size_ = start + length;
    t->ends_.push_back(t->size_);
    t->types_.push_back(type);
    t->per_io_bytes_ = std::max(t->per_io_bytes_, type->per_io_bytes);
    target->io_hints(t->limits_);
    t->targets_.push_back(std::move(target));
    if (t->size_ % (t->limits_.logical_block_size >> kSectorShift) != 0) {
      throw bad(
          fmt::format("ends at sector {}: not a multiple of the logical block "
                      "size {} of the devices below",
                      t->size_, t->limits_.logical_block_size));
    }
  }
  if (t->targets_.empty()) throw Error(fmt::format("{}: the table is empty", holder));
  return t;
}

Table::~Table() = default;

Target* Table::find(uint64_t sector) const {
  const auto it = std::upper_bound(ends_.begin(), ends_.end(), sector);
  return targets_[static_cast<size_t>(it - ends_.begin())].get();
}

std::string Table::table_text() const {
  std::string out;
  for (size_t i = 0; i < targets_.size(); ++i) {
    const Target& t = *targets_[i];
    // As dmsetup prints them: "start length type " and the parameters, so
    // a target without any ends in a blank ("0 100 zero ").
    out +=
        fmt::format("{} {} {} {}\n", t.begin(), t.length(), types_[i]->name, t.table());
  }
  return out;
}

std::string Table::status_text() const {
  std::string out;
  for (size_t i = 0; i < targets_.size(); ++i) {
    const Target& t = *targets_[i];
    out +=
        fmt::format("{} {} {} {}\n", t.begin(), t.length(), types_[i]->name, t.status());
  }
  return out;
}

std::vector<BlockDevice*> Table::devices() const {
  std::vector<BlockDevice*> out;
  for (const auto& d : devices_) out.push_back(d.get());
  return out;
}

void Table::set_owner(MappedDevice* md) {
  for (auto& t : targets_) t->md_ = md;
}

}  // namespace blkstack
