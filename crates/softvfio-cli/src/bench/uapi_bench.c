/* softvfio bench uapi-*: the cost of a VFIO call as an unmodified program
 * pays it, next to a baseline the same program measures in the same round.
 * Per round, each over its own iteration count, interleaved (the pinning
 * floors in a forked child, see floor_in_child):
 *   "bar <plain pread ns> <device pread ns>"     4-byte pread of a plain file
 *                                                vs of edu's ID register
 *   "map4k <mlock+munlock ns> <MAP+UNMAP ns>"    4 KiB: the kernel's pinning
 *                                                floor vs VFIO_IOMMU_MAP_DMA
 *                                                + UNMAP_DMA of the same page
 *   "huge <floor ns> <MAP+UNMAP ns>"             HUGE_MB of hugetlb memory:
 *                                                MADV_POPULATE_WRITE + mlock +
 *                                                munlock vs MAP_DMA + UNMAP_DMA
 *   "fresh <floor ns> <MAP+UNMAP ns>"            FRESH_MB of new 4K memory
 *                                                each round: the same floor on
 *                                                one thread vs MAP_DMA +
 *                                                UNMAP_DMA (mmap and munmap
 *                                                not timed on either side)
 * usage: uapi_bench GROUP BDF PLAIN_FILE ROUNDS BAR_ITERS MAP_ITERS HUGE_MB
 *        [FRESH_MB] */
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

static int map_unmap(int c, void *va, uint64_t len, uint64_t iova) {
  struct vfio_iommu_type1_dma_map m = {
      .argsz = sizeof m,
      .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
      .vaddr = (uint64_t)(uintptr_t)va,
      .iova = iova,
      .size = len};
  struct vfio_iommu_type1_dma_unmap u = {.argsz = sizeof u, .iova = iova, .size = len};
  if (ioctl(c, VFIO_IOMMU_MAP_DMA, &m)) return -1;
  if (ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u) || u.size != len) return -1;
  return 0;
}

/* The pinning floor, measured in a forked child: a program that calls mlock
 * itself makes softvfio look for its own locks at every later pin (so that
 * an unmap leaves them, as Linux does), which costs a /proc read per
 * MAP_DMA; the floor's mlock must not put the measured program there.
 * Returns the child's time for `iters` mlock+munlock of `page` (4 KiB), or
 * for one populate+mlock+munlock of `big` (`huge` bytes) when iters == 0. */
static char *fresh_area(uint64_t len) {
  char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static double floor_in_child(char *page, char *big, uint64_t huge, int iters) {
  int p[2];
  if (pipe(p)) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    double t0 = now_ns(), dt;
    if (iters) {
      for (int i = 0; i < iters; i++)
        if (mlock(page, 4096) || munlock(page, 4096)) _exit(5);
      dt = (now_ns() - t0) / iters;
    } else {
      if (!big && !(big = fresh_area(huge))) _exit(5); /* fresh memory */
      t0 = now_ns();
      if (madvise(big, huge, MADV_POPULATE_WRITE) || mlock(big, huge) || munlock(big, huge)) _exit(5);
      dt = now_ns() - t0;
    }
    if (write(p[1], &dt, sizeof dt) != sizeof dt) _exit(6);
    _exit(0);
  }
  close(p[1]);
  double dt = -1;
  if (read(p[0], &dt, sizeof dt) != sizeof dt) dt = -1;
  close(p[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? dt : -1;
}

int main(int argc, char **argv) {
  if (argc < 8) return 2;
  int rounds = atoi(argv[4]), bar_iters = atoi(argv[5]), map_iters = atoi(argv[6]);
  uint64_t huge = (uint64_t)atoll(argv[7]) << 20;
  uint64_t fresh = argc > 8 ? (uint64_t)atoll(argv[8]) << 20 : 0;
  int c = open("/dev/vfio/vfio", O_RDWR), g = open(argv[1], O_RDWR);
  int plain = open(argv[3], O_RDONLY);
  if (c < 0 || g < 0 || plain < 0) return 1;
  if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) || ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) return 1;
  int d = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  struct vfio_region_info ri = {.argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX};
  if (d < 0 || ioctl(d, VFIO_DEVICE_GET_REGION_INFO, &ri)) return 1;
  char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) return 1;
  page[0] = 1;
  char *big = NULL;
  if (huge) {
    /* Shared, so that the floor's child reaches the same huge pages rather
     * than copies of them (as a VMM's guest memory usually is). */
    big = mmap(NULL, huge, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (big == MAP_FAILED) return 4;
    if (madvise(big, huge, MADV_POPULATE_WRITE)) return 4;
  }
  for (int r = 0; r < rounds; r++) {
    uint32_t v = 0;
    volatile uint32_t sum = 0;
    double t0 = now_ns();
    for (int i = 0; i < bar_iters; i++) {
      if (pread(plain, &v, 4, 0) != 4) return 1;
      sum += v;
    }
    double t1 = now_ns();
    for (int i = 0; i < bar_iters; i++) {
      if (pread(d, &v, 4, ri.offset) != 4 || v != 0x010000edu) return 3;
    }
    double t2 = now_ns();
    printf("bar %.1f %.1f\n", (t1 - t0) / bar_iters, (t2 - t1) / bar_iters);
    double floor = floor_in_child(page, NULL, 0, map_iters);
    if (floor < 0) return 5;
    t1 = now_ns();
    for (int i = 0; i < map_iters; i++) {
      if (map_unmap(c, page, 4096, 1ull << 20)) return 6;
    }
    t2 = now_ns();
    printf("map4k %.1f %.1f\n", floor, (t2 - t1) / map_iters);
    if (huge) {
      floor = floor_in_child(NULL, big, huge, 0);
      if (floor < 0) return 5;
      t1 = now_ns();
      if (map_unmap(c, big, huge, 1ull << 32)) return 6;
      t2 = now_ns();
      printf("huge %.1f %.1f\n", floor, t2 - t1);
    }
    if (fresh) {
      /* Both sides on new memory: the child maps its own (NULL). */
      floor = floor_in_child(NULL, NULL, fresh, 0);
      if (floor < 0) return 5;
      char *f = fresh_area(fresh);
      if (!f) return 4;
      t1 = now_ns();
      if (map_unmap(c, f, fresh, 1ull << 34)) return 6;
      t2 = now_ns();
      munmap(f, fresh);
      printf("fresh %.1f %.1f\n", floor, t2 - t1);
    }
    fflush(stdout);
  }
  return 0;
}
