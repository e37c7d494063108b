#!/bin/bash
# Builds the busybox initramfs of the QEMU passthrough test (guest side).
# usage: build-initramfs.sh KROOT OUT.gz TYPE1_PROBE GUEST_IRQ
#   KROOT: the extracted linux-image-6.1.0-47-amd64-unsigned package (its vfio
#   modules are loaded in the guest); TYPE1_PROBE, GUEST_IRQ: static programs
#   (../shared/conformance/type1_probe.c, tests/qemu/guest_irq.c).
# The guest init prints, between "=== " markers:
#   - every PCI device as "pci BDF VENDOR:DEVICE group=N" (N = none without an IOMMU);
#   - with an IOMMU: binds the guest's vfio-pci to 1234:11e8 and runs the probe
#     (lines between "=== probe start" and "=== probe end rc=R") and guest_irq
#     (between "=== irq start" and "=== irq end rc=R").
# The kernel command line's "sv_irqn=N" sets the number of interrupts raised.
set -euo pipefail
kroot=$1 out=$2 probe=$3 irq=$4
kver=6.1.0-47-amd64
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir"/{bin,proc,sys,dev,tmp,mod,huge}
cp /bin/busybox "$dir/bin/busybox"
for m in virt/lib/irqbypass drivers/vfio/vfio drivers/vfio/vfio_virqfd drivers/vfio/vfio_iommu_type1 \
         drivers/vfio/pci/vfio-pci-core drivers/vfio/pci/vfio-pci; do
  cp "$kroot/lib/modules/$kver/kernel/$m.ko" "$dir/mod/"
done
cp "$probe" "$dir/bin/type1_probe"
cp "$irq" "$dir/bin/guest_irq"
cat > "$dir/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
n=8
for a in $(cat /proc/cmdline); do case $a in sv_irqn=*) n=${a#sv_irqn=};; esac; done
echo "=== devices start"
for d in /sys/bus/pci/devices/*; do
  g=none; [ -e $d/iommu_group ] && g=$(basename "$(readlink $d/iommu_group)")
  echo "pci $(basename $d) $(sed s/^0x// $d/vendor):$(sed s/^0x// $d/device) group=$g"
done
echo "=== devices end"
bdf=$(grep -l 0x11e8 /sys/bus/pci/devices/*/device | head -1 | xargs dirname | xargs basename)
if [ -n "$bdf" ] && [ -e /sys/bus/pci/devices/$bdf/iommu_group ]; then
  mount -t hugetlbfs none /huge; echo 16 > /proc/sys/vm/nr_hugepages
  for m in irqbypass vfio vfio_virqfd vfio_iommu_type1 vfio-pci-core vfio-pci; do insmod /mod/$m.ko; done
  echo 1234 11e8 > /sys/bus/pci/drivers/vfio-pci/new_id
  grp=$(basename "$(readlink /sys/bus/pci/devices/$bdf/iommu_group)")
  echo "=== probe start group=$grp bdf=$bdf"
  /bin/type1_probe /dev/vfio/$grp $bdf /huge
  echo "=== probe end rc=$?"
  echo "=== irq start"
  /bin/guest_irq /dev/vfio/$grp $bdf $n
  echo "=== irq end rc=$?"
fi
echo "=== guest done"
poweroff -f
INIT
chmod +x "$dir/init"
(cd "$dir" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$out"
