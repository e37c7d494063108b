/* usage: softvfio run --mode preload -q -- keeperbench /dev/vfio/<group> <bdf> [N] [ROUNDS]
 * (docs/PERFORMANCE.md, "Process model"). Per-call cost of a BAR register
 * read (pread) and of a 4 KiB MAP_DMA + UNMAP_DMA pair served in process
 * (preload before any fork), then in the same run after a fork has handed
 * the engine to the keeper (the same calls, now forwarded over the
 * process's socket). Rounds alternate before/after is impossible (the
 * hand-off is one way), so each side takes the best of ROUNDS rounds of N
 * calls. Prints "name ns" lines. */
#define _GNU_SOURCE
#include "vfio_common.h"
#include <sys/wait.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static int devfd;
static uint64_t bar0;
static int cont;
static char *page;

static double bar_read(int n) {
  uint32_t v;
  double t0 = now();
  for (int i = 0; i < n; i++)
    if (pread(devfd, &v, 4, bar0 + 4) != 4) die("pread");
  return (now() - t0) / n * 1e9;
}

static double map_unmap(int n) {
  double t0 = now();
  for (int i = 0; i < n; i++) {
    if (map(cont, 0x100000, page, PG)) die("map");
    if (unmap(cont, 0x100000, PG)) die("unmap");
  }
  return (now() - t0) / n * 1e9;
}

static void measure(const char *side, int n, int rounds) {
  double rd = 1e18, mu = 1e18;
  for (int r = 0; r < rounds; r++) {
    double a = bar_read(n), b = map_unmap(n / 4 + 1);
    if (a < rd) rd = a;
    if (b < mu) mu = b;
  }
  printf("%s_bar_read_ns %.0f\n%s_map_unmap_4k_ns %.0f\n", side, rd, side, mu);
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  int n = argc > 3 ? atoi(argv[3]) : 20000;
  int rounds = argc > 4 ? atoi(argv[4]) : 5;
  int g;
  cont = open_container(argv[1], &g);
  devfd = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  if (devfd < 0) die("GET_DEVICE_FD");
  struct vfio_region_info ri = {.argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX};
  if (ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("region info");
  bar0 = ri.offset;
  page = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) die("mmap");
  memset(page, 1, PG);
  measure("in_process", n, rounds);
  fflush(stdout);
  /* The first fork with VFIO files open: the engine goes to the keeper. */
  pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, NULL, 0);
  measure("forwarded", n, rounds);
  close(devfd);
  close(g);
  close(cont);
  return 0;
}
