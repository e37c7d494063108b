/* usage: softvfio run --mode trace -q -- mtbench /dev/vfio/<group> <bdf>
 * (docs/PERFORMANCE.md, "Process model"). */
/* Trace-mode cost of a served call in a single-threaded process vs the
 * same process with a second (idle) thread, where the supervisor checks
 * the stop before touching registers. Same run, best of 5. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/vfio.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void *idle(void *a) { (void)a; for (;;) pause(); }
static double best(int d, uint64_t off, int n) {
  uint32_t v; double b = 1e9;
  for (int r = 0; r < 5; r++) { double t0 = now(); for (int i = 0; i < n; i++) pread(d, &v, 4, off); double t = (now() - t0) / n; if (t < b) b = t; }
  return b;
}
int main(int argc, char **argv) {
  int n = 5000;
  int c = open("/dev/vfio/vfio", O_RDWR), g = open(argv[1], O_RDWR);
  if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) || ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) return 1;
  int d = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  struct vfio_region_info ri = {.argsz = sizeof ri, .index = 0};
  ioctl(d, VFIO_DEVICE_GET_REGION_INFO, &ri);
  double one = best(d, ri.offset, n);
  pthread_t t; pthread_create(&t, NULL, idle, NULL);
  double two = best(d, ri.offset, n);
  printf("single_thread_us %.2f\ntwo_threads_us %.2f\nratio %.3f\n", one * 1e6, two * 1e6, two / one);
  return 0;
}
