// blkstack serve: the NBD server, from a TOML config file and/or options,
// and the FUSE export (--fuse DIR: the devices as files in DIR).
// Runs until SIGINT or SIGTERM (then answers what is in flight, flushes and
// exits 0); SIGHUP re-reads the config file and replaces the export list;
// SIGUSR1 logs every device's statistics (diskstats fields and latency
// histograms), as the server also does when it stops.
#include <fmt/format.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <optional>
#include <thread>

#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "commands.h"
#include "export/export_table.h"
#if BLKSTACK_WITH_FUSE
#include "export/fuse/fuse_export.h"
#endif
#include "export/log.h"
#include "export/nbd/server.h"
#include "export/serve_config.h"

namespace blkstack::cli {
namespace {

// Logs each line of `report`.
void log_lines(const std::string& report) {
  size_t pos = 0;
  while (pos < report.size()) {
    const size_t end = std::min(report.find('\n', pos), report.size());
    if (end > pos) serve_log(report.substr(pos, end - pos));
    pos = end + 1;
  }
}

void log_statistics(const DiskRegistry& registry, const nbd::Server* server) {
  serve_log("statistics:");
  for (const auto& disk : registry.list()) log_lines(disk->stats_report());
  if (server) log_lines(server->stats_report());
}

struct ServeArgs {
  std::string config;
  std::vector<std::string> sockets;
  std::vector<std::string> listen;
  std::vector<std::string> exports;
  unsigned threads = 0;
  std::optional<unsigned> coalesce_us;
  std::string pidfile;
  std::string fuse;  // mount point
  unsigned fuse_threads = 0;
};

// The config file (if any) with the command line on top.
ServeConfig make_config(const ServeArgs& a) {
  ServeConfig c;
  if (!a.config.empty()) c = load_serve_config(a.config);
  c.sockets.insert(c.sockets.end(), a.sockets.begin(), a.sockets.end());
  c.listen.insert(c.listen.end(), a.listen.begin(), a.listen.end());
  if (a.threads) c.threads = a.threads;
  if (a.coalesce_us) c.coalesce_us = a.coalesce_us;
  for (const std::string& e : a.exports) add_cli_export(c, e);
  if (!a.fuse.empty()) c.fuse_mountpoint = a.fuse;
  if (a.fuse_threads) c.fuse_threads = a.fuse_threads;
  return c;
}

// The FUSE files: the exports of type "fuse", and with a mount point every
// --export too (they are NBD exports as well, on the same disks).
std::shared_ptr<const ExportTable> fuse_exports(const ServeConfig& config,
                                                const ServeArgs& a,
                                                const ExportTable& nbd_table,
                                                DiskRegistry& registry) {
  auto typed = build_exports(config, registry, "fuse");
  if (config.fuse_mountpoint.empty()) {
    if (!typed->empty()) {
      throw ConfigError(fmt::format(
          "export '{}' has type \"fuse\": give --fuse DIR or [server] fuse = \"DIR\"",
          typed->list().front().name));
    }
    return typed;
  }
  std::vector<Export> list(typed->list().begin(), typed->list().end());
  for (const std::string& e : a.exports) {
    const std::string name = e.substr(0, e.find('='));
    if (const Export* x = nbd_table.find(name); x && x->name == name) list.push_back(*x);
  }
  try {
    return std::make_shared<const ExportTable>(std::move(list));
  } catch (const Error& e) {
    throw ConfigError(e.what());
  }
}

std::string export_names(const ExportTable& t) {
  std::string s;
  for (const Export& e : t.list()) {
    if (!s.empty()) s += ", ";
    s += e.name.empty() ? "\"\"" : e.name;
  }
  return s;
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

int serve(const ServeArgs& a) {
  ServeConfig config;
  DiskRegistry registry;
  std::shared_ptr<const ExportTable> exports;
  std::shared_ptr<const ExportTable> fuse_table;
  try {
    config = make_config(a);
    exports = build_exports(config, registry);
    fuse_table = fuse_exports(config, a, *exports, registry);
    if (exports->empty() && fuse_table->empty()) {
      throw ConfigError(
          "nothing to export: give --export NAME=SPEC or [[export]] in --config");
    }
  } catch (const ConfigError& e) {
    fmt::print(stderr, "blkstack serve: {}\n", e.what());
    return 2;
  }
  nbd::ServerOptions opts;
  opts.unix_sockets = config.sockets;
  opts.tcp = config.listen;
  // With --fuse, NBD is served only where asked (--socket, --listen).
  const bool fuse_on = !config.fuse_mountpoint.empty();
#if !BLKSTACK_WITH_FUSE
  if (fuse_on) {
    fmt::print(stderr,
               "blkstack serve: this blkstack was built without the FUSE export "
               "(cmake -DBLKSTACK_WITH_FUSE=ON)\n");
    return 2;
  }
#endif
  const bool nbd_on =
      !exports->empty() && (!fuse_on || !opts.unix_sockets.empty() || !opts.tcp.empty());
  if (opts.unix_sockets.empty() && opts.tcp.empty())
    opts.tcp.push_back("127.0.0.1:10809");
  opts.threads =
      config.threads ? config.threads : std::max(1u, std::thread::hardware_concurrency());
  if (config.coalesce_us)
    opts.wait.coalesce = std::chrono::microseconds(*config.coalesce_us);

  // The signals are taken synchronously by this thread; the loop threads
  // inherit the mask and never see them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // A socket per client: the usual soft limit of 1024 descriptors would
  // run out before the server's own connection limit.
  if (rlimit rl; getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  std::optional<nbd::Server> nbd_server;
  if (nbd_on) {
    nbd::Server& server = nbd_server.emplace(opts, exports);
    server.start();
    std::string addrs;
    for (const std::string& s : server.addresses())
      addrs += (addrs.empty() ? "" : ", ") + s;
    serve_log(fmt::format("listening on {} ({} thread{}; exports: {})", addrs,
                          opts.threads, opts.threads == 1 ? "" : "s",
                          export_names(*exports)));
  }
#if BLKSTACK_WITH_FUSE
  std::optional<fuse::FuseExport> fuse_export;
  if (fuse_on) {
    fuse::FuseOptions fo;
    fo.mountpoint = config.fuse_mountpoint;
    fo.threads = config.fuse_threads;
    fuse_export.emplace(fo, fuse_table);
    try {
      fuse_export->start();
    } catch (const Error& e) {
      fmt::print(stderr, "blkstack serve: {}\n", e.what());
      fuse_export.reset();
      if (nbd_server) nbd_server->stop();
      return 1;
    }
    std::string names;
    for (const std::string& n : fuse_export->files())
      names += (names.empty() ? "" : ", ") + n;
    serve_log(fmt::format("mounted {} (FUSE, {} thread{}; files: {})", fo.mountpoint,
                          fuse_export->threads(), fuse_export->threads() == 1 ? "" : "s",
                          names));
  }
#endif
  if (!a.pidfile.empty()) write_pidfile(a.pidfile);

  while (true) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (sig == SIGUSR1) {
      log_statistics(registry, nbd_server ? &*nbd_server : nullptr);
      continue;
    }
    if (sig == SIGHUP) {
      try {
        ServeConfig fresh = make_config(a);
        auto table = build_exports(fresh, registry);
        if (nbd_server) nbd_server->set_exports(table);
        serve_log(fmt::format("reloaded: exports {}", export_names(*table)));
        if (fresh.threads != config.threads || fresh.coalesce_us != config.coalesce_us)
          serve_log("reload: threads and coalesce_us take effect at the next start");
      } catch (const Error& e) {
        serve_log(fmt::format("reload failed, keeping the old exports: {}", e.what()));
      }
      continue;
    }
    serve_log(fmt::format("{}: refusing new clients, finishing I/O in flight",
                          sig == SIGINT ? "SIGINT" : "SIGTERM"));
#if BLKSTACK_WITH_FUSE
    if (fuse_export) fuse_export->stop();
#endif
    if (nbd_server) nbd_server->stop();
    if (!a.pidfile.empty()) ::unlink(a.pidfile.c_str());
    log_statistics(registry, nbd_server ? &*nbd_server : nullptr);
    serve_log("stopped");
    return 0;
  }
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("serve", "Serve devices over NBD (network block device)");
  static ServeArgs args;
  cmd->add_option("--config", args.config,
                  "TOML config file ([server], [[device]], [[export]])");
  cmd->add_option("--socket", args.sockets, "Listen on this unix socket (repeatable)");
  cmd->add_option(
      "--listen", args.listen,
      "Listen on HOST:PORT over TCP (repeatable; default 127.0.0.1:10809 when "
      "no --socket or --listen is given)");
  cmd->add_option(
      "--export", args.exports,
      "Export NAME=SPEC: a device made from a device spec (repeatable); ro=1 in "
      "the spec makes it read-only");
  cmd->add_option("--threads", args.threads, "Event loops (default: one per core)")
      ->check(CLI::Range(1, 256));
  cmd->add_option("--coalesce-us", args.coalesce_us,
                  "At high depth, serve a client's requests in batches instead of "
                  "waking for each, at most this many microseconds apart; the gap "
                  "adapts to the client's depth below it (default 100; 0: off)")
      ->check(CLI::Range(0u, kMaxCoalesceUs));
  cmd->add_option("--pidfile", args.pidfile,
                  "Write the pid here once listening (and the FUSE mount is up)");
  cmd->add_option("--fuse", args.fuse,
                  "Also export the devices as files in this directory, a FUSE mount: "
                  "every --export and every type = \"fuse\" export (NBD then only "
                  "with --socket or --listen)");
  cmd->add_option("--fuse-threads", args.fuse_threads,
                  "FUSE workers reading requests (default: one per core)")
      ->check(CLI::Range(1, 256));
  cmd->footer(
      "The empty export name selects the first export. Logs go to stderr; SIGINT and\n"
      "SIGTERM stop the server cleanly (exit 0), SIGHUP reloads --config, SIGUSR1 logs\n"
      "every device's statistics.\n"
      "Examples:\n"
      "  blkstack serve --socket /tmp/nbd.sock --export disk=ram:1G\n"
      "      nbdinfo 'nbd+unix:///disk?socket=/tmp/nbd.sock'\n"
      "  blkstack serve --listen 0.0.0.0:10809 --export img=file:/srv/disk.img \\\n"
      "      --export golden=file:/srv/golden.img,ro=1\n"
      "  blkstack serve --config /etc/blkstack.toml --pidfile /run/blkstack.pid\n"
      "  blkstack serve --fuse /tmp/mnt --export disk=ram:1G     (file /tmp/mnt/disk)\n"
      "      blkstack attach /tmp/mnt/disk; mkfs.ext4 /dev/loopN   (see 'attach "
      "--help')\n"
      "Config file:\n"
      "  [server]\n"
      "  sockets = [\"/run/blkstack.sock\"]\n"
      "  listen = [\"127.0.0.1:10809\"]\n"
      "  threads = 2\n"
      "  coalesce_us = 100              # as --coalesce-us\n"
      "  fuse = \"/mnt/blkstack\"          # the FUSE mount point, as --fuse\n"
      "  [[device]]\n"
      "  name = \"ram0\"\n"
      "  spec = \"ram:1G\"\n"
      "  [[export]]\n"
      "  name = \"disk\"\n"
      "  device = \"ram0\"\n"
      "  type = \"nbd\"                 # or \"fuse\": a file in the FUSE mount");
  cmd->callback([] {
    const int rc = serve(args);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace blkstack::cli
