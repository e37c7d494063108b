/* Descriptor operations a whole program (QEMU) makes on VFIO files, built
 * as Debian builds QEMU: _FORTIFY_SOURCE=2 with 64-bit file offsets, so
 * that open and pread become glibc's __open64_2 and __pread64_chk.
 * usage: fdops /dev/vfio/<group> <bdf>
 * Prints "name value" lines; the test asserts each. */
#undef _FORTIFY_SOURCE
#define _FORTIFY_SOURCE 2
#define _FILE_OFFSET_BITS 64
#define _GNU_SOURCE
#include "vfio_common.h"
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

/* With 64-bit offsets the macros reach __open64_2 and __pread64_chk (as
 * in Debian's QEMU); their 32-bit-offset twins are called by hand. */
extern int __open_2(const char *, int);
extern ssize_t __pread_chk(int, void *, size_t, off_t, size_t);

/* A length the compiler cannot see: the fortified pread checks it at run
 * time (__pread64_chk) instead of calling pread. */
static volatile size_t four = 4;

static volatile int rw_flags = O_RDWR; /* not a constant: open -> __open64_2 */

static const char *err(int r) {
  static char b[32];
  if (r >= 0) return "0";
  switch (errno) {
  case EBADF: return "EBADF";
  case EINVAL: return "EINVAL";
  case EBUSY: return "EBUSY";
  default: snprintf(b, sizeof b, "errno%d", errno); return b;
  }
}

/* The edu's vendor:device through a fortified pread (__pread64_chk) of
 * config space. */
static uint32_t id_of(int dev, uint64_t cfg) {
  uint32_t id = 0;
  if (pread(dev, &id, four, cfg) != sizeof id) return 0;
  return id;
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  int c = open("/dev/vfio/vfio", rw_flags);
  int c2 = __open_2("/dev/vfio/vfio", O_RDWR);
  printf("open64_2_api %d\n", c < 0 ? -1 : ioctl(c, VFIO_GET_API_VERSION));
  printf("open_2_api %d\n", c2 < 0 ? -1 : ioctl(c2, VFIO_GET_API_VERSION));
  close(c2);
  int g = open(argv[1], rw_flags);
  if (g < 0 || ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) || ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
    die("group setup");
  int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  if (dev < 0) die("VFIO_GROUP_GET_DEVICE_FD");
  struct vfio_region_info ri = {.argsz = sizeof ri, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("GET_REGION_INFO");

  printf("pread64_chk_id %#x\n", id_of(dev, ri.offset));
  uint32_t id = 0;
  printf("pread_chk_len %zd\n", __pread_chk(dev, &id, sizeof id, ri.offset, sizeof id));
  printf("pread_chk_id %#x\n", id);

  /* A read larger than the buffer the compiler saw aborts, as glibc does. */
  pid_t pid = fork();
  if (pid == 0) {
    char small[2];
    volatile size_t n = 4;
    ssize_t r = pread(dev, small, n, ri.offset);
    _exit(r == 4 ? 0 : 1);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  printf("pread_chk_overflow %s\n", WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT ? "SIGABRT" : "no-abort");

  /* dup2 of the device: the copy serves, and outlives the original. */
  printf("dup2 %d\n", dup2(dev, 100));
  printf("close_original %s\n", err(close(dev)));
  printf("dup2_copy_id %#x\n", id_of(100, ri.offset));
  printf("unset_while_device_open %s\n", err(ioctl(g, VFIO_GROUP_UNSET_CONTAINER)));
  /* dup2 of another file over the last device descriptor releases the
   * device: the group may then leave its container. */
  int null = open("/dev/null", O_RDONLY);
  printf("dup2_over_device %d\n", dup2(null, 100));
  char b[4];
  printf("dup2_over_device_pread %zd\n", pread(100, b, sizeof b, 0));
  printf("unset_after_dup2_over %s\n", err(ioctl(g, VFIO_GROUP_UNSET_CONTAINER)));
  close(null);
  close(100);
  if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) || ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
    die("container setup again");

  /* dup3 with O_CLOEXEC of the group. */
  printf("dup3 %d\n", dup3(g, 101, O_CLOEXEC));
  struct vfio_group_status gs = {.argsz = sizeof gs};
  const char *r = err(ioctl(101, VFIO_GROUP_GET_STATUS, &gs));
  printf("dup3_group_status %s flags=%#x\n", r, gs.flags);
  printf("dup3_cloexec %d\n", fcntl(101, F_GETFD) & FD_CLOEXEC);
  printf("dup3_same_fd %s\n", err(dup3(101, 101, 0)));
  close(101);

  /* close_range: CLOEXEC only marks; a plain one closes and releases. */
  dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  printf("device_again %s\n", err(dev));
  int hi = dup2(dev, 200);
  close(dev);
  printf("close_range_cloexec %s\n", err(close_range(200, 200, CLOSE_RANGE_CLOEXEC)));
  printf("cloexec_marked %d\n", fcntl(200, F_GETFD) & FD_CLOEXEC);
  printf("cloexec_still_serves %#x\n", id_of(200, ri.offset));
  printf("close_range %s\n", err(close_range(hi, ~0U, 0)));
  struct vfio_device_info di = {.argsz = sizeof di};
  printf("closed_range_ioctl %s\n", err(ioctl(200, VFIO_DEVICE_GET_INFO, &di)));
  printf("unset_after_close_range %s\n", err(ioctl(g, VFIO_GROUP_UNSET_CONTAINER)));
  /* The same calls through syscall(2), past libc's wrappers (preload
   * serves them through the same hooks): open, ioctl, dup2, close and
   * close_range of a container. */
  long rc = syscall(SYS_openat, AT_FDCWD, "/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
  printf("raw_open_api %s\n", rc < 0 ? err(-1) : err(ioctl((int)rc, VFIO_GET_API_VERSION)));
  printf("raw_ioctl_type1v2 %ld\n", syscall(SYS_ioctl, rc, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU));
  printf("raw_dup2 %ld\n", syscall(SYS_dup2, rc, 210));
  printf("raw_dup2_copy_type1v2 %d\n", ioctl(210, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU));
  printf("raw_close %s\n", err((int)syscall(SYS_close, rc)));
  printf("raw_closed_ioctl %s\n", err(ioctl((int)rc, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU)));
  printf("raw_close_range %s\n", err((int)syscall(SYS_close_range, 210, 210, 0)));
  printf("raw_closed_range_ioctl %s\n", err(ioctl(210, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU)));
  printf("raw_close_bad %s\n", err((int)syscall(SYS_close, 210)));
  /* Everything else at once: nothing may be left open. */
  printf("close_range_all %s\n", err(close_range(3, ~0U, 0)));
  printf("closed_container_ioctl %s\n", err(ioctl(c, VFIO_GET_API_VERSION)));
  fflush(stdout);
  return 0;
}
