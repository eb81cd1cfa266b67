// blkstack replay-log: xfstests' replay-log, for logs written by the
// log-writes target (src/dm/log_replay.h does the work).
#include <cstdio>

#include "commands.h"
#include "dm/log_replay.h"

namespace blkstack::cli {

void add_replay_log_command(CLI::App& app) {
  static logwrites::ReplayOptions args;
  auto* cmd = app.add_subcommand(
      "replay-log", "Replay a log-writes log onto a device up to an entry or mark");
  cmd->add_option("--log", args.log,
                  "The log (a file or device the log-writes target wrote)")
      ->required();
  cmd->add_option("--replay", args.replay,
                  "The device or file to replay onto (without: print the log's info)");
  cmd->add_option("--limit", args.limit, "Replay this many entries (default: all)");
  cmd->add_option("--start-entry", args.start_entry,
                  "Start at this entry (0 is the first)");
  cmd->add_option("--start-mark", args.start_mark, "Start after this mark");
  cmd->add_option("--end-mark", args.end_mark, "Replay to and including this mark");
  cmd->add_flag("--next-flush", args.next_flush, "Stop after the next flush");
  cmd->add_flag("--next-fua", args.next_fua, "Stop after the next FUA write");
  cmd->add_flag("--find", args.find,
                "Replay nothing: print ENTRY@BLOCK where the stop options stop");
  cmd->add_flag("--num-entries", args.num_entries, "Print the number of entries");
  cmd->add_flag("--no-discard", args.no_discard, "Skip discard entries");
  cmd->add_option("--fsck", args.fsck,
                  "A command that checks the replay device (with --check)");
  cmd->add_option("--check", args.check,
                  "When to run --fsck: every N entries, or at each flush or fua");
  cmd->add_flag("-v,--verbose", args.verbose, "Print replayed entries (-vv: all)");
  cmd->footer(
      "Entries are numbered from 0 in the order the log-writes target logged them\n"
      "(the order the writes became durable). Exits 1 if a --check fsck fails or\n"
      "--end-mark is not in the log.\n"
      "Examples:\n"
      "  blkstack replay-log --log /tmp/mnt/log --num-entries\n"
      "  blkstack replay-log --log /tmp/mnt/log --replay /tmp/img --end-mark synced\n"
      "  blkstack replay-log --log log.img --replay img --check fua \\\n"
      "      --fsck 'e2fsck -fn img'");
  cmd->callback([] {
    const int rc = logwrites::replay_log(args, stdout, stderr);
    std::fflush(stdout);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace blkstack::cli
