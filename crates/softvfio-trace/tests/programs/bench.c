// Times intercepted and non-intercepted system calls; prints ns per call.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

#define TIME(name, n, stmt) do { double t0 = now(); for (int i = 0; i < (n); i++) { stmt; } \
  printf("%s %.0f\n", name, (now() - t0) / (n)); fflush(stdout); } while (0)

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 20000;
  int fd = open("/dev/vfio/vfio", O_RDWR);
  int p[2]; pipe(p);
  int file = open("/proc/self/exe", O_RDONLY);
  char b[16]; int v;
  TIME("ns_getppid_untraced", n, syscall(SYS_getppid));
  TIME("ns_ioctl_other_untraced", n, ioctl(p[0], FIONREAD, &v));
  TIME("ns_pread_not_ours", n, pread(file, b, 16, 0));
  TIME("ns_ioctl_served", n, ioctl(fd, _IO(0x3B, 100)));
  TIME("ns_ioctl_1_injection", n, ioctl(fd, _IO(0x3B, 130)));
  TIME("ns_ioctl_2_injections", n, ioctl(fd, _IO(0x3B, 131)));
  TIME("ns_open_close_object", n / 10, close(open("/dev/vfio/vfio", O_RDWR)));
  return 0;
}
