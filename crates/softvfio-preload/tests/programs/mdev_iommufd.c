// A mediated edu (mdev-edu) reached through iommufd, as QEMU's iommufd
// backend and the VFIO selftests reach it: either through its cdev (bind,
// IOAS, attach) or through its group with /dev/iommu as the container (the
// type1 compatibility path). Edu's DMA engine then copies RAM -> device ->
// RAM through the device's emulated access (pins or dma_rw), an unmap of
// memory the device pinned goes through (the device is told to unpin), and
// DMA to unmapped or read-only memory lands nowhere. One "<case> <result>"
// line per step.
//
// usage: mdev_iommufd cdev CDEV | compat GROUP UUID
#define _GNU_SOURCE
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
#define ICMD(n) _IO(';', 0x80 + (n))
#define IOMMU_IOAS_ALLOC ICMD(1)
#define IOMMU_IOAS_MAP ICMD(5)
#define IOMMU_IOAS_UNMAP ICMD(6)
#define BIND _IO(';', 118)
#define ATTACH _IO(';', 119)
#define DETACH _IO(';', 120)

struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct ioas_map { uint32_t size, flags, ioas_id, reserved; uint64_t user_va, length, iova; };
struct ioas_unmap { uint32_t size, ioas_id; uint64_t iova, length; };
struct bind { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; };
struct attach { uint32_t argsz, flags, pt_id; };

static const char *en(int r) {
  static char b[32];
  if (r >= 0) return "0";
  snprintf(b, sizeof b, "%s", strerrorname_np(errno) ? strerrorname_np(errno) : "errno");
  return b;
}

static int dev;
static char *buf;

static void wr(unsigned off, uint32_t v) { if (pwrite(dev, &v, 4, off) != 4) printf("edu_write_%#x %s\n", off, en(-1)); }
static uint32_t rd(unsigned off) { uint32_t v = 0; return pread(dev, &v, 4, off) == 4 ? v : 0xffffffffu; }
// One edu DMA: 0 when the engine finished.
static int dma(uint64_t src, uint64_t dst, uint32_t cnt, uint32_t cmd) {
  wr(0x80, (uint32_t)src); wr(0x84, (uint32_t)(src >> 32));
  wr(0x88, (uint32_t)dst); wr(0x8c, (uint32_t)(dst >> 32));
  wr(0x90, cnt);
  wr(0x98, cmd);
  for (int i = 0; i < 2000; i++) {
    if (!(rd(0x98) & 1)) return 0;
    usleep(500);
  }
  return -1;
}
#define TO_DEV 1
#define TO_RAM 3

// The traffic every path runs once the device reaches IOVA 0x100000 (4
// pages of buf, RW) and 0x200000 (buf's 5th page, read only).
static void traffic(const char *p) {
  uint16_t cmd = 0;
  pread(dev, &cmd, 2, (7ull << 40) + 4);
  cmd |= 0x6;
  pwrite(dev, &cmd, 2, (7ull << 40) + 4);
  memcpy(buf, "mdevfd!!", 8);
  int a = dma(0x100000, 0x40000, 8, TO_DEV);
  int b = dma(0x40000, 0x101ff8, 8, TO_RAM);  // ends at a page boundary
  printf("%s_roundtrip %d %d %s\n", p, a, b, memcmp(buf + 2 * PG - 8, "mdevfd!!", 8) ? "differs" : "same");
  // Across two pages of the mapping, both directions.
  memcpy(buf + 3 * PG - 4, "crosspg!", 8);
  a = dma(0x102ffc, 0x40100, 8, TO_DEV);
  b = dma(0x40100, 0x103000, 8, TO_RAM);
  printf("%s_cross_page %d %d %s\n", p, a, b, memcmp(buf + 3 * PG, "crosspg!", 8) ? "differs" : "same");
  // Into the read-only page: nothing lands.
  memset(buf + 4 * PG, 0x5a, 8);
  a = dma(0x40000, 0x200000, 8, TO_RAM);
  printf("%s_to_read_only %d %s\n", p, a, buf[4 * PG] == 0x5a ? "unchanged" : "written");
  // Out of an unmapped IOVA: the device buffer keeps its bytes.
  a = dma(0x300000, 0x40000, 8, TO_DEV);
  b = dma(0x40000, 0x101000, 8, TO_RAM);
  printf("%s_from_unmapped %d %d %s\n", p, a, b, memcmp(buf + PG, "mdevfd!!", 8) ? "differs" : "kept");
}

