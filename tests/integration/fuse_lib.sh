# Helpers for the FUSE export's integration tests (tests/integration/fuse_*.sh):
# `blkstack serve --fuse DIR`, loop devices over its files, ext4 on them.
# They need root (mount, loop devices) and /dev/fuse; without them a test
# fails and says so (it does not skip).
#
#   source "$(dirname "$0")/fuse_lib.sh" "$@"     ($1: the blkstack binary)
#   fuse_start NAME=SPEC... [-- EXTRA ARGS]  serve --fuse $MNT; waits for the pidfile
#   fuse_stop                 SIGTERM; must exit 0 within 20 s and leave no mount
#   fuse_attach FILE          blkstack attach; the loop device on stdout (remembered)
#   fuse_detach DEV           blkstack detach
#   fs_mount DEV DIR / fs_umount DIR
#   check DESC CMD... / check_fails DESC CMD... / fail DESC / finish
#
# Whatever happens, the trap at exit unmounts what the test mounted, detaches
# its loop devices, kills the server and clears the FUSE mount (lazily, so a
# dead server cannot make it hang) and removes the temporary directory.
# Every command that could hang on a dead server runs under `timeout`.
set -uo pipefail

BLKSTACK=$(realpath "${1:?usage: $0 PATH_TO_BLKSTACK}")
TEST_NAME=$(basename "$0" .sh)
SERVER_PID=
_loops=()
_mounts=()
TMP=$(mktemp -d "${TMPDIR:-/tmp}/blkstack-$TEST_NAME.XXXXXX")
MNT=$TMP/fuse
OUT=$TMP/out
LOG=$TMP/server.log
PIDFILE=$TMP/server.pid

_fuse_cleanup() {
  local m d
  for m in "${_mounts[@]}"; do umount -l "$m" 2>/dev/null; done
  for d in "${_loops[@]}"; do timeout 10 "$BLKSTACK" detach "$d" >/dev/null 2>&1; done
  if [[ -n $SERVER_PID ]]; then
    kill -TERM "$SERVER_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null
  fi
  wait 2>/dev/null
  umount -l "$MNT" 2>/dev/null
  rm -rf "$TMP"
}
trap _fuse_cleanup EXIT

source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"

finish() {
  echo "$TEST_NAME: $_checks checks, $_failures failures"
  [[ $_failures -eq 0 ]]
  exit
}

source "$(dirname "${BASH_SOURCE[0]}")/require.sh"
fuse_require() {
  require_root "mount, loop devices"
  require_device /dev/fuse "the FUSE export needs the fuse module"
  require_tool umount "$@"
}

fuse_alive() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

fuse_start() {
  local a=() extra=()
  while [[ $# -gt 0 && $1 != -- ]]; do a+=(--export "$1"); shift; done
  [[ $# -gt 0 ]] && { shift; extra=("$@"); }
  rm -f "$PIDFILE"
  _checks=$((_checks + 1))
  "$BLKSTACK" serve --fuse "$MNT" --pidfile "$PIDFILE" "${a[@]}" "${extra[@]}" >>"$LOG" 2>&1 &
  SERVER_PID=$!
  local i
  for i in $(seq 150); do
    [[ -s $PIDFILE ]] && break
    fuse_alive "$SERVER_PID" || break
    sleep 0.1
  done
  if [[ ! -s $PIDFILE ]]; then
    fail "blkstack serve --fuse did not write its pidfile within 15 s"
    sed 's/^/    | /' "$LOG"
    finish
  fi
}

fuse_stop() {
  _checks=$((_checks + 1))
  if ! fuse_alive "$SERVER_PID"; then
    fail "the server is not running before SIGTERM"
    SERVER_PID=
    return 1
  fi
  kill -TERM "$SERVER_PID"
  local i
  for i in $(seq 200); do fuse_alive "$SERVER_PID" || break; sleep 0.1; done
  if fuse_alive "$SERVER_PID"; then
    fail "the server did not exit within 20 s of SIGTERM"
    sed 's/^/    | /' "$LOG"
    kill -KILL "$SERVER_PID"
  fi
  wait "$SERVER_PID"
  local rc=$?
  SERVER_PID=
  [[ $rc -eq 0 ]] || { fail "the server exited $rc after SIGTERM, expected 0"; sed 's/^/    | /' "$LOG"; }
  if grep -q " $MNT fuse" /proc/mounts; then fail "$MNT is still mounted after the server stopped"; fi
}

fuse_attach() {
  local dev
  _checks=$((_checks + 1))
  if ! dev=$(timeout 30 "$BLKSTACK" attach "$@" 2>"$OUT"); then
    fail "blkstack attach $*"
    _show_out
    return 1
  fi
  _loops+=("$dev")
  echo "$dev"
}

fuse_detach() {
  check "blkstack detach $1" timeout 30 "$BLKSTACK" detach "$1" || return 1
  grep -q "detached $1" "$OUT" || fail "blkstack detach $1 did not say 'detached $1'"
  local keep=() d
  for d in "${_loops[@]}"; do [[ $d == "$1" ]] || keep+=("$d"); done
  _loops=("${keep[@]}")
}

fs_mount() {
  mkdir -p "$2"
  check "mount $1 on $2" timeout 60 mount "$1" "$2" || return 1
  _mounts+=("$2")
}

fs_umount() {
  check "umount $1" timeout 120 umount "$1" || return 1
  local keep=() m
  for m in "${_mounts[@]}"; do [[ $m == "$1" ]] || keep+=("$m"); done
  _mounts=("${keep[@]}")
}

# file_workload DIR N: N files created, written, fsynced, renamed, half of
# them deleted, the rest checked against their checksums.
file_workload() {
  timeout 300 python3 - "$1" "$2" <<'PY'
import hashlib, os, random, sys
d, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
sums = {}
os.makedirs(os.path.join(d, "w"), exist_ok=True)
for i in range(n):
    p = os.path.join(d, "w", f"f{i}")
    data = rng.randbytes(rng.choice([100, 4096, 10000, 65536, 300000]))
    with open(p, "wb") as f:
        f.write(data)
        if i % 7 == 0:
            f.flush(); os.fsync(f.fileno())
    q = p + ".r"
    os.rename(p, q)
    sums[q] = hashlib.sha256(data).hexdigest()
    if i % 2 == 1:
        os.unlink(q); del sums[q]
os.sync()
for q, h in sums.items():
    with open(q, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == h, q
print(f"{n} files written, {len(sums)} kept and checked")
PY
}
