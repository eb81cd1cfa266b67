# Helpers for the NBD integration tests (tests/integration/nbd_*.sh): real
# NBD clients (nbdinfo, nbdcopy, qemu-img, qemu-io, fio) against
# `blkstack serve` on a unix socket in a private temporary directory.
#
#   source "$(dirname "$0")/nbd_lib.sh" "$@"     ($1: the blkstack binary)
#   nbd_require TOOL...          a missing tool is a failure (exit 2), not a skip
#   nbd_start NAME EXPORT=SPEC...  starts a server; $NBD_SOCK is its socket
#   nbd_uri EXPORT [SOCK]        nbd+unix:///EXPORT?socket=SOCK
#   nbd_stop NAME                SIGTERM; the server must exit 0 within 10 s
#   check DESC CMD...            runs CMD; a non-zero exit is a failure
#   check_fails DESC CMD...      CMD must fail (exit 1..127)
#   fail DESC                    records a failure
#   check_py DESC FILE PYTHON    runs PYTHON with d = the JSON in FILE
#   check_qemu_io DESC URI CMD...  qemu-io -c CMD... on URI, no failure printed
#   finish                       stops the servers left, exits non-zero on any failure
#
# Every server started is stopped at exit, whatever happens (trap). A server
# that died during the test, did not write its pidfile within 10 s, or did
# not exit 0 on SIGTERM is a failure.
#
# BLKSTACK_TEST_NBD_SERVER=nbdkit runs the same test against nbdkit's memory
# plugin instead (ram:SIZE -> memory SIZE, ro=1 -> -r, bs=N -> the
# blocksize-policy filter; one export per server): a test that fails
# against blkstack but passes against nbdkit points at the server, not at
# the test.
set -uo pipefail
# Before the cd below: BASH_SOURCE may be a relative path.
_NBD_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

BLKSTACK=$(realpath "${1:?usage: $0 PATH_TO_BLKSTACK}")
NBD_SERVER=${BLKSTACK_TEST_NBD_SERVER:-blkstack}
TEST_NAME=$(basename "$0" .sh)
declare -A _server_pid=()
NBD_TMP=$(mktemp -d "${TMPDIR:-/tmp}/blkstack-$TEST_NAME.XXXXXX")
OUT=$NBD_TMP/out
cd "$NBD_TMP" || exit 2   # what the tools leave behind (fio's verify state) goes too

_nbd_cleanup() {
  local name pid
  for name in "${!_server_pid[@]}"; do
    pid=${_server_pid[$name]}
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  wait 2>/dev/null
  rm -rf "$NBD_TMP"
}
trap _nbd_cleanup EXIT

source "$_NBD_LIB_DIR/checks.sh"

# check_qemu_io DESC URI 'CMD' 'CMD'...: runs the qemu-io commands on the
# raw image at URI. qemu-io exits 0 when an aio_read pattern check fails, so
# any "failed" or "error" in its output is a failure too.
check_qemu_io() {
  local desc=$1 uri=$2 c args=()
  shift 2
  for c in "$@"; do args+=(-c "$c"); done
  check "$desc" qemu-io -f raw "$uri" "${args[@]}" || return 1
  if grep -Eiq 'fail|error' "$OUT"; then
    fail "$desc: qemu-io reported a failure"
    _show_out
    return 1
  fi
  return 0
}

