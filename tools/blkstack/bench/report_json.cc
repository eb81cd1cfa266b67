// --output-format=json: fio's structure ("jobs"[], each with "read",
// "write", "trim", "sync", latencies in ns with percentiles, bw in KiB/s),
// plus blkstack's own fields: the aio-stress style histograms, verify
// results, the device and region, and a "total" entry for all jobs.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>

#include "report.h"

namespace blkstack::bench {
namespace {

using json = nlohmann::ordered_json;

double per_sec(uint64_t v, uint64_t ns) {
  return ns ? static_cast<double>(v) * 1e9 / static_cast<double>(ns) : 0.0;
}

json lat_json(const LatencyStat& s, const LatencyHistogram* h,
              std::span<const double> list) {
  json j;
  j["min"] = s.min();
  j["max"] = s.max();
  j["mean"] = s.mean();
  j["stddev"] = s.stdev();
  j["N"] = s.count();
  if (h != nullptr && s.count() > 0) {
    std::vector<uint64_t> v = h->percentiles(list, s.min(), s.max());
    json p = json::object();
    for (size_t i = 0; i < list.size(); ++i) p[fmt::format("{:.6f}", list[i])] = v[i];
    j["percentile"] = p;
  }
  return j;
}

json pow2_json(const LatencyHistogram& h) {
  json a = json::array();
  const auto counts = h.pow2_counts();
  int first = -1, last = -1;
  for (int k = 0; k < 64; ++k) {
    if (counts[k] == 0) continue;
    if (first < 0) first = k;
    last = k;
  }
  for (int k = std::max(first, 0); first >= 0 && k <= last; ++k) {
    a.push_back({{"lt_ns", std::ldexp(1.0, k)}, {"count", counts[k]}});
  }
  return a;
}

void sample_fields(json& j, const std::vector<double>& xs, const char* prefix, double div,
                   const char* dev_name, double group_total) {
  double mn = 0, mx = 0, mean = 0, dev = 0;
  if (!xs.empty()) {
    mn = *std::min_element(xs.begin(), xs.end());
    mx = *std::max_element(xs.begin(), xs.end());
    for (double x : xs) mean += x;
    mean /= static_cast<double>(xs.size());
    if (xs.size() > 1) {
      for (double x : xs) dev += (x - mean) * (x - mean);
      dev = std::sqrt(dev / static_cast<double>(xs.size() - 1));
    }
  }
  j[fmt::format("{}_min", prefix)] = static_cast<uint64_t>(mn / div);
  j[fmt::format("{}_max", prefix)] = static_cast<uint64_t>(mx / div);
  if (group_total >= 0)
    j["bw_agg"] = group_total > 0 ? std::min(100.0, 100.0 * mean / group_total) : 0.0;
  j[fmt::format("{}_mean", prefix)] = mean / div;
  j[fmt::format("{}_{}", prefix, dev_name)] = dev / div;
  j[fmt::format("{}_samples", prefix)] = xs.size();
}

json dir_json(const JobResult& r, int d, double group_bw) {
  const DirStats& s = r.sum.dir[d];
  const auto list = r.job.percentile_list.empty()
                        ? default_percentiles()
                        : std::span<const double>(r.job.percentile_list);
  json j;
  const double bw = per_sec(s.bytes, r.runtime_ns);
  j["io_bytes"] = s.bytes;
  j["io_kbytes"] = s.bytes / 1024;
  j["bw_bytes"] = static_cast<uint64_t>(bw);
  j["bw"] = static_cast<uint64_t>(bw / 1024);
  j["iops"] = per_sec(s.ios, r.runtime_ns);
  j["runtime"] = r.runtime_ns / 1'000'000;
  j["total_ios"] = s.ios;
  j["short_ios"] = s.short_ios;
  j["drop_ios"] = 0;
  j["errors"] = s.errors;
  j["slat_ns"] = lat_json(s.slat, r.job.slat_percentiles ? &s.slat_hist : nullptr, list);
  j["clat_ns"] = lat_json(s.clat, r.job.clat_percentiles ? &s.clat_hist : nullptr, list);
  j["lat_ns"] = lat_json(s.lat, r.job.lat_percentiles ? &s.lat_hist : nullptr, list);
  sample_fields(j, r.bw_samples[d], "bw", 1024, "dev", group_bw);
  sample_fields(j, r.iops_samples[d], "iops", 1, "stddev", -1);
  j["latency_histogram"] = {{"slat", pow2_json(s.slat_hist)},
                            {"clat", pow2_json(s.clat_hist)},
                            {"lat", pow2_json(s.lat_hist)}};
  return j;
}

json lat_buckets(const LatencyHistogram& h, int group) {
  // fio's latency_ns / latency_us / latency_ms: percent of I/Os per bucket.
  static constexpr uint64_t kNs[] = {2, 4, 10, 20, 50, 100, 250, 500, 750, 1000};
  static constexpr uint64_t kMs[] = {2, 4, 10, 20, 50, 100, 250, 500, 750, 1000, 2000};
  const uint64_t total = h.total();
  const double scale = group == 0 ? 1 : group == 1 ? 1e3 : 1e6;
  json j = json::object();
  const uint64_t* b = group == 2 ? kMs : kNs;
  const size_t n = group == 2 ? std::size(kMs) : std::size(kNs);
  uint64_t prev = h.count_below(group == 0 ? 0 : static_cast<uint64_t>(scale));
  for (size_t i = 0; i < n; ++i) {
    const uint64_t below =
        h.count_below(static_cast<uint64_t>(static_cast<double>(b[i]) * scale));
    j[fmt::format("{}", b[i])] =
        total ? 100.0 * static_cast<double>(below - prev) / static_cast<double>(total)
              : 0.0;
    prev = below;
  }
  if (group == 2) {
    j[">=2000"] =
        total ? 100.0 * static_cast<double>(total - prev) / static_cast<double>(total)
              : 0.0;
  }
  return j;
}

json job_json(const JobResult& r, double group_bw[kDirs], bool with_options) {
  const ThreadResult& s = r.sum;
  json j;
  j["jobname"] = r.job.name;
  j["groupid"] = r.group;
  j["error"] = s.error;
  if (s.error) j["error_message"] = s.error_message;
  j["elapsed"] =
      static_cast<uint64_t>(std::llround(static_cast<double>(r.elapsed_ns) * 1e-9));
  if (with_options) {
    json o = json::object();
    o["name"] = r.job.name;
    for (const auto& [k, v] : r.job.given) o[k] = v;
    j["job options"] = o;
    j["filename"] = r.job.filename;
    j["disk"] = r.disk_name;
    j["region"] = {{"offset", r.region_start}, {"size", r.region_len}};
  }
  j["threads"] = r.threads;
  j["read"] = dir_json(r, kDirRead, group_bw[kDirRead]);
  j["write"] = dir_json(r, kDirWrite, group_bw[kDirWrite]);
  JobResult empty;
  j["trim"] = dir_json(empty, kDirRead, 0);
  j["sync"] = {{"total_ios", s.sync_ios}, {"lat_ns", lat_json(s.sync_lat, nullptr, {})}};
  j["job_runtime"] = r.runtime_ns / 1'000'000;
  const double wall = static_cast<double>(r.elapsed_ns) * r.threads;
  j["usr_cpu"] = wall > 0 ? 100.0 * static_cast<double>(s.usr_ns) / wall : 0.0;
  j["sys_cpu"] = wall > 0 ? 100.0 * static_cast<double>(s.sys_ns) / wall : 0.0;
  j["ctx"] = s.ctx_switches;
  j["majf"] = s.majflt;
  j["minf"] = s.minflt;
  static constexpr const char* kDepth[] = {"1", "2", "4", "8", "16", "32", ">=64"};
  uint64_t dt = 0;
  for (uint64_t c : s.depth) dt += c;
  json depth = json::object();
  for (int i = 0; i < kDepthBuckets; ++i) {
    depth[kDepth[i]] =
        dt ? 100.0 * static_cast<double>(s.depth[i]) / static_cast<double>(dt) : 0.0;
  }
  j["iodepth_level"] = depth;
  LatencyHistogram lat;
  for (int d = 0; d < kDirs; ++d) lat.merge(s.dir[d].lat_hist);
  j["latency_ns"] = lat_buckets(lat, 0);
  j["latency_us"] = lat_buckets(lat, 1);
  j["latency_ms"] = lat_buckets(lat, 2);
  if (r.job.verify != VerifyAlgo::kNone || s.verify.checked > 0) {
    const VerifyStats& v = s.verify;
    json kinds = json::object();
    for (int k = 1; k < kVerifyFailureKinds; ++k) {
      kinds[std::string(verify_failure_name(static_cast<VerifyFailure>(k)))] =
          v.failures[k];
    }
    json first = json::array();
    for (const VerifyResult& f : v.first) {
      first.push_back({{"offset", f.offset},
                       {"kind", std::string(verify_failure_name(f.kind))},
                       {"message", f.message}});
    }
    j["verify"] = {{"algorithm", std::string(verify_algo_name(r.job.verify))},
                   {"block_size", r.job.verify_block()},
                   {"checked", v.checked},
                   {"read_back", v.readback_blocks},
                   {"read_back_ms", v.readback_ns / 1'000'000},
                   {"failed", v.failed()},
                   {"by_kind", kinds},
                   {"failures", first}};
  }
  return j;
}

}  // namespace

std::string format_json(const RunResult& run, const BenchConfig& cfg,
                        std::string_view version) {
  (void)cfg;
  json root;
  root["blkstack version"] = std::string(version);
  root["timestamp"] = run.start_unix_ms / 1000;
  root["timestamp_ms"] = run.start_unix_ms;
  const time_t t = static_cast<time_t>(run.start_unix_ms / 1000);
  char buf[64] = {};
  tm tmv;
  localtime_r(&t, &tmv);
  strftime(buf, sizeof buf, "%a %b %e %H:%M:%S %Y", &tmv);
  root["time"] = buf;
  // Group bandwidth, for bw_agg.
  std::map<unsigned, double> gbw[kDirs];
  for (const JobResult& j : run.jobs) {
    for (int d = 0; d < kDirs; ++d) {
      double m = 0;
      for (double x : j.bw_samples[d]) m += x;
      if (!j.bw_samples[d].empty()) m /= static_cast<double>(j.bw_samples[d].size());
      gbw[d][j.group] += m;
    }
  }
  json jobs = json::array();
  for (const JobResult& j : run.jobs) {
    double g[kDirs] = {gbw[0][j.group], gbw[1][j.group]};
    jobs.push_back(job_json(j, g, true));
  }
  root["jobs"] = jobs;
  const JobResult total = total_of(run);
  double none[kDirs] = {0, 0};
  json tj = job_json(total, none, false);
  tj["jobs"] = run.jobs.size();
  root["total"] = tj;
  json disks = json::array();
  for (const DiskUtil& u : run.disks) {
    disks.push_back(
        {{"name", u.name},
         {"read_ios", u.ios[0]},
         {"write_ios", u.ios[1]},
         {"read_merges", u.merges[0]},
         {"write_merges", u.merges[1]},
         {"read_ticks", u.ticks_ms[0]},
         {"write_ticks", u.ticks_ms[1]},
         {"in_queue", u.in_queue_ms},
         {"util", u.elapsed_ms
                      ? std::min(100.0, 100.0 * static_cast<double>(u.io_ticks_ms) /
                                            static_cast<double>(u.elapsed_ms))
                      : 0.0}});
  }
  root["disk_util"] = disks;
  if (run.interrupted) root["interrupted"] = true;
  return root.dump(2) + "\n";
}

}  // namespace blkstack::bench
