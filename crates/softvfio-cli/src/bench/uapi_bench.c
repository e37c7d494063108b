/* softvfio bench uapi-*: the cost of a VFIO call as an unmodified program
 * pays it, next to a baseline the same program measures in the same round.
 * Per round, each over its own iteration count, interleaved (the pinning
 * floors in a helper process, see start_floor_helper):
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
 *   "kbar ..." and "kmap4k ..."                  with HANDOFF 1, after the
 *                                                rounds: a fork with the VFIO
 *                                                files open, then the bar and
 *                                                map4k rounds again (preload:
 *                                                forwarded to the keeper)
 * usage: uapi_bench GROUP BDF PLAIN_FILE ROUNDS BAR_ITERS MAP_ITERS HUGE_MB
 *        [FRESH_MB [HANDOFF]] */
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

static char *fresh_area(uint64_t len) {
  char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

/* The pinning floors run in a helper process forked before any VFIO file
 * is opened. Not in this process: a program that calls mlock itself makes
 * softvfio look for its own locks at every later pin (so that an unmap
 * leaves them, as Linux does), which costs a /proc read per MAP_DMA. Not
 * in a child forked later: a fork with VFIO files open hands a preload
 * engine to its keeper (the files are shared, as on Linux), and every
 * later call would be forwarded. */
struct floor_req {
  int iters;     /* > 0: iters mlock+munlock of the helper's own 4 KiB page */
  int shared;    /* iters == 0: 1: populate+mlock+munlock of `big`; 0: of fresh memory */
  uint64_t len;
};
static int floor_to = -1, floor_from = -1;

static void floor_helper(int in, int out, char *big) {
  char *page = fresh_area(4096);
  if (!page) _exit(5);
  page[0] = 1;
  struct floor_req q;
  while (read(in, &q, sizeof q) == sizeof q) {
    double t0 = now_ns(), dt = -1;
    if (q.iters > 0) {
      int i;
      for (i = 0; i < q.iters; i++)
        if (mlock(page, 4096) || munlock(page, 4096)) break;
      if (i == q.iters) dt = (now_ns() - t0) / q.iters;
    } else {
      char *m = q.shared ? big : fresh_area(q.len);
      if (m) {
        t0 = now_ns();
        if (!madvise(m, q.len, MADV_POPULATE_WRITE) && !mlock(m, q.len) && !munlock(m, q.len))
          dt = now_ns() - t0;
        if (!q.shared) munmap(m, q.len);
      }
    }
    if (write(out, &dt, sizeof dt) != sizeof dt) _exit(6);
  }
  _exit(0);
}

static int start_floor_helper(char *big) {
  int to[2], from[2];
  if (pipe(to) || pipe(from)) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    close(to[1]);
    close(from[0]);
    floor_helper(to[0], from[1], big);
  }
  close(to[0]);
  close(from[1]);
  floor_to = to[1];
  floor_from = from[0];
  return 0;
}

/* The helper's time for `iters` mlock+munlock of a 4 KiB page, or, with
 * iters == 0, for one populate+mlock+munlock of `len` bytes (the shared
 * huge area when `shared`, else fresh memory); -1 on failure. */
static double floor_ns(int iters, int shared, uint64_t len) {
  struct floor_req q = {iters, shared, len};
  double dt = -1;
  if (write(floor_to, &q, sizeof q) != sizeof q || read(floor_from, &dt, sizeof dt) != sizeof dt) return -1;
  return dt;
}

/* One round of the device calls: bar and map4k lines, named with `prefix`
 * ("" or "k", the latter after the hand-off to the keeper). */
static int device_round(const char *prefix, int plain, int d, uint64_t bar0, int c, char *page, int bar_iters,
                        int map_iters) {
  uint32_t v = 0;
  volatile uint32_t sum = 0;
  double t0 = now_ns();
  for (int i = 0; i < bar_iters; i++) {
    if (pread(plain, &v, 4, 0) != 4) return 1;
    sum += v;
  }
  double t1 = now_ns();
  for (int i = 0; i < bar_iters; i++) {
    if (pread(d, &v, 4, bar0) != 4 || v != 0x010000edu) return 3;
  }
  double t2 = now_ns();
  printf("%sbar %.1f %.1f\n", prefix, (t1 - t0) / bar_iters, (t2 - t1) / bar_iters);
  double floor = floor_ns(map_iters, 0, 0);
  if (floor < 0) return 5;
  t1 = now_ns();
  for (int i = 0; i < map_iters; i++) {
    if (map_unmap(c, page, 4096, 1ull << 20)) return 6;
  }
  t2 = now_ns();
  printf("%smap4k %.1f %.1f\n", prefix, floor, (t2 - t1) / map_iters);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 8) return 2;
  int rounds = atoi(argv[4]), bar_iters = atoi(argv[5]), map_iters = atoi(argv[6]);
  uint64_t huge = (uint64_t)atoll(argv[7]) << 20;
  uint64_t fresh = argc > 8 ? (uint64_t)atoll(argv[8]) << 20 : 0;
  int handoff = argc > 9 && atoi(argv[9]);
  char *big = NULL;
  if (huge) {
    /* Shared, so that the floor's helper reaches the same huge pages rather
     * than copies of them (as a VMM's guest memory usually is). */
    big = mmap(NULL, huge, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (big == MAP_FAILED) return 4;
    if (madvise(big, huge, MADV_POPULATE_WRITE)) return 4;
  }
  if (start_floor_helper(big)) return 5;
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
  for (int r = 0; r < rounds; r++) {
    int e = device_round("", plain, d, ri.offset, c, page, bar_iters, map_iters);
    if (e) return e;
    double floor, t1, t2;
    if (huge) {
      floor = floor_ns(0, 1, huge);
      if (floor < 0) return 5;
      t1 = now_ns();
      if (map_unmap(c, big, huge, 1ull << 32)) return 6;
      t2 = now_ns();
      printf("huge %.1f %.1f\n", floor, t2 - t1);
    }
    if (fresh) {
      /* Both sides on new memory: the helper maps its own. */
      floor = floor_ns(0, 0, fresh);
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
  if (handoff) {
    /* A fork with the VFIO files open: under preload the engine moves to
     * the keeper (the files are now shared, as on Linux), and the same
     * calls are measured again, forwarded. */
    pid_t child = fork();
    if (child < 0) return 7;
    if (child == 0) _exit(0);
    if (waitpid(child, NULL, 0) != child) return 7;
    for (int r = 0; r < rounds; r++) {
      int e = device_round("k", plain, d, ri.offset, c, page, bar_iters, map_iters);
      if (e) return e;
      fflush(stdout);
    }
  }
  return 0;
}
