#!/usr/bin/env bash
# nbdinfo (libnbd) against blkstack serve: the export list with names and
# sizes, the capabilities and block sizes of each export, the empty name
# selecting the first export, an unknown name refused, a read-only export,
# and the allocation map (base:allocation) of a fresh RAM export, after
# writes (nbdcopy of a sparse file) and compared with what was written.
source "$(dirname "$0")/nbd_lib.sh" "$@"
nbd_require nbdinfo nbdcopy python3 cmp truncate

M=$((1024 * 1024))
nbd_start main disk=ram:64M small=ram:1M,bs=4096 ro=ram:16M,ro=1
MAIN=$NBD_SOCK

# --list: every export by name, in order, with its size and properties.
# (Against nbdkit the list comes from the exportname filter: all names
# share the first export's device.)
if check "nbdinfo --list" nbdinfo --list --json "nbd+unix://?socket=$MAIN"; then
  cp "$OUT" "$NBD_TMP/list.json"
  check_py "--list: names" "$NBD_TMP/list.json" '
names = [e["export-name"] for e in d["exports"]]
assert names == ["disk", "small", "ro"], names
assert d["structured"] is True, "structured replies not negotiated"'
  if [[ $NBD_SERVER == blkstack ]]; then
    check_py "--list: sizes, read-only, block sizes" "$NBD_TMP/list.json" '
e = {x["export-name"]: x for x in d["exports"]}
assert e["disk"]["export-size"] == 64 << 20, e["disk"]
assert e["small"]["export-size"] == 1 << 20, e["small"]
assert e["ro"]["export-size"] == 16 << 20, e["ro"]
assert e["disk"]["is_read_only"] is False and e["small"]["is_read_only"] is False
assert e["ro"]["is_read_only"] is True, e["ro"]
assert e["small"].get("block_size_minimum") == 4096, e["small"]
assert e["disk"].get("block_size_minimum") == 512, e["disk"]'
  fi
fi

# One export in detail: size, capabilities of a RAM device, block sizes.
if check "nbdinfo disk" nbdinfo --json "$(nbd_uri disk "$MAIN")"; then
  check_py "disk: size, capabilities, block sizes" "$OUT" '
x = d["exports"][0]
assert x["export-name"] == "disk", x
assert x["export-size"] == 64 << 20, x["export-size"]
assert "base:allocation" in x.get("contexts", []), x.get("contexts")
for k in ("can_trim", "can_zero", "can_flush", "can_fua", "can_multi_conn", "can_cache",
          "can_df", "can_fast_zero"):
    assert x.get(k) is True, (k, x.get(k))
assert x["is_read_only"] is False
mn, pr, mx = (x.get("block_size_" + k) for k in ("minimum", "preferred", "maximum"))
assert None not in (mn, pr, mx), ("block sizes missing", mn, pr, mx)
pow2 = lambda v: v > 0 and v & (v - 1) == 0
assert mn == 512, ("minimum block size", mn)
assert pow2(pr) and pr >= mn and pr <= 32 << 20, ("preferred block size", pr)
assert mx >= pr and mx % mn == 0, ("maximum block size", mx)'
fi
if check "nbdinfo small" nbdinfo --json "$(nbd_uri small "$MAIN")"; then
  check_py "small: bs=4096 gives a 4096-byte minimum block size" "$OUT" '
x = d["exports"][0]
assert x.get("block_size_minimum") == 4096, x.get("block_size_minimum")
assert x.get("block_size_preferred", 0) >= 4096, x.get("block_size_preferred")'
  check_py "small: size" "$OUT" 'assert d["exports"][0]["export-size"] == 1 << 20'
fi

# The empty name selects the first export; an unknown name is refused.
if check "nbdinfo with the empty export name" nbdinfo --json "nbd+unix:///?socket=$MAIN"; then
  check_py "the empty name is the first export (64 MiB)" "$OUT" '
assert d["exports"][0]["export-size"] == 64 << 20, d["exports"][0]'
fi
# (nbdkit's exportname filter accepts any name.)
if [[ $NBD_SERVER == blkstack ]]; then
  check_fails "an unknown export name is refused" nbdinfo --size "$(nbd_uri nope "$MAIN")"
fi

# The read-only export says so, and has no write-side capabilities.
if check "nbdinfo ro" nbdinfo --json "$(nbd_uri ro "$MAIN")"; then
  check_py "ro: read-only" "$OUT" '
