// QueueLimits: consistency checks, and splitting a bio so every piece fits
// every limit (bio_split_to_limits), checked case by case and against an
// independent brute-force model on random layouts and limits.
#include "blkstack/limits.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "blkstack/bioset.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Done;
using testing_util::record_done;

// Memory for a bio with the given segment lengths, scattered with gaps so
// that pieces can be traced back to exact addresses.
struct Layout {
  std::vector<std::byte> arena;
  std::vector<Segment> segs;

  explicit Layout(const std::vector<uint32_t>& lens) {
    size_t total = 0;
    for (uint32_t l : lens) total += l + 32;
    arena.resize(total);
    size_t pos = 0;
    for (uint32_t l : lens) {
      segs.emplace_back(arena.data() + pos, l);
      pos += l + 32;
    }
  }
};

QueueLimits base_limits() {
  QueueLimits lim;
  lim.max_sectors = 1024;
  lim.max_hw_sectors = 1024;
  lim.max_segments = 128;
  lim.max_segment_size = 1u << 20;
  return lim;
}

uint32_t fit(const std::vector<uint32_t>& lens, const QueueLimits& lim,
             uint32_t advance = 0) {
  Layout l(lens);
  Bio bio;
  bio.init(nullptr, Op::kWrite, 0, l.segs);
  bio.advance(advance);
  return max_bytes_within_limits(bio, lim);
}

TEST(QueueLimits, DefaultsAreConsistent) {
  EXPECT_EQ(QueueLimits{}.check(), "");
  EXPECT_EQ(base_limits().check(), "");
}

TEST(QueueLimits, MaxIoSectorsIsTheSmallerOfTheTwo) {
  QueueLimits lim;
  lim.max_sectors = 100;
  lim.max_hw_sectors = 50;
  EXPECT_EQ(lim.max_io_sectors(), 50u);
  lim.max_hw_sectors = 500;
  EXPECT_EQ(lim.max_io_sectors(), 100u);
}

TEST(QueueLimits, CheckNamesWhatIsWrong) {
  struct Case {
    const char* what;
    void (*mutate)(QueueLimits&);
    const char* message;
  };
  const Case cases[] = {
      {"lbs not a power of two", [](QueueLimits& l) { l.logical_block_size = 1000; },
       "logical_block_size must be a power of two from 512 to 65536"},
      {"lbs too small", [](QueueLimits& l) { l.logical_block_size = 256; },
       "logical_block_size must be a power of two from 512 to 65536"},
      {"lbs too large",
       [](QueueLimits& l) { l.logical_block_size = l.physical_block_size = 131072; },
       "logical_block_size must be a power of two from 512 to 65536"},
      {"pbs below lbs", [](QueueLimits& l) { l.logical_block_size = 4096; },
       "physical_block_size must be a power of two >= logical_block_size"},
      {"pbs not a power of two", [](QueueLimits& l) { l.physical_block_size = 3072; },
       "physical_block_size must be a power of two >= logical_block_size"},
      {"max_sectors below one block",
       [](QueueLimits& l) {
         l.logical_block_size = l.physical_block_size = 4096;
         l.max_sectors = 4;
       },
       "max_sectors must hold at least one logical block"},
      {"max_hw_sectors below one block",
       [](QueueLimits& l) {
         l.logical_block_size = l.physical_block_size = 4096;
         l.max_hw_sectors = 7;
       },
       "max_sectors must hold at least one logical block"},
      {"no segments", [](QueueLimits& l) { l.max_segments = 0; },
       "max_segments must be at least 1"},
      {"tiny segments", [](QueueLimits& l) { l.max_segment_size = 511; },
       "max_segment_size must be at least 512"},
      {"segments cannot hold a block",
       [](QueueLimits& l) {
         l.logical_block_size = l.physical_block_size = 4096;
         l.max_segments = 2;
         l.max_segment_size = 1024;
       },
       "max_segments * max_segment_size must hold at least one logical block"},
      {"granularity not a power of two",
       [](QueueLimits& l) { l.discard_granularity = 3000; },
       "discard_granularity must be a power of two >= logical_block_size"},
      {"granularity below lbs",
       [](QueueLimits& l) {
         l.logical_block_size = l.physical_block_size = 4096;
         l.discard_granularity = 512;
       },
       "discard_granularity must be a power of two >= logical_block_size"},
      {"discard below one block",
       [](QueueLimits& l) {
         l.logical_block_size = l.physical_block_size = 4096;
         l.max_discard_sectors = 4;
       },
       "max_discard_sectors must hold at least one logical block"},
      {"write-zeroes below one block",
       [](QueueLimits& l) {
         l.logical_block_size = l.physical_block_size = 4096;
         l.max_write_zeroes_sectors = 1;
       },
       "max_write_zeroes_sectors must hold at least one logical block"},
  };
  for (const Case& c : cases) {
    QueueLimits lim;
    c.mutate(lim);
    EXPECT_EQ(lim.check(), c.message) << c.what;
  }
  // Just enough is fine.
  QueueLimits ok;
  ok.logical_block_size = ok.physical_block_size = 4096;
  ok.max_sectors = 8;
  ok.max_segments = 4;
  ok.max_segment_size = 1024;
  ok.discard_granularity = 4096;
  ok.max_discard_sectors = 8;
  ok.max_write_zeroes_sectors = 8;
  EXPECT_EQ(ok.check(), "");
}

