#!/usr/bin/env bash
# blkstack's main job, on the embedded default (run by `make demo`): a real
# kernel and a real file system on a blkstack RAM disk.
#
#   blkstack serve (ram:1G) ── FUSE file ── loop device ── ext4 ── files
#                         └── NBD on a unix socket (nbdinfo looks at it)
#
# Each step says what it does and why. Everything it sets up is torn down
# at the end, and also when interrupted (Ctrl-C) or when a step fails.
#   scripts/demo.sh [PATH_TO_BLKSTACK]   (default: build/blkstack; needs root)
set -euo pipefail

BLKSTACK=$(realpath "${1:-build/blkstack}")
[[ -x "$BLKSTACK" ]] || { echo "demo: $BLKSTACK not found; run 'make demo'" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "demo: needs root (FUSE mount, loop device, mount)" >&2; exit 1; }
for tool in losetup mkfs.ext4 mount umount e2fsck fusermount3; do
  command -v "$tool" >/dev/null || { echo "demo: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done

source "$(dirname "$0")/narrate.sh"
# run CMD...: shows the command as one would type it, then runs it with its
# output indented.
run() {
  printf '%s   $ %s%s\n' "$C" "$*" "$R"
  "$@" 2>&1 | sed 's/^/     /'
}

work=$(mktemp -d /tmp/blkstack-demo.XXXXXX)
mnt=$work/fuse      # the FUSE mount: one file per exported device
fsdir=$work/ext4    # where ext4 gets mounted
sock=$work/nbd.sock
log=$work/serve.log
mkdir -p "$mnt" "$fsdir"
server=""
loop=""
mounted=0

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ $rc -ne 0 ]] && printf '\n%sdemo: stopped (exit status %d); cleaning up%s\n' "$B" "$rc" "$R"
  if [[ $mounted -eq 1 ]]; then umount "$fsdir" 2>/dev/null || umount -l "$fsdir" 2>/dev/null || true; fi
  [[ -n $loop ]] && "$BLKSTACK" detach "$loop" >/dev/null 2>&1 || true
  if [[ -n $server ]] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server" 2>/dev/null || true
  fi
  mountpoint -q "$mnt" 2>/dev/null && { fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; }
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

printf '%sblkstack %s%s — a real kernel and ext4 on a blkstack RAM disk\n' \
  "$B" "$("$BLKSTACK" version | awk '{print $2}')" "$R"
note "(a short tour of the command line instead: make tour)"

say "Start the server: a 1 GiB RAM disk, exported as a file in a FUSE mount and over NBD."
printf '%s   $ blkstack serve --fuse %s --socket %s --export disk=ram:1G &%s\n' "$C" "$mnt" "$sock" "$R"
"$BLKSTACK" serve --fuse "$mnt" --socket "$sock" --pidfile "$work/pid" --export disk=ram:1G \
  2>"$log" &
server=$!
for _ in $(seq 1 100); do [[ -s $work/pid ]] && break; kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
[[ -s $work/pid ]] || { sed 's/^/     /' "$log"; echo "demo: the server did not start" >&2; exit 1; }
sed 's/^/     /' "$log"
note "The kernel here has FUSE and loop but no NBD driver, so the file system reaches the"
note "disk through the FUSE file; NBD clients (QEMU, nbdcopy, fio) can use the socket."
run ls -l "$mnt"
if command -v nbdinfo >/dev/null; then
  run nbdinfo --list "nbd+unix:///?socket=$sock"
fi

say "Attach a loop device to the FUSE file (direct I/O, the disk's block size)."
printf '%s   $ blkstack attach %s%s\n' "$C" "$mnt/disk" "$R"
loop=$("$BLKSTACK" attach "$mnt/disk")
echo "     $loop"
run losetup --list "$loop"

say "Make an ext4 file system on it and mount it."
run mkfs.ext4 -q -F -L blkstack "$loop"
mount "$loop" "$fsdir"
mounted=1
run df -h "$fsdir"

say "Copy a directory tree in, unmount (everything written goes to the disk), mount, compare."
src=/usr/share/doc
[[ -d $src ]] || src=/usr/include
files=$(find "$src" -type f 2>/dev/null | wc -l)
note "$src: $files files, $(du -sh "$src" 2>/dev/null | cut -f1)"
# The cold path: the first writes a fresh disk takes, timed.
t0=$(date +%s%N)
run cp -a "$src" "$fsdir/tree"
run sync
t1=$(date +%s%N)
bytes=$(du -sb "$fsdir/tree" 2>/dev/null | cut -f1)
note "copied and synced in $(( (t1 - t0) / 1000000 )) ms: $(( bytes / 1048576 )) MiB of files, the" \
  "fresh disk's first writes (~$(( bytes * 1000 / 1048576 / ((t1 - t0) / 1000000 + 1) )) MiB/s)"
umount "$fsdir"
mounted=0
note "unmounted: the page cache of this file system is gone; the data lives in blkstack's RAM"
mount "$loop" "$fsdir"
mounted=1
if diff -r --no-dereference "$src" "$fsdir/tree" >"$work/diff" 2>&1; then
  note "read back through blkstack: all $files files identical"
else
  sed 's/^/     /' "$work/diff" | head -20
  echo "demo: the copy differs from its source" >&2
  exit 1
fi

say "Benchmark the disk under the file system: 4 KiB random reads, through the loop device."
note "blkstack bench drives /dev/loop… with io_uring (the file driver): kernel loop -> FUSE ->"
note "blkstack serve -> RAM disk, read-only so the mounted file system is untouched."
run "$BLKSTACK" bench --name=loop-randread --filename="file:$loop,ro=1" --direct=1 \
  --rw=randread --bs=4k --iodepth=16 --runtime=3 --time_based

say "The served disk's statistics: the /proc/diskstats fields and the latency histograms."
kill -USR1 "$server"
sleep 0.5
sed -n '/statistics/,$p' "$log" | sed 's/^/     /'

say "Tear down: unmount, check the file system, detach the loop device, stop the server."
umount "$fsdir"
mounted=0
run e2fsck -fn "$loop"
run "$BLKSTACK" detach "$loop"
loop=""
kill -TERM "$server"
rc=0
wait "$server" || rc=$?
server=""
note "blkstack serve exited with status $rc after finishing in-flight I/O and unmounting"
[[ $rc -eq 0 ]] || exit 1
printf '\n%sDone.%s Next: make tour (the command line), docs/export-fuse.md, docs/export-nbd.md\n' "$B" "$R"
