# Helpers for the CLI integration tests. Source it, then call the checks;
# each failure is reported and counted, and `finish` exits non-zero if any
# check failed. $BLKSTACK is the blkstack binary under test.
set -uo pipefail

BLKSTACK=${1:?usage: $0 PATH_TO_BLKSTACK [ARGS...]}
[[ -x "$BLKSTACK" ]] || { echo "not executable: $BLKSTACK" >&2; exit 2; }
shift
source "$(dirname "${BASH_SOURCE[0]}")/require.sh"
_failures=0
_checks=0
_out=$(mktemp) _err=$(mktemp)
trap 'rm -f "$_out" "$_err"' EXIT

_fail() {
  echo "FAIL: $*"
  echo "  stdout: $(head -c 2000 "$_out")"
  echo "  stderr: $(head -c 2000 "$_err")"
  _failures=$((_failures + 1))
}

# run ARGS...: runs blkstack, keeping stdout, stderr and the exit code.
run() {
  _checks=$((_checks + 1))
  _cmd="blkstack $*"
  "$BLKSTACK" "$@" >"$_out" 2>"$_err"
  _rc=$?
}

# expect_ok PATTERN... ARGS: blkstack ARGS succeeds and stdout matches every
# extended regex given with -m PATTERN.
expect_ok() {
  local patterns=()
  while [[ $# -gt 0 && $1 == -m ]]; do patterns+=("$2"); shift 2; done
  run "$@"
  if [[ $_rc -ne 0 ]]; then _fail "'$_cmd' exited $_rc, expected 0"; return; fi
  local p
  for p in "${patterns[@]}"; do
    grep -Eq -- "$p" "$_out" || _fail "'$_cmd': stdout does not match /$p/"
  done
}

# expect_fail -m PATTERN... ARGS: blkstack ARGS exits non-zero, does not
# crash (no signal), and stderr matches every pattern.
expect_fail() {
  local patterns=()
  while [[ $# -gt 0 && $1 == -m ]]; do patterns+=("$2"); shift 2; done
  run "$@"
  if [[ $_rc -eq 0 ]]; then _fail "'$_cmd' succeeded, expected failure"; return; fi
  if [[ $_rc -ge 128 ]]; then _fail "'$_cmd' died with signal $((_rc - 128))"; return; fi
  local p
  for p in "${patterns[@]}"; do
    grep -Eq -- "$p" "$_err" || _fail "'$_cmd': stderr does not match /$p/"
  done
}

finish() {
  echo "$(basename "$0"): $_checks commands checked, $_failures problems"
  [[ $_failures -eq 0 ]]
}
