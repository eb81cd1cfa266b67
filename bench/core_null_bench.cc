// The cost of the block core: one 4 KiB read submitted and completed on a
// null disk with inline completion, on one thread, through submit_bio() with
// every check, statistics and the split test on the way (bench/core-null.sh
// runs it beside fio's null engine).
#include <benchmark/benchmark.h>

#include <random>

#include "blkstack/bio.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/submit.h"

namespace {

void count_completion(blkstack::Bio& bio) { ++*static_cast<uint64_t*>(bio.context()); }

void BM_NullRead4k(benchmark::State& state) {
  blkstack::DiskRegistry registry;
  auto disk = registry.create("null:1G,completion=inline");
  alignas(4096) static std::byte buf[4096];
  blkstack::Segment seg(buf, sizeof buf);
  blkstack::Bio bio;
  uint64_t completions = 0;
  const uint64_t blocks = disk->capacity() / 8;
  uint64_t lba = 0;
  for (auto _ : state) {
    lba = (lba * 6364136223846793005ULL + 1442695040888963407ULL);  // random offsets
    bio.init(disk.get(), blkstack::Op::kRead, (lba % blocks) * 8, {&seg, 1},
             count_completion, &completions);
    blkstack::submit_bio(bio);
  }
  if (completions != static_cast<uint64_t>(state.iterations()))
    state.SkipWithError("lost completions");
  state.SetItemsProcessed(state.iterations());
  state.counters["ns_per_io"] =
      benchmark::Counter(static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_NullRead4k);

}  // namespace

BENCHMARK_MAIN();