TEST(SplitLimits, ABioThatFitsIsNotSplit) {
  QueueLimits lim = base_limits();
  EXPECT_EQ(fit({4096, 4096, 8192}, lim), 16384u);
  BioSet set("limits-test", 2);
  std::vector<std::byte> mem(4096);
  Segment seg(mem.data(), 4096);
  Bio bio;
  bio.init(nullptr, Op::kRead, 0, {&seg, 1});
  Status err = Status::kOk;
  EXPECT_EQ(split_to_limits(bio, lim, set, &err), &bio);
  EXPECT_EQ(err, Status::kOk);
  EXPECT_EQ(bio.size(), 4096u);
}

TEST(SplitLimits, MaxSectors) {
  QueueLimits lim = base_limits();
  lim.max_sectors = 16;
  EXPECT_EQ(fit({65536}, lim), 8192u);
  EXPECT_EQ(fit({3000, 3000, 3000, 3000, 288}, lim), 8192u);
  lim.max_hw_sectors = 8;  // the hardware ceiling wins when smaller
  EXPECT_EQ(fit({65536}, lim), 4096u);
  // A max_sectors that is not a multiple of the logical block size rounds
  // down to one.
  lim = base_limits();
  lim.logical_block_size = lim.physical_block_size = 4096;
  lim.max_sectors = 12;
  EXPECT_EQ(fit({65536}, lim), 4096u);
}

TEST(SplitLimits, MaxSegments) {
  QueueLimits lim = base_limits();
  lim.max_segments = 3;
  EXPECT_EQ(fit({4096, 4096, 4096, 4096, 4096}, lim), 12288u);
  EXPECT_EQ(fit({4096, 4096, 4096}, lim), 12288u);  // exactly at the limit: no split
  // Counting starts at the current position, mid-segment.
  EXPECT_EQ(fit({4096, 4096, 4096, 4096, 4096}, lim, 2048), 2048u + 8192u);
}

TEST(SplitLimits, ASegmentLargerThanMaxSegmentSizeCountsAsSeveral) {
  QueueLimits lim = base_limits();
  lim.max_segment_size = 4096;
  lim.max_segments = 4;
  EXPECT_EQ(fit({65536}, lim), 16384u);
  EXPECT_EQ(fit({6144, 65536}, lim), 6144u + 8192u);  // 2 + 2 hardware segments
  // A size that is not a multiple of 512 leaves an odd prefix, rounded down.
  lim.max_segment_size = 3000;
  lim.max_segments = 2;
  EXPECT_EQ(fit({65536}, lim), 5632u);  // 6000 -> 11 sectors
  // max_segments alone does not split a bio whose one segment is small.
  lim.max_segments = 1;
  lim.max_segment_size = 65536;
  EXPECT_EQ(fit({65536}, lim), 65536u);
}

