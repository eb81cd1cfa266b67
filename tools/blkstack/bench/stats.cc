#include "stats.h"

#include <algorithm>

namespace blkstack::bench {

void DirStats::merge(const DirStats& o) {
  ios += o.ios;
  bytes += o.bytes;
  short_ios += o.short_ios;
  errors += o.errors;
  slat.merge(o.slat);
  clat.merge(o.clat);
  lat.merge(o.lat);
  slat_hist.merge(o.slat_hist);
  clat_hist.merge(o.clat_hist);
  lat_hist.merge(o.lat_hist);
}

uint64_t VerifyStats::failed() const {
  uint64_t n = 0;
  for (uint64_t f : failures) n += f;
  return n;
}

void VerifyStats::record(const VerifyResult& r) {
  ++failures[static_cast<size_t>(r.kind)];
  if (first.size() < kKeep) first.push_back(r);
}

void VerifyStats::merge(const VerifyStats& o) {
  checked += o.checked;
  readback_blocks += o.readback_blocks;
  readback_ns = std::max(readback_ns, o.readback_ns);
  for (size_t i = 0; i < failures.size(); ++i) failures[i] += o.failures[i];
  for (const VerifyResult& r : o.first) {
    if (first.size() < kKeep) first.push_back(r);
  }
}

void ThreadResult::merge(const ThreadResult& o) {
  for (int d = 0; d < kDirs; ++d) dir[d].merge(o.dir[d]);
  sync_ios += o.sync_ios;
  sync_lat.merge(o.sync_lat);
  verify.merge(o.verify);
  runtime_ns = std::max(runtime_ns, o.runtime_ns);
  usr_ns += o.usr_ns;
  sys_ns += o.sys_ns;
  ctx_switches += o.ctx_switches;
  minflt += o.minflt;
  majflt += o.majflt;
  for (int i = 0; i < kDepthBuckets; ++i) depth[i] += o.depth[i];
  if (error == 0 && o.error != 0) {
    error = o.error;
    error_message = o.error_message;
  }
}

int RunResult::exit_code() const {
  for (const JobResult& j : jobs) {
    if (j.sum.error != 0 || j.sum.verify.failed() != 0) return 1;
  }
  return 0;
}

}  // namespace blkstack::bench
