// The clients of a running `blkstack serve`'s control socket (docs/serve.md,
// "Subcommands"): ls, describe, stats, attr, add-device, remove-device,
// add-export, remove-export, reload, rescan. Each sends one request of the control
// protocol (src/serve/control_protocol.h) and prints the reply for people,
// or as it came with --json. An error reply is printed to stderr and exits 1.
#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "blkstack/device_spec.h"
#include "commands.h"
#include "control_client.h"
#include "serve/control_protocol.h"

namespace blkstack::cli {
namespace {

using nlohmann::json;
using serve::ControlError;

constexpr const char* kDefaultControl = "/run/blkstack.ctl";

// What every client subcommand takes.
struct ClientArgs {
  std::string control;  // --control, else $BLKSTACK_CONTROL, else the default
  bool json = false;
};

// A subcommand's parsed arguments, owned by its callback (so that the
// commands can be added to more than one CLI::App, as the tests do).
struct State {
  ClientArgs client;
  std::string a, b, c, d;  // its positional arguments and options, in order
};

[[noreturn]] void fail(std::string_view cmd, const std::string& why) {
  fmt::print(stderr, "blkstack {}: {}\n", cmd, why);
  throw CLI::RuntimeError(1);
}

std::string control_path(const ClientArgs& a) {
  if (!a.control.empty()) return a.control;
  const char* env = std::getenv("BLKSTACK_CONTROL");
  return env != nullptr && *env != '\0' ? env : kDefaultControl;
}

// One request, one reply over a fresh connection. Throws ControlError for
// an error reply; fails the command when the server cannot be reached.
json call(std::string_view cmd, const ClientArgs& a, std::string_view verb,
          const json& args) {
  const std::string path = control_path(a);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) fail(cmd, "control socket path too long");
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const std::string why = std::strerror(errno);
    if (fd >= 0) close(fd);
    fail(cmd,
         fmt::format("cannot connect to the control socket {}: {} (is blkstack serve "
                     "running with --control? give --control PATH or set "
                     "BLKSTACK_CONTROL)",
                     path, why));
  }
  const std::string request = serve::format_control_request(1, verb, args);
  std::string_view out = request;
  while (!out.empty()) {
    const ssize_t n = send(fd, out.data(), out.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(fd);
      fail(cmd, fmt::format("{}: sending the request: {}", path, std::strerror(errno)));
    }
    out.remove_prefix(static_cast<size_t>(n));
  }
  std::string in;
  size_t nl;
  while ((nl = in.find('\n')) == std::string::npos) {
    char buf[16384];
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(fd);
      fail(cmd,
           fmt::format("{}: the server closed the connection without a reply", path));
    }
    in.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  serve::ControlReply reply =
      serve::parse_control_reply(std::string_view(in).substr(0, nl));
  if (reply.error) throw *reply.error;
  return reply.result;
}

// Runs `verb` and prints its result: as JSON with --json, else with `human`.
void run(std::string_view cmd, const ClientArgs& a, std::string_view verb,
         const json& args, const std::function<void(const json&)>& human) {
  json result;
  try {
    result = call(cmd, a, verb, args);
  } catch (const ControlError& e) {
    fail(cmd, fmt::format("{} ({})", e.what(), e.code()));
  }
  if (a.json) {
    fmt::print("{}\n", result.dump(2, ' ', false, json::error_handler_t::replace));
  } else {
    human(result);
  }
}

// A JSON value as a table cell: strings bare, sizes in bytes for people.
std::string cell(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "-";
  if (v.is_boolean()) return v.get<bool>() ? "1" : "0";
  return v.dump();
}

std::string size_cell(const json& v) {
  return v.is_number_unsigned() ? format_size(v.get<uint64_t>()) : cell(v);
}

// Prints rows under a header, each column as wide as its widest cell, the
// last one unpadded (as lsblk does).
void print_table(const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size() && i < width.size(); ++i) {
      width[i] = std::max(width[i], r[i].size());
    }
  }
  auto line = [&](const std::vector<std::string>& r) {
    std::string s;
    for (size_t i = 0; i < r.size(); ++i) {
      s += i + 1 == r.size() ? r[i] : fmt::format("{:<{}} ", r[i], width[i]);
    }
    fmt::print("{}\n", s);
  };
  line(header);
  for (const auto& r : rows) line(r);
}

const json& field(const json& obj, const char* key) {
  static const json null;
  auto it = obj.find(key);
  return it == obj.end() ? null : *it;
}