TEST(SplitLimits, SegmentLayoutsForceRoundingDownToTheBlockSize) {
  QueueLimits lim = base_limits();
  lim.logical_block_size = lim.physical_block_size = 4096;
  lim.max_segments = 3;
  EXPECT_EQ(fit({3072, 3072, 3072, 3072}, lim), 8192u);  // 9216 -> 8192
  // Segments shorter than a sector.
  lim = base_limits();
  lim.max_segments = 3;
  EXPECT_EQ(fit({256, 256, 256, 256}, lim), 512u);  // 768 -> 512
  EXPECT_EQ(fit({100, 400, 12, 512}, lim), 512u);   // 512 exactly: a whole sector
}

TEST(SplitLimits, AnImpossibleSplitReturnsInvalidAndLeavesTheBioAlone) {
  QueueLimits lim = base_limits();
  lim.logical_block_size = lim.physical_block_size = 4096;
  lim.max_segments = 4;  // 4 x 1024 bytes hold one block only if aligned
  std::vector<uint32_t> lens = {1000, 1000, 1000, 1000, 96, 4096};  // 8192 bytes
  EXPECT_EQ(fit(lens, lim), 0u);
  Layout l(lens);
  BioSet set("limits-test", 2);
  Done done;
  Bio bio;
  bio.init(nullptr, Op::kWrite, 16, l.segs, record_done, &done);
  Status err = Status::kOk;
  EXPECT_EQ(split_to_limits(bio, lim, set, &err), nullptr);
  EXPECT_EQ(err, Status::kInvalid);
  EXPECT_EQ(bio.sector(), 16u);
  EXPECT_EQ(bio.size(), 8192u);
  EXPECT_EQ(done.calls, 0);
  bio.complete(err);
  EXPECT_EQ(done.calls, 1);
}

TEST(SplitLimits, SplitToLimitsReturnsAChainedFrontSharingMemory) {
  QueueLimits lim = base_limits();
  lim.max_sectors = 8;
  Layout l({1024, 8192});
  BioSet set("limits-test", 2);
  Done done;
  Bio bio;
  bio.init(nullptr, Op::kRead, 64, l.segs, record_done, &done);
  Status err = Status::kOk;
  Bio* front = split_to_limits(bio, lim, set, &err);
  ASSERT_NE(front, nullptr);
  ASSERT_NE(front, &bio);
  EXPECT_EQ(front->pool(), &set);
  EXPECT_EQ(front->sector(), 64u);
  EXPECT_EQ(front->size(), 4096u);
  EXPECT_EQ(front->segments().data(), l.segs.data());
  EXPECT_EQ(bio.sector(), 72u);
  EXPECT_EQ(bio.size(), 5120u);
  EXPECT_EQ(bio.iter().idx, 1);
  EXPECT_EQ(bio.iter().done, 3072u);
  front->complete(Status::kMedium);
  EXPECT_EQ(done.calls, 0);
  bio.endio();
  EXPECT_EQ(done.calls, 1);
  EXPECT_EQ(done.status, Status::kMedium);
}

uint32_t range_fit(Op op, uint64_t sector, uint32_t bytes, const QueueLimits& lim) {
  Bio bio;
  bio.init_nodata(nullptr, op, sector, bytes);
  return max_bytes_within_limits(bio, lim);
}

TEST(SplitLimits, DiscardMaxSectors) {
  QueueLimits lim = base_limits();
  lim.max_discard_sectors = 16;
  EXPECT_EQ(range_fit(Op::kDiscard, 0, 8192, lim), 8192u);
  EXPECT_EQ(range_fit(Op::kDiscard, 0, 1 << 20, lim), 8192u);
  // Reads and writes ignore the discard limit, and the other way around.
  lim.max_sectors = 8;
  EXPECT_EQ(range_fit(Op::kDiscard, 0, 1 << 20, lim), 8192u);
  // Not a multiple of the logical block size: rounded down.
  lim = base_limits();
  lim.logical_block_size = lim.physical_block_size = 4096;
  lim.max_discard_sectors = 12;
  EXPECT_EQ(range_fit(Op::kDiscard, 0, 1 << 20, lim), 4096u);
}

