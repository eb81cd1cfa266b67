#!/usr/bin/env bash
# nbdcopy (libnbd) against blkstack serve: a 256 MiB random image copied in
# to a 300 MiB RAM export and out again, with nbdcopy's defaults (several
# connections when the server offers multi-conn, 64 requests in flight on
# each) and then one connection, one request at a time; the checksums
# match and the 44 MiB never written read back as zeroes.
source "$(dirname "$0")/nbd_lib.sh" "$@"
nbd_require nbdcopy sha256sum cmp truncate

nbd_start main disk=ram:300M
URI=$(nbd_uri disk)
IMG=$NBD_TMP/in.img
head -c 256M /dev/urandom >"$IMG"
want=$(sha256sum <"$IMG" | cut -d' ' -f1)

# expect_image FILE WHAT: FILE is the 300 MiB export: the image, then zeroes.
expect_image() {
  local file=$1 what=$2 size
  size=$(stat -c %s "$file")
  _checks=$((_checks + 1))
  [[ $size -eq $((300 << 20)) ]] || { fail "$what: copied out $size bytes, expected $((300 << 20))"; return; }
  local got
  got=$(head -c 256M "$file" | sha256sum | cut -d' ' -f1)
  _checks=$((_checks + 1))
  [[ $got == "$want" ]] || fail "$what: sha256 of the first 256 MiB is $got, expected $want"
  check "$what: the last 44 MiB are zeroes" cmp -n $((44 << 20)) <(tail -c 44M "$file") /dev/zero
}

check "nbdcopy in (defaults)" nbdcopy --flush "$IMG" "$URI"
check "nbdcopy out (defaults)" nbdcopy "$URI" "$NBD_TMP/out1.img"
expect_image "$NBD_TMP/out1.img" "defaults"
rm -f "$NBD_TMP/out1.img"

# Zero the whole export (a sparse source: nbdcopy sends write-zeroes), so
# that copying the same image in again cannot pass on stale data; then
# again through one connection, one request at a time.
truncate -s 300M "$NBD_TMP/sparse.img"
check "zero the export" nbdcopy --flush "$NBD_TMP/sparse.img" "$URI"
check "nbdcopy out of the zeroed export" nbdcopy "$URI" "$NBD_TMP/zero.img"
check "the export reads as zeroes after zeroing" cmp -n $((300 << 20)) "$NBD_TMP/zero.img" /dev/zero
rm -f "$NBD_TMP/zero.img"
check "nbdcopy in (1 connection, 1 request, 4 MiB)" \
  nbdcopy --connections=1 --requests=1 --request-size=$((4 << 20)) --flush "$IMG" "$URI"
check "nbdcopy out (1 connection, 1 request)" \
  nbdcopy --connections=1 --requests=1 "$URI" "$NBD_TMP/out2.img"
expect_image "$NBD_TMP/out2.img" "one request at a time"

nbd_stop main
finish
