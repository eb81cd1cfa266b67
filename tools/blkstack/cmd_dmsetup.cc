// blkstack dmsetup: mapped devices of a running `blkstack serve`, with
// dmsetup's verbs, options and output (docs/targets.md): create, load,
// clear, suspend, resume, remove, table, status, info, ls, message,
// targets. Tables come from --table, a file, or stdin, in dmsetup's lines.
#include <fmt/format.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>

#include "commands.h"
#include "control_client.h"

namespace blkstack::cli {
namespace {

using nlohmann::json;

struct DmArgs {
  std::string control;
  bool json = false;
  std::string name;
  std::string table;       // --table
  std::string table_file;  // positional TABLE_FILE
  bool notable = false;
  std::string uuid;
  bool noflush = false;
  bool nolockfs = false;  // accepted as dmsetup does; no file system to lock here
  bool inactive = false;
  std::string sector;
  std::vector<std::string> message;
};

// --table, else the file, else stdin (as dmsetup reads a table).
std::string read_table(const DmArgs& a) {
  if (!a.table.empty()) return a.table;
  std::string text;
  if (!a.table_file.empty()) {
    std::ifstream in(a.table_file);
    if (!in) {
      fmt::print(stderr, "blkstack dmsetup: cannot read table file {}\n", a.table_file);
      throw CLI::RuntimeError(1);
    }
    text.assign(std::istreambuf_iterator<char>(in), {});
  } else {
    text.assign(std::istreambuf_iterator<char>(std::cin), {});
  }
  return text;
}

void print_json(const json& r) {
  fmt::print("{}\n", r.dump(2, ' ', false, json::error_handler_t::replace));
}

// dmsetup table/status: the lines of one device, or "NAME: line" of each.
void print_lines(const json& r, bool one) {
  const json& list = r.at("devices");
  if (list.empty()) {
    fmt::print("No devices found\n");
    return;
  }
  for (const json& d : list) {
    std::istringstream lines(d.at("lines").get<std::string>());
    for (std::string line; std::getline(lines, line);) {
      if (one)
        fmt::print("{}\n", line);
      else
        fmt::print("{}: {}\n", d.at("name").get<std::string>(), line);
    }
  }
}

// dmsetup info's fields, in its order and alignment.
void print_info(const json& d) {
  const bool live = d.at("live_table").get<bool>();
  const bool inactive = d.at("inactive_table").get<bool>();
  std::string state = d.at("suspended").get<bool>() ? "SUSPENDED" : "ACTIVE";
  if (d.at("read_only").get<bool>()) state += " (READ-ONLY)";
  const char* tables = live && inactive ? "LIVE & INACTIVE"
                       : live           ? "LIVE"
                       : inactive       ? "INACTIVE"
                                        : "None";
  fmt::print("Name:              {}\n", d.at("name").get<std::string>());
  fmt::print("State:             {}\n", state);
  fmt::print("Read Ahead:        256\n");
  fmt::print("Tables present:    {}\n", tables);
  fmt::print("Open count:        {}\n", d.at("open_count").get<int>());
  fmt::print("Event number:      {}\n", d.at("event_nr").get<uint32_t>());
  fmt::print("Major, minor:      {}, {}\n", d.at("major").get<unsigned>(),
             d.at("minor").get<unsigned>());
  fmt::print("Number of targets: {}\n", d.at("targets").get<size_t>());
  const std::string uuid = d.at("uuid").get<std::string>();
  if (!uuid.empty()) fmt::print("UUID: {}\n", uuid);
}

using Action = void (*)(const DmArgs& a);

void create(const DmArgs& a) {
  json args = {{"name", a.name}};
  if (!a.notable) args["table"] = read_table(a);
  if (!a.uuid.empty()) args["uuid"] = a.uuid;
  const json r = control_call("dmsetup create", a.control, "dm-create", args);
  if (a.json) print_json(r);
}

void load(const DmArgs& a) {
  const json r = control_call("dmsetup load", a.control, "dm-load",
                              {{"name", a.name}, {"table", read_table(a)}});
  if (a.json) print_json(r);
}

void simple(const DmArgs& a, const char* cmd, const char* verb, json args) {
  args["name"] = a.name;
  const json r = control_call(cmd, a.control, verb, args);
  if (a.json) print_json(r);
}

void table_or_status(const DmArgs& a, bool status) {
  json args = json::object();
  if (!a.name.empty()) args["name"] = a.name;
  if (a.inactive) args["inactive"] = true;
  const json r = control_call(status ? "dmsetup status" : "dmsetup table", a.control,
                              status ? "dm-status" : "dm-table", args);
  if (a.json)
    print_json(r);
  else
    print_lines(r, !a.name.empty());
}

void info(const DmArgs& a) {
  json args = json::object();
  if (!a.name.empty()) args["name"] = a.name;
  const json r = control_call("dmsetup info", a.control, "dm-info", args);
  if (a.json) return print_json(r);
  const json& list = r.at("devices");
  if (list.empty()) fmt::print("No devices found\n");
  for (size_t i = 0; i < list.size(); ++i) {
    if (i) fmt::print("\n");
    print_info(list[i]);
  }
}

void ls(const DmArgs& a) {
  const json r = control_call("dmsetup ls", a.control, "dm-info", json::object());
  if (a.json) return print_json(r);
  if (r.at("devices").empty()) fmt::print("No devices found\n");
  for (const json& d : r.at("devices")) {
    fmt::print("{}\t({}:{})\n", d.at("name").get<std::string>(),
               d.at("major").get<unsigned>(), d.at("minor").get<unsigned>());
  }
}

void message(const DmArgs& a) {
  std::string text;
  for (const std::string& w : a.message) text += (text.empty() ? "" : " ") + w;
  const json r =
      control_call("dmsetup message", a.control, "dm-message",
                   {{"name", a.name}, {"sector", a.sector}, {"message", text}});
  if (a.json) return print_json(r);
  const std::string reply = r.at("reply").get<std::string>();
  if (!reply.empty()) fmt::print("{}\n", reply);
}

void targets(const DmArgs& a) {
  const json r = control_call("dmsetup targets", a.control, "dm-targets", json::object());
  if (a.json) return print_json(r);
  for (const json& t : r.at("targets")) {
    fmt::print("{:<16} {}\n", t.at("name").get<std::string>(),
               t.at("version").get<std::string>());
  }
}

CLI::App* verb(CLI::App& dm, const std::shared_ptr<DmArgs>& a, const char* name,
               const char* description, const char* example) {
  auto* cmd = dm.add_subcommand(name, description);
  add_client_options(*cmd, a->control, a->json);
  cmd->footer(fmt::format("Example:\n  {}", example));
  return cmd;
}

}  // namespace

void add_dmsetup_command(CLI::App& app) {
  auto* dm = app.add_subcommand(
      "dmsetup", "Mapped devices (device-mapper tables) of a running blkstack serve");
  dm->require_subcommand(1);
  dm->footer(
      "Examples:\n"
      "  blkstack dmsetup create vol --table '0 2097152 linear ram0 0'\n"
      "  echo '0 4194304 striped 2 128 ram0 0 ram1 0' | blkstack dmsetup load vol\n"
      "  blkstack dmsetup suspend vol && blkstack dmsetup resume vol\n"
      "  blkstack dmsetup table vol\n"
      "See docs/targets.md for the targets and their table lines.");
  auto a = std::make_shared<DmArgs>();
  const auto name_arg = [&](CLI::App* cmd, bool required) {
    auto* o = cmd->add_option("NAME", a->name, "The mapped device");
    if (required) o->required();
  };
  const auto table_args = [&](CLI::App* cmd) {
    cmd->add_option("TABLE_FILE", a->table_file, "Read the table from this file");
    cmd->add_option("--table", a->table,
                    "The table: lines 'start length target args...' (';' or newline "
                    "between lines); without it, TABLE_FILE or stdin");
  };
  {
    auto* cmd = verb(*dm, a, "create", "Create a mapped device (live on its table)",
                     "blkstack dmsetup create vol --table '0 2048 linear ram0 0'");
    name_arg(cmd, true);
    table_args(cmd);
    cmd->add_flag("-n,--notable", a->notable, "Create it without a table");
    cmd->add_option("-u,--uuid", a->uuid, "Its uuid");
    cmd->callback([a] { create(*a); });
  }
  {
    auto* cmd = verb(*dm, a, "load", "Load an inactive table (live after resume)",
                     "blkstack dmsetup load vol vol.table");
    name_arg(cmd, true);
    table_args(cmd);
    cmd->callback([a] { load(*a); });
  }
  {
    auto* cmd =
        verb(*dm, a, "clear", "Drop the inactive table", "blkstack dmsetup clear vol");
    name_arg(cmd, true);
    cmd->callback([a] { simple(*a, "dmsetup clear", "dm-clear", json::object()); });
  }
  {
    auto* cmd = verb(*dm, a, "suspend", "Stop new I/O and wait for the I/O in flight",
                     "blkstack dmsetup suspend --noflush vol");
    name_arg(cmd, true);
    cmd->add_flag("--noflush", a->noflush,
                  "Targets may keep the bios they hold for after the resume");
    cmd->add_flag("--nolockfs", a->nolockfs, "Accepted (no file system to freeze)");
    cmd->callback([a] {
      json args = json::object();
      if (a->noflush) args["noflush"] = true;
      simple(*a, "dmsetup suspend", "dm-suspend", args);
    });
  }
  {
    auto* cmd = verb(*dm, a, "resume", "Make the loaded table live and let I/O in",
                     "blkstack dmsetup resume vol");
    name_arg(cmd, true);
    cmd->callback([a] { simple(*a, "dmsetup resume", "dm-resume", json::object()); });
  }
  {
    auto* cmd =
        verb(*dm, a, "remove", "Remove a mapped device", "blkstack dmsetup remove vol");
    name_arg(cmd, true);
    cmd->callback([a] { simple(*a, "dmsetup remove", "dm-remove", json::object()); });
  }
  {
    auto* cmd = verb(*dm, a, "table", "Print the table lines (all devices without NAME)",
                     "blkstack dmsetup table vol");
    name_arg(cmd, false);
    cmd->add_flag("--inactive", a->inactive, "The loaded, inactive table");
    cmd->callback([a] { table_or_status(*a, false); });
  }
  {
    auto* cmd = verb(*dm, a, "status", "Print each target's status line",
                     "blkstack dmsetup status vol");
    name_arg(cmd, false);
    cmd->callback([a] { table_or_status(*a, true); });
  }
  {
    auto* cmd =
        verb(*dm, a, "info", "Print dmsetup info's fields", "blkstack dmsetup info vol");
    name_arg(cmd, false);
    cmd->callback([a] { info(*a); });
  }
  {
    auto* cmd = verb(*dm, a, "ls", "List the mapped devices", "blkstack dmsetup ls");
    cmd->callback([a] { ls(*a); });
  }
  {
    auto* cmd = verb(*dm, a, "message", "Send a message to the target at SECTOR",
                     "blkstack dmsetup message vol 0 mark one");
    name_arg(cmd, true);
    cmd->add_option("SECTOR", a->sector, "A sector inside the target")->required();
    cmd->add_option("MESSAGE", a->message, "The message words")->required();
    cmd->callback([a] { message(*a); });
  }
  {
    auto* cmd = verb(*dm, a, "targets", "List the target types and their versions",
                     "blkstack dmsetup targets");
    cmd->callback([a] { targets(*a); });
  }
}

}  // namespace blkstack::cli
