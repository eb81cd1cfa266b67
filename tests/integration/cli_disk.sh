#!/usr/bin/env bash
# blkstack disk: makes disks from specs and lists them with their limits.
source "$(dirname "$0")/lib.sh"

# Both disks listed, with header, size, block sizes and driver state.
expect_ok \
  -m '^NAME +MAJ:MIN +SIZE +LBS +PBS +MAX-IO +SEGS +SEG-SIZE +DISCARD +WZEROES +WC +FUA +RO +DRIVER' \
  -m '^null0 +[0-9]+:0 +1 GiB +512 +512 ' \
  -m '^ram0 +1:0 +64 MiB +512 +4096 ' \
  -m 'completion=inline' \
  -m 'allocated=0 B' \
  disk ram:64M null:1G
# Options reach the limits: block size, read-only, name, write cache.
expect_ok -m '^scratch +1:0 +1 GiB +4096 +4096 .* no +yes +allocated' \
  disk ram:1G,bs=4096,name=scratch,ro=1
expect_ok -m '^null0 .* yes +yes +no +completion=deferred' \
  disk null:1G,completion=deferred,wc=1,fua=1
# Two disks of one type get the next index and minor.
expect_ok -m '^ram0 +1:0 ' -m '^ram1 +1:16 ' disk ram:1M ram:2M
# A stacked disk names a disk of an earlier spec: a pass-through over ram0.
expect_ok -m '^ram0 +1:0 +4 MiB ' -m '^passthrough0 +[0-9]+:0 +3 MiB .*lower=ram0 offset=1 MiB' \
  disk ram:4M passthrough:lower=ram0,offset=1M
expect_fail -m "device spec 'passthrough:lower=ram0,offset=8M': bad value for 'offset'" \
  disk ram:4M passthrough:lower=ram0,offset=8M
# The type list shows every driver and its options.
expect_ok -m '^null:' -m '^ram:' -m 'completion' -m 'latency_ns' disk --types
finish
