/* The DMA part of the conformance probe (case_dma), for the edu device behind
 * the IOMMU and for mdev-edu: the same program, the same DMA results.
 * usage: dma_program /dev/vfio/<group> <device name> */
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static int container, group, devfd;
static uint64_t bar0_off;
static long PG;

#define OUT(name, ...) do { printf("%-32s ", name); printf(__VA_ARGS__); printf("\n"); fflush(stdout); } while (0)
#define RW (VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE)

static const char *ename(int e) {
  switch (e) {
  case 0: return "0";
  case EINVAL: return "EINVAL";
  case EBUSY: return "EBUSY";
  case EFAULT: return "EFAULT";
  case EPERM: return "EPERM";
  default: { static char b[16]; snprintf(b, sizeof b, "E%d", e); return b; }
  }
}

static int map(uint64_t iova, void *vaddr, uint64_t size, uint32_t flags) {
  struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = flags,
    .vaddr = (uint64_t)(uintptr_t)vaddr, .iova = iova, .size = size };
  return ioctl(container, VFIO_IOMMU_MAP_DMA, &m) ? errno : 0;
}

static int unmap(uint64_t iova, uint64_t size, uint32_t flags) {
  struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u, .flags = flags, .iova = iova, .size = size };
  return ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u) ? errno : 0;
}

static void *anon(size_t sz) {
  void *p = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) { perror("mmap"); exit(1); }
  return p;
}

static uint32_t rd32(unsigned off) { uint32_t v = ~0u; if (pread(devfd, &v, 4, bar0_off + off) != 4) return ~0u; return v; }
static void wr64(unsigned off, uint64_t v) { if (pwrite(devfd, &v, 8, bar0_off + off) != 8) perror("bar write"); }
static int edu_dma(uint64_t src, uint64_t dst, uint64_t cnt, int to_ram) {
  wr64(0x80, src); wr64(0x88, dst); wr64(0x90, cnt);
  wr64(0x98, 1 | (to_ram ? 2 : 0));
  for (int i = 0; i < 1000000; i++) { if (!(rd32(0x98) & 1)) return 0; usleep(10); }
  return -1;
}

static int dirty(uint32_t flags) {
  struct vfio_iommu_type1_dirty_bitmap d = { .argsz = sizeof d, .flags = flags };
  return ioctl(container, VFIO_IOMMU_DIRTY_PAGES, &d) ? errno : 0;
}

static int dirty_get(uint64_t iova, uint64_t size, uint64_t *bm) {
  char buf[sizeof(struct vfio_iommu_type1_dirty_bitmap) + sizeof(struct vfio_iommu_type1_dirty_bitmap_get)];
  struct vfio_iommu_type1_dirty_bitmap *d = (void *)buf;
  struct vfio_iommu_type1_dirty_bitmap_get *g = (void *)d->data;
  d->argsz = sizeof buf;
  d->flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
  g->iova = iova; g->size = size; g->bitmap.pgsize = PG; g->bitmap.size = 8;
  g->bitmap.data = (__u64 *)bm;
  return ioctl(container, VFIO_IOMMU_DIRTY_PAGES, d) ? errno : 0;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s /dev/vfio/<group> <device>\n", argv[0]); return 2; }
  PG = sysconf(_SC_PAGESIZE);
  container = open("/dev/vfio/vfio", O_RDWR);
  group = open(argv[1], O_RDWR);
  if (container < 0 || group < 0) { perror("open"); return 1; }
  struct vfio_group_status st = { .argsz = sizeof st };
  ioctl(group, VFIO_GROUP_GET_STATUS, &st);
  OUT("group_viable", "%d", !!(st.flags & VFIO_GROUP_FLAGS_VIABLE));
  OUT("set_container", "%s", ename(ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) ? errno : 0));
  OUT("set_iommu", "%s", ename(ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) ? errno : 0));
  int dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  if (dev < 0) { OUT("device", "%s", ename(errno)); return 1; }
  struct vfio_region_info ri = { .argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX };
  ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri);
  devfd = dev; bar0_off = ri.offset;
  OUT("edu_id", "%#x", rd32(0));
  struct vfio_region_info ci = { .argsz = sizeof ci, .index = VFIO_PCI_CONFIG_REGION_INDEX };
  ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ci);
  uint16_t cmd; pread(dev, &cmd, 2, ci.offset + 4); cmd |= 0x6; pwrite(dev, &cmd, 2, ci.offset + 4);
  char *src = anon(4 * PG), *dst = anon(4 * PG);
  for (int i = 0; i < 4 * PG; i++) src[i] = (char)(i * 7 + 3);
  memset(dst, 0, 4 * PG);
  map(0x1000000, src, 4 * PG, VFIO_DMA_MAP_FLAG_READ);
  map(0x2000000, dst, 4 * PG, RW);
  int r1 = edu_dma(0x1000000 + 100, 0x40000, 3000, 0);
  int r2 = edu_dma(0x40000, 0x2000000 + 200, 3000, 1);
  OUT("dma_roundtrip", "%d %d match=%d", r1, r2, !memcmp(src + 100, dst + 200, 3000));
  memset(src, 0x11, PG);
  memset(dst, 0x22, 64);
  edu_dma(0x2000000, 0x40000, 64, 0);
  edu_dma(0x40000, 0x1000000, 64, 1);
  OUT("dma_write_to_readonly_blocked", "%d", src[0] == 0x11);
  OUT("dma_unmap_pinned", "%s", ename(unmap(0x2000000, 4 * PG, 0)));
  memset(dst, 0x33, 64);
  memset(src, 0x44, 64);
  map(0x1000000 + 8 * PG, src, PG, VFIO_DMA_MAP_FLAG_READ);
  edu_dma(0x1000000 + 8 * PG, 0x40000, 64, 0);
  edu_dma(0x40000, 0x2000000, 64, 1);
  OUT("dma_after_unmap_blocked", "%d", dst[0] == 0x33);
  /* a transfer that runs off the end of a mapping: only the prefix lands */
  char *tail = anon(2 * PG);
  memset(tail, 0, 2 * PG);
  map(0x3000000, tail, PG, RW);
  memset(dst, 0, 64);
  edu_dma(0x40000, 0x3000000 + PG - 16, 64, 1);
  unsigned sum = 0;
  for (int i = 0; i < 2 * PG; i++) sum = sum * 31 + (unsigned char)tail[i];
  OUT("dma_prefix_only", "%08x", sum);
  OUT("dma_status", "%#x irq=%#x", rd32(0x20), rd32(0x24));
  /* expected to differ: live update is refused with mediated devices */
  OUT("vaddr_invalidate", "%s", ename(unmap(0x1000000, 4 * PG, VFIO_DMA_UNMAP_FLAG_VADDR)));
  /* expected to differ: a mediated device's bitmap holds what it pinned */
  unmap(0, 0, VFIO_DMA_UNMAP_FLAG_ALL);
  map(0x2000000, dst, 4 * PG, RW);
  dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_START);
  uint64_t bm = 0;
  dirty_get(0x2000000, 4 * PG, &bm);
  edu_dma(0x40000, 0x2000000 + PG, 64, 1);
  bm = 0;
  int r = dirty_get(0x2000000, 4 * PG, &bm);
  OUT("dirty_after_device_write", "%s bm=%#llx", ename(r), (unsigned long long)bm);
  dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP);
  close(dev);
  ioctl(group, VFIO_GROUP_UNSET_CONTAINER);
  close(group);
  close(container);
  printf("done\n");
  return 0;
}
