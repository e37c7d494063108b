#!/bin/bash
# The QEMU measurements of docs/PERFORMANCE.md, in one run (same machine,
# same load): guest boot time with and without the passed-through device,
# QEMU's MAP_DMA/UNMAP_DMA calls with and without a vIOMMU, and the cost of
# a guest BAR read and of an interrupt through softvfio (trace, preload)
# against QEMU's own edu model.
# usage: measure.sh SOFTVFIO KROOT INITRD [IRQ_N]
#   INITRD from build-initramfs.sh.
set -uo pipefail
sv=$1 kroot=$2 initrd=$3 n=${4:-200}
kernel=$kroot/boot/vmlinuz-6.1.0-47-amd64
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
qemu=(qemu-system-x86_64 -accel tcg -cpu max -M q35,kernel-irqchip=split -m 1G -smp 1 -net none
      -nographic -no-reboot -kernel "$kernel" -initrd "$initrd"
      -append "console=ttyS0 intel_iommu=on quiet panic=-1 no_timer_check sv_irqn=$n")
# run NAME PREFIX... :: QEMU-ARGS...: wall time of a boot to power-off.
run() {
  local name=$1; shift
  local pre=()
  while [ "$1" != "::" ]; do pre+=("$1"); shift; done
  shift
  local t0=$(date +%s.%N)
  "${pre[@]}" "${qemu[@]}" "$@" > "$out/$name.log" 2> "$out/$name.err"
  local t1=$(date +%s.%N)
  printf '%-28s %6.1f s' "$name" "$(echo "$t1 - $t0" | bc)"
  tr -d '\r' < "$out/$name.log" | grep -E '^time_' | tr '\n' ' '
  grep -E '^(MAP_DMA|UNMAP_DMA|region)' "$out/$name.err" | sed 's/; by size:.*//' | tr '\n' ' '
  echo
}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
echo "# boot without vIOMMU (lists the PCI devices, powers off)"
run boot-no-device ::
run boot-qemu-edu :: -device edu
run boot-trace "$sv" run --mode trace --stats -- :: -device vfio-pci,host=0000:00:03.0
run boot-preload "$sv" run --mode preload -- :: -device vfio-pci,host=0000:00:03.0
echo "# with vIOMMU: guest vfio-pci, type1_probe, guest_irq (N=$n)"
vi=(-device intel-iommu,intremap=on,caching-mode=on)
run viommu-qemu-edu :: "${vi[@]}" -device edu
run viommu-trace "$sv" run --mode trace --stats -- :: "${vi[@]}" -device vfio-pci,host=0000:00:03.0
run viommu-preload "$sv" run --mode preload -- :: "${vi[@]}" -device vfio-pci,host=0000:00:03.0
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# MAP_DMA/UNMAP_DMA sizes (trace --stats)"
for f in boot-trace viommu-trace; do
  echo "$f:"; grep -E '^(MAP_DMA|UNMAP_DMA)' "$out/$f.err" | sed 's/^/  /' | cut -c1-600
done
