#include "runner.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <map>
#include <memory>
#include <thread>

#include "blkstack/device_spec.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/error.h"
#include "blkstack/page_cache.h"
#include "engine.h"
#include "issuer_weight.h"

namespace blkstack::bench {
namespace {

uint64_t clock_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

struct ThreadSlot {
  WorkerSetup setup;
  std::unique_ptr<ThreadResult> result = std::make_unique<ThreadResult>();
  std::unique_ptr<LiveCounters> live = std::make_unique<LiveCounters>();
  uint64_t region_start = 0, region_len = 0;
};

struct JobState {
  JobResult* result = nullptr;
  std::shared_ptr<BlockDevice> dev;  // a whole disk or a partition
  std::unique_ptr<Verifier> verifier;
  std::vector<ThreadSlot> threads;
  uint64_t start_ns = 0, end_ns = 0;
  // Sampling.
  uint64_t last_ios[kDirs] = {}, last_bytes[kDirs] = {};
  bool was_measuring = false;
  unsigned done_before = 0;
};

char mode_letter(const JobOptions& j) {
  switch (j.rw) {
    case RwMode::kRead:
      return 'R';
    case RwMode::kRandRead:
      return 'r';
    case RwMode::kWrite:
      return 'W';
    case RwMode::kRandWrite:
      return 'w';
    case RwMode::kReadWrite:
      return 'M';
    case RwMode::kRandRW:
      return 'm';
  }
  return '?';
}

DiskUtil disk_delta(const BlockDevice& d, const DiskStats& a, const DiskStats& b,
                    uint64_t elapsed_ns) {
  DiskUtil u;
  u.name = d.name();
  for (int i = 0; i < 2; ++i) {
    const int g = i == 0 ? kStatRead : kStatWrite;
    u.ios[i] = b.ios[g] - a.ios[g];
    u.merges[i] = b.merges[g] - a.merges[g];
    u.sectors[i] = b.sectors[g] - a.sectors[g];
    u.ticks_ms[i] = (b.nsecs[g] - a.nsecs[g]) / 1'000'000;
  }
  u.in_queue_ms = b.time_in_queue_ms - a.time_in_queue_ms;
  u.io_ticks_ms = b.io_ticks_ms - a.io_ticks_ms;
  u.elapsed_ms = elapsed_ns / 1'000'000;
  return u;
}

// The job's region, checked against the device.
void resolve_region(const JobOptions& j, const BlockDevice& disk, uint64_t& start,
                    uint64_t& len) {
  const uint64_t dev = disk.size_bytes();
  const uint32_t lbs = disk.disk().limits().logical_block_size;
  auto fail = [&](const std::string& why) {
    throw Error(fmt::format("job '{}': {}", j.name, why));
  };
  start = j.offset.resolve(dev);
  if (start >= dev) {
    fail(fmt::format("offset {} is at or beyond the end of {} ({})", start, disk.name(),
                     format_size(dev)));
  }
  len = j.size.given ? j.size.resolve(dev) : dev - start;
  if (len > dev - start) {
    fail(fmt::format("offset {} + size {} goes beyond the end of {} ({} bytes)", start,
                     len, disk.name(), dev));
  }
  const uint32_t min_bs = j.min_bs(), max_bs = j.max_bs();
  if (start % lbs != 0) {
    fail(fmt::format("offset {} is not a multiple of {}'s logical block size {}", start,
                     disk.name(), lbs));
  }
  for (uint32_t bs : {min_bs, max_bs}) {
    if (bs % lbs != 0) {
      fail(fmt::format("block size {} is not a multiple of {}'s logical block size {}",
                       bs, disk.name(), lbs));
    }
  }
  len = len / min_bs * min_bs;
  if (len < max_bs) {
    fail(fmt::format("the region ({} bytes) is smaller than the block size {}", len,
                     max_bs));
  }
}

}  // namespace

std::shared_ptr<BlockDevice> open_device(DiskRegistry& registry,
                                         std::string_view filename) {
  // A device an earlier job made (a disk, or a partition: "ram0p1").
  if (filename.find(':') == std::string_view::npos) {
    try {
      return registry.open(filename, OpenMode::kWrite);
    } catch (const BusyError&) {
      throw;
    } catch (const Error&) {
      // Not a device's name: a spec then, which says what is wrong.
    }
  }
  // SPEC,part=N: partition N of the disk SPEC makes (fio's /dev/sda1).
  const size_t at = filename.rfind(",part=");
  if (at == std::string_view::npos) return Disk::whole(registry.create(filename));
  const std::string_view num = filename.substr(at + 6);
  unsigned n = 0;
  const auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), n);
  if (ec != std::errc() || end != num.data() + num.size() || n < 1 ||
      n > Disk::kMaxPartitions)
    throw Error(fmt::format("'{}': part= takes a partition number from 1 to {}", filename,
                            Disk::kMaxPartitions));
  const std::shared_ptr<Disk> disk = registry.create(filename.substr(0, at));
  const std::string name = Disk::partition_name(disk->name(), n);
  if (auto p = Disk::open_partition(disk, name)) {
    p->check_open_for_write();
    return p;
  }
  const PartitionTable t = disk->partition_table();
  throw Error(fmt::format("'{}': {} has no partition {} ({})", filename, disk->name(), n,
                          !t.error.empty()  ? t.error
                          : t.label.empty() ? "no partition table"
                                            : fmt::format("{} partitions in its {} table",
                                                          t.partitions.size(), t.label)));
}

