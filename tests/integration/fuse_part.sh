#!/usr/bin/env bash
# Seed 003's walk on the kernel's real path: a RAM disk served over FUSE, a
# loop device over its file, sfdisk writing a GPT through the loop device,
# `blkstack rescan` reading it, the first partition exported (a passthrough
# disk over it, served as a FUSE file) and attached through another loop
# device (the whole disk's export removed first: the claim on the
# partition covers it), then ext4 on it: mkfs, mount, write, read back,
# umount, e2fsck.
# While the partition is held by its export, a rescan is refused as busy.
source "$(dirname "$0")/fuse_lib.sh" "$@"
fuse_require sfdisk mkfs.ext4 e2fsck sha256sum python3

CTL=$TMP/ctl
fuse_start disk=ram:256M -- --control "$CTL"
ctl() { timeout 30 "$BLKSTACK" "$@" --control "$CTL"; }

whole=$(fuse_attach "$MNT/disk") || finish
check "sfdisk writes a GPT through $whole" bash -c '
  printf "label: gpt\nstart=2048, size=262144, name=\"data\"\nstart=264192, size=65536\n" |
    sfdisk -q "$1" >/dev/null 2>&1
  sfdisk -d "$1" | grep -q "start=        2048, size=      262144"' _ "$whole"
check "blockdev --flushbufs $whole" blockdev --flushbufs "$whole"
fuse_detach "$whole"

check "blkstack rescan disk finds disk1 and disk2" bash -c '
  "$1" rescan disk --control "$2" --json | python3 -c "
import json, sys
t = json.load(sys.stdin)[\"partitiontable\"]
assert t[\"label\"] == \"gpt\", t
p = t[\"partitions\"]
assert [(x[\"node\"], x[\"start\"], x[\"size\"]) for x in p] == \
    [(\"disk1\", 2048, 262144), (\"disk2\", 264192, 65536)], p
assert p[0][\"name\"] == \"data\", p"' _ "$BLKSTACK" "$CTL"

# A stacked disk's claim on disk1 covers the whole disk, which must then
# not stay exported for writing: its export goes first.
check "remove-export disk" ctl remove-export disk
check "add-device part1 over disk1" ctl add-device part1 passthrough:lower=disk1
check "add-export part1 as a FUSE file" ctl add-export part1 part1 --type fuse
check "the exported file is the partition's size" \
  test "$(stat -c %s "$MNT/part1")" -eq $((262144 * 512))
check_fails "rescan is refused while disk1 is held" ctl rescan disk
cp "$OUT" "$TMP/busy.out"
check "the busy error names the holder" \
  grep -q "cannot rescan disk: disk is held by part1" "$TMP/busy.out"

dev=$(fuse_attach "$MNT/part1") || finish
check "mkfs.ext4 on the partition" timeout 300 mkfs.ext4 -q -F "$dev"
fs_mount "$dev" "$TMP/fs"
check "write a file" dd if=/dev/urandom of="$TMP/fs/data" bs=1M count=16 status=none conv=fsync
sum=$(sha256sum <"$TMP/fs/data")
fs_umount "$TMP/fs"
fs_mount "$dev" "$TMP/fs"
check "read it back after a remount" test "$(sha256sum <"$TMP/fs/data")" = "$sum"
fs_umount "$TMP/fs"
check "e2fsck -fn clean" timeout 300 e2fsck -fn "$dev"
fuse_detach "$dev"

# The second partition was never written: ext4 stayed inside the first.
check "disk2 untouched" bash -c '
  "$1" add-device part2 passthrough:lower=disk2 --control "$2" >/dev/null &&
  "$1" add-export part2 part2 --type fuse --control "$2" >/dev/null &&
  cmp -n $((65536 * 512)) "$3/part2" /dev/zero' _ "$BLKSTACK" "$CTL" "$MNT"
fuse_stop
finish
