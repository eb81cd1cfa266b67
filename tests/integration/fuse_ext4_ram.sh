#!/usr/bin/env bash
# ext4 on a RAM disk through the FUSE export and a loop device (see
# fuse_ext4_lib.sh), twice: the second round mounts what the first left
# after a remount, so the data went through the device and back.
source "$(dirname "$0")/fuse_lib.sh" "$@"
source "$(dirname "$0")/fuse_ext4_lib.sh"
fuse_require python3 fio mkfs.ext4 e2fsck blockdev fstrim

fuse_start disk=ram:1G
ext4_round ram
dev=$(fuse_attach "$MNT/disk") || finish
fs_mount "$dev" "$TMP/fs"
check "files kept across a detach and attach" test -s "$TMP/fs/fio.dat"
fs_umount "$TMP/fs"
check "e2fsck -fn after the remount" timeout 300 e2fsck -fn "$dev"
fuse_detach "$dev"
fuse_stop
finish
