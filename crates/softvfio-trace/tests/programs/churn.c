// Opens and closes a handler object N times; prints its own descriptor
// count before and after.
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d))) if (e->d_name[0] != '.') n++;
  if (d) closedir(d);
  return n;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 5000;
  int before = count_fds();
  int bad = 0;
  for (int i = 0; i < n; i++) {
    int fd = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
    if (fd < 0 || ioctl(fd, _IO(0x3B, 100)) != 0) bad++;
    if (close(fd)) bad++;
  }
  // The file variant too.
  for (int i = 0; i < n / 10; i++) {
    int fd = open("/proc/self/status", O_RDONLY);
    if (fd < 0) bad++;
    else close(fd);
  }
  printf("before %d\nafter %d\nbad %d\n", before, count_fds(), bad);
  return 0;
}
