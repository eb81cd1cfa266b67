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
finish
