#!/usr/bin/env bash
# A device touches only its own bytes (DESIGN invariant 7), whichever way a
# user opens a file disk: disk, io, bench and serve. The bytes of the
# backing file outside the device are compared with what was there before,
# under every option that changes the device's range: size= below the
# file's length, a length that is not a multiple of the block size, bs=,
# ro=1; and for a loop device given a smaller size= (skipped, saying why,
# only where /dev/loop-control is missing).
source "$(dirname "$0")/lib.sh"
TEST_NAME=cli_outside_bytes
require_tool cmp head tr timeout
tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/blkstack-outside-bytes.XXXXXX")
loop=
cleanup() {
  [[ -n $loop ]] && losetup -d "$loop" 2>/dev/null
  rm -rf "$tmp" "$_out" "$_err"
}
trap cleanup EXIT

# fill FILE BYTES: BYTES bytes of 0xab, copied from $tmp/fill.BYTES (made
# once per length: the "before" every check compares with).
fill() {
  [[ -f $tmp/fill.$2 ]] || head -c "$2" /dev/zero | tr '\0' '\253' >"$tmp/fill.$2"
  cp "$tmp/fill.$2" "$1"
}

# check_kept DESC FILE FROM BYTES: FILE, filled with BYTES bytes, is as it
# was from FROM on (same bytes, same length).
check_kept() {
  _checks=$((_checks + 1))
  cmp -s -i "$3" "$2" "$tmp/fill.$4" ||
    _fail "$1: bytes of $(basename "$2") from $3 on changed"
}

# The cases: LENGTH OPTIONS FROM RW, where OPTIONS are added to file:IMG,
# FROM is where the device must end, RW says whether it is written.
cases=(
  "$((2 << 20)) ,size=1M $((1 << 20)) rw"
  "$((2 << 20)) ,size=1M,direct=off $((1 << 20)) rw"
  "$((2 << 20)) ,size=1M,ro=1 $((1 << 20)) ro"
  "10000 '' 9728 rw"
  "10000 ,bs=4096 8192 rw"
  "10000 ,ro=1 9728 ro"
)
# fresh: every case's image, img.N, filled anew.
fresh() {
  local n=0 c
  for c in "${cases[@]}"; do
    eval "set -- $c"
    fill "$tmp/img.$n" "$1"
    n=$((n + 1))
  done
}
# kept HOW: every case's image is as it was from where its device ends.
kept() {
  local how=$1 n=0 c
  for c in "${cases[@]}"; do
    eval "set -- $c"
    check_kept "$how file:IMG$2 ($1 bytes)" "$tmp/img.$n" "$3" "$1"
    n=$((n + 1))
  done
}

# Every path a user opens a disk by, each with all the cases at once (one
# process for all of them where the command takes several disks).
fresh
specs=() n=0
for c in "${cases[@]}"; do eval "set -- $c"; specs+=("file:$tmp/img.$n$2"); n=$((n + 1)); done
expect_ok disk "${specs[@]}"
kept disk

fresh
n=0
for c in "${cases[@]}"; do
  eval "set -- $c"
  io=(-c 'read 0 4k')
  [[ $4 == rw ]] && io=(-c "write -P 0x5c 0 $3" -c "zero 0 $3" -c flush)
  expect_ok io "file:$tmp/img.$n$2" "${io[@]}"
  n=$((n + 1))
done
kept io

fresh
jobs=() n=0
for c in "${cases[@]}"; do
  eval "set -- $c"
  mode=randread
  [[ $4 == rw ]] && mode=randwrite
  jobs+=(--name=outside$n "--filename=file:$tmp/img.$n$2" --rw=$mode)
  n=$((n + 1))
done
expect_ok bench --bs=4k --iodepth=4 --number_ios=2000 --runtime=1 "${jobs[@]}"
kept bench

fresh
exports=() n=0
for c in "${cases[@]}"; do
  eval "set -- $c"
  exports+=(--export "d$n=file:$tmp/img.$n$2")
  n=$((n + 1))
done
_checks=$((_checks + 1))
rm -f "$tmp/pid"
"$BLKSTACK" serve --socket "$tmp/sock" --pidfile "$tmp/pid" "${exports[@]}" >"$_out" 2>"$_err" &
pid=$!
for i in $(seq 200); do [[ -s $tmp/pid ]] && break; sleep 0.05; done
[[ -s $tmp/pid ]] || _fail "serve with every case exported did not start"
kill -TERM "$pid" 2>/dev/null
for i in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
wait "$pid" || _fail "serve with every case exported exited $?"
kept serve

# A loop device bigger than size=: the bytes past it are the backing file's.
if [[ ! -e /dev/loop-control ]]; then
  echo "SKIP: loop device case: /dev/loop-control is missing (no loop driver here)"
else
  require_root "loop devices"
  require_tool losetup
  fill "$tmp/backing" $((2 << 20))
  loop=$(losetup --find --show "$tmp/backing") || _fail "losetup --find --show failed"
  if [[ -n $loop ]]; then
    expect_ok disk "file:$loop,size=1M"
    expect_ok io "file:$loop,size=1M" -c 'write -P 0x5c 0 1M' -c 'zero 0 1M' -c flush
    expect_ok io "file:$loop,size=1M,direct=off" -c 'write -P 0x5c 0 1M' -c flush
    losetup -d "$loop"
    loop=
    check_kept "file:LOOP,size=1M" "$tmp/backing" $((1 << 20)) $((2 << 20))
  fi
fi
finish