TEST(SplitLimits, DiscardSplitsEndOnTheGranularity) {
  QueueLimits lim = base_limits();
  lim.discard_granularity = 4096;
  lim.max_discard_sectors = 16;  // 8 KiB
  // From sector 3 (byte 1536) the 8 KiB limit would end at byte 9728; the
  // split ends at 8192 instead, so the rest starts aligned.
  EXPECT_EQ(range_fit(Op::kDiscard, 3, 1 << 20, lim), 6656u);
  // Already aligned: a full 8 KiB.
  EXPECT_EQ(range_fit(Op::kDiscard, 8, 1 << 20, lim), 8192u);
  // When no granularity boundary lies within reach, the limit still holds.
  lim.discard_granularity = 65536;
  EXPECT_EQ(range_fit(Op::kDiscard, 3, 1 << 20, lim), 8192u);
  // Small enough discards are never split, aligned or not.
  EXPECT_EQ(range_fit(Op::kDiscard, 3, 4096, lim), 4096u);
}

TEST(SplitLimits, WriteZeroesMaxSectorsWithoutGranularity) {
  QueueLimits lim = base_limits();
  lim.discard_granularity = 4096;
  lim.max_discard_sectors = 1024;
  lim.max_write_zeroes_sectors = 16;
  EXPECT_EQ(range_fit(Op::kWriteZeroes, 3, 1 << 20, lim), 8192u);
  EXPECT_EQ(range_fit(Op::kWriteZeroes, 3, 8192, lim), 8192u);
}

TEST(SplitLimits, UnsupportedRangeOpsCannotBeSplit) {
  QueueLimits lim = base_limits();  // no discard, no write-zeroes
  BioSet set("limits-test", 2);
  for (Op op : {Op::kDiscard, Op::kWriteZeroes}) {
    Bio bio;
    bio.init_nodata(nullptr, op, 0, 4096);
    Status err = Status::kOk;
    EXPECT_EQ(split_to_limits(bio, lim, set, &err), nullptr) << op_name(op);
    EXPECT_EQ(err, Status::kInvalid);
  }
}

TEST(SplitLimits, FlushesAreNeverSplit) {
  QueueLimits lim = base_limits();
  lim.max_sectors = 8;
  EXPECT_EQ(range_fit(Op::kFlush, 0, 0, lim), 0u);
  Bio bio;
  bio.init_nodata(nullptr, Op::kFlush, 0, 0);
  BioSet set("limits-test", 1);
  Status err = Status::kOk;
  EXPECT_EQ(split_to_limits(bio, lim, set, &err), &bio);
}

// --- randomized ------------------------------------------------------------

struct Piece {
  const std::byte* ptr;
  uint32_t len;
};

// Adjacent memory within one segment merges, so that the same bytes cut in
// different places compare equal.
void append_merged(std::vector<Piece>& out, const std::byte* ptr, uint32_t len) {
  if (!out.empty() && out.back().ptr + out.back().len == ptr) {
    out.back().len += len;
  } else {
    out.push_back({ptr, len});
  }
}

// The independent model: the hardware segments of the first `bytes` bytes.
uint64_t hw_segments(const std::vector<Piece>& chunks, uint64_t bytes, uint32_t mss) {
  uint64_t n = 0;
  for (const Piece& c : chunks) {
    if (bytes == 0) break;
    uint64_t part = std::min<uint64_t>(c.len, bytes);
    n += (part + mss - 1) / mss;
    bytes -= part;
  }
  return n;
}

