/* softvfio bench uapi-stat: what the stat family costs a program under
 * `softvfio run` for files that are not VFIO's (stdio, opendir, QEMU's
 * start-up). With OPEN 1 the program first opens the VFIO container (as
 * QEMU has its VFIO files open while it runs), so the supervisor has
 * objects to tell the file's descriptor from.
 * Per round, interleaved, each the mean over ITERS calls of libc's
 * functions (what programs call; preload mode hooks them, trace mode sees
 * the system calls they make: glibc 2.33 and later make fstat a
 * newfstatat(fd, "", AT_EMPTY_PATH), stat a newfstatat of the path):
 *   "fstat <ns>"  fstat of a descriptor of PLAIN_FILE
 *   "stat <ns>"   stat of PLAIN_FILE (an absolute path)
 *   "statx <ns>"  statx(AT_FDCWD, PLAIN_FILE, 0, STATX_BASIC_STATS)
 * usage: stat_bench PLAIN_FILE ROUNDS ITERS [OPEN] */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  const char *path = argv[1];
  int rounds = atoi(argv[2]), iters = atoi(argv[3]);
  if (argc > 4 && atoi(argv[4]) && open("/dev/vfio/vfio", O_RDWR) < 0) {
    perror("open /dev/vfio/vfio");
    return 1;
  }
  int fd = open(path, O_RDONLY);
  if (fd < 0 || rounds <= 0 || iters <= 0) return 1;
  struct stat st;
  struct statx sx;
  for (int r = 0; r < rounds; r++) {
    double t = now_ns();
    for (int i = 0; i < iters; i++)
      if (fstat(fd, &st)) return 1;
    printf("fstat %.1f\n", (now_ns() - t) / iters);
    t = now_ns();
    for (int i = 0; i < iters; i++)
      if (stat(path, &st)) return 1;
    printf("stat %.1f\n", (now_ns() - t) / iters);
    t = now_ns();
    for (int i = 0; i < iters; i++)
      if (statx(AT_FDCWD, path, 0, STATX_BASIC_STATS, &sx)) return 1;
    printf("statx %.1f\n", (now_ns() - t) / iters);
  }
  return 0;
}
