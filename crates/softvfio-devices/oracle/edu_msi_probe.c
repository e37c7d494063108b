#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <linux/vfio.h>

static int dev, container, group;
static uint64_t off[9];
#define CFG off[7]
#define BAR off[0]
static void rd(const char *what, uint64_t base, uint64_t o, int n) {
  unsigned char b[16]; memset(b, 0xaa, 16);
  ssize_t r = pread(dev, b, n, base + o);
  printf("%-28s off=%#llx n=%d r=%zd val=", what, (unsigned long long)o, n, r);
  for (int i = n - 1; i >= 0; i--) printf("%02x", b[i]);
  printf("\n"); fflush(stdout);
}
static int wr(uint64_t base, uint64_t o, uint64_t v, int n) { ssize_t r = pwrite(dev, &v, n, base + o); if (r < 0) return -errno; return r; }
static uint32_t r32(uint64_t o) { uint32_t v = 0xdeadbeef; pread(dev, &v, 4, BAR + o); return v; }
static void evt(const char *what, int fd) { uint64_t c = 0; ssize_t r = read(fd, &c, 8); printf("%-28s %s count=%llu\n", what, r < 0 ? strerror(errno) : "ok", (unsigned long long)c); }
static int map(uint64_t iova, void *va, uint64_t size, uint32_t flags) {
  struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = flags, .vaddr = (uintptr_t)va, .iova = iova, .size = size };
  return ioctl(container, VFIO_IOMMU_MAP_DMA, &m) ? -errno : 0;
}
static int edu_dma(uint64_t src, uint64_t dst, uint64_t cnt, uint64_t cmd) {
  wr(BAR, 0x80, src, 8); wr(BAR, 0x88, dst, 8); wr(BAR, 0x90, cnt, 8); wr(BAR, 0x98, cmd, 8);
  for (int i = 0; i < 100000; i++) { if (!(r32(0x98) & 1)) return i; usleep(100); }
  return -1;
}
int main(int argc, char **argv) {
  container = open("/dev/vfio/vfio", O_RDWR);
  group = open(argv[1], O_RDWR);
  ioctl(group, VFIO_GROUP_SET_CONTAINER, &container);
  ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
  dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  for (unsigned i = 0; i < 9; i++) { struct vfio_region_info ri = { .argsz = sizeof ri, .index = i }; ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri); off[i] = ri.offset; }
  rd("c4c", CFG, 0x4c, 4);
  wr(CFG, 0x4e, 0xabcd, 2); rd("c4c_after_4e_w", CFG, 0x4c, 4);
  wr(CFG, 0x4c, 0x11223344, 4); rd("c4c_after_4c_w", CFG, 0x4c, 4);
  wr(CFG, 0x4c, 0, 4); rd("c4c_after_0", CFG, 0x4c, 4);
  rd("c4e_2", CFG, 0x4e, 2);
  wr(CFG, 0x41, 0x77, 1); rd("c40_next_w", CFG, 0x40, 4);
  wr(CFG, 0x43, 0x77, 1); rd("c40_hi_w", CFG, 0x40, 4);
  wr(CFG, 0x42, 0x0e, 1); rd("c40_mmc_w", CFG, 0x40, 4);
  wr(CFG, 0x42, 0x80, 1);
  wr(CFG, 0x0d, 0xff, 1); rd("c0c_lat", CFG, 0x0c, 4);
  wr(CFG, 0x0f, 0xff, 1); rd("c0c_bist", CFG, 0x0c, 4);
  wr(CFG, 0x3e, 0xffff, 2); rd("c3c_mingnt", CFG, 0x3c, 4);
  wr(CFG, 0x28, 0xffffffff, 4); rd("c28", CFG, 0x28, 4);
  wr(CFG, 0x38, 0xffffffff, 4); rd("c38", CFG, 0x38, 4);
  wr(CFG, 0x35, 0xff, 1); rd("c34", CFG, 0x34, 4);
  wr(CFG, 0x11, 0xff, 1); rd("c10_byte", CFG, 0x10, 4);
  wr(CFG, 0x10, 0xfea00000, 4);
  // MSI with bus master
  int mfd = eventfd(0, EFD_NONBLOCK);
  char buf[sizeof(struct vfio_irq_set) + 4];
  struct vfio_irq_set *is = (void *)buf;
  is->argsz = sizeof buf; is->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER; is->index = 1; is->start = 0; is->count = 1; memcpy(is->data, &mfd, 4);
  printf("msi_set r=%d\n", ioctl(dev, VFIO_DEVICE_SET_IRQS, is));
  rd("msi_flags_after_set", CFG, 0x40, 4);
  wr(CFG, 4, 0x0107, 2);
  wr(BAR, 0x60, 0x2, 4); usleep(20000); evt("msi_bme_noenable", mfd);
  wr(BAR, 0x60, 0x4, 4); usleep(20000); evt("msi_bme_again", mfd);
  wr(BAR, 0x64, 0xff, 4);
  wr(CFG, 0x42, 0x81, 1); rd("msi_flags_en", CFG, 0x40, 4);
  wr(BAR, 0x60, 0x2, 4); usleep(20000); evt("msi_bme_en", mfd);
  wr(BAR, 0x64, 0xff, 4);
  wr(CFG, 0x41, 0x00, 1); rd("msi_flags_after_41w", CFG, 0x40, 4);
  wr(BAR, 0x60, 0x2, 4); usleep(20000); evt("msi_after_41w", mfd);
  wr(BAR, 0x64, 0xff, 4);
  wr(CFG, 4, 0x0103, 2);
  wr(BAR, 0x60, 0x2, 4); usleep(20000); evt("msi_nobme", mfd);
  wr(BAR, 0x64, 0xff, 4);
  wr(CFG, 0x42, 0x80, 1); rd("msi_flags_dis", CFG, 0x40, 4);
  wr(CFG, 4, 0x0107, 2);
  wr(BAR, 0x60, 0x2, 4); usleep(20000); evt("msi_cfg_disabled", mfd);
  wr(BAR, 0x64, 0xff, 4);
  is->flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER; is->count = 0; is->argsz = sizeof(struct vfio_irq_set);
  printf("msi_off r=%d\n", ioctl(dev, VFIO_DEVICE_SET_IRQS, is));
  rd("msi_flags_off", CFG, 0x40, 4); rd("msi_addr_off", CFG, 0x44, 8); rd("msi_data_off", CFG, 0x4c, 4);
  // DMA
  long PG = 4096;
  unsigned char *a = mmap(0, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  unsigned char *b = mmap(0, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(a, 0x5a, 4 * PG); memset(b, 0, 4 * PG);
  printf("map a %d b %d\n", map(0x1000000, a, 4 * PG, 3), map(0x2000000, b, 4 * PG, 3));
  printf("dma_in %d\n", edu_dma(0x1000000, 0x40000, 4096, 1));
  rd("cmd_after_in", BAR, 0x98, 8);
  printf("dma_out %d\n", edu_dma(0x40000, 0x2000000, 4096, 3)); rd("cmd_after_out", BAR, 0x98, 8);
  printf("b0=%02x b4095=%02x\n", b[0], b[4095]);
  // bus master off: RAM->EDU then check buffer
  memset(a, 0x11, 4 * PG);
  wr(CFG, 4, 0x0103, 2);
  printf("dma_in_nobme %d\n", edu_dma(0x1000000, 0x40000, 64, 1));
  memset(b, 0x99, 4 * PG);
  printf("dma_out_nobme %d\n", edu_dma(0x40000, 0x2000000, 64, 3));
  printf("b0_after_out_nobme=%02x\n", b[0]);
  wr(CFG, 4, 0x0107, 2);
  printf("dma_out_bme %d\n", edu_dma(0x40000, 0x2000000, 64, 3));
  printf("buf_after_nobme_read=%02x %02x\n", b[0], b[63]);
  // IOMMU fault on read: unmapped source
  printf("dma_in %d\n", edu_dma(0x1000000, 0x40000, 64, 1));
  printf("dma_in_fault %d\n", edu_dma(0x5000000, 0x40000, 64, 1));
  memset(b, 0x99, 4 * PG);
  printf("dma_out %d\n", edu_dma(0x40000, 0x2000000, 64, 3));
  printf("buf_after_fault_read=%02x %02x\n", b[0], b[63]);
  // partial fault: read crossing the end of mapping a (4 pages at 0x1000000)
  memset(a, 0x22, 4 * PG);
  printf("dma_in_partial %d\n", edu_dma(0x1000000 + 4 * PG - 32, 0x40000, 64, 1));
  memset(b, 0x99, 4 * PG);
  printf("dma_out %d\n", edu_dma(0x40000, 0x2000000, 64, 3));
  printf("buf_after_partial=%02x %02x %02x %02x\n", b[0], b[31], b[32], b[63]);
  // clamp
  memset(a, 0x33, 4 * PG);
  printf("dma_in_clamp %d\n", edu_dma(0x31000000, 0x40000, 64, 1));
  memset(b, 0x99, 4 * PG);
  printf("dma_out %d\n", edu_dma(0x40000, 0x2000000, 64, 3));
  printf("buf_after_clamp=%02x\n", b[0]);
  // irq on completion + count 0
  rd("irq_before", BAR, 0x24, 4);
  printf("dma_irq %d\n", edu_dma(0x1000000, 0x40000, 0, 5));
  rd("irq_after", BAR, 0x24, 4); rd("cmd_after_irq", BAR, 0x98, 4);
  wr(BAR, 0x64, 0xffffffff, 4);
  // cmd write without start
  wr(BAR, 0x98, 0x6, 4); rd("cmd_nostart", BAR, 0x98, 4);
  printf("done\n");
  return 0;
}
