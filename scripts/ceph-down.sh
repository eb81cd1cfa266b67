#!/usr/bin/env bash
# ceph-down.sh: stops the cluster scripts/ceph-up.sh started in $CEPH_DIR
# (the OSD first, then the monitor, by the PIDs in their pid files) and
# removes the directory. KEEP=1 keeps it (the logs); FAST=1 kills at once
# (SIGKILL; the data is thrown away anyway) rather than SIGTERM, ~2 s each.
D=${CEPH_DIR:?set CEPH_DIR}
for n in osd.0 mon.a; do
  f=$D/run/$n.pid
  [[ -f $f ]] || continue
  pid=$(cat "$f")
  # Only our daemon: a ceph-* process whose pid file is in this directory.
  grep -q '^ceph-' "/proc/$pid/comm" 2>/dev/null || continue
  if [[ ${FAST:-0} == 1 ]]; then kill -KILL "$pid"; else kill -TERM "$pid"; fi
  for _ in $(seq 100); do [[ -d /proc/$pid ]] || break; sleep 0.05; done
  [[ -d /proc/$pid ]] && kill -KILL "$pid"
done
[[ ${KEEP:-0} == 1 ]] || rm -rf "$D"
