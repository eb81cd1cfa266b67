// Bio: fields, the iterator, data copies, completion exactly once, chaining
// (first error wins, iterative deep chains), splitting without copying,
// cloning, reference counting and the BioSet round trip.
#include "blkstack/bio.h"

#include <gtest/gtest.h>
#include <pthread.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <ostream>
#include <random>
#include <vector>

#include "blkstack/bioset.h"
#include "test_util.h"

namespace blkstack {
namespace {

using testing_util::Done;
using testing_util::record_done;

// The chunks a bio visits, flattened for comparison.
struct Chunk {
  uint64_t sector;
  const std::byte* ptr;
  uint32_t len;
  uint16_t seg;
  uint32_t offset;
  bool operator==(const Chunk&) const = default;
};
void PrintTo(const Chunk& c, std::ostream* os) {
  *os << "{sector " << c.sector << ", ptr " << static_cast<const void*>(c.ptr) << ", len "
      << c.len << ", seg " << c.seg << ", offset " << c.offset << "}";
}
std::vector<Chunk> chunks_of(const Bio& bio) {
  std::vector<Chunk> out;
  bio.for_each_chunk([&](const BioChunk& c) {
    out.push_back({c.sector, c.ptr, c.len, c.seg, c.offset});
  });
  return out;
}

// Segments scattered over an arena with gaps between them (and in an order
// unrelated to their addresses), so that any arithmetic that assumes the
// memory is contiguous shows up as a wrong pointer.
struct ScatteredBuffer {
  std::vector<std::byte> arena;
  std::vector<Segment> segs;

  explicit ScatteredBuffer(const std::vector<uint32_t>& lens, uint32_t gap = 64) {
    size_t total = 0;
    for (uint32_t l : lens) total += l + gap;
    arena.assign(total + gap, std::byte{0xEE});
    // Place the segments back to front in the arena.
    size_t pos = total;
    for (uint32_t l : lens) {
      pos -= l + gap;
      segs.emplace_back(arena.data() + pos + gap, l);
    }
  }
};

// Runs `fn` on a thread with a small stack: a deep recursion that would pass
// on the default 8 MiB main-thread stack crashes here.
void run_on_small_stack(size_t stack_bytes, std::function<void()> fn) {
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, stack_bytes), 0);
  pthread_t thread;
  auto trampoline = [](void* arg) -> void* {
    (*static_cast<std::function<void()>*>(arg))();
    return nullptr;
  };
  ASSERT_EQ(pthread_create(&thread, &attr, trampoline, &fn), 0);
  ASSERT_EQ(pthread_join(thread, nullptr), 0);
  pthread_attr_destroy(&attr);
}

TEST(Bio, OpNamesAndClasses) {
  EXPECT_EQ(op_name(Op::kRead), "read");
  EXPECT_EQ(op_name(Op::kWrite), "write");
  EXPECT_EQ(op_name(Op::kFlush), "flush");
  EXPECT_EQ(op_name(Op::kDiscard), "discard");
  EXPECT_EQ(op_name(Op::kWriteZeroes), "write-zeroes");
  EXPECT_FALSE(op_is_write(Op::kRead));
  EXPECT_TRUE(op_is_write(Op::kWrite));
  EXPECT_TRUE(op_is_write(Op::kDiscard));
  EXPECT_TRUE(op_is_write(Op::kWriteZeroes));
  EXPECT_TRUE(op_has_data(Op::kRead));
  EXPECT_TRUE(op_has_data(Op::kWrite));
  EXPECT_FALSE(op_has_data(Op::kDiscard));
  EXPECT_FALSE(op_has_data(Op::kWriteZeroes));
  EXPECT_FALSE(op_has_data(Op::kFlush));
}

TEST(Bio, InitComputesSizeFromSegments) {
  std::vector<std::byte> a(4096), b(1024);
  Segment segs[] = {{a.data(), 4096}, {b.data(), 1024}};
  Bio bio;
  bio.init(nullptr, Op::kWrite, 8, segs);
  EXPECT_EQ(bio.size(), 5120u);
  EXPECT_EQ(bio.sectors(), 10u);
  EXPECT_EQ(bio.sector(), 8u);
  EXPECT_EQ(bio.end_sector(), 18u);
  EXPECT_EQ(bio.count_segments(), 2u);
  EXPECT_EQ(bio.op(), Op::kWrite);
  EXPECT_EQ(bio.flags(), BioFlag::kNone);
  EXPECT_EQ(bio.segments().data(), segs);
  EXPECT_EQ(bio.segments().size(), 2u);
  EXPECT_EQ(bio.status(), Status::kOk);
  EXPECT_FALSE(bio.completed());
  EXPECT_EQ(bio.refcount(), 1u);
  EXPECT_EQ(bio.pool(), nullptr);
}

