#!/usr/bin/env bash
# qemu-img against blkstack serve: a qcow2 image with data, zeroed and
# unallocated clusters converted onto an export that holds other data
# (`convert -n`, so the zeroes must really be written), compared, a byte
# changed on the export is seen by compare, the export converted back out
# to qcow2, and `qemu-img info` and `map` of the export.
source "$(dirname "$0")/nbd_lib.sh" "$@"
nbd_require qemu-img qemu-io python3

nbd_start main disk=ram:64M
URI=$(nbd_uri disk)
IMG=$NBD_TMP/img.qcow2

check "qemu-img create" qemu-img create -q -f qcow2 "$IMG" 64M
check "qemu-io writes into the qcow2 image" qemu-io -f qcow2 "$IMG" \
  -c 'write -P 0x11 0 1M' -c 'write -P 0x22 10M 64k' -c 'write -P 0x33 20M 1M' \
  -c 'write -z 20M 512k' -c 'write -P 0x44 63M 1M' -c 'write -P 0x55 33M 4k'
# The export starts full of 0xee: unallocated and zero clusters of the image
# must come out as zeroes on it.
check_qemu_io "fill the export with 0xee" "$URI" 'write -P 0xee 0 64M'

check "qemu-img info of the export" qemu-img info --output=json -f raw "$URI"
check_py "info: 64 MiB, raw" "$OUT" 'assert d["virtual-size"] == 64 << 20, d'

check "qemu-img convert -n to the export" qemu-img convert -n -f qcow2 -O raw "$IMG" "$URI"
check "qemu-img compare image and export" qemu-img compare -f qcow2 -F raw "$IMG" "$URI"
check_qemu_io "the zeroed range reads as zeroes" "$URI" 'read -P 0 20M 512k' \
  'read -P 0x33 20.5M 512k' 'read -P 0 2M 8M' 'read -P 0x55 33M 4k'

# compare sees a difference (so a passing compare means something).
check_qemu_io "change one sector of the export" "$URI" 'write -P 0x99 10M 512'
_checks=$((_checks + 1))
qemu-img compare -f qcow2 -F raw "$IMG" "$URI" >"$OUT" 2>&1
rc=$?
if [[ $rc -ne 1 ]] || ! grep -q 'Content mismatch at offset 10485760' "$OUT"; then
  fail "compare after changing offset 10M: exit $rc, expected 1 and a mismatch at 10485760"
  _show_out
fi
check_qemu_io "restore the sector" "$URI" 'write -P 0x22 10M 512'

# Out to a new qcow2 image, compared with the original.
check "qemu-img convert the export to qcow2" \
  qemu-img convert -f raw -O qcow2 "$URI" "$NBD_TMP/out.qcow2"
check "compare original and copied-out image" \
  qemu-img compare -f qcow2 -F qcow2 "$IMG" "$NBD_TMP/out.qcow2"

# The map of the export: data where the image had data. (Where the image
# had zeroes, the export may hold zeroes as data or as holes.)
check "qemu-img map of the export" qemu-img map --output=json -f raw "$URI"
check_py "map: the written ranges are data" "$OUT" '
M = 1 << 20
def at(off):
    for e in d:
        if e["start"] <= off < e["start"] + e["length"]:
            return e
    raise AssertionError(("offset not in the map", off))
assert sum(e["length"] for e in d) == 64 * M, "map does not cover the export"
for off in (0, M - 1, 10 * M, 20 * M + 512 * 1024, 33 * M, 63 * M, 64 * M - 1):
    e = at(off)
    assert e["data"] is True and e["zero"] is False, (off, e)'

nbd_stop main
finish
