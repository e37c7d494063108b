/* usage: freebench [GROUP]  (docs/PERFORMANCE-HISTORY.md, "free() and
 * syscall() with the preload library"), same process, interleaved rounds,
 * best of each:
 * - malloc+free of small blocks through the program's free (the library's
 *   when it is loaded) vs glibc's own __libc_free;
 * - syscall(SYS_getppid) through the program's syscall vs glibc's (found
 *   in libc.so.6 itself, past any interposer).
 * With GROUP, a container and the group are opened first (the sanitizer
 * then watches every free). */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
extern void __libc_free(void *);
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
#define N 2000000
#define NS 200000
int main(int argc, char **argv) {
  if (argc > 1 && (open("/dev/vfio/vfio", O_RDWR) < 0 || open(argv[1], O_RDWR) < 0)) return 2;
  void *libc = dlopen("libc.so.6", RTLD_NOLOAD | RTLD_LAZY);
  long (*glibc_syscall)(long, ...) = libc ? (long (*)(long, ...))dlsym(libc, "syscall") : NULL;
  if (!glibc_syscall) return 3;
  void *volatile p;
  double best_free = 1e9, best_libc = 1e9, best_sys = 1e9, best_glibc_sys = 1e9;
  for (int r = 0; r < 7; r++) {
    double t0 = now();
    for (int i = 0; i < N; i++) { p = malloc(64 + (i & 63)); free(p); }
    double t1 = now();
    for (int i = 0; i < N; i++) { p = malloc(64 + (i & 63)); __libc_free(p); }
    double t2 = now();
    for (int i = 0; i < NS; i++) syscall(SYS_getppid);
    double t3 = now();
    for (int i = 0; i < NS; i++) glibc_syscall(SYS_getppid);
    double t4 = now();
    if ((t1 - t0) / N < best_free) best_free = (t1 - t0) / N;
    if ((t2 - t1) / N < best_libc) best_libc = (t2 - t1) / N;
    if ((t3 - t2) / NS < best_sys) best_sys = (t3 - t2) / NS;
    if ((t4 - t3) / NS < best_glibc_sys) best_glibc_sys = (t4 - t3) / NS;
  }
  printf("malloc_free_ns %.2f\nmalloc_libc_free_ns %.2f\nfree_ratio %.3f\n", best_free * 1e9, best_libc * 1e9, best_free / best_libc);
  printf("syscall_ns %.1f\nglibc_syscall_ns %.1f\nsyscall_ratio %.3f\n", best_sys * 1e9, best_glibc_sys * 1e9, best_sys / best_glibc_sys);
  return 0;
}