# check_py DESC FILE PYTHON: PYTHON runs with d = the JSON in FILE (text
# before the first '{' or '[' is skipped); a failed assert is a failure.
check_py() {
  local desc=$1 file=$2 code=$3
  _checks=$((_checks + 1))
  local msg
  if ! msg=$(python3 -c "
import json, sys
text = open(sys.argv[1]).read()
starts = [i for i in (text.find('{'), text.find('[')) if i >= 0]
d = json.loads(text[min(starts):]) if starts else None
$code
" "$file" 2>&1); then
    fail "$desc: $msg"
    sed 's/^/    | /' "$file" | head -n 60
    return 1
  fi
  return 0
}

source "$_NBD_LIB_DIR/require.sh"
nbd_require() { require_tool "$@"; }

nbd_uri() {
  local sock=${2:-$NBD_SOCK}
  echo "nbd+unix:///$1?socket=${_export_sock[$sock/$1]:-$sock}"
}

# _nbdkit_args SPEC: nbdkit options and plugin arguments for a blkstack
# device spec (ram:SIZE[,ro=1][,bs=N], null:SIZE, file:PATH[,size=S] with
# the file already that size). The blocksize-policy
# filter advertises block sizes as blkstack does: minimum = the logical
# block size (512 unless bs= says otherwise).
_nbdkit_args() {
  local spec=$1 type=${1%%:*} rest=${1#*:} size opts=() flags=() bs=512
  IFS=, read -r -a opts <<<"$rest"
  size=${opts[0]}
  local o
  for o in "${opts[@]:1}"; do
    case $o in
      ro=1) flags+=(-r) ;;
      bs=*) bs=${o#bs=} ;;
      size=*) ;;  # file: the file's own size
      *) echo "nbd_lib: cannot map option '$o' of '$spec' to nbdkit" >&2; return 1 ;;
    esac
  done
  case $type in
    ram) type=memory ;;
    null) ;;
    file) type="file $size"; size= ;;
    *) echo "nbd_lib: cannot map '$spec' to nbdkit" >&2; return 1 ;;
  esac
  echo "${flags[*]} --filter=blocksize-policy $type $size blocksize-minimum=$bs" \
       "blocksize-preferred=4096 blocksize-maximum=33554432 blocksize-error-policy=error"
}

