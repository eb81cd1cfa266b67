#include "serve/service.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>
#include <thread>

#include "blkstack/block_device.h"
#include "blkstack/block_handle.h"
#include "blkstack/device_factory.h"
#include "blkstack/device_spec.h"
#include "blkstack/disk.h"
#include "blkstack/error.h"
#include "export/export_table.h"
#if BLKSTACK_WITH_FUSE
#include "export/fuse/fuse_export.h"
#include "export/fuse/fuse_fs.h"
#endif
#include "dm/mapped_device.h"
#include "export/log.h"
#include "export/nbd/server.h"
#include "serve/control_server.h"
#include "serve/control_verbs.h"

namespace blkstack {

// FuseExport is only declared without the FUSE module: the unique_ptr
// needs a complete type where it is destroyed.
#if !BLKSTACK_WITH_FUSE
namespace fuse {
class FuseExport {};
}  // namespace fuse
#endif

namespace {

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const std::string& n : names)
    s += (s.empty() ? "" : ", ") + (n.empty() ? "\"\"" : n);
  return s.empty() ? "none" : s;
}

// Logs each line of `report`.
void log_lines(const std::string& report) {
  size_t pos = 0;
  while (pos < report.size()) {
    const size_t end = std::min(report.find('\n', pos), report.size());
    if (end > pos) serve_log(report.substr(pos, end - pos));
    pos = end + 1;
  }
}

// Written once we listen, through a rename, so a script that waits for the
// file finds the whole pid.
void write_pidfile(const std::string& path) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << getpid() << '\n';
    if (!out) throw Error(fmt::format("pidfile '{}': cannot write", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    throw Error(fmt::format("pidfile '{}': cannot rename into place", path));
  }
}

// NBD is served without a FUSE mount, and with one only where asked.
bool serves_nbd(const ServeConfig& c) {
  return c.fuse_mountpoint.empty() || !c.sockets.empty() || !c.listen.empty();
}

// An export is known by its type and name: "disk" may be both an NBD
// export and a FUSE file.
bool same_export(const ExportConfig& a, const ExportConfig& b) {
  return a.type == b.type && a.name == b.name;
}

const ExportConfig* find_export(const std::vector<ExportConfig>& list,
                                const ExportConfig& e) {
  for (const ExportConfig& x : list)
    if (same_export(x, e)) return &x;
  return nullptr;
}

// The name a [[device]]'s disk gets: its spec's name=, or the device's.
std::string disk_name_of(const DeviceConfig& d) {
  if (d.mapped()) return d.name;
  try {
    for (const auto& [k, v] : parse_device_spec(d.spec).options)
      if (k == "name") return v;
  } catch (const Error&) {
  }
  return d.name;
}

// The [[device]] an export's `device` names: that device, or the one whose
// disk has it as a partition name ("ram0p1" of the device whose disk is
// "ram0"). Empty if neither.
std::string owner_of(const std::string& device,
                     const std::vector<DeviceConfig>& devices) {
  for (const DeviceConfig& d : devices)
    if (d.name == device) return d.name;
  for (const DeviceConfig& d : devices) {
    const std::string disk = disk_name_of(d);
    for (unsigned n = 1; n <= Disk::kMaxPartitions; ++n)
      if (Disk::partition_name(disk, n) == device) return d.name;
  }
  return "";
}

// The block device an export serves, opened: the whole disk of the device
// called `device`, or the partition of that name of one of `devices`'
// disks (Disk::open_partition: while it is held, rescans of its disk are
// refused). Null if there is none.
template <typename DeviceMap>
std::shared_ptr<BlockDevice> open_export_device(const DeviceMap& devices,
                                                const std::string& device) {
  if (auto it = devices.find(device); it != devices.end())
    return Disk::whole(it->second.disk);
  for (const auto& [name, d] : devices)
    if (auto part = Disk::open_partition(d.disk, device)) return part;
  return nullptr;
}

