#!/usr/bin/env bash
# Bad device specs fail cleanly (non-zero exit, no crash) with a message that
# quotes the spec and names the bad part.
source "$(dirname "$0")/lib.sh"

expect_fail -m "'rom:1M'" -m "unknown device type 'rom'" -m 'known: .*ram' disk rom:1M
expect_fail -m "'ram:64Q'" -m "'64Q'" -m 'size' disk ram:64Q
expect_fail -m "'ram:1M,foo=1'" -m "unknown option 'foo'" disk ram:1M,foo=1
expect_fail -m "'x'" -m 'already exists' disk ram:1M,name=x null:1M,name=x
expect_fail -m "'ram:1M,size=2M'" -m 'size' disk ram:1M,size=2M
expect_fail -m "'ram:1M,bs=1000'" -m "'bs'|block size" disk ram:1M,bs=1000
# Block sizes the drivers cannot take: zero, and values that only fit after
# truncation to 32 bits (found by tests/fuzz/device_spec_fuzz).
expect_fail -m "'ram:1M,bs=0'" -m "'bs'|block size" disk ram:1M,bs=0
expect_fail -m "'null:1M,bs=0'" -m "'bs'|block size" disk null:1M,bs=0
expect_fail -m "'ram:1M,bs=4294967808'" -m "'bs'|block size" disk ram:1M,bs=4294967808
expect_fail -m "'null:1G,completion=later'" -m "'later'" -m 'inline\|deferred\|timer' \
  disk null:1G,completion=later
expect_fail -m "'ram:1M,ro'" -m "'ro'" disk ram:1M,ro
expect_fail -m "'ram:'" disk ram:
expect_fail -m 'empty' disk ''
# The same checks apply to blkstack io.
expect_fail -m "unknown device type 'rom'" io rom:1M -c 'read 0 4k'
# Sizes past what a driver can serve are refused with the valid range, not
# by std::bad_alloc escaping main (ram:8E aborted) or a table of gigabytes
# (ram:1P zero-filled 4 GiB): the RAM disk's chunk table costs address space,
# not memory, up to its limit.
expect_fail -m "'ram:8E'" -m "'size'" -m 'valid: .* to 1 PiB' disk ram:8E
expect_fail -m "'ram:2P'" -m "'size'" -m 'valid: .* to 1 PiB' disk ram:2P
expect_fail -m "'null:8E'" -m "'size'" -m 'valid: ' disk null:8E
expect_ok -m 'ram0 .* 1 PiB' disk ram:1P
expect_fail -m "'depth'" -m 'valid: 1 to ' disk null:1M,queue_mode=mq,depth=0
expect_fail -m "'hw_queues'" -m 'valid: 1 to ' disk null:1M,queue_mode=mq,hw_queues=18446744073709551615
expect_fail -m "'hw_queues'" -m 'valid: 1 to ' disk null:1M,queue_mode=mq,hw_queues=4294967296
expect_fail -m "'timeout'" -m 'valid: ' disk null:1M,queue_mode=mq,timeout=0
expect_fail -m "'timeout'" -m 'valid: ' disk null:1M,queue_mode=mq,timeout=18446744073709551615
expect_fail -m "'completion_nsec'" -m 'valid: ' disk null:1M,completion_nsec=18446744073709551615

# Numeric options at and past their edges through the program: each is
# taken or refused with a message naming the option and its valid range;
# never a signal, never a hang. One of each kind (size, count, duration) per
# driver: the whole matrix, every numeric option of every driver against
# every edge, runs in-process in tests/unit/device_spec_test.cc
# (DeviceSpecCreate.EveryNumericOptionIsTakenOrRefusedWithItsRange). A
# runaway allocation is stopped by an address space limit rather than
# taking the machine (not under ASan, whose shadow needs terabytes).
img_dir=$(mktemp -d "${TMPDIR:-/var/tmp}/blkstack-bad-specs.XXXXXX")
trap 'rm -rf "$img_dir" "$_out" "$_err"' EXIT
grep -q __asan_init "$BLKSTACK" || ulimit -v $((8 << 20))
img=$img_dir/img
edge_specs=(
  size:null:size=18446744073709551616 size:null:size=16E bs:null:1M,bs=8E
  max_sectors:null:1M,max_sectors=4294967296 completion_nsec:null:1M,completion_nsec=1P
  depth:null:1M,queue_mode=mq,depth=9223372036854775808
  timeout:null:1M,queue_mode=mq,timeout=99999999999999999999999
  size:ram:size=9223372036854775808 size:ram:size=1P max_sectors:ram:1M,max_sectors=-1
  size:file:$img,size=8E size:file:$img,size=0 poll_queues:file:$img,size=1M,poll_queues=1ms
  max_sectors:file:$img,size=1M,max_sectors=4294967296
)
for entry in "${edge_specs[@]}"; do
  opt=${entry%%:*} spec=${entry#*:} v=${entry##*=}
  rm -f "$img"
  # run, under a time limit: a hang is a failure too (137, SIGKILL).
  _checks=$((_checks + 1))
  _cmd="blkstack disk $spec"
  timeout -s KILL 30 "$BLKSTACK" disk "$spec" >"$_out" 2>"$_err"
  _rc=$?
  if [[ $_rc -ge 128 ]]; then
    _fail "'$_cmd' died with signal $((_rc - 128))"
  elif [[ $_rc -ne 0 ]] && ! grep -q -- "'$opt'" "$_err"; then
    _fail "'$_cmd' refused it without naming '$opt'"
  elif [[ $_rc -ne 0 && $v != -1 ]] && ! grep -Eq -- "valid: |power of two from|multiple of the block size|cannot grow" "$_err"; then
    _fail "'$_cmd' refused it without the valid range"
  fi
done
finish
