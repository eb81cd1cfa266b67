#!/usr/bin/env bash
# A short guided tour of the blkstack command line (run by `make tour`).
#   scripts/tour.sh [PATH_TO_BLKSTACK]   (default: build/blkstack)
set -euo pipefail

BLKSTACK=${1:-build/blkstack}
[[ -x "$BLKSTACK" ]] || { echo "tour: $BLKSTACK not found; run 'make tour'" >&2; exit 1; }

source "$(dirname "$0")/narrate.sh"
# show ARGS...: prints the command line as one would type it.
show() {
  local a line="$ blkstack"
  for a in "$@"; do
    if [[ $a =~ [[:space:]] || -z $a ]]; then line+=" '$a'"; else line+=" $a"; fi
  done
  printf '%s   %s%s\n' "$C" "$line" "$R"
}
# run ARGS...: shows the command, then its output indented (stdout line
# buffered so that messages on stderr appear where they happen).
run() {
  show "$@"
  stdbuf -oL "$BLKSTACK" "$@" 2>&1 | sed 's/^/     /'
}
# run_failing ARGS...: the same, for a command that is meant to fail.
run_failing() {
  local rc=0
  run "$@" || rc=$?
  if [[ $rc -eq 0 ]]; then echo "tour: expected this command to fail" >&2; exit 1; fi
  note "(exit status $rc: refused with a clear error, nothing crashed)"
}

printf '%sblkstack %s%s — the Linux block layer in user space: a guided tour\n' \
  "$B" "$("$BLKSTACK" version | awk '{print $2}')" "$R"
note "Each step runs the blkstack program; every run makes its disks afresh in memory."

say "Make a 64 MiB RAM disk and a 1 GiB null disk from device specs, and list their limits."
run disk ram:64M null:1G
note "A device spec is TYPE:SIZE[,KEY=VALUE...]; 'blkstack disk --types' lists every option."

say "Write 1 MiB of the byte 0xab to the RAM disk, read it back and check every byte."
run io ram:64M -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'

say "Discard the first half: its pages are freed and read back as zeroes; the rest is intact."
run io ram:64M -c 'write -P 0xab 0 1M' -c info -c 'discard 0 512k' -c info \
  -c 'read -P 0 0 512k' -c 'read -P 0xab 512k 512k'

say "Write to the RAM disk, read 64 MiB from the null disk (no data moves), show statistics."
show io ram:64M null:1G -c 'write 0 1M' -c 'write -F 1M 4k' -c flush -c 'use null0' -c 'read 0 64M' -c stat
out=$(stdbuf -oL "$BLKSTACK" io ram:64M null:1G -c 'write 0 1M' -c 'write -F 1M 4k' -c flush \
        -c 'use null0' -c 'read 0 64M' -c stat 2>&1)
sed 's/^/     /' <<<"$out"
note "stat prints /proc/diskstats lines: major minor name, then reads (ios merges sectors ms),"
note "writes (ios merges sectors ms), in-flight, io_ticks, time in queue, discards, flushes:"
awk '$3 ~ /^(ram|null)[0-9]+$/ {
       printf "     %-6s reads: %s (%s sectors)   writes: %s (%s sectors)   discards: %s   flushes: %s\n",
              $3, $4, $6, $8, $10, $15, $19 }' <<<"$out"
note "The 64 MiB read counts as one I/O; submit_bio split it to the disk's 1.25 MiB limit."

say "Mistakes are refused with a message naming the bad part, never a crash or silent truncation."
run_failing io ram:64M -c 'read 64M 4k'
run_failing io ram:64M -c 'write -P 0xab 0 64k' -c 'read -P 0xcd 0 64k'
run_failing disk ram:64Q

printf '\n%sThat was the tour.%s Next: blkstack --help, blkstack io --help, blkstack disk --types;\n' "$B" "$R"
echo "make test runs every test; README.md and docs/architecture.md explain how it works."
