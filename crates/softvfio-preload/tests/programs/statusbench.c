/* usage: statusbench (docs/PERFORMANCE.md, "Process model"): reading
 * /proc/self/status vs the system calls of a 4 KiB pin, same run. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <string.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(void) {
  char buf[4096];
  char *p = mmap(NULL, 4096 * 64, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(p, 1, 4096 * 64);
  double best_s = 1e9, best_p = 1e9;
  for (int r = 0; r < 5; r++) {
    double t0 = now();
    for (int i = 0; i < 5000; i++) { int fd = open("/proc/self/status", O_RDONLY); read(fd, buf, sizeof buf); close(fd); }
    double t1 = now();
    for (int i = 0; i < 5000; i++) { char *a = p + (i % 64) * 4096; madvise(a, 4096, 23 /*POPULATE_WRITE*/); mlock(a, 4096); munlock(a, 4096); }
    double t2 = now();
    if ((t1 - t0) / 5000 < best_s) best_s = (t1 - t0) / 5000;
    if ((t2 - t1) / 5000 < best_p) best_p = (t2 - t1) / 5000;
  }
  printf("status_read_ns %.0f\npin_floor_4k_ns %.0f\nratio %.2f\n", best_s * 1e9, best_p * 1e9, best_s / best_p);
}
