#!/usr/bin/env bash
# fio's nbd engine (libnbd) against blkstack serve: a random-write job with
# verify=crc32c (written, then read back and checked), the same blocks
# verified again by a separate fio on a new connection (verify_only), a
# mixed randrw job with two jobs (two connections) at QD32 and variable
# block sizes; a verified QD32 job, and SIGUSR1's report of the event
# loops; a file-backed export verified through the server and then
# straight from the file; every job must end with no error and with I/O
# done.
source "$(dirname "$0")/nbd_lib.sh" "$@"
nbd_require fio python3

nbd_start main disk=ram:128M
URI=$(nbd_uri disk)

# fio_json DESC FIO ARGS...: runs fio with JSON output; every job has
# error 0 and did I/O.
fio_json() {
  local desc=$1
  shift
  check "$desc" fio --ioengine=nbd --uri="$URI" --output-format=json "$@" || return 1
  cp "$OUT" "$NBD_TMP/fio.json"
  check_py "$desc: no errors, I/O done" "$NBD_TMP/fio.json" '
assert d["jobs"], "no jobs"
for j in d["jobs"]:
    assert j["error"] == 0, (j["jobname"], "error", j["error"])
    ios = j["read"]["total_ios"] + j["write"]["total_ios"]
    assert ios > 0, (j["jobname"], "did no I/O")'
}

VERIFY=(--name=verify --rw=randwrite --bs=4k --iodepth=16 --size=64M --offset=0
        --verify=crc32c --verify_fatal=1 --randrepeat=1 --norandommap=0)
fio_json "randwrite with verify=crc32c" "${VERIFY[@]}" --do_verify=1
check_py "verify: every block written and read back" "$NBD_TMP/fio.json" '
j = d["jobs"][0]
assert j["write"]["io_bytes"] == 64 << 20, ("wrote", j["write"]["io_bytes"])
assert j["read"]["io_bytes"] == 64 << 20, ("verified", j["read"]["io_bytes"])'
fio_json "verify_only on a new connection" "${VERIFY[@]}" --verify_only=1
check_py "verify_only: every block read back" "$NBD_TMP/fio.json" '
j = d["jobs"][0]
assert j["read"]["io_bytes"] == 64 << 20, ("verified", j["read"]["io_bytes"])'

# A verify that must fail: the blocks just verified, overwritten with
# zeroes by a plain write job, no longer carry their checksums.
fio_json "overwrite the first 1 MiB" --name=overwrite --rw=write --bs=64k --size=1M \
  --offset=0 --zero_buffers=1
if check_fails "verify_only after the overwrite fails" \
     fio --ioengine=nbd --uri="$URI" "${VERIFY[@]}" --verify_only=1; then
  _checks=$((_checks + 1))
  grep -q 'verify: bad magic header 0' "$OUT" ||
    { fail "verify_only after the overwrite failed, but not on a bad header"; _show_out; }
fi

fio_json "mixed randrw, 2 jobs, QD32, 4k-64k" --name=mixed --rw=randrw --rwmixread=60 \
  --bsrange=4k-64k --iodepth=32 --numjobs=2 --time_based --runtime=3 --group_reporting=0
check_py "mixed: both directions on both connections" "$NBD_TMP/fio.json" '
assert len(d["jobs"]) == 2, len(d["jobs"])
for j in d["jobs"]:
    assert j["read"]["total_ios"] > 0 and j["write"]["total_ios"] > 0, j["jobname"]'

# A verified job at depth 32, where the event loops may serve in coalesced
# rounds (src/export/nbd/wait_policy.h; the unit tests force them); then
# SIGUSR1 logs how each loop waited.
fio_json "QD32 randwrite with verify=crc32c" --name=v32 --rw=randwrite --bs=4k \
  --iodepth=32 --size=32M --offset=64M --verify=crc32c --verify_fatal=1 --do_verify=1
if [[ $NBD_SERVER == blkstack ]]; then
  logged() {
    grep -Eq '^blkstack serve: loop 0: [0-9]+ waits: block [0-9]+%, spin [0-9]+%, coalesce [0-9]+%' \
      "$NBD_TMP/main.log"
  }
  kill -USR1 "${_server_pid[main]}"
  for _ in $(seq 50); do logged && break; sleep 0.1; done
  check "SIGUSR1 logs how each event loop waited" logged
fi

nbd_stop main

# A file-backed export: verify through the server, then, with the server
# stopped (SIGTERM flushes), the same blocks straight from the file.
FILE=$NBD_TMP/img.raw
truncate -s 64M "$FILE"
nbd_start file img=file:$FILE,size=64M
URI=$(nbd_uri img)
FVERIFY=(--name=fverify --rw=randwrite --bs=4k --iodepth=16 --size=32M --offset=0
         --verify=crc32c --verify_fatal=1 --randrepeat=1)
fio_json "file export: randwrite with verify=crc32c" "${FVERIFY[@]}" --do_verify=1
fio_json "file export: mixed randrw QD32" --name=fmixed --rw=randrw --bsrange=4k-128k \
  --iodepth=32 --offset=32M --size=32M --time_based --runtime=2
nbd_stop file
check "the file holds what was written through the server" \
  fio --ioengine=psync --filename="$FILE" "${FVERIFY[@]}" --verify_only=1
finish
