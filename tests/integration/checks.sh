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

# Runs CMD with its output in $OUT, counting it as a check.
_run() {
  _checks=$((_checks + 1))
  "$@" >"$OUT" 2>&1
}

_failed() {
  fail "$1"
  _show_out
  return 1
}

check() {
  local desc=$1 rc
  shift
  _run "$@"
  rc=$?
  ((rc == 0)) || _failed "$desc: '$*' exited $rc"
}

check_fails() {
  local desc=$1 rc
  shift
  _run "$@"
  rc=$?
  if ((rc == 0)); then
    _failed "$desc: '$*' succeeded, expected a failure"
  elif ((rc >= 128)); then
    _failed "$desc: '$*' died with signal $((rc - 128))"
  fi
}
