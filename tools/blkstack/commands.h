// The subcommands of the blkstack program, one file each.
#pragma once

#include <CLI/CLI.hpp>

namespace blkstack::cli {

void add_version_command(CLI::App& app);
void add_disk_command(CLI::App& app);
void add_part_command(CLI::App& app);
void add_io_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_attach_command(CLI::App& app);
void add_detach_command(CLI::App& app);
// xfstests' replay-log for the log-writes target's logs.
void add_replay_log_command(CLI::App& app);
// The control socket's clients: ls, describe, stats, attr, add-device,
// rescan, ...
void add_control_commands(CLI::App& app);
// blkstack dmsetup: mapped devices of a running server.
void add_dmsetup_command(CLI::App& app);

}  // namespace blkstack::cli
