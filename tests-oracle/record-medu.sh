#!/bin/bash
# Records medu_walk.c's random walks against Linux 6.1's type1 with the medu
# mediated device (../shared/conformance/mdev/medu.c), in both of medu's DMA
# modes: pin cache (default) and vfio_dma_rw (use_rw=1). Each walk runs twice
# (one after the other); it is recorded as medu-6.1-{pin,rw}-seedN.txt
# only when both runs print the same lines and the walk reached "done".
# usage: MEDU=path/to/medu.ko tests-oracle/record-medu.sh [SEED...]   (default seeds 1 2 3, 300 steps)
#   build medu.ko with ../shared/conformance/build-medu.sh (copy the folder somewhere writable first)
#   needs qemu-system-x86 busybox-static cpio, gcc with a static libc
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
conf=${CONFORMANCE:-$here/../../shared/conformance}
work=${ORACLE_WORK:-/tmp/oracle-medu}
steps=${STEPS:-300}
: "${MEDU:?set MEDU=path/to/medu.ko}"
seeds=("$@"); [ ${#seeds[@]} -gt 0 ] || seeds=(1 2 3)
mkdir -p "$work"
gcc -static -O1 -Wall -o "$work/medu_walk" "$here/medu_walk.c"
# The walk's lines only (the VM's markers, console CRs, escapes and kernel messages dropped).
walk_lines() {
  tr -d '\r' < "$1" | sed -n '/=== oracle start/,/=== oracle end/p' | grep -v '===' \
    | grep -E '^([0-9]{3} |walk |group-status |set-|extension |bar0 |edu |bus-master |done$)' | sed 's/[[:space:]]*$//' || true
}
status=0
for mode in pin rw; do
  params=""; [ $mode = rw ] && params=use_rw=1
  for seed in "${seeds[@]}"; do
    for i in 1 2; do
      # a VM that printed nothing at all (it happens under load: no "oracle
      # start" marker) is booted again; a walk that started is never retried
      for attempt in 1 2 3; do
        MEDU=$MEDU MEDU_PARAMS=$params ORACLE_WORK=$work bash "$conf/run-kernel.sh" "$work/medu_walk" @GROUP @BDF \
          "$seed" "$steps" > "$work/console-$mode-$seed-$i.txt" 2>&1 || true
        grep -q 'oracle start' "$work/console-$mode-$seed-$i.txt" && break
        echo "$mode seed $seed run $i: the VM printed nothing (attempt $attempt)" >&2
      done
      walk_lines "$work/console-$mode-$seed-$i.txt" > "$work/run-$mode-$seed-$i.txt"
    done
    out=$here/medu-6.1-$mode-seed$seed.txt
    if ! diff -u "$work/run-$mode-$seed-1.txt" "$work/run-$mode-$seed-2.txt"; then
      echo "$mode seed $seed: the two runs differ: not recorded" >&2; status=1
    elif [ "$(tail -1 "$work/run-$mode-$seed-1.txt")" != done ]; then
      echo "$mode seed $seed: the walk did not finish (see $work/console-$mode-$seed-1.txt)" >&2; status=1
    else
      cp "$work/run-$mode-$seed-1.txt" "$out"; echo "recorded $out ($(wc -l < "$out") lines)"
    fi
  done
done
exit $status