# nbd_start NAME EXPORT=SPEC... [-- EXTRA SERVER ARGS]: starts a server on
# $NBD_TMP/NAME.sock and waits (10 s at most) for its pidfile; sets NBD_SOCK.
# Exits the test if the server cannot be started: nothing else can be
# checked then.
#
# nbdkit mode: nbdkit serves one device per process, so the first export
# is served on NAME.sock under every name (the exportname filter lists
# them all), and each further export by its own nbdkit on NAME.EXPORT.sock,
# where nbd_uri sends its clients.
declare -A _export_sock=()
nbd_start() {
  local name=$1
  shift
  local exports=() extra=() e
  while [[ $# -gt 0 && $1 != -- ]]; do exports+=("$1"); shift; done
  [[ $# -gt 0 ]] && { shift; extra=("$@"); }
  if [[ $NBD_SERVER == nbdkit ]]; then
    local args
    args=$(_nbdkit_args "${exports[0]#*=}") || exit 2
    if [[ ${#exports[@]} -gt 1 ]]; then
      args="--filter=exportname $args exportname-list=explicit"
      for e in "${exports[@]}"; do args+=" exportname=${e%%=*}"; done
    fi
    # shellcheck disable=SC2086
    _nbd_spawn "$name" "${exports[*]}" nbdkit -f -U "$NBD_TMP/$name.sock" \
      --pidfile "$NBD_TMP/$name.pid" "${extra[@]}" $args
    for e in "${exports[@]:1}"; do
      args=$(_nbdkit_args "${e#*=}") || exit 2
      # shellcheck disable=SC2086
      _nbd_spawn "$name.${e%%=*}" "$e" nbdkit -f -U "$NBD_TMP/$name.${e%%=*}.sock" \
        --pidfile "$NBD_TMP/$name.${e%%=*}.pid" "${extra[@]}" $args
      _export_sock["$NBD_TMP/$name.sock/${e%%=*}"]=$NBD_TMP/$name.${e%%=*}.sock
    done
  else
    local a=()
    for e in "${exports[@]}"; do a+=(--export "$e"); done
    _nbd_spawn "$name" "${exports[*]}" "$BLKSTACK" serve --socket "$NBD_TMP/$name.sock" \
      --pidfile "$NBD_TMP/$name.pid" "${a[@]}" "${extra[@]}"
  fi
  NBD_SOCK=$NBD_TMP/$name.sock
}

# _nbd_spawn NAME WHAT COMMAND...: runs the server COMMAND in the
# background (log in NAME.log) and waits for NAME.pid.
_nbd_spawn() {
  local name=$1 what=$2
  shift 2
  local sock=$NBD_TMP/$name.sock pidfile=$NBD_TMP/$name.pid log=$NBD_TMP/$name.log
  rm -f "$sock" "$pidfile"
  _checks=$((_checks + 1))
  "$@" >"$log" 2>&1 &
  local pid=$!
  _server_pid[$name]=$pid
  local i
  for i in $(seq 100); do
    [[ -s $pidfile ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ ! -s $pidfile ]]; then
    local rc=running
    if ! _nbd_alive "$pid"; then wait "$pid" 2>/dev/null; rc="exit status $?"; fi
    fail "$NBD_SERVER server '$name' ($what) did not write its pidfile within 10 s ($rc)"
    echo "    command: $*"
    sed 's/^/    | /' "$log"
    [[ $rc == running ]] || unset "_server_pid[$name]"
    finish
  fi
  # A pidfile may be written before its content: give it a moment.
  for i in $(seq 20); do [[ $(cat "$pidfile") == "$pid" ]] && break; sleep 0.05; done
  if [[ $(cat "$pidfile") != "$pid" ]]; then
    fail "server '$name': the pidfile says '$(cat "$pidfile")', the server's pid is $pid"
  fi
  if [[ ! -S $sock ]]; then
    fail "server '$name' wrote its pidfile but $sock is not a socket"
  fi
  if [[ $NBD_SERVER == blkstack ]] && ! grep -q '^blkstack serve: listening on' "$log"; then
    fail "server '$name': no 'blkstack serve: listening on' line on stderr"
    sed 's/^/    | /' "$log"
  fi
}

# The pid of server NAME.
nbd_pid() { echo "${_server_pid[$1]}"; }

# True while server NAME runs (a zombie does not count).
_nbd_alive() {
  local pid=$1 state
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

nbd_stop() {
  local n
  for n in "${!_server_pid[@]}"; do
    [[ $n == "$1".* ]] && _nbd_stop_one "$n"
  done
  _nbd_stop_one "$1"
}

_nbd_stop_one() {
  local name=$1 pid=${_server_pid[$1]:-}
  local log=$NBD_TMP/$name.log
  [[ -n $pid ]] || return 0
  unset "_server_pid[$name]"
  _checks=$((_checks + 1))
  if ! _nbd_alive "$pid"; then
    wait "$pid" 2>/dev/null
    fail "server '$name' is no longer running before SIGTERM (exit status $?)"
    sed 's/^/    | /' "$log"
    return 1
  fi
  kill -TERM "$pid"
  local i
  for i in $(seq 200); do _nbd_alive "$pid" || break; sleep 0.05; done
  if _nbd_alive "$pid"; then
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null
    fail "server '$name' did not exit within 10 s of SIGTERM"
    sed 's/^/    | /' "$log"
    return 1
  fi
  wait "$pid"
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    fail "server '$name' exited $rc after SIGTERM, expected 0"
    sed 's/^/    | /' "$log"
    return 1
  fi
  # blkstack serve removes its socket and pidfile on the way out.
  if [[ $NBD_SERVER == blkstack ]]; then
    local f
    for f in "$NBD_TMP/$name.sock" "$NBD_TMP/$name.pid"; do
      [[ -e $f ]] && { fail "server '$name' left $f behind after SIGTERM"; return 1; }
    done
  fi
  return 0
}

finish() {
  local name
  for name in "${!_server_pid[@]}"; do nbd_stop "$name"; done
  echo "$TEST_NAME ($NBD_SERVER): $_checks checks, $_failures failures"
  [[ $_failures -eq 0 ]]
  exit
}
