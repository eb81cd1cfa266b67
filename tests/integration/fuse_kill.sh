#!/usr/bin/env bash
# A server killed with SIGKILL in the middle of an ext4 workload on a loop
# device over its file: nothing may hang (every wait is under a timeout),
# the I/O fails instead, the dead mount answers ENOTCONN, and the next
# `blkstack serve --fuse` on the same directory says it found a stale mount,
# clears it and serves normally.
source "$(dirname "$0")/fuse_lib.sh" "$@"
fuse_require python3 fio mkfs.ext4 stat

fuse_start disk=ram:1G
dev=$(fuse_attach "$MNT/disk") || finish
check "mkfs.ext4" timeout 300 mkfs.ext4 -q -F -E nodiscard "$dev"
fs_mount "$dev" "$TMP/fs"
timeout -s KILL 120 fio --name=busy --directory="$TMP/fs" --size=64M --rw=randrw --bs=4k \
  --ioengine=psync --numjobs=2 --fsync=16 --time_based --runtime=100 >"$TMP/fio.log" 2>&1 &
FIO=$!
timeout -s KILL 120 python3 - "$TMP/fs" >"$TMP/files.log" 2>&1 <<'PY' &
import os, sys, time
d = sys.argv[1]
t = time.time()
i = 0
while time.time() - t < 100:
    p = os.path.join(d, f"x{i % 500}")
    with open(p, "wb") as f:
        f.write(os.urandom(8192)); f.flush(); os.fsync(f.fileno())
    os.rename(p, p + ".r"); os.unlink(p + ".r")
    i += 1
PY
PY_PID=$!
sleep 3
_checks=$((_checks + 1))
fuse_alive "$SERVER_PID" || fail "the server died before the kill"
kill -KILL "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null
SERVER_PID=

# The workload must end (with errors) well before its own 100 s.
for pid in $FIO $PY_PID; do
  for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  _checks=$((_checks + 1))
  if kill -0 "$pid" 2>/dev/null; then
    fail "the workload (pid $pid) still runs 60 s after the server was killed"
  fi
done
check_fails "the dead FUSE mount errors out" timeout 10 stat "$MNT/disk"
grep -qi "not connected" "$OUT" || { fail "stat of the dead mount: expected ENOTCONN"; _show_out; }
check_fails "statfs of the dead mount point errors out" timeout 10 stat -f "$MNT"
check "umount ext4 (lazy)" timeout 60 umount -l "$TMP/fs"
_mounts=()
check "detach the loop device" timeout 30 "$BLKSTACK" detach "$dev"
_loops=()

# The next server on the same directory clears the stale mount.
fuse_start disk=ram:64M
check "the stale mount was reported" grep -q "stale FUSE mount" "$LOG"
check "and cleared" grep -q "stale mount cleared" "$LOG"
check "the new file is there" test "$(stat -c %s "$MNT/disk")" -eq $((64 << 20))
check "and works" python3 - "$MNT/disk" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, b"hello" * 1000, 12345)
assert os.pread(fd, 5000, 12345) == b"hello" * 1000
PY
fuse_stop
finish