TEST(Bio, InitStoresCallbackContextAndDisk) {
  Done done;
  Bio bio;
  auto* fake_disk = reinterpret_cast<Disk*>(uintptr_t{0x1000});
  bio.init(fake_disk, Op::kRead, 0, {}, record_done, &done);
  EXPECT_EQ(bio.disk(), fake_disk);
  EXPECT_EQ(bio.context(), &done);
  bio.complete(Status::kOk);
  EXPECT_EQ(done.calls, 1);
  EXPECT_TRUE(bio.completed());
}

TEST(Bio, InitNodataHasARangeButNoMemory) {
  Bio bio;
  bio.init_nodata(nullptr, Op::kDiscard, 24, 8192);
  EXPECT_EQ(bio.size(), 8192u);
  EXPECT_EQ(bio.sectors(), 16u);
  EXPECT_TRUE(bio.segments().empty());
  std::vector<Chunk> c = chunks_of(bio);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0], (Chunk{24, nullptr, 8192, 0, 0}));
  bio.zero_fill();  // nothing to fill; must not touch memory
  bio.advance(4096);
  EXPECT_EQ(bio.sector(), 32u);
  EXPECT_EQ(bio.size(), 4096u);
}

TEST(Bio, ReinitResetsCompletionStateAndFlags) {
  Done done;
  std::vector<std::byte> buf(512);
  Segment seg(buf.data(), 512);
  Bio bio;
  bio.init(nullptr, Op::kWrite, 0, {&seg, 1}, record_done, &done);
  bio.set_flags(BioFlag::kFua | BioFlag::kMeta);
  bio.complete(Status::kMedium);
  ASSERT_EQ(done.calls, 1);
  bio.init(nullptr, Op::kRead, 4, {&seg, 1}, record_done, &done);
  EXPECT_EQ(bio.flags(), BioFlag::kNone);
  EXPECT_EQ(bio.status(), Status::kOk);
  EXPECT_FALSE(bio.completed());
  bio.complete(Status::kOk);  // a reused bio completes again, once
  EXPECT_EQ(done.calls, 2);
  EXPECT_EQ(done.status, Status::kOk);
}

TEST(Bio, FlagsSetClearAndTest) {
  Bio bio;
  bio.init_nodata(nullptr, Op::kWrite, 0, 0);
  bio.set_flags(BioFlag::kFua | BioFlag::kPreflush | BioFlag::kSync);
  EXPECT_TRUE(bio.has_flag(BioFlag::kFua));
  EXPECT_TRUE(bio.has_flag(BioFlag::kPreflush));
  EXPECT_FALSE(bio.has_flag(BioFlag::kMeta));
  bio.clear_flags(BioFlag::kPreflush | BioFlag::kFua);
  EXPECT_EQ(bio.flags(), BioFlag::kSync);
}

// Expected chunks from the segment table alone: an independent model of the
// iterator (segment index and offset from a byte position).
std::vector<Chunk> expected_chunks(const std::vector<Segment>& segs,
                                   uint64_t start_sector, uint64_t skip, uint64_t len) {
  std::vector<Chunk> out;
  uint64_t pos = 0;  // byte position of the segment start in the whole bio
  uint64_t consumed = 0;
  for (size_t i = 0; i < segs.size() && len > 0; ++i) {
    uint64_t seg_end = pos + segs[i].len;
    if (seg_end > skip) {
      uint64_t off = skip > pos ? skip - pos : 0;
      uint64_t n = std::min<uint64_t>(segs[i].len - off, len);
      uint64_t byte = (start_sector << kSectorShift) + skip + consumed;
      out.push_back({byte >> kSectorShift, segs[i].ptr + off, static_cast<uint32_t>(n),
                     static_cast<uint16_t>(i), static_cast<uint32_t>(off)});
      consumed += n;
      len -= n;
    }
    pos = seg_end;
  }
  return out;
}

