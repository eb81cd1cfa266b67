// The I/O engine: one thread of one job, driving a disk through its own
// IoContext as an aio program would (aio-stress, fio's libaio engine).
//
// The thread owns everything it touches while running: the context with
// `iodepth` slots, preallocated aligned buffers, the Iocbs, the workload
// generator and the statistics. The hot loop fills the queue in batches of
// iodepth_batch (each batch under a Plug), reaps with get_events(min =
// iodepth_batch_complete_min), and records, per I/O, slat (from preparing
// the I/O to the end of the submit call), clat (from there to its event
// being reaped) and lat (the sum). Nothing is allocated and no lock is
// shared with other threads, apart from what IoContext itself takes.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "job_options.h"
#include "stats.h"
#include "verify.h"

namespace blkstack {
class BlockDevice;
class Disk;
}  // namespace blkstack

namespace blkstack::bench {

// What a running thread publishes for the progress line and the bandwidth
// samples: written by its thread only (plain stores), read by the runner.
struct alignas(64) LiveCounters {
  std::atomic<uint64_t> ios[kDirs] = {};
  std::atomic<uint64_t> bytes[kDirs] = {};
  std::atomic<bool> measuring{false};  // past ramp_time
  std::atomic<bool> done{false};
};

// The generation of every verify block in [base, base + len) of one disk:
// 0 = not written in this run. Shared by the jobs on that disk.
class GenerationMap {
 public:
  // Throws Error when the map would be unreasonably large.
  GenerationMap(uint64_t base, uint64_t len, uint32_t block);
  uint32_t block_size() const { return block_; }
  bool covers(uint64_t offset) const { return offset >= base_ && offset - base_ < len_; }
  // The next generation of the block at `offset` (for a write being stamped).
  uint64_t bump(uint64_t offset) {
    return slot(offset).fetch_add(1, std::memory_order_relaxed) + 1;
  }
  uint64_t get(uint64_t offset) const {
    return slot(offset).load(std::memory_order_relaxed);
  }
  // After a failed write the content is unknown.
  void forget(uint64_t offset) { slot(offset).store(0, std::memory_order_relaxed); }

 private:
  std::atomic<uint32_t>& slot(uint64_t offset) const {
    return gens_[(offset - base_) / block_];
  }
  uint64_t base_, len_;
  uint32_t block_;
  std::unique_ptr<std::atomic<uint32_t>[]> gens_;
};

struct WorkerSetup {
  const JobOptions* job = nullptr;
  BlockDevice* dev = nullptr;  // a whole disk or a partition
  uint64_t region_start = 0;   // bytes
  uint64_t region_len = 0;
  unsigned job_index = 0;
  unsigned thread_index = 0;
  GenerationMap* gens = nullptr;       // with verify
  const Verifier* verifier = nullptr;  // with verify
  LiveCounters* live = nullptr;
  const std::atomic<bool>* stop = nullptr;  // set to end every job early (^C)
};

// Runs one thread of a job to its end; fills `out`.
void run_worker(const WorkerSetup& setup, ThreadResult& out);

}  // namespace blkstack::bench
