# The check helpers of the server integration tests (sourced by nbd_lib.sh
# and fuse_lib.sh, which set $OUT, the file that keeps the last command's
# output). Each failure is reported and counted; the test ends with its
# library's `finish`, which exits non-zero if any check failed.
#
#   check DESC CMD...        runs CMD; a non-zero exit is a failure
#   check_fails DESC CMD...  CMD must fail (exit 1..127; a signal is a failure)
#   fail DESC                records a failure
_failures=0
_checks=0

fail() {
  echo "FAIL: $*"
  _failures=$((_failures + 1))
}

# The last 40 lines of the last command's output, indented.
_show_out() { [[ -s $OUT ]] && tail -n 40 "$OUT" | sed 's/^/    | /'; }

check() {
  local desc=$1
  shift
  _checks=$((_checks + 1))
  "$@" >"$OUT" 2>&1
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    fail "$desc: '$*' exited $rc"
    _show_out
    return 1
  fi
  return 0
}

check_fails() {
  local desc=$1
  shift
  _checks=$((_checks + 1))
  "$@" >"$OUT" 2>&1
  local rc=$?
  if [[ $rc -eq 0 ]]; then
    fail "$desc: '$*' succeeded, expected a failure"
    _show_out
    return 1
  fi
  if [[ $rc -ge 128 ]]; then
    fail "$desc: '$*' died with signal $((rc - 128))"
    _show_out
    return 1
  fi
  return 0
}
