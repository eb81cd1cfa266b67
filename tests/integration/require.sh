# The one way an integration test says what it needs (sourced by lib.sh,
# nbd_lib.sh and fuse_lib.sh). A missing tool, root or device is a failure
# that names it and the package that brings it (exit 2), never an obscure
# error later: scripts/install-deps.sh installs every package named here.
#
#   require_tool TOOL...     each must be on PATH
#   require_root WHY         the test must run as root
#   require_device PATH WHY  PATH must exist (/dev/fuse, /dev/loop-control)

# The Debian package of each tool the tests run.
declare -A _tool_package=(
  [python3]=python3 [fio]=fio [nbdinfo]=libnbd-bin [nbdcopy]=libnbd-bin
  [nbdkit]=nbdkit [qemu-img]=qemu-utils [qemu-io]=qemu-utils
  [mkfs.ext4]=e2fsprogs [e2fsck]=e2fsprogs [losetup]=util-linux
  [blockdev]=util-linux [fstrim]=util-linux [fallocate]=util-linux
  [mount]=mount [umount]=mount [fusermount3]=fuse3
  [cmp]=diffutils [sha256sum]=coreutils [truncate]=coreutils [dd]=coreutils
  [stat]=coreutils [timeout]=coreutils
  [sfdisk]=fdisk [partx]=util-linux [blkid]=util-linux
)

_require_name() { echo "${TEST_NAME:-$(basename "$0" .sh)}"; }

require_tool() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null && continue
    echo "$(_require_name): $tool is missing (package ${_tool_package[$tool]:-unknown};" \
         "run scripts/install-deps.sh)" >&2
    exit 2
  done
}

require_root() {
  [[ $(id -u) -eq 0 ]] && return
  echo "$(_require_name): needs root ($1)" >&2
  exit 2
}

require_device() {
  [[ -e $1 ]] && return
  echo "$(_require_name): $1 is missing ($2)" >&2
  exit 2
}