// Adds `name` to `list` once (an export of both types is one name).
void note(std::vector<std::string>& list, const std::string& name) {
  if (std::find(list.begin(), list.end(), name) == list.end()) list.push_back(name);
}

}  // namespace

// What a new config changes, worked out before anything is touched.
struct Service::Plan {
  std::vector<const DeviceConfig*> add_devices;
  std::vector<const DeviceConfig*> change_devices;   // same name, new spec
  std::vector<const DeviceConfig*> retable_devices;  // mapped: a new table
  std::vector<std::string> remove_devices;
  std::vector<ExportConfig> dropped;  // removed or changed exports, as they run
  ReloadResult result;
};

Service::Service(ServiceOptions options) : options_(std::move(options)) {}

Service::~Service() { stop(); }

ServeConfig Service::make_config() const {
  const ServiceOptions& a = options_;
  ServeConfig c;
  if (!a.config.empty()) c = load_serve_config(a.config);
  c.sockets.insert(c.sockets.end(), a.sockets.begin(), a.sockets.end());
  c.listen.insert(c.listen.end(), a.listen.begin(), a.listen.end());
  if (a.threads) c.threads = a.threads;
  if (a.coalesce_us) c.coalesce_us = a.coalesce_us;
  if (!a.fuse.empty()) c.fuse_mountpoint = a.fuse;
  if (a.fuse_threads) c.fuse_threads = a.fuse_threads;
  if (!a.control.empty()) c.control = a.control;
  // Once started, what start() made; before, what it will make.
  const bool nbd_on = started_ ? nbd_ != nullptr : serves_nbd(c);
  for (const std::string& e : a.exports) {
    add_cli_export(c, e);
    if (c.fuse_mountpoint.empty()) continue;
    // With a mount point every --export is a file there too, on the same
    // disk, when its name can be one (and only that when NBD is not
    // served; a name that cannot be a file then stays an NBD export, which
    // plan() refuses, saying why).
    ExportConfig& x = c.exports.back();
#if BLKSTACK_WITH_FUSE
    if (!fuse::FuseFs::valid_file_name(x.name)) {
      serve_log(fmt::format("fuse: export '{}' left out: not a file name (or '{}')",
                            x.name, fuse::SysfsTree::kName));
      continue;
    }
#endif
    if (!nbd_on) {
      x.type = "fuse";
      continue;
    }
    ExportConfig twin = x;
    twin.type = "fuse";
    c.exports.push_back(std::move(twin));
  }
  return c;
}

