// The runner: makes the disks the jobs name, works out each job's region,
// starts numjobs threads per job (jobs run together, a job with stonewall
// waits for the ones before it), samples bandwidth every 500 ms, feeds the
// live progress line, and merges the threads' results per job.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "job_options.h"
#include "stats.h"

namespace blkstack {
class BlockDevice;
class DiskRegistry;
}  // namespace blkstack

namespace blkstack::bench {

// What the progress line shows, about twice a second.
struct ProgressSnapshot {
  unsigned running_threads = 0;
  std::string modes;      // fio's "r(1),W(2)": a letter per job, threads in brackets
  double percent = 0;     // of the whole run, as far as it can be told
  double bw[kDirs] = {};  // bytes/s over the last interval
  double iops[kDirs] = {};
  uint64_t elapsed_ns = 0;
  uint64_t eta_ns = 0;
  bool eta_known = false;
};

class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  virtual void update(const ProgressSnapshot& s) = 0;
  virtual void finish() = 0;
};

struct RunOptions {
  const std::atomic<bool>* stop = nullptr;  // ^C: jobs end early and results still print
  ProgressSink* progress = nullptr;         // nullptr: no progress line
  uint64_t sample_ns = 500'000'000;  // bandwidth/IOPS sample interval (fio's 500 ms)
};

// Runs every job of `cfg` on disks created in `registry` (one disk per
// distinct filename spec). Throws Error for setup mistakes (bad spec, a
// region beyond the device, misaligned sizes); I/O errors and verify
// failures are in the result.
// The device a job's filename names: a device spec (its whole disk); SPEC
// with ",part=N" (partition N of the disk SPEC makes, read from its
// table); or the name of a device an earlier job made ("ram0",
// "file0p1"). Opened for writing. Throws Error.
std::shared_ptr<BlockDevice> open_device(DiskRegistry& registry,
                                         std::string_view filename);

RunResult run_bench(const BenchConfig& cfg, DiskRegistry& registry,
                    const RunOptions& opts);

}  // namespace blkstack::bench
