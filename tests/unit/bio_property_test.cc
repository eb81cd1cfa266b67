// The property test of the bio core: a million random operations through a
// two-level stack, checked against a reference model of the data.
//
//   top bio --submit_bio--> "flaky" (FaultDriver, small odd limits)
//                              | splits, chains, clones, retargets, defers,
//                              | injects errors
//                              v
//                           ram disk (its own small odd max_sectors)
//
// For every operation the test asserts:
//  - the submitter's callback runs exactly once (and every clone's callback
//    exactly once; chained pieces are accounted by their pools: a piece that
//    never completed would hold its parent, one completed twice aborts);
//  - the status is the first error injected, or kInvalid / kOutOfRange for
//    bad requests, or kOk;
//  - the data read matches the model byte for byte, bytes the stack never
//    read are left untouched, and memory outside the segments is never
//    written;
//  - the flaky driver only ever receives bios that fit its limits, with
//    PREFLUSH only on the first piece and FUA on every piece.
//
// Why "the first error injected" is well defined: completions here are
// synchronous, and submit_bio() handles the bios a driver submits (and all
// they submit in turn) before that driver's later siblings. So the subtree
// of each piece completes before the next piece starts, and an error reaches
// the top bio in the order it was injected. Operations that defer bios (the
// test submits them later, in random order) inject a single error code, so
// that their expected status does not depend on completion order.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/bioset.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/limits.h"
#include "blkstack/submit.h"

namespace blkstack {
namespace {

constexpr Status kInjectable[] = {
    Status::kIoError, Status::kMedium,     Status::kTimeout, Status::kTransport,
    Status::kTarget,  Status::kProtection, Status::kNoSpace, Status::kAgain};
constexpr int kInjectableCount = sizeof(kInjectable) / sizeof(kInjectable[0]);
constexpr std::byte kPoison{0xA5};

// xorshift64*: fast, and deterministic across standard libraries.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed ? seed : 1) {}
  uint64_t next() {
    s_ ^= s_ >> 12;
    s_ ^= s_ << 25;
    s_ ^= s_ >> 27;
    return s_ * 0x2545F4914F6CDD1DULL;
  }
  uint32_t below(uint32_t n) { return static_cast<uint32_t>(next() % n); }
  bool chance(uint32_t percent) { return below(100) < percent; }
  void fill(std::byte* p, size_t n) {
    while (n >= 8) {
      uint64_t v = next();
      std::memcpy(p, &v, 8);
      p += 8;
      n -= 8;
    }
    if (n) {
      uint64_t v = next();
      std::memcpy(p, &v, n);
    }
  }

 private:
  uint64_t s_;
};

// What the flaky driver did during one operation.
struct OpState {
  Op op = Op::kRead;
  uint64_t start_sector = 0;
  uint64_t end_sector = 0;
  BioFlag flags = BioFlag::kNone;
  uint32_t inject_percent = 0;       // chance per decision point
  bool defer = false;                // may park bios for the test to submit later
  Status fixed_error = Status::kOk;  // the one code deferred ops inject
  Status first_error = Status::kOk;  // first injected, in time order
  int injected = 0;
  std::vector<std::pair<uint64_t, uint64_t>> dropped;  // device bytes never sent down
  std::vector<Bio*> deferred;
  int driver_calls = 0;
  int clones = 0;
  int clone_callbacks = 0;
  std::vector<std::string> violations;
};

uint32_t hw_segments(const Bio& bio, uint32_t max_segment_size) {
  uint32_t n = 0;
  bio.for_each_chunk(
      [&](const BioChunk& c) { n += (c.len + max_segment_size - 1) / max_segment_size; });
  return n;
}

// The randomizing, error-injecting middle layer.
class FaultDriver final : public BioDriver {
 public:
  FaultDriver(std::shared_ptr<Disk> lower, QueueLimits lim, Rng* rng, OpState** op)
      : lower_(std::move(lower)), lim_(lim), rng_(rng), op_(op), set_("flaky-bios", 8) {}