Service::Plan Service::plan(const ServeConfig& next) const {
  Plan p;
  std::map<std::string_view, const DeviceConfig*> devices;
  for (const DeviceConfig& d : next.devices) {
    if (!devices.emplace(d.name, &d).second)
      throw ConfigError(fmt::format("{}: device '{}' is defined twice", d.where, d.name));
    auto old = devices_.find(d.name);
    if (old != devices_.end() && old->second.spec == d.spec && d.mapped() &&
        (old->second.table != d.table || old->second.uuid != d.uuid)) {
      // A mapped device with a new table: swapped in place (load, suspend,
      // resume), its users never notice; a new uuid makes it again.
      if (old->second.uuid == d.uuid && !d.table.empty()) {
        p.retable_devices.push_back(&d);
        continue;
      }
      p.change_devices.push_back(&d);
      continue;
    }
    if (old != devices_.end() && old->second.spec == d.spec) continue;
    try {
      if (!d.mapped()) check_device_spec(d.spec);
    } catch (const Error& e) {
      throw ConfigError(fmt::format("{}: device '{}': {}", d.where, d.name, e.what()));
    }
    (old == devices_.end() ? p.add_devices : p.change_devices).push_back(&d);
  }
  for (const auto& [name, dev] : devices_)
    if (!devices.count(name)) p.remove_devices.push_back(name);
  const auto changed_device = [&](const std::string& name) {
    for (const DeviceConfig* d : p.change_devices)
      if (d->name == name) return true;
    return false;
  };

  std::vector<ExportConfig> seen;
  for (const ExportConfig& e : next.exports) {
    if (find_export(seen, e))
      throw ConfigError(fmt::format("{}: export '{}' is defined twice", e.where, e.name));
    seen.push_back(e);
    if (e.name.size() > 4096 || e.name.find('\0') != std::string::npos)
      throw ConfigError(fmt::format(
          "{}: export name: at most 4096 bytes and no NUL byte (NBD strings)", e.where));
    // A device, or a partition of one's disk (exported as Linux exports
    // /dev/sda1).
    const std::string owner = owner_of(e.device, next.devices);
    if (owner.empty())
      throw ConfigError(fmt::format("{}: export '{}': no device named '{}'", e.where,
                                    e.name, e.device));
    if (e.type == "fuse" && next.fuse_mountpoint.empty())
      throw ConfigError(fmt::format(
          "{}: export '{}' has type \"fuse\": give --fuse DIR or [server] fuse = \"DIR\"",
          e.where, e.name));
    if (e.type == "nbd" && !nbd_)
      throw ConfigError(fmt::format(
          "{}: export '{}' has type \"nbd\" (the default), and with a FUSE mount NBD "
          "is served only on [server] sockets or listen (--socket, --listen): give "
          "one, or type = \"fuse\"",
          e.where, e.name));
    if (e.type == "fuse" && started_ && !fuse_)
      throw ConfigError(fmt::format(
          "{}: export '{}' has type \"fuse\": serve started without a FUSE mount "
          "(restart it with one)",
          e.where, e.name));
#if BLKSTACK_WITH_FUSE
    // Refused here rather than left out of the mount with a log line.
    if (e.type == "fuse" && !fuse::FuseFs::valid_file_name(e.name))
      throw ConfigError(fmt::format(
          "{}: export '{}' has type \"fuse\" and its name is not a file name there "
          "(1 to 255 bytes, no '/', not \".\", \"..\" or \"{}\")",
          e.where, e.name, fuse::SysfsTree::kName));
#endif
    const ExportConfig* old = find_export(config_.exports, e);
    if (!old) {
      note(p.result.added, e.name);
    } else if (old->device != e.device || changed_device(owner)) {
      note(p.result.changed, e.name);
      p.dropped.push_back(*old);
    } else if (old->description != e.description) {
      // New clients see the new description; the disk, and so the
      // connections, stay.
      note(p.result.changed, e.name);
    } else {
      note(p.result.unchanged, e.name);
    }
    // A writable device that a stacked disk holds cannot be exported; a
    // partition must exist (a new or changed device's are checked once it
    // is made, in apply()).
    if (devices_.count(owner) && !changed_device(owner)) {
      const std::shared_ptr<BlockDevice> bdev = open_export_device(devices_, e.device);
      if (!bdev)
        throw ConfigError(
            fmt::format("{}: export '{}': device '{}' has no partition '{}'", e.where,
                        e.name, owner, e.device));
      try {
        if (!bdev->read_only()) bdev->check_open_for_write();
      } catch (const BusyError& x) {
        throw BusyError(fmt::format("{}: export '{}': {}", e.where, e.name, x.what()));
      }
    }
  }
  for (const ExportConfig& e : config_.exports) {
    if (find_export(next.exports, e)) continue;
    note(p.result.removed, e.name);
    p.dropped.push_back(e);
  }
  // A name that stays as one type and goes as the other has changed.
  for (auto* list : {&p.result.added, &p.result.removed, &p.result.changed}) {
    for (const std::string& n : *list) std::erase(p.result.unchanged, n);
  }

  // Devices that go must not hold up the reload halfway.
  std::vector<std::string> going = p.remove_devices;
  for (const DeviceConfig* d : p.change_devices) going.push_back(d->name);
  // A holder that goes as well is removed first (step 3 of apply()).
  std::set<std::string> going_disks;
  for (const std::string& name : going)
    going_disks.insert(devices_.at(name).disk->name());
  for (const std::string& name : going) {
    const std::string holder = devices_.at(name).disk->part0().holder();
    if (!holder.empty() && !going_disks.count(holder))
      throw BusyError(fmt::format(
          "device '{}' is held by {}: remove or change that first", name, holder));
  }
  if (!next.reload_disconnects) {
    for (const ExportConfig& e : p.dropped) {
      uint64_t users = 0;
      if (e.type == "nbd" && nbd_) users = nbd_->export_counts(e.name).connections;
#if BLKSTACK_WITH_FUSE
      if (e.type == "fuse" && fuse_) users = fuse_->open_handles(e.name);
#endif
      if (users)
        throw BusyError(fmt::format(
            "reload refused: export '{}' ({}) is in use by {} client{} and [server] "
            "reload_disconnects = false",
            e.name, e.type, users, users == 1 ? "" : "s"));
    }
  }
  return p;
}

