#!/bin/bash
# Rebuilds mmio_traffic.c, mmio_bad.c and mmio_split.c (or the programs
# named), runs each twice against Linux 6.1 (the VM of
# ../shared/conformance/run-kernel.sh, QEMU TCG, edu's BAR0 mmap-able) and,
# when both runs print the same lines, records them as
# kernel-6.1-mmio-{traffic,bad,split}.txt.
# usage: tests-oracle/record-mmio.sh [mmio_NAME...]   (needs qemu-system-x86 busybox-static cpio, gcc)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
conf=${CONFORMANCE:-$here/../../shared/conformance}
work=${ORACLE_WORK:-/tmp/oracle-mmio}
mkdir -p "$work"
probe_lines() {
  tr -d '\r' < "$1" | sed -n '/=== oracle start/,/=== oracle end/p' | grep -v '^===' \
    | grep -E '^[a-z0-9_]+ |^done$' | sed 's/[[:space:]]*$//' || true
}
progs=("$@")
[ ${#progs[@]} -gt 0 ] || progs=(mmio_traffic mmio_bad mmio_split)
for prog in "${progs[@]}"; do
  gcc -static -O1 -Wall -o "$work/$prog" "$here/$prog.c"
  for i in 1 2; do
    ORACLE_WORK=$work bash "$conf/run-kernel.sh" "$work/$prog" @GROUP @BDF > "$work/$prog-console-$i.txt" 2>&1
    probe_lines "$work/$prog-console-$i.txt" > "$work/$prog-run-$i.txt"
    echo "$prog run $i: $(wc -l < "$work/$prog-run-$i.txt") lines"
  done
  if ! diff -u "$work/$prog-run-1.txt" "$work/$prog-run-2.txt"; then
    echo "$prog: the two runs differ: not recorded" >&2
    exit 1
  fi
  if [ "$(tail -1 "$work/$prog-run-1.txt")" != done ]; then
    echo "$prog did not finish (see $work/$prog-console-1.txt): not recorded" >&2
    exit 1
  fi
  out=$here/kernel-6.1-mmio-${prog#mmio_}.txt
  cp "$work/$prog-run-1.txt" "$out"
  echo "recorded $out"
done
