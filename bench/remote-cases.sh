# The jobs bench/remote.sh and bench/remote-rbd.sh both run, as NAME|fio
# options: one list, so remote.sh can put the rbd rows beside its own.
# Sourced, not run.
CASES=(
  "rr1|--rw=randread --bs=4k --iodepth=1"
  "rr32|--rw=randread --bs=4k --iodepth=32"
  "rw1|--rw=randwrite --bs=4k --iodepth=1"
  "rw32|--rw=randwrite --bs=4k --iodepth=32"
  "seq1m|--rw=read --bs=1M --iodepth=8"
)