  BioSet& set() { return set_; }

  void submit(Bio& r) override {
    OpState& op = **op_;
    ++op.driver_calls;
    check_promises(r, op);
    if (op.inject_percent && rng_->chance(op.inject_percent / 2)) {
      fail(r);  // the whole bio, before anything is sent down
      return;
    }
    // Cut pieces off the front (bio_split), each handled on its own.
    const uint32_t lbs = lim_.logical_block_size;
    while (r.size() > lbs && rng_->chance(35)) {
      uint32_t blocks = r.size() / lbs;
      uint32_t cut = (1 + rng_->below(blocks - 1)) * lbs;
      Bio* front = r.split(cut >> kSectorShift, set_);
      dispatch_piece(*front);
    }
    switch (rng_->below(r.size() >= 2 * lbs ? 4 : 3)) {
      case 0:  // remap the bio itself to the lower disk (dm's remap)
        r.set_disk(lower_.get());
        send(r);
        break;
      case 1:
        clone_down(r);
        break;
      case 2:
        if (op.inject_percent && rng_->chance(op.inject_percent)) {
          fail(r);
        } else {
          clone_down(r);
        }
        break;
      case 3:
        chained_children(r);
        break;
    }
  }

 private:
  // What submit_bio() promises a driver: checked bios that fit the limits.
  void check_promises(const Bio& r, OpState& op) {
    const uint32_t lbs = lim_.logical_block_size;
    auto violation = [&](const std::string& what) {
      op.violations.push_back(what + " (bio at sector " + std::to_string(r.sector()) +
                              ", " + std::to_string(r.size()) + " bytes)");
    };
    if (r.size() % lbs != 0 || (r.sector() * 512) % lbs != 0) violation("misaligned bio");
    if (r.end_sector() > lower_->capacity()) violation("bio beyond the end");
    if (op_has_data(r.op())) {
      if (r.size() > uint64_t{lim_.max_io_sectors()} << kSectorShift)
        violation("too big");
      if (hw_segments(r, lim_.max_segment_size) > lim_.max_segments) {
        violation("too many segments");
      }
    } else if (r.op() == Op::kDiscard) {
      if (r.sectors() > lim_.max_discard_sectors) violation("discard too big");
      // A piece cut short by the limit ends on the granularity when a
      // boundary lies within reach, so the next piece starts aligned.
      const uint64_t start = r.sector() << kSectorShift;
      const uint64_t reach =
          (uint64_t{lim_.max_discard_sectors} << kSectorShift) / lbs * lbs;
      const uint64_t gran = lim_.discard_granularity;
      if (r.end_sector() != op.end_sector && (start + reach) / gran * gran > start &&
          (r.end_sector() << kSectorShift) % gran != 0) {
        violation("discard split off the granularity");
      }
    } else if (r.op() == Op::kWriteZeroes &&
               r.sectors() > lim_.max_write_zeroes_sectors) {
      violation("write-zeroes too big");
    }
    if (r.op() == op.op && r.op() != Op::kFlush) {
      const bool first = r.sector() == op.start_sector;
      const bool want_preflush = first && any(op.flags & BioFlag::kPreflush);
      if (r.has_flag(BioFlag::kPreflush) != want_preflush)
        violation("PREFLUSH misplaced");
      if (r.has_flag(BioFlag::kFua) != any(op.flags & BioFlag::kFua))
        violation("FUA lost");
    }
  }

  Status pick_error() {
    OpState& op = **op_;
    Status s = op.defer ? op.fixed_error : kInjectable[rng_->below(kInjectableCount)];
    if (op.first_error == Status::kOk) op.first_error = s;
    ++op.injected;
    return s;
  }

  // Completes `b` with an error without sending it down: its range is
  // neither read nor written.
  void fail(Bio& b) {
    OpState& op = **op_;
    if (b.size() > 0) op.dropped.emplace_back(b.sector() << kSectorShift, b.size());
    b.complete(pick_error());
  }

