/* MAP_DMA of an mmap'd BAR (peer to peer): type1 maps and unmaps it, with
 * nothing pinned or charged; edu's DMA to that IOVA reaches its own
 * liveness register. A range that is the BAR's last page and a PROT_NONE
 * page after it: EFAULT (the memory part cannot be pinned).
 * usage: mmio_p2p /dev/vfio/<group> <bdf> */
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
  uint16_t cmd = 6;
  pwrite(d, &cmd, 2, ((uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40) + 4);
  /* The BAR, then a PROT_NONE page. */
  uint8_t *area = mmap(NULL, ri.size + PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (area == MAP_FAILED) die("reserve");
  volatile uint32_t *bar = mmap(area, ri.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, d, ri.offset);
  if (bar == MAP_FAILED) die("mmap");
  printf("map_full_bar %d\n", map(c, 0x2000000, (void *)bar, ri.size));
  printf("map_part_bar_part_none %d\n", map(c, 0x4000000, (void *)(bar + ri.size / 4 - PG / 4), 2 * PG));
  /* edu: 4 bytes from its buffer (zeros) to the BAR's liveness register
   * by DMA, which then reads ~0. */
  printf("liveness_before 0x%08x\n", bar[1]);
  bar[0x80 / 4] = 0x40000;
  bar[0x88 / 4] = 0x2000004;
  bar[0x90 / 4] = 4;
  bar[0x98 / 4] = 1 | 2;
  for (int i = 0; i < 100 && (bar[0x98 / 4] & 1); i++) usleep(1000);
  printf("dma_done cmd=%#x\n", bar[0x98 / 4]);
  printf("liveness_after 0x%08x\n", bar[1]);
  /* type1v2 does not split a mapping. */
  printf("unmap_part %d\n", unmap(c, 0x2000000, PG));
  printf("unmap_whole %d\n", unmap(c, 0x2000000, ri.size));
  printf("munmap %d\n", munmap(area, ri.size + PG));
  return 0;
}