// The largest prefix that fits, by brute force over block multiples.
uint32_t reference_fit(const Bio& bio, const QueueLimits& lim) {
  std::vector<Piece> chunks;
  bio.for_each_chunk([&](const BioChunk& c) { chunks.push_back({c.ptr, c.len}); });
  const uint64_t max_io = uint64_t{lim.max_io_sectors()} << kSectorShift;
  auto fits = [&](uint64_t l) {
    return l <= max_io &&
           hw_segments(chunks, l, lim.max_segment_size) <= lim.max_segments;
  };
  if (fits(bio.size())) return bio.size();
  uint32_t best = 0;
  for (uint64_t l = lim.logical_block_size; l < bio.size(); l += lim.logical_block_size) {
    if (!fits(l)) break;
    best = static_cast<uint32_t>(l);
  }
  return best;
}

QueueLimits random_data_limits(std::mt19937& rng) {
  static constexpr uint32_t kBlockSizes[] = {512, 1024, 2048, 4096, 8192};
  for (;;) {
    QueueLimits lim;
    lim.logical_block_size = kBlockSizes[rng() % 5];
    lim.physical_block_size = std::max<uint32_t>(lim.logical_block_size, 4096);
    lim.max_sectors = 1 + rng() % 256;
    lim.max_hw_sectors = 1 + rng() % 512;
    lim.max_segments = static_cast<uint16_t>(1 + rng() % 10);
    lim.max_segment_size = 512 + rng() % 16384;
    if (lim.check().empty()) return lim;
  }
}

TEST(SplitLimits, RandomLayoutsSplitIntoPiecesThatRespectEveryLimit) {
  std::mt19937 rng(20240601);
  int splits = 0, impossible = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const QueueLimits lim = random_data_limits(rng);
    const uint32_t lbs = lim.logical_block_size;
    std::vector<uint32_t> lens(1 + rng() % 40);
    uint64_t total = 0;
    for (uint32_t& l : lens) {
      switch (rng() % 4) {
        case 0:
          l = 1 + rng() % 511;
          break;  // shorter than a sector
        case 1:
          l = 512 * (1 + rng() % 16);
          break;  // whole sectors
        case 2:
          l = lbs * (1 + rng() % 4);
          break;  // whole blocks
        default:
          l = 1 + rng() % 20000;
          break;  // anything
      }
      total += l;
    }
    const uint32_t pad = static_cast<uint32_t>((lbs - total % lbs) % lbs);
    lens.back() += pad;
    total += pad;
    Layout layout(lens);
    const uint64_t start = lbs / 512 * (rng() % 1000);

    BioSet set("limits-random", 4);
    Done done;
    Bio bio;
    bio.init(nullptr, rng() % 2 ? Op::kRead : Op::kWrite, start, layout.segs, record_done,
             &done);
    std::vector<Piece> original;
    bio.for_each_chunk([&](const BioChunk& c) { append_merged(original, c.ptr, c.len); });

    std::vector<Piece> seen;
    std::vector<Bio*> fronts;
    uint64_t next_sector = start;
    Status err = Status::kOk;
    for (;;) {
      const uint64_t size_before = bio.size();
      const uint32_t want = reference_fit(bio, lim);
      ASSERT_EQ(max_bytes_within_limits(bio, lim), want) << "trial " << trial;
      Bio* piece = split_to_limits(bio, lim, set, &err);
      if (piece == nullptr) {
        ASSERT_EQ(want, 0u);
        ASSERT_EQ(err, Status::kInvalid);
        ASSERT_EQ(bio.size(), size_before);  // untouched
        ++impossible;
        break;
      }
      // Every limit, and no piece below a block.
      ASSERT_GT(piece->size(), 0u);
      ASSERT_EQ(piece->size() % lbs, 0u);
      ASSERT_LE(piece->size(), uint64_t{lim.max_io_sectors()} << kSectorShift);
      std::vector<Piece> chunks;
      piece->for_each_chunk([&](const BioChunk& c) { chunks.push_back({c.ptr, c.len}); });
      ASSERT_LE(hw_segments(chunks, piece->size(), lim.max_segment_size),
                lim.max_segments);
      ASSERT_EQ(piece->sector(), next_sector);
      ASSERT_EQ(piece->size(), want);
      next_sector += piece->sectors();
      for (const Piece& c : chunks) append_merged(seen, c.ptr, c.len);
      if (piece == &bio) break;
      ++splits;
      fronts.push_back(piece);
    }
    if (err == Status::kOk) {
      // The pieces are the original bytes, in order, at the same addresses.
      ASSERT_EQ(next_sector, start + total / 512);
      ASSERT_EQ(seen.size(), original.size());
      for (size_t i = 0; i < seen.size(); ++i) {
        ASSERT_EQ(seen[i].ptr, original[i].ptr) << i;
        ASSERT_EQ(seen[i].len, original[i].len) << i;
      }
    }
    // Complete in random order: exactly one callback, after the last piece.
    std::shuffle(fronts.begin(), fronts.end(), rng);
    bio.complete(err);
    for (Bio* f : fronts) {
      ASSERT_EQ(done.calls, 0);
      f->endio();
    }
    ASSERT_EQ(done.calls, 1);
    ASSERT_EQ(done.status, err);
    ASSERT_EQ(set.mempool().available(), set.mempool().total()) << "a piece was not put";
  }
  // The generator must exercise both outcomes to mean anything.
  EXPECT_GT(splits, 3000);
  EXPECT_GT(impossible, 20);
}

