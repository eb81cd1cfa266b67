#include "serve/control_verbs.h"

#include <fmt/format.h>

#include <charconv>
#include <map>
#include <set>
#include <sstream>

#include "blkstack/device_spec.h"
#include "blkstack/disk.h"
#include "blkstack/driver/target.h"
#include "blkstack/error.h"
#include "blkstack/version.h"
#include "dm/mapped_device.h"
#include "serve/disk_attributes.h"
#include "serve/partition_report.h"
#include "serve/service.h"

namespace blkstack::serve {
namespace {

using nlohmann::json;
namespace code = control_code;

// --- arguments -----------------------------------------------------------------

// A verb's arguments: each read at most once, and any left over refused,
// so a misspelt argument is an error rather than silently ignored.
class Args {
 public:
  Args(const ControlRequest& req) : args_(req.args), verb_(req.verb) {}

  std::string str(const char* name) {
    const json* v = find(name);
    if (!v)
      throw ControlError(code::kBadRequest, fmt::format("{}: needs \"{}\"", verb_, name));
    return string_of(name, *v);
  }
  std::string str_or(const char* name, std::string fallback) {
    const json* v = find(name);
    return v ? string_of(name, *v) : fallback;
  }
  bool flag(const char* name) {
    const json* v = find(name);
    if (!v) return false;
    if (!v->is_boolean())
      throw ControlError(code::kBadRequest,
                         fmt::format("{}: \"{}\" must be true or false", verb_, name));
    return v->get<bool>();
  }
  // Call once all arguments were read.
  void done() const {
    for (const auto& [k, v] : args_.items())
      if (!used_.count(k))
        throw ControlError(code::kBadRequest,
                           fmt::format("{}: unknown argument \"{}\"", verb_, k));
  }

 private:
  const json* find(const char* name) {
    used_.insert(name);
    auto it = args_.find(name);
    return it == args_.end() ? nullptr : &*it;
  }
  std::string string_of(const char* name, const json& v) const {
    if (!v.is_string())
      throw ControlError(code::kBadRequest,
                         fmt::format("{}: \"{}\" must be a string", verb_, name));
    return v.get<std::string>();
  }