std::vector<std::string> device_row(const json& d) {
  return {cell(field(d, "name")), cell(field(d, "driver")), size_cell(field(d, "size")),
          cell(field(d, "ro")), cell(field(d, "spec"))};
}

const std::vector<std::string> kDeviceHeader = {"NAME", "DRIVER", "SIZE", "RO", "SPEC"};
const std::vector<std::string> kExportHeader = {"EXPORT", "DEVICE", "TYPE", "CONNECTIONS",
                                                "DESCRIPTION"};

void print_list(const json& r) {
  std::vector<std::vector<std::string>> devices, exports;
  for (const json& d : field(r, "devices")) devices.push_back(device_row(d));
  for (const json& e : field(r, "exports")) {
    exports.push_back({cell(field(e, "name")), cell(field(e, "device")),
                       cell(field(e, "type")), cell(field(e, "connections")),
                       cell(field(e, "description"))});
  }
  print_table(kDeviceHeader, devices);
  fmt::print("\n");
  print_table(kExportHeader, exports);
}

// A partition table as sfdisk --json gives it, as rows like sfdisk -l's.
void print_partitions(const json& table) {
  if (!table.is_object()) return;
  const json& t = field(table, "partitiontable");
  fmt::print("label: {}\nid: {}\nsectorsize: {}\n", cell(field(t, "label")),
             cell(field(t, "id")), cell(field(t, "sectorsize")));
  if (t.contains("error")) fmt::print("error: {}\n", cell(field(t, "error")));
  for (const json& w : field(t, "warnings")) fmt::print("warning: {}\n", cell(w));
  std::vector<std::vector<std::string>> rows;
  for (const json& p : field(t, "partitions")) {
    rows.push_back({cell(field(p, "node")), cell(field(p, "start")),
                    cell(field(p, "size")), cell(field(p, "type")),
                    p.contains("name") ? cell(field(p, "name")) : ""});
  }
  if (!rows.empty()) print_table({"NODE", "START", "SECTORS", "TYPE", "NAME"}, rows);
}

void print_describe(const json& r) {
  for (auto& [key, value] : r.items()) {
    if (key == "attributes" || key == "partitiontable") continue;
    if (key == "size") {
      fmt::print("size: {} ({} bytes)\n", size_cell(value), cell(value));
    } else {
      fmt::print("{}: {}\n", key, cell(value));
    }
  }
  std::vector<std::vector<std::string>> rows;
  for (auto& [name, value] : field(r, "attributes").items()) {
    rows.push_back({name, cell(value)});
  }
  if (!rows.empty()) {
    fmt::print("\n");
    print_table({"ATTRIBUTE", "VALUE"}, rows);
  }
  if (field(r, "partitiontable").is_object()) {
    fmt::print("\n");
    print_partitions(field(r, "partitiontable"));
  }
}

// The diskstats fields most people look at, iostat-like; --json has all.
void print_stats(const json& r) {
  static constexpr const char* kColumns[] = {
      "read_ios",  "read_sectors", "write_ios", "write_sectors", "discard_ios",
      "flush_ios", "in_flight",    "io_ticks",  "time_in_queue"};
  std::vector<std::string> header = {"DEVICE"};
  for (const char* c : kColumns) header.push_back(c);
  std::vector<std::vector<std::string>> rows;
  for (const json& d : field(r, "devices")) {
    std::vector<std::string> row = {cell(field(d, "name"))};
    for (const char* c : kColumns) row.push_back(cell(field(field(d, "diskstats"), c)));
    rows.push_back(std::move(row));
  }
  print_table(header, rows);
  for (const json& d : field(r, "devices")) {
    const json& latency = field(d, "latency");
    if (!latency.is_object() || latency.empty()) continue;
    fmt::print("\n{} latency:\n", cell(field(d, "name")));
    for (auto& [dir, hist] : latency.items()) fmt::print("  {}: {}\n", dir, hist.dump());
  }
  std::vector<std::vector<std::string>> exports;
  for (const json& e : field(r, "exports")) {
    exports.push_back({cell(field(e, "name")), cell(field(e, "connections")),
                       cell(field(e, "requests"))});
  }
  if (!exports.empty()) {
    fmt::print("\n");
    print_table({"EXPORT", "CONNECTIONS", "REQUESTS"}, exports);
  }
}

std::string names(const json& list) {
  std::string out;
  for (const json& n : list) out += (out.empty() ? "" : ", ") + cell(n);
  return out.empty() ? "-" : out;
}

