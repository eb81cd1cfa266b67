#!/usr/bin/env bash
# rbd_cluster.sh up|down DIR: the ctest fixture of rbd_test. "up" starts a
# throwaway Ceph cluster in DIR/cluster (scripts/ceph-up.sh) on a monitor
# port of its own; without the Ceph packages it starts nothing and the
# tests skip, saying so. "down" stops it (scripts/ceph-down.sh).
set -euo pipefail
cmd=$1 dir=$2
here=$(cd "$(dirname "$0")/../.." && pwd)
export CEPH_DIR=$dir/cluster
case $cmd in
  up)
    FAST=1 "$here/scripts/ceph-down.sh"  # a cluster an interrupted run left
    if ! command -v ceph-mon >/dev/null || ! command -v ceph-osd >/dev/null; then
      echo "rbd_cluster: ceph-mon/ceph-osd not installed: the rbd tests skip"
      exit 0
    fi
    # A monitor port per build directory (two worktrees' tests may run at
    # once), moved on while something listens there or on the OSDs' range.
    port=$((42000 + $(cksum <<<"$dir" | cut -d' ' -f1) % 40 * 200))
    while python3 - "$port" <<'PY'; do port=$((port + 200)); done
import socket, sys
p = int(sys.argv[1])
for q in (p, p + 1, p + 100):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", q))
    except OSError:
        sys.exit(0)  # taken: try the next slot
    finally:
        s.close()
sys.exit(1)
PY
    mkdir -p "$dir"
    MON_PORT=$port MEM_BYTES=$((512 << 20)) "$here/scripts/ceph-up.sh" ||
      { KEEP=1 "$here/scripts/ceph-down.sh"; exit 1; }
    ;;
  down) FAST=1 "$here/scripts/ceph-down.sh" ;;
  *) echo "usage: $0 up|down DIR" >&2; exit 2 ;;
esac
