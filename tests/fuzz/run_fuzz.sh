#!/usr/bin/env bash
# Runs one libFuzzer target for a fixed time over a scratch copy of its seed
# corpus, so the repository is never modified.
#   run_fuzz.sh FUZZER SEED_CORPUS_DIR DICT_FILE SECONDS ARTIFACT_DIR
set -euo pipefail
fuzzer=$1 seeds=$2 dict=$3 seconds=$4 artifacts=$5

work=$(mktemp -d "${TMPDIR:-/tmp}/blkstack-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
if [[ -d "$seeds" ]]; then
  cp -r "$seeds"/. "$work"/
fi
echo "fuzz: $(basename "$fuzzer") for ${seconds}s over $(ls "$work" | wc -l) seed inputs"
args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
      -artifact_prefix="$artifacts/")
[[ -f "$dict" ]] && args+=(-dict="$dict")
"$fuzzer" "${args[@]}" "$work"