std::shared_ptr<const ExportTable> Service::table(
    const std::vector<ExportConfig>& exports, std::string_view type,
    const std::map<std::string, DeviceInfo, std::less<>>& devices) const {
  std::vector<Export> list;
  for (const ExportConfig& e : exports) {
    if (e.type != type) continue;
    if (auto bdev = open_export_device(devices, e.device)) {
      list.push_back(Export{e.name, e.description, std::move(bdev)});
    } else if (!devices.count(e.device)) {
      // A partition the changed device's new table lacks (apply() checked
      // the others before changing anything).
      serve_log(fmt::format("export '{}' left out: no device or partition '{}'", e.name,
                            e.device));
    }
  }
  try {
    return std::make_shared<const ExportTable>(std::move(list));
  } catch (const BusyError&) {
    throw;
  } catch (const Error& e) {
    throw ConfigError(e.what());
  }
}

namespace {

// The disk for a [[device]]: it takes the device's name unless its spec
// names it itself.
std::shared_ptr<Disk> create_device(DiskRegistry& registry, const DeviceConfig& d) {
  if (d.mapped()) {
    MappedDevice::create(registry, d.name, d.uuid, d.table);
    return registry.get(d.name);
  }
  const DeviceSpec spec = parse_device_spec(d.spec);
  bool has_name = false;
  for (const auto& [k, v] : spec.options) has_name |= k == "name";
  return registry.create(has_name ? d.spec : d.spec + ",name=" + d.name);
}

// Flushes what the exports wrote, then shuts the disk down and removes it.
void remove_disk(DiskRegistry& registry, const std::shared_ptr<Disk>& disk) {
  // A suspended mapped device would hold the flush until a resume: it is
  // removed as it is (what it parked fails), as dm removes one.
  const MappedDevice* md = MappedDevice::of(*disk);
  if (!disk->read_only() && !(md && md->suspended())) {
    if (const Status s = BlockHandle(disk).flush(); s != Status::kOk)
      serve_log(fmt::format("flush of '{}' failed: {}", disk->name(), status_name(s)));
  }
  try {
    registry.remove(disk->name());
  } catch (const Error& e) {
    serve_log(fmt::format("removing device '{}': {}", disk->name(), e.what()));
  }
}

}  // namespace

