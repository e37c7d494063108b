/* What QEMU checks before it opens a VFIO cdev (iommufd_cdev_getfd): the
 * name under sysfs vfio-dev/, the major:minor in vfio-dev/vfioN/dev, and
 * stat() of /dev/vfio/devices/vfioN, which must be a character device with
 * that number; then it opens the node and binds it to /dev/iommu. Prints
 * one line per answer. With "all", also the other ways to stat a path
 * (lstat, fstatat with a relative path, statx).
 * usage: cdev_stat BDF [all] */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
  const char *bdf = argc > 1 ? argv[1] : "0000:00:03.0";
  char path[300], name[256] = "";
  snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vfio-dev", bdf);
  DIR *d = opendir(path);
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (!strncmp(e->d_name, "vfio", 4)) snprintf(name, sizeof name, "%s", e->d_name);
  if (d) closedir(d);
  printf("sysfs_name %s\n", name[0] ? name : "missing");
  snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vfio-dev/vfio0/dev", bdf);
  unsigned maj = 0, min = 0;
  FILE *f = fopen(path, "r");
  if (!f || fscanf(f, "%u:%u", &maj, &min) != 2) {
    printf("sysfs_dev missing\n");
  } else {
    printf("sysfs_dev %u:%u\n", maj, min);
  }
  if (f) fclose(f);
  struct stat st;
  if (stat("/dev/vfio/devices/vfio0", &st)) {
    printf("stat_vfio0 errno=%s\n", strerror(errno));
  } else {
    printf("stat_vfio0 chr=%d %u:%u same=%d\n", S_ISCHR(st.st_mode), major(st.st_rdev), minor(st.st_rdev),
           st.st_rdev == makedev(maj, min));
  }
  printf("stat_vfio9 %s\n", stat("/dev/vfio/devices/vfio9", &st) ? strerror(errno) : "0");
  if (argc > 2 && !strcmp(argv[2], "fork")) {
    /* fstat of the opened cdev, and stat of its path, in a forked child
     * and in the parent after the fork (preload: after the hand-off to
     * the keeper). */
    int dev = open("/dev/vfio/devices/vfio0", O_RDWR);
    if (dev < 0) {
      printf("open_cdev %s\n", strerror(errno));
      return 1;
    }
    memset(&st, 0, sizeof st);
    int r = fstat(dev, &st);
    printf("fstat_before %d chr=%d %u:%u\n", r, S_ISCHR(st.st_mode), major(st.st_rdev), minor(st.st_rdev));
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
      memset(&st, 0, sizeof st);
      r = fstat(dev, &st);
      printf("fstat_child %d chr=%d %u:%u\n", r, S_ISCHR(st.st_mode), major(st.st_rdev), minor(st.st_rdev));
      memset(&st, 0, sizeof st);
      r = stat("/dev/vfio/devices/vfio0", &st);
      printf("stat_child %d chr=%d %u:%u\n", r, S_ISCHR(st.st_mode), major(st.st_rdev), minor(st.st_rdev));
      printf("stat_child_vfio9 %s\n", stat("/dev/vfio/devices/vfio9", &st) ? strerror(errno) : "0");
      fflush(stdout);
      close(dev);
      _exit(0);
    }
    waitpid(child, NULL, 0);
    memset(&st, 0, sizeof st);
    r = fstat(dev, &st);
    printf("fstat_parent_after %d chr=%d %u:%u\n", r, S_ISCHR(st.st_mode), major(st.st_rdev), minor(st.st_rdev));
    int other = open("/dev/null", O_RDONLY);
    memset(&st, 0, sizeof st);
    r = fstat(other, &st);
    printf("fstat_other %d chr=%d %u:%u\n", r, S_ISCHR(st.st_mode), major(st.st_rdev), minor(st.st_rdev));
    close(dev);
    return 0;
  }
  if (argc > 2 && !strcmp(argv[2], "all")) {
    memset(&st, 0, sizeof st);
    int r = lstat("/dev/vfio/devices/vfio0", &st);
    printf("lstat_vfio0 %d chr=%d %u:%u mode=%o\n", r, S_ISCHR(st.st_mode), major(st.st_rdev), minor(st.st_rdev),
           st.st_mode & 07777);
    memset(&st, 0, sizeof st);
    r = chdir("/") ? -1 : fstatat(AT_FDCWD, "dev/vfio/devices/../devices/vfio0", &st, 0);
    printf("fstatat_relative %d %u:%u\n", r, major(st.st_rdev), minor(st.st_rdev));
    struct statx sx;
    memset(&sx, 0, sizeof sx);
    r = statx(AT_FDCWD, "/dev/vfio/devices/vfio0", 0, STATX_BASIC_STATS, &sx);
    printf("statx_vfio0 %d chr=%d %u:%u\n", r, S_ISCHR(sx.stx_mode), sx.stx_rdev_major, sx.stx_rdev_minor);
    printf("stat_vfio01 %s\n", stat("/dev/vfio/devices/vfio01", &st) ? strerror(errno) : "0");
    printf("stat_bad_buffer %s\n", syscall(4 /* SYS_stat */, "/dev/vfio/devices/vfio0", (void *)8) ? strerror(errno) : "0");
    // Then QEMU opens the node and binds it.
    int dev = open("/dev/vfio/devices/vfio0", O_RDWR);
    int ifd = open("/dev/iommu", O_RDWR);
    struct { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; } bind = {16, 0, ifd, 0};
    printf("open_bind %s\n", dev < 0 || ifd < 0 || ioctl(dev, _IO(';', 118), &bind) ? strerror(errno) : "0");
    close(dev);
    close(ifd);
  }
  return 0;
}
