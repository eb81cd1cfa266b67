#!/usr/bin/env bash
# Installs the Debian packages blkstack needs to build, test and benchmark.
# Idempotent: prints nothing and touches nothing when all are installed;
# otherwise says what it installs, runs apt-get update once and installs
# only the missing ones.
set -euo pipefail

# The one list of packages (build, tests, fuzzing, benchmarks).
PACKAGES=(
  build-essential cmake ninja-build pkg-config
  googletest libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev libfmt-dev nlohmann-json3-dev libxxhash-dev liburing-dev
  clang libclang-rt-14-dev clang-format
  libtomlplusplus-dev libnbd-dev libfuse3-dev librbd-dev librados-dev
  fio libnbd-bin nbdkit nbd-server qemu-utils qemu-system-common fuse3 e2fsprogs
  fdisk
  # The rbd driver's tests bring up a throwaway Ceph cluster (scripts/ceph-up.sh).
  ceph-mon ceph-osd ceph-common
  # What the integration tests run besides those (tests/integration/require.sh
  # names the package of every tool): losetup, blockdev, fstrim, fallocate;
  # mount; cmp; python3 for JSON checks.
  util-linux mount diffutils coreutils python3
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == installed ]] || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "install-deps: installing ${missing[*]}"
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: not root and no sudo; install: ${missing[*]}" >&2; exit 1; }
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
