# The bfq rows of bench/sched-study.sh, which sources this file when bfq is
# registered and calls bfq_rows: it prints the rows (markdown, after the
# study's deadline and kyber rows) and sets BFQ_RATIO. It uses the study's
# B, tmp, RUNTIME, ROT, ROT_QUEUE, run_blkstack, run_kernel, start_export
# and stop_export. Rows, on the rotational model:
#   bfq-interactive  an interactive reader (4 KiB random, depth 1, 50 reads
#                    a second) against a write flood (sequential 64 KiB,
#                    depth 32): read p50/p99/max and writer MB/s, with bfq
#                    (low_latency=1, its default) beside none and
#                    mq-deadline in the same run; on the kernel too (bfq
#                    only if the kernel has it).
#   bfq-weights      two sequential readers (64 KiB, depth 1), separate
#                    jobs and so separate issuers, at bfq_weight 100 and
#                    200: MB/s of each and their ratio (BFQ_RATIO, goal 2).
#                    blkstack only: the kernel's bfq takes weights from
#                    cgroups (io.bfq.weight), which fio jobs do not set up.
# shellcheck shell=bash disable=SC2034,SC2154  # set here, used and set by the study

bfqi_jobs() {  # FILENAME
  echo "--name=writer --filename=$1 --rw=write --bs=64k --iodepth=32" \
    "--name=reader --filename=$1 --rw=randread --bs=4k --iodepth=1 --rate_iops=50"
}
bfqw_jobs() {
  echo "--name=w100 --filename=$1 --rw=read --bs=64k --iodepth=1 --bfq_weight=100" \
    "--name=w200 --filename=$1 --rw=read --bs=64k --iodepth=1 --bfq_weight=200" \
    "--offset=50%"
}

# Prints the kernel's schedulers for the loop device of start_export.
kernel_schedulers() {
  tr -d '[]' <"/sys/block/$(basename "$LOOP")/queue/scheduler"
}

bfq_rows() {
  local s kernel_scheds kernel_bfq=""
  for s in none mq-deadline bfq; do run_blkstack bfqi "$s" "$ROT"; done
  run_blkstack bfqw bfq "$ROT"

  start_export "$ROT" "$ROT_QUEUE"
  kernel_scheds=$(kernel_schedulers)
  [[ " $kernel_scheds " == *" bfq "* ]] && kernel_bfq=bfq
  for s in none mq-deadline $kernel_bfq; do run_kernel bfqi "$s"; done
  stop_export

  BFQ_RATIO=$(python3 - "$tmp" "$kernel_bfq" "$kernel_scheds" <<'PY'
import json, sys

tmp, kernel_bfq, kernel_scheds = sys.argv[1], sys.argv[2], sys.argv[3].split()

def jobs(path):
    return {j["jobname"]: j for j in json.load(open(path))["jobs"]}

def interactive(stack, sched):
    j = jobs(f"{tmp}/bfqi-{stack}-{sched}.json")
    rd, wr = j["reader"]["read"], j["writer"]["write"]
    lat = rd["lat_ns"]
    pct = lat.get("percentile") or rd["clat_ns"].get("percentile", {})
    return (f"| bfq-interactive | {stack} | {sched} | {pct.get('50.000000', 0) / 1e6:.1f} | "
            f"{pct.get('99.000000', 0) / 1e6:.1f} | {lat['max'] / 1e6:.1f} | "
            f"{wr['bw'] * 1024 / 1e6:.1f} |")

out = [interactive("blkstack", s) for s in ("none", "mq-deadline", "bfq")]
out += [interactive("kernel", s) for s in ("none", "mq-deadline")]
if kernel_bfq:
    out.append(interactive("kernel", "bfq"))
else:
    out.append("| bfq-interactive | kernel | bfq | n/a | n/a | n/a | n/a (this kernel has "
               f"no bfq; its schedulers: {', '.join(kernel_scheds)}) |")

j = jobs(f"{tmp}/bfqw-blkstack-bfq.json")
w100, w200 = (j[n]["read"]["bw"] * 1024 / 1e6 for n in ("w100", "w200"))
ratio = f"{w200 / w100:.2f}" if w100 else "n/a"
why = ("the kernel's bfq weighs cgroups (io.bfq.weight), not set up here" if kernel_bfq
       else "this kernel has no bfq")
out += ["", "| bfq-weights (rotational, sequential readers) | stack | weight 100 MB/s | "
        "weight 200 MB/s | ratio |", "|---|---|---:|---:|---:|",
        f"| bfq-weights | blkstack | {w100:.1f} | {w200:.1f} | {ratio} |",
        f"| bfq-weights | kernel | n/a | n/a | n/a ({why}) |"]
with open(f"{tmp}/bfq.table", "w") as f:
    f.write("\n".join(out) + "\n")
print(ratio)
PY
) || bench_fail "the bfq rows' results"
  cat "$tmp/bfq.table"
}
