/* usage: membench (docs/PERFORMANCE.md, "Process model"). */
/* Device DMA's access to another process: pread/pwrite on /proc/<pid>/mem
 * (held open: the address space, issue 13) vs process_vm_readv/writev by
 * pid (before), same run, best of 5 rounds. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

int main(void) {
  size_t big = 1 << 20;
  char *buf = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  memset(buf, 1, big);
  pid_t p = fork();
  if (p == 0) { for (;;) pause(); }
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/mem", p);
  int fd = open(path, O_RDWR);
  char *local = malloc(big);
  size_t sizes[] = {64, 4096, 65536};
  for (int s = 0; s < 3; s++) {
    size_t n = sizes[s];
    int iters = n >= 65536 ? 20000 : 200000;
    double best_mem = 1e9, best_vm = 1e9, best_memw = 1e9, best_vmw = 1e9;
    for (int round = 0; round < 5; round++) {
      double t0 = now();
      for (int i = 0; i < iters; i++) pread(fd, local, n, (off_t)(unsigned long)buf + (i % 16) * 4096);
      double t1 = now();
      for (int i = 0; i < iters; i++) {
        struct iovec l = {local, n}, r = {buf + (i % 16) * 4096, n};
        process_vm_readv(p, &l, 1, &r, 1, 0);
      }
      double t2 = now();
      for (int i = 0; i < iters; i++) pwrite(fd, local, n, (off_t)(unsigned long)buf + (i % 16) * 4096);
      double t3 = now();
      for (int i = 0; i < iters; i++) {
        struct iovec l = {local, n}, r = {buf + (i % 16) * 4096, n};
        process_vm_writev(p, &l, 1, &r, 1, 0);
      }
      double t4 = now();
      if ((t1 - t0) / iters < best_mem) best_mem = (t1 - t0) / iters;
      if ((t2 - t1) / iters < best_vm) best_vm = (t2 - t1) / iters;
      if ((t3 - t2) / iters < best_memw) best_memw = (t3 - t2) / iters;
      if ((t4 - t3) / iters < best_vmw) best_vmw = (t4 - t3) / iters;
    }
    printf("%6zu B read: mem %.0f ns, process_vm %.0f ns, ratio %.2f | write: mem %.0f ns, process_vm %.0f ns, ratio %.2f\n",
           n, best_mem * 1e9, best_vm * 1e9, best_mem / best_vm, best_memw * 1e9, best_vmw * 1e9, best_memw / best_vmw);
  }
  kill(p, SIGKILL);
  waitpid(p, NULL, 0);
  return 0;
}
