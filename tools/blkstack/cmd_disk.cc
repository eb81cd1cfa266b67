// blkstack disk: make disks from device specs and show them with their limits.
#include <fmt/format.h>

#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/driver_type.h"
#include "commands.h"

namespace blkstack::cli {
namespace {

std::string_view kind_name(OptionKind k) {
  switch (k) {
    case OptionKind::kSize:
      return "size";
    case OptionKind::kUint:
      return "uint";
    case OptionKind::kBool:
      return "bool";
    case OptionKind::kChoice:
      return "choice";
    case OptionKind::kDuration:
      return "duration";
    case OptionKind::kString:
      return "string";
  }
  return "?";
}

void print_option(const OptionDef& d) {
  std::string def =
      d.default_value.empty() ? "" : fmt::format(" (default {})", d.default_value);
  std::string choices = d.choices.empty() ? "" : fmt::format(" [{}]", d.choices);
  const bool ranged = d.min != 0 || d.max != UINT64_MAX;
  std::string range = ranged ? fmt::format(" [{}]", format_option_range(d)) : "";
  fmt::print("    {:<12} {:<8} {}{}{}{}{}\n", d.key, kind_name(d.kind), d.help, choices,
             range, def, d.positional ? "; also TYPE:VALUE" : "");
}

void print_types() {
  for (const DriverType* t : driver_types()) {
    fmt::print("{}: {}\n", t->name, t->description);
    for (const OptionDef& d : t->options) print_option(d);
    for (const OptionDef& d : common_device_options()) print_option(d);
  }
}

std::string sectors_bytes(uint64_t sectors) {
  return format_size(sectors << kSectorShift);
}

void print_disks(const std::vector<std::string>& specs) {
  DiskRegistry registry;
  for (const std::string& spec : specs) registry.create(spec);
  fmt::print(
      "{:<10} {:>7} {:>10} {:>5} {:>5} {:>9} {:>5} {:>9} {:>9} {:>9} {:>3} {:>3} {:>3}  "
      "{}\n",
      "NAME", "MAJ:MIN", "SIZE", "LBS", "PBS", "MAX-IO", "SEGS", "SEG-SIZE", "DISCARD",
      "WZEROES", "WC", "FUA", "RO", "DRIVER");
  for (const auto& disk : registry.list()) {
    const QueueLimits& l = disk->limits();
    fmt::print(
        "{:<10} {:>7} {:>10} {:>5} {:>5} {:>9} {:>5} {:>9} {:>9} {:>9} {:>3} {:>3} {:>3} "
        " {}\n",
        disk->name(), fmt::format("{}:{}", disk->major(), disk->minor()),
        format_size(disk->size_bytes()), l.logical_block_size, l.physical_block_size,
        sectors_bytes(l.max_io_sectors()), l.max_segments,
        format_size(l.max_segment_size),
        l.max_discard_sectors ? sectors_bytes(l.max_discard_sectors) : "-",
        l.max_write_zeroes_sectors ? sectors_bytes(l.max_write_zeroes_sectors) : "-",
        l.volatile_write_cache ? "yes" : "no", l.fua ? "yes" : "no",
        disk->read_only() ? "yes" : "no", disk->describe());
  }
}

}  // namespace

void add_disk_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "disk", "Make disks from device specs and list them with their limits");
  static std::vector<std::string> specs;
  static bool types = false;
  cmd->add_option("specs", specs, "Device specs: TYPE[:ARG][,KEY=VALUE...]");
  cmd->add_flag("--types", types, "List the device types and their options");
  cmd->footer(
      "Examples:\n"
      "  blkstack disk ram:64M null:size=1G,completion=deferred\n"
      "  blkstack disk ram:1G,bs=4096,name=scratch\n"
      "  blkstack disk --types");
  cmd->callback([cmd] {
    if (types) return print_types();
    if (specs.empty()) throw CLI::CallForHelp();
    print_disks(specs);
    (void)cmd;
  });
}

}  // namespace blkstack::cli
