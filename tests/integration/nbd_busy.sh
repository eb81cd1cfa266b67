#!/usr/bin/env bash
# Busy bio-based devices behind the NBD export (seed 000, docs/drivers.md
# "When the driver is full"): fio's nbd engine at depth 128 against RAM
# disks that take 1, 2 and 64 bios at a time (bio_depth=), the rest parked
# in order by the core, and a pass-through stack 4 deep over one that
# takes 2. A verified random write (every block read back and checked) and
# a mixed job with an fsync every 16 writes: no job may see an error; busy
# is back-pressure, never an error.
source "$(dirname "$0")/nbd_lib.sh" "$@"
nbd_require fio python3

# The stack: busy0 under pt0..pt3, the top one exported as "disk".
STACK=$NBD_TMP/stack.toml
{
  printf '[[device]]\nname = "busy0"\nspec = "ram:64M,bio_depth=2"\n'
  below=busy0
  for i in 0 1 2 3; do
    printf '[[device]]\nname = "pt%s"\nspec = "passthrough:lower=%s"\n' "$i" "$below"
    below=pt$i
  done
  printf '[[export]]\nname = "disk"\ndevice = "pt3"\n'
} >"$STACK"

for depth in 1 2 64 stacked; do
  if [[ $depth == stacked ]]; then
    nbd_start "d$depth" -- --config "$STACK"
  else
    nbd_start "d$depth" disk="ram:64M,bio_depth=$depth"
  fi
  URI=$(nbd_uri disk)
  check "depth $depth: verified randwrite at QD128" \
    fio --ioengine=nbd --uri="$URI" --output-format=json --name=v --rw=randwrite \
      --bs=4k --iodepth=128 --size=16M --verify=crc32c --verify_fatal=1 --do_verify=1
  check_py "depth $depth: no errors, every block verified" "$OUT" '
j = d["jobs"][0]
assert j["error"] == 0, j["error"]
assert j["read"]["io_bytes"] == 16 << 20, j["read"]["io_bytes"]'
  check "depth $depth: randrw with fsync at QD128" \
    fio --ioengine=nbd --uri="$URI" --output-format=json --name=m --rw=randrw \
      --bsrange=4k-64k --iodepth=128 --fsync=16 --size=32M --time_based --runtime=2
  check_py "depth $depth: no errors, I/O done" "$OUT" '
j = d["jobs"][0]
assert j["error"] == 0, j["error"]
assert j["read"]["total_ios"] > 0 and j["write"]["total_ios"] > 0'
  nbd_stop "d$depth"
done
finish
