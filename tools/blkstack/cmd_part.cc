// blkstack part: the partition table of a device spec, read as a rescan
// reads it, printed like `sfdisk -l` or, with --json, as `sfdisk --json`
// prints it (docs/partitions.md).
#include <fmt/format.h>

#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "commands.h"
#include "serve/partition_report.h"

namespace blkstack::cli {

void add_part_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "part", "Show the partition table (MBR or GPT) of a device, as sfdisk does");
  static std::string spec;
  static bool json = false;
  cmd->add_option("SPEC", spec, "A device spec: TYPE[:ARG][,KEY=VALUE...]")->required();
  cmd->add_flag("--json", json, "Print sfdisk --json's object (same keys and units)");
  cmd->footer(
      "Examples:\n"
      "  blkstack part file:/var/tmp/disk.img\n"
      "  blkstack part file:/dev/loop0,bs=4096 --json | jq '.partitiontable.partitions'");
  cmd->callback([] {
    DiskRegistry registry;
    // Opened read-only: looking never writes.
    const std::string ro = spec.find("ro=") == std::string::npos ? ",ro=1" : "";
    auto disk = registry.create(spec + ro);
    const PartitionTable t = disk->partition_table();
    if (json) {
      const auto j = serve::partition_table_json(*disk);
      if (!j.is_null()) fmt::print("{}\n", j.dump(3));
    } else {
      fmt::print("{}", serve::partition_table_text(*disk));
    }
    for (const std::string& w : t.warnings) fmt::print(stderr, "blkstack part: {}\n", w);
    if (!t.error.empty()) {
      fmt::print(stderr, "blkstack part: {}: {}\n", disk->name(), t.error);
      throw CLI::RuntimeError(1);
    }
    if (t.label.empty()) {
      fmt::print(stderr,
                 "blkstack part: {}: does not contain a recognized partition table\n",
                 disk->name());
      throw CLI::RuntimeError(1);
    }
  });
}

}  // namespace blkstack::cli
