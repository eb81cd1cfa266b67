// Every target against a reference model of the data, from four threads,
// with a table swap (load, suspend, resume) in the middle of the workload;
// and a 16-deep stack of mapped devices built from a list of layer kinds,
// so that more target types drop in as one entry each.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "dm/mapped_device.h"

namespace blkstack {
namespace {

// What reads of the device return.
enum class Model { kData, kZero, kError };

// Random reads, writes, flushes and discards-free I/O of up to 64 KiB from
// `threads` threads, each in its own region of `name`, checked against a
// model; `swap` runs once, from another thread, while they are half done.
void RunModel(DiskRegistry& registry, const std::string& name, Model model,
              const std::function<void()>& swap, int ops = 600, int threads = 4) {
  const uint64_t bytes = registry.get(name)->size_bytes();
  const uint64_t region = bytes / threads / 4096 * 4096;
  ASSERT_GE(region, 128u << 10);
  std::atomic<int> halfway{0};
  std::atomic<uint64_t> bad{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      BlockHandle h = BlockHandle::open(registry, name);
      std::mt19937_64 rng(77 + t);
      std::vector<std::byte> m(region);  // zeroes, as a fresh ram disk reads
      std::vector<std::byte> buf(64 << 10);
      const uint64_t base = t * region;
      for (int i = 0; i < ops; ++i) {
        if (i == ops / 2) halfway.fetch_add(1);
        const uint64_t len = 512 * (1 + rng() % 128);
        const uint64_t off = 512 * (rng() % ((region - len) / 512 + 1));
        const unsigned kind = rng() % 10;
        Status s;
        if (kind < 4) {
          for (uint64_t j = 0; j < len; j += 8) {
            const uint64_t r = rng();
            std::memcpy(&buf[j], &r, 8);
          }
          s = h.pwrite(buf.data(), len, base + off);
          if (s == Status::kOk && model == Model::kData) {
            std::memcpy(m.data() + off, buf.data(), len);
          }
        } else if (kind < 9) {
          s = h.pread(buf.data(), len, base + off);
          if (s == Status::kOk) {
            const std::byte* want = model == Model::kData ? m.data() + off : nullptr;
            for (uint64_t j = 0; j < len; ++j) {
              if (buf[j] != (want ? want[j] : std::byte{0})) {
                bad.fetch_add(1);
                break;
              }
            }
          }
        } else {
          s = h.flush();
          if (model == Model::kError && s == Status::kOk) continue;  // nothing to fail
        }
        const Status want = model == Model::kError ? Status::kIoError : Status::kOk;
        if (s != want) {
          ADD_FAILURE() << "thread " << t << " op " << i << ": " << status_name(s);
          bad.fetch_add(1);
        }
      }
    });
  }
  while (halfway.load() < threads) std::this_thread::yield();
  if (swap) swap();
  for (auto& w : workers) w.join();
  EXPECT_EQ(bad.load(), 0u);
}

std::string Devt(DiskRegistry& r, const std::string& name) {
  auto d = r.get(name);
  return fmt::format("{}:{}", d->major(), d->minor());
}

// Loads `table` and swaps it in while I/O runs.
std::function<void()> Swap(MappedDevice& md, std::string table, bool noflush = false) {
  return [&md, table, noflush] {
    md.load(table);
    md.suspend(noflush);
    md.resume();
    EXPECT_EQ(md.table_text().find("\n"), md.table_text().find('\n'));
  };
}

TEST(DmModel, LinearSwappedForTheSameMappingInTwoLines) {
  DiskRegistry registry;
  registry.create("ram:8M");
  MappedDevice& md =
      MappedDevice::create(registry, "lin", "", "0 14336 linear ram0 2048");
  RunModel(registry, "lin", Model::kData,
           Swap(md, "0 5000 linear ram0 2048\n5000 9336 linear ram0 7048"));
  EXPECT_EQ(md.table_text(), fmt::format("0 5000 linear {0} 2048\n5000 9336 linear {0} "
                                         "7048\n",
                                         Devt(registry, "ram0")));
}

TEST(DmModel, StripedPowerOfTwoChunkSwappedForTwoHalves) {
  DiskRegistry registry;
  registry.create("ram:4M");
  registry.create("ram:4M");
  // 2 stripes of 64 KiB chunks; the second half of the device as a second
  // line continues each stripe where the first ends: the same mapping.
  MappedDevice& md =
      MappedDevice::create(registry, "st", "", "0 16384 striped 2 128 ram0 0 ram1 0");
  EXPECT_EQ(md.status_text(),
            fmt::format("0 16384 striped 2 {} {} 1 AA\n", Devt(registry, "ram0"),
                        Devt(registry, "ram1")));
  RunModel(registry, "st", Model::kData,
           Swap(md,
                "0 8192 striped 2 128 ram0 0 ram1 0\n"
                "8192 8192 striped 2 128 ram0 4096 ram1 4096"));
}

TEST(DmModel, StripedOddChunkThreeStripes) {
  DiskRegistry registry;
  for (int i = 0; i < 3; ++i) registry.create("ram:4M");
  // 24-sector chunks (not a power of two) over 3 stripes.
  const std::string t = "0 18432 striped 3 24 ram0 8 ram1 16 ram2 0";
  MappedDevice& md = MappedDevice::create(registry, "st3", "", t);
  EXPECT_EQ(md.table_text(),
            fmt::format("0 18432 striped 3 24 {} 8 {} 16 {} 0\n", Devt(registry, "ram0"),
                        Devt(registry, "ram1"), Devt(registry, "ram2")));
  RunModel(registry, "st3", Model::kData, Swap(md, t));
}

