// mmio_traffic: all of edu's register traffic, done twice: once with
// pread/pwrite on the device file, once with loads and stores on an mmap of
// BAR0. Every line is "<path>_<case> <result>" with <path> "pread" or
// "mmap"; the two halves print the same case names, and print the same
// results except where an 8-byte read of a 64-bit register differs by
// design on Linux before 6.14 (vfio-pci splits an 8-byte pread into two
// 4-byte accesses; a load on the mapping reaches the device whole).
//
// usage: mmio_traffic /dev/vfio/<group> <pci-bdf-of-edu>
//
// Edu (QEMU docs/specs/edu.rst): 0x00 id, 0x04 liveness (inverse of the
// last write), 0x08 factorial, 0x20 status (bit 0 computing, bit 7 raise an
// interrupt when done), 0x24 interrupt status, 0x60 raise, 0x64 ack,
// 0x80/0x88/0x90/0x98 DMA source, destination, count, command (bit 0 start,
// bit 1 device to RAM, bit 2 interrupt 0x100 when done); its DMA buffer is
// at device address 0x40000.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int container, group, dev, efd;
static uint64_t bar0_off;
static volatile uint8_t *bar0;
static int use_mmap;
static const char *path_name;

#define OUT(name, ...) do { char n_[96]; snprintf(n_, sizeof n_, "%s_%s", path_name, name); \
  printf("%-40s ", n_); printf(__VA_ARGS__); printf("\n"); fflush(stdout); } while (0)

static uint64_t rd(unsigned off, int size) {
  if (use_mmap) {
    switch (size) {
    case 4: return *(volatile uint32_t *)(bar0 + off);
    default: return *(volatile uint64_t *)(bar0 + off);
    }
  }
  uint64_t v = 0;
  if (pread(dev, &v, size, bar0_off + off) != size) return 0xdeadbeef;
  return v;
}

static void wr(unsigned off, int size, uint64_t v) {
  if (use_mmap) {
    if (size == 4) *(volatile uint32_t *)(bar0 + off) = (uint32_t)v;
    else *(volatile uint64_t *)(bar0 + off) = v;
    return;
  }
  if (pwrite(dev, &v, size, bar0_off + off) != size) fprintf(stderr, "write %#x: %s\n", off, strerror(errno));
}

static uint64_t ev_wait(void) {
  struct pollfd p = { .fd = efd, .events = POLLIN };
  uint64_t v = 0;
  if (poll(&p, 1, 400) > 0) usleep(30000);
  if (read(efd, &v, 8) != 8) return 0;
  return v;
}

// Waits for a register bit to clear (edu computes on a thread in QEMU).
static int wait_clear(unsigned off, uint32_t bit) {
  for (int i = 0; i < 2000; i++) {
    if (!(rd(off, 4) & bit)) return 1;
    usleep(1000);
  }
  return 0;
}

