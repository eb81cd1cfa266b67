// ServeConfig: what `blkstack serve` runs — devices, exports, listeners —
// read from a TOML file and/or command-line options.
//
//   [server]
//   sockets = ["/run/blkstack.sock"]     # unix sockets
//   listen = ["127.0.0.1:10809"]         # TCP addresses
//   threads = 2                          # event loops
//   coalesce_us = 100                    # longest batching sleep; 0: off
//   fuse = "/mnt/blkstack"               # FUSE mount point (type = "fuse" exports)
//   fuse_threads = 2                     # FUSE workers
//   reload_disconnects = true            # false: refuse reloads that would
//                                        #   close an export in use
//   control = "/run/blkstack.ctl"        # the control socket (docs/serve.md)
//   control_mode = "0600"                # its permission bits
//
//   [[device]]
//   name = "ram0"
//   spec = "ram:1G"                      # any device spec
//
//   [[export]]
//   name = "disk"                        # the NBD export name
//   device = "ram0"
//   type = "nbd"                         # "nbd" (default) or "fuse"
//   description = "scratch disk"         # optional, shown by NBD_OPT_LIST/INFO
//
// Every mistake is a ConfigError whose message names the file, the line and
// the key. The FUSE export will read the same file: exports of another type
// are kept in the config and skipped by the NBD server.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "blkstack/error.h"

namespace blkstack {

class DiskRegistry;
class ExportTable;

// A configuration mistake (the CLI exits 2 on it).
class ConfigError : public Error {
 public:
  using Error::Error;
};

inline constexpr unsigned kMaxCoalesceUs = 10000;

struct DeviceConfig {
  std::string name;
  std::string spec;   // empty for a mapped device
  std::string where;  // "FILE:LINE" for messages
  // A mapped device (src/dm/): its table in dmsetup's lines (empty: none
  // yet) and uuid, given instead of a spec.
  std::string table;
  std::string uuid;
  bool mapped() const { return spec.empty(); }
};

struct ExportConfig {
  std::string name;
  std::string device;
  std::string type = "nbd";
  std::string description;
  std::string where;
};

struct ServeConfig {
  std::vector<std::string> sockets;
  std::vector<std::string> listen;
  unsigned threads = 0;  // 0: not set
  // The longest an event loop sleeps between rounds for a client at high
  // depth (WaitOptions::coalesce; the sleep adapts below it); 0 turns
  // coalescing off.
  std::optional<unsigned> coalesce_us;
  // The FUSE export ([server] fuse = "DIR", fuse_threads = N; --fuse DIR):
  // the exports of type "fuse" appear as files in DIR.
  std::string fuse_mountpoint;
  unsigned fuse_threads = 0;  // 0: not set
  // A reload that drops or replaces an export with clients: closes their
  // connections after their I/O drained (true), or is refused naming the
  // export (false).
  bool reload_disconnects = true;
  // The control socket's path (empty: none) and permission bits.
  std::string control;
  unsigned control_mode = 0600;
  std::vector<DeviceConfig> devices;
  std::vector<ExportConfig> exports;
};

// Parses TOML text; `source` names it in messages (the file name).
ServeConfig parse_serve_config(std::string_view text, const std::string& source);
// Reads and parses a file. Throws ConfigError.
ServeConfig load_serve_config(const std::string& path);

// --export NAME=SPEC: a device named NAME (unless the spec has name=) made
// from SPEC, exported as NAME. Throws ConfigError on a missing '='.
void add_cli_export(ServeConfig& config, std::string_view name_equals_spec);

// Makes the devices not yet in `registry` (ones already there are reused, so
// a reload keeps their data) and returns the exports of type `type`. Throws
// ConfigError naming the device or export at fault.
std::shared_ptr<const ExportTable> build_exports(const ServeConfig& config,
                                                 DiskRegistry& registry,
                                                 std::string_view type = "nbd");

}  // namespace blkstack