static int cdev_path(const char *cdev) {
  int ifd = open("/dev/iommu", O_RDWR);
  dev = open(cdev, O_RDWR);
  struct bind bd = {sizeof bd, 0, ifd, 0};
  printf("cdev_bind %s\n", en(ioctl(dev, BIND, &bd)));
  struct ioas_alloc al = {sizeof al, 0, 0};
  printf("cdev_ioas %s\n", en(ioctl(ifd, IOMMU_IOAS_ALLOC, &al)));
  struct ioas_map m = {sizeof m, 1 | 2 | 4, al.out_ioas_id, 0, (uintptr_t)buf, 4 * PG, 0x100000};
  printf("cdev_map %s\n", en(ioctl(ifd, IOMMU_IOAS_MAP, &m)));
  struct ioas_map ro = {sizeof ro, 1 | 4, al.out_ioas_id, 0, (uintptr_t)buf + 4 * PG, PG, 0x200000};
  printf("cdev_map_ro %s\n", en(ioctl(ifd, IOMMU_IOAS_MAP, &ro)));
  struct attach at = {sizeof at, 0, al.out_ioas_id};
  printf("cdev_attach %s pt_is_ioas=%d\n", en(ioctl(dev, ATTACH, &at)), at.pt_id == al.out_ioas_id);
  traffic("cdev");
  // The device pinned pages of this area (pin mode): iommufd asks it to
  // unpin, and the unmap goes through.
  struct ioas_unmap u = {sizeof u, al.out_ioas_id, 0x100000, 4 * PG};
  printf("cdev_unmap_pinned %s length=%#llx\n", en(ioctl(ifd, IOMMU_IOAS_UNMAP, &u)), (unsigned long long)u.length);
  memset(buf + PG, 0, 8);
  struct ioas_map again = {sizeof again, 1 | 2 | 4, al.out_ioas_id, 0, (uintptr_t)buf + PG, PG, 0x180000};
  printf("cdev_map_again %s\n", en(ioctl(ifd, IOMMU_IOAS_MAP, &again)));
  int a = dma(0x40000, 0x180000, 8, TO_RAM);
  printf("cdev_dma_after_unmap %d %s\n", a, memcmp(buf + PG, "mdevfd!!", 8) ? "differs" : "same");
  struct attach dt = {8, 0, 0};
  printf("cdev_detach %s\n", en(ioctl(dev, DETACH, &dt)));
  memset(buf + PG, 0, 8);
  a = dma(0x40000, 0x180000, 8, TO_RAM);
  printf("cdev_dma_detached %d %s\n", a, buf[PG] == 0 ? "unchanged" : "written");
  close(dev);
  close(ifd);
  return 0;
}

static int compat_path(const char *group, const char *uuid) {
  int ifd = open("/dev/iommu", O_RDWR);
  int g = open(group, O_RDWR);
  printf("compat_set_container %s\n", en(ioctl(g, VFIO_GROUP_SET_CONTAINER, &ifd)));
  printf("compat_set_iommu %s\n", en(ioctl(ifd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)));
  struct vfio_iommu_type1_dma_map m = {sizeof m, VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                                       (uintptr_t)buf, 0x100000, 4 * PG};
  printf("compat_map %s\n", en(ioctl(ifd, VFIO_IOMMU_MAP_DMA, &m)));
  struct vfio_iommu_type1_dma_map ro = {sizeof ro, VFIO_DMA_MAP_FLAG_READ, (uintptr_t)buf + 4 * PG, 0x200000, PG};
  printf("compat_map_ro %s\n", en(ioctl(ifd, VFIO_IOMMU_MAP_DMA, &ro)));
  dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, uuid);
  printf("compat_device %s\n", en(dev));
  if (dev < 0) return 1;
  traffic("compat");
  struct vfio_iommu_type1_dma_unmap u = {sizeof u, 0, 0x100000, 4 * PG};
  printf("compat_unmap_pinned %s size=%#llx\n", en(ioctl(ifd, VFIO_IOMMU_UNMAP_DMA, &u)), (unsigned long long)u.size);
  close(dev);
  close(g);
  close(ifd);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  buf = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  memset(buf, 0, 8 * PG);
  int rc = 2;
  if (argc >= 3 && !strcmp(argv[1], "cdev")) rc = cdev_path(argv[2]);
  if (argc >= 4 && !strcmp(argv[1], "compat")) rc = compat_path(argv[2], argv[3]);
  printf("done\n");
  return rc;
}