ReloadResult Service::apply(const ServeConfig& next, bool starting) {
  Plan p = plan(next);

  // 1. New devices, before anything else changes: if one cannot be made,
  // nothing has.
  auto devices = devices_;
  std::vector<std::string> created;
  for (const DeviceConfig* d : p.add_devices) {
    try {
      devices[d->name] =
          DeviceInfo{d->name, d->spec, create_device(registry_, *d), d->table, d->uuid};
      created.push_back(d->name);
    } catch (const Error& e) {
      for (const std::string& n : created) registry_.remove(devices[n].disk->name());
      throw ConfigError(fmt::format("{}: device '{}': {}", d->where, d->name, e.what()));
    }
  }
  // Exported partitions of new devices exist (their tables were read as
  // they were made); those of devices made again are looked up in step 5.
  for (const ExportConfig& e : next.exports) {
    const std::string owner = owner_of(e.device, next.devices);
    bool changing = false;
    for (const DeviceConfig* d : p.change_devices) changing |= d->name == owner;
    if (changing || open_export_device(devices, e.device)) continue;
    for (const std::string& n : created) registry_.remove(devices[n].disk->name());
    throw ConfigError(fmt::format("{}: export '{}': device '{}' has no partition '{}'",
                                  e.where, e.name, owner, e.device));
  }
  // New tables of mapped devices, loaded (inactive) before anything else
  // changes, so a bad one changes nothing.
  for (size_t i = 0; i < p.retable_devices.size(); ++i) {
    const DeviceConfig* d = p.retable_devices[i];
    try {
      MappedDevice::of(*devices.at(d->name).disk)->load(d->table);
    } catch (const Error& e) {
      for (size_t j = 0; j < i; ++j) {
        MappedDevice::of(*devices.at(p.retable_devices[j]->name).disk)->clear_inactive();
      }
      for (const std::string& n : created) registry_.remove(devices[n].disk->name());
      throw ConfigError(fmt::format("{}: device '{}': {}", d->where, d->name, e.what()));
    }
  }

  // 2. The exports that go or change: no new clients, their I/O answered,
  // their connections closed; the others never notice.
  if (!p.dropped.empty()) {
    std::vector<ExportConfig> staying;
    for (const ExportConfig& e : config_.exports) {
      bool dropped = false;
      for (const ExportConfig& d : p.dropped) dropped |= same_export(d, e);
      if (!dropped) staying.push_back(e);
    }
    if (nbd_) nbd_->retire_exports(table(staying, "nbd", devices_), options_.drain_grace);
#if BLKSTACK_WITH_FUSE
    if (fuse_) fuse_->set_exports(table(staying, "fuse", devices_));
#endif
  }

  // 3. Devices that go or change: nothing uses them any more. Stacked
  // ones before those under them (plan() let only such holders through):
  // each round removes the ones nothing holds now.
  std::vector<std::string> going = p.remove_devices;
  for (const DeviceConfig* d : p.change_devices) going.push_back(d->name);
  while (!going.empty()) {
    std::vector<std::string> held;
    for (const std::string& name : going) {
      if (!devices.at(name).disk->part0().holder().empty()) {
        held.push_back(name);
        continue;
      }
      remove_disk(registry_, devices.at(name).disk);
      devices.erase(name);
    }
    if (held.size() == going.size()) {  // not expected: remove_disk() logs why
      for (const std::string& name : held) {
        remove_disk(registry_, devices.at(name).disk);
        devices.erase(name);
      }
      break;
    }
    going = std::move(held);
  }

  // 4. Changed devices made again from their new spec.
  std::string failed;
  for (const DeviceConfig* d : p.change_devices) {
    try {
      devices[d->name] =
          DeviceInfo{d->name, d->spec, create_device(registry_, *d), d->table, d->uuid};
    } catch (const Error& e) {
      failed += fmt::format("{}{}: device '{}': {}", failed.empty() ? "" : "; ", d->where,
                            d->name, e.what());
    }
  }

  // 4b. Mapped devices swap to their new tables: suspend (their I/O
  // drains), resume on the table loaded above.
  for (const DeviceConfig* d : p.retable_devices) {
    try {
      MappedDevice& md = *MappedDevice::of(*devices.at(d->name).disk);
      md.suspend();
      md.resume();
      devices.at(d->name).table = d->table;
    } catch (const Error& e) {
      failed += fmt::format("{}{}: device '{}': {}", failed.empty() ? "" : "; ", d->where,
                            d->name, e.what());
    }
  }

  // 5. The new tables: the added and changed exports appear.
  if (nbd_) nbd_->set_exports(table(next.exports, "nbd", devices));
#if BLKSTACK_WITH_FUSE
  if (fuse_) fuse_->set_exports(table(next.exports, "fuse", devices));
#endif
  ServeConfig kept = next;
  if (started_) {  // what only start() takes stays as it started
    kept.sockets = config_.sockets;
    kept.listen = config_.listen;
    kept.threads = config_.threads;
    kept.coalesce_us = config_.coalesce_us;
    kept.fuse_mountpoint = config_.fuse_mountpoint;
    kept.fuse_threads = config_.fuse_threads;
    kept.control = config_.control;
    kept.control_mode = config_.control_mode;
    if (kept.sockets != next.sockets || kept.listen != next.listen ||
        kept.threads != next.threads || kept.coalesce_us != next.coalesce_us ||
        kept.fuse_mountpoint != next.fuse_mountpoint ||
        kept.fuse_threads != next.fuse_threads || kept.control != next.control ||
        kept.control_mode != next.control_mode)
      serve_log(
          "reload: listeners, threads, coalesce_us, the FUSE mount and the control "
          "socket take effect at the next start");
  }
  config_ = std::move(kept);
  devices_ = std::move(devices);
  if (!starting) {
    serve_log(fmt::format("reloaded: added {}; removed {}; changed {}; unchanged {}",
                          join(p.result.added), join(p.result.removed),
                          join(p.result.changed), join(p.result.unchanged)));
  }
  if (!failed.empty())
    throw Error(fmt::format("{} (its exports are gone until a reload makes it)", failed));
  return p.result;
}

