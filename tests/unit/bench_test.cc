// blkstack bench's engine: job files and option errors, the workload
// generator (offsets, the random map, zipf and pareto skew), latency
// statistics and percentiles from known latencies (down to the figures the
// reports print), verify catching each kind of corruption with the right
// message (on a buffer, and on a RAM disk damaged between a write pass and a
// read pass), and short runs of the engine on null and ram.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bench/crc32c.h"
#include "bench/engine.h"
#include "bench/job_options.h"
#include "bench/latency.h"
#include "bench/progress.h"
#include "bench/report.h"
#include "bench/runner.h"
#include "bench/verify.h"
#include "bench/workload.h"
#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/queue.h"
#include "blkstack/error.h"

namespace blkstack::bench {
namespace {

using ::testing::HasSubstr;

// The message of the Error `f` throws, or "" if it does not throw one.
template <class F>
std::string ErrorOf(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

JobOptions Job(std::initializer_list<std::pair<const char*, const char*>> opts) {
  JobOptions j;
  j.name = "t";
  for (const auto& [k, v] : opts) apply_job_option(j, k, v);
  return j;
}

BenchConfig Args(std::vector<std::string> args) { return parse_bench_args(args); }

// ---------------------------------------------------------------------------
// crc32c

TEST(BenchCrc32c, KnownVectors) {
  // RFC 3720 B.4 test vectors and the usual "123456789" check value.
  EXPECT_EQ(crc32c("123456789", 9), 0xe3069283u);
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xff), inc(32);
  std::iota(inc.begin(), inc.end(), 0);
  EXPECT_EQ(crc32c(zeros.data(), 32), 0x8a9136aau);
  EXPECT_EQ(crc32c(ones.data(), 32), 0x62a8ab43u);
  EXPECT_EQ(crc32c(inc.data(), 32), 0x46dd794eu);
}

TEST(BenchCrc32c, HardwareMatchesTableAtEveryLengthAndAlignment) {
  std::vector<uint8_t> buf(600);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(i * 131 + 7);
  for (size_t off = 0; off < 9; ++off) {
    for (size_t len = 0; len + off <= buf.size(); len += 37) {
      ASSERT_EQ(crc32c(buf.data() + off, len), crc32c_portable(0, buf.data() + off, len))
          << off << " " << len;
    }
  }
  // Extending equals one pass.
  EXPECT_EQ(crc32c_extend(crc32c(buf.data(), 100), buf.data() + 100, 500),
            crc32c(buf.data(), 600));
}

// ---------------------------------------------------------------------------
// Options and job files

TEST(BenchOptions, CommandLineJobsAndGlobals) {
  BenchConfig c =
      Args({"--filename=null:1G", "--iodepth", "8", "--name=a", "--rw=randread",
            "--bs=4k", "--name=b", "--rw=write", "--bs=64k,128k", "--time_based",
            "--runtime=2", "--output-format=json"});
  ASSERT_EQ(c.jobs.size(), 2u);
  EXPECT_EQ(c.jobs[0].name, "a");
  EXPECT_EQ(c.jobs[0].filename, "null:1G");
  EXPECT_EQ(c.jobs[0].iodepth, 8u);
  EXPECT_EQ(c.jobs[0].rw, RwMode::kRandRead);
  EXPECT_EQ(c.jobs[1].rw, RwMode::kWrite);
  EXPECT_EQ(c.jobs[1].bs[kDirRead], 64u * 1024);
  EXPECT_EQ(c.jobs[1].bs[kDirWrite], 128u * 1024);
  EXPECT_TRUE(c.jobs[1].time_based);
  EXPECT_EQ(c.jobs[1].runtime_ns, 2'000'000'000u);
  EXPECT_TRUE(c.has(OutputFormat::kJson));
  EXPECT_FALSE(c.has(OutputFormat::kNormal));
}

TEST(BenchOptions, WithoutNameOneJob) {
  BenchConfig c = Args({"--filename=ram:64M", "--rw=randrw", "--rwmixwrite=30"});
  ASSERT_EQ(c.jobs.size(), 1u);
  EXPECT_EQ(c.jobs[0].name, "job1");
  EXPECT_EQ(c.jobs[0].rwmixread, 70u);
}

TEST(BenchOptions, ValuesAndUnits) {
  JobOptions j = Job({{"runtime", "1m"},
                      {"ramp_time", "500ms"},
                      {"size", "50%"},
                      {"offset", "1g"},
                      {"bssplit", "4k/10:64k/:1m/"},
                      {"rate_iops", "1000"},
                      {"random_distribution", "pareto:0.2"},
                      {"verify", "crc32c-intel"},
                      {"percentile_list", "50:99.9"},
                      {"direct", "1"}});
  EXPECT_EQ(j.runtime_ns, 60'000'000'000u);
  EXPECT_EQ(j.ramp_ns, 500'000'000u);
  EXPECT_DOUBLE_EQ(j.size.percent, 50.0);
  EXPECT_EQ(j.size.resolve(1000), 500u);
  EXPECT_EQ(j.offset.bytes, 1u << 30);
  ASSERT_EQ(j.bssplit[kDirRead].size(), 3u);
  EXPECT_EQ(j.bssplit[kDirRead][0].percent, 10u);
  EXPECT_EQ(j.bssplit[kDirRead][1].percent + j.bssplit[kDirRead][2].percent, 90u);
  EXPECT_EQ(j.min_bs(), 4096u);
  EXPECT_EQ(j.max_bs(), 1u << 20);
  EXPECT_EQ(j.distribution, Distribution::kPareto);
  EXPECT_EQ(j.verify, VerifyAlgo::kCrc32c);
  EXPECT_EQ(j.percentile_list, (std::vector<double>{50, 99.9}));
  EXPECT_TRUE(j.direct);
}

TEST(BenchOptions, ErrorsAreClear) {
  EXPECT_THAT(ErrorOf([] {
                Job({{"bss", "4k"}});
              }),
              HasSubstr("unknown option 'bss' (did you mean 'bs'?)"));
  EXPECT_THAT(ErrorOf([] {
                Job({{"iodepht", "4"}});
              }),
              HasSubstr("did you mean 'iodepth'"));
  EXPECT_THAT(ErrorOf([] {
                Job({{"bs", "4q"}});
              }),
              HasSubstr("option 'bs': bad value '4q'"));
  EXPECT_THAT(ErrorOf([] { Job({{"bs", "1000"}}); }), HasSubstr("multiple of 512"));
  EXPECT_THAT(
      ErrorOf([] {
        Job({{"rw", "randwrit"}});
      }),
      HasSubstr("option 'rw': bad value 'randwrit': expected read, write, randread"));
  EXPECT_THAT(ErrorOf([] { Job({{"rw", "trim"}}); }), HasSubstr("not supported"));
  EXPECT_THAT(ErrorOf([] {
                Job({{"bssplit", "4k/10:8k/20"}});
              }),
              HasSubstr("adds up to 30%, expected 100%"));
  EXPECT_THAT(ErrorOf([] {
                Job({{"bssplit", "4k/60:8k/60"}});
              }),
              HasSubstr("more than 100%"));
  EXPECT_THAT(ErrorOf([] {
                Job({{"random_distribution", "zipf:1"}});
              }),
              HasSubstr("not 1.0"));
  EXPECT_THAT(ErrorOf([] {
                Job({{"random_distribution", "zipf"}});
              }),
              HasSubstr("needs a parameter"));
  EXPECT_THAT(ErrorOf([] {
                Job({{"random_distribution", "pareto:1.5"}});
              }),
              HasSubstr("between 0 and 1"));
  EXPECT_THAT(ErrorOf([] {
                Job({{"random_distribution", "gauss:2"}});
              }),
              HasSubstr("random, zipf:THETA"));
  EXPECT_THAT(ErrorOf([] { Job({{"verify", "md5"}}); }), HasSubstr("none, crc32c"));
  EXPECT_THAT(ErrorOf([] {
                Job({{"runtime", "ten"}});
              }),
              HasSubstr("option 'runtime': bad value 'ten'"));
  EXPECT_THAT(ErrorOf([] { Job({{"iodepth", "0"}}); }), HasSubstr("a number from 1 to"));
  EXPECT_THAT(ErrorOf([] { Job({{"iodepth", ""}}); }), HasSubstr("needs a value"));
  EXPECT_THAT(ErrorOf([] {
                Job({{"output_format", "json"}});
              }),
              HasSubstr("is a command-line option (--output-format)"));
  // Whole-job checks.
  EXPECT_THAT(ErrorOf([] {
                validate_job(Job({{"rw", "read"}}));
              }),
              HasSubstr("job 't': no filename"));
  EXPECT_THAT(ErrorOf([] {
                validate_job(Job({{"filename", "null:1G"}, {"time_based", ""}}));
              }),
              HasSubstr("time_based needs a runtime"));
  EXPECT_THAT(ErrorOf([] {
                validate_job(Job(
                    {{"filename", "null:1G"}, {"iodepth", "4"}, {"iodepth_batch", "8"}}));
              }),
              HasSubstr("iodepth_batch=8 is larger than iodepth=4"));
  EXPECT_THAT(
      ErrorOf([] {
        validate_job(Job(
            {{"filename", "null:1G"}, {"bssplit", "4k/50:6k/50"}, {"verify", "crc32c"}}));
      }),
      HasSubstr("block size 6144 is not a multiple of the verify block size 4096"));
  // Command line.
  EXPECT_THAT(ErrorOf([] {
                Args({"--output-format=xml", "--filename=null:1G"});
              }),
              HasSubstr("expected normal, json"));
  EXPECT_THAT(ErrorOf([] { Args({}); }), HasSubstr("no jobs"));
  EXPECT_THAT(ErrorOf([] { Args({"--rww=read"}); }),
              HasSubstr("unknown option '--rww=read' (did you mean 'rw'?)"));
  EXPECT_THAT(ErrorOf([] {
                Args({"--filename=null:1G", "--iodepth"});
              }),
              HasSubstr("'--iodepth' needs a value"));
  EXPECT_THAT(ErrorOf([] { Args({"/nonexistent/jobs.fio"}); }),
              HasSubstr("cannot read job file '/nonexistent/jobs.fio'"));
  EXPECT_THAT(ErrorOf([] { Args({"--preset=bonnie"}); }),
              HasSubstr("unknown preset 'bonnie'"));
}

TEST(BenchOptions, JobFile) {
  const char* text =
      "; a comment\n"
      "# another\n"
      "[global]\n"
      "filename=ram:64M\n"
      "bs=4k\n"
      "iodepth=16\n"
      "\n"
      "[seq-write]\n"
      "rw=write\n"
      "size=32m\n"
      "verify=xxh64\n"
      "\n"
      "[global]\n"
      "iodepth=4\n"
      "[rand-read]\n"
      "stonewall\n"
      "rw = randread\n"
      "time_based\n"
      "runtime=3\n"
      "random_distribution=zipf:0.8\n";
  auto jobs = parse_job_file(text, "t.fio");
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].name, "seq-write");
  EXPECT_EQ(jobs[0].filename, "ram:64M");
  EXPECT_EQ(jobs[0].iodepth, 16u);
  EXPECT_EQ(jobs[0].rw, RwMode::kWrite);
  EXPECT_EQ(jobs[0].size.bytes, 32u << 20);
  EXPECT_EQ(jobs[0].verify, VerifyAlgo::kXxh64);
  EXPECT_FALSE(jobs[0].stonewall);
  EXPECT_EQ(jobs[1].name, "rand-read");
  EXPECT_EQ(jobs[1].iodepth, 4u);  // the second [global] applies to later jobs only
  EXPECT_TRUE(jobs[1].stonewall);
  EXPECT_TRUE(jobs[1].time_based);
  EXPECT_EQ(jobs[1].distribution, Distribution::kZipf);
  EXPECT_DOUBLE_EQ(jobs[1].dist_param, 0.8);
  // The JSON's "job options": what was given, [global] included.
  auto given = [&](const JobOptions& j, const std::string& k) {
    for (const auto& kv : j.given) {
      if (kv.first == k) return kv.second;
    }
    return std::string("-");
  };
  EXPECT_EQ(given(jobs[1], "iodepth"), "4");
  EXPECT_EQ(given(jobs[1], "stonewall"), "1");
  // Command-line options override every job's.
  std::vector<std::pair<std::string, std::string>> over{{"filename", "null:1G"},
                                                        {"iodepth", "2"}};
  jobs = parse_job_file(text, "t.fio", over);
  EXPECT_EQ(jobs[0].filename, "null:1G");
  EXPECT_EQ(jobs[1].iodepth, 2u);
}

TEST(BenchOptions, JobFileErrorsNameTheLine) {
  EXPECT_THAT(ErrorOf([] { parse_job_file("[a]\nfilename=null:1G\nbs=4z\n", "x.fio"); }),
              HasSubstr("job file 'x.fio', line 3: option 'bs': bad value '4z'"));
  EXPECT_THAT(ErrorOf([] { parse_job_file("[a]\nfilename=null:1G\nfoo=1\n", "x.fio"); }),
              HasSubstr("line 3: unknown option 'foo'"));
  EXPECT_THAT(ErrorOf([] { parse_job_file("bs=4k\n[a]\n", "x.fio"); }),
              HasSubstr("line 1: 'bs=4k' is outside any section"));
  EXPECT_THAT(ErrorOf([] { parse_job_file("[a\n", "x.fio"); }), HasSubstr("line 1"));
  EXPECT_THAT(ErrorOf([] { parse_job_file("[global]\nbs=4k\n", "x.fio"); }),
              HasSubstr("defines no jobs"));
  EXPECT_THAT(ErrorOf([] { parse_job_file("[a]\nrw=read\n", "x.fio"); }),
              HasSubstr("job 'a': no filename"));
}

TEST(BenchOptions, StagesPreset) {
  BenchConfig c =
      Args({"--stages", "--filename=ram:64M", "--size=16m", "--verify=crc32c"});
  ASSERT_EQ(c.jobs.size(), 4u);
  const RwMode want[] = {RwMode::kWrite, RwMode::kRead, RwMode::kRandWrite,
                         RwMode::kRandRead};
  const char* names[] = {"write", "read", "random write", "random read"};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(c.jobs[i].rw, want[i]);
    EXPECT_EQ(c.jobs[i].name, names[i]);
    EXPECT_TRUE(c.jobs[i].stonewall);
    EXPECT_EQ(c.jobs[i].bs[kDirWrite], 64u * 1024);  // aio-stress's defaults
    EXPECT_EQ(c.jobs[i].iodepth, 64u);
    EXPECT_EQ(c.jobs[i].verify, VerifyAlgo::kCrc32c);
  }
  EXPECT_TRUE(c.stages);
  c = Args({"--preset=aio-stress", "--filename=ram:64M", "--bs=16k", "--iodepth=8"});
  EXPECT_EQ(c.jobs[0].bs[kDirWrite], 16u * 1024);
  EXPECT_EQ(c.jobs[3].iodepth, 8u);
  EXPECT_THAT(ErrorOf([] { Args({"--stages", "x.fio"}); }), HasSubstr("not a job file"));
}

// ---------------------------------------------------------------------------
// Workload

TEST(BenchWorkload, PermutationIsABijection) {
  for (uint64_t n : {1ull, 2ull, 3ull, 17ull, 1000ull, 4096ull, 100003ull}) {
    Permutation p(n, 42 + n);
    std::vector<bool> seen(n);
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t v = p(i);
      ASSERT_LT(v, n);
      ASSERT_FALSE(seen[v]) << "n=" << n << " i=" << i;
      seen[v] = true;
    }
  }
}

