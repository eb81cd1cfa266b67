// blkstack bench: fio-style benchmarks on blkstack devices, through
// IoContext. The engine lives in tools/blkstack/bench/ (docs/bench.md).
//
//   blkstack bench --name=job1 --filename=null:1G --rw=randread --bs=4k --iodepth=32
//       --runtime=10 --time_based
//   blkstack bench jobs.fio
//   blkstack bench --stages --filename=ram:1G --verify=crc32c
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstring>

#include "bench/job_options.h"
#include "bench/progress.h"
#include "bench/report.h"
#include "bench/runner.h"
#include "blkstack/disk_registry.h"
#include "blkstack/error.h"
#include "commands.h"

namespace blkstack::cli {
namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_interrupt(int) { g_stop.store(true); }

std::string help_footer() {
  std::string out =
      "Usage: blkstack bench [JOBFILE...] [--KEY=VALUE...]\n\n"
      "Options are fio's: --KEY=VALUE (or --KEY VALUE) on the command line, KEY=VALUE in "
      "a job\n"
      "file. On the command line, --name=NAME starts a job; options before the first "
      "--name\n"
      "apply to every job (and override a job file's). Sizes take k/m/g/t (powers of "
      "1024),\n"
      "times are seconds unless given with us/ms/s/m/h.\n\nJob options:\n";
  for (const auto& o : bench::job_option_help()) {
    std::string name(o.name);
    for (char& c : name) {
      if (c == '|') c = ',';
    }
    std::string left = o.value.empty() ? name : fmt::format("{}={}", name, o.value);
    if (left.size() > 38) {
      out += fmt::format("  {}\n  {:<38} {}\n", left, "", o.help);
    } else {
      out += fmt::format("  {:<38} {}\n", left, o.help);
    }
  }
  out += "\nRun options:\n";
  for (const auto& o : bench::bench_option_help()) {
    std::string left = o.value.empty() ? fmt::format("--{}", o.name)
                                       : fmt::format("--{}={}", o.name, o.value);
    out += fmt::format("  {:<38} {}\n", left, o.help);
  }
  out +=
      "\nExamples:\n"
      "  blkstack bench --name=job1 --filename=null:1G --rw=randread --bs=4k "
      "--iodepth=32 \\\n"
      "      --runtime=10 --time_based\n"
      "  blkstack bench --name=mix --filename=ram:1G --rw=randrw --rwmixread=70 \\\n"
      "      --bssplit=4k/60:64k/40 --iodepth=16 --numjobs=2 --runtime=5 --time_based "
      "\\\n"
      "      --random_distribution=zipf:1.2 --output-format=json\n"
      "  blkstack bench --name=v --filename=ram:256M --rw=randwrite --bs=4k "
      "--verify=crc32c\n"
      "  blkstack bench --stages --filename=ram:1G --size=256M --verify=xxh64   "
      "(aio-stress)\n"
      "  blkstack bench --name=p1 --filename=file:/var/tmp/disk.img,part=1 "
      "--rw=randread   (partition 1)\n"
      "  blkstack bench jobs.fio                      ([global] and [job] sections, as "
      "fio)\n"
      "  blkstack bench jobs.fio --filename=null:1G   (every job on another device)";
  return out;
}

void run(const std::vector<std::string>& args) {
  bench::BenchConfig cfg = bench::parse_bench_args(args);
  FILE* out = stdout;
  std::unique_ptr<FILE, int (*)(FILE*)> file(nullptr, fclose);
  if (!cfg.output_file.empty()) {
    file.reset(std::fopen(cfg.output_file.c_str(), "w"));
    if (!file) {
      throw Error(
          fmt::format("cannot write '{}': {}", cfg.output_file, std::strerror(errno)));
    }
    out = file.get();
  }
  const bool normal = cfg.has(bench::OutputFormat::kNormal);
  const bool json = cfg.has(bench::OutputFormat::kJson);

  // The progress line goes to a terminal: stdout when the normal report
  // goes there too, else stderr (and only with --eta=always).
  std::unique_ptr<bench::TerminalProgress> progress;
  if (cfg.eta == bench::Eta::kAlways) {
    progress = std::make_unique<bench::TerminalProgress>(
        normal && out == stdout ? stdout : stderr);
  } else if (cfg.eta == bench::Eta::kAuto && normal && !json && out == stdout &&
             isatty(STDOUT_FILENO)) {
    progress = std::make_unique<bench::TerminalProgress>(stdout);
  }

  if (normal) {
    fmt::print(out, "{}", bench::format_header(cfg, BLKSTACK_VERSION));
    std::fflush(out);
  }
  DiskRegistry registry;
  struct sigaction sa {
  }, old_int{}, old_term{};
  sa.sa_handler = on_interrupt;
  sa.sa_flags = SA_RESETHAND;  // a second ^C ends the program
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  bench::RunOptions opts;
  opts.stop = &g_stop;
  opts.progress = progress.get();
  bench::RunResult result;
  try {
    result = bench::run_bench(cfg, registry, opts);
  } catch (...) {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
    throw;
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);

  if (normal) fmt::print(out, "{}", bench::format_normal(result, cfg));
  if (json) fmt::print(out, "{}", bench::format_json(result, cfg, BLKSTACK_VERSION));
  std::fflush(out);
  if (result.exit_code() != 0) {
    unsigned bad = 0;
    for (const auto& j : result.jobs) {
      if (j.sum.error != 0 || j.sum.verify.failed() != 0) ++bad;
    }
    throw Error(
        fmt::format("bench: {} of {} jobs failed (I/O errors or verify failures, above)",
                    bad, result.jobs.size()));
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench",
                                 "Benchmark devices with fio-style jobs through "
                                 "IoContext (fio's options and output)");
  cmd->allow_extras();
  cmd->footer(help_footer());
  cmd->callback([cmd] { run(cmd->remaining()); });
}

}  // namespace blkstack::cli
