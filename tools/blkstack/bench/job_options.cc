#include "job_options.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "blkstack/device_spec.h"
#include "blkstack/error.h"

namespace blkstack::bench {
namespace {

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())))
    s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())))
    s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  while (true) {
    size_t p = s.find(sep);
    out.push_back(s.substr(0, p));
    if (p == std::string_view::npos) break;
    s.remove_prefix(p + 1);
  }
  return out;
}

[[noreturn]] void bad(std::string_view key, std::string_view value,
                      std::string_view expected) {
  throw Error(
      fmt::format("option '{}': bad value '{}': expected {}", key, value, expected));
}

double parse_double(std::string_view key, std::string_view text,
                    std::string_view expected) {
  std::string s(text);
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || errno != 0 || !std::isfinite(v)) {
    bad(key, text, expected);
  }
  return v;
}

uint64_t parse_unsigned(std::string_view key, std::string_view text) {
  try {
    return parse_uint(text, "number");
  } catch (const Error&) {
    bad(key, text, "an unsigned integer");
  }
}

unsigned parse_count(std::string_view key, std::string_view text, unsigned lo,
                     unsigned hi) {
  uint64_t v = parse_unsigned(key, text);
  if (v < lo || v > hi) bad(key, text, fmt::format("a number from {} to {}", lo, hi));
  return static_cast<unsigned>(v);
}

uint64_t parse_bytes(std::string_view key, std::string_view text) {
  try {
    return parse_size(text, "size");
  } catch (const Error&) {
    bad(key, text,
        "a size with an optional k, m, g or t suffix (powers of 1024), e.g. 4k or 1g");
  }
}

uint32_t parse_block_size(std::string_view key, std::string_view text) {
  uint64_t v = parse_bytes(key, text);
  if (v == 0 || v % 512 != 0 || v > (64u << 20)) {
    bad(key, text, "a block size that is a multiple of 512 bytes, up to 64m");
  }
  return static_cast<uint32_t>(v);
}

SizeOrPercent parse_size_or_percent(std::string_view key, std::string_view text) {
  SizeOrPercent r;
  r.given = true;
  if (!text.empty() && text.back() == '%') {
    r.percent = parse_double(key, text.substr(0, text.size() - 1),
                             "a size, or a percentage such as 50%");
    if (r.percent <= 0 || r.percent > 100)
      bad(key, text, "a percentage above 0 and at most 100");
    return r;
  }
  r.bytes = parse_bytes(key, text);
  return r;
}