  void send(Bio& b) {
    OpState& op = **op_;
    if (op.defer && rng_->chance(50)) {
      op.deferred.push_back(&b);
    } else {
      submit_bio(b);
    }
  }

  // A piece already chained to its parent (no callback of its own).
  void dispatch_piece(Bio& p) {
    OpState& op = **op_;
    if (op.inject_percent && rng_->chance(op.inject_percent)) {
      fail(p);
    } else if (rng_->chance(50)) {
      p.set_disk(lower_.get());
      send(p);
    } else {
      clone_down(p);
    }
  }

  // A clone goes down; its callback completes `orig`, sometimes with an
  // error although the lower disk succeeded (data written, error reported).
  void clone_down(Bio& orig) {
    Bio* c = orig.clone(set_);
    c->set_disk(lower_.get());
    c->set_end_io(&FaultDriver::clone_done, &orig);
    c->driver_data = reinterpret_cast<uintptr_t>(this);
    ++(*op_)->clones;
    send(*c);
  }

  static void clone_done(Bio& c) {
    auto* self = reinterpret_cast<FaultDriver*>(c.driver_data);
    OpState& op = **self->op_;
    ++op.clone_callbacks;
    Bio* orig = static_cast<Bio*>(c.context());
    Status s = c.status();
    if (op.inject_percent && self->rng_->chance(op.inject_percent / 2)) {
      Status injected = self->pick_error();
      if (s == Status::kOk) s = injected;
    }
    c.put();
    orig->complete(s);
  }

  // Explicit bio_chain: clones covering consecutive parts of `r`, each
  // chained to it, then `r`'s own completion (sometimes with an error).
  void chained_children(Bio& r) {
    const uint32_t lbs = lim_.logical_block_size;
    const uint32_t blocks = r.size() / lbs;
    const uint32_t parts = 2 + rng_->below(std::min<uint32_t>(blocks, 4) - 1);
    std::vector<uint32_t> cuts = {0, blocks};
    while (cuts.size() < parts + 1) {
      uint32_t c = 1 + rng_->below(blocks - 1);
      if (std::find(cuts.begin(), cuts.end(), c) == cuts.end()) cuts.push_back(c);
    }
    std::sort(cuts.begin(), cuts.end());
    std::vector<Bio*> kids;
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      Bio* k = r.clone(set_);
      k->advance(cuts[i] * lbs);
      k->truncate((cuts[i + 1] - cuts[i]) * lbs);
      Bio::chain(*k, r);
      kids.push_back(k);
    }
    for (Bio* k : kids) dispatch_piece(*k);
    OpState& op = **op_;
    if (op.inject_percent && rng_->chance(op.inject_percent / 2)) {
      r.complete(pick_error());  // the parent's own error; its children still run
    } else {
      r.endio();
    }
  }

  std::shared_ptr<Disk> lower_;
  QueueLimits lim_;
  Rng* rng_;
  OpState** op_;
  BioSet set_;
};

struct Variant {
  const char* name;
  const char* ram_spec;
  QueueLimits upper;
  uint32_t max_blocks;    // largest operation, in logical blocks
  uint32_t usual_blocks;  // most operations are at most this large
  uint64_t ops;
  uint64_t seed;
};

uint64_t env_or(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : fallback;
}

struct TopDone {
  int calls = 0;
  Status status = Status::kOk;
  bool put_owner = false;
};
void top_done(Bio& bio) {
  auto* d = static_cast<TopDone*>(bio.context());
  ++d->calls;
  d->status = bio.status();
  if (d->put_owner) bio.put();  // a pooled bio's owner reference
}

class PropertyRun {
 public:
  explicit PropertyRun(const Variant& v) : v_(v), rng_(v.seed) {
    ram_ = reg_.create(v.ram_spec);
    lbs_ = v.upper.logical_block_size;
    EXPECT_EQ(ram_->limits().logical_block_size, lbs_);
    auto drv = std::make_unique<FaultDriver>(ram_, v.upper, &rng_, &op_);
    fault_ = drv.get();
    flaky_ = std::make_shared<Disk>("flaky", ram_->capacity(), v.upper, std::move(drv));
    image_.assign(ram_->size_bytes(), std::byte{0});
    arena_.resize(uint64_t{v.max_blocks} * lbs_ + 64 * 64 + 4096);
    expect_.resize(arena_.size());
  }

