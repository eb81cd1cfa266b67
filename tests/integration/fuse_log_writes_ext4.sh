#!/usr/bin/env bash
# The crash-test loop of xfstests' log-writes tests: ext4 on a log-writes
# mapped device (served over FUSE, through a loop device), a workload with a
# sync and a mark at each step; then the log, replayed with `blkstack
# replay-log` onto an image up to each mark, must give a file system that
# mounts (replaying its journal) and that `e2fsck -fn` finds clean.
#
# The logged device is a file disk: it has a volatile write cache, so the
# flushes ext4 sends reach log-writes and order its log (on a device
# without one they mean nothing and are dropped, as in Linux).
source "$(dirname "$0")/fuse_lib.sh" "$@"
fuse_require mkfs.ext4 e2fsck losetup

CTL=$TMP/ctl
SECTORS=$((128 * 2048))  # 128 MiB
cat >"$TMP/serve.toml" <<TOML
[server]
control = "$CTL"

[[device]]
name = "base"
spec = "file:$TMP/base.img,size=128M"

[[device]]
name = "logdev"
spec = "ram:1G"

[[device]]
name = "lw"
table = "0 $SECTORS log-writes base logdev"

[[export]]
name = "lw"
device = "lw"
type = "fuse"
TOML
fuse_start -- --config "$TMP/serve.toml"
dm() { timeout 30 "$BLKSTACK" dmsetup "$1" --control "$CTL" "${@:2}"; }

dev=$(fuse_attach "$MNT/lw") || finish
check "mkfs.ext4" timeout 120 mkfs.ext4 -q -F "$dev"
mark() {
  check "sync before $1" timeout 60 sync -f "$TMP/fs"
  check "mark $1" dm message lw 0 mark "$1"
}
fs_mount "$dev" "$TMP/fs" || finish
marks=()
for step in 1 2 3 4; do
  mkdir -p "$TMP/fs/d$step"
  for i in $(seq 40); do
    head -c $((i * 1024 + step * 37)) /dev/urandom >"$TMP/fs/d$step/f$i"
  done
  [[ $step -gt 1 ]] && rm -rf "$TMP/fs/d$((step - 1))"/f1*
  mv "$TMP/fs/d$step/f2" "$TMP/fs/d$step/renamed"
  mark "step$step"
  marks+=("step$step")
done
fs_umount "$TMP/fs"
fuse_detach "$dev"
check "status counts logged entries" bash -c '[[ $('"$BLKSTACK"' dmsetup status --control '"$CTL"' lw | cut -d" " -f4) -gt 0 ]]'
# Removing the device logs what no flush covered and the end mark, and
# lets the log device go: export it to read the log.
check "stop exporting lw" timeout 30 "$BLKSTACK" remove-export --control "$CTL" lw
check "dmsetup remove lw" dm remove lw
check "export the log device" timeout 30 "$BLKSTACK" add-export --control "$CTL" log logdev --type fuse
check "replay-log reads the log" timeout 60 "$BLKSTACK" replay-log --log "$MNT/log" --num-entries

for m in "${marks[@]}"; do
  img=$TMP/replay-$m.img
  truncate -s $((SECTORS * 512)) "$img"
  check "replay to mark $m" timeout 120 "$BLKSTACK" replay-log --log "$MNT/log" \
    --replay "$img" --end-mark "$m"
  loop=$(losetup -f --show "$img") || { fail "losetup $img"; continue; }
  _loops+=("$loop")
  check "$m: mounts (replaying the journal)" timeout 60 mount "$loop" "$TMP/fs" &&
    _mounts+=("$TMP/fs") &&
    check "$m: the files of the step are there" test -f "$TMP/fs/d${m#step}/renamed" &&
    fs_umount "$TMP/fs"
  check "$m: e2fsck -fn is clean" timeout 120 e2fsck -fn "$loop"
  losetup -d "$loop"
  rm -f "$img"
done
fuse_stop
finish
