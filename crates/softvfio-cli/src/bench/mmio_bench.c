/* softvfio bench mmio-trap: per round, the time of one 4-byte read of edu's
 * ID register through pread on the device file (the baseline) and through
 * a load on an mmap of BAR0 (the trapped access), each over `iters`
 * operations, interleaved. Prints "round <pread ns> <mmap ns>" per round.
 * usage: mmio_bench GROUP BDF ROUNDS ITERS */
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc < 5) return 2;
  int rounds = atoi(argv[3]), iters = atoi(argv[4]);
  int c = open("/dev/vfio/vfio", O_RDWR), g = open(argv[1], O_RDWR);
  if (c < 0 || g < 0 || ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) || ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) return 1;
  int d = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  struct vfio_region_info ri = { .argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX };
  if (d < 0 || ioctl(d, VFIO_DEVICE_GET_REGION_INFO, &ri)) return 1;
  volatile uint32_t *bar = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, d, ri.offset);
  if (bar == MAP_FAILED) return 1;
  for (int r = 0; r < rounds; r++) {
    uint32_t v = 0, sum = 0;
    double t0 = now_ns();
    for (int i = 0; i < iters; i++) {
      if (pread(d, &v, 4, ri.offset) != 4) return 1;
      sum += v;
    }
    double t1 = now_ns();
    for (int i = 0; i < iters; i++) sum += *bar;
    double t2 = now_ns();
    if (sum != 2u * iters * 0x10000edu) return 3;
    printf("round %.1f %.1f\n", (t1 - t0) / iters, (t2 - t1) / iters);
    fflush(stdout);
  }
  return 0;
}
