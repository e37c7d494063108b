/* usage: freebench [GROUP]  (docs/PERFORMANCE-HISTORY.md, "free() with the
 * preload library"): malloc+free of small blocks through the program's
 * free (the library's when it is loaded) vs glibc's own __libc_free, same
 * process, interleaved rounds, best of each. With GROUP, a container and
 * the group are opened first (the sanitizer then watches every free). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
extern void __libc_free(void *);
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
#define N 2000000
int main(int argc, char **argv) {
  if (argc > 1 && (open("/dev/vfio/vfio", O_RDWR) < 0 || open(argv[1], O_RDWR) < 0)) return 2;
  void *volatile p;
  double best_free = 1e9, best_libc = 1e9;
  for (int r = 0; r < 7; r++) {
    double t0 = now();
    for (int i = 0; i < N; i++) { p = malloc(64 + (i & 63)); free(p); }
    double t1 = now();
    for (int i = 0; i < N; i++) { p = malloc(64 + (i & 63)); __libc_free(p); }
    double t2 = now();
    if ((t1 - t0) / N < best_free) best_free = (t1 - t0) / N;
    if ((t2 - t1) / N < best_libc) best_libc = (t2 - t1) / N;
  }
  printf("malloc_free_ns %.2f\nmalloc_libc_free_ns %.2f\nratio %.3f\n", best_free * 1e9, best_libc * 1e9, best_free / best_libc);
  return 0;
}
