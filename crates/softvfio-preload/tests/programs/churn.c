/* Opens and closes containers, groups and devices many times (with dup,
 * dup2, fcntl(F_DUPFD) and maps left for close to clean up) and prints the
 * descriptor count before and after.
 * usage: churn ROUNDS [GROUP BDF] */
#include "vfio_common.h"

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 1000;
  const char *group = argc > 2 ? argv[2] : "/dev/vfio/3";
  const char *bdf = argc > 3 ? argv[3] : "0000:00:03.0";
  char *buf = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) die("mmap");
  memset(buf, 1, 16 * PG);
  int before = count_fds();
  int after_first = -1;
  int failures = 0;
  for (int i = 0; i < rounds; i++) {
    /* In preload mode the engine runs in this process and keeps its
     * /proc/self/maps and pagemap descriptors from the first pin on. */
    if (i == 1) after_first = count_fds();
    int g;
    int c = open_container(group, &g);
    int d = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, bdf);
    if (d < 0) die("VFIO_GROUP_GET_DEVICE_FD");
    struct vfio_device_info info = { .argsz = sizeof info };
    if (ioctl(d, VFIO_DEVICE_GET_INFO, &info) || info.num_regions < 8) failures++;
    uint32_t id = 0;
    if (pread(d, &id, 4, (uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40) != 4 || id != 0x11e81234) failures++;
    /* Two maps; one is left for the container's release to undo. */
    if (map(c, 0x100000, buf, 8 * PG) || map(c, 0x200000, buf + 8 * PG, 8 * PG)) failures++;
    if (unmap(c, 0x100000, 8 * PG)) failures++;
    switch (i % 4) {
    case 0: { /* close in open order */
      close(d); close(g); close(c);
      break;
    }
    case 1: { /* dup the container; the object lives until the last close */
      int c2 = dup(c);
      close(c);
      struct vfio_iommu_type1_info ii = { .argsz = sizeof ii };
      if (ioctl(c2, VFIO_IOMMU_GET_INFO, &ii)) failures++;
      close(d); close(g); close(c2);
      break;
    }
    case 2: { /* dup2 onto a spare descriptor, fcntl(F_DUPFD_CLOEXEC) */
      int spare = open("/dev/null", O_RDONLY);
      if (dup2(d, spare) != spare) failures++;
      int d3 = fcntl(d, F_DUPFD_CLOEXEC, 100);
      if (d3 < 100) failures++;
      close(d);
      uint32_t id2 = 0;
      if (pread(spare, &id2, 4, (uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40) != 4 || id2 != 0x11e81234) failures++;
      close(spare); close(d3); close(g); close(c);
      break;
    }
    default: { /* close the container first, then the rest */
      close(c); close(d); close(g);
      break;
    }
    }
  }
  /* Closed descriptors are not ours any more. */
  errno = 0;
  int bad = ioctl(12345, VFIO_GET_API_VERSION);
  printf("closed_fd_ioctl %s\n", bad < 0 && errno == EBADF ? "EBADF" : "other");
  printf("rounds %d\n", rounds);
  printf("failures %d\n", failures);
  printf("fds_before %d\n", before);
  printf("fds_after_first %d\n", after_first);
  printf("fds_after %d\n", count_fds());
  return failures != 0;
}
