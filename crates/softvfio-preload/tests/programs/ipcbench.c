/* usage: softvfio run --mode preload -q -- ipcbench /dev/vfio/<group> <bdf> [N]
 * (docs/PERFORMANCE.md, "Process model"). */
/* Per-call cost: a VFIO region read served in process (preload) vs the
 * least a server process adds (a socketpair round trip of a 64-byte
 * request and reply to a forked echo process), in the same run. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

int main(int argc, char **argv) {
  int n = argc > 3 ? atoi(argv[3]) : 100000;
  int c = open("/dev/vfio/vfio", O_RDWR), g = open(argv[1], O_RDWR);
  if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) || ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) return 1;
  int d = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  struct vfio_region_info ri = {.argsz = sizeof ri, .index = 0};
  ioctl(d, VFIO_DEVICE_GET_REGION_INFO, &ri);
  uint32_t v;
  double best_rd = 1e9, best_ipc = 1e9;
  int sv[2];
  socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv);
  pid_t p = fork();
  if (p == 0) {
    char b[64];
    close(sv[0]);
    while (read(sv[1], b, sizeof b) > 0) write(sv[1], b, sizeof b);
    _exit(0);
  }
  close(sv[1]);
  for (int round = 0; round < 5; round++) {
    double t0 = now();
    for (int i = 0; i < n; i++) pread(d, &v, 4, ri.offset);
    double t1 = now();
    char b[64] = {0};
    for (int i = 0; i < n; i++) { write(sv[0], b, sizeof b); read(sv[0], b, sizeof b); }
    double t2 = now();
    if ((t1 - t0) / n < best_rd) best_rd = (t1 - t0) / n;
    if ((t2 - t1) / n < best_ipc) best_ipc = (t2 - t1) / n;
  }
  close(sv[0]);
  waitpid(p, NULL, 0);
  printf("region_read_ns %.0f\nsocket_round_trip_ns %.0f\nratio %.2f\n", best_rd * 1e9, best_ipc * 1e9, best_ipc / best_rd);
  return 0;
}
