// The results, as fio users expect them: the normal text report (per job:
// IOPS, bandwidth, slat/clat/lat, clat percentiles, bandwidth and IOPS
// samples, fio's latency distribution, the aio-stress style power-of-two
// histogram; then each group's and the total line, and disk statistics),
// the aio-stress stage lines for --stages, and --output-format=json with
// fio's structure.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

#include "job_options.h"
#include "stats.h"

namespace blkstack::bench {

// Before the run: one line per job with its main options (fio's "job1:
// (g=0): rw=randread, bs=(R) 4096B-4096B, ...").
std::string format_header(const BenchConfig& cfg, std::string_view version);
std::string format_normal(const RunResult& run, const BenchConfig& cfg);
std::string format_json(const RunResult& run, const BenchConfig& cfg,
                        std::string_view version);

// All jobs as one (summed; the runtime is the sum over groups of each
// group's longest job).
JobResult total_of(const RunResult& run);

// --- formatting helpers, shared with the progress line and tests ---------
// fio's num2str: at most `digits` significant digits and a k/M/G suffix
// ("1071k", "12.3k", "999").
std::string num2str(double v, int digits = 4);
// Bytes (or bytes/s) with IEC or SI units: "4182MiB", "4385MB".
std::string bytes2str(double v, bool iec);
// A latency bound: "256ns", "1.02us", "4.19ms".
std::string ns2str(double ns);
// The aio-stress style histogram lines for `h`: "count < bound" per
// power-of-two bucket, from the first to the last non-empty one.
std::string pow2_histogram(const LatencyHistogram& h, std::string_view indent, bool bars);

}  // namespace blkstack::bench
