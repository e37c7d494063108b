#!/bin/bash
# Rebuilds vfio_pci_probe.c, runs it twice against Linux 6.1 (the VM of
# ../shared/conformance/run-kernel.sh) and, when both runs print the same
# lines, records them as kernel-6.1-vfio-pci.txt. Otherwise prints the diff
# and leaves the recorded file alone.
# usage: tests-oracle/record.sh   (needs qemu-system-x86 busybox-static cpio, gcc)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
conf=${CONFORMANCE:-$here/../../shared/conformance}
work=${ORACLE_WORK:-/tmp/oracle-pci}
mkdir -p "$work"
gcc -static -O1 -Wall -o "$work/vfio_pci_probe" "$here/vfio_pci_probe.c"
# The probe's lines only: between the VM's start/end markers, "name value"
# lines and the final "done" (QEMU's and the kernel's messages are dropped;
# the serial console's CRs and the padding at line ends too).
probe_lines() {
  tr -d '\r' < "$1" | sed -n '/=== oracle start/,/=== oracle end/p' | grep -v '^===' \
    | grep -E '^[a-z0-9_]+ |^done$' | sed 's/[[:space:]]*$//' || true
}
for i in 1 2; do
  ORACLE_WORK=$work bash "$conf/run-kernel.sh" "$work/vfio_pci_probe" @GROUP @BDF > "$work/console-$i.txt" 2>&1
  probe_lines "$work/console-$i.txt" > "$work/run-$i.txt"
  echo "run $i: $(wc -l < "$work/run-$i.txt") lines"
done
if ! diff -u "$work/run-1.txt" "$work/run-2.txt"; then
  echo "the two runs differ: not recorded" >&2
  exit 1
fi
if [ "$(tail -1 "$work/run-1.txt")" != done ]; then
  echo "the probe did not finish (see $work/console-1.txt): not recorded" >&2
  exit 1
fi
cp "$work/run-1.txt" "$here/kernel-6.1-vfio-pci.txt"
echo "recorded $here/kernel-6.1-vfio-pci.txt"
