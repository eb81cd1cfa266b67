#!/usr/bin/env bash
# The FUSE export's files, used as files: `blkstack serve --fuse DIR` with a
# 1 GiB RAM disk, a read-only one and one with 4 KiB blocks. Sizes and modes;
# dd and pwrite patterns read back (aligned, unaligned, across block edges);
# reads at and past the end are short, writes past it fail with ENOSPC;
# fallocate --punch-hole and --zero-range (aligned and not) read back as
# zeroes and leave their neighbours alone; fsync; a clean stop (exit 0,
# unmounted) and the data still there for a second server on the same mount
# point would need a file device, see fuse_ext4_file.sh.
source "$(dirname "$0")/fuse_lib.sh" "$@"
fuse_require python3 dd fallocate cmp blockdev

fuse_start disk=ram:1G ro=ram:16M,ro=1 big=ram:64M,bs=4096
F=$MNT/disk

check "ls the mount" ls -l "$MNT"
for f in disk ro big; do grep -q " $f\$" "$OUT" || fail "$MNT/$f is not listed"; done
check "size, mode, blksize" python3 - "$MNT" <<'PY'
import os, stat, sys
m = sys.argv[1]
def st(n): return os.stat(os.path.join(m, n))
s = st("disk"); assert s.st_size == 1 << 30, s.st_size
assert stat.S_ISREG(s.st_mode) and stat.S_IMODE(s.st_mode) == 0o600, oct(s.st_mode)
assert s.st_blksize == 512, s.st_blksize
s = st("ro"); assert s.st_size == 16 << 20 and stat.S_IMODE(s.st_mode) == 0o400, oct(s.st_mode)
s = st("big"); assert s.st_size == 64 << 20 and s.st_blksize == 4096, (s.st_size, s.st_blksize)
PY

# dd: 8 MiB of random data in 1 MiB direct writes at 100 MiB, read back.
check "random source" dd if=/dev/urandom of="$TMP/src" bs=1M count=8 status=none
check "dd write (direct)" dd if="$TMP/src" of="$F" bs=1M seek=100 oflag=direct conv=notrunc,fsync status=none
check "dd read (direct)" dd if="$F" of="$TMP/back" bs=1M skip=100 count=8 iflag=direct status=none
check "dd data reads back" cmp "$TMP/src" "$TMP/back"
check "size unchanged by dd without notrunc" dd if="$TMP/src" of="$F" bs=64k count=1 status=none
check "size still 1 GiB" test "$(stat -c %s "$F")" -eq $((1 << 30))

check "pwrite/pread patterns, aligned and unaligned" python3 - "$MNT" <<'PY'
import os, sys
m = sys.argv[1]
def run(name, bs):
    fd = os.open(os.path.join(m, name), os.O_RDWR)
    size = os.fstat(fd).st_size
    cases = [(0, 4096), (bs, bs * 3), (1, 1), (511, 2), (4095, 4098), (bs - 1, 3 * bs + 7),
             (12345, 100000), (1 << 20, 1 << 20), (size - 1000, 1000), (size - bs, bs)]
    for i, (off, n) in enumerate(cases):
        # Surround the range with a known pattern so clobbered neighbours show.
        lo, hi = max(0, off - 2 * bs), min(size, off + n + 2 * bs)
        os.pwrite(fd, bytes([0x5a]) * (hi - lo), lo)
        data = bytes((j * 7 + i) % 251 for j in range(n))
        assert os.pwrite(fd, data, off) == n, (name, off, n)
        got = os.pread(fd, hi - lo, lo)
        want = bytes([0x5a]) * (off - lo) + data + bytes([0x5a]) * (hi - off - n)
        assert got == want, (name, off, n, "mismatch")
    # Reads at and past the end are short.
    assert os.pread(fd, 100, size) == b"", "read at EOF"
    assert len(os.pread(fd, 4096, size - 10)) == 10, "read across EOF"
    assert os.pread(fd, 10, size + 4096) == b"", "read past EOF"
    # Writes at or past the end fail; across it they are short.
    for off in (size, size + 512):
        try:
            os.pwrite(fd, b"x" * 512, off)
            raise AssertionError(f"write at {off} succeeded")
        except OSError as e:
            assert e.errno in (28, 27), e  # ENOSPC, EFBIG
    assert os.pwrite(fd, b"y" * 1024, size - 512) == 512, "write across EOF"
    os.fsync(fd)
    os.close(fd)
