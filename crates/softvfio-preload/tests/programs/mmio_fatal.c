/* An instruction the MMIO emulator does not perform (setne to a BAR
 * mapping): softvfio must stop the program with a report naming the
 * instruction, the address and the BAR offset, never let it continue.
 * usage: mmio_fatal /dev/vfio/<group> <bdf> */
#include "vfio_common.h"

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  int c = open("/dev/vfio/vfio", O_RDWR), g = open(argv[1], O_RDWR);
  if (c < 0 || g < 0) die("open");
  if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c)) die("set container");
  if (ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("set iommu");
  int d = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  if (d < 0) die("device");
  struct vfio_region_info ri = { .argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX };
  if (ioctl(d, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("region info");
  volatile uint8_t *bar = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, d, ri.offset);
  if (bar == MAP_FAILED) die("mmap");
  printf("mapped %d\n", *(volatile uint32_t *)bar == 0x10000ed);
  fflush(stdout);
  __asm__ volatile("cmp %%eax, %%eax\n\tsetne 0x10(%0)" : : "r"(bar) : "memory", "cc");
  printf("continued\n");
  return 0;
}
