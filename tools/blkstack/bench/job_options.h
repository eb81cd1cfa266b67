// Job options with fio's names, and the two ways to give them: fio-style
// command-line arguments (--name=job1 --rw=randread ...) and fio's ini job
// files ([global] and [job] sections). Every mistake is an Error naming the
// option, the bad value, what was expected and, for job files, the line.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "verify.h"

namespace blkstack::bench {

enum class RwMode : uint8_t { kRead, kWrite, kRandRead, kRandWrite, kReadWrite, kRandRW };
enum class Distribution : uint8_t { kRandom, kZipf, kPareto };
enum Dir : int { kDirRead = 0, kDirWrite = 1, kDirs = 2 };

std::string_view rw_name(RwMode m);
inline bool rw_random(RwMode m) {
  return m == RwMode::kRandRead || m == RwMode::kRandWrite || m == RwMode::kRandRW;
}
inline bool rw_reads(RwMode m) { return m != RwMode::kWrite && m != RwMode::kRandWrite; }
inline bool rw_writes(RwMode m) { return m != RwMode::kRead && m != RwMode::kRandRead; }

struct BsSplit {
  uint32_t bs;
  unsigned percent;
};

// A size given as bytes or as a share of the device ("50%").
struct SizeOrPercent {
  uint64_t bytes = 0;
  double percent = 0;  // > 0: a share of the device
  bool given = false;
  uint64_t resolve(uint64_t device_bytes) const {
    return percent > 0 ? static_cast<uint64_t>(static_cast<double>(device_bytes) *
                                               percent / 100.0)
                       : bytes;
  }
};

struct JobOptions {
  std::string name;
  std::string description;
  std::string filename;  // a blkstack device spec: null:1G, ram:1G, file:/path
  RwMode rw = RwMode::kRead;
  unsigned rwmixread = 50;
  uint32_t bs[kDirs] = {4096, 4096};
  std::vector<BsSplit> bssplit[kDirs];  // empty: bs
  unsigned iodepth = 1;
  unsigned iodepth_batch = 1;               // I/Os per submit call
  unsigned iodepth_batch_complete_min = 1;  // events to wait for
  unsigned iodepth_batch_complete_max = 0;  // events to take at most (0: iodepth)
  unsigned numjobs = 1;
  SizeOrPercent size;    // the region; default: from offset to the end of the device
  SizeOrPercent offset;  // the region's start
  uint64_t io_size = 0;  // bytes to move per thread (default: size); io_limit
  uint64_t number_ios = 0;
  unsigned loops = 1;
  uint64_t runtime_ns = 0;  // 0: no limit
  bool time_based = false;
  uint64_t ramp_ns = 0;
  Distribution distribution = Distribution::kRandom;
  double dist_param = 0;  // zipf theta, pareto h
  bool norandommap = false;
  uint64_t randseed = 0x89;  // fio's default
  bool direct = false;
  // direct=0 given: the I/O goes through the disk's page cache, attached
  // for the run (page_cache.h). Without direct=, no cache, as before.
  bool cached = false;
  bool hipri = false;  // polled completion (kIocbHipri)
  unsigned fsync = 0;  // an fsync after every N writes
  bool end_fsync = false;
  VerifyAlgo verify = VerifyAlgo::kNone;
  uint32_t verify_interval = 0;  // 0: the smallest block size
  bool do_verify = true;
  bool verify_fatal = false;
  uint64_t rate_iops = 0;
  unsigned bfq_weight = 0;  // 0: bfq's default weight for the job's threads
  bool stonewall = false;
  bool continue_on_error = false;
  bool clat_percentiles = true;
  bool lat_percentiles = false;
  bool slat_percentiles = false;
  std::vector<double> percentile_list;  // empty: fio's default list
  // Options as given (after [global]), for the JSON "job options".
  std::vector<std::pair<std::string, std::string>> given;

  uint32_t min_bs() const;
  uint32_t max_bs() const;
  // The verify block size: verify_interval, or the smallest block size.
  uint32_t verify_block() const { return verify_interval ? verify_interval : min_bs(); }
};

enum class OutputFormat : uint8_t { kNormal = 1, kJson = 2 };
enum class Eta : uint8_t { kAuto, kAlways, kNever };

struct BenchConfig {
  std::vector<JobOptions> jobs;
  unsigned formats = static_cast<unsigned>(OutputFormat::kNormal);  // OutputFormat bits
  std::string output_file;                                          // empty: stdout
  Eta eta = Eta::kAuto;
  bool stages = false;  // the aio-stress preset: extra aio-stress style lines
  bool has(OutputFormat f) const { return (formats & static_cast<unsigned>(f)) != 0; }
};

// One option name and the help line for it, for --help.
struct OptionHelp {
  std::string_view name;
  std::string_view value;  // "SIZE", "read|write|..."
  std::string_view help;
};
std::span<const OptionHelp> job_option_help();
std::span<const OptionHelp> bench_option_help();

// Sets option `key` on `job` from its text (`value` empty for a bare flag).
// Throws Error: "option 'bs': bad size '4q': ..." or "unknown option 'bss'
// (did you mean 'bs'?)".
void apply_job_option(JobOptions& job, std::string_view key, std::string_view value);
// Checks a job as a whole (combinations, ranges). Throws Error naming the job.
void validate_job(const JobOptions& job);

// A job file's jobs: [global] applies to the jobs after it, each other
// section is one job named by it; `key=value`, bare `key` for flags, and
// ';' or '#' comments. `overrides` (from the command line) are applied to
// every job after its own options.
std::vector<JobOptions> parse_job_file(
    std::string_view text, std::string_view filename,
    std::span<const std::pair<std::string, std::string>> overrides = {});

// The aio-stress preset: write, read, random write, random read on the same
// region, one after another, from the options of `base` (default bs 64k and
// iodepth 64, aio-stress's own, unless given).
std::vector<JobOptions> aio_stress_stages(const JobOptions& base);

// The whole command line after "bench": job files (positional), job options
// (--key=value or --key value; --name= starts a new job, options before the
// first --name apply to every job), and the bench options (--output-format,
// --output, --eta, --stages, --preset). Throws Error.
BenchConfig parse_bench_args(std::span<const std::string> args);

}  // namespace blkstack::bench