static void traffic(char *dma_buf, uint64_t iova) {
  OUT("id", "%#llx", (unsigned long long)rd(0x00, 4));
  wr(0x04, 4, 0x12345678);
  OUT("liveness", "%#llx", (unsigned long long)rd(0x04, 4));
  wr(0x04, 4, 0);
  OUT("liveness_zero", "%#llx", (unsigned long long)rd(0x04, 4));
  // Factorial, polled.
  wr(0x08, 4, 5);
  int done = wait_clear(0x20, 1);
  OUT("factorial_5", "done=%d %llu", done, (unsigned long long)rd(0x08, 4));
  wr(0x08, 4, 12);
  done = wait_clear(0x20, 1);
  OUT("factorial_12", "done=%d %llu", done, (unsigned long long)rd(0x08, 4));
  // Factorial with its completion interrupt.
  wr(0x20, 4, 0x80);
  wr(0x08, 4, 6);
  uint64_t ev = ev_wait();
  OUT("factorial_irq", "events=%llu status=%#llx irq=%#llx fact=%llu", (unsigned long long)ev,
      (unsigned long long)rd(0x20, 4), (unsigned long long)rd(0x24, 4), (unsigned long long)rd(0x08, 4));
  wr(0x64, 4, 1);
  wr(0x20, 4, 0);
  OUT("factorial_irq_acked", "irq=%#llx", (unsigned long long)rd(0x24, 4));
  // Raise and acknowledge.
  wr(0x60, 4, 0x1234);
  ev = ev_wait();
  OUT("raise", "events=%llu irq=%#llx", (unsigned long long)ev, (unsigned long long)rd(0x24, 4));
  wr(0x64, 4, 0x1000);
  OUT("ack_part", "irq=%#llx", (unsigned long long)rd(0x24, 4));
  wr(0x64, 4, 0x0234);
  OUT("ack_rest", "irq=%#llx events=%llu", (unsigned long long)rd(0x24, 4), (unsigned long long)ev_wait());
  // DMA registers, 8-byte writes, read back with 4-byte reads.
  wr(0x80, 8, iova);
  wr(0x88, 8, 0x40000);
  wr(0x90, 8, 64);
  OUT("dma_regs_read4", "src=%#llx dst=%#llx cnt=%#llx", (unsigned long long)rd(0x80, 4),
      (unsigned long long)rd(0x88, 4), (unsigned long long)rd(0x90, 4));
  OUT("dma_regs_read8", "src=%#llx dst=%#llx cnt=%#llx", (unsigned long long)rd(0x80, 8),
      (unsigned long long)rd(0x88, 8), (unsigned long long)rd(0x90, 8));
  // RAM -> device, 8-byte command write.
  for (int i = 0; i < 64; i++) dma_buf[i] = (char)(i * 3 + 1);
  wr(0x98, 8, 1);
  done = wait_clear(0x98, 1);
  OUT("dma_to_device", "done=%d cmd=%#llx", done, (unsigned long long)rd(0x98, 4));
  // Device -> RAM, 4-byte register writes, with the completion interrupt.
  wr(0x80, 4, 0x40000);
  wr(0x88, 4, (uint32_t)iova + 0x100);
  wr(0x90, 4, 64);
  wr(0x98, 4, 1 | 2 | 4);
  ev = ev_wait();
  done = wait_clear(0x98, 1);
  int same = memcmp(dma_buf, dma_buf + 0x100, 64) == 0;
  OUT("dma_from_device", "done=%d events=%llu irq=%#llx same=%d", done, (unsigned long long)ev,
      (unsigned long long)rd(0x24, 4), same);
  wr(0x64, 4, 0x100);
  OUT("dma_irq_acked", "irq=%#llx", (unsigned long long)rd(0x24, 4));
  memset(dma_buf, 0, 0x200);
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s GROUP BDF\n", argv[0]); return 2; }
  container = open("/dev/vfio/vfio", O_RDWR);
  group = open(argv[1], O_RDWR);
  if (container < 0 || group < 0) { perror("open"); return 1; }
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) { perror("set container"); return 1; }
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) { perror("set iommu"); return 1; }
  dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  if (dev < 0) { perror("device"); return 1; }
  struct vfio_region_info ri = { .argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX };
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri)) { perror("region info"); return 1; }
  bar0_off = ri.offset;
  printf("%-40s flags=%#x size=%#llx\n", "region_info_bar0", ri.flags, (unsigned long long)ri.size);
  // Memory and bus master on (config space command register).
  uint16_t cmd = 0;
  uint64_t cfg = (uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40;
  struct vfio_region_info ci = { .argsz = sizeof ci, .index = VFIO_PCI_CONFIG_REGION_INDEX };
  if (!ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ci)) cfg = ci.offset;
  pread(dev, &cmd, 2, cfg + 4);
  cmd |= 6;
  pwrite(dev, &cmd, 2, cfg + 4);
  // MSI to an eventfd.
  efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  char irqbuf[sizeof(struct vfio_irq_set) + 4];
  struct vfio_irq_set *is = (void *)irqbuf;
  is->argsz = sizeof irqbuf;
  is->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  is->index = VFIO_PCI_MSI_IRQ_INDEX;
  is->start = 0;
  is->count = 1;
  memcpy(is->data, &efd, 4);
  if (ioctl(dev, VFIO_DEVICE_SET_IRQS, is)) { perror("set irqs"); return 1; }
  // DMA buffer.
  long pg = sysconf(_SC_PAGESIZE);
  char *buf = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(buf, 0, pg);
  uint64_t iova = 0x1000000;
  struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                                        .vaddr = (uint64_t)(uintptr_t)buf, .iova = iova, .size = pg };
  if (ioctl(container, VFIO_IOMMU_MAP_DMA, &m)) { perror("map dma"); return 1; }

  path_name = "pread";
  use_mmap = 0;
  traffic(buf, iova);

  void *p = mmap(NULL, ri.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar0_off);
  if (p == MAP_FAILED) { printf("%-40s %s\n", "mmap_bar0", strerror(errno)); return 1; }
  bar0 = p;
  path_name = "mmap";
  use_mmap = 1;
  traffic(buf, iova);
  munmap(p, ri.size);
  printf("done\n");
  return 0;
}
