// The cost of device-mapper targets: one 4 KiB read submitted and completed
// on one thread through a mapped device over null disks with inline
// completion, beside the bare null disk (bench/targets-null.sh). Each
// benchmark is one device kind; the script subtracts the bare figure.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <string>

#include "blkstack/bio.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/target.h"
#include "blkstack/error.h"
#include "blkstack/submit.h"
#include "dm/mapped_device.h"

namespace {

using blkstack::DiskRegistry;
using blkstack::MappedDevice;

constexpr uint64_t kSectors = 2097152;  // 1 GiB

void count_completion(blkstack::Bio& bio) { ++*static_cast<uint64_t*>(bio.context()); }

// Reads 4 KiB at random offsets of `name` until the benchmark ends.
void ReadLoop(benchmark::State& state, DiskRegistry& registry, const std::string& name) {
  auto disk = registry.get(name);
  alignas(4096) static std::byte buf[4096];
  blkstack::Segment seg(buf, sizeof buf);
  blkstack::Bio bio;
  uint64_t completions = 0;
  const uint64_t blocks = disk->capacity() / 8;
  uint64_t lba = 0;
  for (auto _ : state) {
    lba = (lba * 6364136223846793005ULL + 1442695040888963407ULL);
    bio.init(disk.get(), blkstack::Op::kRead, (lba % blocks) * 8, {&seg, 1},
             count_completion, &completions);
    blkstack::submit_bio(bio);
  }
  if (completions != static_cast<uint64_t>(state.iterations()))
    state.SkipWithError("lost completions");
  state.counters["ns_per_io"] =
      benchmark::Counter(static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void NullDisks(DiskRegistry& registry, int n) {
  for (int i = 0; i < n; ++i) registry.create("null:1G,completion=inline");
}

void BM_Bare(benchmark::State& state) {
  DiskRegistry registry;
  NullDisks(registry, 1);
  ReadLoop(state, registry, "null0");
}
BENCHMARK(BM_Bare);

void BM_Linear(benchmark::State& state) {
  DiskRegistry registry;
  NullDisks(registry, 1);
  MappedDevice::create(registry, "lin", "", fmt::format("0 {} linear null0 0", kSectors));
  ReadLoop(state, registry, "lin");
}
BENCHMARK(BM_Linear);

void BM_Striped(benchmark::State& state) {
  DiskRegistry registry;
  NullDisks(registry, 2);
  MappedDevice::create(registry, "st", "",
                       fmt::format("0 {} striped 2 128 null0 0 null1 0", kSectors));
  ReadLoop(state, registry, "st");
}
BENCHMARK(BM_Striped);

// The raid1 mirror of h17/dmx, when it is registered.
void BM_Mirror(benchmark::State& state) {
  if (!blkstack::find_target_type("mirror")) {
    state.SkipWithError("no mirror target registered");
    return;
  }
  DiskRegistry registry;
  NullDisks(registry, 2);
  try {
    MappedDevice::create(
        registry, "mir", "",
        fmt::format("0 {} mirror core 1 1024 2 null0 0 null1 0", kSectors));
  } catch (const blkstack::Error& e) {
    state.SkipWithError(e.what());
    return;
  }
  ReadLoop(state, registry, "mir");
}
BENCHMARK(BM_Mirror);

void BM_Stack16(benchmark::State& state) {
  DiskRegistry registry;
  NullDisks(registry, 1);
  std::string below = "null0";
  for (int i = 0; i < 16; ++i) {
    const std::string name = fmt::format("l{}", i);
    MappedDevice::create(registry, name, "",
                         fmt::format("0 {} linear {} 0", kSectors, below));
    below = name;
  }
  ReadLoop(state, registry, below);
}
BENCHMARK(BM_Stack16);

}  // namespace

BENCHMARK_MAIN();
