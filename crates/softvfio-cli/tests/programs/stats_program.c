/* A known sequence of DMA map calls and region accesses, for
 * `softvfio run --stats`: 3 maps (4 KiB, 8 KiB twice) and 1 failed map,
 * 2 unmaps (8 KiB, and an empty range: 0 bytes), 1 failed unmap,
 * 2 config reads and 1 config write. */
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static int c;
static char *buf;

static int map(uint64_t iova, uint64_t size) {
  struct vfio_iommu_type1_dma_map m = {.argsz = sizeof m, .flags = 3, .vaddr = (uintptr_t)buf, .iova = iova, .size = size};
  return ioctl(c, VFIO_IOMMU_MAP_DMA, &m) ? -1 : 0;
}

static int unmap(uint64_t iova, uint64_t size) {
  struct vfio_iommu_type1_dma_unmap u = {.argsz = sizeof u, .iova = iova, .size = size};
  return ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u) ? -1 : 0;
}

int main(void) {
  c = open("/dev/vfio/vfio", O_RDWR);
  int g = open("/dev/vfio/3", O_RDWR);
  if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) || ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) return 1;
  int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:03.0");
  buf = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(buf, 1, 1 << 16);
  int bad = 0;
  bad |= map(0x100000, 0x1000);
  bad |= map(0x200000, 0x2000);
  bad |= map(0x300000, 0x2000);
  bad |= map(0x300000, 0x2000) == 0; /* EEXIST */
  bad |= unmap(0x200000, 0x2000);
  bad |= unmap(0x800000, 0x1000); /* nothing there: 0 bytes */
  bad |= unmap(0x800001, 0x1000) == 0; /* EINVAL */
  struct vfio_region_info ri = {.argsz = sizeof ri, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri)) return 1;
  uint32_t v;
  bad |= pread(dev, &v, 4, ri.offset) != 4;
  bad |= pread(dev, &v, 4, ri.offset + 4) != 4;
  bad |= pwrite(dev, &v, 4, ri.offset + 4) != 4;
  printf("bad %d\n", bad);
  return bad;
}
