#!/usr/bin/env bash
# ext4 on a file device (file:/var/tmp/...,size=1G) through the FUSE export
# and a loop device (see fuse_ext4_lib.sh); once blkstack has stopped, the
# image file itself must be a clean ext4 (e2fsck -fn on it directly): every
# write reached the file and the stop flushed.
source "$(dirname "$0")/fuse_lib.sh" "$@"
source "$(dirname "$0")/fuse_ext4_lib.sh"
fuse_require python3 fio mkfs.ext4 e2fsck blockdev fstrim

IMG=$(mktemp /var/tmp/blkstack-fuse-ext4.XXXXXX.img)
rm -f "$IMG"
trap '_fuse_cleanup; rm -f "$IMG"' EXIT

fuse_start "disk=file:$IMG,size=1G"
ext4_round file
fuse_stop
check "e2fsck -fn on the image file after the server stopped" timeout 300 e2fsck -fn "$IMG"
finish