  void run() {
    for (uint64_t i = 0; i < v_.ops; ++i) {
      one_op();
      if (::testing::Test::HasFailure()) {
        ADD_FAILURE() << v_.name << ": stopped at operation " << i << " (seed " << v_.seed
                      << "; rerun with BLKSTACK_PROPERTY_SEED=" << v_.seed << ")";
        return;
      }
      if (i % 4096 == 0) check_pools();
    }
    check_pools();
    verify_whole_image();
    EXPECT_EQ(flaky_->in_flight(), 0u);
    EXPECT_EQ(ram_->in_flight(), 0u);
    // The mix must cover what it claims to.
    for (int o = 0; o < kOpCount; ++o)
      EXPECT_GT(by_op_[o], v_.ops / 50) << op_name(Op(o));
    EXPECT_GT(errored_, v_.ops / 20);
    EXPECT_GT(deferred_ops_, v_.ops / 20);
    EXPECT_GT(refused_, v_.ops / 100);
    EXPECT_GT(unsplittable_, 0u);
    ::testing::Test::RecordProperty("operations", std::to_string(v_.ops));
    ::testing::Test::RecordProperty("errored", std::to_string(errored_));
    ::testing::Test::RecordProperty("deferred", std::to_string(deferred_ops_));
    ::testing::Test::RecordProperty("unsplittable", std::to_string(unsplittable_));
  }

 private:
  void check_pools() {
    auto idle = [](BioSet& s) { return s.mempool().available() == s.mempool().total(); };
    EXPECT_TRUE(idle(fault_->set())) << "a flaky bio was leaked or put twice";
    EXPECT_TRUE(idle(flaky_->split_set())) << "a split of flaky was leaked";
    EXPECT_TRUE(idle(ram_->split_set())) << "a split of ram was leaked";
    EXPECT_TRUE(idle(top_set_)) << "a top bio was leaked";
  }