RunResult run_bench(const BenchConfig& cfg, DiskRegistry& registry,
                    const RunOptions& opts) {
  RunResult run;
  run.start_unix_ms =
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
  run.jobs.resize(cfg.jobs.size());
  std::vector<JobState> states(cfg.jobs.size());

  // Devices: one per distinct filename, in the order first named.
  std::map<std::string, std::shared_ptr<BlockDevice>> disks;
  std::vector<std::shared_ptr<BlockDevice>> disk_order;
  for (const JobOptions& j : cfg.jobs) {
    if (disks.count(j.filename)) continue;
    try {
      auto d = open_device(registry, j.filename);
      disks[j.filename] = d;
      disk_order.push_back(d);
    } catch (const Error& e) {
      throw Error(fmt::format("job '{}': {}", j.name, e.what()));
    }
  }

  // Regions, threads and groups.
  unsigned group = 0;
  for (size_t i = 0; i < cfg.jobs.size(); ++i) {
    const JobOptions& j = cfg.jobs[i];
    JobResult& r = run.jobs[i];
    JobState& st = states[i];
    st.result = &r;
    st.dev = disks[j.filename];
    if (j.cached) PageCache::attach(st.dev->disk());
    if (j.stonewall && i > 0) ++group;
    r.job = j;
    r.group = group;
    r.disk_name = st.dev->name();
    r.disk_bytes = st.dev->size_bytes();
    r.threads = j.numjobs;
    resolve_region(j, *st.dev, r.region_start, r.region_len);
    if (j.bfq_weight != 0) check_bfq_weight(j.name, st.dev->disk());
  }

  // Verify: one generation map per disk over the regions of the jobs that
  // verify on it, with one set of verify settings.
  std::map<BlockDevice*, std::unique_ptr<GenerationMap>> maps;
  {
    std::map<BlockDevice*, std::vector<size_t>> by_disk;
    for (size_t i = 0; i < cfg.jobs.size(); ++i) {
      if (cfg.jobs[i].verify != VerifyAlgo::kNone)
        by_disk[states[i].dev.get()].push_back(i);
    }
    for (auto& [disk, idx] : by_disk) {
      const JobOptions& a = cfg.jobs[idx[0]];
      uint64_t lo = UINT64_MAX, hi = 0;
      for (size_t i : idx) {
        const JobOptions& b = cfg.jobs[i];
        if (b.verify != a.verify || b.verify_block() != a.verify_block() ||
            b.randseed != a.randseed) {
          throw Error(
              fmt::format("jobs '{}' and '{}' verify {} with different settings "
                          "(verify={} and {}, block "
                          "{} and {}, randseed {} and {}): they would read each other's "
                          "blocks as bad",
                          a.name, b.name, disk->name(), verify_algo_name(a.verify),
                          verify_algo_name(b.verify), a.verify_block(), b.verify_block(),
                          a.randseed, b.randseed));
        }
        lo = std::min(lo, run.jobs[i].region_start);
        hi = std::max(hi, run.jobs[i].region_start + run.jobs[i].region_len);
      }
      maps[disk] = std::make_unique<GenerationMap>(lo, hi - lo, a.verify_block());
    }
  }

  for (size_t i = 0; i < cfg.jobs.size(); ++i) {
    const JobOptions& j = cfg.jobs[i];
    JobState& st = states[i];
    JobResult& r = run.jobs[i];
    if (j.verify != VerifyAlgo::kNone) {
      st.verifier = std::make_unique<Verifier>(j.verify, j.verify_block(), j.randseed);
    }
    // Threads share the region, as fio's clones do; with verify each takes
    // its own slice, so that no two threads write the same block.
    uint64_t slice = r.region_len;
    if (st.verifier && j.numjobs > 1) {
      slice = r.region_len / j.numjobs / j.min_bs() * j.min_bs();
      if (slice < j.max_bs()) {
        throw Error(
            fmt::format("job '{}': with verify each of the {} threads needs its own "
                        "slice of the region, and {} bytes is too small for that",
                        j.name, j.numjobs, r.region_len));
      }
    }
    st.threads.resize(j.numjobs);
    for (unsigned t = 0; t < j.numjobs; ++t) {
      ThreadSlot& ts = st.threads[t];
      ts.region_start = r.region_start + (slice == r.region_len ? 0 : t * slice);
      ts.region_len = slice;
      WorkerSetup& w = ts.setup;
      w.job = &r.job;
      w.dev = st.dev.get();
      w.region_start = ts.region_start;
      w.region_len = ts.region_len;
      w.job_index = static_cast<unsigned>(i);
      w.thread_index = t;
      w.verifier = st.verifier.get();
      w.gens = st.verifier ? maps[st.dev.get()].get() : nullptr;
      w.live = ts.live.get();
      static const std::atomic<bool> kNever{false};
      w.stop = opts.stop ? opts.stop : &kNever;
    }
  }

  std::vector<DiskStats> disk_before;
  for (const auto& d : disk_order) disk_before.push_back(d->stats());
  const uint64_t run_start = clock_ns();

  // Groups, one after another.
  for (unsigned g = 0; g <= group; ++g) {
    std::vector<size_t> members;
    for (size_t i = 0; i < states.size(); ++i) {
      if (run.jobs[i].group == g) members.push_back(i);
    }
    if (members.empty()) continue;
    std::vector<std::thread> threads;
    const uint64_t g_start = clock_ns();
    for (size_t i : members) {
      states[i].start_ns = g_start;
      // Without ramp_time the threads count from the start: the first
      // interval is a sample too.
      states[i].was_measuring = run.jobs[i].job.ramp_ns == 0;
      for (ThreadSlot& ts : states[i].threads) {
        threads.emplace_back(run_worker, std::cref(ts.setup), std::ref(*ts.result));
      }
    }
    // Watch: samples and progress until every thread of the group is done.
    uint64_t last_tick = g_start;
    uint64_t last_prog[kDirs][2] = {};  // ios, bytes for the progress rates
    while (true) {
      bool all_done = true;
      for (size_t i : members) {
        for (ThreadSlot& ts : states[i].threads) {
          if (!ts.live->done.load(std::memory_order_acquire)) all_done = false;
        }
        if (states[i].end_ns == 0) {
          bool done = std::all_of(states[i].threads.begin(), states[i].threads.end(),
                                  [](const ThreadSlot& ts) {
                                    return ts.live->done.load(std::memory_order_acquire);
                                  });
          if (done) states[i].end_ns = clock_ns();
        }
      }
      if (all_done) break;
      const uint64_t wake = last_tick + opts.sample_ns;
      // Sleep in short steps so a finished group is noticed quickly.
      const uint64_t now0 = clock_ns();
      if (now0 < wake) {
        std::this_thread::sleep_for(
            std::chrono::nanoseconds(std::min<uint64_t>(wake - now0, 20'000'000)));
        continue;
      }
      const uint64_t now = clock_ns();
      const double secs = static_cast<double>(now - last_tick) * 1e-9;
      last_tick = now;
      ProgressSnapshot snap;
      uint64_t tot[kDirs][2] = {};
      uint64_t eta = 0;
      bool eta_known = true;
      std::string modes;
      for (size_t i : members) {
        JobState& st = states[i];
        const JobOptions& j = run.jobs[i].job;
        uint64_t ios[kDirs] = {}, bytes[kDirs] = {};
        bool measuring = true;
        unsigned done = 0;
        for (ThreadSlot& ts : st.threads) {
          for (int d = 0; d < kDirs; ++d) {
            ios[d] += ts.live->ios[d].load(std::memory_order_relaxed);
            bytes[d] += ts.live->bytes[d].load(std::memory_order_relaxed);
          }
          if (!ts.live->measuring.load(std::memory_order_relaxed)) measuring = false;
          if (ts.live->done.load(std::memory_order_relaxed)) ++done;
        }
        const unsigned running = j.numjobs - done;
        snap.running_threads += running;
        if (!modes.empty()) modes += ',';
        modes += running ? fmt::format("{}({})", mode_letter(j), running) : "_";
        if (st.was_measuring && measuring && done == st.done_before && done < j.numjobs) {
          for (int d = 0; d < kDirs; ++d) {
            if (!(d == kDirRead ? rw_reads(j.rw) : rw_writes(j.rw))) continue;
            st.result->bw_samples[d].push_back(
                static_cast<double>(bytes[d] - st.last_bytes[d]) / secs);
            st.result->iops_samples[d].push_back(
                static_cast<double>(ios[d] - st.last_ios[d]) / secs);
          }
        }
        st.was_measuring = measuring;
        st.done_before = done;
        for (int d = 0; d < kDirs; ++d) {
          st.last_ios[d] = ios[d];
          st.last_bytes[d] = bytes[d];
          tot[d][0] += ios[d];
          tot[d][1] += bytes[d];
        }
        // Time left for this job.
        if (running == 0) continue;
        const uint64_t elapsed = now - st.start_ns;
        const uint64_t planned = j.runtime_ns ? j.ramp_ns + j.runtime_ns : 0;
        double frac = 0;
        if (!j.time_based) {
          const double target =
              static_cast<double>(j.io_size ? j.io_size : st.threads[0].region_len) *
              j.loops * j.numjobs;
          frac = static_cast<double>(bytes[0] + bytes[1]) / target;
          if (j.number_ios)
            frac = std::max(frac, static_cast<double>(ios[0] + ios[1]) /
                                      (static_cast<double>(j.number_ios) * j.numjobs));
        }
        if (planned)
          frac =
              std::max(frac, static_cast<double>(elapsed) / static_cast<double>(planned));
        frac = std::min(frac, 1.0);
        if (frac > 0) {
          eta = std::max(eta, static_cast<uint64_t>(static_cast<double>(elapsed) *
                                                    (1 - frac) / frac));
        } else {
          eta_known = false;
        }
      }
      // Later groups, when their length is known.
      for (size_t i = 0; i < states.size(); ++i) {
        if (run.jobs[i].group <= g) continue;
        const JobOptions& j = run.jobs[i].job;
        if (j.time_based)
          eta += j.ramp_ns + j.runtime_ns;
        else
          eta_known = false;
      }
      for (int d = 0; d < kDirs; ++d) {
        snap.iops[d] = static_cast<double>(tot[d][0] - last_prog[d][0]) / secs;
        snap.bw[d] = static_cast<double>(tot[d][1] - last_prog[d][1]) / secs;
        last_prog[d][0] = tot[d][0];
        last_prog[d][1] = tot[d][1];
      }
      snap.modes = modes;
      snap.elapsed_ns = now - run_start;
      snap.eta_ns = eta;
      snap.eta_known = eta_known;
      const double el = static_cast<double>(snap.elapsed_ns);
      snap.percent = eta_known ? 100.0 * el / (el + static_cast<double>(eta)) : 0;
      if (opts.progress) opts.progress->update(snap);
    }
    for (std::thread& t : threads) t.join();
    for (size_t i : members) {
      JobState& st = states[i];
      JobResult& r = *st.result;
      if (st.end_ns == 0) st.end_ns = clock_ns();
      r.elapsed_ns = st.end_ns - st.start_ns;
      for (ThreadSlot& ts : st.threads) r.sum.merge(*ts.result);
      r.runtime_ns = r.sum.runtime_ns;
    }
  }
  if (opts.progress) opts.progress->finish();
  const uint64_t run_ns = clock_ns() - run_start;
  for (size_t i = 0; i < disk_order.size(); ++i) {
    run.disks.push_back(
        disk_delta(*disk_order[i], disk_before[i], disk_order[i]->stats(), run_ns));
  }
  run.interrupted = opts.stop && opts.stop->load();
  return run;
}

}  // namespace blkstack::bench
