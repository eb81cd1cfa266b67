// The request path against the bio path: 4 KiB random reads on null with
// inline completion, bio-based and multi-queue (none scheduler, and bfq at
// depth 32 for the scheduler's cost per I/O), keeping
// `depth` I/Os per batch (submitted under a plug when depth > 1, as an
// application submitting a batch would), on 1 or 2 threads.
// bench/mq-null.sh runs it and prints the table.
#include <benchmark/benchmark.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/plug.h"
#include "blkstack/submit.h"

namespace {

// mq: 0 bio-based, 1 multi-queue with none, 2 multi-queue with bfq.
blkstack::Disk& disk(int mq) {
  static blkstack::DiskRegistry registry;
  static auto bio_disk = registry.create("null:1G,completion=inline,name=nullbio");
  // Two hardware queues so that two submitting threads do not share one.
  static auto mq_disk = registry.create(
      "null:1G,completion=inline,queue_mode=mq,hw_queues=2,depth=256,name=nullmq");
  static auto bfq_disk = registry.create(
      "null:1G,completion=inline,queue_mode=mq,hw_queues=2,depth=256,sched=bfq,name="
      "nullbfq");
  return mq == 2 ? *bfq_disk : mq ? *mq_disk : *bio_disk;
}

void count_completion(blkstack::Bio& bio) { ++*static_cast<uint64_t*>(bio.context()); }

// Arguments: {mq (0/1), depth}.
void BM_NullRandRead4k(benchmark::State& state) {
  const int mq = static_cast<int>(state.range(0));
  const auto depth = static_cast<size_t>(state.range(1));
  blkstack::Disk& d = disk(mq);
  const uint64_t blocks = d.capacity() / 8;
  std::vector<std::byte> buffer(4096 * depth);
  std::vector<blkstack::Segment> segs(depth);
  std::vector<blkstack::Bio> bios(depth);
  for (size_t i = 0; i < depth; ++i) segs[i] = blkstack::Segment(&buffer[4096 * i], 4096);
  uint64_t completed = 0;
  uint64_t lba = 0x9e3779b97f4a7c15ull * (state.thread_index() + 1);
  for (auto _ : state) {
    std::unique_ptr<blkstack::Plug> plug;
    if (depth > 1) plug = std::make_unique<blkstack::Plug>();
    for (size_t i = 0; i < depth; ++i) {
      lba = lba * 6364136223846793005ULL + 1442695040888963407ULL;
      bios[i].init(&d, blkstack::Op::kRead, ((lba >> 17) % blocks) * 8, {&segs[i], 1},
                   count_completion, &completed);
      blkstack::submit_bio(bios[i]);
    }
  }
  const uint64_t ios = static_cast<uint64_t>(state.iterations()) * depth;
  if (completed != ios) state.SkipWithError("lost completions");
  state.SetItemsProcessed(static_cast<int64_t>(ios));
}

void Args(benchmark::internal::Benchmark* b) {
  for (int mq : {0, 1}) {
    for (int depth : {1, 32, 128}) b->Args({mq, depth});
  }
  b->ArgNames({"mq", "depth"});
}

BENCHMARK(BM_NullRandRead4k)->Apply(Args)->Threads(1)->Threads(2)->UseRealTime();

void count_completion_atomic(blkstack::Bio& bio) {
  static_cast<std::atomic<uint64_t>*>(bio.context())
      ->fetch_add(1, std::memory_order_release);
}

// The same through bfq (arguments {2, depth}). bfq may hold a request past
// the plug (idling for another thread's queue; the idle timer sends it
// from the queue's worker), so each batch waits for its completions before
// its bios are reused, and the count is atomic.
void BM_NullBfqRandRead4k(benchmark::State& state) {
  const auto depth = static_cast<size_t>(state.range(1));
  blkstack::Disk& d = disk(2);
  const uint64_t blocks = d.capacity() / 8;
  std::vector<std::byte> buffer(4096 * depth);
  std::vector<blkstack::Segment> segs(depth);
  std::vector<blkstack::Bio> bios(depth);
  for (size_t i = 0; i < depth; ++i) segs[i] = blkstack::Segment(&buffer[4096 * i], 4096);
  std::atomic<uint64_t> completed{0};
  uint64_t issued = 0;
  uint64_t lba = 0x9e3779b97f4a7c15ull * (state.thread_index() + 1);
  for (auto _ : state) {
    {
      blkstack::Plug plug;
      for (size_t i = 0; i < depth; ++i) {
        lba = lba * 6364136223846793005ULL + 1442695040888963407ULL;
        bios[i].init(&d, blkstack::Op::kRead, ((lba >> 17) % blocks) * 8, {&segs[i], 1},
                     count_completion_atomic, &completed);
        blkstack::submit_bio(bios[i]);
      }
    }
    issued += depth;
    while (completed.load(std::memory_order_acquire) != issued) std::this_thread::yield();
  }
  state.SetItemsProcessed(static_cast<int64_t>(issued));
}

BENCHMARK(BM_NullBfqRandRead4k)
    ->Args({2, 32})
    ->ArgNames({"mq", "depth"})
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