TEST(BenchWorkload, SequentialWrapsPerDirection) {
  JobOptions j = Job({{"rw", "readwrite"}, {"bs", "4k"}});
  OffsetGenerator g(j, 1 << 20, 16384, 4096, 1);
  EXPECT_EQ(g.next(kDirRead, 4096), 1u << 20);
  EXPECT_EQ(g.next(kDirRead, 4096), (1u << 20) + 4096);
  EXPECT_EQ(g.next(kDirWrite, 8192), 1u << 20);  // each direction has its own position
  EXPECT_EQ(g.next(kDirRead, 8192), (1u << 20) + 8192);
  EXPECT_EQ(g.next(kDirRead, 4096), 1u << 20);  // wrapped
}

TEST(BenchWorkload, RandomMapVisitsEveryBlockOncePerPass) {
  JobOptions j = Job({{"rw", "randread"}, {"bs", "4k"}});
  const uint64_t blocks = 1000;
  OffsetGenerator g(j, 8192, blocks * 4096, 4096, 7);
  for (int pass = 0; pass < 3; ++pass) {
    std::set<uint64_t> seen;
    for (uint64_t i = 0; i < blocks; ++i) {
      const uint64_t off = g.next(kDirRead, 4096);
      ASSERT_EQ((off - 8192) % 4096, 0u);
      ASSERT_GE(off, 8192u);
      ASSERT_LT(off, 8192 + blocks * 4096);
      seen.insert(off);
    }
    EXPECT_EQ(seen.size(), blocks) << "pass " << pass;
  }
}

