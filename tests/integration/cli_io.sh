#!/usr/bin/env bash
# blkstack io: pattern round trips, verification failures, range checks.
source "$(dirname "$0")/lib.sh"

# Write a pattern, read it back verified; FUA writes and flush work too.
expect_ok -m '^ram0: wrote 1048576/1048576 bytes at offset 0$' \
          -m '^ram0: read 1048576/1048576 bytes at offset 0$' \
          -m '^ram0: wrote 4096/4096 bytes at offset 1048576$' \
          -m '^ram0: flushed$' \
  io ram:64M -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' -c 'write -F -P 7 1M 4k' \
             -c 'read -P 7 1M 4k' -c flush
# The same through a multi-queue request queue, and with completions on
# another thread (null's deferred mode, bio-based and request-based).
expect_ok -m '^ram0: read 4194304/4194304 bytes at offset 0$' -m '^ram0: flushed$' \
  io ram:64M,queue_mode=mq,hw_queues=2,depth=4 -c 'write -P 0x5a 0 4M' -c 'write -F -P 1 4M 4k' \
     -c 'read -P 0x5a 0 4M' -c 'read -P 1 4M 4k' -c 'discard 0 1M' -c 'read -P 0 0 1M' -c flush
expect_ok -m '^null0: read 1048576/1048576 bytes at offset 0$' \
          -m '^null1: wrote 1048576/1048576 bytes at offset 0$' \
  io null:1G,completion=deferred null:1G,completion=timer,latency_ns=50us,queue_mode=mq \
     -c 'read 0 1M' -c 'use null1' -c 'write 0 1M' -c 'read 1M 64k' -c stat
# Through a pass-through 1M into ram0: the commands start on the disk on top
# (ram0 is held by it), the bytes land 1M further on ram0, and ram0 cannot be
# used for writing while it is held.
expect_ok -m '^passthrough0: wrote 65536/65536 bytes at offset 0$' \
          -m '^passthrough0: read 65536/65536 bytes at offset 0$' \
          -m '^passthrough0: flushed$' \
  io ram:4M passthrough:lower=ram0,offset=1M -c 'write -P 0x3c 0 64k' -c 'read -P 0x3c 0 64k' \
     -c flush -c stat
expect_fail -m 'cannot open ram0 for writing: ram0 is held by passthrough0' \
  io ram:4M passthrough:lower=ram0,offset=1M -c 'write -P 0x3c 0 64k' -c 'use ram0'
# A mismatch names the first bad offset and fails the run.
expect_fail -m 'Pattern verification failed at offset 4096: read 0x11, expected 0xab' \
            -m '1 of 3 commands failed' \
  io ram:1M -c 'write -P 0xab 0 64k' -c 'write -P 0x11 4k 512' -c 'read -P 0xab 0 64k'
# Never-written and discarded ranges read as zeroes on a RAM disk; allocation
# follows writes and discards.
expect_ok -m 'ram0: 1 MiB \(1048576 bytes\), 64 KiB allocated' \
          -m 'ram0: 1 MiB \(1048576 bytes\), 0 B allocated' \
  io ram:1M -c 'read -P 0 0 1M' -c 'write 0 64k' -c info -c 'discard 0 64k' \
            -c 'read -P 0 0 64k' -c info -c 'write 0 8k' -c 'zero 0 8k' -c 'read -P 0 0 8k'
# Out of range, misaligned and read-only requests fail with their status.
expect_fail -m "ram0: 'read 1M 4k' failed: out-of-range" io ram:1M -c 'read 1M 4k'
expect_fail -m 'out-of-range' io ram:1M -c 'write 1020k 8k'
expect_fail -m "failed: invalid" io ram:1M -c 'read 100 512'
expect_fail -m "failed: read-only" io ram:1M,ro=1 -c 'write 0 4k'
expect_fail -m "failed: invalid" io ram:1M,bs=4096 -c 'read 512 512'
# Several disks: 'use' switches, stat prints diskstats lines for all.
expect_ok -m '^null0: read 65536/65536 bytes at offset 0$' \
          -m '^ +1 +0 ram0 0 0 0 [0-9]+ 2 0 16 ' \
          -m '^ +[0-9]+ +0 null0 1 0 128 ' \
  io ram:64M null:1G -c 'write 0 4k' -c 'write 4k 4k' -c 'use null0' -c 'read 0 64k' -c stat
expect_fail -m "no disk named 'nope'" io ram:1M -c 'use nope'
expect_fail -m "unknown command 'frobnicate'" io ram:1M -c 'frobnicate 0 1'
finish
