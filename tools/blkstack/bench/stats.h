// What a run measures: per thread while it runs (no sharing, no locks),
// merged per job and in total afterwards for the reports.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "job_options.h"
#include "latency.h"
#include "verify.h"

namespace blkstack::bench {

// One direction (read or write) of one thread, job or run.
struct DirStats {
  uint64_t ios = 0;
  uint64_t bytes = 0;
  uint64_t short_ios = 0;
  uint64_t errors = 0;
  LatencyStat slat, clat, lat;
  LatencyHistogram slat_hist, clat_hist, lat_hist;

  void add(uint64_t bytes_done, uint64_t slat_ns, uint64_t clat_ns) {
    ++ios;
    bytes += bytes_done;
    slat.add(slat_ns);
    clat.add(clat_ns);
    lat.add(slat_ns + clat_ns);
    slat_hist.add(slat_ns);
    clat_hist.add(clat_ns);
    lat_hist.add(slat_ns + clat_ns);
  }
  void merge(const DirStats& o);
};

struct VerifyStats {
  static constexpr size_t kKeep = 10;  // failures kept with their messages
  uint64_t checked = 0;                // verify blocks checked
  uint64_t readback_blocks = 0;        // of those, in the read-back pass
  uint64_t readback_ns = 0;
  std::array<uint64_t, kVerifyFailureKinds> failures{};
  std::vector<VerifyResult> first;

  uint64_t failed() const;
  void record(const VerifyResult& r);
  void merge(const VerifyStats& o);
};

// I/O depth distribution at submission, in fio's buckets 1, 2, 4, ... >=64.
inline constexpr int kDepthBuckets = 7;

struct ThreadResult {
  DirStats dir[kDirs];
  uint64_t sync_ios = 0;
  LatencyStat sync_lat;
  VerifyStats verify;
  uint64_t runtime_ns =
      0;  // the measured window: after ramp_time, to the last completion
  uint64_t usr_ns = 0, sys_ns = 0, ctx_switches = 0, minflt = 0, majflt = 0;
  std::array<uint64_t, kDepthBuckets> depth{};
  int error = 0;              // first errno (positive), 0 if none
  std::string error_message;  // "read at offset 4096 (4096 bytes): Input/output error"

  void merge(const ThreadResult& o);
};

struct DiskUtil {
  std::string name;
  uint64_t ios[2] = {}, merges[2] = {}, sectors[2] = {}, ticks_ms[2] = {};
  uint64_t in_queue_ms = 0, io_ticks_ms = 0, elapsed_ms = 0;
};

struct JobResult {
  JobOptions job;
  std::string disk_name;
  uint64_t disk_bytes = 0;
  uint64_t region_start = 0, region_len = 0;
  unsigned group = 0;  // jobs separated by stonewall run in later groups
  unsigned threads = 0;
  ThreadResult sum;                       // all threads merged
  uint64_t runtime_ns = 0;                // the longest thread's measured window
  uint64_t elapsed_ns = 0;                // wall time of the job, ramp included
  std::vector<double> bw_samples[kDirs];  // bytes/s per 500 ms interval
  std::vector<double> iops_samples[kDirs];
};

struct RunResult {
  std::vector<JobResult> jobs;
  std::vector<DiskUtil> disks;
  uint64_t start_unix_ms = 0;
  bool interrupted = false;
  int exit_code() const;
};

}  // namespace blkstack::bench