void Service::start() {
  std::lock_guard lock(mu_);
  if (started_) return;
  ServeConfig config = make_config();
  if (config.exports.empty() && config.control.empty())
    throw ConfigError(
        "nothing to export: give --export NAME=SPEC or [[export]] in --config");
  const bool fuse_on = !config.fuse_mountpoint.empty();
#if !BLKSTACK_WITH_FUSE
  if (fuse_on)
    throw ConfigError(
        "this blkstack was built without the FUSE export (cmake "
        "-DBLKSTACK_WITH_FUSE=ON)");
#endif
  // With a FUSE mount, NBD is served only where asked.
  if (serves_nbd(config)) {
    nbd::ServerOptions opts;
    opts.unix_sockets = config.sockets;
    opts.tcp = config.listen;
    if (opts.unix_sockets.empty() && opts.tcp.empty() && !options_.default_listen.empty())
      opts.tcp.push_back(options_.default_listen);
    opts.threads = config.threads ? config.threads
                                  : std::max(1u, std::thread::hardware_concurrency());
    if (config.coalesce_us)
      opts.wait.coalesce = std::chrono::microseconds(*config.coalesce_us);
    nbd_ = std::make_unique<nbd::Server>(opts, std::make_shared<const ExportTable>());
  }
#if BLKSTACK_WITH_FUSE
  if (fuse_on) {
    fuse::FuseOptions fo;
    fo.mountpoint = config.fuse_mountpoint;
    fo.threads = config.fuse_threads;
    // sys/block shows every device, as /sys/block every disk.
    fo.sysfs_disks = [this] { return registry_.list(); };
    fuse_ = std::make_unique<fuse::FuseExport>(fo, std::make_shared<const ExportTable>());
  }
#endif
  apply(config, /*starting=*/true);
  start_servers();
  if (!config_.control.empty()) {
    serve::ControlServerOptions co;
    co.path = config_.control;
    co.mode = static_cast<mode_t>(config_.control_mode);
    try {
      control_ =
          std::make_unique<serve::ControlServer>(co, serve::make_control_handler(*this));
    } catch (const Error&) {
#if BLKSTACK_WITH_FUSE
      if (fuse_) fuse_->stop();
#endif
      if (nbd_) nbd_->stop();
      throw;
    }
    serve_log(fmt::format("control socket {} (mode {:04o})", co.path, co.mode));
  }
  started_ = true;
  if (!options_.pidfile.empty()) write_pidfile(options_.pidfile);
}

