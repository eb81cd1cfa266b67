#!/usr/bin/env bash
# Every subcommand's --help (and the top-level one) shows an example.
source "$(dirname "$0")/lib.sh"

expect_ok -m 'Example' --help
# The subcommands, as the top-level help lists them.
mapfile -t subcommands < <("$BLKSTACK" --help | awk '/^Subcommands:/ {on = 1; next}
                                                      on && /^  [a-z]/ {print $1}
                                                      on && /^$/ {on = 0}')
if [[ ${#subcommands[@]} -lt 3 ]]; then
  _fail "found only ${#subcommands[@]} subcommands in 'blkstack --help': ${subcommands[*]}"
fi
for cmd in "${subcommands[@]}"; do
  expect_ok -m 'Example' "$cmd" --help
done
finish