TEST(BenchWorkload, LargeIoNearTheEndStaysInside) {
  JobOptions j =
      Job({{"rw", "randread"}, {"bssplit", "4k/50:64k/50"}, {"norandommap", "1"}});
  OffsetGenerator g(j, 0, 1 << 20, 4096, 3);
  SizePicker sizes(j, 3);
  std::map<uint32_t, int> count;
  for (int i = 0; i < 20000; ++i) {
    const uint32_t len = sizes.next(kDirRead);
    ++count[len];
    const uint64_t off = g.next(kDirRead, len);
    ASSERT_LE(off + len, 1u << 20);
    ASSERT_EQ(off % 4096, 0u);
  }
  EXPECT_NEAR(count[4096], 10000, 500);
  EXPECT_NEAR(count[65536], 10000, 500);
}

TEST(BenchWorkload, RwMix) {
  JobOptions j = Job({{"rw", "randrw"}, {"rwmixread", "70"}});
  SizePicker p(j, 9);
  int reads = 0;
  for (int i = 0; i < 100000; ++i) reads += p.next_dir() == kDirRead;
  EXPECT_NEAR(reads, 70000, 1000);
  SizePicker w(Job({{"rw", "randwrite"}}), 9);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(w.next_dir(), kDirWrite);
}

// Access counts per block, hottest first.
std::vector<uint64_t> SortedCounts(OffsetGenerator& g, uint64_t draws) {
  std::vector<uint64_t> counts(g.blocks());
  for (uint64_t i = 0; i < draws; ++i) ++counts[g.next_block()];
  std::sort(counts.rbegin(), counts.rend());
  return counts;
}

double TopShare(const std::vector<uint64_t>& sorted, double fraction) {
  const size_t k = static_cast<size_t>(static_cast<double>(sorted.size()) * fraction);
  const double top = static_cast<double>(
      std::accumulate(sorted.begin(), sorted.begin() + k, uint64_t{0}));
  return top /
         static_cast<double>(std::accumulate(sorted.begin(), sorted.end(), uint64_t{0}));
}

TEST(BenchWorkload, UniformIsFlat) {
  OffsetGenerator g(Job({{"rw", "randread"}, {"norandommap", "1"}}), 0, 10000ull * 4096,
                    4096, 5);
  auto counts = SortedCounts(g, 1'000'000);
  EXPECT_NEAR(TopShare(counts, 0.2), 0.2, 0.05);
}

TEST(BenchWorkload, ParetoIsEightyTwenty) {
  // pareto:0.2: rank = (n-1) * u^(log 0.2 / log 0.8), so P(rank < n/5) = 0.8.
  OffsetGenerator g(Job({{"rw", "randread"}, {"random_distribution", "pareto:0.2"}}), 0,
                    10000ull * 4096, 4096, 5);
  auto counts = SortedCounts(g, 1'000'000);
  EXPECT_NEAR(TopShare(counts, 0.2), 0.8, 0.02);
  // Hot blocks are scattered, not all at the start of the region.
  std::vector<uint64_t> by_block(g.blocks());
  for (int i = 0; i < 200000; ++i) ++by_block[g.next_block()];
  uint64_t first_fifth =
      std::accumulate(by_block.begin(), by_block.begin() + 2000, uint64_t{0});
  EXPECT_LT(first_fifth, 200000u * 0.5);
}