// --- the subcommands ----------------------------------------------------------

CLI::App* add_client(CLI::App& app, const char* name, const char* description,
                     ClientArgs& args) {
  auto* cmd = app.add_subcommand(name, description);
  cmd->add_option("--control", args.control,
                  fmt::format("The control socket of blkstack serve (default: "
                              "$BLKSTACK_CONTROL, else {})",
                              kDefaultControl))
      ->type_name("PATH");
  cmd->add_flag("--json", args.json, "Print the server's result object as JSON");
  return cmd;
}

}  // namespace

void add_client_options(CLI::App& cmd, std::string& control, bool& json_out) {
  cmd.add_option("--control", control,
                 fmt::format("The control socket of blkstack serve (default: "
                             "$BLKSTACK_CONTROL, else {})",
                             kDefaultControl))
      ->type_name("PATH");
  cmd.add_flag("--json", json_out, "Print the server's result object as JSON");
}

json control_call(std::string_view cmd, const std::string& control, std::string_view verb,
                  const json& args) {
  try {
    return call(cmd, ClientArgs{control, false}, verb, args);
  } catch (const ControlError& e) {
    fail(cmd, fmt::format("{} ({})", e.what(), e.code()));
  }
}

void add_control_commands(CLI::App& app) {
  {
    auto st = std::make_shared<State>();
    ClientArgs& args = st->client;
    auto* cmd =
        add_client(app, "ls", "List the devices and exports of a running server", args);
    cmd->footer("Example:\n  blkstack ls --control /run/blkstack.ctl");
    cmd->callback([st] { run("ls", st->client, "list", json::object(), print_list); });
  }
  {
    auto st = std::make_shared<State>();
    ClientArgs& args = st->client;
    std::string& device = st->a;
    auto* cmd = add_client(app, "describe", "Show a device and all its attributes", args);
    cmd->add_option("DEV", device, "The device")->required();
    cmd->footer("Example:\n  blkstack describe disk0");
    cmd->callback([st] {
      run("describe", st->client, "describe", {{"device", st->a}}, print_describe);
    });
  }
  {
    auto st = std::make_shared<State>();
    ClientArgs& args = st->client;
    std::string& device = st->a;
    auto* cmd = add_client(
        app, "stats", "Statistics: diskstats fields, latency, export connections", args);
    cmd->add_option("DEV", device, "Only this device (default: all)");
    cmd->footer("Example:\n  blkstack stats disk0 --json");
    cmd->callback([st] {
      json a = json::object();
      if (!st->a.empty()) a["device"] = st->a;
      run("stats", st->client, "stats", a, print_stats);
    });
  }
  {
    auto st = std::make_shared<State>();
    ClientArgs& args = st->client;
    std::string& device = st->a;
    std::string& attribute = st->b;
    std::string& value = st->c;
    auto* cmd = add_client(
        app, "attr", "List, read or write a device's attributes by their sysfs names",
        args);
    cmd->add_option("DEV", device, "The device")->required();
    cmd->add_option("ATTR", attribute,
                    "An attribute relative to /sys/block/DEV/ (queue/scheduler, ...)");
    cmd->add_option("VALUE", value, "Write this value (as echo VALUE > ATTR)");
    cmd->footer(
        "Examples:\n"
        "  blkstack attr disk0                                 every attribute\n"
        "  blkstack attr disk0 queue/scheduler                 [none] mq-deadline\n"
        "  blkstack attr disk0 queue/scheduler mq-deadline     switch schedulers");
    cmd->callback([st, cmd] {
      if (st->b.empty()) {
        run("attr", st->client, "attributes", {{"device", st->a}}, [](const json& r) {
          std::vector<std::vector<std::string>> rows;
          for (const json& a : field(r, "attributes")) {
            rows.push_back({cell(field(a, "name")),
                            field(a, "writable") == true ? "rw" : "ro",
                            cell(field(a, "value"))});
          }
          print_table({"ATTRIBUTE", "MODE", "VALUE"}, rows);
        });
      } else if (cmd->count("VALUE") == 0) {
        run("attr", st->client, "get", {{"device", st->a}, {"attribute", st->b}},
            [](const json& r) { fmt::print("{}\n", cell(field(r, "value"))); });
      } else {
        run("attr", st->client, "set",
            {{"device", st->a}, {"attribute", st->b}, {"value", st->c}},
            [](const json& r) { fmt::print("{}\n", cell(field(r, "value"))); });
      }
    });
  }
  {
    auto st = std::make_shared<State>();
    ClientArgs& args = st->client;
    std::string& name = st->a;
    std::string& spec = st->b;
    auto* cmd =
        add_client(app, "add-device", "Create a device in a running server", args);
    cmd->add_option("NAME", name, "Its name")->required();
    cmd->add_option("SPEC", spec, "A device spec, as `blkstack disk` takes")->required();
    cmd->footer("Example:\n  blkstack add-device scratch ram:1G");
    cmd->callback([st] {
      run("add-device", st->client, "add-device", {{"name", st->a}, {"spec", st->b}},
          [](const json& r) { print_table(kDeviceHeader, {device_row(r)}); });
    });
  }
  {
    auto st = std::make_shared<State>();
    ClientArgs& args = st->client;
    std::string& name = st->a;
    auto* cmd = add_client(app, "remove-device",
                           "Remove a device (refused while an export uses it)", args);
    cmd->add_option("NAME", name, "The device")->required();
    cmd->footer("Example:\n  blkstack remove-device scratch");
    cmd->callback([st] {
      run("remove-device", st->client, "remove-device", {{"name", st->a}},
          [st](const json&) { fmt::print("removed device {}\n", st->a); });
    });
  }
  {
    auto st = std::make_shared<State>();
    ClientArgs& args = st->client;
    std::string& name = st->a;
    std::string& device = st->b;
    std::string& type = st->c;
    std::string& description = st->d;
    auto* cmd =
        add_client(app, "add-export", "Export a device of a running server", args);
    cmd->add_option("NAME", name, "The export's name")->required();
    cmd->add_option("DEVICE", device, "The device it serves")->required();
    cmd->add_option("--type", type, "nbd or fuse (default: nbd)")
        ->check(CLI::IsMember({"nbd", "fuse"}));
    cmd->add_option("--description", description, "Shown to NBD clients");
    cmd->footer("Example:\n  blkstack add-export scratch scratch --type fuse");
    cmd->callback([st] {
      json a = {{"name", st->a}, {"device", st->b}};
      if (!st->c.empty()) a["type"] = st->c;
      if (!st->d.empty()) a["description"] = st->d;
      run("add-export", st->client, "add-export", a, [](const json& e) {
        print_table(
            kExportHeader,
            {{cell(field(e, "name")), cell(field(e, "device")), cell(field(e, "type")),
              cell(field(e, "connections")), cell(field(e, "description"))}});
      });
    });
  }
  {
    auto st = std::make_shared<State>();
    ClientArgs& args = st->client;
    std::string& name = st->a;
    auto* cmd = add_client(
        app, "remove-export",
        "Stop an export: no new connections, in-flight I/O drains, clients disconnect",
        args);
    cmd->add_option("NAME", name, "The export")->required();
    cmd->footer("Example:\n  blkstack remove-export scratch");
    cmd->callback([st] {
      run("remove-export", st->client, "remove-export", {{"name", st->a}},
          [st](const json&) { fmt::print("removed export {}\n", st->a); });
    });
  }
  {
    auto st = std::make_shared<State>();
    ClientArgs& args = st->client;
    std::string& device = st->a;
    auto* cmd = add_client(app, "rescan",
                           "Read a device's partition table again (BLKRRPART); refused "
                           "while a partition is open or claimed",
                           args);
    cmd->add_option("DEV", device, "The device")->required();
    cmd->footer("Example:\n  blkstack rescan disk0      # then export disk0p1");
    cmd->callback([st] {
      run("rescan", st->client, "rescan", {{"device", st->a}}, [st](const json& r) {
        if (!field(r, "partitiontable").is_object()) {
          fmt::print("{}: no partition table\n", st->a);
        } else {
          print_partitions(r);
        }
      });
    });
  }
  {
    auto st = std::make_shared<State>();
    ClientArgs& args = st->client;
    auto* cmd =
        add_client(app, "reload",
                   "Reload the server's config (as SIGHUP) and show what changed", args);
    cmd->footer("Example:\n  blkstack reload");
    cmd->callback([st] {
      run("reload", st->client, "reload", json::object(), [](const json& r) {
        for (const char* k : {"added", "removed", "changed", "unchanged"}) {
          fmt::print("{:<10} {}\n", std::string(k) + ":", names(field(r, k)));
        }
      });
    });
  }
}

}  // namespace blkstack::cli