void Service::start_servers() {
  // A socket per client: the usual soft limit of 1024 descriptors would
  // run out before the server's own connection limit.
  if (rlimit rl; getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  std::vector<std::string> nbd_names, fuse_names;
  for (const ExportConfig& e : config_.exports)
    (e.type == "nbd" ? nbd_names : fuse_names).push_back(e.name);
  if (nbd_) {
    nbd_->start();
    const unsigned threads = static_cast<unsigned>(nbd_->loop_stats().size());
    serve_log(fmt::format("listening on {} ({} thread{}; exports: {})",
                          fmt::join(nbd_->addresses(), ", "), threads,
                          threads == 1 ? "" : "s", join(nbd_names)));
  }
#if BLKSTACK_WITH_FUSE
  if (fuse_) {
    try {
      fuse_->start();
    } catch (const Error&) {
      fuse_.reset();
      if (nbd_) nbd_->stop();
      throw;
    }
    serve_log(fmt::format("mounted {} (FUSE, {} thread{}; files: {})",
                          fuse_->mountpoint(), fuse_->threads(),
                          fuse_->threads() == 1 ? "" : "s", join(fuse_->files())));
  }
#endif
}

ReloadResult Service::reload() {
  std::lock_guard lock(mu_);
  if (!started_ || stopped_) throw Error("reload: the service is not running");
  return apply(make_config(), /*starting=*/false);
}

void Service::stop() {
  // First, and without our lock: a control request being answered may be
  // waiting for it, and ControlServer::stop() waits for that request.
  if (control_) control_->stop();
  std::lock_guard lock(mu_);
  if (!started_ || stopped_) return;
  stopped_ = true;
#if BLKSTACK_WITH_FUSE
  if (fuse_) fuse_->stop();
#endif
  if (nbd_) nbd_->stop();
  if (!options_.pidfile.empty()) ::unlink(options_.pidfile.c_str());
  serve_log("statistics:");
  log_lines(stats_report_locked());
}

int Service::run() {
  // The signals are taken synchronously by this thread; the server
  // threads inherit the mask and never see them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  try {
    start();
  } catch (const ConfigError& e) {
    fmt::print(stderr, "blkstack serve: {}\n", e.what());
    return 2;
  } catch (const Error& e) {
    fmt::print(stderr, "blkstack serve: {}\n", e.what());
    return 1;
  }
  while (true) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (sig == SIGUSR1) {
      serve_log("statistics:");
      log_lines(stats_report());
      continue;
    }
    if (sig == SIGHUP) {
      try {
        reload();
      } catch (const Error& e) {
        serve_log(fmt::format("reload failed: {}", e.what()));
      }
      continue;
    }
    serve_log(fmt::format("{}: refusing new clients, finishing I/O in flight",
                          sig == SIGINT ? "SIGINT" : "SIGTERM"));
    stop();
    serve_log("stopped");
    return 0;
  }
}

std::string Service::control_path() const { return control_ ? control_->path() : ""; }

std::vector<Service::DeviceInfo> Service::devices() const {
  std::lock_guard lock(mu_);
  std::vector<DeviceInfo> out;
  for (const auto& [name, d] : devices_) out.push_back(d);
  return out;
}

std::shared_ptr<Disk> Service::device(std::string_view name) const {
  std::lock_guard lock(mu_);
  auto it = devices_.find(name);
  return it == devices_.end() ? nullptr : it->second.disk;
}

std::vector<Service::ExportInfo> Service::exports() const {
  std::lock_guard lock(mu_);
  return exports_locked();
}

std::vector<Service::ExportInfo> Service::exports_locked() const {
  std::vector<ExportInfo> out;
  for (const ExportConfig& e : config_.exports) {
    ExportInfo x{e.name, e.device, e.type, e.description};
    if (e.type == "nbd" && nbd_) {
      const nbd::Server::ExportCounts c = nbd_->export_counts(e.name);
      x.connections = c.connections;
      x.requests = c.requests;
    }
#if BLKSTACK_WITH_FUSE
    if (e.type == "fuse" && fuse_) {
      x.connections = fuse_->open_handles(e.name);
      x.requests = fuse_->requests(e.name);
    }
#endif
    out.push_back(std::move(x));
  }
  return out;
}

std::string Service::stats_report() const {
  std::lock_guard lock(mu_);
  return stats_report_locked();
}