  // Random segments for `bytes`: random cut points (mostly sector aligned;
  // arbitrary ones often leave a layout the flaky disk cannot split, which
  // is tested, but should not crowd out the rest), placed in the arena in
  // shuffled order with gaps.
  void make_segments(uint32_t bytes) {
    const uint32_t most = rng_.chance(70) ? 4 : 12;
    const uint32_t nsegs = 1 + rng_.below(std::min<uint32_t>(most, bytes));
    std::vector<uint32_t> cuts = {0, bytes};
    const bool sector_cuts = rng_.chance(75) && bytes / 512 >= nsegs;
    while (cuts.size() < nsegs + 1) {
      uint32_t c = sector_cuts ? 512 * (1 + rng_.below(bytes / 512 - 1))
                               : 1 + rng_.below(bytes - 1);
      if (std::find(cuts.begin(), cuts.end(), c) == cuts.end()) cuts.push_back(c);
    }
    std::sort(cuts.begin(), cuts.end());
    segs_.clear();
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      segs_.emplace_back(nullptr, cuts[i + 1] - cuts[i]);
    }
    std::vector<uint32_t> order(segs_.size());
    for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
    for (size_t i = order.size(); i > 1; --i)
      std::swap(order[i - 1], order[rng_.below(i)]);
    size_t pos = rng_.below(64);
    for (uint32_t i : order) {
      segs_[i].ptr = arena_.data() + pos;
      pos += segs_[i].len + rng_.below(64);
    }
    arena_used_ = pos;
  }

  // Where the core will fail to split the bio (byte offset), if anywhere:
  // each step takes the largest piece that fits the flaky disk's limits.
  int64_t unsplittable_at(uint64_t sector) {
    Bio shadow;
    shadow.init(nullptr, Op::kWrite, sector, segs_);
    uint64_t done = 0;
    for (;;) {
      uint32_t fit = max_bytes_within_limits(shadow, v_.upper);
      if (fit == shadow.size()) return -1;
      if (fit == 0) return static_cast<int64_t>(done);
      shadow.advance(fit);
      done += fit;
    }
  }

  void one_op() {
    OpState st;
    op_ = &st;
    const uint64_t cap_blocks = ram_->size_bytes() / lbs_;
    const uint32_t lbs_sectors = lbs_ / 512;

    // The mix: reads and writes, ranges, flushes, and a few bad requests.
    uint32_t pick = rng_.below(100);
    Op op = pick < 38   ? Op::kRead
            : pick < 74 ? Op::kWrite
            : pick < 83 ? Op::kDiscard
            : pick < 92 ? Op::kWriteZeroes
                        : Op::kFlush;
    uint32_t blocks =
        rng_.chance(80) ? 1 + rng_.below(v_.usual_blocks) : 1 + rng_.below(v_.max_blocks);
    if (!op_has_data(op) && op != Op::kFlush && rng_.chance(30)) blocks *= 8;
    blocks = static_cast<uint32_t>(std::min<uint64_t>(blocks, cap_blocks));
    uint64_t sector =
        rng_.below(static_cast<uint32_t>(cap_blocks - blocks + 1)) * lbs_sectors;
    uint32_t bytes = op == Op::kFlush ? 0 : blocks * lbs_;
    Status expect_refusal = Status::kOk;
    if (op != Op::kFlush && rng_.chance(2)) {
      switch (rng_.below(3)) {
        case 0:  // runs off the end (or starts there)
          sector = ram_->capacity() - uint64_t{lbs_sectors} * rng_.below(blocks);
          expect_refusal = Status::kOutOfRange;
          break;
        case 1:  // not a whole sector
          bytes -= 1 + rng_.below(511);
          expect_refusal = Status::kInvalid;
          break;
        case 2:  // misaligned start (only with blocks larger than a sector)
          if (lbs_sectors > 1) {
            sector += 1 + rng_.below(lbs_sectors - 1);
          } else {
            bytes += 100;
          }
          expect_refusal = Status::kInvalid;
          break;
      }
    }
    st.op = op;
    st.start_sector = sector;
    st.end_sector = sector + bytes / 512;
    if (op == Op::kWrite) {
      if (rng_.chance(10)) st.flags |= BioFlag::kPreflush;
      if (rng_.chance(10)) st.flags |= BioFlag::kFua;
    }
    if (rng_.chance(15)) st.flags |= BioFlag::kSync;
    st.inject_percent = rng_.chance(30) ? 5 + rng_.below(40) : 0;

    int64_t cut_at = -1;
    if (op_has_data(op)) {
      make_segments(bytes);
      if (expect_refusal == Status::kOk) cut_at = unsplittable_at(sector);
    }
    st.defer = expect_refusal == Status::kOk && cut_at < 0 && rng_.chance(20);
    st.fixed_error = kInjectable[rng_.below(kInjectableCount)];

    // Data for a write, poison for a read.
    std::vector<std::byte>& wdata = wdata_;
    if (op == Op::kWrite) {
      wdata.resize(bytes);
      rng_.fill(wdata.data(), bytes);
      size_t off = 0;
      std::memset(arena_.data(), 0x5A, arena_used_);
      for (const Segment& s : segs_) {
        std::memcpy(s.ptr, wdata.data() + off, s.len);
        off += s.len;
      }
    } else if (op == Op::kRead) {
      std::memset(arena_.data(), static_cast<int>(kPoison), arena_used_);
    }

    // Half the operations use a pooled bio with the submitter's reference.
    TopDone done;
    Bio stack_bio;
    Bio* bio = &stack_bio;
    const bool pooled = rng_.chance(50);
    if (pooled) {
      bio = top_set_.alloc();
      done.put_owner = true;
    }
    if (op_has_data(op)) {
      bio->init(flaky_.get(), op, sector, segs_, top_done, &done);
    } else {
      bio->init_nodata(flaky_.get(), op, sector, bytes, top_done, &done);
    }
    bio->set_flags(st.flags);
    if (pooled) bio->get();
    submit_bio(*bio);
    if (!st.deferred.empty()) {
      ASSERT_EQ(done.calls, 0) << "completed before its deferred pieces";
      ++deferred_ops_;
      std::vector<Bio*> later = std::move(st.deferred);
      for (size_t i = later.size(); i > 1; --i)
        std::swap(later[i - 1], later[rng_.below(i)]);
      for (Bio* b : later) {
        ASSERT_EQ(done.calls, 0);
        submit_bio(*b);
      }
      ASSERT_TRUE(st.deferred.empty());
    }
    ASSERT_EQ(done.calls, 1) << op_name(op) << " at " << sector << " + " << bytes;
    if (pooled) {
      EXPECT_EQ(bio->status(), done.status);  // still ours to look at
      bio->put();
    }
    ASSERT_EQ(st.clones, st.clone_callbacks);
    ASSERT_TRUE(st.violations.empty()) << st.violations.front();
    ++by_op_[static_cast<int>(op)];

    // The expected status.
    if (expect_refusal != Status::kOk) {
      ++refused_;
      ASSERT_EQ(done.status, expect_refusal);
      ASSERT_EQ(st.driver_calls, 0) << "a refused bio reached the driver";
      return;
    }
    Status want = Status::kOk;
    if (st.defer) {
      if (st.injected) want = st.fixed_error;
    } else {
      want = st.first_error;
    }
    if (cut_at >= 0) {
      // The core fails the rest of the bio when it cannot be split; it is
      // neither read nor written.
      ++unsplittable_;
      if (want == Status::kOk) want = Status::kInvalid;
      st.dropped.emplace_back((sector << kSectorShift) + cut_at, bytes - cut_at);
    }
    ASSERT_EQ(done.status, want) << op_name(op) << " at " << sector << " + " << bytes
                                 << ", " << st.injected << " errors injected";
    if (want != Status::kOk) ++errored_;

    // Apply to the model and check the data.
    const uint64_t start = sector << kSectorShift;
    auto dropped = [&](auto&& fn) {
      for (auto [off, len] : st.dropped) fn(off - start, len);
    };
    switch (op) {
      case Op::kWrite: {
        // The stack must not write into a write bio's memory.
        size_t off = 0;
        for (const Segment& s : segs_) {
          ASSERT_EQ(std::memcmp(s.ptr, wdata.data() + off, s.len), 0);
          off += s.len;
        }
        std::vector<std::byte> keep(image_.begin() + start,
                                    image_.begin() + start + bytes);
        std::memcpy(image_.data() + start, wdata.data(), bytes);
        dropped([&](uint64_t at, uint64_t len) {
          std::memcpy(image_.data() + start + at, keep.data() + at, len);
        });
        break;
      }
      case Op::kDiscard:
      case Op::kWriteZeroes: {
        std::vector<std::byte> keep(image_.begin() + start,
                                    image_.begin() + start + bytes);
        std::memset(image_.data() + start, 0, bytes);
        dropped([&](uint64_t at, uint64_t len) {
          std::memcpy(image_.data() + start + at, keep.data() + at, len);
        });
        break;
      }
      case Op::kRead: {
        // Expected arena: poison everywhere, the model in the segments,
        // poison where the stack never read.
        std::vector<std::byte>& logical = wdata;
        logical.assign(image_.begin() + start, image_.begin() + start + bytes);
        dropped([&](uint64_t at, uint64_t len) {
          std::memset(logical.data() + at, static_cast<int>(kPoison), len);
        });
        std::memset(expect_.data(), static_cast<int>(kPoison), arena_used_);
        size_t off = 0;
        for (const Segment& s : segs_) {
          std::memcpy(expect_.data() + (s.ptr - arena_.data()), logical.data() + off,
                      s.len);
          off += s.len;
        }
        if (std::memcmp(expect_.data(), arena_.data(), arena_used_) != 0) {
          size_t bad = 0;
          while (expect_[bad] == arena_[bad]) ++bad;
          FAIL() << "read at sector " << sector << " + " << bytes
                 << " differs from the model at arena byte " << bad;
        }
        break;
      }
      case Op::kFlush:
        break;
    }
  }

  // Reads the whole ram disk directly and compares it with the model.
  void verify_whole_image() {
    std::vector<std::byte> all(image_.size());
    Segment seg(all.data(), static_cast<uint32_t>(all.size()));
    TopDone done;
    Bio bio;
    bio.init(ram_.get(), Op::kRead, 0, {&seg, 1}, top_done, &done);
    submit_bio(bio);
    ASSERT_EQ(done.calls, 1);
    ASSERT_EQ(done.status, Status::kOk);
    EXPECT_TRUE(all == image_) << "the disk differs from the model";
  }

  Variant v_;
  Rng rng_;
  DiskRegistry reg_;
  std::shared_ptr<Disk> ram_;
  std::shared_ptr<Disk> flaky_;
  FaultDriver* fault_ = nullptr;
  OpState* op_ = nullptr;
  BioSet top_set_{"top-bios", 2};
  uint32_t lbs_ = 512;
  std::vector<std::byte> image_;
  std::vector<std::byte> arena_;
  std::vector<std::byte> expect_;
  std::vector<std::byte> wdata_;
  size_t arena_used_ = 0;
  std::vector<Segment> segs_;
  uint64_t by_op_[kOpCount] = {};
  uint64_t errored_ = 0;
  uint64_t deferred_ops_ = 0;
  uint64_t refused_ = 0;
  uint64_t unsplittable_ = 0;
};

