#!/usr/bin/env bash
# Runs scripts/demo.sh (make demo) and checks what it promises: every step
# ran, the copy compared equal, the statistics and a clean e2fsck were
# shown, the server stopped with 0, and nothing stayed mounted or attached.
#   demo.sh DEMO_SCRIPT BLKSTACK
set -euo pipefail
demo=$1 blkstack=$2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
source "$(dirname "$0")/require.sh"
require_root "mount, loop devices"
require_tool losetup
loops_before=$(losetup --list --noheadings | wc -l)
mounts_before=$(grep -c blkstack-demo /proc/mounts || true)

rc=0
timeout 500 bash "$demo" "$blkstack" >"$out" 2>&1 || rc=$?
fail() { cat "$out"; echo "demo test: $*" >&2; exit 1; }
[ "$rc" -eq 0 ] || fail "the demo exited with $rc"
for want in "7. Tear down" "files identical" "read latency:" "write latency:" \
            "clean\|files (.*non-contiguous)" "detached /dev/loop" "exited with status 0" "IOPS="; do
  grep -q -- "$want" "$out" || fail "the output lacks '$want'"
done
grep -q "e2fsck" "$out" || fail "no e2fsck"
if grep -q "UNEXPECTED INCONSISTENCY\|Fix? no" "$out"; then fail "e2fsck found errors"; fi
[ "$(losetup --list --noheadings | wc -l)" -eq "$loops_before" ] || fail "a loop device stayed attached"
[ "$(grep -c blkstack-demo /proc/mounts || true)" -eq "$mounts_before" ] || fail "a mount stayed"
echo "demo test: ok"
