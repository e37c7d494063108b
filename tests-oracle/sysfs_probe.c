// Prints the sysfs view Linux gives of a device bound to vfio-pci (or of an
// mdev): run with ../shared/conformance/run-kernel.sh sysfs_probe @GROUP @BDF.
// The recorded output is tests-oracle/kernel-6.1-sysfs.txt.
#include <unistd.h>
static const char script[] =
  "g=${1##*/}; b=$2\n"
  "sec() { echo \"--- $*\"; }\n"
  "lsd() { sec \"ls $1\"; ls -la \"$1\" | while read -r p n u g z m1 m2 m3 rest; do [ \"$p\" = total ] || echo \"$p $rest\"; done; }\n"
  "catf() { for f in \"$@\"; do sec \"cat $f\"; cat \"$f\"; echo \"[rc=$?]\"; done; }\n"
  "if [ -d /sys/bus/pci/devices/$b ]; then d=/sys/bus/pci/devices/$b; else d=/sys/bus/mdev/devices/$b; fi\n"
  "sec \"realpath $d\"; readlink -f $d\n"
  "lsd $d/\n"
  "for l in driver iommu_group iommu subsystem firmware_node mdev_type; do sec \"readlink $l\"; readlink $d/$l; done\n"
  "for f in $(ls $d); do [ -f $d/$f ] && [ -r $d/$f ] && [ $f != config ] && [ $f != remove ] && [ $f != rescan ] && [ $f != reset ] && catf $d/$f; done\n"
  "sec \"stat config\"; stat -c '%s %a' $d/config 2>&1\n"
  "sec \"od config\"; od -An -tx1 -v $d/config 2>&1\n"
  "for s in vfio-dev vfio-dev/* power msi_irqs; do [ -d $d/$s ] && lsd $d/$s/; done\n"
  "for f in $d/vfio-dev/*/*; do [ -f $f ] && catf $f; done\n"
  "lsd /sys/bus/pci/devices/\n"
  "sec \"realpath parent\"; readlink -f $d/..; lsd $(readlink -f $d/..)/\n"
  "lsd /sys/kernel/iommu_groups/\n"
  "lsd /sys/kernel/iommu_groups/$g/\n"
  "lsd /sys/kernel/iommu_groups/$g/devices/\n"
  "catf /sys/kernel/iommu_groups/$g/type /sys/kernel/iommu_groups/$g/reserved_regions; [ -f /sys/kernel/iommu_groups/$g/name ] && catf /sys/kernel/iommu_groups/$g/name\n"
  "for x in /sys/kernel/iommu_groups/*; do sec \"resv $x\"; cat $x/reserved_regions; cat $x/type; done\n"
  "lsd /sys/bus/pci/drivers/vfio-pci/\n"
  "for m in vfio vfio_pci vfio_pci_core vfio_iommu_type1 mdev; do [ -d /sys/module/$m ] && lsd /sys/module/$m/; [ -d /sys/module/$m/parameters ] && lsd /sys/module/$m/parameters/ && catf /sys/module/$m/parameters/*; [ -d /sys/module/$m/drivers ] && lsd /sys/module/$m/drivers/; done\n"
  "catf /sys/module/vfio/refcnt /sys/module/vfio/initstate /sys/module/vfio/taint /sys/module/vfio/coresize\n"
  "lsd /sys/class/iommu/\n"
  "sec \"realpath dmar0\"; readlink -f /sys/class/iommu/dmar0\n"
  "lsd /sys/class/iommu/dmar0/\n"
  "lsd /sys/class/iommu/dmar0/intel-iommu/\n"
  "catf /sys/class/iommu/dmar0/intel-iommu/*\n"
  "lsd /sys/class/iommu/dmar0/devices/\n"
  "lsd /sys/class/vfio/ ; lsd /sys/class/vfio-dev/; lsd /sys/devices/virtual/vfio/\n"
  "lsd /dev/vfio/\n"
  "if [ -d /sys/bus/mdev ]; then lsd /sys/bus/mdev/; lsd /sys/bus/mdev/devices/; lsd /sys/class/mdev_bus/;\n"
  "  for p in /sys/class/mdev_bus/*; do sec \"realpath $p\"; readlink -f $p; lsd $p/; lsd $p/mdev_supported_types/;\n"
  "    for t in $p/mdev_supported_types/*; do lsd $t/; catf $t/name $t/device_api $t/available_instances; [ -f $t/description ] && catf $t/description; lsd $t/devices/; done; done; fi\n"
  "lsd /sys/bus/\n";
int main(int argc, char **argv) {
  execl("/bin/sh", "sh", "-c", script, "sh", argc > 1 ? argv[1] : "", argc > 2 ? argv[2] : "", (char *)0);
  return 127;
}
