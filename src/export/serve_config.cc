#include "export/serve_config.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "blkstack/device_spec.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "dm/mapped_device.h"
#include "export/export_table.h"

namespace blkstack {
namespace {

std::string where(const std::string& source, const toml::source_region& r) {
  return fmt::format("{}:{}", source, r.begin.line);
}

[[noreturn]] void fail(const std::string& source, const toml::node& n,
                       std::string_view key, std::string_view why) {
  throw ConfigError(fmt::format("{}: key '{}': {}", where(source, n.source()), key, why));
}

std::string get_string(const std::string& source, const toml::node& n,
                       std::string_view key) {
  const auto* s = n.as_string();
  if (!s) fail(source, n, key, "expected a string");
  return s->get();
}

std::vector<std::string> get_strings(const std::string& source, const toml::node& n,
                                     std::string_view key) {
  const toml::array* a = n.as_array();
  if (!a) fail(source, n, key, "expected an array of strings, e.g. [\"...\"]");
  std::vector<std::string> out;
  for (const toml::node& item : *a) out.push_back(get_string(source, item, key));
  return out;
}

unsigned get_uint(const std::string& source, const toml::node& n, std::string_view key,
                  int64_t lo, int64_t hi) {
  const auto* i = n.as_integer();
  if (!i || i->get() < lo || i->get() > hi)
    fail(source, n, key, fmt::format("expected an integer from {} to {}", lo, hi));
  return static_cast<unsigned>(i->get());
}

// An octal permission string such as "0660" (a string: TOML has no octal
// that reads like chmod's).
unsigned get_mode(const std::string& source, const toml::node& n, std::string_view key) {
  const std::string s = get_string(source, n, key);
  unsigned mode = 0;
  bool okay = !s.empty() && s.size() <= 4;
  for (char ch : s) {
    okay &= ch >= '0' && ch <= '7';
    mode = mode * 8 + static_cast<unsigned>(ch - '0');
  }
  if (!okay || (mode & 0600) != 0600)
    fail(source, n, key,
         "expected octal permission bits as a string, at least owner read-write, "
         "e.g. \"0600\" or \"0660\"");
  return mode;
}

void parse_server(const std::string& source, const toml::table& t, ServeConfig& c) {
  for (auto&& [k, v] : t) {
    const std::string key = "server." + std::string(k.str());
    if (k == "sockets") {
      c.sockets = get_strings(source, v, key);
    } else if (k == "listen") {
      c.listen = get_strings(source, v, key);
    } else if (k == "threads") {
      c.threads = get_uint(source, v, key, 1, 256);
    } else if (k == "coalesce_us") {
      c.coalesce_us = get_uint(source, v, key, 0, kMaxCoalesceUs);
    } else if (k == "fuse") {
      c.fuse_mountpoint = get_string(source, v, key);
    } else if (k == "fuse_threads") {
      c.fuse_threads = get_uint(source, v, key, 1, 256);
    } else if (k == "reload_disconnects") {
      const auto* b = v.as_boolean();
      if (!b) fail(source, v, key, "expected true or false");
      c.reload_disconnects = b->get();
    } else if (k == "control") {
      c.control = get_string(source, v, key);
      if (c.control.empty()) fail(source, v, key, "expected a socket path");
    } else if (k == "control_mode") {
      c.control_mode = get_mode(source, v, key);
    } else {
      fail(source, v, key,
           "unknown key (known: sockets, listen, threads, coalesce_us, fuse, "
           "fuse_threads, reload_disconnects, control, control_mode)");
    }
  }
}

// Each [[device]] or [[export]] entry as a table, with its position.
template <class Fn>
void for_each_entry(const std::string& source, const toml::node& n, std::string_view what,
                    Fn&& fn) {
  const toml::array* a = n.as_array();
  if (!a) fail(source, n, what, fmt::format("expected [[{}]] tables", what));
  for (const toml::node& item : *a) {
    const toml::table* t = item.as_table();
    if (!t) fail(source, item, what, fmt::format("expected [[{}]] tables", what));
    fn(*t);
  }
}

void require(const std::string& source, const toml::table& t, std::string_view section,
             std::string_view key, const std::string& value) {
  if (value.empty()) {
    throw ConfigError(fmt::format("{}: [[{}]] needs key '{}'", where(source, t.source()),
                                  section, key));
  }
}

}  // namespace

ServeConfig parse_serve_config(std::string_view text, const std::string& source) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    throw ConfigError(
        fmt::format("{}:{}: {}", source, e.source().begin.line, e.description()));
  }
  ServeConfig c;
  for (auto&& [k, v] : root) {
    if (k == "server") {
      const toml::table* t = v.as_table();
      if (!t) fail(source, v, "server", "expected a [server] table");
      parse_server(source, *t, c);
    } else if (k == "device") {
      for_each_entry(source, v, "device", [&](const toml::table& t) {
        DeviceConfig d;
        d.where = where(source, t.source());
        for (auto&& [dk, dv] : t) {
          const std::string key = "device." + std::string(dk.str());
          if (dk == "name")
            d.name = get_string(source, dv, key);
          else if (dk == "spec")
            d.spec = get_string(source, dv, key);
          else if (dk == "table")
            d.table = get_string(source, dv, key);
          else if (dk == "uuid")
            d.uuid = get_string(source, dv, key);
          else
            fail(source, dv, key, "unknown key (known: name, spec, table, uuid)");
        }
        require(source, t, "device", "name", d.name);
        // A device is made from a spec, or mapped by a table (src/dm/).
        if (!t.contains("table")) require(source, t, "device", "spec", d.spec);
        if (t.contains("spec") && t.contains("table")) {
          fail(source, t, "device",
               fmt::format("device '{}': give either spec or table", d.name));
        }
        if (t.contains("spec")) require(source, t, "device", "spec", d.spec);
        if (t.contains("uuid") && !t.contains("table")) {
          fail(source, t, "device.uuid",
               "only a mapped device (with a table) has a uuid");
        }
        c.devices.push_back(std::move(d));
      });
    } else if (k == "export") {
      for_each_entry(source, v, "export", [&](const toml::table& t) {
        ExportConfig e;
        e.where = where(source, t.source());
        bool named = false;
        for (auto&& [ek, ev] : t) {
          const std::string key = "export." + std::string(ek.str());
          if (ek == "name") {
            e.name = get_string(source, ev, key);
            named = true;
          } else if (ek == "device") {
            e.device = get_string(source, ev, key);
          } else if (ek == "type") {
            e.type = get_string(source, ev, key);
            if (e.type != "nbd" && e.type != "fuse")
              fail(source, ev, key, "expected \"nbd\" or \"fuse\"");
          } else if (ek == "description") {
            e.description = get_string(source, ev, key);
          } else {
            fail(source, ev, key, "unknown key (known: name, device, type, description)");
          }
        }
        if (!named) {
          throw ConfigError(fmt::format("{}: [[export]] needs key 'name'", e.where));
        }
        require(source, t, "export", "device", e.device);
        c.exports.push_back(std::move(e));
      });
    } else {
      fail(source, v, k.str(),
           "unknown section (known: [server], [[device]], [[export]])");
    }
  }
  return c;
}

