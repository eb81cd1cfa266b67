// blkstack serve: the NBD server, from a TOML config file and/or options,
// and the FUSE export (--fuse DIR: the devices as files in DIR). This file
// parses the command line; the service itself is src/serve/service.h
// (signals, reloads, the pidfile, statistics: see there and docs/serve.md).
#include <fmt/format.h>

#include "commands.h"
#include "export/serve_config.h"
#include "serve/service.h"

namespace blkstack::cli {

void add_serve_command(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("serve", "Serve devices over NBD (network block device)");
  static ServiceOptions args;
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
  cmd->add_option("--control", args.control,
                  "Answer control commands on this unix socket (owner-only; see "
                  "docs/serve.md)");
  cmd->footer(
      "The empty export name selects the first export. Logs go to stderr; SIGINT and\n"
      "SIGTERM stop the server cleanly (exit 0), SIGHUP reloads --config (only what\n"
      "changed: see docs/serve.md), SIGUSR1 logs every device's statistics.\n"
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
      "  control = \"/run/blkstack.ctl\"   # the control socket, as --control\n"
      "  reload_disconnects = true      # false: refuse reloads closing exports in use\n"
      "  [[device]]\n"
      "  name = \"ram0\"\n"
      "  spec = \"ram:1G\"\n"
      "  [[export]]\n"
      "  name = \"disk\"\n"
      "  device = \"ram0\"\n"
      "  type = \"nbd\"                 # or \"fuse\": a file in the FUSE mount");
  cmd->callback([] {
    const int rc = Service(args).run();
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace blkstack::cli
