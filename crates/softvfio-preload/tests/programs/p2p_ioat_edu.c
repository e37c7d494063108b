/* Peer-to-peer DMA through the IOMMU: edu (group 3) and the I/OAT engine
 * (group 4) in one type1 container; edu's mmap'd BAR0 and the I/OAT BAR0
 * mapped for DMA next to memory. The I/OAT engine copies between memory
 * and edu's registers, edu DMA-es to and from the I/OAT registers and into
 * its own BAR. Prints "name value" lines.
 * usage: p2p_ioat_edu (platform tests/platforms/ioat.toml) */
#include "vfio_common.h"

#define CH 0x80
#define MEM_IOVA 0x100000ul    /* 4 MiB of memory */
#define EDU_IOVA 0x4000000ul   /* edu's BAR0, 1 MiB */
#define IOAT_IOVA 0x8000000ul  /* the I/OAT BAR0, 16 KiB (below edu's 28-bit mask) */

static int ioat;
static uint64_t ioat_bar0, ioat_cfg;
static uint8_t *mem;
static volatile uint32_t *edu;

static uint64_t rd(uint64_t off, int n) {
  uint64_t v = 0;
  if (pread(ioat, &v, n, ioat_bar0 + off) != n) die("pread ioat bar0");
  return v;
}
static void wr(uint64_t off, int n, uint64_t v) {
  if (pwrite(ioat, &v, n, ioat_bar0 + off) != n) die("pwrite ioat bar0");
}

struct desc { uint32_t size, ctl; uint64_t src, dst, next, rsv[4]; };

static const char *status_name(uint64_t st) {
  switch (st & 7) { case 0: return "ACTIVE"; case 1: return "DONE"; case 2: return "SUSPENDED"; case 3: return "HALTED"; }
  return "?";
}

static void ioat_reset(void) {
  uint32_t e;
  if (pread(ioat, &e, 4, ioat_cfg + 0x180) != 4) die("pread config");
  if (pwrite(ioat, &e, 4, ioat_cfg + 0x180) != 4) die("pwrite config");
  wr(CH + 0x28, 4, rd(CH + 0x28, 4));
  wr(CH + 0x04, 1, 0x20);
  while (rd(CH + 0x04, 1) & 0x20) ;
}

/* One descriptor copying `size` bytes from `src` to `dst` (IOVAs). */
static const char *ioat_copy(uint64_t src, uint64_t dst, uint32_t size) {
  struct desc *d = (struct desc *)mem;
  *d = (struct desc){ .size = size, .src = src, .dst = dst, .next = MEM_IOVA };
  wr(CH + 0x10, 8, MEM_IOVA);
  wr(CH + 0x00, 2, 0x0001 | 0x0008);
  wr(CH + 0x06, 2, 1);
  uint64_t st;
  while (((st = rd(CH + 0x08, 8)) & 7) == 0) ;
  if ((st & 7) == 1) wr(CH + 0x04, 1, 0x04);
  if ((st & 7) == 3) {
    static char buf[64];
    snprintf(buf, sizeof buf, "HALTED chanerr=0x%llx", (unsigned long long)rd(CH + 0x28, 4));
    ioat_reset();
    return buf;
  }
  return status_name(st);
}

/* edu DMA of `cnt` bytes; to_ram: from its buffer (0x40000) to `iova`. */
static uint32_t edu_dma(uint64_t iova, uint32_t cnt, int to_ram) {
  edu[0x80 / 4] = to_ram ? 0x40000 : (uint32_t)iova;
  edu[0x88 / 4] = to_ram ? (uint32_t)iova : 0x40000;
  edu[0x90 / 4] = cnt;
  edu[0x98 / 4] = 1 | (to_ram ? 2 : 0);
  for (int i = 0; i < 100 && (edu[0x98 / 4] & 1); i++) usleep(1000);
  return edu[0x98 / 4];
}

static void hex(const char *name, const uint8_t *p, int n) {
  printf("%s", name);
  for (int i = 0; i < n; i++) printf("%s%02x", i ? "" : " ", p[i]);
  printf("\n");
}

