#!/usr/bin/env bash
# A partition exported like any block device, to clients no one here wrote:
# a 24 MiB RAM disk filled with random bytes, an MBR with two partitions
# written by sfdisk through the disk's FUSE file, `blkstack rescan`, then
# disk1 exported over NBD: nbdinfo shows its size, nbdcopy writes random
# data into it, qemu-io reads it back (and a write past its end fails), and
# only its bytes changed on the disk (the rest checksummed through the
# whole disk's export before and after). disk2 exported as a FUSE file the
# same way. While disk1 is exported, a rescan of the disk is refused as
# busy and the disk cannot be removed.
source "$(dirname "$0")/fuse_lib.sh" "$@"
fuse_require sfdisk nbdcopy nbdinfo qemu-io sha256sum python3 cmp

CTL=$TMP/ctl
SOCK=$TMP/nbd.sock
fuse_start disk=ram:24M -- --control "$CTL" --socket "$SOCK"
ctl() { timeout 30 "$BLKSTACK" "$@" --control "$CTL"; }
uri() { echo "nbd+unix:///$1?socket=$SOCK"; }

# Sectors: disk1 from 2048, disk2 from 18432, 16384 (8 MiB) each.
P1=$((2048 * 512)) P2=$((18432 * 512)) LEN=$((16384 * 512)) END=$((24 << 20))

check "fill the disk with random bytes" bash -c \
  'head -c 24M /dev/urandom >"$1/rand.img" && nbdcopy --flush "$1/rand.img" "$2"' \
  _ "$TMP" "$(uri disk)"
check "sfdisk writes an MBR through the FUSE file" bash -c '
  printf "label: dos\nstart=2048, size=16384, type=83\nstart=18432, size=16384, type=83\n" |
    sfdisk -q --no-reread --no-tell-kernel "$1" >/dev/null &&
  sfdisk -d "$1" | grep -q "start=        2048, size=       16384"' _ "$MNT/disk"
check "blkstack rescan disk finds disk1 and disk2" bash -c '
  "$1" rescan disk --control "$2" --json | python3 -c "
import json, sys
p = json.load(sys.stdin)[\"partitiontable\"][\"partitions\"]
assert [(x[\"node\"], x[\"start\"], x[\"size\"]) for x in p] == \
    [(\"disk1\", 2048, 16384), (\"disk2\", 18432, 16384)], p"' _ "$BLKSTACK" "$CTL"

# The bytes outside [from, to), as two checksums, read through the whole
# disk's NBD export.
outside() {
  nbdcopy "$(uri disk)" "$TMP/whole.img" || return 1
  { head -c "$1" "$TMP/whole.img" | sha256sum
    tail -c $((END - $2)) "$TMP/whole.img" | sha256sum; } | tr -d '\n -'
}
before1=$(outside $P1 $((P1 + LEN)))

check "add-export p1 disk1 (NBD)" ctl add-export p1 disk1
check "ls lists p1 on disk1" bash -c '"$1" ls --control "$2" --json | python3 -c "
import json, sys
e = [x for x in json.load(sys.stdin)[\"exports\"] if x[\"name\"] == \"p1\"]
assert e and e[0][\"device\"] == \"disk1\", e"' _ "$BLKSTACK" "$CTL"
check "nbdinfo shows disk1's size" bash -c \
  'nbdinfo --size "$1" | grep -qx "$2"' _ "$(uri p1)" "$LEN"
check "random data into p1 (nbdcopy)" bash -c \
  'head -c $2 /dev/urandom >"$1/p1.img" && nbdcopy --flush "$1/p1.img" "$3"' \
  _ "$TMP" "$LEN" "$(uri p1)"
check "read back through p1 (nbdcopy)" nbdcopy "$(uri p1)" "$TMP/p1.out"
check "p1 reads what was written" cmp "$TMP/p1.img" "$TMP/p1.out"
# qemu-io: a pattern at p1's last 64 KiB read back, and nothing past its end.
check_qemu() {
  local desc=$1 out
  shift
  _checks=$((_checks + 1))
  out=$(qemu-io -f raw "$(uri p1)" "$@" 2>&1)
  if [[ $? -ne 0 ]] || grep -qiE "fail|error|mismatch" <<<"$out"; then
    fail "$desc"
    sed 's/^/    | /' <<<"$out"
  fi
}
check_qemu "qemu-io writes and reads a pattern at p1's end" \
  -c "write -P 0xa5 $((LEN - 65536)) 64k" -c "read -P 0xa5 $((LEN - 65536)) 64k"
check "qemu-io cannot write past p1's end" bash -c \
  '! qemu-io -f raw "$1" -c "write -P 0x11 $2 4k" 2>&1 | grep -q "wrote"' _ "$(uri p1)" "$LEN"
check "qemu-io reads p1's first bytes as nbdcopy wrote them" bash -c '
  qemu-io -f raw "$1" -c "read -v 0 512" | python3 -c "
import re, sys
got = bytearray()
for line in sys.stdin:
    m = re.match(r\"[0-9a-f]{8}:((?:\\s+[0-9a-f]{2}){1,16})\", line)
    if m: got += bytes(int(x, 16) for x in m.group(1).split())
want = open(sys.argv[1], \"rb\").read(512)
assert bytes(got) == want, (len(got), got[:16].hex(), want[:16].hex())" "$2/p1.img"' \
  _ "$(uri p1)" "$TMP"
check "only disk1's bytes changed on the disk" \
  test "$(outside $P1 $((P1 + LEN)))" = "$before1"
check "the disk holds p1's data at disk1's start" bash -c \
  'cmp -n $(($3 - 65536)) -i $2:0 "$1/whole.img" "$1/p1.img"' _ "$TMP" "$P1" "$LEN"

check_fails "rescan is refused while disk1 is exported" ctl rescan disk
cp "$OUT" "$TMP/busy.out"
check "the busy error says disk1 is open" grep -q "cannot rescan disk: disk1 is open" "$TMP/busy.out"
check_fails "remove-device disk is refused while disk1 is exported" ctl remove-device disk

# disk2 as a FUSE file, written with dd.
before2=$(outside $P2 $((P2 + LEN)))
check "add-export p2 disk2 (FUSE)" ctl add-export p2 disk2 --type fuse
check "the file is disk2's size" test "$(stat -c %s "$MNT/p2")" -eq "$LEN"
check "dd random data into the file" bash -c \
  'head -c 4M /dev/urandom >"$1/p2.img" &&
   dd if="$1/p2.img" of="$2" bs=1M seek=3 conv=notrunc,fsync status=none' _ "$TMP" "$MNT/p2"
check "the file reads it back" cmp -n $((4 << 20)) -i 0:$((3 << 20)) "$TMP/p2.img" "$MNT/p2"
check "only disk2's bytes changed on the disk" \
  test "$(outside $P2 $((P2 + LEN)))" = "$before2"
check "remove-export p1 and p2" bash -c \
  '"$1" remove-export p1 --control "$2" && "$1" remove-export p2 --control "$2"' \
  _ "$BLKSTACK" "$CTL"
check "rescan allowed once nothing is exported" ctl rescan disk
fuse_stop
finish