TEST(DmModel, ZeroReadsZeroesAndDropsWrites) {
  DiskRegistry registry;
  MappedDevice& md = MappedDevice::create(registry, "z", "", "0 16384 zero");
  RunModel(registry, "z", Model::kZero, Swap(md, "0 8000 zero\n8000 8384 zero"));
  EXPECT_EQ(md.table_text(), "0 8000 zero \n8000 8384 zero \n");
  EXPECT_EQ(md.status_text(), "0 8000 zero \n8000 8384 zero \n");
}

TEST(DmModel, ErrorFailsReadsAndWrites) {
  DiskRegistry registry;
  MappedDevice& md = MappedDevice::create(registry, "e", "", "0 16384 error");
  RunModel(registry, "e", Model::kError, Swap(md, "0 16384 error"));
  EXPECT_EQ(md.table_text(), "0 16384 error \n");
}

TEST(DmModel, MixedTableCutsBiosAtEveryLine) {
  DiskRegistry registry;
  registry.create("ram:16M");
  registry.create("ram:16M");
  // Lines of odd lengths so bios cross them everywhere.
  const std::string t =
      "0 1001 linear ram0 0\n"
      "1001 2048 striped 2 8 ram0 4096 ram1 0\n"
      "3049 5000 linear ram1 4096\n"
      "8049 8335 linear ram0 8192\n";
  MappedDevice& md = MappedDevice::create(registry, "mix", "", t);
  RunModel(registry, "mix", Model::kData, Swap(md, t));
}

// The targets of dm_targets_test.cc in their data-keeping modes, each with
// a live swap mid-workload: the new table's targets take over what the old
// ones held.
TEST(DmModel, MirrorSwappedForItselfResyncsUnderIo) {
  DiskRegistry registry;
  registry.create("ram:4M");
  registry.create("ram:4M");
  const std::string t = "0 8192 mirror core 1 256 2 ram0 0 ram1 0";
  MappedDevice& md = MappedDevice::create(registry, "mi", "", t);
  RunModel(registry, "mi", Model::kData, Swap(md, t));
}

TEST(DmModel, FlakeyUpSwappedForItselfUnderIo) {
  DiskRegistry registry;
  registry.create("ram:4M");
  // Up for an hour: no faults, every feature parsed.
  const std::string t = "0 8192 flakey ram0 0 3600 0 1 drop_writes";
  MappedDevice& md = MappedDevice::create(registry, "fl", "", t);
  RunModel(registry, "fl", Model::kData, Swap(md, "0 8192 flakey ram0 0 3600 1"));
}

TEST(DmModel, DelaySwappedWhileHoldingBios) {
  DiskRegistry registry;
  registry.create("ram:4M");
  registry.create("ram:4M");
  MappedDevice& md =
      MappedDevice::create(registry, "dl", "", "0 8192 delay ram0 0 1 ram0 0 2");
  RunModel(registry, "dl", Model::kData, Swap(md, "0 8192 delay ram0 0 2 ram0 0 0"), 150);
}

TEST(DmModel, LogWritesSwappedForItselfUnderIo) {
  DiskRegistry registry;
  registry.create("ram:4M");
  registry.create("ram:64M");  // the log: a super block and every write
  const std::string t = "0 8192 log-writes ram0 ram1";
  MappedDevice& md = MappedDevice::create(registry, "lw", "", t);
  RunModel(registry, "lw", Model::kData, Swap(md, t), 300);
}

// --- a 16-deep stack -----------------------------------------------------------

// One layer kind: the table of a mapped device over `below` (of `sectors`),
// or empty when it cannot be built over that size. A new target type adds
// an entry here.
struct Layer {
  const char* kind;
  std::function<std::string(const std::string& below, uint64_t sectors)> table;
};

const std::vector<Layer>& Layers() {
  static const std::vector<Layer> layers = {
      {"linear",
       [](const std::string& below, uint64_t sectors) {
         return fmt::format("0 {} linear {} 64", sectors - 64, below);
       }},
      {"striped",
       [](const std::string& below, uint64_t sectors) {
         // Two stripes on the two halves of the one device below.
         const uint64_t half = (sectors / 2) / 32 * 32;
         return fmt::format("0 {} striped 2 32 {} 0 {} {}", 2 * half, below, below, half);
       }},
      {"mirror",
       [](const std::string& below, uint64_t sectors) {
         // Two legs: the two halves of the one device below.
         const uint64_t half = (sectors / 2) / 8 * 8;
         return fmt::format("0 {} mirror core 1 128 2 {} 0 {} {}", half, below, below,
                            half);
       }},
      {"linear+linear",
       [](const std::string& below, uint64_t sectors) {
         const uint64_t a = sectors / 3;
         return fmt::format("0 {} linear {} {}\n{} {} linear {} 0", sectors - a, below, a,
                            sectors - a, a, below);
       }},
  };
  return layers;
}

TEST(DmModel, Stack16DeepOfEveryKindPassesTheModel) {
  DiskRegistry registry;
  registry.create("ram:32M");  // each mirror layer halves it
  std::string below = "ram0";
  std::vector<MappedDevice*> mds;
  for (int i = 0; i < 16; ++i) {
    const Layer& l = Layers()[i % Layers().size()];
    const std::string name = fmt::format("s{}", i);
    mds.push_back(&MappedDevice::create(registry, name, "",
                                        l.table(below, registry.get(below)->capacity())));
    below = name;
  }
  // The middle layer's table swapped for itself under I/O.
  MappedDevice& mid = *mds[8];
  RunModel(registry, below, Model::kData, Swap(mid, mid.table_text()), 400);
}

}  // namespace
}  // namespace blkstack
