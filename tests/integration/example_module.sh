#!/usr/bin/env bash
# examples/tinyram, an out-of-tree driver, built as a user would: blkstack
# installed into a private prefix (`cmake --install`), then the example's
# own CMake project against that prefix through pkg-config, with no path
# into the source tree. Its program registers the driver and moves data;
# its module is loaded by the installed `blkstack` with --module and used by
# `blkstack bench` (with verify) and `blkstack serve` (nbdcopy in and out).
# Modules that are not blkstack's, or built for another version, are
# refused with a clear error.
#
#   example_module.sh BLKSTACK BUILD_DIR EXAMPLE_SOURCE_DIR
source "$(dirname "$0")/nbd_lib.sh" "$1"
BUILD=$(realpath "${2:?usage: $0 BLKSTACK BUILD_DIR EXAMPLE_DIR}")
EXAMPLE=$(realpath "${3:?usage: $0 BLKSTACK BUILD_DIR EXAMPLE_DIR}")
nbd_require cmake ninja pkg-config c++ nbdcopy nbdinfo cmp

PREFIX=$NBD_TMP/prefix
EXB=$NBD_TMP/example-build
check "cmake --install into a private prefix" cmake --install "$BUILD" --prefix "$PREFIX"
BLKSTACK=$PREFIX/bin/blkstack
export PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig:$PREFIX/lib/$(gcc -dumpmachine)/pkgconfig

# The installed headers are self-contained: each includes only blkstack/
# headers and system ones, and compiles on its own.
bad=$(grep -rn '#include "' "$PREFIX/include/blkstack" | grep -v '#include "blkstack/')
_checks=$((_checks + 1))
[[ -z $bad ]] || fail "installed headers include files outside blkstack/: $bad"
for h in "$PREFIX"/include/blkstack/*.h "$PREFIX"/include/blkstack/*/*.h; do
  check "installed header ${h#$PREFIX/include/} compiles alone" \
    c++ -fsyntax-only $(pkg-config --cflags blkstack) -x c++ "$h"
done

check "configure the example against the prefix" \
  cmake -S "$EXAMPLE" -B "$EXB" -G Ninja --log-level=WARNING
check "build the example" cmake --build "$EXB"
_checks=$((_checks + 1))
grep -q -- "-I$(realpath "$EXAMPLE")/../../src\|/src/\b" "$EXB/build.ninja" &&
  fail "the example's build reaches into the source tree"

check "the example's program registers tinyram and moves data" "$EXB/tinyram-demo"
# out_has DESC PATTERN: the last command's output has a line matching PATTERN.
out_has() {
  _checks=$((_checks + 1))
  grep -q -- "$2" "$OUT" || { fail "$1: no line matching '$2' in:"; _show_out; }
}

check "disk lists the module's device" "$BLKSTACK" --module "$EXB/tinyram.so" disk tinyram:64M
out_has "... as tinyram" "tinyram (an example module)"
check "bench with verify on the module's device" \
  "$BLKSTACK" --module "$EXB/tinyram.so" bench --name=j --filename=tinyram:32M --rw=randwrite \
  --bs=16k --iodepth=8 --size=32M --verify=crc32c --output-format=json
check_py "bench: no errors, every block verified" "$OUT" '
j = d["jobs"][0]
assert j["error"] == 0 and j["verify"]["failed"] == 0 and j["verify"]["checked"] > 0, j'

# As nbd_start does, with the global --module before `serve`.
_nbd_spawn main disk=tinyram:64M "$BLKSTACK" --module "$EXB/tinyram.so" serve \
  --socket "$NBD_TMP/main.sock" --pidfile "$NBD_TMP/main.pid" --export disk=tinyram:64M
NBD_SOCK=$NBD_TMP/main.sock
URI=$(nbd_uri disk)
check "nbdinfo sees 64 MiB" nbdinfo --size "$URI"
out_has "... exactly" "^67108864$"
head -c 48M /dev/urandom >"$NBD_TMP/in.img"
check "nbdcopy in" nbdcopy --flush "$NBD_TMP/in.img" "$URI"
check "nbdcopy out" nbdcopy "$URI" "$NBD_TMP/out.img"
check "the data came back" cmp -n $((48 << 20)) "$NBD_TMP/in.img" "$NBD_TMP/out.img"
check "the rest reads as zeroes" cmp -n $((16 << 20)) <(tail -c 16M "$NBD_TMP/out.img") /dev/zero
nbd_stop main

# The how-to pages' code (docs/howto/*.md): the ```cpp blocks of a page,
# in order, are one translation unit, compiled against the installed
# headers, so a page cannot drift from the API it teaches.
for page in "$EXAMPLE"/../../docs/howto/*.md; do
  [[ -e $page ]] || continue
  name=$(basename "$page" .md)
  awk '/^```cpp$/ {on = 1; next} /^```$/ {on = 0} on' "$page" >"$NBD_TMP/howto-$name.cc"
  _checks=$((_checks + 1))
  [[ -s $NBD_TMP/howto-$name.cc ]] || fail "docs/howto/$name.md has no \`\`\`cpp block"
  check "docs/howto/$name.md's code compiles against the installed headers" \
    c++ -std=c++20 -fsyntax-only -Wall -Wextra -Werror $(pkg-config --cflags blkstack) "$NBD_TMP/howto-$name.cc"
done

# Refusals: each names the module and says why; nothing runs.
check_fails "a missing module" "$BLKSTACK" --module "$NBD_TMP/none.so" disk ram:1M
out_has "... says it cannot load" "module .*none.so: cannot load"
libm=$(c++ -print-file-name=libm.so.6)
check_fails "a shared object that is not a module" "$BLKSTACK" --module "$libm" disk ram:1M
out_has "... says so" "not a blkstack module"
cat >"$NBD_TMP/old.cc" <<'CC'
extern "C" const char blkstack_module_version[] = "0.0.1";
extern "C" void blkstack_module_init() { __builtin_trap(); }
CC
check "build a module for another version" \
  c++ -shared -fPIC -o "$NBD_TMP/old.so" "$NBD_TMP/old.cc"
check_fails "a module built for another version" "$BLKSTACK" --module "$NBD_TMP/old.so" disk ram:1M
out_has "... says which, and that it is not run" "built for blkstack 0.0.1.*rebuild it"
check_fails "the same module twice" \
  "$BLKSTACK" --module "$EXB/tinyram.so" --module "$EXB/tinyram.so" disk tinyram:1M
out_has "... says it is loaded" "already loaded"
finish
