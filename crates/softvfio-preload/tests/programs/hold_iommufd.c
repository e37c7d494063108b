/* Binds edu's cdev to /dev/iommu, attaches it to an IOAS, maps a buffer
 * at 0xabc000, says so, and waits for its standard input to close.
 * With "leave-open" it exits at once with both files open.
 * usage: hold_iommufd [CDEV|leave-open] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#define PG 4096ul

struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct ioas_map { uint32_t size, flags, ioas_id, reserved; uint64_t user_va, length, iova; };
struct bind { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; };
struct attach { uint32_t argsz, flags, pt_id; };

static void die(const char *what) { perror(what); exit(1); }

int main(int argc, char **argv) {
  int ifd = open("/dev/iommu", O_RDWR);
  if (ifd < 0) die("open /dev/iommu");
  int leave = argc > 1 && !strcmp(argv[1], "leave-open");
  int dev = open(argc > 1 && !leave ? argv[1] : "/dev/vfio/devices/vfio0", O_RDWR);
  if (dev < 0) die("open cdev");
  struct bind b = {sizeof b, 0, ifd, 0};
  if (ioctl(dev, _IO(';', 118), &b)) die("bind");
  struct ioas_alloc a = {sizeof a, 0, 0};
  if (ioctl(ifd, _IO(';', 0x81), &a)) die("ioas alloc");
  struct attach at = {sizeof at, 0, a.out_ioas_id};
  if (ioctl(dev, _IO(';', 119), &at)) die("attach");
  char *buf = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(buf, 1, 4 * PG);
  struct ioas_map m = {sizeof m, 7, a.out_ioas_id, 0, (uintptr_t)buf, 4 * PG, 0xabc000};
  if (ioctl(ifd, _IO(';', 0x85), &m)) die("map");
  printf("mapped\n");
  fflush(stdout);
  if (leave) return 0;
  char x;
  while (read(0, &x, 1) > 0) {}
  close(dev);
  close(ifd);
  return 0;
}
