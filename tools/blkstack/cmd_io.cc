// blkstack io: run qemu-io style commands against disks made from specs.
//
//   blkstack io ram:64M null:1G -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'
//       -c 'use null0' -c 'read 0 4k' -c stat
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <sstream>

#include "blkstack/block_handle.h"
#include "blkstack/device_spec.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/error.h"
#include "commands.h"

namespace blkstack::cli {
namespace {

constexpr std::string_view kCommandHelp =
    "Commands (-c, run in order; OFFSET and LENGTH take K/M/G suffixes):\n"
    "  write [-P BYTE] [-F] OFFSET LENGTH   write a pattern (default 0xcd); -F: FUA\n"
    "  read [-P BYTE] OFFSET LENGTH         read; with -P, check every byte\n"
    "  discard OFFSET LENGTH                discard (trim) a range\n"
    "  zero OFFSET LENGTH                   write zeroes to a range\n"
    "  flush                                flush the volatile cache\n"
    "  use NAME                             switch to another disk or a partition "
    "(file0p1)\n"
    "  stat                                 /proc/diskstats lines of all disks\n"
    "  stats                                this disk's statistics by name, latency "
    "histograms\n"
    "  info                                 size, allocation and driver state";

struct Args {
  std::vector<std::string> words;
  int pattern = -1;
  bool fua = false;
};

Args split_command(const std::string& line) {
  Args a;
  std::istringstream in(line);
  std::string w;
  while (in >> w) {
    if (w == "-P") {
      if (!(in >> w)) throw Error(fmt::format("'{}': -P needs a byte value", line));
      unsigned long v = std::stoul(w, nullptr, 0);
      if (v > 255) throw Error(fmt::format("'{}': pattern {} is not a byte", line, w));
      a.pattern = static_cast<int>(v);
    } else if (w == "-F") {
      a.fua = true;
    } else {
      a.words.push_back(w);
    }
  }
  if (a.words.empty()) throw Error("empty command");
  return a;
}

class IoSession {
 public:
  explicit IoSession(const std::vector<std::string>& specs) {
    std::vector<std::shared_ptr<Disk>> disks;
    for (const std::string& s : specs) disks.push_back(registry_.create(s));
    // The first disk nothing is stacked on: a later spec may stack on an
    // earlier one ("ram:4M passthrough:lower=ram0"), which it then holds.
    for (const auto& disk : disks) {
      if (disk->part0().holder().empty()) {
        handle_ = std::make_unique<BlockHandle>(disk);
        break;
      }
    }
  }

  // Runs one command; returns false when it failed (the message is printed).
  bool run(const std::string& line) {
    Args a = split_command(line);
    const std::string& op = a.words[0];
    auto need = [&](size_t n) {
      if (a.words.size() != n + 1) {
        throw Error(fmt::format("'{}': {} takes {} argument(s)", line, op, n));
      }
    };
    if (op == "use") {
      need(1);
      handle_ = std::make_unique<BlockHandle>(BlockHandle::open(registry_, a.words[1]));
      return true;
    }
    if (op == "stat") {
      need(0);
      for (const auto& d : registry_.list()) fmt::print("{}\n", d->diskstats_line());
      return true;
    }
    if (op == "stats") {
      need(0);
      fmt::print("{}", handle_->disk().stats_report());
      return true;
    }
    if (op == "info") {
      need(0);
      const BlockDevice& b = handle_->device();
      if (b.is_partition()) {
        fmt::print("{}: {} ({} bytes), partition {} of {} from sector {}\n", b.name(),
                   format_size(b.size_bytes()), b.size_bytes(), b.partno(),
                   b.disk().name(), b.start());
        return true;
      }
      Disk& d = handle_->disk();
      fmt::print("{}: {} ({} bytes), {} allocated, {}\n", d.name(),
                 format_size(d.size_bytes()), d.size_bytes(),
                 format_size(d.allocated_bytes()), d.describe());
      return true;
    }
    if (op == "flush") {
      need(0);
      return report(line, handle_->flush(), 0, 0, 0, "flushed");
    }
    if (op != "read" && op != "write" && op != "discard" && op != "zero") {
      throw Error(fmt::format("unknown command '{}'\n{}", op, kCommandHelp));
    }
    need(2);
    uint64_t off = parse_size(a.words[1], "offset");
    uint64_t len = parse_size(a.words[2], "length");
    auto t0 = std::chrono::steady_clock::now();
    Status s;
    if (op == "discard") {
      s = handle_->discard(off, len);
    } else if (op == "zero") {
      s = handle_->write_zeroes(off, len);
    } else {
      std::unique_ptr<std::byte[]> buf(new std::byte[len]);
      if (op == "write") {
        std::memset(buf.get(), a.pattern < 0 ? 0xcd : a.pattern, len);
        s = handle_->pwrite(buf.get(), len, off, a.fua ? BioFlag::kFua : BioFlag::kNone);
      } else {
        s = handle_->pread(buf.get(), len, off);
        if (s == Status::kOk && a.pattern >= 0) {
          for (uint64_t i = 0; i < len; ++i) {
            if (buf[i] != static_cast<std::byte>(a.pattern)) {
              fmt::print(stderr,
                         "Pattern verification failed at offset {}: read 0x{:02x}, "
                         "expected 0x{:02x}\n",
                         off + i, static_cast<unsigned>(buf[i]), a.pattern);
              return false;
            }
          }
        }
      }
    }
    double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const char* verb = op == "read"    ? "read"
                       : op == "write" ? "wrote"
                       : op == "zero"  ? "zeroed"
                                       : "discarded";
    return report(line, s, off, len, secs, verb);
  }

 private:
  bool report(const std::string& line, Status s, uint64_t off, uint64_t len, double secs,
              const char* verb) {
    if (s != Status::kOk) {
      fmt::print(stderr, "{}: '{}' failed: {} ({})\n", handle_->device().name(), line,
                 status_name(s), status_description(s));
      return false;
    }
    if (len == 0) {
      fmt::print("{}: {}\n", handle_->device().name(), verb);
    } else {
      fmt::print("{}: {} {}/{} bytes at offset {}\n{}, 1 ops; {:.4f} sec ({}/sec)\n",
                 handle_->device().name(), verb, len, len, off, format_size(len), secs,
                 format_size(secs > 0 ? static_cast<uint64_t>(len / secs) : 0));
    }
    return true;
  }

  DiskRegistry registry_;
  std::unique_ptr<BlockHandle> handle_;
};

}  // namespace

void add_io_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "io", "Run qemu-io style commands on disks made from device specs");
  static std::vector<std::string> specs;
  static std::vector<std::string> commands;
  cmd->add_option("specs", specs,
                  "Device specs; commands start on the first disk nothing is stacked on")
      ->required();
  cmd->add_option("-c,--command", commands, "A command to run (repeatable)")->required();
  cmd->footer(
      std::string(kCommandHelp) +
      "\n\nExample:\n"
      "  blkstack io ram:64M null:1G -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' \\\n"
      "      -c 'discard 0 512k' -c 'use null0' -c 'read 0 64k' -c stat");
  cmd->callback([] {
    IoSession session(specs);
    int failed = 0;
    for (const std::string& c : commands) {
      if (!session.run(c)) ++failed;
    }
    if (failed)
      throw Error(fmt::format("{} of {} commands failed", failed, commands.size()));
  });
}

}  // namespace blkstack::cli
