// flakey: a device that works for `up_interval` seconds, then misbehaves for
// `down_interval` seconds, over and over (the kernel's dm-flakey.c).
//
//   flakey <dev> <offset> <up_interval> <down_interval> [<num_features>
//          [drop_writes | error_writes] [error_reads]
//          [corrupt_bio_byte <Nth_byte> <r|w> <value> <flags>]
//          [random_read_corrupt <p>] [random_write_corrupt <p>]]
//
// While down: error_reads fails reads; drop_writes completes writes without
// doing them, error_writes fails them; corrupt_bio_byte sets byte N (from
// 1) of each read (r, after it completes) or write (w, on a copy: the
// caller's buffer is left alone) whose flags include <flags> to <value>;
// random_*_corrupt change one random byte of a bio with probability
// p / 1000000000. Without any feature, reads and writes fail while down.
// Flushes and discards always go through.
//
// An interval of `0 1` is down for good and `1 0` up for good: a test swaps
// tables to make a device fail and come back.
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>

#include "blkstack/bioset.h"
#include "blkstack/driver/target.h"
#include "blkstack/error.h"
#include "blkstack/submit.h"

namespace blkstack {
namespace {

constexpr uint64_t kProbabilityBase = 1'000'000'000;

// Per clone: whether it went down the misbehaving path.
struct FlakeyIo {
  bool down;
};

uint64_t random_u64() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return rng();
}

class Flakey final : public Target {
 public:
  TargetDevice dev;
  uint64_t start = 0;         // sectors into dev
  unsigned up = 0, down = 0;  // seconds
  bool drop_writes = false, error_writes = false, error_reads = false;
  uint32_t corrupt_byte = 0;  // 1-based; 0: off
  bool corrupt_write = false;
  uint8_t corrupt_value = 0;
  uint32_t corrupt_flags = 0;  // BioFlag bits a bio must have to be corrupted
  uint32_t random_read = 0, random_write = 0;  // per kProbabilityBase
  // No feature was given: error_reads and error_writes hold, but the table
  // line is printed as it was given ("... 1 1 0").
  bool implicit_errors = false;

  Flakey() : pool_("flakey", 4) {}

  MapResult map(Bio& clone) override {
    auto* io = static_cast<FlakeyIo*>(target_per_io(clone));
    io->down = is_down();
    if (io->down && op_has_data(clone.op())) {
      if (clone.op() == Op::kRead) {
        if (error_reads) return MapResult::kKill;
      } else {
        if (drop_writes) {
          clone.complete(Status::kOk);
          return MapResult::kSubmitted;
        }
        if (error_writes) return MapResult::kKill;
        const bool fixed = corrupt_byte && corrupt_write && flags_match(clone);
        const bool rnd = random_write && random_u64() % kProbabilityBase < random_write;
        if ((fixed || rnd) && submit_corrupted(clone, fixed, rnd))
          return MapResult::kSubmitted;
      }
    }
    clone.set_dev(*dev.bdev, start + offset(clone.sector()));
    return MapResult::kRemapped;
  }

  EndIoResult end_io(Bio& clone, Status& status) override {
    auto* io = static_cast<FlakeyIo*>(target_per_io(clone));
    if (!io->down || clone.op() != Op::kRead || status != Status::kOk)
      return EndIoResult::kDone;
    // The clone was advanced as it completed: rewind to what map() saw.
    const BioStart& s = target_io_start(clone);
    if (corrupt_byte && !corrupt_write && flags_match(clone) &&
        corrupt_byte <= s.iter.size)
      set_byte(clone, s, corrupt_byte - 1, corrupt_value);
    if (random_read && random_u64() % kProbabilityBase < random_read && s.iter.size)
      flip_random_byte(clone, s);
    return EndIoResult::kDone;
  }

  std::string table() const override {
    std::string out = fmt::format("{} {} {} {}", dev.devt(), start, up, down);
    const bool er = error_reads && !implicit_errors,
               ew = error_writes && !implicit_errors;
    const unsigned n = er + drop_writes + ew + (corrupt_byte > 0) * 5 +
                       (random_read > 0) * 2 + (random_write > 0) * 2;
    out += fmt::format(" {}", n);
    if (er) out += " error_reads";
    if (drop_writes)
      out += " drop_writes";
    else if (ew)
      out += " error_writes";
    if (corrupt_byte)
      out += fmt::format(" corrupt_bio_byte {} {} {} {}", corrupt_byte,
                         corrupt_write ? 'w' : 'r', corrupt_value, corrupt_flags);
    if (random_read) out += fmt::format(" random_read_corrupt {}", random_read);
    if (random_write) out += fmt::format(" random_write_corrupt {}", random_write);
    return out;
  }

  void iterate_devices(const DeviceFn& fn) const override {
    fn(*dev.bdev, start, length());
  }

 private:
  // A write to corrupt goes from a copy of its data, so that the caller's
  // buffer (which a mirror may be writing to another leg) stays intact.
  // Fault injection only: the copy is a heap buffer, as the kernel
  // allocates pages for it. False if no bio is free: then the write goes
  // through unharmed, as in the kernel.
  struct CorruptWrite {
    Bio* orig;
    std::unique_ptr<std::byte[]> data;
  };