TEST(Bio, ForEachChunkVisitsManySegmentsFromAnyPosition) {
  std::mt19937 rng(1);
  std::vector<uint32_t> lens;
  uint64_t total = 0;
  for (int i = 0; i < 300; ++i) {
    // Mostly sector multiples, some odd sizes: segments need not be either.
    uint32_t l = (rng() % 4 == 0) ? 1 + rng() % 3000 : 512 * (1 + rng() % 8);
    lens.push_back(l);
    total += l;
  }
  lens.back() += static_cast<uint32_t>((512 - total % 512) % 512);  // whole sectors
  total += (512 - total % 512) % 512;
  ScatteredBuffer buf(lens);
  Bio bio;
  bio.init(nullptr, Op::kRead, 1000, buf.segs);
  ASSERT_EQ(bio.size(), total);
  EXPECT_EQ(chunks_of(bio), expected_chunks(buf.segs, 1000, 0, total));
  EXPECT_EQ(bio.count_segments(), 300u);

  // Advance in sector steps (what splitting does) to many positions, some in
  // the middle of a segment, and compare the remaining chunks each time.
  uint64_t skipped = 0;
  while (bio.size() > 0) {
    uint32_t step = 512 * (1 + rng() % 40);
    step = std::min(step, bio.size());
    bio.advance(step);
    skipped += step;
    ASSERT_EQ(bio.sector(), 1000 + skipped / 512);
    ASSERT_EQ(bio.size(), total - skipped);
    std::vector<Chunk> want = expected_chunks(buf.segs, 1000, skipped, total - skipped);
    ASSERT_EQ(chunks_of(bio), want) << "after " << skipped << " bytes";
    ASSERT_EQ(bio.count_segments(), want.size());
  }
}

TEST(Bio, ChunkSectorFollowsSegmentsShorterThanASector) {
  // Four 256-byte segments cover two sectors; each chunk must name the
  // sector holding its first byte, not the bio's first sector every time.
  std::vector<uint32_t> lens = {256, 256, 256, 256};
  ScatteredBuffer buf(lens);
  Bio bio;
  bio.init(nullptr, Op::kWrite, 10, buf.segs);
  std::vector<Chunk> c = chunks_of(bio);
  ASSERT_EQ(c.size(), 4u);
  EXPECT_EQ(c[0].sector, 10u);
  EXPECT_EQ(c[1].sector, 10u);
  EXPECT_EQ(c[2].sector, 11u);
  EXPECT_EQ(c[3].sector, 11u);
}

TEST(Bio, AdvanceWithinAndAcrossSegments) {
  std::vector<uint32_t> lens = {1024, 2048, 512};
  ScatteredBuffer buf(lens);
  Bio bio;
  bio.init(nullptr, Op::kWrite, 0, buf.segs);
  bio.advance(512);  // inside segment 0
  EXPECT_EQ(bio.iter().idx, 0);
  EXPECT_EQ(bio.iter().done, 512u);
  bio.advance(512);  // exactly to the end of segment 0
  EXPECT_EQ(bio.iter().idx, 1);
  EXPECT_EQ(bio.iter().done, 0u);
  bio.advance(2560);  // across segment 1 into segment 2... to the end of it
  EXPECT_EQ(bio.iter().idx, 3);
  EXPECT_EQ(bio.size(), 0u);
  EXPECT_EQ(bio.sector(), 7u);
  EXPECT_TRUE(chunks_of(bio).empty());
}

TEST(Bio, TruncateShortensTheVisit) {
  std::vector<uint32_t> lens = {1024, 2048, 512};
  ScatteredBuffer buf(lens);
  Bio bio;
  bio.init(nullptr, Op::kRead, 0, buf.segs);
  bio.advance(512);
  bio.truncate(1536);
  std::vector<Chunk> c = chunks_of(bio);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0], (Chunk{1, buf.segs[0].ptr + 512, 512, 0, 512}));
  EXPECT_EQ(c[1], (Chunk{2, buf.segs[1].ptr, 1024, 1, 0}));
}