// fio's time values: a number with an optional unit (us, ms, s, m, h, d);
// without one, seconds.
uint64_t parse_time(std::string_view key, std::string_view text) {
  static constexpr std::string_view kExpected =
      "a time: seconds, or a number with us, ms, s, m or h (e.g. 10, 500ms, 2m)";
  size_t i = 0;
  while (i < text.size() &&
         (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
    ++i;
  if (i == 0) bad(key, text, kExpected);
  double v = parse_double(key, text.substr(0, i), kExpected);
  std::string unit = lower(text.substr(i));
  double scale;
  if (unit.empty() || unit == "s" || unit == "sec")
    scale = 1e9;
  else if (unit == "ns")
    scale = 1;
  else if (unit == "us" || unit == "usec")
    scale = 1e3;
  else if (unit == "ms" || unit == "msec")
    scale = 1e6;
  else if (unit == "m" || unit == "min")
    scale = 60e9;
  else if (unit == "h")
    scale = 3600e9;
  else if (unit == "d")
    scale = 86400e9;
  else
    bad(key, text, kExpected);
  return static_cast<uint64_t>(v * scale);
}

bool parse_flag(std::string_view key, std::string_view value) {
  if (value.empty()) return true;  // a bare flag: --time_based
  try {
    return parse_bool(value, "flag");
  } catch (const Error&) {
    bad(key, value, "1/0, true/false, yes/no or on/off");
  }
}

// "4k" or "4k,64k" (read, write; an empty part keeps the default).
void parse_bs(JobOptions& j, std::string_view key, std::string_view value) {
  auto parts = split(value, ',');
  if (parts.size() > 3) bad(key, value, "SIZE or READ_SIZE,WRITE_SIZE");
  if (parts.size() == 1) {
    j.bs[kDirRead] = j.bs[kDirWrite] = parse_block_size(key, parts[0]);
    return;
  }
  for (int d = 0; d < kDirs; ++d) {
    if (!trim(parts[d]).empty()) j.bs[d] = parse_block_size(key, trim(parts[d]));
  }
}

std::vector<BsSplit> parse_one_bssplit(std::string_view key, std::string_view text) {
  static constexpr std::string_view kExpected =
      "BS/PERCENT entries separated by ':', e.g. 4k/50:64k/50";
  std::vector<BsSplit> out;
  unsigned sum = 0, missing = 0;
  for (std::string_view e : split(text, ':')) {
    e = trim(e);
    if (e.empty()) bad(key, text, kExpected);
    size_t slash = e.find('/');
    BsSplit s{};
    s.bs = parse_block_size(key, e.substr(0, slash));
    if (slash == std::string_view::npos || trim(e.substr(slash + 1)).empty()) {
      s.percent = UINT32_MAX;  // takes a share of the rest
      ++missing;
    } else {
      s.percent = parse_count(key, trim(e.substr(slash + 1)), 0, 100);
      sum += s.percent;
    }
    out.push_back(s);
  }
  if (sum > 100) {
    throw Error(
        fmt::format("option '{}': '{}' adds up to {}%, more than 100%", key, text, sum));
  }
  if (missing > 0) {
    unsigned share = (100 - sum) / missing, extra = (100 - sum) % missing;
    for (BsSplit& s : out) {
      if (s.percent != UINT32_MAX) continue;
      s.percent = share + (extra > 0 ? 1 : 0);
      if (extra > 0) --extra;
    }
  } else if (sum != 100) {
    throw Error(fmt::format(
        "option '{}': '{}' adds up to {}%, expected 100% (leave a percentage out, as in "
        "4k/10:64k/, to give that size the rest)",
        key, text, sum));
  }
  std::erase_if(out, [](const BsSplit& s) { return s.percent == 0; });
  return out;
}

void parse_bssplit(JobOptions& j, std::string_view key, std::string_view value) {
  auto parts = split(value, ',');
  if (parts.size() > 3) bad(key, value, "a split, or READ_SPLIT,WRITE_SPLIT");
  if (parts.size() == 1) {
    j.bssplit[kDirRead] = j.bssplit[kDirWrite] = parse_one_bssplit(key, value);
    return;
  }
  for (int d = 0; d < kDirs; ++d) {
    if (!trim(parts[d]).empty()) j.bssplit[d] = parse_one_bssplit(key, trim(parts[d]));
  }
}

void parse_rw(JobOptions& j, std::string_view key, std::string_view value) {
  std::string v = lower(value);
  if (v.find(':') != std::string::npos) {
    throw Error(fmt::format(
        "option '{}': '{}': offset modifiers (':N') are not supported", key, value));
  }
  if (v == "read")
    j.rw = RwMode::kRead;
  else if (v == "write")
    j.rw = RwMode::kWrite;
  else if (v == "randread")
    j.rw = RwMode::kRandRead;
  else if (v == "randwrite")
    j.rw = RwMode::kRandWrite;
  else if (v == "readwrite" || v == "rw")
    j.rw = RwMode::kReadWrite;
  else if (v == "randrw")
    j.rw = RwMode::kRandRW;
  else if (v == "trim" || v == "randtrim" || v == "trimwrite" || v == "randtrimwrite") {
    throw Error(
        fmt::format("option '{}': '{}' is not supported yet (read, write, randread, "
                    "randwrite, readwrite, randrw)",
                    key, value));
  } else {
    bad(key, value, "read, write, randread, randwrite, readwrite (or rw) or randrw");
  }
}

void parse_distribution(JobOptions& j, std::string_view key, std::string_view value) {
  std::string v = lower(value);
  size_t colon = v.find(':');
  std::string kind = v.substr(0, colon);
  if (kind == "random" && colon == std::string::npos) {
    j.distribution = Distribution::kRandom;
    return;
  }
  if (kind != "zipf" && kind != "pareto") {
    bad(key, value, "random, zipf:THETA (e.g. zipf:1.2) or pareto:H (e.g. pareto:0.2)");
  }
  if (colon == std::string::npos) {
    throw Error(fmt::format(
        "option '{}': '{}' needs a parameter: {}", key, value,
        kind == "zipf" ? "zipf:THETA, e.g. zipf:1.2" : "pareto:H, e.g. pareto:0.2"));
  }
  std::string_view param = std::string_view(v).substr(colon + 1);
  double p = parse_double(
      key, param, kind == "zipf" ? "zipf:THETA with a number" : "pareto:H with a number");
  if (kind == "zipf") {
    if (p <= 0 || p == 1.0)
      bad(key, value, "a zipf theta above 0 and not 1.0 (e.g. zipf:1.2)");
    j.distribution = Distribution::kZipf;
  } else {
    if (p <= 0 || p >= 1) bad(key, value, "a pareto h between 0 and 1 (e.g. pareto:0.2)");
    j.distribution = Distribution::kPareto;
  }
  j.dist_param = p;
}

void parse_verify(JobOptions& j, std::string_view key, std::string_view value) {
  std::string v = lower(value);
  if (v == "0" || v == "none")
    j.verify = VerifyAlgo::kNone;
  else if (v == "crc32c" || v == "crc32c-intel")
    j.verify = VerifyAlgo::kCrc32c;
  else if (v == "xxh64")
    j.verify = VerifyAlgo::kXxh64;
  else
    bad(key, value, "none, crc32c (or crc32c-intel) or xxh64");
}

void parse_percentile_list(JobOptions& j, std::string_view key, std::string_view value) {
  j.percentile_list.clear();
  for (std::string_view p : split(value, ':')) {
    double v =
        parse_double(key, trim(p), "percentiles separated by ':', e.g. 50:99:99.9");
    if (v < 0 || v > 100) bad(key, value, "percentiles from 0 to 100");
    j.percentile_list.push_back(v);
  }
  if (j.percentile_list.size() > 64) bad(key, value, "at most 64 percentiles");
}

using Setter = void (*)(JobOptions&, std::string_view key, std::string_view value);

struct Def {
  std::string_view names;  // "bs|blocksize": the first is the fio name
  std::string_view value;
  std::string_view help;
  Setter set;
};

#define SET(body)                                               \
  [](JobOptions& j, std::string_view key, std::string_view v) { \
    (void)j;                                                    \
    (void)key;                                                  \
    (void)v;                                                    \
    body;                                                       \
  }

const Def kDefs[] = {
    {"name", "NAME", "the job's name; on the command line, starts a new job",
     SET(j.name = std::string(v))},
    {"description", "TEXT", "free text shown with the job",
     SET(j.description = std::string(v))},
    {"filename|device", "SPEC",
     "the device: a blkstack device spec (null:1G, ram:1G, file:/path,size=1G); "
     "SPEC,part=N for its partition N; or a device an earlier job made (file0p2). "
     "Jobs giving the same one share it",
     SET(if (v.empty()) bad(key, v, "a device spec such as null:1G");
         j.filename = std::string(v))},
    {"rw|readwrite", "MODE",
     "read, write, randread, randwrite, readwrite (rw) or randrw (default read)",
     parse_rw},
    {"rwmixread", "PERCENT", "share of reads in readwrite/randrw (default 50)",
     SET(j.rwmixread = parse_count(key, v, 0, 100))},
    {"rwmixwrite", "PERCENT", "share of writes in readwrite/randrw (100 - rwmixread)",
     SET(j.rwmixread = 100 - parse_count(key, v, 0, 100))},
    {"bs|blocksize", "SIZE[,SIZE]", "block size, or READ,WRITE sizes (default 4k)",
     parse_bs},
    {"bssplit", "BS/PCT:...",
     "a mix of block sizes, e.g. 4k/50:64k/40:1m/10 (READ,WRITE mixes with a comma)",
     parse_bssplit},
    {"iodepth", "N", "I/Os kept in flight per thread (default 1)",
     SET(j.iodepth = parse_count(key, v, 1, 65536))},
    {"iodepth_batch|iodepth_batch_submit", "N",
     "I/Os handed to one submit call (default 1)",
     SET(j.iodepth_batch = parse_count(key, v, 1, 65536))},
    {"iodepth_batch_complete_min|iodepth_batch_complete", "N",
     "events to wait for in each reap (default 1)",
     SET(j.iodepth_batch_complete_min = parse_count(key, v, 0, 65536))},
    {"iodepth_batch_complete_max", "N",
     "events to take at most in each reap (default iodepth)",
     SET(j.iodepth_batch_complete_max = parse_count(key, v, 1, 65536))},
    {"numjobs", "N", "threads running this job, each with its own IoContext (default 1)",
     SET(j.numjobs = parse_count(key, v, 1, 1024))},
    {"size", "SIZE|PCT%",
     "the region the job works on (default: from offset to the end of the device)",
     SET(j.size = parse_size_or_percent(key, v))},
    {"offset", "SIZE|PCT%", "where the region starts (default 0)",
     SET(j.offset = parse_size_or_percent(key, v))},
    {"io_size|io_limit", "SIZE",
     "bytes to move per thread before stopping (default: size)",
     SET(j.io_size = parse_bytes(key, v))},
    {"number_ios", "N", "stop after this many I/Os per thread",
     SET(j.number_ios = parse_unsigned(key, v))},
    {"loops", "N", "passes over the region (default 1)",
     SET(j.loops = parse_count(key, v, 1, 1u << 30))},
    {"runtime", "TIME", "stop after this long (seconds, or with us/ms/s/m/h)",
     SET(j.runtime_ns = parse_time(key, v))},
    {"time_based", "", "keep going (wrapping around) until runtime has passed",
     SET(j.time_based = parse_flag(key, v))},
    {"ramp_time", "TIME", "run this long before counting anything",
     SET(j.ramp_ns = parse_time(key, v))},
    {"random_distribution", "DIST", "random (uniform), zipf:THETA or pareto:H",
     parse_distribution},
    {"norandommap", "",
     "uniform random offsets may repeat within a pass (default: every block once per "
     "pass)",
     SET(j.norandommap = parse_flag(key, v))},
    {"randseed", "N", "seed of the random offsets and of verify (default 0x89)",
     SET(j.randseed = parse_unsigned(key, v))},
    {"direct", "BOOL",
     "1: O_DIRECT rules: offsets, lengths and buffers aligned (kIocbDirect); 0: "
     "buffered, through the disk's page cache (docs/page-cache.md)",
     SET(j.direct = parse_flag(key, v); j.cached = !j.direct)},
    {"hipri", "BOOL",
     "polled completion (RWF_HIPRI): this thread reaps its I/O from the disk's poll "
     "queues "
     "(file:...,poll_queues=1) instead of being woken",
     SET(j.hipri = parse_flag(key, v))},
    {"fsync", "N", "an fsync after every N writes (waits for the writes in flight first)",
     SET(j.fsync = parse_count(key, v, 0, UINT32_MAX))},
    {"end_fsync", "BOOL", "an fsync when the job's writes are done",
     SET(j.end_fsync = parse_flag(key, v))},
    {"verify", "ALGO",
     "none, crc32c or xxh64: stamp every block written, check every block read",
     parse_verify},
    {"verify_interval", "SIZE", "the verify block size (default: the smallest bs)",
     SET(j.verify_interval = parse_block_size(key, v))},
    {"do_verify", "BOOL",
     "read back and check what a write job wrote, when it is done (default 1)",
     SET(j.do_verify = parse_flag(key, v))},
    {"verify_fatal", "BOOL", "stop the job at the first verify failure (default 0)",
     SET(j.verify_fatal = parse_flag(key, v))},
    {"rate_iops", "N", "at most N I/Os per second per thread",
     SET(j.rate_iops = parse_unsigned(key, v))},
    {"bfq_weight", "W",
     "each thread's weight under the bfq scheduler, 1..1000 (needs sched=bfq on the "
     "device; default bfq's 100): the role of fio's cgroup_weight",
     SET(j.bfq_weight = parse_count(key, v, 1, 1000))},
    {"stonewall|wait_for_previous", "",
     "wait for the jobs before this one to finish first",
     SET(j.stonewall = parse_flag(key, v))},
    {"continue_on_error", "none|all",
     "keep going after an I/O error (default none: the job stops)",
     SET(std::string l = lower(v);
         if (l == "none" || l == "0") j.continue_on_error = false;
         else if (l == "all" || l == "1" || l == "io" || l == "verify" || l.empty())
             j.continue_on_error = true;
         else bad(key, v, "none or all"))},
    {"clat_percentiles", "BOOL", "report completion-latency percentiles (default 1)",
     SET(j.clat_percentiles = parse_flag(key, v))},
    {"lat_percentiles", "BOOL", "report total-latency percentiles",
     SET(j.lat_percentiles = parse_flag(key, v))},
    {"slat_percentiles", "BOOL", "report submission-latency percentiles",
     SET(j.slat_percentiles = parse_flag(key, v))},
    {"percentile_list", "P:P:...", "the percentiles to report (default 1:5:10:...:99.99)",
     parse_percentile_list},
    {"ioengine", "NAME",
     "accepted for fio job files and ignored: I/O always goes through IoContext", SET()},
    {"group_reporting", "",
     "accepted; results are always per job (all its threads) and in total", SET()},
    {"thread", "", "accepted; jobs always run as threads", SET()},
};
#undef SET

const OptionHelp kBenchHelp[] = {
    {"output-format", "FMT", "normal (default), json, or normal,json"},
    {"output", "FILE", "write the results to FILE instead of standard output"},
    {"eta", "WHEN",
     "the live progress line: auto (when stdout is a terminal), always or never"},
    {"stages", "",
     "the aio-stress preset: write, read, random write, random read in order"},
    {"preset", "NAME", "a preset: aio-stress (the same as --stages)"},
};

std::vector<OptionHelp> make_help() {
  std::vector<OptionHelp> out;
  for (const Def& d : kDefs) out.push_back({d.names, d.value, d.help});
  return out;
}

const Def* find_def(std::string_view key) {
  for (const Def& d : kDefs) {
    for (std::string_view n : split(d.names, '|')) {
      if (n == key) return &d;
    }
  }
  return nullptr;
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] =
          std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string suggestion(std::string_view key) {
  std::string_view best;
  size_t best_d = 3;
  auto consider = [&](std::string_view n) {
    size_t d = edit_distance(key, n);
    if (d < best_d) {
      best_d = d;
      best = n;
    }
  };
  for (const Def& d : kDefs) {
    for (std::string_view n : split(d.names, '|')) consider(n);
  }
  for (const OptionHelp& b : kBenchHelp) consider(b.name);
  return best.empty() ? "" : fmt::format(" (did you mean '{}'?)", best);
}

bool is_flag(const Def& d) { return d.value.empty() || d.value == "BOOL"; }

void set_given(JobOptions& j, std::string_view key, std::string_view value) {
  for (auto& kv : j.given) {
    if (kv.first == key) {
      kv.second = std::string(value);
      return;
    }
  }
  j.given.emplace_back(std::string(key), std::string(value));
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(fmt::format("cannot read job file '{}': {}", path, std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

using KV = std::pair<std::string, std::string>;

struct RawOption {
  std::string key, value;
  std::string where;  // "job file 'x', line 3" or "" (command line)
};

void apply_raw(JobOptions& j, const RawOption& o) {
  try {
    apply_job_option(j, o.key, o.value);
  } catch (const Error& e) {
    if (o.where.empty()) throw;
    throw Error(fmt::format("{}: {}", o.where, e.what()));
  }
}

JobOptions build_job(std::string_view name, std::span<const RawOption> global,
                     std::span<const RawOption> own, std::span<const KV> overrides) {
  JobOptions j;
  j.name = std::string(name);
  for (const RawOption& o : global) apply_raw(j, o);
  for (const RawOption& o : own) apply_raw(j, o);
  for (const KV& kv : overrides) apply_job_option(j, kv.first, kv.second);
  if (j.name.empty()) j.name = "job";
  validate_job(j);
  return j;
}

}  // namespace

std::string_view rw_name(RwMode m) {
  switch (m) {
    case RwMode::kRead:
      return "read";
    case RwMode::kWrite:
      return "write";
    case RwMode::kRandRead:
      return "randread";
    case RwMode::kRandWrite:
      return "randwrite";
    case RwMode::kReadWrite:
      return "rw";
    case RwMode::kRandRW:
      return "randrw";
  }
  return "?";
}

uint32_t JobOptions::min_bs() const {
  uint32_t m = UINT32_MAX;
  for (int d = 0; d < kDirs; ++d) {
    if (d == kDirRead && !rw_reads(rw)) continue;
    if (d == kDirWrite && !rw_writes(rw)) continue;
    if (bssplit[d].empty()) m = std::min(m, bs[d]);
    for (const BsSplit& s : bssplit[d]) m = std::min(m, s.bs);
  }
  return m;
}

uint32_t JobOptions::max_bs() const {
  uint32_t m = 0;
  for (int d = 0; d < kDirs; ++d) {
    if (d == kDirRead && !rw_reads(rw)) continue;
    if (d == kDirWrite && !rw_writes(rw)) continue;
    if (bssplit[d].empty()) m = std::max(m, bs[d]);
    for (const BsSplit& s : bssplit[d]) m = std::max(m, s.bs);
  }
  return m;
}

std::span<const OptionHelp> job_option_help() {
  static const std::vector<OptionHelp> help = make_help();
  return help;
}

std::span<const OptionHelp> bench_option_help() { return kBenchHelp; }

void apply_job_option(JobOptions& job, std::string_view key, std::string_view value) {
  std::string k = lower(trim(key));
  std::replace(k.begin(), k.end(), '-', '_');
  value = trim(value);
  const Def* d = find_def(k);
  if (d == nullptr) {
    for (const OptionHelp& b : kBenchHelp) {
      std::string bn(b.name);
      std::replace(bn.begin(), bn.end(), '-', '_');
      if (bn == k) {
        throw Error(
            fmt::format("option '{}' is a command-line option (--{}), not a job option",
                        key, b.name));
      }
    }
    throw Error(fmt::format("unknown option '{}'{}; 'blkstack bench --help' lists them",
                            key, suggestion(k)));
  }
  if (value.empty() && !is_flag(*d)) {
    throw Error(fmt::format("option '{}' needs a value ({})", key, d->value));
  }
  d->set(job, k, value);
  if (k != "name") set_given(job, k, value.empty() ? "1" : value);
}

void validate_job(const JobOptions& j) {
  auto fail = [&](const std::string& why) {
    throw Error(fmt::format("job '{}': {}", j.name, why));
  };
  if (j.filename.empty()) {
    fail(
        "no filename (the device to run on: --filename=null:1G, ram:1G or any device "
        "spec)");
  }
  if (j.iodepth_batch > j.iodepth) {
    fail(fmt::format("iodepth_batch={} is larger than iodepth={}", j.iodepth_batch,
                     j.iodepth));
  }
  if (j.iodepth_batch_complete_min > j.iodepth) {
    fail(fmt::format("iodepth_batch_complete_min={} is larger than iodepth={}",
                     j.iodepth_batch_complete_min, j.iodepth));
  }
  if (j.iodepth_batch_complete_max != 0 &&
      j.iodepth_batch_complete_max < j.iodepth_batch_complete_min) {
    fail(fmt::format(
        "iodepth_batch_complete_max={} is below iodepth_batch_complete_min={}",
        j.iodepth_batch_complete_max, j.iodepth_batch_complete_min));
  }
  if (j.time_based && j.runtime_ns == 0)
    fail("time_based needs a runtime (e.g. --runtime=10)");
  if (j.verify != VerifyAlgo::kNone) {
    const uint32_t vb = j.verify_block();
    if (vb < 512 || vb % 512 != 0)
      fail(fmt::format("verify block size {} is not a multiple of 512", vb));
    for (int d = 0; d < kDirs; ++d) {
      auto check = [&](uint32_t bs) {
        if (bs % vb != 0) {
          fail(fmt::format(
              "verify: block size {} is not a multiple of the verify block size {} "
              "(set verify_interval to a common divisor)",
              bs, vb));
        }
      };
      if (j.bssplit[d].empty()) check(j.bs[d]);
      for (const BsSplit& s : j.bssplit[d]) check(s.bs);
    }
  }
}

std::vector<JobOptions> parse_job_file(std::string_view text, std::string_view filename,
                                       std::span<const KV> overrides) {
  std::vector<RawOption> global;
  struct Section {
    std::string name;
    std::vector<RawOption> global;  // [global] as it stood when the job began
    std::vector<RawOption> own;
  };
  std::vector<Section> jobs;
  enum { kNone, kGlobal, kJob } where = kNone;
  int line_no = 0;
  for (std::string_view line : split(text, '\n')) {
    ++line_no;
    line = trim(line);
    if (line.empty() || line[0] == ';' || line[0] == '#') continue;
    const std::string at = fmt::format("job file '{}', line {}", filename, line_no);
    if (line[0] == '[') {
      if (line.back() != ']')
        throw Error(fmt::format("{}: '{}': a section needs a closing ']'", at, line));
      std::string name(trim(line.substr(1, line.size() - 2)));
      if (name.empty()) throw Error(fmt::format("{}: empty section name", at));
      if (name == "global") {
        where = kGlobal;
      } else {
        where = kJob;
        jobs.push_back(Section{name, global, {}});
      }
      continue;
    }
    size_t eq = line.find('=');
    RawOption o{std::string(trim(line.substr(0, eq))),
                eq == std::string_view::npos ? std::string()
                                             : std::string(trim(line.substr(eq + 1))),
                at};
    // Check it now, so the message names this line.
    JobOptions scratch;
    apply_raw(scratch, o);
    if (where == kNone) {
      throw Error(fmt::format("{}: '{}' is outside any section ([global] or [JOBNAME])",
                              at, line));
    }
    (where == kGlobal ? global : jobs.back().own).push_back(std::move(o));
  }
  if (jobs.empty()) {
    throw Error(
        fmt::format("job file '{}' defines no jobs (add a [JOBNAME] section)", filename));
  }
  std::vector<JobOptions> out;
  for (const Section& s : jobs)
    out.push_back(build_job(s.name, s.global, s.own, overrides));
  return out;
}

std::vector<JobOptions> aio_stress_stages(const JobOptions& base) {
  auto given = [&](std::string_view k) {
    return std::any_of(base.given.begin(), base.given.end(),
                       [&](const KV& kv) { return kv.first == k; });
  };
  std::vector<JobOptions> out;
  const std::pair<RwMode, const char*> stages[] = {{RwMode::kWrite, "write"},
                                                   {RwMode::kRead, "read"},
                                                   {RwMode::kRandWrite, "random write"},
                                                   {RwMode::kRandRead, "random read"}};
  for (const auto& [mode, name] : stages) {
    JobOptions j = base;
    j.name = name;
    j.rw = mode;
    if (!given("bs") && !given("bssplit")) j.bs[kDirRead] = j.bs[kDirWrite] = 64 * 1024;
    if (!given("iodepth")) j.iodepth = 64;
    // The write stages stamp blocks; the read stages check them: no
    // separate read-back pass.
    j.do_verify = false;
    j.stonewall = true;
    set_given(j, "rw", rw_name(mode));
    validate_job(j);
    out.push_back(std::move(j));
  }
  return out;
}

BenchConfig parse_bench_args(std::span<const std::string> args) {
  BenchConfig cfg;
  std::vector<std::string> files;
  std::vector<RawOption> global;  // job options before the first --name
  std::vector<std::pair<std::string, std::vector<RawOption>>> cli_jobs;
  bool any_job_option = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.size() < 2 || a[0] != '-') {
      files.push_back(a);
      continue;
    }
    std::string_view body = std::string_view(a).substr(a.starts_with("--") ? 2 : 1);
    size_t eq = body.find('=');
    std::string key = lower(body.substr(0, eq));
    std::replace(key.begin(), key.end(), '_', '-');
    bool has_value = eq != std::string_view::npos;
    std::string value = has_value ? std::string(body.substr(eq + 1)) : std::string();
    auto take_next = [&](bool needed) {
      if (!has_value && i + 1 < args.size() && !args[i + 1].starts_with("--")) {
        value = args[++i];
        has_value = true;
      }
      if (needed && !has_value)
        throw Error(fmt::format("option '--{}' needs a value", key));
    };
    if (key == "output-format") {
      take_next(true);
      cfg.formats = 0;
      for (std::string_view f : split(value, ',')) {
        std::string l = lower(trim(f));
        if (l == "normal")
          cfg.formats |= static_cast<unsigned>(OutputFormat::kNormal);
        else if (l == "json" || l == "json+")
          cfg.formats |= static_cast<unsigned>(OutputFormat::kJson);
        else
          throw Error(
              fmt::format("option '--output-format': bad value '{}': expected normal, "
                          "json or normal,json",
                          f));
      }
    } else if (key == "output") {
      take_next(true);
      cfg.output_file = value;
    } else if (key == "eta") {
      take_next(true);
      std::string l = lower(value);
      if (l == "auto")
        cfg.eta = Eta::kAuto;
      else if (l == "always")
        cfg.eta = Eta::kAlways;
      else if (l == "never")
        cfg.eta = Eta::kNever;
      else
        throw Error(fmt::format(
            "option '--eta': bad value '{}': expected auto, always or never", value));
    } else if (key == "stages") {
      if (has_value && !parse_flag("stages", value)) continue;
      cfg.stages = true;
    } else if (key == "preset") {
      take_next(true);
      if (lower(value) != "aio-stress") {
        throw Error(fmt::format(
            "option '--preset': unknown preset '{}' (known: aio-stress)", value));
      }
      cfg.stages = true;
    } else {
      std::string jkey = key;
      std::replace(jkey.begin(), jkey.end(), '-', '_');
      const Def* d = find_def(jkey);
      if (d == nullptr) {
        throw Error(
            fmt::format("unknown option '{}'{}; 'blkstack bench --help' lists them", a,
                        suggestion(jkey)));
      }
      if (!is_flag(*d)) take_next(true);
      any_job_option = true;
      RawOption o{jkey, value, ""};
      JobOptions scratch;
      apply_raw(scratch, o);  // fail early, naming the option
      if (jkey == "name") {
        cli_jobs.emplace_back(value, std::vector<RawOption>{});
      } else {
        (cli_jobs.empty() ? global : cli_jobs.back().second).push_back(std::move(o));
      }
    }
  }

  if (cfg.stages) {
    if (!files.empty())
      throw Error("--stages runs its own four jobs: give job options, not a job file");
    if (cli_jobs.size() > 1)
      throw Error("--stages takes the options of one job (at most one --name)");
    std::vector<RawOption> own =
        cli_jobs.empty() ? std::vector<RawOption>{} : cli_jobs[0].second;
    JobOptions base =
        build_job(cli_jobs.empty() ? "stages" : cli_jobs[0].first, global, own, {});
    cfg.jobs = aio_stress_stages(base);
    return cfg;
  }
  std::vector<KV> overrides;
  for (const RawOption& o : global) overrides.emplace_back(o.key, o.value);
  for (const std::string& f : files) {
    auto jobs = parse_job_file(read_file(f), f, overrides);
    for (auto& j : jobs) cfg.jobs.push_back(std::move(j));
  }
  for (auto& [name, own] : cli_jobs) cfg.jobs.push_back(build_job(name, global, own, {}));
  if (cfg.jobs.empty()) {
    if (!any_job_option) {
      throw Error(
          "no jobs: give job options (e.g. --name=job1 --filename=null:1G --rw=randread "
          "--bs=4k --iodepth=32 --runtime=10 --time_based), a job file, or --stages");
    }
    cfg.jobs.push_back(build_job("job1", global, {}, {}));
  }
  return cfg;
}

}  // namespace blkstack::bench
