#!/usr/bin/env bash
# blkstack part against the tools everyone trusts: tables written by sfdisk
# (MBR with extended and logical partitions, GPT with 128 entries and gaps,
# a GPT with a damaged primary header, 4096-byte sectors, a hybrid MBR made
# by hand), read by blkstack and compared field by field with sfdisk --json
# and libblkid (partx, blkid -p); malformed tables refused with a message.
source "$(dirname "$0")/lib.sh"
require_tool sfdisk partx blkid python3 truncate dd

dir=$(mktemp -d /var/tmp/blkstack-part-XXXXXX)
loops=()
cleanup() {
  local l
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null; done
  rm -rf "$dir" "$_out" "$_err"
}
trap cleanup EXIT

# compare IMG SECTOR_SIZE [REF]: blkstack part --json against sfdisk --json
# of REF (default IMG), and (512-byte sectors: partx and blkid read files
# so) against libblkid.
compare() {
  local img=$1 ss=$2 ref=${3:-$1} extra=""
  [[ $ss == 4096 ]] && extra=",bs=4096"
  run part "file:$img,name=disk0$extra" --json
  if [[ $_rc -ne 0 ]]; then _fail "'$_cmd' exited $_rc"; return; fi
  cp "$_out" "$dir/ours.json"
  sfdisk --json "$ref" >"$dir/sfdisk.json" 2>/dev/null
  : >"$dir/partx.txt"
  : >"$dir/blkid.txt"
  if [[ $ss == 512 ]]; then
    partx -g -o NR,START,SECTORS,TYPE,UUID,NAME,FLAGS -P "$img" >"$dir/partx.txt"
    blkid -p -o export "$img" >"$dir/blkid.txt"
  fi
  _checks=$((_checks + 1))
  if ! python3 - "$dir" <<'PY' >"$_err" 2>&1; then _fail "$img: blkstack part differs"; fi
import json, re, shlex, sys
d = sys.argv[1]
ours = json.load(open(f"{d}/ours.json"))["partitiontable"]
ref = json.load(open(f"{d}/sfdisk.json"))["partitiontable"]
bad = []
def same(what, a, b):
    if a != b: bad.append(f"{what}: blkstack {a!r}, reference {b!r}")
for k in ("label", "id", "unit", "sectorsize", "firstlba", "lastlba"):
    same(k, ours.get(k), ref.get(k))
num = lambda node: int(re.search(r"(\d+)$", node).group(1))
op = {num(p["node"]): p for p in ours["partitions"]}
rp = {num(p["node"]): p for p in ref["partitions"]}
same("numbers", sorted(op), sorted(rp))
for n in rp:
    for k in set(rp[n]) | set(op.get(n, {})):
        if k != "node": same(f"partition {n} {k}", op.get(n, {}).get(k), rp[n].get(k))
# libblkid: partx's pairs and blkid's probe of the whole disk.
for line in open(f"{d}/partx.txt"):
    f = dict(kv.split("=", 1) for kv in shlex.split(line))
    n = int(f["NR"]); p = op.get(n, {})
    same(f"partx {n} start", p.get("start"), int(f["START"]))
    same(f"partx {n} size", p.get("size"), int(f["SECTORS"]))
    if ours["label"] == "gpt":
        same(f"partx {n} type", p.get("type", "").lower(), f["TYPE"])
        same(f"partx {n} uuid", p.get("uuid", "").lower(), f["UUID"])
        # partx escapes bytes outside ASCII as \xHH.
        name = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                      f["NAME"].encode()).decode()
        same(f"partx {n} name", p.get("name", ""), name)
        same(f"partx {n} attrs", p.get("attrs"), ref["partitions"][[num(q["node"]) for q in ref["partitions"]].index(n)].get("attrs"))
    else:
        same(f"partx {n} type", int(p.get("type", "0"), 16), int(f["TYPE"], 16))
        same(f"partx {n} boot", p.get("bootable", False), f["FLAGS"] == "0x80")
blk = dict(l.strip().split("=", 1) for l in open(f"{d}/blkid.txt") if "=" in l)
if blk:
    same("blkid PTTYPE", ours["label"], blk.get("PTTYPE"))
    want = ours["id"].lower().removeprefix("0x")
    same("blkid PTUUID", want, blk.get("PTUUID"))
if bad:
    print("\n".join(bad)); sys.exit(1)
PY
}

