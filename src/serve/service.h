// Service: what `blkstack serve` runs — the devices, the NBD server, the
// FUSE export and the control socket — and their lifecycle, as a library.
// tools/blkstack/cmd_serve.cc parses the command line and calls run(); tests
// drive start(), reload() and stop() directly.
//
//   ServiceOptions (command line) + config file  -> ServeConfig
//   start():  devices into the DiskRegistry, the NBD Server and the
//             FuseExport with their export tables, the control socket,
//             the pidfile
//   reload(): the file read again and compared with what runs (below)
//   run():    start(), then signals until SIGINT/SIGTERM: SIGHUP reloads,
//             SIGUSR1 logs statistics (as stop() does)
//
// A reload changes only what changed. Devices and exports are matched by
// name: an added one appears; a removed one stops taking new clients, its
// clients' I/O in flight is answered, their connections close (the FUSE
// file disappears; a handle still open gets EIO), then the device goes; a
// device whose spec changed is recreated after its users drained, and its
// exports come back on the new disk; an export on the same, unchanged
// device is not touched (same Disk, no reconnect; a new description is
// for new clients). With [server] reload_disconnects = false a
// reload that would close an export in use is refused, naming it. A reload
// whose config has a mistake changes nothing: its ConfigError names the
// file, the line and the key. Listeners, threads, the mount point and the
// control socket are taken at start() only.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "blkstack/disk_registry.h"
#include "blkstack/error.h"
#include "export/serve_config.h"

namespace blkstack {

class Disk;
class ExportTable;
class MappedDevice;
namespace nbd {
class Server;
}
namespace fuse {
class FuseExport;
}
namespace serve {
class ControlServer;
}

// No such device or export (the control protocol's "not_found").
class NotFoundError : public Error {
 public:
  using Error::Error;
};

struct ServiceOptions {
  std::string config;  // TOML file (serve_config.h), read again by reload()
  // The command line, on top of the file: as the serve options of the same
  // names (`blkstack serve --help`).
  std::vector<std::string> sockets;
  std::vector<std::string> listen;
  std::vector<std::string> exports;  // NAME=SPEC
  unsigned threads = 0;
  std::optional<unsigned> coalesce_us;
  std::string fuse;  // mount point
  unsigned fuse_threads = 0;
  std::string control;  // control socket path
  std::string pidfile;  // written once everything listens, removed at stop()
  // With no socket and no TCP address given, NBD listens on this (empty:
  // nowhere; tests serve through nbd()->adopt()).
  std::string default_listen = "127.0.0.1:10809";
  // How long the clients of a dropped export may take to finish before
  // their connections are cut.
  std::chrono::milliseconds drain_grace = std::chrono::seconds(10);
};

// Export names by what a reload did to them.
struct ReloadResult {
  std::vector<std::string> added;
  std::vector<std::string> removed;
  std::vector<std::string> changed;
  std::vector<std::string> unchanged;
};

class Service {
 public:
  explicit Service(ServiceOptions options);
  ~Service();  // stop()
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // Reads the config, makes the devices and starts the servers. Throws
  // ConfigError for a mistake in the config or the options (the CLI exits
  // 2) and Error for anything else (a listener, the mount; exit 1).
  void start();
  // For the CLI: blocks the signals (the server threads inherit the mask),
  // start(), and serves until SIGINT or SIGTERM. Returns the exit status.
  int run();
  // Reads the config file again and applies the difference (see above).
  // Throws ConfigError (nothing changed) or BusyError (refused: an export
  // in use with reload_disconnects = false, or a device held by a stacked
  // disk that stays; nothing changed).
  ReloadResult reload();
  // Refuses new clients, answers what is in flight, closes every export,
  // flushes, removes the pidfile and logs statistics. Idempotent.
  void stop();

  // The running state, for the control verbs and tests. Devices and
  // exports by the names the config gives them.
  struct DeviceInfo {
    std::string name;
    std::string spec;  // empty for a mapped device
    std::shared_ptr<Disk> disk;
    std::string table;  // a mapped device's live table as configured
    std::string uuid;
  };
  struct ExportInfo {
    std::string name;
    std::string device;
    std::string type;  // "nbd" or "fuse"
    std::string description;
    uint64_t connections = 0;  // NBD connections; open handles of a FUSE file
    uint64_t requests = 0;     // read since the export appeared
  };
  std::vector<DeviceInfo> devices() const;
  std::vector<ExportInfo> exports() const;
  // The device called `name` (a config name), or null.
  std::shared_ptr<Disk> device(std::string_view name) const;

  // Changes to the running set, applied as a reload of the current config
  // with the one change (so a later reload of the file undoes them). Throw
  // ConfigError (a bad name, spec or reference; not_found) or BusyError.
  void add_device(const std::string& name, const std::string& spec);
  void remove_device(const std::string& name);  // BusyError while exported
  void add_export(const std::string& name, const std::string& device,
                  const std::string& type, const std::string& description);
  void remove_export(const std::string& name);

  // Mapped devices (src/dm/, `blkstack dmsetup`). dm_create adds one with
  // `table` live (empty: no table yet), as add_device adds a device;
  // remove_device removes it. The mapped device `name`, for the verbs that
  // act on it directly (load, suspend, table, status, message); throws
  // NotFoundError when there is no such mapped device. dm_resume resumes
  // it and keeps its new live table as its configuration.
  void dm_create(const std::string& name, const std::string& uuid,
                 const std::string& table);
  MappedDevice& mapped(const std::string& name) const;
  void dm_resume(const std::string& name);

  DiskRegistry& registry() { return registry_; }
  nbd::Server* nbd() { return nbd_.get(); }
  fuse::FuseExport* fuse() { return fuse_.get(); }
  // The control socket's path; empty without one.
  std::string control_path() const;
  // The statistics SIGUSR1 logs: each device's (diskstats fields, latency
  // histograms), each export's clients and requests, the NBD loops' waits.
  std::string stats_report() const;

 private:
  struct Plan;
  ServeConfig make_config() const;
  // Checks `next` against what runs and applies it; all of a reload's work.
  ReloadResult apply(const ServeConfig& next, bool starting);
  Plan plan(const ServeConfig& next) const;
  std::shared_ptr<const ExportTable> table(
      const std::vector<ExportConfig>& exports, std::string_view type,
      const std::map<std::string, DeviceInfo, std::less<>>& devices) const;
  void start_servers();
  std::vector<ExportInfo> exports_locked() const;
  std::string stats_report_locked() const;

  ServiceOptions options_;
  mutable std::mutex mu_;  // one change at a time; the state below
  ServeConfig config_;     // what runs
  std::map<std::string, DeviceInfo, std::less<>> devices_;
  DiskRegistry registry_;
  std::unique_ptr<nbd::Server> nbd_;
  std::unique_ptr<fuse::FuseExport> fuse_;
  std::unique_ptr<serve::ControlServer> control_;  // its handler calls us
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace blkstack
