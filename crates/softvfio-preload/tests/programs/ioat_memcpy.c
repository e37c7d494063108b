/* Drives the I/OAT model through the VFIO uAPI with pread/pwrite, as the
 * VFIO selftests' ioat driver does through its mapped BAR: reset, MSI-X,
 * memcpy, a storm of the same descriptor, send_msi, and copies from and to
 * unmapped IOVAs. Prints "name value" lines.
 * usage: ioat_memcpy /dev/vfio/<group> <bdf> */
#include "vfio_common.h"
#include <sys/eventfd.h>

#define CH 0x80
static int dev;
static uint64_t bar0, cfg;

static uint64_t rd(uint64_t off, int n) {
  uint64_t v = 0;
  if (pread(dev, &v, n, bar0 + off) != n) die("pread bar0");
  return v;
}
static void wr(uint64_t off, int n, uint64_t v) {
  if (pwrite(dev, &v, n, bar0 + off) != n) die("pwrite bar0");
}
static uint32_t cfg_rd32(uint64_t off) {
  uint32_t v;
  if (pread(dev, &v, 4, cfg + off) != 4) die("pread config");
  return v;
}
static void cfg_wr(uint64_t off, const void *p, int n) {
  if (pwrite(dev, p, n, cfg + off) != n) die("pwrite config");
}

struct desc { uint32_t size, ctl; uint64_t src, dst, next, rsv[4]; };

static void reset(void) {
  uint32_t e = cfg_rd32(0x180);
  cfg_wr(0x180, &e, 4);
  wr(CH + 0x28, 4, rd(CH + 0x28, 4));
  wr(CH + 0x04, 1, 0x20);
  while (rd(CH + 0x04, 1) & 0x20) ;
}

static const char *status_name(uint64_t st) {
  switch (st & 7) { case 0: return "ACTIVE"; case 1: return "DONE"; case 2: return "SUSPENDED"; case 3: return "HALTED"; }
  return "?";
}

/* Returns the final status; suspends the channel when DONE. */
static uint64_t memcpy_run(struct desc *d, uint64_t d_iova, uint64_t src, uint64_t dst, uint32_t size, uint16_t count, int irq) {
  *d = (struct desc){ .size = size, .ctl = irq ? 1 : 0, .src = src, .dst = dst, .next = d_iova };
  wr(CH + 0x10, 8, d_iova);
  wr(CH + 0x00, 2, 0x0001 | 0x0008);
  wr(CH + 0x06, 2, count);
  uint64_t st;
  while (((st = rd(CH + 0x08, 8)) & 7) == 0) ;
  if ((st & 7) == 1) wr(CH + 0x04, 1, 0x04);
  return st;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s GROUP BDF\n", argv[0]); return 2; }
  int g, c = open_container(argv[1], &g);
  dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  if (dev < 0) die("GET_DEVICE_FD");
  struct vfio_region_info ri = { .argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX };
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("region info bar0");
  bar0 = ri.offset;
  printf("bar0_size 0x%llx\n", (unsigned long long)ri.size);
  ri.index = VFIO_PCI_CONFIG_REGION_INDEX;
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("region info config");
  cfg = ri.offset;
  printf("config_size 0x%llx\n", (unsigned long long)ri.size);
  struct vfio_irq_info ii = { .argsz = sizeof ii, .index = VFIO_PCI_MSIX_IRQ_INDEX };
  if (ioctl(dev, VFIO_DEVICE_GET_IRQ_INFO, &ii)) die("irq info");
  printf("msix_count %u\n", ii.count);
  printf("id 0x%08x\n", cfg_rd32(0));
  printf("version 0x%02llx\n", (unsigned long long)rd(0x08, 1));
  printf("xfercap %llu\n", (unsigned long long)rd(0x01, 1));

  uint16_t cmd = 0x0002 | 0x0004 | 0x0400;
  cfg_wr(4, &cmd, 2);
  reset();
  printf("after_reset %s\n", status_name(rd(CH + 0x08, 8)));
  wr(0x03, 1, 0x08);
  int efd = eventfd(0, EFD_NONBLOCK);
  char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
  struct vfio_irq_set *s = (void *)buf;
  *s = (struct vfio_irq_set){ .argsz = sizeof buf, .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
    .index = VFIO_PCI_MSIX_IRQ_INDEX, .start = 0, .count = 1 };
  memcpy(s->data, &efd, sizeof efd);
  printf("msix_enable %d\n", ioctl(dev, VFIO_DEVICE_SET_IRQS, s) ? errno : 0);
  printf("msix_cap_enabled %u\n", cfg_rd32(0x80) >> 31);

  size_t len = 4ul << 20;
  uint8_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) die("mmap");
  uint64_t iova = 0x100000;
  printf("map %d\n", map(c, iova, mem, len));
  struct desc *d = (struct desc *)mem;
  uint8_t *src = mem + (1 << 20), *dst = mem + (2 << 20);
  uint64_t src_iova = iova + (1 << 20), dst_iova = iova + (2 << 20);
  uint32_t size = 1u << rd(0x01, 1);
  memset(src, 'x', size);
  memset(dst, 'y', size);
  uint64_t st = memcpy_run(d, iova, src_iova, dst_iova, size, 1, 0);
  printf("memcpy %s match=%d\n", status_name(st), memcmp(src, dst, size) == 0);
  printf("completed_desc 0x%llx\n", (unsigned long long)(st & ~0x3full));
  uint64_t v;
  printf("msi_after_memcpy %d\n", read(efd, &v, 8) == 8 ? (int)v : -errno);
  st = memcpy_run(d, iova, src_iova, dst_iova, size, 1000, 0);
  printf("storm %s\n", status_name(st));
  st = memcpy_run(d, iova, src_iova, dst_iova + size, 8, 1, 1);
  printf("send_msi %s msi=%d\n", status_name(st), read(efd, &v, 8) == 8 ? (int)v : -errno);
  /* Unmapped IOVAs: the IOMMU faults, the channel halts with CHANERR. */
  st = memcpy_run(d, iova, 0x40000000, dst_iova, size, 1, 0);
  printf("from_unmapped %s chanerr=0x%llx chanerr_int=0x%x\n", status_name(st),
         (unsigned long long)rd(CH + 0x28, 4), cfg_rd32(0x180));
  reset();
  memset(dst, 'y', size);
  st = memcpy_run(d, iova, src_iova, 0x40000000, size, 1, 0);
  printf("to_unmapped %s chanerr=0x%llx\n", status_name(st), (unsigned long long)rd(CH + 0x28, 4));
  reset();
  st = memcpy_run(d, iova, src_iova, dst_iova, size + 1, 1, 0);
  printf("oversized %s chanerr=0x%llx\n", status_name(st), (unsigned long long)rd(CH + 0x28, 4));
  reset();
  printf("msi_after_errors %d\n", read(efd, &v, 8) == 8 ? (int)v : -errno);
  st = memcpy_run(d, iova, src_iova, dst_iova, size, 1, 0);
  printf("after_errors %s\n", status_name(st));
  printf("unmap %d\n", unmap(c, iova, len));
  close(dev);
  printf("done\n");
  return 0;
}