TEST(Bio, CopyFromCopyToAndZeroFillFollowTheSegments) {
  std::vector<uint32_t> lens = {700, 1300, 100, 2000, 1532};  // 5632 bytes
  ScatteredBuffer buf(lens);
  const std::vector<std::byte> untouched = buf.arena;
  Bio bio;
  bio.init(nullptr, Op::kRead, 0, buf.segs);
  bio.advance(1024);  // start in the middle of segment 1
  const uint32_t n = bio.size();
  ASSERT_EQ(n, 4608u);

  std::vector<std::byte> src(n);
  for (uint32_t i = 0; i < n; ++i) src[i] = std::byte(i * 7 + 3);
  bio.copy_from(src.data(), n);

  // Rebuild the expected arena by hand: bytes 1024.. of the bio's logical
  // stream land in the segments, everything else keeps its old value.
  std::vector<std::byte> want = untouched;
  uint64_t logical = 0;
  for (const Segment& s : buf.segs) {
    for (uint32_t i = 0; i < s.len; ++i, ++logical) {
      if (logical >= 1024) {
        want[static_cast<size_t>(s.ptr + i - buf.arena.data())] = src[logical - 1024];
      }
    }
  }
  EXPECT_EQ(buf.arena, want);

  std::vector<std::byte> back(n, std::byte{0});
  bio.copy_to(back.data(), n);
  EXPECT_EQ(back, src);

  // A shorter copy stops after `bytes`, wherever that falls in a segment.
  std::vector<std::byte> part(n, std::byte{0x55});
  bio.copy_to(part.data(), 1000);
  EXPECT_TRUE(std::equal(part.begin(), part.begin() + 1000, src.begin()));
  EXPECT_TRUE(std::all_of(part.begin() + 1000, part.end(),
                          [](std::byte b) { return b == std::byte{0x55}; }));
  bio.copy_from(src.data() + 100, 10);  // overwrite the first 10 bytes only
  bio.copy_to(back.data(), n);
  EXPECT_TRUE(std::equal(back.begin(), back.begin() + 10, src.begin() + 100));
  EXPECT_TRUE(std::equal(back.begin() + 10, back.end(), src.begin() + 10));

  bio.zero_fill();
  logical = 0;
  for (const Segment& s : buf.segs) {
    for (uint32_t i = 0; i < s.len; ++i, ++logical) {
      size_t at = static_cast<size_t>(s.ptr + i - buf.arena.data());
      if (logical >= 1024) {
        want[at] = std::byte{0};
      }
    }
  }
  EXPECT_EQ(buf.arena, want) << "zero_fill must clear exactly the remaining range";
}

TEST(Bio, CompleteRunsTheCallbackOnceWithItsContext) {
  Done done;
  Bio bio;
  bio.init_nodata(nullptr, Op::kFlush, 0, 0, record_done, &done);
  bio.complete(Status::kTimeout);
  EXPECT_EQ(done.calls, 1);
  EXPECT_EQ(done.status, Status::kTimeout);
  EXPECT_TRUE(bio.completed());
}

TEST(Bio, FirstErrorWins) {
  Bio bio;
  bio.init_nodata(nullptr, Op::kWrite, 0, 0);
  bio.set_status(Status::kOk);
  EXPECT_EQ(bio.status(), Status::kOk);
  bio.set_status(Status::kMedium);
  bio.set_status(Status::kIoError);
  bio.set_status(Status::kOk);  // success never clears an error
  EXPECT_EQ(bio.status(), Status::kMedium);
  bio.complete(Status::kTransport);  // the final status too keeps the first
  EXPECT_EQ(bio.status(), Status::kMedium);
}

TEST(Bio, ChainedParentCompletesAfterItselfAndEveryChild) {
  // Every order of the four endio() calls: the callback runs exactly once,
  // at the last of them.
  std::vector<int> order = {0, 1, 2, 3};  // 3 is the parent itself
  do {
    Done done;
    Bio parent, kids[3];
    parent.init_nodata(nullptr, Op::kWrite, 0, 4096, record_done, &done);
    for (Bio& k : kids) {
      k.init_nodata(nullptr, Op::kWrite, 0, 512);
      Bio::chain(k, parent);
    }
    for (size_t i = 0; i < order.size(); ++i) {
      Bio& b = order[i] == 3 ? parent : kids[order[i]];
      b.endio();
      EXPECT_EQ(done.calls, i + 1 == order.size() ? 1 : 0) << "step " << i;
      EXPECT_EQ(parent.completed(), i + 1 == order.size());
    }
    EXPECT_EQ(done.status, Status::kOk);
  } while (std::next_permutation(order.begin(), order.end()));
}

