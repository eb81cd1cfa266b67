#!/usr/bin/env bash
# blkstack serve's own options, seen through real clients (nbdinfo,
# qemu-io): several --socket and a --listen on TCP port 0 (the port from the
# "listening on" line) serving the same device; --threads 1; a TOML
# --config; SIGHUP re-reading it (a new export appears, a removed one goes,
# data on a kept device survives, a connection made before the reload keeps
# working); a broken config on SIGHUP keeps the old exports; a bad config at
# start is exit status 2 naming the file and line. blkstack only: against
# nbdkit this test has nothing to check.
source "$(dirname "$0")/nbd_lib.sh" "$@"
nbd_require nbdinfo qemu-io python3
if [[ $NBD_SERVER != blkstack ]]; then
  echo "nbd_serve: blkstack serve's own options; nothing to run against $NBD_SERVER"
  exit 0
fi

# Two unix sockets and TCP on a port the kernel picks, one device.
nbd_start multi disk=ram:64M -- --socket "$NBD_TMP/second.sock" --listen 127.0.0.1:0 --threads 1
SOCK1=$NBD_SOCK
line=$(grep -m1 '^blkstack serve: listening on' "$NBD_TMP/multi.log")
port=$(sed -nE 's/.*tcp:127\.0\.0\.1:([0-9]+).*/\1/p' <<<"$line")
_checks=$((_checks + 1))
[[ -n $port && $port -gt 0 ]] || fail "no tcp:127.0.0.1:PORT in '$line'"
[[ $line == *"1 thread"* ]] || fail "--threads 1 not in '$line'"
check_qemu_io "write through the first socket" "$(nbd_uri disk "$SOCK1")" 'write -P 0x42 0 1M'
check_qemu_io "read through the second socket" "$(nbd_uri disk "$NBD_TMP/second.sock")" \
  'read -P 0x42 0 1M'
if [[ -n $port ]]; then
  check_qemu_io "read over TCP" "nbd://127.0.0.1:$port/disk" 'read -P 0x42 0 1M' \
    'write -P 0x43 1M 64k'
  check_qemu_io "a TCP write seen on the unix socket" "$(nbd_uri disk "$SOCK1")" \
    'read -P 0x43 1M 64k'
  check "nbdinfo over TCP" nbdinfo --size "nbd://127.0.0.1:$port/disk"
  _checks=$((_checks + 1))
  [[ $(cat "$OUT") == 67108864 ]] || fail "size over TCP: $(cat "$OUT")"
fi
nbd_stop multi

# A config file, then SIGHUP with another.
CONF=$NBD_TMP/serve.toml
cat >"$CONF" <<'EOF'
[[device]]
name = "ram0"
spec = "ram:32M"

[[export]]
name = "one"
device = "ram0"
description = "first"

[[export]]
name = "gone"
device = "ram0"
EOF
nbd_start conf -- --config "$CONF"
SOCK=$NBD_SOCK
# sighup_and_wait PATTERN: SIGHUP, then wait (10 s) for a new log line
# matching PATTERN ("reloaded" or "reload failed").
sighup_and_wait() {
  local log=$NBD_TMP/conf.log before
  before=$(grep -c "$1" "$log")
  kill -HUP "$(nbd_pid conf)"
  _checks=$((_checks + 1))
  for _ in $(seq 100); do
    [[ $(grep -c "$1" "$log") -gt $before ]] && return 0
    sleep 0.1
  done
  fail "SIGHUP: no new '$1' line in the log within 10 s"
  sed 's/^/    | /' "$log"
  return 1
}
list_names() {
  check "nbdinfo --list ($1)" nbdinfo --list --json "nbd+unix://?socket=$SOCK" || return
  cp "$OUT" "$NBD_TMP/list.json"
  check_py "export list ($1)" "$NBD_TMP/list.json" "
names = [e['export-name'] for e in d['exports']]
assert names == $2, names"
}
list_names "from the config" '["one", "gone"]'
check_py "the description is listed" "$NBD_TMP/list.json" '
e = d["exports"][0]
assert e.get("description") == "first", e'
check_qemu_io "write to the config's device" "$(nbd_uri one)" 'write -P 0x61 0 64k'

# A connection made before the reload: qemu-io waiting on a fifo for its
# next commands.
mkfifo "$NBD_TMP/cmds"
qemu-io -f raw "$(nbd_uri one)" <"$NBD_TMP/cmds" >"$NBD_TMP/early.out" 2>&1 &
early=$!
exec 7>"$NBD_TMP/cmds"
echo 'read -P 0x61 0 64k' >&7
sleep 0.5

cat >"$CONF" <<'EOF'
[[device]]
name = "ram0"
spec = "ram:32M"

[[device]]
name = "ram1"
spec = "ram:16M"

[[export]]
name = "one"
device = "ram0"

[[export]]
name = "two"
device = "ram1"
EOF
sighup_and_wait '^blkstack serve: reloaded'
list_names "after SIGHUP" '["one", "two"]'
check_qemu_io "the kept device kept its data" "$(nbd_uri one)" 'read -P 0x61 0 64k'
check "the new export's size" nbdinfo --size "$(nbd_uri two)"
_checks=$((_checks + 1))
[[ $(cat "$OUT") == 16777216 ]] || fail "size of 'two' after SIGHUP: $(cat "$OUT")"
check_fails "the removed export is gone" nbdinfo --size "$(nbd_uri gone)"
echo 'write -P 0x62 64k 4k' >&7
echo 'read -P 0x62 64k 4k' >&7
exec 7>&-
_checks=$((_checks + 1))
if wait "$early"; then
  done_cmds=$(grep -Ec '(^|> )(read|wrote) [0-9]+/[0-9]+ bytes' "$NBD_TMP/early.out")
  if grep -Eiq 'fail|error' "$NBD_TMP/early.out" || [[ $done_cmds -ne 3 ]]; then
    fail "the connection made before SIGHUP: unexpected output"
    sed 's/^/    | /' "$NBD_TMP/early.out"
  fi
else
  fail "the connection made before SIGHUP failed"
  sed 's/^/    | /' "$NBD_TMP/early.out"
fi

# A broken config on SIGHUP: logged, the old exports stay.
echo 'this is = not [valid' >"$CONF"
sighup_and_wait '^blkstack serve: reload failed'
list_names "after a SIGHUP with a broken config" '["one", "two"]'
nbd_stop conf

# A bad config at start: exit status 2, the file and the line named.
printf '[[device]]\nname = "x"\nspec = 5\n' >"$CONF"
_checks=$((_checks + 1))
"$BLKSTACK" serve --config "$CONF" --socket "$NBD_TMP/bad.sock" >"$OUT" 2>&1
rc=$?
if [[ $rc -ne 2 ]] || ! grep -q "$CONF" "$OUT" || ! grep -Eq 'line 3|:3' "$OUT"; then
  fail "a bad config: exit $rc (expected 2) and a message naming $CONF and line 3"
  _show_out
fi

finish
