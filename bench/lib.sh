# Shared by the bench/*.sh scripts: source it after `cd` to the repository.
#
#   bench_setup NAME TOOL...   checks the tools, makes $tmp (removed at exit)
#   bench_build TARGET...      builds the targets in $BUILD (Release)
#   bench_fail MESSAGE [LOG]   prints LOG (if any) and MESSAGE, exits 1
#   bench_wait WHAT LOG TEST...  waits up to 10 s for TEST to succeed, else fails
#   bench_stop PID...          SIGTERM, up to 10 s to exit, then SIGKILL
#   cpu_ticks PID...           CPU clock ticks the processes used so far
#   measure_job DESC OUT "PID..." SETTLE FIO_ARG...
#                              one time-based fio job (RUNTIME s): JSON in
#                              OUT.json, the CPU ticks the processes used in
#                              OUT.cpu ("TICKS TICKS_PER_SECOND")

JOBS=${JOBS:-2}
BUILD=build-bench

bench_fail() {
  [ -n "${2:-}" ] && [ -f "$2" ] && cat "$2"
  echo "$BENCH_NAME: $1" >&2
  exit 1
}

bench_setup() {
  BENCH_NAME=$1
  shift
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || bench_fail "$tool is missing (scripts/install-deps.sh)"
  done
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
}

bench_build() {
  echo "$BENCH_NAME: building $BUILD (Release): $*"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBLKSTACK_TESTS=OFF \
    -DBLKSTACK_BENCH=ON --log-level=WARNING >"$tmp/configure.log" 2>&1 ||
    bench_fail "configure failed" "$tmp/configure.log"
  cmake --build "$BUILD" -j "$JOBS" --target "$@" >"$tmp/build.log" 2>&1 ||
    bench_fail "build failed" "$tmp/build.log"
}

bench_wait() {
  local what=$1 log=$2 i
  shift 2
  for i in $(seq 100); do
    "$@" && return 0
    sleep 0.1
  done
  bench_fail "$what did not come up within 10 s" "$log"
}

bench_stop() {
  local p
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  # Freeing a full 1 GiB export takes a moment: 10 s, then SIGKILL.
  for p in "$@"; do
    for _ in $(seq 100); do
      # (A child of ours that has exited stays a zombie until waited.)
      [[ $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) =~ ^[^Z]$ ]] || break
      sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    # (Its status is SIGKILL's if it took too long: no reason to stop here.)
    wait "$p" 2>/dev/null || true
  done
}

# utime+stime+cutime+cstime from /proc/PID/stat (reaped children count: a
# server that forks per connection), summed over the processes given.
cpu_ticks() {
  local p sum=0 t
  for p in "$@"; do
    t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$p/stat")
    sum=$((sum + t))
  done
  echo "$sum"
}

# SETTLE: seconds to wait after fio before reading the CPU time, so that a
# server that forks per connection has reaped the child (its cutime).
measure_job() {
  local desc=$1 out=$2 pids=$3 settle=$4 before after
  shift 4
  # shellcheck disable=SC2086
  before=$(cpu_ticks $pids)
  fio "$@" --time_based --runtime="$RUNTIME" --output-format=json >"$out.json" 2>&1 ||
    bench_fail "fio $desc failed" "$out.json"
  sleep "$settle"
  # shellcheck disable=SC2086
  after=$(cpu_ticks $pids)
  echo "$((after - before)) $(getconf CLK_TCK)" >"$out.cpu"
}
