#!/usr/bin/env bash
# A device touches only its own bytes (DESIGN invariant 7), whichever way a
# user opens a file disk: disk, io, bench and serve. The bytes of the
# backing file outside the device are checksummed before and after, under
# every option that changes the device's range: size= below the file's
# length, a length that is not a multiple of the block size, bs=, ro=1;
# and for a loop device given a smaller size= (skipped, saying why, only
# where /dev/loop-control is missing).
source "$(dirname "$0")/lib.sh"
TEST_NAME=cli_outside_bytes
require_tool sha256sum tail head tr timeout
tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/blkstack-outside-bytes.XXXXXX")
loop=
cleanup() {
  [[ -n $loop ]] && losetup -d "$loop" 2>/dev/null
  rm -rf "$tmp" "$_out" "$_err"
}
trap cleanup EXIT

# fill FILE BYTES: BYTES bytes of 0xab (made once per length, then copied).
fill() {
  [[ -f $tmp/fill.$2 ]] || head -c "$2" /dev/zero | tr '\0' '\253' >"$tmp/fill.$2"
  cp "$tmp/fill.$2" "$1"
}
# outside FILE FROM: the checksum and length of FILE's bytes from FROM on.
outside() { echo "$(tail -c +$(($2 + 1)) "$1" | sha256sum) $(stat -c %s "$1")"; }

# check_kept DESC FILE FROM BEFORE: the bytes from FROM on are as they were.
check_kept() {
  _checks=$((_checks + 1))
  [[ $(outside "$2" "$3") == "$4" ]] ||
    _fail "$1: bytes of $(basename "$2") from $3 on changed"
}

# Every path a user opens a disk by, each on a fresh image: SPEC_OPTIONS
# are added to file:IMG; FROM is where the device must end.
each_path() {
  local len=$1 options=$2 from=$3 rw=$4 img=$tmp/img before
  local io=(-c 'read 0 4k')
  [[ $rw == rw ]] && io=(-c "write -P 0x5c 0 $from" -c "zero 0 $from" -c flush)

  fill "$img" "$len"; before=$(outside "$img" "$from")
  expect_ok disk "file:$img$options"
  check_kept "disk file:IMG$options" "$img" "$from" "$before"

  fill "$img" "$len"; before=$(outside "$img" "$from")
  expect_ok io "file:$img$options" "${io[@]}"
  check_kept "io file:IMG$options" "$img" "$from" "$before"

  fill "$img" "$len"; before=$(outside "$img" "$from")
  local mode=randread
  [[ $rw == rw ]] && mode=randwrite
  expect_ok bench --name=outside "--filename=file:$img$options" --rw=$mode --bs=4k \
    --iodepth=4 --number_ios=2000 --runtime=1
  check_kept "bench file:IMG$options" "$img" "$from" "$before"

  fill "$img" "$len"; before=$(outside "$img" "$from")
  _checks=$((_checks + 1))
  rm -f "$tmp/pid"
  "$BLKSTACK" serve --socket "$tmp/sock" --pidfile "$tmp/pid" --export "d=file:$img$options" \
    >"$_out" 2>"$_err" &
  local pid=$! i
  for i in $(seq 100); do [[ -s $tmp/pid ]] && break; sleep 0.1; done
  [[ -s $tmp/pid ]] || _fail "serve --export d=file:IMG$options did not start"
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  wait "$pid" || _fail "serve --export d=file:IMG$options exited $?"
  check_kept "serve --export d=file:IMG$options" "$img" "$from" "$before"
}

each_path $((2 << 20)) ,size=1M $((1 << 20)) rw
each_path $((2 << 20)) ,size=1M,direct=off $((1 << 20)) rw
each_path $((2 << 20)) ,size=1M,ro=1 $((1 << 20)) ro
each_path 10000 "" 9728 rw
each_path 10000 ,bs=4096 8192 rw
each_path 10000 ,ro=1 9728 ro

# A loop device bigger than size=: the bytes past it are the backing file's.
if [[ ! -e /dev/loop-control ]]; then
  echo "SKIP: loop device case: /dev/loop-control is missing (no loop driver here)"
else
  require_root "loop devices"
  require_tool losetup
  fill "$tmp/backing" $((2 << 20))
  before=$(outside "$tmp/backing" $((1 << 20)))
  loop=$(losetup --find --show "$tmp/backing") || _fail "losetup --find --show failed"
  if [[ -n $loop ]]; then
    expect_ok disk "file:$loop,size=1M"
    expect_ok io "file:$loop,size=1M" -c 'write -P 0x5c 0 1M' -c 'zero 0 1M' -c flush
    expect_ok io "file:$loop,size=1M,direct=off" -c 'write -P 0x5c 0 1M' -c flush
    losetup -d "$loop"
    loop=
    check_kept "file:LOOP,size=1M" "$tmp/backing" $((1 << 20)) "$before"
  fi
fi
finish
