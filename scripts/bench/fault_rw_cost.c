// The cost of read/write in a process before and after it holds an iommufd fault queue
// (docs/IOMMUFD.md "Fault queues"). usage: fault_rw_cost native|fault N
//   gcc -O2 [-static] -o fault_rw_cost scripts/bench/fault_rw_cost.c
//   softvfio run --mode trace|preload -- ./fault_rw_cost fault 20000
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
static double loop(int zr, int nw, int n) {
  char b[40];
  double t = now();
  for (int i = 0; i < n; i++) { if (read(zr, b, 8) != 8) abort(); if (write(nw, b, 8) != 8) abort(); }
  return (now() - t) / n / 2;
}
struct fault_alloc { uint32_t size, flags, out_fault_id, out_fault_fd; };
int main(int argc, char **argv) {
  int n = atoi(argv[2]);
  int zr = open("/dev/zero", O_RDONLY), nw = open("/dev/null", O_WRONLY);
  loop(zr, nw, n / 10);
  printf("before %.0f ns/call\n", loop(zr, nw, n));
  if (!strcmp(argv[1], "native")) return 0;
  int ifd = open("/dev/iommu", O_RDWR);
  struct fault_alloc fa = {sizeof fa, 0, 0, 0};
  if (ioctl(ifd, _IO(';', 0x80 + 14), &fa)) { perror("alloc"); return 1; }
  printf("after %.0f ns/call\n", loop(zr, nw, n));
  char b[40];
  double t = now();
  for (int i = 0; i < n; i++) if (read((int)fa.out_fault_fd, b, 40) != 0) abort();
  printf("fault_read %.0f ns/call\n", (now() - t) / n);
  return 0;
}
