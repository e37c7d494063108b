/* The DMA sanitizer's buggy driver on iommufd (softvfio run --sanitize):
 * QEMU's edu device through its cdev (/dev/vfio/devices/vfio0) bound to
 * /dev/iommu, one class of mistake per scenario. Built with frame pointers
 * and debug info so the report can name the functions and lines below.
 *
 *   after-unmap   IOAS_MAP, IOAS_UNMAP, then a DMA to the old IOVA
 *   copy-unmap    IOAS_COPY of the area to a second IOVA, unmap the copy,
 *                 DMA there
 *   never-mapped  a DMA to an IOVA nothing was mapped at
 *   read-only     maps read-only, then lets the device write it
 *   leak          exits with an area, the iommufd and the cdev open
 *   leak-files    exits with the iommufd and the cdev open, nothing mapped
 *   clean         maps, DMAs, unmaps, closes: nothing to report
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define IOVA 0x100000ul
#define LEN 0x1000ul
#define EDU_BUF 0x40000ul

struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct ioas_map { uint32_t size, flags, ioas_id, reserved; uint64_t user_va, length, iova; };
struct ioas_copy { uint32_t size, flags, dst_ioas_id, src_ioas_id; uint64_t length, dst_iova, src_iova; };
struct ioas_unmap { uint32_t size, ioas_id; uint64_t iova, length; };
struct bind { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; };
struct attach { uint32_t argsz, flags, pt_id; };

#define BIND_IOMMUFD _IO(';', 118)
#define ATTACH_IOMMUFD_PT _IO(';', 119)
#define IOAS_ALLOC _IO(';', 0x81)
#define IOAS_COPY _IO(';', 0x83)
#define IOAS_MAP _IO(';', 0x85)
#define IOAS_UNMAP _IO(';', 0x86)
#define MAP_FIXED_IOVA 1
#define MAP_WRITEABLE 2
#define MAP_READABLE 4

static int iommufd, device;
static uint32_t ioas;
static uint64_t bar0;

static void die(const char *what) {
  perror(what);
  exit(2);
}

static uint32_t new_ioas(void) {
  struct ioas_alloc a = {sizeof a, 0, 0};
  if (ioctl(iommufd, IOAS_ALLOC, &a)) die("IOAS_ALLOC");
  return a.out_ioas_id;
}

static void attach(uint32_t id) {
  struct attach at = {sizeof at, 0, id};
  if (ioctl(device, ATTACH_IOMMUFD_PT, &at)) die("ATTACH");
}

__attribute__((noinline)) static void setup(void) {
  iommufd = open("/dev/iommu", O_RDWR);
  device = open("/dev/vfio/devices/vfio0", O_RDWR);
  if (iommufd < 0 || device < 0) die("open");
  struct bind b = {sizeof b, 0, iommufd, 0};
  if (ioctl(device, BIND_IOMMUFD, &b)) die("BIND");
  ioas = new_ioas();
  attach(ioas);
  struct vfio_region_info ri = {.argsz = sizeof ri, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("config region");
  uint16_t cmd;
  if (pread(device, &cmd, 2, ri.offset + 4) != 2) die("read command");
  cmd |= 0x6; /* memory space, bus master */
  if (pwrite(device, &cmd, 2, ri.offset + 4) != 2) die("write command");
  struct vfio_region_info b0 = {.argsz = sizeof b0, .index = VFIO_PCI_BAR0_REGION_INDEX};
  if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &b0)) die("bar0");
  bar0 = b0.offset;
}

__attribute__((noinline)) static void map_area(uint32_t id, void *buf, uint64_t iova, uint32_t prot) {
  struct ioas_map m = {sizeof m, MAP_FIXED_IOVA | prot, id, 0, (uintptr_t)buf, LEN, iova};
  if (ioctl(iommufd, IOAS_MAP, &m)) die("IOAS_MAP");
}

__attribute__((noinline)) static void copy_area(uint64_t dst_iova, uint64_t src_iova) {
  struct ioas_copy c = {sizeof c, MAP_FIXED_IOVA | MAP_WRITEABLE | MAP_READABLE, ioas, ioas,
                        LEN, dst_iova, src_iova};
  if (ioctl(iommufd, IOAS_COPY, &c)) die("IOAS_COPY");
}

__attribute__((noinline)) static void unmap_area(uint32_t id, uint64_t iova) {
  struct ioas_unmap u = {sizeof u, id, iova, LEN};
  if (ioctl(iommufd, IOAS_UNMAP, &u)) die("IOAS_UNMAP");
}

static void reg(uint64_t off, uint64_t v) {
  if (pwrite(device, &v, 8, bar0 + off) != 8) die("register write");
}

/* The device copies its buffer to RAM at `iova`. */
__attribute__((noinline)) static void start_dma(uint64_t iova) {
  reg(0x80, EDU_BUF);
  reg(0x88, iova);
  reg(0x90, 256);
  reg(0x98, 3);
}

static void *anon(void) {
  void *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  memset(p, 0x5a, LEN);
  return p;
}

int main(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "clean";
  setup();
  void *buf = anon();
  const uint32_t rw = MAP_READABLE | MAP_WRITEABLE;
  if (!strcmp(what, "after-unmap")) {
    map_area(ioas, buf, IOVA, rw);
    unmap_area(ioas, IOVA);
    start_dma(IOVA);
  } else if (!strcmp(what, "copy-unmap")) {
    map_area(ioas, buf, IOVA, rw);
    copy_area(0x200000, IOVA);
    unmap_area(ioas, 0x200000);
    start_dma(0x200000);
    unmap_area(ioas, IOVA);
  } else if (!strcmp(what, "never-mapped")) {
    map_area(ioas, buf, IOVA, rw);
    start_dma(0x300000);
    unmap_area(ioas, IOVA);
  } else if (!strcmp(what, "read-only")) {
    map_area(ioas, buf, IOVA, MAP_READABLE);
    start_dma(IOVA);
    unmap_area(ioas, IOVA);
  } else if (!strcmp(what, "leak")) {
    map_area(ioas, buf, IOVA, rw);
    return 0; /* nothing closed */
  } else if (!strcmp(what, "leak-files")) {
    printf("done %s\n", what);
    return 0; /* the files stay open, nothing is mapped */
  } else {
    map_area(ioas, buf, IOVA, rw);
    start_dma(IOVA);
    unmap_area(ioas, IOVA);
  }
  close(device);
  close(iommufd);
  printf("done %s\n", what);
  return 0;
}
