#!/usr/bin/env bash
# Checks that the project's C++ files are formatted as .clang-format says,
# without changing any: lists the files that differ and how to fix them.
#
#   scripts/check-format.sh            every tracked *.cc and *.h
#   scripts/check-format.sh FILE...    only these
#   scripts/check-format.sh --diff     also show what would change
#
# Exit status: 0 all formatted, 1 some differ, 2 clang-format is missing
# or failed.
# Formatting differs between clang-format versions: the reference is
# Debian 12's clang-format 14 (scripts/install-deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

show_diff=0
files=()
for arg in "$@"; do
  case "$arg" in
    --diff) show_diff=1 ;;
    -h|--help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) files+=("$arg") ;;
  esac
done

if ! command -v clang-format >/dev/null; then
  echo "check-format: clang-format is not installed (apt-get install clang-format," >&2
  echo "or scripts/install-deps.sh)" >&2
  exit 2
fi
if [[ ${#files[@]} -eq 0 ]]; then
  # The same set as `make format`.
  mapfile -t files < <(git ls-files '*.cc' '*.h')
fi

# One clang-format for all the files (one per file costs seconds more): it
# reports each place that differs as "FILE:LINE:COL: error: ...".
for f in "${files[@]}"; do
  [[ -f "$f" ]] || { echo "check-format: no such file: $f" >&2; exit 2; }
done
violation='^(.+):[0-9]+:[0-9]+: error: code should be clang-formatted'
rc=0
out=$(clang-format --dry-run --Werror "${files[@]}" 2>&1) || rc=$?
differ=()
mapfile -t differ < <(sed -nE "s/${violation}.*/\\1/p" <<<"$out" | sort -u)
# Any other error (a bad .clang-format, an unreadable file) is no pass.
other=$(grep -E '^[^ ]+:[0-9]+:[0-9]+: error: |^(error|Error|Invalid)' <<<"$out" |
        grep -vE "$violation" || true)
if [[ -n "$other" || ($rc -ne 0 && ${#differ[@]} -eq 0) ]]; then
  echo "check-format: clang-format failed (exit status $rc):" >&2
  echo "${other:-$out}" >&2
  exit 2
fi
if [[ $show_diff -eq 1 ]]; then
  for f in "${differ[@]}"; do
    clang-format "$f" | diff -u --label "$f" --label "$f (formatted)" "$f" - || true
  done
fi

version=$(clang-format --version | sed -E 's/.*version ([0-9.]+).*/\1/')
if [[ ${#differ[@]} -eq 0 ]]; then
  echo "check-format: ${#files[@]} files formatted as .clang-format says (clang-format $version)"
  exit 0
fi
echo "check-format: ${#differ[@]} of ${#files[@]} files differ from .clang-format (clang-format $version):"
printf '  %s\n' "${differ[@]}"
echo "Fix: make format (all files), or clang-format -i FILE...; scripts/check-format.sh --diff shows the changes."
exit 1