x = d["exports"][0]
assert x["is_read_only"] is True, x
for k in ("can_trim", "can_zero", "can_fua", "can_fast_zero"):
    assert x.get(k) is not True, (k, "advertised on a read-only export")'
fi
# nbdinfo --is/--can: exit 0 = true, 2 = false.
is_check() {  # DESC EXPECTED_EXIT ARGS...
  local desc=$1 want=$2
  shift 2
  _checks=$((_checks + 1))
  nbdinfo "$@" >"$OUT" 2>&1
  local rc=$?
  [[ $rc -eq $want ]] || { fail "$desc: 'nbdinfo $*' exited $rc, expected $want"; _show_out; }
}
is_check "ro is read-only" 0 --is read-only "$(nbd_uri ro "$MAIN")"
is_check "disk is not read-only" 2 --is read-only "$(nbd_uri disk "$MAIN")"
is_check "disk can trim" 0 --can trim "$(nbd_uri disk "$MAIN")"
is_check "disk can flush" 0 --can flush "$(nbd_uri disk "$MAIN")"
is_check "ro cannot write" 2 --can write "$(nbd_uri ro "$MAIN")"

# The allocation map. Fresh: one hole that reads as zeroes, end to end.
map_check() {  # DESC EXPORT SIZE DATA_RANGES (python list of (offset, length))
  local desc=$1 export=$2 size=$3 ranges=$4
  check "$desc: nbdinfo --map" nbdinfo --map --json "$(nbd_uri "$export" "$MAIN")" || return
  check_py "$desc" "$OUT" "
size, data = $size, $ranges
pos = 0
for e in d:
    assert e['offset'] == pos, ('extents not contiguous', e, pos)
    assert e['length'] > 0, e
    pos += e['length']
assert pos == size, ('map ends at', pos, 'expected', size)
def state(off):
    for e in d:
        if e['offset'] <= off < e['offset'] + e['length']:
            return e['type']
# Every extent boundary and every data boundary, and a point inside each.
points = {0, size - 1}
for o, l in data:
    points |= {o, o + l - 1, o + l // 2, max(0, o - 1), min(size - 1, o + l)}
for e in d:
    points |= {e['offset'], e['offset'] + e['length'] - 1}
for p in sorted(points):
    is_data = any(o <= p < o + l for o, l in data)
    t = state(p)
    if is_data:
        assert t & 1 == 0, ('written byte', p, 'reported as a hole', t)
        assert t & 2 == 0, ('written (random) byte', p, 'reported as zero', t)
    else:
        assert t == 3, ('never-written byte', p, 'reported as', t, 'expected hole,zero (3)')
"
}
map_check "fresh disk is all hole" disk $((64 * M)) "[]"
map_check "fresh ro is all hole" ro $((16 * M)) "[]"

# Write 64 KiB at 1 MiB and 4 KiB at 40 MiB (a sparse file; nbdcopy skips
# its holes with --destination-is-zero), then the map shows exactly those.
IMG=$NBD_TMP/sparse.img
truncate -s 64M "$IMG"
head -c 65536 /dev/urandom | dd of="$IMG" bs=1M seek=1 conv=notrunc status=none
head -c 4096 /dev/urandom | dd of="$IMG" bs=4096 seek=$((40 * 256)) conv=notrunc status=none
check "nbdcopy the sparse file in" nbdcopy --destination-is-zero --flush "$IMG" "$(nbd_uri disk "$MAIN")"
if [[ $NBD_SERVER == blkstack ]]; then
  map_check "after writes" disk $((64 * M)) "[($M, 65536), ($((40 * M)), 4096)]"
else
  # nbdkit's memory plugin keeps 32 KiB pages: the written 4 KiB shows as a
  # 32 KiB data extent.
  map_check "after writes" disk $((64 * M)) "[($M, 65536), ($((40 * M)), 32768)]"
fi
check "nbdcopy the export out" nbdcopy "$(nbd_uri disk "$MAIN")" "$NBD_TMP/out.img"
check "the export holds what was written" cmp "$IMG" "$NBD_TMP/out.img"
# The other exports are separate devices: still all hole.
map_check "ro after writes to disk" ro $((16 * M)) "[]"
map_check "small after writes to disk" small $M "[]"

nbd_stop main
finish
