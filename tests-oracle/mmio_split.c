/* MAP_DMA of a range that is half BAR mapping, half memory (issue 14):
 * edu's BAR0 mmap'd with MAP_FIXED next to anonymous memory, in both
 * orders; the locked-memory accounting (VmLck) after each MAP_DMA and
 * UNMAP_DMA; edu DMA into both parts (the memory part, and its own
 * liveness register through the BAR part: peer to peer).
 * Prints "name value" lines, then "done".
 * usage: mmio_split /dev/vfio/<group> <bdf> */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/vfio.h>

#define PG 4096ul
#define BAR_SIZE (1ul << 20)

static int dev;

static void die(const char *what) {
  printf("fatal %s %s\n", what, strerror(errno));
  exit(1);
}

static long vmlck_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  if (!f) return -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmLck: %ld kB", &kb) == 1) break;
  fclose(f);
  return kb;
}

static const char *err_name(int e) {
  switch (e) {
  case 0: return "0";
  case EFAULT: return "EFAULT";
  case EINVAL: return "EINVAL";
  case EEXIST: return "EEXIST";
  case ENOENT: return "ENOENT";
  case ENOMEM: return "ENOMEM";
  case EPERM: return "EPERM";
  }
  return "other";
}

static int map(int c, uint64_t iova, void *vaddr, uint64_t size) {
  struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m,
    .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
    .vaddr = (uint64_t)(uintptr_t)vaddr, .iova = iova, .size = size };
  return ioctl(c, VFIO_IOMMU_MAP_DMA, &m) ? errno : 0;
}

/* Returns the errno, or 0 with the bytes unmapped in *size. */
static int unmap(int c, uint64_t iova, uint64_t *size) {
  struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u, .iova = iova, .size = *size };
  int r = ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u) ? errno : 0;
  *size = u.size;
  return r;
}

static uint32_t rd32(uint64_t off) {
  uint32_t v = 0;
  if (pread(dev, &v, 4, off) != 4) die("pread");
  return v;
}
static void wr32(uint64_t off, uint32_t v) {
  if (pwrite(dev, &v, 4, off) != 4) die("pwrite");
}

/* edu DMA of cnt bytes between its buffer (0x40000) and iova; returns the
 * command register after completion (bit 0 clear when done). */
static uint32_t edu_dma(uint64_t iova, uint32_t cnt, int to_ram) {
  wr32(0x80, to_ram ? 0x40000 : (uint32_t)iova);
  wr32(0x88, to_ram ? (uint32_t)iova : 0x40000);
  wr32(0x90, cnt);
  wr32(0x98, 1 | (to_ram ? 2 : 0));
  uint32_t cmd;
  for (int i = 0; i < 2000 && ((cmd = rd32(0x98)) & 1); i++) usleep(1000);
  return cmd;
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  setvbuf(stdout, NULL, _IOLBF, 0);
  int c = open("/dev/vfio/vfio", O_RDWR), g = open(argv[1], O_RDWR);
  if (c < 0 || g < 0) die("open");
  if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c)) die("set_container");
  if (ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("set_iommu");
  dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  if (dev < 0) die("device");
  struct vfio_region_info ri = { .argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX };
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("region_info");
  uint16_t cmd = 6;
  if (pwrite(dev, &cmd, 2, ((uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40) + 4) != 2) die("command");
  long base = vmlck_kb();
  printf("vmlck_start %ld\n", base - base);

  /* Layout 1: memory (2 pages) then the BAR (1 MiB) then memory (2 pages). */
  size_t span = 2 * PG + BAR_SIZE + 2 * PG;
  uint8_t *a = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (a == MAP_FAILED) die("reserve");
  uint8_t *mem1 = mmap(a, 2 * PG, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint8_t *bar = mmap(a + 2 * PG, BAR_SIZE, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_SHARED, dev, ri.offset);
  uint8_t *mem2 = mmap(a + 2 * PG + BAR_SIZE, 2 * PG, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  printf("layout %d %d %d\n", mem1 == a, bar == a + 2 * PG, mem2 == a + 2 * PG + BAR_SIZE);
  memset(mem1, 0x11, 2 * PG);
  memset(mem2, 0x22, 2 * PG);

  /* Memory then BAR: 2 memory pages + the BAR's first page. */
  printf("map_memory_then_bar %s\n", err_name(map(c, 0x200000, mem1, 3 * PG)));
  printf("vmlck_memory_then_bar %ld\n", vmlck_kb() - base);
  /* edu reads and writes the memory part... */
  *(uint32_t *)(mem1 + 0x1000) = 0xcafef00d;
  printf("dma_from_memory_part cmd=%#x\n", edu_dma(0x201000, 4, 0));
  printf("dma_to_memory_part cmd=%#x\n", edu_dma(0x200010, 4, 1));
  printf("memory_part_bytes 0x%08x\n", *(uint32_t *)(mem1 + 0x10));
  /* ...and into its own liveness register through the BAR part. */
  printf("dma_to_bar_part cmd=%#x\n", edu_dma(0x202004, 4, 1));
  printf("liveness_after 0x%08x\n", rd32(0x04));
  /* edu reads its identification register through the BAR part. */
  *(uint32_t *)(mem1 + 0x20) = 0xeeeeeeee;
  printf("dma_from_bar_part cmd=%#x\n", edu_dma(0x202000, 4, 0));
  printf("dma_to_memory_part_2 cmd=%#x\n", edu_dma(0x200020, 4, 1));
  printf("bar_part_read 0x%08x\n", *(uint32_t *)(mem1 + 0x20));
  uint64_t size = 3 * PG;
  int r = unmap(c, 0x200000, &size);
  printf("unmap_memory_then_bar %s 0x%llx\n", err_name(r), (unsigned long long)size);
  printf("vmlck_after_unmap_1 %ld\n", vmlck_kb() - base);

  /* BAR then memory: the BAR's last page + 2 memory pages. */
  printf("map_bar_then_memory %s\n", err_name(map(c, 0x300000, bar + BAR_SIZE - PG, 3 * PG)));
  printf("vmlck_bar_then_memory %ld\n", vmlck_kb() - base);
  printf("dma_from_memory_part_b cmd=%#x\n", edu_dma(0x301000, 4, 0));
  printf("dma_to_memory_part_b cmd=%#x\n", edu_dma(0x301008, 4, 1));
  printf("memory_part_b_bytes 0x%08x\n", *(uint32_t *)(mem2 + 0x8));
  /* The whole span: memory, BAR, memory. */
  printf("map_whole_span %s\n", err_name(map(c, 0x400000, mem1, span)));
  printf("vmlck_whole_span %ld\n", vmlck_kb() - base);
  size = span;
  r = unmap(c, 0x400000, &size);
  printf("unmap_whole_span %s 0x%llx\n", err_name(r), (unsigned long long)size);
  size = 3 * PG;
  r = unmap(c, 0x300000, &size);
  printf("unmap_bar_then_memory %s 0x%llx\n", err_name(r), (unsigned long long)size);
  printf("vmlck_end %ld\n", vmlck_kb() - base);
  /* A read-only BAR mapping mapped for DMA with write permission. */
  printf("mprotect_bar_ro %d\n", mprotect(bar, BAR_SIZE, PROT_READ) ? errno : 0);
  printf("map_ro_bar_rw %s\n", err_name(map(c, 0x500000, bar, PG)));
  printf("done\n");
  return 0;
}