TEST(SplitLimits, RandomRangesSplitAtTheLimitAndOnTheGranularity) {
  std::mt19937 rng(7);
  int aligned_cuts = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    QueueLimits lim;
    lim.logical_block_size = 512u << (rng() % 4);
    lim.physical_block_size = std::max<uint32_t>(lim.logical_block_size, 4096);
    const uint32_t lbs_sectors = lim.logical_block_size / 512;
    lim.discard_granularity = rng() % 3 ? lim.logical_block_size << (rng() % 5) : 0;
    lim.max_discard_sectors = lbs_sectors + rng() % 300;
    lim.max_write_zeroes_sectors = lbs_sectors + rng() % 300;
    ASSERT_EQ(lim.check(), "");
    const Op op = rng() % 2 ? Op::kDiscard : Op::kWriteZeroes;
    const uint32_t max_bytes =
        (op == Op::kDiscard ? lim.max_discard_sectors : lim.max_write_zeroes_sectors) *
        512;
    const uint32_t max_blocks =
        max_bytes / lim.logical_block_size * lim.logical_block_size;
    const uint64_t start = lbs_sectors * (rng() % 5000);
    const uint32_t bytes = lim.logical_block_size * (1 + rng() % 2000);

    BioSet set("range-random", 4);
    Done done;
    Bio bio;
    bio.init_nodata(nullptr, op, start, bytes, record_done, &done);
    std::vector<Bio*> fronts;
    uint64_t next = start;
    uint64_t covered = 0;
    Status err = Status::kOk;
    for (;;) {
      Bio* piece = split_to_limits(bio, lim, set, &err);
      ASSERT_NE(piece, nullptr);
      const uint64_t p_start = piece->sector() * 512;
      ASSERT_EQ(piece->sector(), next);
      ASSERT_GT(piece->size(), 0u);
      ASSERT_LE(piece->size(), max_bytes);
      ASSERT_EQ(piece->size() % lim.logical_block_size, 0u);
      next += piece->sectors();
      covered += piece->size();
      if (piece == &bio) break;
      fronts.push_back(piece);
      const uint64_t cut = p_start + piece->size();
      const uint32_t gran = lim.discard_granularity;
      if (op == Op::kDiscard && gran > lim.logical_block_size &&
          (p_start + max_blocks) / gran * gran > p_start) {
        // A granularity boundary was within reach: the cut is the last one.
        ASSERT_EQ(cut % gran, 0u) << "trial " << trial;
        ASSERT_EQ(cut, (p_start + max_blocks) / gran * gran);
        ++aligned_cuts;
      } else {
        ASSERT_EQ(piece->size(), max_blocks) << "trial " << trial;
      }
    }
    ASSERT_EQ(covered, bytes);
    bio.endio();
    for (Bio* f : fronts) f->endio();
    ASSERT_EQ(done.calls, 1);
  }
  EXPECT_GT(aligned_cuts, 1000);
}

}  // namespace
}  // namespace blkstack