int main(void) {
  int c = open("/dev/vfio/vfio", O_RDWR);
  int g3 = open("/dev/vfio/3", O_RDWR), g4 = open("/dev/vfio/4", O_RDWR);
  if (c < 0 || g3 < 0 || g4 < 0) die("open");
  if (ioctl(g3, VFIO_GROUP_SET_CONTAINER, &c)) die("set container 3");
  if (ioctl(g4, VFIO_GROUP_SET_CONTAINER, &c)) die("set container 4");
  if (ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("set iommu");
  int e = ioctl(g3, VFIO_GROUP_GET_DEVICE_FD, "0000:00:03.0");
  ioat = ioctl(g4, VFIO_GROUP_GET_DEVICE_FD, "0000:00:04.0");
  if (e < 0 || ioat < 0) die("device");
  struct vfio_region_info ri = { .argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX };
  if (ioctl(e, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("edu bar0");
  uint64_t edu_size = ri.size;
  uint16_t cmd = 6;
  pwrite(e, &cmd, 2, ((uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40) + 4);
  edu = mmap(NULL, edu_size, PROT_READ | PROT_WRITE, MAP_SHARED, e, ri.offset);
  if (edu == MAP_FAILED) die("mmap edu");
  if (ioctl(ioat, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("ioat bar0");
  ioat_bar0 = ri.offset;
  uint64_t ioat_size = ri.size;
  volatile uint8_t *ioat_map = mmap(NULL, ioat_size, PROT_READ | PROT_WRITE, MAP_SHARED, ioat, ri.offset);
  if (ioat_map == MAP_FAILED) die("mmap ioat");
  ri.index = VFIO_PCI_CONFIG_REGION_INDEX;
  if (ioctl(ioat, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("ioat config");
  ioat_cfg = ri.offset;
  cmd = 0x0002 | 0x0004 | 0x0400;
  if (pwrite(ioat, &cmd, 2, ioat_cfg + 4) != 2) die("ioat command");
  ioat_reset();

  mem = mmap(NULL, 4ul << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) die("mmap memory");
  printf("map_memory %d\n", map(c, MEM_IOVA, mem, 4ul << 20));
  printf("map_edu_bar %d\n", map(c, EDU_IOVA, (void *)edu, edu_size));
  printf("map_ioat_bar %d\n", map(c, IOAT_IOVA, (void *)ioat_map, ioat_size));
  uint8_t *src = mem + 0x1000, *dst = mem + 0x2000;
  const char *st;
  uint64_t src_iova = MEM_IOVA + 0x1000, dst_iova = MEM_IOVA + 0x2000;

  /* memory -> edu registers (I/OAT copies, 4 and 8 bytes). */
  *(uint32_t *)src = 0x12345678;
  st = ioat_copy(src_iova, EDU_IOVA + 0x04, 4);
  printf("to_liveness %s read=0x%08x\n", st, edu[1]);
  *(uint32_t *)src = 5;
  st = ioat_copy(src_iova, EDU_IOVA + 0x08, 4);
  while (edu[0x20 / 4] & 1) ;
  printf("to_factorial %s read=%u\n", st, edu[2]);
  *(uint64_t *)src = 0xabcdef00;
  st = ioat_copy(src_iova, EDU_IOVA + 0x80, 8);
  printf("to_dma_src %s read=0x%llx\n", st, (unsigned long long)*(volatile uint64_t *)&edu[0x80 / 4]);
  /* edu registers -> memory. */
  memset(dst, 0xee, 32);
  printf("from_ident %s", ioat_copy(EDU_IOVA, dst_iova, 4));
  hex(" bytes", dst, 4);
  memset(dst, 0xee, 32);
  printf("from_ident_8 %s", ioat_copy(EDU_IOVA, dst_iova, 8));
  hex(" bytes", dst, 8);
  edu[0x88 / 4] = 0x1234;
  memset(dst, 0xee, 32);
  printf("from_dma_regs %s", ioat_copy(EDU_IOVA + 0x80, dst_iova, 16));
  hex(" bytes", dst, 16);
  memset(dst, 0xee, 32);
  printf("from_liveness_misaligned %s", ioat_copy(EDU_IOVA + 0x02, dst_iova, 8));
  hex(" bytes", dst, 8);

  /* edu DMA from and to the I/OAT registers. */
  memset(dst, 0xee, 32);
  uint32_t s1 = edu_dma(IOAT_IOVA, 16, 0), s2 = edu_dma(dst_iova, 16, 1);
  printf("edu_reads_ioat cmd=%#x,%#x", s1, s2);
  hex(" bytes", dst, 16);
  *(uint16_t *)src = 0x0123;
  s1 = edu_dma(src_iova, 2, 0);
  s2 = edu_dma(IOAT_IOVA + 0x0c, 2, 1);
  printf("edu_writes_ioat cmd=%#x,%#x intrdelay=0x%llx\n", s1, s2, (unsigned long long)rd(0x0c, 2));

  /* edu into its own BAR: the write is posted and lands once edu is
   * free; the read could never complete (completer abort, a DMA fault). */
  *(uint32_t *)src = 0x00c0ffee;
  edu_dma(src_iova, 4, 0);
  s1 = edu_dma(EDU_IOVA + 0x04, 4, 1);
  printf("edu_writes_itself cmd=%#x liveness=0x%08x\n", s1, edu[1]);
  memset(dst, 0xee, 32);
  s1 = edu_dma(EDU_IOVA, 4, 0);
  s2 = edu_dma(dst_iova, 4, 1);
  printf("edu_reads_itself cmd=%#x,%#x", s1, s2);
  hex(" bytes", dst, 4);

  /* Linux keeps the IOMMU mapping of the BAR after munmap: DMA still
   * reaches the registers. */
  printf("munmap_edu %d\n", munmap((void *)edu, edu_size));
  *(uint32_t *)src = 0x11111111;
  st = ioat_copy(src_iova, EDU_IOVA + 0x04, 4);
  uint32_t live = 0;
  pread(e, &live, 4, 4);
  printf("after_munmap %s read=0x%08x\n", st, live);
  /* Memory decoding off: the peer does not decode (Unsupported Request),
   * the requester faults. */
  cmd = 4;
  pwrite(e, &cmd, 2, ((uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40) + 4);
  printf("decoding_off %s\n", ioat_copy(src_iova, EDU_IOVA + 0x04, 4));
  cmd = 6;
  pwrite(e, &cmd, 2, ((uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40) + 4);
  printf("decoding_on %s\n", ioat_copy(src_iova, EDU_IOVA + 0x04, 4));

  printf("unmap_edu_bar %d\n", unmap(c, EDU_IOVA, edu_size));
  printf("unmap_ioat_bar %d\n", unmap(c, IOAT_IOVA, ioat_size));
  printf("unmap_memory %d\n", unmap(c, MEM_IOVA, 4ul << 20));
  printf("done\n");
  return 0;
}