TEST(BenchWorkload, ZipfHasTheRightHead) {
  // fio's zipf: rank 0 with probability exactly 1/zeta(n), rank 1 with
  // 2^-theta/zeta(n).
  for (double theta : {0.8, 1.2}) {
    const uint64_t n = 10000;
    OffsetGenerator g(
        Job({{"rw", "randread"},
             {"random_distribution", theta == 0.8 ? "zipf:0.8" : "zipf:1.2"}}),
        0, n * 4096, 4096, 11);
    const uint64_t draws = 1'000'000;
    auto counts = SortedCounts(g, draws);
    const double zetan = Zipf::zeta(n, theta);
    EXPECT_NEAR(static_cast<double>(counts[0]) / draws, 1.0 / zetan, 0.01) << theta;
    EXPECT_NEAR(static_cast<double>(counts[1]) / draws, std::pow(2.0, -theta) / zetan,
                0.01)
        << theta;
    EXPECT_GT(TopShare(counts, 0.01), 0.1) << theta;  // heavily skewed
    EXPECT_GT(counts[0], counts[100] * 10) << theta;
  }
  // zeta beyond the exactly summed terms (Euler-Maclaurin) agrees with the sum.
  double tail = 0;
  for (uint64_t i = 10'000'001; i <= 10'001'000; ++i)
    tail += std::pow(static_cast<double>(i), -1.2);
  EXPECT_NEAR(Zipf::zeta(10'001'000, 1.2), Zipf::zeta(10'000'000, 1.2) + tail, 1e-9);
}

// ---------------------------------------------------------------------------
// Latency statistics

TEST(BenchLatency, StatIsExact) {
  LatencyStat s;
  for (uint64_t v : {2, 4, 4, 4, 5, 5, 7, 9}) s.add(v);
  EXPECT_EQ(s.count(), 8u);
  EXPECT_EQ(s.min(), 2u);
  EXPECT_EQ(s.max(), 9u);
  EXPECT_DOUBLE_EQ(s.mean(), 5.0);
  EXPECT_NEAR(s.stdev(), std::sqrt(32.0 / 7.0), 1e-12);  // sample stdev (n-1)
  LatencyStat big;
  for (int i = 0; i < 1000; ++i) big.add(uint64_t{1} << 40);  // no overflow in the sums
  EXPECT_DOUBLE_EQ(big.stdev(), 0.0);
  EXPECT_DOUBLE_EQ(big.mean(), std::ldexp(1.0, 40));
}

TEST(BenchLatency, HistogramBucketsAreFios) {
  EXPECT_EQ(LatencyHistogram::index(0), 0u);
  EXPECT_EQ(LatencyHistogram::index(127), 127u);
  EXPECT_EQ(LatencyHistogram::index(128), 128u);
  EXPECT_EQ(LatencyHistogram::index(129), 128u);  // 2-wide buckets from 128
  EXPECT_EQ(LatencyHistogram::index(130), 129u);
  EXPECT_EQ(LatencyHistogram::index(256), 192u);
  EXPECT_EQ(LatencyHistogram::index(UINT64_MAX), LatencyHistogram::kBuckets - 1);
  for (uint64_t v = 1; v < (uint64_t{1} << 34); v = v * 3 + 1) {
    const unsigned i = LatencyHistogram::index(v);
    ASSERT_LE(LatencyHistogram::bucket_low(i), v);
    ASSERT_GT(LatencyHistogram::bucket_high(i), v);
    // At most 1/64 of the value wide.
    ASSERT_LE(LatencyHistogram::bucket_high(i) - LatencyHistogram::bucket_low(i),
              std::max<uint64_t>(1, v / 64));
  }
  EXPECT_EQ(LatencyHistogram::bucket_value(LatencyHistogram::index(1000)),
            1004u);  // [1000, 1008): fio's midpoint
}

