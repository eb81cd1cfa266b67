#!/usr/bin/env bash
# ext4 on a file disk through the FUSE export and a loop device, the server
# SIGKILLed under a file workload, KILLS times (default 3): after each kill
# and restart on the same file, mounting replays the journal, every file
# whose fsync returned (its name and checksum were recorded on the host
# only then) is intact, and after unmounting `e2fsck -fn` finds the file
# system clean. Journal replay is the mount's, as a real restart would do
# it; e2fsck runs after it read-only, so it cannot repair what it finds.
#
#   durability_ext4_kill.sh BLKSTACK [KILLS] [SEED]
source "$(dirname "$0")/fuse_lib.sh" "$@"
fuse_require python3 mkfs.ext4 e2fsck
KILLS=${2:-3}
SEED=${BLKSTACK_SEED:-${3:-$RANDOM}}
RANDOM=$SEED
echo "durability.ext4_kill: $KILLS kills, seed $SEED"
SPEC="disk=file:$TMP/disk.img,size=256M"
MANIFEST=$TMP/manifest  # "name sha256" of every fsynced file, on the host
: >"$MANIFEST"
start_s=$SECONDS

# Checks the files the manifest names, then deletes the oldest half of them
# when the file system is getting full (and says so in the manifest).
verify_files() {
  timeout 300 python3 - "$TMP/fs" "$MANIFEST" <<'PY'
import hashlib, os, sys
d, manifest = sys.argv[1], sys.argv[2]
entries = [l.split() for l in open(manifest) if l.strip()]
bad = 0
for name, digest in entries:
    p = os.path.join(d, name)
    try:
        with open(p, "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        print(f"{name}: fsynced, now {e}"); bad += 1; continue
    if got != digest:
        print(f"{name}: fsynced, now different"); bad += 1
if bad:
    sys.exit(f"{bad} of {len(entries)} fsynced files lost or changed")
st = os.statvfs(d)
if st.f_bfree < st.f_blocks // 2:
    keep = entries[len(entries) // 2:]
    for name, _ in entries[:len(entries) // 2]:
        os.unlink(os.path.join(d, name))
    with open(manifest + ".new", "w") as m:
        m.writelines(f"{n} {h}\n" for n, h in keep)
    os.replace(manifest + ".new", manifest)
    os.sync()
print(f"{len(entries)} fsynced files intact")
PY
}

# Until killed: files created, written, fsynced (with their directory) and
# only then recorded; some files written without fsync, some of those
# renamed or deleted, to keep the journal busy.
workload() {
  exec python3 - "$TMP/fs" "$MANIFEST" "$1" "$2" <<'PY'
import hashlib, os, random, sys
d, manifest, tag, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = random.Random(seed)
dfd = os.open(d, os.O_RDONLY)
m = open(manifest, "a")
i = 0
while True:
    i += 1
    name = f"{tag}-{i}"
    data = rng.randbytes(rng.choice([100, 4096, 10000, 65536, 200000]))
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
        if i % 3 != 0:
            f.flush(); os.fsync(f.fileno()); os.fsync(dfd)
            m.write(f"{name} {hashlib.sha256(data).hexdigest()}\n"); m.flush()
            continue
    if i % 2 == 0:
        os.rename(os.path.join(d, name), os.path.join(d, name + ".tmp"))
    else:
        os.unlink(os.path.join(d, name))
PY
}

# The file system, made once.
fuse_start "$SPEC"
dev=$(fuse_attach "$MNT/disk") || finish
check "mkfs.ext4" timeout 300 mkfs.ext4 -q -F -E nodiscard "$dev"
fuse_detach "$dev"
fuse_stop

for k in $(seq 0 "$KILLS"); do
  fuse_start "$SPEC"
  dev=$(fuse_attach "$MNT/disk") || finish
  fs_mount "$dev" "$TMP/fs" || finish
  check "restart $k: every fsynced file intact" verify_files
  fs_umount "$TMP/fs" || finish
  check "restart $k: e2fsck -fn clean after journal replay" timeout 300 e2fsck -fn "$dev"
  [[ $k -eq $KILLS ]] && break
  fs_mount "$dev" "$TMP/fs" || finish
  workload "r$k" "$RANDOM" >"$TMP/workload.log" 2>&1 &
  WL=$!
  sleep "$((1 + RANDOM % 2)).$((RANDOM % 10))"
  _checks=$((_checks + 1))
  fuse_alive "$SERVER_PID" || fail "kill $k: the server died before the kill"
  kill -KILL "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=
  for _ in $(seq 600); do kill -0 "$WL" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$WL" 2>/dev/null; then
    fail "kill $k: the workload still runs 60 s after the kill"
    kill -KILL "$WL"
  fi
  wait "$WL" 2>/dev/null
  check "kill $k: umount ext4 (lazy)" timeout 60 umount -l "$TMP/fs"
  _mounts=()
  check "kill $k: detach the loop device" timeout 30 "$BLKSTACK" detach "$dev"
  _loops=()
  [[ $_failures -eq 0 ]] || finish
done
fuse_detach "$dev"
fuse_stop
echo "RESULT durability.ext4_kill: $KILLS kills, $(wc -l <"$MANIFEST") fsynced files" \
  "intact at the end, e2fsck clean after each, $((SECONDS - start_s)) s, seed $SEED"
finish