run("disk", 512)
run("big", 4096)
PY

check "the read-only file cannot be opened for writing" python3 - "$MNT/ro" <<'PY'
import os, sys
try:
    os.open(sys.argv[1], os.O_WRONLY)
    raise AssertionError("opened for writing")
except PermissionError:
    pass
except OSError as e:
    assert e.errno == 30, e  # EROFS
assert os.pread(os.open(sys.argv[1], os.O_RDONLY), 4096, 0) == bytes(4096)
PY

# fallocate: punch and zero ranges inside a written area; aligned and not.
check "fill 4 MiB at 200 MiB" dd if=/dev/urandom of="$F" bs=1M seek=200 count=4 oflag=direct conv=notrunc status=none
check "punch/zero ranges read back" python3 - "$F" <<'PY'
import os, subprocess, sys
f = sys.argv[1]
base = 200 << 20
fd = os.open(f, os.O_RDWR)
before = os.pread(fd, 4 << 20, base)
cases = [("--punch-hole", 0, 1 << 20), ("--zero-range", 1 << 20, 65536),
         ("--punch-hole", (2 << 20) + 100, 5000), ("--zero-range", (3 << 20) + 7, 300)]
expect = bytearray(before)
for opt, off, n in cases:
    args = ["fallocate", opt, "--offset", str(base + off), "--length", str(n), f]
    if opt == "--zero-range":
        args.insert(2, "--keep-size")
    subprocess.run(args, check=True)
    expect[off:off + n] = bytes(n)
after = os.pread(fd, 4 << 20, base)
assert after == bytes(expect), "fallocate result differs"
assert os.fstat(fd).st_size == 1 << 30
PY
check_fails "fallocate mode 0 is not supported" fallocate --offset 0 --length 4096 "$F"
check_fails "--zero-range past the end (growing) fails" \
  fallocate --zero-range --offset $(((1 << 30) - 4096)) --length 8192 "$F"

# blkstack attach/detach: a read-only export gives a read-only loop device,
# the 4 KiB export a 4 KiB one; detach by the file's name.
if dev=$(fuse_attach "$MNT/ro"); then
  check "the loop device over the read-only file is read-only" test "$(blockdev --getro "$dev")" -eq 1
  check "detach by file name" timeout 30 "$BLKSTACK" detach "$MNT/ro"
  grep -qx "detached $dev" "$OUT" || fail "detach by file name did not say 'detached $dev'"
  _loops=()
fi
if dev=$(fuse_attach "$MNT/big"); then
  check "the loop device over the 4 KiB file has 4 KiB sectors" test "$(blockdev --getss "$dev")" -eq 4096
  check "its data is the file's" cmp -n 65536 "$dev" "$MNT/big"
  fuse_detach "$dev"
fi
check_fails "attach of a missing file fails" "$BLKSTACK" attach "$MNT/nope"
grep -q "No such file" "$OUT" || { fail "attach of a missing file: no 'No such file'"; _show_out; }

fuse_stop
check "the server logged its mount" grep -q "blkstack serve: mounted $MNT" "$LOG"

# The config file: [server] fuse = DIR and an [[export]] of type "fuse". An
# export of type "nbd" where no NBD server runs (no socket, no address) is a
# config error naming it, not an export served nowhere.
cat >"$TMP/serve.toml" <<EOF2
[server]
fuse = "$MNT"
fuse_threads = 1
[[device]]
name = "d0"
spec = "ram:32M"
[[device]]
name = "d1"
spec = "ram:16M"
[[export]]
name = "fromconfig"
device = "d0"
type = "fuse"
EOF2
cp "$TMP/serve.toml" "$TMP/nbdonly.toml"
printf '[[export]]\nname = "nbdonly"\ndevice = "d1"\n' >>"$TMP/nbdonly.toml"
check_fails "an NBD export without NBD is refused" timeout 30 "$BLKSTACK" serve --config "$TMP/nbdonly.toml"
grep -q "export 'nbdonly' has type \"nbd\"" "$OUT" || { fail "no error naming 'nbdonly'"; _show_out; }
fuse_start -- --config "$TMP/serve.toml"
check "the type = \"fuse\" export is a file" test "$(stat -c %s "$MNT/fromconfig")" -eq $((32 << 20))
check "1 FUSE thread as configured" grep -q "FUSE, 1 thread;" "$LOG"
fuse_stop
finish
