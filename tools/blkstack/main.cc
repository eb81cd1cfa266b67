// blkstack: the command-line program. Each subcommand lives in its own file
// (cmd_*.cc) and registers itself here.
#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <new>

#include "blkstack/error.h"
#include "blkstack/module.h"
#include "commands.h"

namespace blkstack::cli {

void add_version_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("version", "Print the blkstack version");
  cmd->footer("Example:\n  blkstack version");
  cmd->callback([] { fmt::print("blkstack {}\n", BLKSTACK_VERSION); });
}

}  // namespace blkstack::cli

int main(int argc, char** argv) {
  CLI::App app{"blkstack: the Linux block I/O layer in user space"};
  app.footer(
      "Examples:\n"
      "  blkstack disk ram:64M null:1G        list disks made from device specs\n"
      "  blkstack io ram:64M -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'\n"
      "  blkstack bench --name=job1 --filename=null:1G --rw=randread --bs=4k "
      "--iodepth=32 \\\n"
      "      --runtime=10 --time_based       fio-style benchmark\n"
      "  blkstack serve --socket /tmp/nbd.sock --export disk=ram:1G   NBD server\n"
      "  blkstack serve --fuse /tmp/mnt --export disk=ram:1G          file "
      "/tmp/mnt/disk\n"
      "  blkstack attach /tmp/mnt/disk                                prints /dev/loopN\n"
      "  blkstack attr disk queue/scheduler          a running server's attribute\n"
      "  blkstack --module ./tinyram.so disk tinyram:64M               a driver from a "
      "module\n"
      "Run 'blkstack SUBCOMMAND --help' for each subcommand's options.");
  app.require_subcommand(1);
  app.set_version_flag("--version", BLKSTACK_VERSION);
  // Loaded as parsing ends, before any subcommand runs. Given before the
  // subcommand: after it, an option is the subcommand's (bench passes the
  // options it does not know to its job parser).
  app.add_option_function<std::vector<std::string>>(
         "--module",
         [](const std::vector<std::string>& paths) {
           for (const std::string& path : paths) blkstack::load_module(path);
         },
         "Load a driver or scheduler module (a shared object built against the installed "
         "headers; see docs/drivers.md); repeatable")
      ->type_name("FILE")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  blkstack::cli::add_version_command(app);
  blkstack::cli::add_disk_command(app);
  blkstack::cli::add_part_command(app);
  blkstack::cli::add_io_command(app);
  blkstack::cli::add_bench_command(app);
  blkstack::cli::add_serve_command(app);
  blkstack::cli::add_attach_command(app);
  blkstack::cli::add_detach_command(app);
  blkstack::cli::add_replay_log_command(app);
  blkstack::cli::add_control_commands(app);
  blkstack::cli::add_dmsetup_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const blkstack::Error& e) {
    fmt::print(stderr, "blkstack: {}\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    // Whatever asked for it was too big for this machine now; a clear
    // error and exit code, not std::terminate's abort.
    fmt::print(stderr, "blkstack: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    // No exception reaches the C++ runtime: its abort looks like a crash.
    fmt::print(stderr, "blkstack: {}\n", e.what());
    return 1;
  } catch (...) {
    fmt::print(stderr, "blkstack: unexpected error\n");
    return 1;
  }
  return 0;
}