  bool submit_corrupted(Bio& clone, bool fixed, bool rnd) {
    Bio* b = pool_.alloc(Wait::kNoWait);
    if (!b) return false;
    const uint32_t size = clone.size();
    auto* cw = new CorruptWrite{&clone, std::make_unique<std::byte[]>(size)};
    clone.copy_to(cw->data.get(), size);
    if (fixed && corrupt_byte <= size)
      cw->data[corrupt_byte - 1] = std::byte{corrupt_value};
    if (rnd) cw->data[random_u64() % size] ^= std::byte{0xff};
    std::span<Segment> segs = BioSet::inline_segments(*b);
    segs[0] = Segment(cw->data.get(), size);
    b->init(dev.bdev.get(), Op::kWrite, start + offset(clone.sector()), segs.first(1),
            &Flakey::corrupted_done, cw);
    b->set_flags(clone.flags());
    submit_bio(*b);
    return true;
  }

  static void corrupted_done(Bio& b) {
    auto* cw = static_cast<CorruptWrite*>(b.context());
    Bio* orig = cw->orig;
    const Status s = b.status();
    delete cw;
    b.put();
    orig->complete(s);
  }

  bool is_down() const {
    const uint64_t secs = std::chrono::duration_cast<std::chrono::seconds>(
                              std::chrono::steady_clock::now() - born_)
                              .count();
    return secs % (uint64_t{up} + down) >= up;
  }

  bool flags_match(const Bio& clone) const {
    return (static_cast<uint32_t>(clone.flags()) & corrupt_flags) == corrupt_flags;
  }

  // Byte `at` of the data the read clone returned, from its start `s`.
  static std::byte* byte_at(const Bio& clone, const BioStart& s, uint32_t at) {
    std::span<Segment> segs = clone.segments();
    uint32_t idx = s.iter.idx, off = s.iter.done + at;
    while (idx < segs.size() && off >= segs[idx].len) off -= segs[idx++].len;
    return idx < segs.size() ? segs[idx].ptr + off : nullptr;
  }
  static void set_byte(const Bio& clone, const BioStart& s, uint32_t at, uint8_t v) {
    if (std::byte* p = byte_at(clone, s, at)) *p = std::byte{v};
  }
  static void flip_random_byte(const Bio& clone, const BioStart& s) {
    if (std::byte* p = byte_at(clone, s, random_u64() % s.iter.size))
      *p ^= std::byte{0xff};
  }

  std::chrono::steady_clock::time_point born_ = std::chrono::steady_clock::now();
  BioSet pool_;
};

std::unique_ptr<Target> create(TargetContext& ctx, TargetArgs args) {
  if (args.size() < 4)
    throw Error("flakey: want <dev> <offset> <up_interval> <down_interval> [features]");
  auto t = std::make_unique<Flakey>();
  t->dev = ctx.open_device(args[0]);
  t->start = parse_target_u64(args[1], "offset", 0, UINT64_MAX >> 10);
  if (t->start + ctx.length() > (t->dev.bdev->size_bytes() >> kSectorShift))
    throw Error(fmt::format("flakey: offset {} and length {} go past the end of {}",
                            t->start, ctx.length(), args[0]));
  t->up =
      static_cast<unsigned>(parse_target_u64(args[2], "up interval", 0, UINT32_MAX / 2));
  t->down = static_cast<unsigned>(
      parse_target_u64(args[3], "down interval", 0, UINT32_MAX / 2));
  if (t->up + t->down == 0) throw Error("flakey: total (up + down) interval is zero");
  size_t i = 4;
  uint64_t left = 0;
  if (i < args.size()) left = parse_target_u64(args[i++], "number of features", 0, 12);
  if (left != args.size() - i)
    throw Error(fmt::format("flakey: {} feature arguments announced, {} given", left,
                            args.size() - i));
  auto need = [&](size_t n, std::string_view what) {
    if (args.size() - i < n)
      throw Error(fmt::format("flakey: {} needs {} arguments", what, n));
  };
  while (i < args.size()) {
    const std::string& f = args[i++];
    if (f == "drop_writes" || f == "error_writes") {
      if (t->drop_writes || t->error_writes)
        throw Error(fmt::format("flakey: {} given with drop_writes or error_writes", f));
      (f == "drop_writes" ? t->drop_writes : t->error_writes) = true;
    } else if (f == "error_reads") {
      t->error_reads = true;
    } else if (f == "corrupt_bio_byte") {
      need(4, f);
      t->corrupt_byte = static_cast<uint32_t>(
          parse_target_u64(args[i++], "corrupt_bio_byte Nth_byte", 1, UINT32_MAX));
      const std::string& dir = args[i++];
      if (dir != "r" && dir != "w")
        throw Error(
            fmt::format("flakey: corrupt_bio_byte direction '{}' (valid: r, w)", dir));
      t->corrupt_write = dir == "w";
      t->corrupt_value = static_cast<uint8_t>(
          parse_target_u64(args[i++], "corrupt_bio_byte value", 0, 255));
      t->corrupt_flags = static_cast<uint32_t>(
          parse_target_u64(args[i++], "corrupt_bio_byte flags", 0, UINT16_MAX));
    } else if (f == "random_read_corrupt" || f == "random_write_corrupt") {
      need(1, f);
      const auto p =
          static_cast<uint32_t>(parse_target_u64(args[i++], f, 0, kProbabilityBase));
      (f == "random_read_corrupt" ? t->random_read : t->random_write) = p;
    } else {
      throw Error(fmt::format("flakey: unknown feature '{}'", f));
    }
  }
  if (!t->drop_writes && !t->error_writes && !t->error_reads && !t->corrupt_byte &&
      !t->random_read && !t->random_write) {
    t->error_reads = t->error_writes = true;  // no feature: fail all I/O when down
    t->implicit_errors = true;
  }
  t->num_discard_bios = 1;
  t->num_write_zeroes_bios = 1;
  return t;
}

}  // namespace

extern const TargetType kFlakeyTarget{"flakey", {1, 5, 0}, sizeof(FlakeyIo), create};

}  // namespace blkstack