ServeConfig load_serve_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(fmt::format("{}: cannot open the config file", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_serve_config(ss.str(), path);
}

void add_cli_export(ServeConfig& config, std::string_view arg) {
  const size_t eq = arg.find('=');
  if (eq == std::string_view::npos || eq + 1 == arg.size()) {
    throw ConfigError(
        fmt::format("--export '{}': expected NAME=SPEC, e.g. disk=ram:1G", arg));
  }
  DeviceConfig d;
  d.name = std::string(arg.substr(0, eq));
  d.spec = std::string(arg.substr(eq + 1));
  d.where = fmt::format("--export {}", arg);
  ExportConfig e;
  e.name = d.name;
  e.device = d.name;
  e.where = d.where;
  config.devices.push_back(std::move(d));
  config.exports.push_back(std::move(e));
}

std::shared_ptr<const ExportTable> build_exports(const ServeConfig& config,
                                                 DiskRegistry& registry,
                                                 std::string_view type) {
  // Device name -> disk, for the exports to refer to.
  std::map<std::string, std::shared_ptr<Disk>, std::less<>> devices;
  for (const DeviceConfig& d : config.devices) {
    if (devices.count(d.name)) {
      throw ConfigError(fmt::format("{}: device '{}' is defined twice", d.where, d.name));
    }
    if (auto disk = registry.find(d.name)) {
      devices[d.name] = disk;  // kept across reloads, with its data
      continue;
    }
    try {
      if (d.mapped()) {
        MappedDevice::create(registry, d.name, d.uuid, d.table);
        devices[d.name] = registry.get(d.name);
        continue;
      }
      // The disk takes the device's name unless the spec names it itself.
      const DeviceSpec spec = parse_device_spec(d.spec);
      bool has_name = false;
      for (const auto& [k, v] : spec.options) has_name |= k == "name";
      devices[d.name] = registry.create(has_name ? d.spec : d.spec + ",name=" + d.name);
    } catch (const ConfigError&) {
      throw;
    } catch (const Error& e) {
      throw ConfigError(fmt::format("{}: device '{}': {}", d.where, d.name, e.what()));
    }
  }
  std::vector<Export> exports;
  for (const ExportConfig& e : config.exports) {
    if (e.type != type) continue;
    // A device, or a partition of one's disk ("ram0p1"), opened.
    std::shared_ptr<BlockDevice> bdev;
    if (auto it = devices.find(e.device); it != devices.end())
      bdev = Disk::whole(it->second);
    for (auto it = devices.begin(); !bdev && it != devices.end(); ++it)
      bdev = Disk::open_partition(it->second, e.device);
    if (!bdev) {
      throw ConfigError(fmt::format("{}: export '{}': no device named '{}'", e.where,
                                    e.name, e.device));
    }
    exports.push_back(Export{e.name, e.description, std::move(bdev)});
  }
  try {
    return std::make_shared<const ExportTable>(std::move(exports));
  } catch (const Error& e) {
    throw ConfigError(e.what());
  }
}

}  // namespace blkstack