QueueLimits flaky_limits(uint32_t lbs) {
  QueueLimits lim;
  lim.logical_block_size = lim.physical_block_size = lbs;
  lim.volatile_write_cache = true;  // PREFLUSH and FUA reach the driver
  lim.fua = true;
  if (lbs == 512) {
    lim.max_sectors = 41;  // not a multiple of anything useful
    lim.max_segments = 5;
    lim.max_segment_size = 2600;
    lim.discard_granularity = 4096;
    lim.max_discard_sectors = 45;
    lim.max_write_zeroes_sectors = 37;
  } else {
    lim.max_sectors = 60;  // 7.5 blocks: rounded down to 7
    lim.max_segments = 4;
    lim.max_segment_size = 6000;
    lim.discard_granularity = 16384;
    lim.max_discard_sectors = 88;
    lim.max_write_zeroes_sectors = 48;
  }
  EXPECT_EQ(lim.check(), "");
  return lim;
}

// Together the two runs make 1,000,000 operations (BLKSTACK_PROPERTY_OPS
// sets each run's count, BLKSTACK_PROPERTY_SEED the seed).
TEST(BioProperty, RandomOpsMatchTheModelWith512ByteBlocks) {
  Variant v{"bs=512",
            "ram:256K,bs=512,max_sectors=13,name=model512",
            flaky_limits(512),
            /*max_blocks=*/64,
            /*usual_blocks=*/8,
            env_or("BLKSTACK_PROPERTY_OPS", 500000),
            env_or("BLKSTACK_PROPERTY_SEED", 512)};
  PropertyRun(v).run();
}

TEST(BioProperty, RandomOpsMatchTheModelWith4096ByteBlocks) {
  Variant v{"bs=4096",
            "ram:1M,bs=4096,max_sectors=24,name=model4096",
            flaky_limits(4096),
            /*max_blocks=*/16,
            /*usual_blocks=*/4,
            env_or("BLKSTACK_PROPERTY_OPS", 500000),
            env_or("BLKSTACK_PROPERTY_SEED", 4096)};
  PropertyRun(v).run();
}

}  // namespace
}  // namespace blkstack