TEST(Bio, ChainKeepsTheFirstErrorOfAnyChild) {
  {
    Done done;
    Bio parent, a, b;
    parent.init_nodata(nullptr, Op::kWrite, 0, 4096, record_done, &done);
    a.init_nodata(nullptr, Op::kWrite, 0, 512);
    b.init_nodata(nullptr, Op::kWrite, 0, 512);
    Bio::chain(a, parent);
    Bio::chain(b, parent);
    b.complete(Status::kMedium);  // the first error, from the second child
    a.complete(Status::kIoError);
    parent.endio();
    EXPECT_EQ(done.calls, 1);
    EXPECT_EQ(done.status, Status::kMedium);
  }
  {
    // The parent's own error, set before any child fails, is kept.
    Done done;
    Bio parent, a;
    parent.init_nodata(nullptr, Op::kWrite, 0, 4096, record_done, &done);
    a.init_nodata(nullptr, Op::kWrite, 0, 512);
    Bio::chain(a, parent);
    parent.complete(Status::kTimeout);
    EXPECT_EQ(done.calls, 0);
    a.complete(Status::kIoError);
    EXPECT_EQ(done.calls, 1);
    EXPECT_EQ(done.status, Status::kTimeout);
  }
  {
    // A child error reaches a parent that succeeded itself.
    Done done;
    Bio parent, a, b;
    parent.init_nodata(nullptr, Op::kWrite, 0, 4096, record_done, &done);
    a.init_nodata(nullptr, Op::kWrite, 0, 512);
    b.init_nodata(nullptr, Op::kWrite, 0, 512);
    Bio::chain(a, parent);
    Bio::chain(b, parent);
    a.complete(Status::kOk);
    parent.complete(Status::kOk);
    b.complete(Status::kProtection);
    EXPECT_EQ(done.calls, 1);
    EXPECT_EQ(done.status, Status::kProtection);
  }
}

TEST(Bio, ChainsOfChainsPropagateToTheTop) {
  // grandchild -> child -> parent: the error climbs two levels and the top
  // completes only when the grandchild does.
  Done done;
  Bio top, mid, leaf;
  top.init_nodata(nullptr, Op::kWrite, 0, 4096, record_done, &done);
  mid.init_nodata(nullptr, Op::kWrite, 0, 1024);
  leaf.init_nodata(nullptr, Op::kWrite, 0, 512);
  Bio::chain(mid, top);
  Bio::chain(leaf, mid);
  top.endio();
  mid.endio();
  EXPECT_EQ(done.calls, 0);
  EXPECT_FALSE(mid.completed());
  leaf.complete(Status::kNoSpace);
  EXPECT_TRUE(mid.completed());
  EXPECT_EQ(done.calls, 1);
  EXPECT_EQ(done.status, Status::kNoSpace);
}

TEST(Bio, DeepChainOf100000CompletesIterativelyOnASmallStack) {
  constexpr size_t kDepth = 100000;
  Done done;
  std::vector<Bio> bios(kDepth);
  // bios[i] is chained into bios[i + 1]; the last is the top with a callback.
  for (size_t i = 0; i < kDepth; ++i) {
    bool top = i + 1 == kDepth;
    bios[i].init_nodata(nullptr, Op::kWrite, i, 512, top ? record_done : nullptr,
                        top ? &done : nullptr);
  }
  for (size_t i = 0; i + 1 < kDepth; ++i) Bio::chain(bios[i], bios[i + 1]);
  for (size_t i = 1; i < kDepth; ++i) bios[i].endio();  // each parent's own part
  EXPECT_EQ(done.calls, 0);
  // Completing the leaf walks up 100000 parents. 128 KiB of stack allows
  // about 1.3 bytes per level: only an iterative walk survives.
  run_on_small_stack(128 * 1024, [&] { bios[0].complete(Status::kMedium); });
  EXPECT_EQ(done.calls, 1);
  EXPECT_EQ(done.status, Status::kMedium);
  for (size_t i = 0; i < kDepth; i += 9999) EXPECT_TRUE(bios[i].completed()) << i;
  EXPECT_EQ(bios[kDepth / 2].status(), Status::kMedium);
}

TEST(Bio, ChainedPooledChildReturnsToItsSetWhenItCompletes) {
  BioSet set("chain-test", 2);
  const size_t idle = set.mempool().available();
  Done done;
  Bio parent;
  parent.init_nodata(nullptr, Op::kWrite, 0, 4096, record_done, &done);
  Bio* child = set.alloc();
  ASSERT_NE(child, nullptr);
  EXPECT_EQ(child->pool(), &set);
  EXPECT_EQ(set.mempool().available(), idle - 1);
  child->init_nodata(nullptr, Op::kWrite, 0, 512);
  Bio::chain(*child, parent);
  child->complete(Status::kOk);
  EXPECT_EQ(set.mempool().available(), idle) << "the chained child was not put";
  parent.endio();
  EXPECT_EQ(done.calls, 1);
}

