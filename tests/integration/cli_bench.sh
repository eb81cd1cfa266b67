#!/usr/bin/env bash
# blkstack bench: short runs on null and ram with --output-format=json
# (fields checked with python3), the normal report, job files, the
# aio-stress stages with verify, and clear failures.
source "$(dirname "$0")/lib.sh"
require_tool python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$_out" "$_err"' EXIT

# check_json PYTHON: runs PYTHON with `d` = the JSON blkstack printed; a
# failed assert is a failed check.
check_json() {
  _checks=$((_checks + 1))
  if [[ $_rc -ne 0 ]]; then _fail "'$_cmd' exited $_rc"; return; fi
  local msg
  if ! msg=$(python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
$1
" "$_out" 2>&1); then
    _fail "'$_cmd': JSON check failed: $msg"
  fi
}

# The headline job on null, briefly.
run bench --name=hl --filename=null:1G --rw=randread --bs=4k --iodepth=32 --runtime=1 \
    --time_based --output-format=json
check_json '
assert "blkstack version" in d and d["jobs"], d.keys()
j = d["jobs"][0]
assert j["jobname"] == "hl" and j["error"] == 0, j["jobname"]
assert j["job options"]["rw"] == "randread" and j["job options"]["iodepth"] == "32", j["job options"]
r = j["read"]
assert r["total_ios"] > 1000 and r["iops"] > 1000, r["iops"]
assert r["io_bytes"] == 4096 * r["total_ios"], (r["io_bytes"], r["total_ios"])
assert 900 <= r["runtime"] <= 1500, r["runtime"]
for k in ("slat_ns", "clat_ns", "lat_ns"):
    s = r[k]
    assert s["N"] == r["total_ios"] and 0 < s["min"] <= s["mean"] <= s["max"], (k, s)
p = r["clat_ns"]["percentile"]
assert list(p) == ["1.000000", "5.000000", "10.000000", "20.000000", "30.000000", "40.000000",
                   "50.000000", "60.000000", "70.000000", "80.000000", "90.000000", "95.000000",
                   "99.000000", "99.500000", "99.900000", "99.950000", "99.990000"], list(p)
v = list(p.values())
assert v == sorted(v) and r["clat_ns"]["min"] <= v[0] and v[-1] <= r["clat_ns"]["max"], v
h = r["latency_histogram"]["clat"]
assert sum(b["count"] for b in h) == r["total_ios"], h
assert r["iops_samples"] >= 1 and r["bw_samples"] >= 1, r
assert j["write"]["total_ios"] == 0
assert d["total"]["read"]["total_ios"] == r["total_ios"]
assert d["disk_util"][0]["name"] == "null0" and d["disk_util"][0]["read_ios"] >= r["total_ios"]
'

# A mixed job on ram with bssplit, zipf, two threads and a second job.
run bench --filename=ram:64M --runtime=500ms --time_based --output-format=json \
    --name=mix --rw=randrw --rwmixread=70 --bssplit=4k/50:64k/50 --iodepth=8 --numjobs=2 \
    --random_distribution=zipf:1.2 --name=seq --rw=read --bs=128k
check_json '
mix, seq = d["jobs"]
assert mix["threads"] == 2 and mix["read"]["total_ios"] > 0 and mix["write"]["total_ios"] > 0
share = mix["read"]["total_ios"] / (mix["read"]["total_ios"] + mix["write"]["total_ios"])
assert 0.6 < share < 0.8, share
avg = (mix["read"]["io_bytes"] + mix["write"]["io_bytes"]) / (mix["read"]["total_ios"] + mix["write"]["total_ios"])
assert 20000 < avg < 48000, avg
assert seq["read"]["io_bytes"] == 131072 * seq["read"]["total_ios"]
assert seq["groupid"] == 0 and mix["groupid"] == 0
assert d["total"]["read"]["total_ios"] == mix["read"]["total_ios"] + seq["read"]["total_ios"]
assert len(d["disk_util"]) == 1 and d["disk_util"][0]["name"] == "ram0"
'

# The aio-stress stages on ram with verify: every stage clean, the read
# stages check every block.
run bench --stages --filename=ram:32M --bs=16k --iodepth=8 --verify=crc32c --output-format=json
check_json '
names = [j["jobname"] for j in d["jobs"]]
assert names == ["write", "read", "random write", "random read"], names
assert [j["groupid"] for j in d["jobs"]] == [0, 1, 2, 3]
for j in d["jobs"]:
    assert j["error"] == 0 and j["verify"]["failed"] == 0, j["verify"]
assert d["jobs"][1]["verify"]["checked"] == 2048 and d["jobs"][3]["verify"]["checked"] == 2048
assert d["jobs"][0]["write"]["io_bytes"] == 32 << 20
'
expect_ok -m '^write on ram0 \([0-9.]+ MB/s\) 32.00 MB in' -m '^random read on ram0' \
          -m '^completion latency min' -m 'verify +: crc32c, 16384-byte blocks: 2048 checked, 0 failed' \
  bench --stages --filename=ram:32M --bs=16k --iodepth=8 --verify=crc32c

# The normal report, as fio's.
expect_ok -m '^a: \(g=0\): rw=randread' -m '^a: \(groupid=0, jobs=1\): err= 0' \
          -m '^  read: IOPS=[0-9.]+[kM]?, BW=' -m '^    clat \((n|u)sec\): min=' \
          -m 'clat percentiles \(nsec\)' -m '\| 99.00th=\[' -m 'clat histogram \(aio-stress style' \
          -m '^  lat \(nsec\)' -m '^Run status group 0 \(all jobs\):' -m '^   READ: bw=' \
          -m '^  null0: ios=' \
  bench --name=a --filename=null:1G --rw=randread --iodepth=4 --runtime=300ms --time_based

# A job file with [global], two jobs, stonewall, and a command-line override.
cat >"$tmp/jobs.fio" <<'FIO'
; two jobs, one after the other
[global]
filename=ram:16M
bs=4k
iodepth=4

[writer]
rw=write
verify=xxh64

[reader]
stonewall
rw=randread
verify=xxh64
FIO
run bench "$tmp/jobs.fio" --output-format=json
check_json '
w, r = d["jobs"]
assert (w["jobname"], r["jobname"]) == ("writer", "reader")
assert (w["groupid"], r["groupid"]) == (0, 1)
assert w["write"]["io_bytes"] == 16 << 20 and w["verify"]["read_back"] == 4096
assert r["read"]["total_ios"] == 4096 and r["verify"]["checked"] == 4096 and r["verify"]["failed"] == 0
'
run bench "$tmp/jobs.fio" --filename=null:1G --verify=none --output-format=json
check_json 'assert all(j["job options"]["filename"] == "null:1G" for j in d["jobs"]) and d["disk_util"][0]["name"] == "null0"'

# Output to a file.
expect_ok bench --name=f --filename=null:1G --number_ios=1000 --output-format=normal,json \
  --output="$tmp/out.txt"
_checks=$((_checks + 1))
grep -q '"jobname": "f"' "$tmp/out.txt" && grep -q 'Run status group 0' "$tmp/out.txt" ||
  _fail "--output: $tmp/out.txt lacks the results"

# Mistakes: clear messages, non-zero exit.
expect_fail -m "unknown option '--bss=4k' \(did you mean 'bs'\?\)" bench --filename=null:1G --bss=4k
expect_fail -m "option 'bs': bad value '4q'" bench --filename=null:1G --bs=4q
expect_fail -m "no jobs" bench
expect_fail -m "job 'x': no filename" bench --name=x --rw=read
printf '[a]\nfilename=null:1G\nrw=sideways\n' >"$tmp/bad.fio"
expect_fail -m "job file '.*bad.fio', line 3: option 'rw': bad value 'sideways'" bench "$tmp/bad.fio"
expect_fail -m "goes beyond the end of ram0" bench --name=big --filename=ram:1M --size=2M
expect_fail -m "device spec 'nope:1G'" bench --name=d --filename=nope:1G
# Verify on null finds no headers (null never stores data), names the
# block, and fails the run.
expect_fail -m 'v: verify: block at offset 0: bad magic' -m '1 of 1 jobs failed' \
  bench --name=v --filename=null:1M --rw=read --verify=crc32c --number_ios=1
# A read-only disk refuses the writes.
expect_fail -m 'write at offset 0 \(4096 bytes\) refused at submission: Read-only file system' \
  bench --name=ro --filename=ram:1M,ro=1 --rw=write
finish
