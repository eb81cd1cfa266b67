#!/usr/bin/env bash
# qemu-io against blkstack serve, scripted: write -P / read -P, discard,
# write -z, write -z -u, FUA writes (write -f), flush, sub-block and
# larger-than-one-request writes, aio_write and aio_read in flight together
# (48 at once), writev/readv, and a second connection that finds everything
# as the first left it. (Allocation is checked by nbd_nbdinfo.sh, the map in
# nbd_qemu_img.sh and nbd_client_test: qemu-io's alloc on a raw image says
# "allocated" everywhere.)
source "$(dirname "$0")/nbd_lib.sh" "$@"
nbd_require qemu-io

nbd_start main disk=ram:64M
URI=$(nbd_uri disk)
K=1024
M=$((1024 * K))

check_qemu_io "write -P, read -P" "$URI" \
  'write -P 0xa5 0 1M' 'read -P 0xa5 0 1M'
check_qemu_io "discard" "$URI" \
  'discard 0 64k' 'read -P 0 0 64k' 'read -P 0xa5 64k 960k'
check_qemu_io "write -z" "$URI" \
  'write -P 0x5a 1M 1M' 'write -z 1M 64k' 'read -P 0 1M 64k' 'read -P 0x5a 1088k 960k'
check_qemu_io "write -z -u (may unmap)" "$URI" \
  'write -z -u 1152k 128k' 'read -P 0 1152k 128k' 'read -P 0x5a 1280k 768k' \
  'read -P 0x5a 1088k 64k'
check_qemu_io "write -f (FUA), write -z -f, flush" "$URI" \
  'write -f -P 0x77 8M 4k' 'write -z -f 8196k 4k' 'flush' \
  'read -P 0x77 8M 4k' 'read -P 0 8196k 4k'
check_qemu_io "a 512-byte write inside a 4 KiB page" "$URI" \
  "write -P 0x12 $((9 * M + 512)) 512" "read -P 0x12 $((9 * M + 512)) 512" \
  "read -P 0 $((9 * M)) 512" "read -P 0 $((9 * M + 1024)) 3k"
check_qemu_io "a 33 MiB write and read (more than one NBD request)" "$URI" \
  'write -P 0x66 16M 33M' 'read -P 0x66 16M 33M' 'read -P 0 49M 1M'

# In flight together: 16 writes of distinct patterns at 4-5 MiB, 16 reads of
# a 2-4 MiB region written first, 16 writes of 256 KiB at 10-14 MiB; then
# aio_flush waits for all, and synchronous reads check every write.
cmds=('write -P 0x3c 2M 2M')
for i in $(seq 0 15); do
  cmds+=("aio_write -P $((0x20 + i)) $((4 * M + i * 64 * K)) 64k")
  cmds+=("aio_read -P 0x3c $((2 * M + i * 128 * K)) 128k")
  cmds+=("aio_write -P $((0x40 + i)) $((10 * M + i * 256 * K)) 256k")
done
cmds+=('aio_flush')
for i in $(seq 0 15); do
  cmds+=("read -P $((0x20 + i)) $((4 * M + i * 64 * K)) 64k")
  cmds+=("read -P $((0x40 + i)) $((10 * M + i * 256 * K)) 256k")
done
check_qemu_io "48 aio requests in flight, then checked" "$URI" "${cmds[@]}"
_checks=$((_checks + 1))
n=$(grep -c '^wrote 65536/65536\|^wrote 262144/262144\|^read 131072/131072' "$OUT")
[[ $n -eq 48 ]] || { fail "aio: $n of 48 asynchronous requests reported done"; _show_out; }

# Vectored I/O: one request from several buffers.
check_qemu_io "writev, readv" "$URI" \
  'writev -P 0x71 15M 4k 8k 512 3584' 'readv -P 0x71 15M 512 15872' 'read -P 0x71 15M 16k'

# A new connection sees everything as the first left it.
cmds=('read -P 0 0 64k' 'read -P 0xa5 64k 960k' 'read -P 0 1M 64k' 'read -P 0x5a 1088k 64k'
      'read -P 0 1152k 128k' 'read -P 0x5a 1280k 768k' 'read -P 0x3c 2M 2M'
      'read -P 0x77 8M 4k' 'read -P 0 8196k 4k' "read -P 0x12 $((9 * M + 512)) 512"
      'read -P 0x71 15M 16k' 'read -P 0x66 16M 33M' 'read -P 0 49M 15M')
for i in $(seq 0 15); do
  cmds+=("read -P $((0x20 + i)) $((4 * M + i * 64 * K)) 64k")
  cmds+=("read -P $((0x40 + i)) $((10 * M + i * 256 * K)) 256k")
done
check_qemu_io "a second connection reads it all back" "$URI" "${cmds[@]}"

nbd_stop main
finish