TEST(Bio, SplitSharesMemoryAndAdvancesTheParent) {
  BioSet set("split-test", 2);
  std::vector<uint32_t> lens = {1024, 1536, 2048};
  ScatteredBuffer buf(lens);
  Done done;
  Bio bio;
  bio.init(nullptr, Op::kWrite, 100, buf.segs, record_done, &done);
  bio.set_flags(BioFlag::kMeta);
  const std::vector<Chunk> before = chunks_of(bio);

  Bio* front = bio.split(3, set);  // 1536 bytes: all of seg 0, half of seg 1
  ASSERT_NE(front, nullptr);
  EXPECT_NE(front, &bio);
  EXPECT_EQ(front->pool(), &set);
  EXPECT_EQ(front->sector(), 100u);
  EXPECT_EQ(front->size(), 1536u);
  EXPECT_EQ(front->op(), Op::kWrite);
  EXPECT_TRUE(front->has_flag(BioFlag::kMeta));
  // Same segment table (not a copy) and the same memory.
  EXPECT_EQ(front->segments().data(), bio.segments().data());
  EXPECT_EQ(front->segments().data(), buf.segs.data());
  std::vector<Chunk> f = chunks_of(*front);
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[0], before[0]);
  EXPECT_EQ(f[1], (Chunk{102, buf.segs[1].ptr, 512, 1, 0}));

  // The parent now starts where the front ends.
  EXPECT_EQ(bio.sector(), 103u);
  EXPECT_EQ(bio.size(), 3072u);
  std::vector<Chunk> p = chunks_of(bio);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0], (Chunk{103, buf.segs[1].ptr + 512, 1024, 1, 512}));
  EXPECT_EQ(p[1], before[2]);

  // The front is chained: the parent's callback waits for it and keeps its
  // error; the front goes back to the set.
  const size_t idle = set.mempool().available();
  bio.endio();
  EXPECT_EQ(done.calls, 0);
  front->complete(Status::kMedium);
  EXPECT_EQ(done.calls, 1);
  EXPECT_EQ(done.status, Status::kMedium);
  EXPECT_EQ(set.mempool().available(), idle + 1);
}

TEST(Bio, SplitOfARangeWithoutMemory) {
  BioSet set("split-test", 2);
  Done done;
  Bio bio;
  bio.init_nodata(nullptr, Op::kDiscard, 8, 16384, record_done, &done);
  Bio* front = bio.split(8, set);
  ASSERT_NE(front, nullptr);
  EXPECT_EQ(front->op(), Op::kDiscard);
  EXPECT_EQ(front->sector(), 8u);
  EXPECT_EQ(front->size(), 4096u);
  EXPECT_EQ(bio.sector(), 16u);
  EXPECT_EQ(bio.size(), 12288u);
  front->endio();
  bio.endio();
  EXPECT_EQ(done.calls, 1);
}

TEST(Bio, SplitKeepsPreflushOnTheFirstPieceOnlyAndFuaOnEvery) {
  BioSet set("split-test", 4);
  std::vector<std::byte> mem(8192);
  Segment seg(mem.data(), 8192);
  Done done;
  Bio bio;
  bio.init(nullptr, Op::kWrite, 0, {&seg, 1}, record_done, &done);
  bio.set_flags(BioFlag::kPreflush | BioFlag::kFua);
  Bio* first = bio.split(4, set);
  Bio* second = bio.split(4, set);
  EXPECT_TRUE(first->has_flag(BioFlag::kPreflush));
  EXPECT_TRUE(first->has_flag(BioFlag::kFua));
  EXPECT_FALSE(second->has_flag(BioFlag::kPreflush));
  EXPECT_TRUE(second->has_flag(BioFlag::kFua));
  EXPECT_FALSE(bio.has_flag(BioFlag::kPreflush));
  EXPECT_TRUE(bio.has_flag(BioFlag::kFua));
  second->endio();
  bio.endio();
  first->endio();
  EXPECT_EQ(done.calls, 1);
}

