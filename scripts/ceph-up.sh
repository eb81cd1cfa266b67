#!/usr/bin/env bash
# ceph-up.sh: a throwaway single-node Ceph cluster for the rbd driver's
# tests and benchmarks: one monitor and one memstore OSD (data in RAM) on
# 127.0.0.1, no mgr, no authentication, pool "rbd"; up in about 2 s.
#   CEPH_DIR=/tmp/c MON_PORT=40000 scripts/ceph-up.sh   # then CEPH_CONF=$CEPH_DIR/ceph.conf
# Stop it with scripts/ceph-down.sh (same CEPH_DIR). Clusters side by side
# need their own CEPH_DIR, MON_PORT and OSD_PORT_MIN. Needs ceph-mon,
# ceph-osd and ceph-common (scripts/install-deps.sh).
set -euo pipefail

D=${CEPH_DIR:?set CEPH_DIR to a directory that does not exist yet}
MON_PORT=${MON_PORT:-40000}            # messenger v2; v1 is MON_PORT+1
OSD_PORT_MIN=${OSD_PORT_MIN:-$((MON_PORT + 100))}
OSD_PORT_MAX=$((OSD_PORT_MIN + 99))
MEM_BYTES=${MEM_BYTES:-1073741824}     # the memstore's capacity (RAM)
POOL=${POOL:-rbd}
TIMEOUT=${TIMEOUT:-60}
CONF=$D/ceph.conf

[[ -e $D ]] && { echo "ceph-up: $D exists; run ceph-down.sh first" >&2; exit 1; }
mkdir -p "$D"/{mon.a,osd.0,run,log}
FSID=$(cat /proc/sys/kernel/random/uuid)
MON_ADDRS="[v2:127.0.0.1:${MON_PORT},v1:127.0.0.1:$((MON_PORT + 1))]"

# Without a mgr some `ceph` commands never return (`ceph pg stat`): every
# call has a timeout. The monitor batches map updates every
# paxos_propose_interval (1 s by default); 0.05 s makes bring-up ~1 s.
cat >"$CONF" <<CONF
[global]
fsid = $FSID
mon host = $MON_ADDRS
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = $D/run
crash dir = $D/run
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
paxos propose interval = 0.05
paxos min wait = 0.01

[mon]
mon data = $D/mon.\$id
log file = $D/log/\$name.log
mon cluster log file = $D/log/cluster.log
admin socket = $D/run/\$name.asok
pid file = $D/run/\$name.pid

[osd]
osd data = $D/osd.\$id
log file = $D/log/\$name.log
admin socket = $D/run/\$name.asok
pid file = $D/run/\$name.pid
ms bind port min = $OSD_PORT_MIN
ms bind port max = $OSD_PORT_MAX
osd objectstore = memstore
memstore device bytes = $MEM_BYTES
osd memory target = 1073741824
osd crush update on start = true

[client]
log file = $D/log/\$name.\$pid.log
admin socket =
rbd cache = false
CONF

export CEPH_CONF=$CONF
C=(timeout "$TIMEOUT" ceph --connect-timeout 10)

monmaptool --create --clobber --fsid "$FSID" --addv a "$MON_ADDRS" --enable-all-features \
  "$D/monmap" >/dev/null
ceph-mon -i a --mkfs --monmap "$D/monmap"
ceph-mon -i a 2>>"$D/log/mon.a.stderr"  # daemonizes; $D/run/mon.a.pid
"${C[@]}" mon stat >/dev/null

OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
OSD_ID=$("${C[@]}" osd new "$OSD_UUID")
[[ $OSD_ID == 0 ]] || { echo "ceph-up: unexpected osd id $OSD_ID" >&2; exit 1; }
ceph-osd -i 0 --mkfs --osd-uuid "$OSD_UUID" >"$D/log/osd.0.mkfs.out" 2>&1 ||
  { tail -3 "$D/log/osd.0.mkfs.out" >&2; exit 1; }
ceph-osd -i 0 2>>"$D/log/osd.0.stderr"  # daemonizes; $D/run/osd.0.pid
up=0
for _ in $(seq $((TIMEOUT * 5))); do
  up=$("${C[@]}" osd stat -f json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["num_up_osds"])')
  [[ $up == 1 ]] && break
  sleep 0.2
done
[[ $up == 1 ]] || { echo "ceph-up: osd.0 did not come up" >&2; exit 1; }

# `rbd pool init` returns once the placement groups are active: the
# readiness check (without a mgr, `ceph pg stat` cannot tell).
"${C[@]}" osd pool create "$POOL" 8 8 >/dev/null 2>&1
timeout "$TIMEOUT" rbd pool init "$POOL"
echo "ceph-up: cluster in $D, CEPH_CONF=$CONF"
