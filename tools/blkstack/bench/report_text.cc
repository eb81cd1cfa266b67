// The normal (text) report, laid out as fio's.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <map>

#include "blkstack/device_spec.h"
#include "report.h"

namespace blkstack::bench {
namespace {

constexpr const char* kDirName[kDirs] = {"read", "write"};
constexpr const char* kDirUpper[kDirs] = {"READ", "WRITE"};

bool dir_used(const JobOptions& j, int d) {
  return d == kDirRead ? rw_reads(j.rw) : rw_writes(j.rw);
}

std::string bs_range(const JobOptions& j, int d) {
  uint32_t lo = j.bs[d], hi = j.bs[d];
  if (!j.bssplit[d].empty()) {
    lo = UINT32_MAX;
    hi = 0;
    for (const BsSplit& s : j.bssplit[d]) {
      lo = std::min(lo, s.bs);
      hi = std::max(hi, s.bs);
    }
  }
  return fmt::format("{}B-{}B", lo, hi);
}

double per_sec(uint64_t v, uint64_t ns) {
  return ns ? static_cast<double>(v) * 1e9 / static_cast<double>(ns) : 0.0;
}

// fio's show_lat: nsec, or usec/msec when the values are large enough.
void lat_line(std::string& out, std::string_view name, const LatencyStat& s) {
  if (s.count() == 0) return;
  double min = static_cast<double>(s.min()), max = static_cast<double>(s.max());
  double mean = s.mean(), dev = s.stdev();
  const char* base = "nsec";
  double div = 1;
  if (min > 2'000'000 && max > 99'999'999 && dev > 1'000'000) {
    base = "msec";
    div = 1e6;
  } else if (min > 2000 && max > 99'999 && dev > 1000) {
    base = "usec";
    div = 1e3;
  }
  out +=
      fmt::format("    {} ({}): min={}, max={}, avg={:.2f}, stdev={:.2f}\n", name, base,
                  num2str(min / div, 6), num2str(max / div, 6), mean / div, dev / div);
}

void percentile_lines(std::string& out, std::string_view name, const LatencyHistogram& h,
                      const LatencyStat& s, std::span<const double> list) {
  if (s.count() == 0 || list.empty()) return;
  std::vector<uint64_t> v = h.percentiles(list, s.min(), s.max());
  const uint64_t minv = *std::min_element(v.begin(), v.end());
  const uint64_t maxv = *std::max_element(v.begin(), v.end());
  int scale = 0;
  const char* unit = "nsec";
  if (minv > 2'000'000 && maxv > 99'999'999) {
    scale = 2;
    unit = "msec";
  } else if (minv > 2000 && maxv > 99'999) {
    scale = 1;
    unit = "usec";
  }
  for (uint64_t& x : v) {
    for (int i = 0; i < scale; ++i) x = (x + 999) / 1000;
  }
  const uint64_t top = *std::max_element(v.begin(), v.end());
  const int width = std::max(
      5, static_cast<int>(std::log10(std::max<double>(1, static_cast<double>(top)))) + 1);
  out += fmt::format("    {} percentiles ({}):\n     |", name, unit);
  for (size_t j = 0; j < v.size(); ++j) {
    if (j != 0 && j % 4 == 0) out += "     |";
    const bool last = j + 1 == v.size();
    out += fmt::format(" {:5.2f}th=[{:>{}}]{}", list[j], v[j], width, last ? '\n' : ',');
    if (!last && j % 4 == 3) out += '\n';
  }
}

struct SampleStats {
  double min = 0, max = 0, mean = 0, dev = 0;
  size_t n = 0;
};

SampleStats sample_stats(const std::vector<double>& xs) {
  SampleStats s;
  s.n = xs.size();
  if (xs.empty()) return s;
  s.min = *std::min_element(xs.begin(), xs.end());
  s.max = *std::max_element(xs.begin(), xs.end());
  double sum = 0;
  for (double x : xs) sum += x;
  s.mean = sum / static_cast<double>(xs.size());
  if (xs.size() > 1) {
    double sq = 0;
    for (double x : xs) sq += (x - s.mean) * (x - s.mean);
    s.dev = std::sqrt(sq / static_cast<double>(xs.size() - 1));
  }
  return s;
}

void dir_block(std::string& out, const JobResult& j, int d, double group_bw) {
  const DirStats& s = j.sum.dir[d];
  const double bw = per_sec(s.bytes, j.runtime_ns);
  out += fmt::format("  {}: IOPS={}, BW={}/s ({}/s)({}/{}msec)\n", kDirName[d],
                     num2str(per_sec(s.ios, j.runtime_ns)), bytes2str(bw, true),
                     bytes2str(bw, false), bytes2str(static_cast<double>(s.bytes), true),
                     j.runtime_ns / 1'000'000);
  lat_line(out, "slat", s.slat);
  lat_line(out, "clat", s.clat);
  lat_line(out, " lat", s.lat);
  const auto list = j.job.percentile_list.empty()
                        ? default_percentiles()
                        : std::span<const double>(j.job.percentile_list);
  if (j.job.slat_percentiles) percentile_lines(out, "slat", s.slat_hist, s.slat, list);
  if (j.job.clat_percentiles) percentile_lines(out, "clat", s.clat_hist, s.clat, list);
  if (j.job.lat_percentiles) percentile_lines(out, " lat", s.lat_hist, s.lat, list);
  const SampleStats b = sample_stats(j.bw_samples[d]);
  if (b.n > 0) {
    // fio's unit: KiB/s, or MiB/s when the numbers get large.
    double div = 1024;
    const char* unit = "KiB/s";
    if (b.max >= 100000.0 * 1024 * 1024) {
      div = 1024.0 * 1024 * 1024;
      unit = "GiB/s";
    } else if (b.max >= 10000.0 * 1024) {
      div = 1024.0 * 1024;
      unit = "MiB/s";
    }
    const double per = group_bw > 0 ? 100.0 * b.mean / group_bw : 100.0;
    out += fmt::format(
        "   bw ({:>7}): min={:>5.0f}, max={:>5.0f}, per={:.2f}%, avg={:.2f}, "
        "stdev={:.2f}, samples={}\n",
        unit, b.min / div, b.max / div, std::min(per, 100.0), b.mean / div, b.dev / div,
        b.n);
    const SampleStats io = sample_stats(j.iops_samples[d]);
    out += fmt::format(
        "   iops        : min={:.0f}, max={:.0f}, avg={:.2f}, stdev={:.2f}, samples={}\n",
        io.min, io.max, io.mean, io.dev, io.n);
  }
  if (s.clat.count() > 0) {
    out += "    clat histogram (aio-stress style, I/Os per power-of-two bucket):\n";
    out += pow2_histogram(s.clat_hist, "      ", true);
  }
}

void lat_distribution(std::string& out, const JobResult& j) {
  LatencyHistogram h;
  for (int d = 0; d < kDirs; ++d) h.merge(j.sum.dir[d].lat_hist);
  const uint64_t total = h.total();
  if (total == 0) return;
  const auto bounds = fio_lat_bounds_ns();
  struct Line {
    const char* unit;
    double div;
    std::vector<std::string> items;
  };
  Line lines[3] = {{"nsec", 1, {}}, {"usec", 1e3, {}}, {"msec", 1e6, {}}};
  uint64_t prev_below = 0;
  for (size_t i = 0; i <= bounds.size(); ++i) {
    const uint64_t below = i < bounds.size() ? h.count_below(bounds[i]) : total;
    const uint64_t n = below - prev_below;
    prev_below = below;
    if (n == 0) continue;
    const double pct =
        std::max(0.01, 100.0 * static_cast<double>(n) / static_cast<double>(total));
    const uint64_t b = i < bounds.size() ? bounds[i] : bounds.back();
    const int li = b <= 1000 ? 0 : b <= 1'000'000 ? 1 : 2;
    const std::string label =
        i < bounds.size()
            ? fmt::format("{}",
                          static_cast<uint64_t>(static_cast<double>(b) / lines[li].div))
            : fmt::format(">={}", static_cast<uint64_t>(static_cast<double>(b) / 1e6));
    lines[li].items.push_back(fmt::format("{}={:.2f}%", label, pct));
  }
  for (const Line& l : lines) {
    for (size_t i = 0; i < l.items.size(); i += 5) {
      std::string row;
      for (size_t k = i; k < std::min(l.items.size(), i + 5); ++k) {
        if (!row.empty()) row += ", ";
        row += l.items[k];
      }
      out += fmt::format("  lat ({})   : {}\n", l.unit, row);
    }
  }
}

std::string pct_list(const std::array<uint64_t, kDepthBuckets>& depth) {
  static constexpr const char* kLabels[] = {"1", "2", "4", "8", "16", "32", ">=64"};
  uint64_t total = 0;
  for (uint64_t c : depth) total += c;
  std::string out;
  for (int i = 0; i < kDepthBuckets; ++i) {
    if (i) out += ", ";
    out += fmt::format(
        "{}={:.1f}%", kLabels[i],
        total ? 100.0 * static_cast<double>(depth[i]) / static_cast<double>(total) : 0.0);
  }
  return out;
}

void job_block(std::string& out, const JobResult& j,
               const std::map<unsigned, double> (&group_bw)[kDirs]) {
  const ThreadResult& s = j.sum;
  std::string err = s.error ? fmt::format("{} ({})", s.error, s.error_message) : "0";
  out += fmt::format("{}: (groupid={}, jobs={}): err= {}: {} ({}), region {}+{}\n",
                     j.job.name, j.group, j.threads, err, j.disk_name, j.job.filename,
                     j.region_start, j.region_len);
  if (!j.job.description.empty())
    out += fmt::format("  Description  : [{}]\n", j.job.description);
  for (int d = 0; d < kDirs; ++d) {
    if (dir_used(j.job, d) &&
        (s.dir[d].ios > 0 || s.dir[d].errors > 0 || j.runtime_ns > 0)) {
      dir_block(out, j, d, group_bw[d].count(j.group) ? group_bw[d].at(j.group) : 0);
    }
  }
  if (s.sync_ios > 0) {
    out += "  fsync/fdatasync/sync_file_range:\n";
    std::string tmp;
    lat_line(tmp, "sync", s.sync_lat);
    out += tmp;
  }
  lat_distribution(out, j);
  const double wall = static_cast<double>(j.elapsed_ns) * j.threads;
  out +=
      fmt::format("  cpu          : usr={:.2f}%, sys={:.2f}%, ctx={}, majf={}, minf={}\n",
                  wall > 0 ? 100.0 * static_cast<double>(s.usr_ns) / wall : 0.0,
                  wall > 0 ? 100.0 * static_cast<double>(s.sys_ns) / wall : 0.0,
                  s.ctx_switches, s.majflt, s.minflt);
  out += fmt::format("  IO depths    : {}\n", pct_list(s.depth));
  out += fmt::format(
      "     issued rwts: total={},{},0,{} short={},{},0,0 dropped=0,0,0,0\n",
      s.dir[0].ios, s.dir[1].ios, s.sync_ios, s.dir[0].short_ios, s.dir[1].short_ios);
  if (j.job.verify != VerifyAlgo::kNone) {
    const VerifyStats& v = s.verify;
    std::string rb =
        v.readback_blocks
            ? fmt::format(", {} of them read back in {:.2f}s", v.readback_blocks,
                          static_cast<double>(v.readback_ns) * 1e-9)
            : "";
    out += fmt::format("  verify       : {}, {}-byte blocks: {} checked{}, {} failed\n",
                       verify_algo_name(j.job.verify), j.job.verify_block(), v.checked,
                       rb, v.failed());
    if (v.failed() > 0) {
      std::string kinds;
      for (int k = 1; k < kVerifyFailureKinds; ++k) {
        if (v.failures[k] == 0) continue;
        if (!kinds.empty()) kinds += ", ";
        kinds += fmt::format("{}={}", verify_failure_name(static_cast<VerifyFailure>(k)),
                             v.failures[k]);
      }
      out += fmt::format("     failures  : {}\n", kinds);
      for (const VerifyResult& r : v.first) out += fmt::format("       {}\n", r.message);
      if (v.failed() > v.first.size())
        out += fmt::format("       ... and {} more\n", v.failed() - v.first.size());
    }
  }
  out += '\n';
}

void group_lines(std::string& out, const RunResult& run, unsigned g) {
  out += fmt::format("Run status group {} (all jobs):\n", g);
  for (int d = 0; d < kDirs; ++d) {
    uint64_t bytes = 0, rt_min = UINT64_MAX, rt_max = 0, run_max = 0;
    double bw_min = 1e300, bw_max = 0;
    bool any = false;
    for (const JobResult& j : run.jobs) {
      if (j.group != g || !dir_used(j.job, d)) continue;
      any = true;
      const double bw = per_sec(j.sum.dir[d].bytes, j.runtime_ns);
      bytes += j.sum.dir[d].bytes;
      bw_min = std::min(bw_min, bw);
      bw_max = std::max(bw_max, bw);
      rt_min = std::min(rt_min, j.runtime_ns);
      rt_max = std::max(rt_max, j.runtime_ns);
      run_max = std::max(run_max, j.runtime_ns);
    }
    if (!any) continue;
    const double bw = per_sec(bytes, run_max);
    out += fmt::format(
        "{:>7}: bw={}/s ({}/s), {}/s-{}/s ({}/s-{}/s), io={} ({}), run={}-{}msec\n",
        kDirUpper[d], bytes2str(bw, true), bytes2str(bw, false), bytes2str(bw_min, true),
        bytes2str(bw_max, true), bytes2str(bw_min, false), bytes2str(bw_max, false),
        bytes2str(static_cast<double>(bytes), true),
        bytes2str(static_cast<double>(bytes), false), rt_min / 1'000'000,
        rt_max / 1'000'000);
  }
}

// aio-stress's per-stage lines: MB/s and MB in MiB, latencies in ms.
void stage_lines(std::string& out, const RunResult& run) {
  if (run.jobs.empty()) return;
  const JobResult& f = run.jobs.front();
  out += fmt::format(
      "\naio-stress stages: file size {:.2f}MB, record size {}KB, depth {}, threads {}, "
      "verification {}\n",
      static_cast<double>(f.region_len) / (1 << 20), f.job.max_bs() / 1024, f.job.iodepth,
      f.job.numjobs, f.job.verify != VerifyAlgo::kNone ? "on" : "off");
  auto ms_line = [&](std::string_view name, const LatencyStat& s,
                     const LatencyHistogram& h) {
    out += fmt::format("{} min {:.2f} avg {:.2f} max {:.2f} (ms)\n", name,
                       static_cast<double>(s.min()) / 1e6, s.mean() / 1e6,
                       static_cast<double>(s.max()) / 1e6);
    out += pow2_histogram(h, "\t", false);
  };
  for (const JobResult& j : run.jobs) {
    const int d = rw_writes(j.job.rw) ? kDirWrite : kDirRead;
    const DirStats& s = j.sum.dir[d];
    const double mb = static_cast<double>(s.bytes) / (1 << 20);
    const double secs = static_cast<double>(j.runtime_ns) * 1e-9;
    out += fmt::format("{} on {} ({:.2f} MB/s) {:.2f} MB in {:.2f}s\n", j.job.name,
                       j.disk_name, secs > 0 ? mb / secs : 0.0, mb, secs);
    ms_line("latency", s.slat, s.slat_hist);
    ms_line("completion latency", s.clat, s.clat_hist);
    if (j.sum.error)
      out += fmt::format("1 errors on oper, last {}\n", j.sum.error_message);
    if (j.sum.verify.failed())
      out += fmt::format("{} verify failures\n", j.sum.verify.failed());
  }
}

}  // namespace

std::string format_header(const BenchConfig& cfg, std::string_view version) {
  std::string out;
  unsigned group = 0, threads = 0;
  for (size_t i = 0; i < cfg.jobs.size(); ++i) {
    const JobOptions& j = cfg.jobs[i];
    if (j.stonewall && i > 0) ++group;
    threads += j.numjobs;
    out += fmt::format(
        "{}: (g={}): rw={}, bs=(R) {}, (W) {}, ioengine=blkstack, iodepth={}\n", j.name,
        group, rw_name(j.rw), bs_range(j, kDirRead), bs_range(j, kDirWrite), j.iodepth);
  }
  out += fmt::format("blkstack bench {}\nStarting {} thread{}\n", version, threads,
                     threads == 1 ? "" : "s");
  return out;
}

std::string format_normal(const RunResult& run, const BenchConfig& cfg) {
  std::string out;
  // Each group's bandwidth, for the bw "per=" share.
  std::map<unsigned, double> group_bw[kDirs];
  for (const JobResult& j : run.jobs) {
    for (int d = 0; d < kDirs; ++d) {
      const auto s = sample_stats(j.bw_samples[d]);
      group_bw[d][j.group] += s.mean;
    }
  }
  out += '\n';
  for (const JobResult& j : run.jobs) job_block(out, j, group_bw);
  unsigned last_group = 0;
  for (const JobResult& j : run.jobs) last_group = std::max(last_group, j.group);
  for (unsigned g = 0; g <= last_group; ++g) {
    group_lines(out, run, g);
    if (g != last_group) out += '\n';
  }
  if (run.jobs.size() > 1) {
    const JobResult t = total_of(run);
    std::string parts;
    for (int d = 0; d < kDirs; ++d) {
      if (t.sum.dir[d].ios == 0) continue;
      const double bw = per_sec(t.sum.dir[d].bytes, t.runtime_ns);
      if (!parts.empty()) parts += "; ";
      parts += fmt::format("{}: IOPS={}, BW={}/s ({}/s)", kDirName[d],
                           num2str(per_sec(t.sum.dir[d].ios, t.runtime_ns)),
                           bytes2str(bw, true), bytes2str(bw, false));
    }
    out +=
        fmt::format("\nAll jobs ({} jobs, {} threads, {:.2f}s measured): {}\n",
                    run.jobs.size(), t.threads, static_cast<double>(t.runtime_ns) * 1e-9,
                    parts.empty() ? "no I/O" : parts);
  }
  if (!run.disks.empty()) {
    out += "\nDisk stats (read/write):\n";
    for (const DiskUtil& u : run.disks) {
      const double util =
          u.elapsed_ms ? std::min(100.0, 100.0 * static_cast<double>(u.io_ticks_ms) /
                                             static_cast<double>(u.elapsed_ms))
                       : 0;
      out += fmt::format(
          "  {}: ios={}/{}, merge={}/{}, ticks={}/{}, in_queue={}, util={:.2f}%\n",
          u.name, u.ios[0], u.ios[1], u.merges[0], u.merges[1], u.ticks_ms[0],
          u.ticks_ms[1], u.in_queue_ms, util);
    }
  }
  if (cfg.stages) stage_lines(out, run);
  if (run.interrupted)
    out += "\n(interrupted: the figures cover the time until the stop)\n";
  return out;
}

}  // namespace blkstack::bench
