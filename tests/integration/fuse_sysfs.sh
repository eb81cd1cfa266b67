#!/usr/bin/env bash
# The sys/block tree of a running `blkstack serve --fuse DIR --control SOCK`,
# end to end, as people use /sys/block: `cat` reads every attribute file of
# a device, `echo` changes a writable one and the control socket's clients
# (`blkstack attr`, `blkstack ls --json`) see the change; a change through
# the socket shows in the file; a bad value is refused and changes nothing.
source "$(dirname "$0")/fuse_lib.sh" "$@"
fuse_require python3 find

CTL=$TMP/ctl
# A request-based disk: it has the queue attributes nomerges and nr_requests.
fuse_start disk=ram:64M,queue_mode=mq -- --control "$CTL"
SYS=$MNT/sys/block/disk
attr() { "$BLKSTACK" attr --control "$CTL" "$@"; }

check "sys/block/disk is listed" test -d "$SYS"
check "every attribute file reads with cat" bash -c '
  n=0
  while IFS= read -r f; do
    timeout 10 cat "$f" >/dev/null || { echo "cannot read $f"; exit 1; }
    n=$((n + 1))
  done < <(find "$1" -type f)
  echo "$n files read"; [ "$n" -ge 10 ]' _ "$SYS"
check "size is the device's, in sectors" test "$(cat "$SYS/size")" = $((64 << 11))
check "stat has the 17 diskstats fields" test "$(wc -w <"$SYS/stat")" -eq 17

# Each file reads as the socket's `get` does.
for a in size ro queue/nomerges queue/rotational queue/logical_block_size queue/max_sectors_kb; do
  check "$a: the file and the socket agree" test "$(cat "$SYS/$a")" = "$(attr disk "$a")"
done

# echo into the tree; the control socket sees it.
check "echo 2 > queue/nomerges" bash -c 'echo 2 > "$1"' _ "$SYS/queue/nomerges"
check "the socket sees nomerges 2" test "$(attr disk queue/nomerges)" = 2
check "ls --json names the device" bash -c '"$1" ls --control "$2" --json | python3 -c "
import json, sys
r = json.load(sys.stdin)
assert any(d[\"name\"] == \"disk\" for d in r[\"devices\"]), r"' _ "$BLKSTACK" "$CTL"
# And the other way: the socket writes, the file shows it.
check "attr disk queue/nomerges 0 through the socket" attr disk queue/nomerges 0
check "the file shows 0" test "$(cat "$SYS/queue/nomerges")" = 0
check "echo 0 > queue/rotational" bash -c 'echo 0 > "$1"' _ "$SYS/queue/rotational"
check "the socket sees rotational 0" test "$(attr disk queue/rotational)" = 0
# A bad value is refused by the file and by the socket, and changes nothing.
check_fails "echo 7 > queue/nomerges is refused" bash -c 'echo 7 > "$1"' _ "$SYS/queue/nomerges"
check_fails "attr disk queue/nomerges 7 is refused" attr disk queue/nomerges 7
check "nomerges is still 0" test "$(cat "$SYS/queue/nomerges")" = 0
check_fails "a read-only attribute cannot be written" bash -c 'echo 1 > "$1"' _ "$SYS/size"

fuse_stop
finish
