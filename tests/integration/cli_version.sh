#!/usr/bin/env bash
# blkstack version (and --version) print the project version.
#   cli_version.sh BLKSTACK VERSION
source "$(dirname "$0")/lib.sh"
VERSION=${1:?usage: cli_version.sh BLKSTACK VERSION}
v=${VERSION//./\\.}

expect_ok -m "^blkstack $v\$" version
expect_ok -m "$v" --version
finish
