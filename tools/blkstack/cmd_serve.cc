// blkstack serve: the NBD server, from a TOML config file and/or options.
// Runs until SIGINT or SIGTERM (then answers what is in flight, flushes and
// exits 0); SIGHUP re-reads the config file and replaces the export list.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <thread>

#include "blkstack/disk_registry.h"
#include "commands.h"
#include "export/export_table.h"
#include "export/log.h"
#include "export/nbd/server.h"
#include "export/serve_config.h"

namespace blkstack::cli {
namespace {

struct ServeArgs {
  std::string config;
  std::vector<std::string> sockets;
  std::vector<std::string> listen;
  std::vector<std::string> exports;
  unsigned threads = 0;
  std::string pidfile;
};

// The config file (if any) with the command line on top.
ServeConfig make_config(const ServeArgs& a) {
  ServeConfig c;
  if (!a.config.empty()) c = load_serve_config(a.config);
  c.sockets.insert(c.sockets.end(), a.sockets.begin(), a.sockets.end());
  c.listen.insert(c.listen.end(), a.listen.begin(), a.listen.end());
  if (a.threads) c.threads = a.threads;
  for (const std::string& e : a.exports) add_cli_export(c, e);
  return c;
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
  try {
    config = make_config(a);
    exports = build_exports(config, registry);
    if (exports->empty()) {
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
  if (opts.unix_sockets.empty() && opts.tcp.empty())
    opts.tcp.push_back("127.0.0.1:10809");
  opts.threads =
      config.threads ? config.threads : std::max(1u, std::thread::hardware_concurrency());

  // The signals are taken synchronously by this thread; the loop threads
  // inherit the mask and never see them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  nbd::Server server(opts, exports);
  server.start();
  std::string addrs;
  for (const std::string& s : server.addresses())
    addrs += (addrs.empty() ? "" : ", ") + s;
  serve_log(fmt::format("listening on {} ({} thread{}; exports: {})", addrs, opts.threads,
                        opts.threads == 1 ? "" : "s", export_names(*exports)));
  if (!a.pidfile.empty()) write_pidfile(a.pidfile);

  while (true) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (sig == SIGHUP) {
      try {
        ServeConfig fresh = make_config(a);
        auto table = build_exports(fresh, registry);
        server.set_exports(table);
        serve_log(fmt::format("reloaded: exports {}", export_names(*table)));
      } catch (const Error& e) {
        serve_log(fmt::format("reload failed, keeping the old exports: {}", e.what()));
      }
      continue;
    }
    serve_log(fmt::format("{}: refusing new clients, finishing I/O in flight",
                          sig == SIGINT ? "SIGINT" : "SIGTERM"));
    server.stop();
    if (!a.pidfile.empty()) ::unlink(a.pidfile.c_str());
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
  cmd->add_option("--pidfile", args.pidfile, "Write the pid here once listening");
  cmd->footer(
      "The empty export name selects the first export. Logs go to stderr; SIGINT and\n"
      "SIGTERM stop the server cleanly (exit 0), SIGHUP reloads --config.\n"
      "Examples:\n"
      "  blkstack serve --socket /tmp/nbd.sock --export disk=ram:1G\n"
      "      nbdinfo 'nbd+unix:///disk?socket=/tmp/nbd.sock'\n"
      "  blkstack serve --listen 0.0.0.0:10809 --export img=file:/srv/disk.img \\\n"
      "      --export golden=file:/srv/golden.img,ro=1\n"
      "  blkstack serve --config /etc/blkstack.toml --pidfile /run/blkstack.pid\n"
      "Config file:\n"
      "  [server]\n"
      "  sockets = [\"/run/blkstack.sock\"]\n"
      "  listen = [\"127.0.0.1:10809\"]\n"
      "  threads = 2\n"
      "  [[device]]\n"
      "  name = \"ram0\"\n"
      "  spec = \"ram:1G\"\n"
      "  [[export]]\n"
      "  name = \"disk\"\n"
      "  device = \"ram0\"\n"
      "  type = \"nbd\"");
  cmd->callback([] {
    const int rc = serve(args);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace blkstack::cli