TEST(BenchLatency, PercentilesFromKnownLatencies) {
  // 1..100 ns, each once: exact buckets, fio's rule gives p = the p-th value.
  LatencyHistogram h;
  for (uint64_t v = 1; v <= 100; ++v) h.add(v);
  EXPECT_EQ(h.total(), 100u);
  EXPECT_EQ(h.percentile(1), 1u);
  EXPECT_EQ(h.percentile(50), 50u);
  EXPECT_EQ(h.percentile(90), 90u);
  EXPECT_EQ(h.percentile(99), 99u);
  EXPECT_EQ(h.percentile(99.99), 100u);
  // 10 000 I/Os: 9 900 at 1 us, 90 at 50 us, 10 at 2 ms.
  LatencyHistogram g;
  for (int i = 0; i < 9900; ++i) g.add(1000);
  for (int i = 0; i < 90; ++i) g.add(50'000);
  for (int i = 0; i < 10; ++i) g.add(2'000'000);
  auto within = [](uint64_t got, uint64_t want) {
    return std::llabs(static_cast<long long>(got) - static_cast<long long>(want)) <=
           static_cast<long long>(want / 64);
  };
  EXPECT_TRUE(within(g.percentile(50), 1000)) << g.percentile(50);
  EXPECT_TRUE(within(g.percentile(99), 1000)) << g.percentile(99);
  EXPECT_TRUE(within(g.percentile(99.5), 50'000)) << g.percentile(99.5);
  EXPECT_TRUE(within(g.percentile(99.9), 50'000)) << g.percentile(99.9);
  EXPECT_TRUE(within(g.percentile(99.95), 2'000'000)) << g.percentile(99.95);
  // Clamped to the exact min and max when given.
  EXPECT_EQ(g.percentile(100, 1000, 2'000'000), 2'000'000u);
  LatencyHistogram one;
  for (int i = 0; i < 10; ++i) one.add(1000);
  EXPECT_EQ(one.percentile(50), 1004u);
  EXPECT_EQ(one.percentile(50, 1000, 1000), 1000u);
  // The aio-stress view: per power of two, exact.
  auto p2 = g.pow2_counts();
  EXPECT_EQ(p2[10], 9900u);  // 512 <= 1000 < 1024
  EXPECT_EQ(p2[16], 90u);    // 32768 <= 50000 < 65536
  EXPECT_EQ(p2[21], 10u);    // 2^20 <= 2e6 < 2^21
  EXPECT_EQ(std::accumulate(p2.begin(), p2.end(), uint64_t{0}), 10000u);
  EXPECT_EQ(g.count_below(1024), 9900u);
  EXPECT_EQ(g.count_below(65536), 9990u);
  EXPECT_EQ(g.count_below(100), 0u);
  std::string lines = pow2_histogram(g, "", false);
  EXPECT_EQ(
      lines,
      " 9900 < 1.02us 0 < 2.05us 0 < 4.10us 0 < 8.19us 0 < 16.4us 0 < 32.8us 90 < 65.5us "
      "0 < 131us 0 < 262us 0 < 524us 0 < 1.05ms 10 < 2.10ms\n");
}

TEST(BenchLatency, UniformLatenciesAcrossTheRange) {
  // 1..100000 ns: every percentile within a bucket (1/64) of the true value.
  LatencyHistogram h;
  for (uint64_t v = 1; v <= 100000; ++v) h.add(v);
  for (double p : default_percentiles()) {
    const double want = p / 100.0 * 100000;
    const double got = static_cast<double>(h.percentile(p, 1, 100000));
    EXPECT_NEAR(got, want, want / 64 + 1) << p;
  }
}

// The reports print the figures computed from the latencies fed in.
TEST(BenchLatency, ReportsShowTheFigures) {
  RunResult run;
  JobResult j;
  j.job = Job({{"filename", "null:1G"}, {"rw", "randread"}});
  j.job.name = "known";
  j.threads = 1;
  j.runtime_ns = 1'000'000'000;
  j.elapsed_ns = 1'000'000'000;
  j.disk_name = "null0";
  for (uint64_t v = 1; v <= 100; ++v) j.sum.dir[kDirRead].add(4096, 10, v);
  j.sum.runtime_ns = j.runtime_ns;
  run.jobs.push_back(j);
  BenchConfig cfg;
  auto doc = nlohmann::json::parse(format_json(run, cfg, "test"));
  const auto& rd = doc["jobs"][0]["read"];
  EXPECT_EQ(rd["total_ios"], 100);
  EXPECT_DOUBLE_EQ(rd["iops"].get<double>(), 100.0);
  EXPECT_EQ(rd["io_bytes"], 409600);
  EXPECT_EQ(rd["clat_ns"]["min"], 1);
  EXPECT_EQ(rd["clat_ns"]["max"], 100);
  EXPECT_DOUBLE_EQ(rd["clat_ns"]["mean"].get<double>(), 50.5);
  EXPECT_NEAR(rd["clat_ns"]["stddev"].get<double>(), 29.0115, 1e-3);
  EXPECT_EQ(rd["clat_ns"]["percentile"]["50.000000"], 50);
  EXPECT_EQ(rd["clat_ns"]["percentile"]["99.000000"], 99);
  EXPECT_EQ(rd["clat_ns"]["percentile"]["1.000000"], 1);
  EXPECT_EQ(rd["slat_ns"]["mean"].get<double>(), 10.0);
  EXPECT_EQ(rd["lat_ns"]["min"], 11);
  EXPECT_EQ(rd["lat_ns"]["max"], 110);
  // aio-stress histogram of clat: 1 | 2,3 | 4..7 | ... | 64..100.
  const auto& hist = rd["latency_histogram"]["clat"];
  ASSERT_EQ(hist.size(), 7u);
  EXPECT_EQ(hist[0]["lt_ns"], 2.0);
  EXPECT_EQ(hist[0]["count"], 1);
  EXPECT_EQ(hist[6]["lt_ns"], 128.0);
  EXPECT_EQ(hist[6]["count"], 37);
  EXPECT_EQ(doc["total"]["read"]["total_ios"], 100);
  std::string text = format_normal(run, cfg);
  EXPECT_THAT(text, HasSubstr("read: IOPS=100, BW=400KiB/s (410kB/s)"));
  EXPECT_THAT(text, HasSubstr("clat (nsec): min=1, max=100, avg=50.50, stdev=29.01"));
  EXPECT_THAT(text, HasSubstr(", 50.00th=[   50],"));
  EXPECT_THAT(text, HasSubstr("| 99.00th=[   99], 99.50th=[  100]"));
  EXPECT_THAT(text, HasSubstr("<   128ns:           37"));
}

// ---------------------------------------------------------------------------
// Verify on a buffer

class VerifyBuffer : public ::testing::TestWithParam<VerifyAlgo> {
 protected:
  static constexpr uint32_t kBlock = 4096;
  Verifier v{GetParam(), kBlock, 0x1234};
  std::vector<std::byte> block = std::vector<std::byte>(kBlock);
};

TEST_P(VerifyBuffer, IntactBlockPasses) {
  v.stamp(block.data(), 8192, 3);
  EXPECT_TRUE(v.check(block.data(), 8192, 3).ok());
  EXPECT_TRUE(v.check(block.data(), 8192, 0).ok());  // generation unknown
}

TEST_P(VerifyBuffer, CorruptData) {
  v.stamp(block.data(), 8192, 3);
  block[1000] ^= std::byte{0x01};
  VerifyResult r = v.check(block.data(), 8192, 3);
  EXPECT_EQ(r.kind, VerifyFailure::kCorrupt);
  EXPECT_EQ(r.offset, 8192u);
  EXPECT_THAT(r.message,
              HasSubstr("block at offset 8192: checksum mismatch (torn/corrupt)"));
  EXPECT_THAT(
      r.message,
      HasSubstr("1 of 8 sectors differ from generation 3's data, first at byte 1000"));
}

TEST_P(VerifyBuffer, CorruptHeaderIsCorruptNotMisplaced) {
  v.stamp(block.data(), 8192, 3);
  block[offsetof(BlockHeader, offset)] ^= std::byte{0x10};  // the stored offset, damaged
  EXPECT_EQ(v.check(block.data(), 8192, 3).kind, VerifyFailure::kCorrupt);
}

TEST_P(VerifyBuffer, TornWrite) {
  // The first half of the sectors from generation 2, the rest still from 1.
  std::vector<std::byte> old(kBlock);
  v.stamp(old.data(), 0, 1);
  v.stamp(block.data(), 0, 2);
  std::memcpy(block.data() + kBlock / 2, old.data() + kBlock / 2, kBlock / 2);
  VerifyResult r = v.check(block.data(), 0, 2);
  EXPECT_EQ(r.kind, VerifyFailure::kCorrupt);
  EXPECT_THAT(r.message,
              HasSubstr("block at offset 0: checksum mismatch (torn/corrupt)"));
  EXPECT_THAT(
      r.message,
      HasSubstr("4 of 8 sectors differ from generation 2's data, first at byte 2048"));
}

TEST_P(VerifyBuffer, MisplacedBlock) {
  v.stamp(block.data(), 4096, 1);  // written for 4096, found at 12288
  VerifyResult r = v.check(block.data(), 12288, 1);
  EXPECT_EQ(r.kind, VerifyFailure::kMisplaced);
  EXPECT_EQ(r.message, "block at offset 12288: stored offset 4096 (misplaced)");
}

TEST_P(VerifyBuffer, StaleBlock) {
  v.stamp(block.data(), 4096, 1);  // an old write replayed over generation 2
  VerifyResult r = v.check(block.data(), 4096, 2);
  EXPECT_EQ(r.kind, VerifyFailure::kStale);
  EXPECT_EQ(r.message, "block at offset 4096: generation 1, expected 2 (stale)");
  v.stamp(block.data(), 4096, 5);
  EXPECT_EQ(v.check(block.data(), 4096, 2).kind, VerifyFailure::kNewer);
}

TEST_P(VerifyBuffer, NeverWritten) {
  VerifyResult r = v.check(block.data(), 0, 1);
  EXPECT_EQ(r.kind, VerifyFailure::kBadMagic);
  EXPECT_THAT(r.message, HasSubstr("block at offset 0: bad magic 0x0000000000000000"));
}

TEST_P(VerifyBuffer, ForeignRunAndOtherSettings) {
  Verifier other(GetParam(), kBlock, 0x9999);
  other.stamp(block.data(), 0, 1);
  VerifyResult r = v.check(block.data(), 0, 0);
  EXPECT_EQ(r.kind, VerifyFailure::kForeign);
  EXPECT_THAT(r.message,
              HasSubstr("seed 0x9999, expected 0x1234 (written by another run)"));
  Verifier small(GetParam(), 512, 0x1234);
  small.stamp(block.data(), 0, 1);
  EXPECT_EQ(v.check(block.data(), 0, 1).kind, VerifyFailure::kBadLength);
}

INSTANTIATE_TEST_SUITE_P(Algos, VerifyBuffer,
                         ::testing::Values(VerifyAlgo::kCrc32c, VerifyAlgo::kXxh64),
                         [](const auto& info) {
                           return std::string(verify_algo_name(info.param));
                         });

// ---------------------------------------------------------------------------
// The engine

struct Engine {
  DiskRegistry registry;
  std::atomic<bool> stop{false};
  RunResult run(std::vector<std::string> args) {
    BenchConfig cfg = parse_bench_args(args);
    RunOptions o;
    o.stop = &stop;
    o.sample_ns = 50'000'000;
    return run_bench(cfg, registry, o);
  }
};

// Runs one worker thread of `job` on `disk` with a shared generation map.
ThreadResult RunThread(const JobOptions& job, Disk& disk, GenerationMap& gens,
                       const Verifier& v) {
  LiveCounters live;
  std::atomic<bool> stop{false};
  WorkerSetup s;
  s.job = &job;
  s.dev = &disk.part0();
  s.region_start = 0;
  s.region_len = disk.size_bytes();
  s.gens = &gens;
  s.verifier = &v;
  s.live = &live;
  s.stop = &stop;
  ThreadResult out;
  run_worker(s, out);
  EXPECT_TRUE(live.done.load());
  return out;
}

// The acceptance test for verify: write a RAM disk, damage it behind the
// benchmark's back in each way, read it back, and get each block reported
// with the right reason.
TEST(BenchVerifyDisk, CatchesCorruptionMisplacementAndReplay) {
  DiskRegistry registry;
  auto disk = registry.create("ram:1M");
  BlockHandle h(disk);
  constexpr uint32_t kBs = 4096;
  const Verifier v(VerifyAlgo::kCrc32c, kBs, 77);
  GenerationMap gens(0, disk->size_bytes(), kBs);
  JobOptions w = Job({{"filename", "ram:1M"},
                      {"rw", "randwrite"},
                      {"bs", "4k"},
                      {"iodepth", "8"},
                      {"verify", "crc32c"},
                      {"do_verify", "0"},
                      {"randseed", "77"}});
  // Pass 1: every block at generation 1.
  ThreadResult r1 = RunThread(w, *disk, gens, v);
  ASSERT_EQ(r1.error, 0) << r1.error_message;
  ASSERT_EQ(r1.dir[kDirWrite].ios, 256u);
  std::vector<std::byte> old(kBs);
  ASSERT_EQ(h.pread(old.data(), kBs, 9 * kBs), Status::kOk);
  // Pass 2: every block at generation 2.
  ThreadResult r2 = RunThread(w, *disk, gens, v);
  ASSERT_EQ(r2.error, 0);
  EXPECT_EQ(gens.get(9 * kBs), 2u);

  std::vector<std::byte> buf(kBs);
  // Corrupt: flip a byte of block 3.
  ASSERT_EQ(h.pread(buf.data(), kBs, 3 * kBs), Status::kOk);
  buf[700] ^= std::byte{0xff};
  ASSERT_EQ(h.pwrite(buf.data(), kBs, 3 * kBs), Status::kOk);
  // Misplaced: block 5's content written over block 7.
  ASSERT_EQ(h.pread(buf.data(), kBs, 5 * kBs), Status::kOk);
  ASSERT_EQ(h.pwrite(buf.data(), kBs, 7 * kBs), Status::kOk);
  // Replayed: block 9 as it was after pass 1.
  ASSERT_EQ(h.pwrite(old.data(), kBs, 9 * kBs), Status::kOk);

  JobOptions rd = Job({{"filename", "ram:1M"},
                       {"rw", "read"},
                       {"bs", "16k"},
                       {"iodepth", "4"},
                       {"verify", "crc32c"},
                       {"verify_interval", "4k"},
                       {"randseed", "77"}});
  ThreadResult r = RunThread(rd, *disk, gens, v);
  EXPECT_EQ(r.error, 0);
  EXPECT_EQ(r.verify.checked, 256u);
  EXPECT_EQ(r.verify.failed(), 3u);
  EXPECT_EQ(r.verify.failures[static_cast<int>(VerifyFailure::kCorrupt)], 1u);
  EXPECT_EQ(r.verify.failures[static_cast<int>(VerifyFailure::kMisplaced)], 1u);
  EXPECT_EQ(r.verify.failures[static_cast<int>(VerifyFailure::kStale)], 1u);
  std::map<uint64_t, std::string> msg;
  for (const VerifyResult& f : r.verify.first) msg[f.offset] = f.message;
  EXPECT_THAT(msg[3 * kBs],
              HasSubstr("block at offset 12288: checksum mismatch (torn/corrupt)"));
  EXPECT_THAT(msg[3 * kBs], HasSubstr("first at byte 700"));
  EXPECT_EQ(msg[7 * kBs], "block at offset 28672: stored offset 20480 (misplaced)");
  EXPECT_EQ(msg[9 * kBs], "block at offset 36864: generation 1, expected 2 (stale)");

  // verify_fatal ends the job at the first failure, with an error.
  rd.verify_fatal = true;
  ThreadResult f = RunThread(rd, *disk, gens, v);
  EXPECT_NE(f.error, 0);
  EXPECT_THAT(f.error_message, HasSubstr("verify failed: block at offset"));
}

TEST(BenchEngine, WriteThenReadBackVerifiesClean) {
  Engine e;
  RunResult r = e.run({"--name=w", "--filename=ram:8M", "--rw=randwrite",
                       "--bssplit=4k/50:16k/50", "--iodepth=16", "--verify=xxh64",
                       "--numjobs=2", "--fsync=16", "--end_fsync=1"});
  ASSERT_EQ(r.jobs.size(), 1u);
  const ThreadResult& s = r.jobs[0].sum;
  EXPECT_EQ(s.error, 0) << s.error_message;
  EXPECT_EQ(s.verify.failed(), 0u);
  EXPECT_GT(s.verify.readback_blocks, 0u);
  EXPECT_EQ(s.verify.checked, s.verify.readback_blocks);
  EXPECT_GE(s.dir[kDirWrite].bytes,
            8u << 20);  // each thread its half (the last I/O may go over)
  EXPECT_LT(s.dir[kDirWrite].bytes, (8u << 20) + 2 * 16384);
  EXPECT_GE(s.sync_ios, 2u);
  EXPECT_EQ(r.exit_code(), 0);
}

TEST(BenchEngine, MixedJobVerifiesWhatItWrote) {
  Engine e;
  RunResult r = e.run({"--name=m", "--filename=ram:4M", "--rw=randrw", "--iodepth=8",
                       "--verify=crc32c", "--number_ios=4000", "--norandommap"});
  const ThreadResult& s = r.jobs[0].sum;
  EXPECT_EQ(s.error, 0) << s.error_message;
  EXPECT_EQ(s.verify.failed(), 0u);  // unwritten blocks read in between are not judged
  EXPECT_GT(s.verify.checked,
            s.verify.readback_blocks);  // some checked as they were read
  EXPECT_GT(s.verify.readback_blocks, 0u);
}

TEST(BenchEngine, StagesShareGenerations) {
  Engine e;
  RunResult r = e.run(
      {"--stages", "--filename=ram:4M", "--bs=8k", "--iodepth=8", "--verify=crc32c"});
  ASSERT_EQ(r.jobs.size(), 4u);
  for (const JobResult& j : r.jobs) {
    EXPECT_EQ(j.sum.error, 0) << j.job.name << ": " << j.sum.error_message;
    EXPECT_EQ(j.sum.verify.failed(), 0u) << j.job.name;
  }
  EXPECT_EQ(r.jobs[1].sum.verify.checked, 512u);  // the read stage checked every block
  EXPECT_EQ(r.jobs[3].sum.verify.checked, 512u);
  EXPECT_EQ(r.jobs[3].group, 3u);
}

TEST(BenchEngine, NumberIosAndThreads) {
  Engine e;
  RunResult r = e.run({"--name=n", "--filename=null:1G", "--rw=randread", "--iodepth=32",
                       "--iodepth_batch=8", "--number_ios=10000", "--numjobs=3"});
  const JobResult& j = r.jobs[0];
  EXPECT_EQ(j.threads, 3u);
  EXPECT_EQ(j.sum.dir[kDirRead].ios, 30000u);
  EXPECT_EQ(j.sum.dir[kDirRead].clat.count(), 30000u);
  EXPECT_EQ(j.sum.dir[kDirWrite].ios, 0u);
  EXPECT_EQ(r.disks.size(), 1u);
  EXPECT_EQ(r.disks[0].ios[0], 30000u);
}

TEST(BenchEngine, ReadWriteMixAndDeferredCompletion) {
  Engine e;
  RunResult r =
      e.run({"--name=m", "--filename=null:1G,completion=deferred", "--rw=randrw",
             "--rwmixread=25", "--iodepth=8", "--number_ios=8000"});
  const ThreadResult& s = r.jobs[0].sum;
  EXPECT_EQ(s.dir[0].ios + s.dir[1].ios, 8000u);
  EXPECT_NEAR(static_cast<double>(s.dir[0].ios), 2000, 300);
}

TEST(BenchEngine, TimeoutsOnATimerNullDiskFailIosOnceAndTheRunGoesOn) {
  // Issue 13: requests that complete as they time out. This run aborted
  // with "request (tag 32, ...) on 'null0' completed twice".
  Engine e;
  RunResult r =
      e.run({"--name=t",
             "--filename=null:1G,queue_mode=mq,completion=timer,completion_nsec=1ms,"
             "timeout=1ms",
             "--rw=randread", "--bs=4k", "--iodepth=32", "--runtime=2", "--time_based",
             "--continue_on_error=all"});
  const ThreadResult& s = r.jobs[0].sum;
  EXPECT_GT(s.dir[kDirRead].ios, 0u) << "some reads complete in time";
  EXPECT_GT(s.dir[kDirRead].errors, 0u) << "some time out";
  if (s.error != 0) {
    EXPECT_EQ(s.error, ETIMEDOUT) << s.error_message;
  }
  // Every read ends once, with a result or an error (the last ones may
  // end after the measured window).
  const uint64_t ended = s.dir[kDirRead].ios + s.dir[kDirRead].errors;
  EXPECT_GE(r.disks[0].ios[0], ended);
  EXPECT_LE(r.disks[0].ios[0], ended + 32);
}

TEST(BenchEngine, RateIopsPaces) {
  Engine e;
  RunResult r = e.run({"--name=r", "--filename=null:1G", "--rw=randread", "--iodepth=4",
                       "--rate_iops=2000", "--runtime=500ms", "--time_based"});
  const double iops = static_cast<double>(r.jobs[0].sum.dir[0].ios) * 1e9 /
                      static_cast<double>(r.jobs[0].runtime_ns);
  EXPECT_NEAR(iops, 2000, 300);
}

TEST(BenchEngine, RampTimeIsNotCounted) {
  Engine e;
  RunResult r =
      e.run({"--name=r", "--filename=null:1G", "--rw=randread", "--rate_iops=1000",
             "--ramp_time=300ms", "--runtime=300ms", "--time_based"});
  const JobResult& j = r.jobs[0];
  // About 300 I/Os measured out of about 600 issued.
  EXPECT_NEAR(static_cast<double>(j.sum.dir[0].ios), 300, 60);
  EXPECT_NEAR(static_cast<double>(j.runtime_ns), 300e6, 60e6);
  EXPECT_GE(r.disks[0].ios[0], 550u);
}

// bfq_weight=W: each thread of the job is an issuer (its IoContext) with
// weight W under bfq while it runs, and back to the default after; a
// weight out of range, or on a disk without bfq, is refused up front.
TEST(BenchEngine, BfqWeightWeighsEachThreadWhileItRuns) {
  EXPECT_THAT(ErrorOf([] {
                Job({{"bfq_weight", "0"}});
              }),
              HasSubstr("a number from 1 to 1000"));
  EXPECT_THAT(ErrorOf([] {
                Job({{"bfq_weight", "1001"}});
              }),
              HasSubstr("a number from 1 to 1000"));
  Engine e;
  EXPECT_THAT(
      ErrorOf([&] {
        e.run({"--name=w", "--filename=ram:1M,queue_mode=mq", "--bfq_weight=300"});
      }),
      HasSubstr("job 'w': bfq_weight needs the bfq scheduler, and ram0 has 'none'"));

  auto disk = e.registry.create("ram:1M,queue_mode=mq,sched=bfq");
  Scheduler* bfq = static_cast<Queue&>(disk->driver()).scheduler();
  auto weights = [&] {
    for (const auto& [name, value] : bfq->tunables())
      if (name == "weights") return value;
    return std::string("?");
  };
  JobOptions j = Job({{"rw", "randread"},
                      {"rate_iops", "100"},
                      {"runtime", "300ms"},
                      {"time_based", "1"},
                      {"numjobs", "2"},
                      {"bfq_weight", "300"}});
  std::atomic<bool> stop{false};
  LiveCounters live[2];
  ThreadResult out[2];
  std::vector<std::thread> threads;
  std::vector<WorkerSetup> setups(2);
  for (unsigned t = 0; t < 2; ++t) {
    WorkerSetup& s = setups[t];
    s.job = &j;
    s.dev = &disk->part0();
    s.region_len = disk->size_bytes();
    s.thread_index = t;
    s.live = &live[t];
    s.stop = &stop;
    threads.emplace_back(run_worker, std::cref(s), std::ref(out[t]));
  }
  // Both threads' issuers at 300, the default still 100: "100 A:300 B:300".
  std::string seen;
  for (int i = 0; i < 2000 && std::count(seen.begin(), seen.end(), ':') < 2; ++i) {
    seen = weights();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  for (std::thread& t : threads) t.join();
  EXPECT_THAT(seen, ::testing::MatchesRegex("100 [0-9]+:300 [0-9]+:300"));
  EXPECT_EQ(weights(), "100");
  for (const ThreadResult& r : out) {
    EXPECT_EQ(r.error, 0) << r.error_message;
    EXPECT_GT(r.dir[kDirRead].ios, 0u);
  }
}

TEST(BenchEngine, ErrorsAreReported) {
  Engine e;
  // A read-only disk refuses writes at submission (EROFS).
  RunResult r = e.run({"--name=ro", "--filename=ram:1M,ro=1", "--rw=write", "--bs=4k"});
  EXPECT_EQ(r.jobs[0].sum.error, EROFS);
  EXPECT_THAT(r.jobs[0].sum.error_message,
              HasSubstr("write at offset 0 (4096 bytes) refused at submission"));
  EXPECT_EQ(r.exit_code(), 1);
  // Setup mistakes are Errors naming the job.
  EXPECT_THAT(ErrorOf([&] {
                e.run({"--name=big", "--filename=ram:1M", "--size=2M"});
              }),
              HasSubstr("job 'big': offset 0 + size 2097152 goes beyond the end of ram"));
  EXPECT_THAT(ErrorOf([&] {
                e.run({"--name=al", "--filename=ram:1M,bs=4096", "--bs=512"});
              }),
              HasSubstr("block size 512 is not a multiple of ram"));
  EXPECT_THAT(ErrorOf([&] {
                e.run({"--name=sp", "--filename=ram:1M,foo=1"});
              }),
              HasSubstr("job 'sp': device spec 'ram:1M,foo=1': unknown option 'foo'"));
  EXPECT_THAT(ErrorOf([&] {
                e.run({"--filename=ram:1M,name=v", "--name=a", "--verify=crc32c",
                       "--rw=write", "--name=b", "--verify=xxh64", "--rw=read"});
              }),
              HasSubstr("jobs 'a' and 'b' verify v with different settings"));
}

TEST(BenchEngine, StopEndsTimeBasedJobsEarly) {
  Engine e;
  e.stop = true;
  RunResult r = e.run({"--name=s", "--filename=null:1G", "--runtime=60", "--time_based"});
  EXPECT_TRUE(r.interrupted);
  EXPECT_LT(r.jobs[0].elapsed_ns, 5'000'000'000u);
}

TEST(BenchProgress, Line) {
  ProgressSnapshot s;
  s.running_threads = 2;
  s.modes = "r(1),W(1)";
  s.percent = 45;
  s.bw[0] = 4102.0 * 1024 * 1024;
  s.iops[0] = 1'050'000;
  s.bw[1] = 10.0 * 1024 * 1024;
  s.iops[1] = 2560;
  s.elapsed_ns = 5'000'000'000;
  s.eta_ns = 6'000'000'000;
  s.eta_known = true;
  EXPECT_EQ(
      format_progress(s),
      "Jobs: 2 (f=2): [r(1),W(1)][45.0%][r=4102MiB/s,w=10.0MiB/s][r=1050k,w=2560 IOPS]"
      "[elapsed 00m:05s][eta 00m:06s]");
}

TEST(BenchFormat, Num2Str) {
  EXPECT_EQ(num2str(999), "999");
  EXPECT_EQ(num2str(9999), "9999");
  EXPECT_EQ(num2str(12345), "12.3k");
  EXPECT_EQ(num2str(526326), "526k");
  EXPECT_EQ(num2str(1071693), "1072k");
  EXPECT_EQ(num2str(4059478, 6), "4059.5k");
  EXPECT_EQ(bytes2str(4385.0 * 1e6, false), "4385MB");
  EXPECT_EQ(ns2str(1024), "1.02us");
  EXPECT_EQ(ns2str(256), "256ns");
}

// A partition by SPEC,part=N and by name: the job runs on it alone.
TEST(BenchPartition, RunsOnAPartitionBySpecOrName) {
  Engine e;
  auto disk = e.registry.create("ram:8M,name=sda");
  std::vector<std::byte> mbr(512);
  const uint32_t entries[2][2] = {{2048, 4096}, {6144, 4096}};
  for (int i = 0; i < 2; ++i) {
    mbr[446 + 16 * i + 4] = std::byte{0x83};
    std::memcpy(&mbr[446 + 16 * i + 8], &entries[i][0], 4);
    std::memcpy(&mbr[446 + 16 * i + 12], &entries[i][1], 4);
  }
  mbr[510] = std::byte{0x55};
  mbr[511] = std::byte{0xAA};
  ASSERT_EQ(BlockHandle(disk).pwrite(mbr.data(), mbr.size(), 0), Status::kOk);
  disk->rescan_partitions();
  RunResult r =
      e.run({"--name=w", "--filename=sda2", "--rw=write", "--bs=64k", "--verify=crc32c"});
  ASSERT_EQ(r.jobs.size(), 1u);
  EXPECT_EQ(r.jobs[0].disk_name, "sda2");
  EXPECT_EQ(r.jobs[0].disk_bytes, 2u << 20);
  EXPECT_EQ(r.exit_code(), 0);
  EXPECT_EQ(disk->partition(2)->stats().sectors[kStatWrite], 4096u);
  EXPECT_EQ(disk->partition(1)->stats().sectors[kStatWrite], 0u);
  EXPECT_THAT(ErrorOf([&] { open_device(e.registry, "ram:8M,part=16"); }),
              HasSubstr("from 1 to 15"));
  EXPECT_THAT(ErrorOf([&] { open_device(e.registry, "ram:8M,name=new,part=1"); }),
              HasSubstr("new has no partition 1 (no partition table)"));
}

}  // namespace
}  // namespace blkstack::bench