  const json& args_;
  std::string verb_;
  std::set<std::string> used_;
};

// --- results -------------------------------------------------------------------

std::string driver_of(const std::string& spec) {
  try {
    return parse_device_spec(spec).type;
  } catch (const Error&) {
    return "";
  }
}

json device_entry(const Service::DeviceInfo& d) {
  return {{"name", d.name},
          {"spec", d.spec},
          {"size", d.disk->size_bytes()},
          {"ro", d.disk->read_only()},
          {"driver", d.spec.empty() ? std::string("device-mapper") : driver_of(d.spec)}};
}

json export_entry(const Service::ExportInfo& e) {
  return {{"name", e.name},
          {"device", e.device},
          {"type", e.type},
          {"description", e.description},
          {"connections", e.connections}};
}

Service::DeviceInfo find_device(Service& s, const std::string& name) {
  for (Service::DeviceInfo& d : s.devices())
    if (d.name == name) return d;
  throw ControlError(code::kNotFound, fmt::format("no device '{}'", name));
}

// The fields of /sys/block/DEV/stat by their names in
// Documentation/ABI/stable/sysfs-block; times in milliseconds.
json diskstats(const DiskStats& s) {
  const auto ms = [](uint64_t ns) { return ns / 1000000; };
  json j;
  const char* kGroup[] = {"read", "write", "discard"};
  for (int g = kStatRead; g <= kStatDiscard; ++g) {
    j[fmt::format("{}_ios", kGroup[g])] = s.ios[g];
    j[fmt::format("{}_merges", kGroup[g])] = s.merges[g];
    j[fmt::format("{}_sectors", kGroup[g])] = s.sectors[g];
    j[fmt::format("{}_ticks", kGroup[g])] = ms(s.nsecs[g]);
  }
  j["in_flight"] = s.in_flight;
  j["io_ticks"] = s.io_ticks_ms;
  j["time_in_queue"] = s.time_in_queue_ms;
  j["flush_ios"] = s.ios[kStatFlush];
  j["flush_ticks"] = ms(s.nsecs[kStatFlush]);
  return j;
}

// Per kind of operation that has any: the completion latency histogram as
// the disk keeps it, power-of-two buckets; each non-empty bucket with its
// exclusive upper bound in ns ("lt_ns"; null for the last, open one).
json latency(const DiskStats& s) {
  const char* kGroup[] = {"read", "write", "discard", "flush"};
  json j = json::object();
  for (int g = 0; g < kStatGroups; ++g) {
    json buckets = json::array();
    uint64_t total = 0;
    for (unsigned k = 0; k < DiskStats::kLatencyBuckets; ++k) {
      const uint64_t n = s.latency[g][k];
      if (n == 0) continue;
      total += n;
      json b = {{"count", n}};
      b["lt_ns"] =
          k + 1 < DiskStats::kLatencyBuckets ? json(uint64_t{1} << k) : json(nullptr);
      buckets.push_back(std::move(b));
    }
    if (total) j[kGroup[g]] = {{"count", total}, {"buckets", std::move(buckets)}};
  }
  return j;
}

json reload_result(const ReloadResult& r) {
  return {{"added", r.added},
          {"removed", r.removed},
          {"changed", r.changed},
          {"unchanged", r.unchanged}};
}

// --- the verbs -------------------------------------------------------------------

using Verb = json (*)(Service&, Args&);

json hello(Service&, Args& a) {
  a.done();
  return {{"protocol", kControlProtocolVersion},
          {"version", BLKSTACK_VERSION_STRING},
          {"verbs", control_verbs()}};
}

json list(Service& s, Args& a) {
  a.done();
  json devices = json::array(), exports = json::array();
  for (const Service::DeviceInfo& d : s.devices()) devices.push_back(device_entry(d));
  for (const Service::ExportInfo& e : s.exports()) exports.push_back(export_entry(e));
  return {{"devices", std::move(devices)}, {"exports", std::move(exports)}};
}

json describe(Service& s, Args& a) {
  const std::string name = a.str("device");
  a.done();
  const Service::DeviceInfo d = find_device(s, name);
  json j = device_entry(d);
  json attrs = json::object();
  for (const DiskAttribute& x : list_disk_attributes(*d.disk)) attrs[x.name] = x.value;
  j["attributes"] = std::move(attrs);
  // sfdisk --json's object, as `blkstack part` prints it (null: no table).
  j["partitiontable"] = json(partition_table_json(*d.disk));
  return j;
}

// BLKRRPART: reads the table again; busy while a partition is open (an
// export of one keeps it open) or claimed.
json rescan(Service& s, Args& a) {
  const std::string name = a.str("device");
  a.done();
  const Service::DeviceInfo d = find_device(s, name);
  d.disk->rescan_partitions();
  json j = json(partition_table_json(*d.disk));
  return j.is_null() ? json{{"partitiontable", nullptr}} : j;
}

json add_device(Service& s, Args& a) {
  const std::string name = a.str("name"), spec = a.str("spec");
  a.done();
  s.add_device(name, spec);
  return device_entry(find_device(s, name));
}

json remove_device(Service& s, Args& a) {
  const std::string name = a.str("name");
  a.done();
  s.remove_device(name);
  return json::object();
}

json add_export(Service& s, Args& a) {
  const std::string name = a.str("name"), device = a.str("device");
  const std::string type = a.str_or("type", "nbd");
  const std::string description = a.str_or("description", "");
  a.done();
  s.add_export(name, device, type, description);
  for (const Service::ExportInfo& e : s.exports())
    if (e.name == name && e.type == type) return export_entry(e);
  throw ControlError(code::kFailed, fmt::format("export '{}' did not appear", name));
}

json remove_export(Service& s, Args& a) {
  const std::string name = a.str("name");
  a.done();
  s.remove_export(name);
  return json::object();
}

json stats(Service& s, Args& a) {
  const std::string only = a.str_or("device", "");
  a.done();
  json devices = json::array();
  bool found = only.empty();
  for (const Service::DeviceInfo& d : s.devices()) {
    if (!only.empty() && d.name != only) continue;
    found = true;
    const DiskStats st = d.disk->stats();
    devices.push_back(
        {{"name", d.name}, {"diskstats", diskstats(st)}, {"latency", latency(st)}});
  }
  if (!found) throw ControlError(code::kNotFound, fmt::format("no device '{}'", only));
  json exports = json::array();
  for (const Service::ExportInfo& e : s.exports()) {
    if (!only.empty() && e.device != only) continue;
    exports.push_back({{"name", e.name},
                       {"type", e.type},
                       {"connections", e.connections},
                       {"requests", e.requests}});
  }
  return {{"devices", std::move(devices)}, {"exports", std::move(exports)}};
}

json attributes(Service& s, Args& a) {
  const std::string name = a.str("device");
  a.done();
  const Service::DeviceInfo d = find_device(s, name);
  json list = json::array();
  for (const DiskAttribute& x : list_disk_attributes(*d.disk))
    list.push_back({{"name", x.name}, {"writable", x.writable}, {"value", x.value}});
  return {{"attributes", std::move(list)}};
}

json get(Service& s, Args& a) {
  const std::string name = a.str("device"), attr = a.str("attribute");
  a.done();
  const Service::DeviceInfo d = find_device(s, name);
  return {{"value", read_disk_attribute(*d.disk, attr)}};
}

json set(Service& s, Args& a) {
  const std::string name = a.str("device"), attr = a.str("attribute");
  const std::string value = a.str("value");
  a.done();
  const Service::DeviceInfo d = find_device(s, name);
  return {{"value", write_disk_attribute(*d.disk, attr, value)}};
}

json reload(Service& s, Args& a) {
  a.done();
  return reload_result(s.reload());
}

// --- mapped devices (dmsetup's verbs) -----------------------------------------

// The mapped devices: `name`'s, or every one (sorted by name).
std::vector<MappedDevice*> mapped_devices(Service& s, const std::string& name) {
  if (!name.empty()) return {&s.mapped(name)};
  std::vector<MappedDevice*> out;
  for (const Service::DeviceInfo& d : s.devices()) {
    if (MappedDevice* md = MappedDevice::of(*d.disk)) out.push_back(md);
  }
  return out;
}

json dm_info(MappedDevice& md) {
  const Disk& d = md.disk();
  return {{"name", md.name()},
          {"uuid", md.uuid()},
          {"suspended", md.suspended()},
          {"read_only", d.read_only()},
          {"live_table", md.has_live()},
          {"inactive_table", md.has_inactive()},
          {"open_count", d.part0().holder().empty() ? 0 : 1},
          {"event_nr", md.event_nr()},
          {"major", d.major()},
          {"minor", d.minor()},
          {"targets", md.live_targets()},
          {"size", d.size_bytes()},
          {"devices", md.lower_devices()}};
}

json dm_create(Service& s, Args& a) {
  const std::string name = a.str("name");
  const std::string table = a.str_or("table", "");
  const std::string uuid = a.str_or("uuid", "");
  a.done();
  s.dm_create(name, uuid, table);
  return dm_info(s.mapped(name));
}

json dm_load(Service& s, Args& a) {
  const std::string name = a.str("name"), table = a.str("table");
  a.done();
  MappedDevice& md = s.mapped(name);
  md.load(table);
  return dm_info(md);
}

json dm_clear(Service& s, Args& a) {
  const std::string name = a.str("name");
  a.done();
  MappedDevice& md = s.mapped(name);
  md.clear_inactive();
  return dm_info(md);
}

json dm_suspend(Service& s, Args& a) {
  const std::string name = a.str("name");
  const bool noflush = a.flag("noflush");
  a.done();
  MappedDevice& md = s.mapped(name);
  md.suspend(noflush);
  return dm_info(md);
}

json dm_resume(Service& s, Args& a) {
  const std::string name = a.str("name");
  a.done();
  s.dm_resume(name);
  return dm_info(s.mapped(name));
}

json dm_remove(Service& s, Args& a) {
  const std::string name = a.str("name");
  a.done();
  s.mapped(name);  // not_found unless it is a mapped device
  s.remove_device(name);
  return json::object();
}

// table, status and info of one mapped device or all: {"devices": [...]}.
json dm_lines(Service& s, Args& a, bool status) {
  const std::string name = a.str_or("name", "");
  const bool inactive = !status && a.flag("inactive");
  a.done();
  json list = json::array();
  for (MappedDevice* md : mapped_devices(s, name)) {
    list.push_back({{"name", md->name()},
                    {"lines", status ? md->status_text() : md->table_text(inactive)}});
  }
  return {{"devices", std::move(list)}};
}
json dm_table(Service& s, Args& a) { return dm_lines(s, a, false); }
json dm_status(Service& s, Args& a) { return dm_lines(s, a, true); }

json dm_info_verb(Service& s, Args& a) {
  const std::string name = a.str_or("name", "");
  a.done();
  json list = json::array();
  for (MappedDevice* md : mapped_devices(s, name)) list.push_back(dm_info(*md));
  return {{"devices", std::move(list)}};
}

json dm_message(Service& s, Args& a) {
  const std::string name = a.str("name"), sector = a.str("sector");
  const std::string message = a.str("message");
  a.done();
  uint64_t at = 0;
  auto [p, ec] = std::from_chars(sector.data(), sector.data() + sector.size(), at);
  if (ec != std::errc() || p != sector.data() + sector.size())
    throw ControlError(code::kInvalidArgument,
                       fmt::format("dm-message: bad sector '{}'", sector));
  std::vector<std::string> argv;
  std::istringstream words(message);
  for (std::string w; words >> w;) argv.push_back(w);
  return {{"reply", s.mapped(name).message(at, argv)}};
}

json dm_targets(Service&, Args& a) {
  a.done();
  json list = json::array();
  for (const TargetType* t : target_types()) {
    list.push_back({{"name", t->name},
                    {"version", fmt::format("v{}.{}.{}", t->version[0], t->version[1],
                                            t->version[2])}});
  }
  return {{"targets", std::move(list)}};
}

const std::map<std::string, Verb, std::less<>>& verbs() {
  static const std::map<std::string, Verb, std::less<>> table = {
      {"hello", hello},
      {"list", list},
      {"describe", describe},
      {"add-device", add_device},
      {"remove-device", remove_device},
      {"add-export", add_export},
      {"remove-export", remove_export},
      {"stats", stats},
      {"attributes", attributes},
      {"get", get},
      {"set", set},
      {"reload", reload},
      {"rescan", rescan},
      {"dm-create", dm_create},
      {"dm-load", dm_load},
      {"dm-clear", dm_clear},
      {"dm-suspend", dm_suspend},
      {"dm-resume", dm_resume},
      {"dm-remove", dm_remove},
      {"dm-table", dm_table},
      {"dm-status", dm_status},
      {"dm-info", dm_info_verb},
      {"dm-message", dm_message},
      {"dm-targets", dm_targets},
  };
  return table;
}

}  // namespace

std::vector<std::string> control_verbs() {
  std::vector<std::string> names;
  for (const auto& [name, fn] : verbs()) names.push_back(name);
  return names;
}

ControlHandler make_control_handler(Service& service) {
  return [&service](const ControlRequest& req) -> json {
    auto it = verbs().find(req.verb);
    if (it == verbs().end())
      throw ControlError(code::kUnknownVerb,
                         fmt::format("unknown verb \"{}\" (known: {})", req.verb,
                                     fmt::join(control_verbs(), ", ")));
    Args args(req);
    try {
      return it->second(service, args);
    } catch (const ControlError&) {
      throw;
    } catch (const NotFoundError& e) {
      throw ControlError(code::kNotFound, e.what());
    } catch (const BusyError& e) {
      throw ControlError(code::kBusy, e.what());
    } catch (const ConfigError& e) {
      throw ControlError(code::kInvalidArgument, e.what());
    } catch (const Error& e) {
      throw ControlError(code::kFailed, e.what());
    }
  };
}

}  // namespace blkstack::serve