TEST(Bio, SplitWithoutWaitingFailsCleanlyWhenThePoolIsEmpty) {
  BioSet set("capped", 1, 1);
  Bio* hog = set.alloc();
  ASSERT_NE(hog, nullptr);
  EXPECT_EQ(set.alloc(Wait::kNoWait), nullptr);
  std::vector<std::byte> mem(4096);
  Segment seg(mem.data(), 4096);
  Done done;
  Bio bio;
  bio.init(nullptr, Op::kWrite, 0, {&seg, 1}, record_done, &done);
  bio.set_flags(BioFlag::kPreflush);
  EXPECT_EQ(bio.split(2, set, /*may_wait=*/false), nullptr);
  EXPECT_EQ(bio.clone(set, /*may_wait=*/false), nullptr);
  // Nothing changed: the caller can still submit the bio whole.
  EXPECT_EQ(bio.sector(), 0u);
  EXPECT_EQ(bio.size(), 4096u);
  EXPECT_TRUE(bio.has_flag(BioFlag::kPreflush));
  bio.endio();
  EXPECT_EQ(done.calls, 1) << "a failed split must not leave a chain reference behind";
  hog->put();
  EXPECT_EQ(set.mempool().available(), 1u);
}

TEST(Bio, CloneCopiesThePositionAndSharesTheTable) {
  BioSet set("clone-test", 2);
  std::vector<uint32_t> lens = {1024, 1024, 2048};
  ScatteredBuffer buf(lens);
  Done orig_done, clone_done;
  Bio bio;
  auto* fake_disk = reinterpret_cast<Disk*>(uintptr_t{0x2000});
  bio.init(fake_disk, Op::kRead, 40, buf.segs, record_done, &orig_done);
  bio.set_flags(BioFlag::kSync | BioFlag::kFua);
  bio.advance(1536);
  Bio* c = bio.clone(set);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->pool(), &set);
  EXPECT_EQ(c->disk(), fake_disk);
  EXPECT_EQ(c->op(), Op::kRead);
  EXPECT_EQ(c->flags(), bio.flags());
  EXPECT_EQ(c->sector(), bio.sector());
  EXPECT_EQ(c->size(), bio.size());
  EXPECT_EQ(c->segments().data(), bio.segments().data());
  EXPECT_EQ(chunks_of(*c), chunks_of(bio));
  EXPECT_EQ(c->context(), nullptr);
  EXPECT_EQ(c->status(), Status::kOk);

  // Independent iterators.
  c->advance(512);
  EXPECT_EQ(bio.sector(), 43u);
  EXPECT_EQ(c->sector(), 44u);

  // Not chained: each completes on its own.
  c->set_end_io(record_done, &clone_done);
  c->complete(Status::kIoError);
  EXPECT_EQ(clone_done.calls, 1);
  EXPECT_EQ(orig_done.calls, 0);
  bio.complete(Status::kOk);
  EXPECT_EQ(orig_done.calls, 1);
  EXPECT_EQ(orig_done.status, Status::kOk);
  const size_t idle = set.mempool().available();
  c->put();
  EXPECT_EQ(set.mempool().available(), idle + 1);
}

TEST(Bio, ReferencesKeepAPooledBioUntilTheLastPut) {
  BioSet set("ref-test", 1, 1);
  Bio* bio = set.alloc();
  ASSERT_NE(bio, nullptr);
  EXPECT_EQ(bio->refcount(), 1u);
  EXPECT_EQ(set.mempool().available(), 0u);
  Done done;
  bio->init_nodata(nullptr, Op::kFlush, 0, 0, record_done, &done);
  EXPECT_EQ(bio->pool(), &set) << "init must keep the bio's pool";
  bio->get();  // a submitter's reference across submit
  EXPECT_EQ(bio->refcount(), 2u);
  bio->complete(Status::kOk);
  EXPECT_EQ(done.calls, 1);
  bio->put();  // the owner's reference (a callback would drop it)
  EXPECT_EQ(set.mempool().available(), 0u) << "returned while still referenced";
  EXPECT_EQ(bio->status(), Status::kOk);  // still safe to look at
  bio->put();
  EXPECT_EQ(set.mempool().available(), 1u);

  // The next allocation is a fresh bio.
  Bio* again = set.alloc(Wait::kNoWait);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->refcount(), 1u);
  EXPECT_FALSE(again->completed());
  EXPECT_EQ(again->status(), Status::kOk);
  EXPECT_EQ(again->pool(), &set);
  again->put();
}