# MBR: primaries with a gap, an extended partition with three logicals.
img=$dir/dos.img
truncate -s 64M "$img"
sfdisk -q "$img" >/dev/null <<'T'
label: dos
label-id: 0x1234abcd
start=2048, size=8192, type=83, bootable
start=10240, size=40960, type=5
start=12288, size=2048, type=82
start=16384, size=4096, type=83
start=22528, size=8192, type=c
start=61440, size=4096, type=7
T
compare "$img" 512
expect_ok -m '^Disklabel type: dos' -m '^disk0p5 +12288 +14335 +2048 +1M +82 Linux swap' \
  -m '^disk0p1 +\* +2048 ' part "file:$img,name=disk0"

# GPT: 128 entries, partitions 1, 3 and 7 (gaps), names and attributes.
img=$dir/gpt.img
truncate -s 64M "$img"
sfdisk -q "$img" >/dev/null <<'T'
label: gpt
first-lba: 2048
1: start=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system", attrs="RequiredPartition"
3: start=8192, size=16384, name="root é", attrs="LegacyBIOSBootable GUID:48,60"
7: start=40960, size=8192, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F
T
compare "$img" 512
expect_ok -m '^Disklabel type: gpt' -m '^disk0p7 +40960 +49151 +8192 +4M Linux swap' \
  part "file:$img,name=disk0"

# The primary header damaged: read from the backup, as sfdisk and libblkid do.
dd if=/dev/urandom of="$img" bs=1 seek=$((512 + 60)) count=4 conv=notrunc status=none
compare "$img" 512
expect_ok -m '^disk0p3 ' part "file:$img,name=disk0"
grep -q 'primary GPT header is invalid (bad header CRC); using the backup' "$_err" ||
  _fail "no warning about the primary header: $(cat "$_err")"

# Both headers damaged: no partitions, and why.
dd if=/dev/urandom of="$img" bs=1 seek=$((64 * 1024 * 1024 - 512 + 60)) count=4 \
  conv=notrunc status=none
expect_fail -m 'both GPT headers are invalid: primary: bad header CRC; backup: bad header CRC' \
  part "file:$img,name=disk0"

# 4096-byte logical sectors: sfdisk takes the sector size from the device,
# so it writes (and reads) through a loop device with 4096-byte sectors.
if [[ $(id -u) -eq 0 ]]; then
  for label in gpt dos; do
    img=$dir/${label}4k.img
    truncate -s 64M "$img"
    loop=$(losetup -b 4096 -f --show "$img") || { _fail "losetup -b 4096 failed"; continue; }
    loops+=("$loop")
    if [[ $label == gpt ]]; then
      printf 'label: gpt\nstart=256, size=2048, name="data"\nstart=4096, size=1024\n'
    else
      printf 'label: dos\nstart=256,size=2048,type=5\nstart=512,size=512\nstart=4096,size=64\n'
    fi | sfdisk -q "$loop" >/dev/null 2>&1
    compare "$img" 4096 "$loop"
  done
else
  echo "cli_part: 4096-byte sectors not checked: sfdisk needs a loop device (root)"
fi

# A hybrid MBR (sfdisk cannot write one): the GPT's protective entry only
# up to partition 1, which the MBR lists too, as gdisk makes them.
img=$dir/hybrid.img
truncate -s 64M "$img"
printf 'label: gpt\nstart=2048,size=4096\nstart=8192,size=4096\n' | sfdisk -q "$img" >/dev/null
python3 - "$img" <<'PY'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(446)
    f.write(struct.pack("<B3xB3xII", 0, 0xEE, 1, 2047) +
            struct.pack("<B3xB3xII", 0x80, 0x83, 2048, 4096) + bytes(32))
PY
compare "$img" 512
expect_ok -m '^Disklabel type: gpt' part "file:$img,name=disk0"

# Malformed MBR: an EBR that links back to itself; a partition past the end.
img=$dir/loop.img
truncate -s 16M "$img"
printf 'label: dos\nstart=2048,size=8192,type=5\nstart=4096,size=1024\n' |
  sfdisk -q "$img" >/dev/null
python3 - "$img" <<'PY'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(2048 * 512 + 446 + 16)  # the EBR's link entry: to itself
    f.write(struct.pack("<B3xB3xII", 0, 0x05, 0, 8192))
PY
expect_fail -m 'the EBR chain loops back to block 2048' part "file:$img,name=disk0"
truncate -s 16M "$dir/end.img"
printf 'label: dos\nstart=2048,size=8192\n' | sfdisk -q "$dir/end.img" >/dev/null
truncate -s 4M "$dir/end.img"
expect_fail -m 'partition 1 \(blocks 2048 to 10239\) is outside the disk' \
  part "file:$dir/end.img,name=disk0"
# No table at all.
truncate -s 1M "$dir/empty.img"
expect_fail -m 'does not contain a recognized partition table' part "file:$dir/empty.img"
finish
