#!/usr/bin/env bash
# ext4 on a Ceph RBD image (the rbd driver) through the FUSE export and a
# loop device (see fuse_ext4_lib.sh), on a throwaway cluster of its own
# (scripts/ceph-up.sh) or, under ctest, on rbd_test's cluster fixture:
# mkfs, a file workload (checked by its hashes), fstrim, e2fsck; then the server is stopped and started again on the same image,
# and the files are still there after the remount and e2fsck is clean. Kept
# short (fio's verify over ext4 is fuse.ext4_ram's). Skipped (exit 77) only
# when the Ceph packages are not installed.
source "$(dirname "$0")/fuse_lib.sh" "$@"
fuse_require python3 fio mkfs.ext4 e2fsck blockdev fstrim
for tool in ceph-mon ceph-osd rbd; do
  command -v "$tool" >/dev/null && continue
  echo "$TEST_NAME: SKIP: $tool is missing (ceph-mon, ceph-osd, ceph-common;" \
       "run scripts/install-deps.sh)"
  exit 77
done

SCRIPTS=$(cd "$(dirname "$0")/../../scripts" && pwd)
if [[ -n ${RBD_TEST_CONF:-} && -f $RBD_TEST_CONF ]]; then
  # Under ctest: the cluster of the rbd_cluster fixture (rbd_test's), an
  # image of this run's own on it; no bring-up of our own (~10-20 s).
  export CEPH_CONF=$RBD_TEST_CONF
  IMAGE=ext4-$$
  trap '_fuse_cleanup; timeout 60 rbd rm --no-progress "rbd/$IMAGE" >/dev/null 2>&1' EXIT
else
  CEPH_PARENT=$(mktemp -d "${TMPDIR:-/tmp}/blkstack-ceph.XXXXXX")
  export CEPH_DIR=$CEPH_PARENT/cluster CEPH_CONF=$CEPH_PARENT/cluster/ceph.conf
  # The server (a client of the cluster) goes first, then the cluster.
  trap '_fuse_cleanup; FAST=1 "$SCRIPTS/ceph-down.sh"; rm -rf "$CEPH_PARENT"' EXIT
  IMAGE=ext4
  # A monitor port of this test's own, clear of rbd_test's (42000-49999).
  MON_PORT=$((50000 + $$ % 50 * 200)) MEM_BYTES=$((1536 << 20)) "$SCRIPTS/ceph-up.sh" \
    >"$TMP/ceph-up.log" 2>&1 || { fail "ceph-up.sh"; sed 's/^/    | /' "$TMP/ceph-up.log"; finish; }
fi
check "rbd create rbd/$IMAGE (128 MiB)" timeout 60 rbd create --size 128M "rbd/$IMAGE"

fuse_start "disk=rbd:rbd/$IMAGE"
dev=$(fuse_attach "$MNT/disk") || finish
check "mkfs.ext4" timeout 300 mkfs.ext4 -q -F "$dev" || finish
fs_mount "$dev" "$TMP/fs" || finish
check "file workload (create, write, fsync, rename, delete)" file_workload "$TMP/fs" 200
check "fstrim (discard through loop to the image)" timeout 120 fstrim -v "$TMP/fs"
(cd "$TMP/fs" && find w -type f -exec sha256sum {} +) >"$TMP/sums"
fs_umount "$TMP/fs" || finish
check "e2fsck -fn on the loop device is clean" timeout 300 e2fsck -fn "$dev"
fuse_detach "$dev"
fuse_stop
# A new client on the same image: what ext4 wrote is in the cluster.
fuse_start "disk=rbd:rbd/$IMAGE"
dev=$(fuse_attach "$MNT/disk") || finish
fs_mount "$dev" "$TMP/fs"
check "files kept across a server restart and remount" \
  bash -c "cd '$TMP/fs' && test -s '$TMP/sums' && sha256sum --quiet -c '$TMP/sums'"
fs_umount "$TMP/fs"
check "e2fsck -fn after the remount" timeout 300 e2fsck -fn "$dev"
fuse_detach "$dev"
fuse_stop
finish