std::string Service::stats_report_locked() const {
  std::string out;
  for (const auto& disk : registry_.list()) out += disk->stats_report();
  for (const ExportInfo& e : exports_locked())
    out += fmt::format("export {} ({}): {} {}, {} request{}\n", e.name, e.type,
                       e.connections, e.type == "nbd" ? "connections" : "open files",
                       e.requests, e.requests == 1 ? "" : "s");
  if (nbd_) out += nbd_->stats_report();
  return out;
}

// --- changes through the control socket ----------------------------------------

void Service::add_device(const std::string& name, const std::string& spec) {
  std::lock_guard lock(mu_);
  if (devices_.count(name)) throw ConfigError(fmt::format("device '{}' exists", name));
  if (name.empty()) throw ConfigError("a device needs a name");
  ServeConfig next = config_;
  next.devices.push_back(DeviceConfig{name, spec, "add-device", "", ""});
  apply(next, false);
}

void Service::dm_create(const std::string& name, const std::string& uuid,
                        const std::string& table) {
  std::lock_guard lock(mu_);
  if (devices_.count(name)) throw ConfigError(fmt::format("device '{}' exists", name));
  if (name.empty()) throw ConfigError("a device needs a name");
  ServeConfig next = config_;
  next.devices.push_back(DeviceConfig{name, "", "dmsetup create", table, uuid});
  apply(next, false);
}

MappedDevice& Service::mapped(const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = devices_.find(name);
  MappedDevice* md = it == devices_.end() ? nullptr : MappedDevice::of(*it->second.disk);
  if (!md) throw NotFoundError(fmt::format("no mapped device '{}'", name));
  return *md;
}

void Service::dm_resume(const std::string& name) {
  MappedDevice& md = mapped(name);
  std::lock_guard lock(mu_);
  md.resume();
  // What runs is the configuration now (a reload of the file undoes it).
  const std::string live = md.table_text();
  devices_.at(name).table = live;
  for (DeviceConfig& d : config_.devices) {
    if (d.name == name) d.table = live;
  }
}

void Service::remove_device(const std::string& name) {
  std::lock_guard lock(mu_);
  if (!devices_.count(name)) throw NotFoundError(fmt::format("no device '{}'", name));
  for (const ExportConfig& e : config_.exports)
    if (owner_of(e.device, config_.devices) == name)
      throw BusyError(
          fmt::format("device '{}' is exported as '{}' ({}): remove that first", name,
                      e.name, e.type));
  ServeConfig next = config_;
  std::erase_if(next.devices, [&](const DeviceConfig& d) { return d.name == name; });
  apply(next, false);
}

void Service::add_export(const std::string& name, const std::string& device,
                         const std::string& type, const std::string& description) {
  std::lock_guard lock(mu_);
  if (type != "nbd" && type != "fuse")
    throw ConfigError(fmt::format("type '{}': expected \"nbd\" or \"fuse\"", type));
  if (owner_of(device, config_.devices).empty())
    throw NotFoundError(fmt::format("no device '{}'", device));
  ExportConfig e{name, device, type, description, "add-export"};
  if (find_export(config_.exports, e))
    throw ConfigError(fmt::format("export '{}' ({}) exists", name, type));
  if (type == "nbd" && !nbd_) throw ConfigError("this server does not serve NBD");
  if (type == "fuse" && !fuse_) throw ConfigError("this server has no FUSE mount");
  ServeConfig next = config_;
  next.exports.push_back(std::move(e));
  apply(next, false);
}

void Service::remove_export(const std::string& name) {
  std::lock_guard lock(mu_);
  ServeConfig next = config_;
  const bool next_disconnects = config_.reload_disconnects;
  const size_t n =
      std::erase_if(next.exports, [&](const ExportConfig& e) { return e.name == name; });
  if (n == 0) throw NotFoundError(fmt::format("no export '{}'", name));
  // Asked for by name: its clients go whatever the config says of reloads.
  next.reload_disconnects = true;
  apply(next, false);
  config_.reload_disconnects = next_disconnects;
}

}  // namespace blkstack