TEST(Bio, InlineSegmentsLiveWithThePooledBio) {
  BioSet set("inline-test", 1);
  Bio* bio = set.alloc();
  std::span<Segment> segs = BioSet::inline_segments(*bio);
  ASSERT_EQ(segs.size(), BioSet::kInlineSegments);
  std::vector<std::byte> a(512), b(1024);
  segs[0] = Segment(a.data(), 512);
  segs[1] = Segment(b.data(), 1024);
  bio->init(nullptr, Op::kWrite, 0, segs.first(2));
  EXPECT_EQ(bio->size(), 1536u);
  EXPECT_EQ(bio->segments().data(), segs.data());
  EXPECT_EQ(BioSet::inline_segments(*bio).data(), segs.data());
  bio->put();
}

TEST(BioList, IsAFifoAndSplices) {
  Bio b[5];
  BioList l, m;
  EXPECT_TRUE(l.empty());
  EXPECT_EQ(l.pop_front(), nullptr);
  l.push_back(&b[0]);
  l.push_back(&b[1]);
  m.push_back(&b[2]);
  m.push_back(&b[3]);
  l.splice_back(m);
  EXPECT_TRUE(m.empty());
  l.push_back(&b[4]);
  EXPECT_EQ(l.front(), &b[0]);
  for (Bio& x : b) {
    Bio* got = l.pop_front();
    EXPECT_EQ(got, &x);
    EXPECT_EQ(got->next, nullptr);
  }
  EXPECT_TRUE(l.empty());
  BioList empty;
  l.splice_back(empty);
  EXPECT_TRUE(l.empty());
}

using BioDeathTest = ::testing::Test;

TEST(BioDeathTest, CompletingTwiceAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Done done;
        Bio bio;
        bio.init_nodata(nullptr, Op::kWrite, 77, 512, record_done, &done);
        bio.endio();
        bio.endio();
      },
      "bio \\(write at sector 77\\) completed more than once");
}

TEST(BioDeathTest, CompletingAChainedParentTwiceAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Bio parent;
        Bio child;
        parent.init_nodata(nullptr, Op::kRead, 5, 1024);
        child.init_nodata(nullptr, Op::kRead, 5, 512);
        Bio::chain(child, parent);
        parent.endio();
        child.endio();
        parent.endio();
      },
      "completed more than once");
}

TEST(BioDeathTest, ChainingAChildThatHasACallbackAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Done done;
        Bio parent;
        Bio child;
        parent.init_nodata(nullptr, Op::kWrite, 0, 1024);
        child.init_nodata(nullptr, Op::kWrite, 0, 512, record_done, &done);
        Bio::chain(child, parent);
      },
      "Bio::chain: the child bio already has a completion callback");
}

TEST(BioDeathTest, ChainingAChildTwiceAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Bio a;
        Bio b;
        Bio child;
        a.init_nodata(nullptr, Op::kWrite, 0, 1024);
        b.init_nodata(nullptr, Op::kWrite, 0, 1024);
        child.init_nodata(nullptr, Op::kWrite, 0, 512);
        Bio::chain(child, a);
        Bio::chain(child, b);
      },
      "already has a completion callback");
}

TEST(BioDeathTest, SplitOutsideTheBioAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  BioSet set("split-death", 1);
  Bio bio;
  bio.init_nodata(nullptr, Op::kDiscard, 0, 4096);
  EXPECT_DEATH(bio.split(0, set), "split point outside the bio");
  EXPECT_DEATH(bio.split(8, set), "split point outside the bio");
  EXPECT_DEATH(bio.split(9, set), "split point outside the bio");
  // A sector count whose byte count does not fit in 32 bits must not wrap
  // around to a small, seemingly valid split point (2^23 + 1 sectors would
  // be 512 bytes in 32-bit arithmetic).
  EXPECT_DEATH(bio.split((1u << 23) + 1, set), "split point outside the bio");
}

TEST(BioDeathTest, MoreThan65535SegmentsAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<std::byte> mem(512);
  std::vector<Segment> segs(65536, Segment(mem.data(), 0));
  segs[0].len = 512;
  Bio bio;
  EXPECT_DEATH(bio.init(nullptr, Op::kWrite, 0, segs), "more than 65535 segments");
}

}  // namespace
}  // namespace blkstack
