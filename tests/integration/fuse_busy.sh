#!/usr/bin/env bash
# Busy bio-based devices behind the FUSE export (seed 000, docs/drivers.md
# "When the driver is full"): fio at depth 128 (libaio, direct) on the
# files of RAM disks that take 1, 2 and 64 bios at a time (bio_depth=), and
# of a pass-through stack 4 deep over one that takes 2: a verified random
# write and a mixed job with fsync; no job may see an error.
source "$(dirname "$0")/fuse_lib.sh" "$@"
fuse_require fio python3

# check_py DESC JSON_FILE CODE: CODE asserts on d, the file's JSON (after
# anything fio printed before it).
check_py() {
  cp "$2" "$TMP/fio.json"
  check "$1" python3 -c "import json, sys
text = open(sys.argv[1]).read()
d = json.loads(text[text.find('{'):])
$3" "$TMP/fio.json"
}

# The stack: busy0 under pt0..pt3, the top one exported as "stacked".
STACK=$TMP/stack.toml
{
  printf '[[device]]\nname = "busy0"\nspec = "ram:64M,bio_depth=2"\n'
  below=busy0
  for i in 0 1 2 3; do
    printf '[[device]]\nname = "pt%s"\nspec = "passthrough:lower=%s"\n' "$i" "$below"
    below=pt$i
  done
  printf '[[export]]\nname = "stacked"\ndevice = "pt3"\ntype = "fuse"\n'
} >"$STACK"

fuse_start d1=ram:64M,bio_depth=1 d2=ram:64M,bio_depth=2 d64=ram:64M,bio_depth=64 \
  -- --config "$STACK"
for d in d1 d2 d64 stacked; do
  check "$d: verified randwrite at QD128" \
    fio --ioengine=libaio --direct=1 --filename="$MNT/$d" --output-format=json --name=v \
      --rw=randwrite --bs=4k --iodepth=128 --size=16M --verify=crc32c --verify_fatal=1 \
      --do_verify=1
  check_py "$d: no errors, every block verified" "$OUT" '
j = d["jobs"][0]
assert j["error"] == 0, j["error"]
assert j["read"]["io_bytes"] == 16 << 20, j["read"]["io_bytes"]'
  check "$d: randrw with fsync at QD128" \
    fio --ioengine=libaio --direct=1 --filename="$MNT/$d" --output-format=json --name=m \
      --rw=randrw --bsrange=4k-64k --iodepth=128 --fsync=16 --size=32M --time_based \
      --runtime=2
  check_py "$d: no errors, I/O done" "$OUT" '
j = d["jobs"][0]
assert j["error"] == 0, j["error"]'
done
fuse_stop
finish
