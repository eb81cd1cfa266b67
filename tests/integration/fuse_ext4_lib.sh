# ext4 through the FUSE export (sourced by fuse_ext4_ram.sh and
# fuse_ext4_file.sh after fuse_start): a loop device over $MNT/disk,
# mkfs.ext4, a file workload and fio with verify=crc32c in the mounted file
# system, unmount, `e2fsck -fn` on the loop device, detach.
ext4_round() {
  local label=$1 dev
  dev=$(fuse_attach "$MNT/disk") || finish
  check "$label: the loop device has the export's block size" \
    test "$(blockdev --getss "$dev")" -eq "$(stat -c %o "$MNT/disk")"
  check "$label: direct I/O on the loop device" \
    grep -qx 1 "/sys/block/${dev#/dev/}/loop/dio"
  check "$label: mkfs.ext4" timeout 300 mkfs.ext4 -q -F -E nodiscard "$dev" || return 1
  fs_mount "$dev" "$TMP/fs" || return 1
  check "$label: file workload (create, write, fsync, rename, delete)" \
    file_workload "$TMP/fs" 400
  check "$label: fio randwrite verify=crc32c on a file in ext4" timeout 600 \
    fio --name=verify --filename="$TMP/fs/fio.dat" --size=64M --rw=randwrite --bs=4k \
    --ioengine=io_uring --direct=1 --iodepth=16 --verify=crc32c --verify_fatal=1 \
    --do_verify=1 --randrepeat=1 --output-format=terse
  check "$label: fstrim (discard through loop to the device)" timeout 120 fstrim -v "$TMP/fs"
  check "$label: sync" timeout 120 sync -f "$TMP/fs"
  fs_umount "$TMP/fs" || return 1
  check "$label: e2fsck -fn on the loop device is clean" timeout 300 e2fsck -fn "$dev"
  fuse_detach "$dev"
}
