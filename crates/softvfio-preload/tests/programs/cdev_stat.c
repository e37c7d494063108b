/* What QEMU checks before it opens a VFIO cdev: stat() of
 * /dev/vfio/devices/vfioN must be a character device whose major:minor is
 * the one in sysfs vfio-dev/vfioN/dev. Prints one line per answer.
 * usage: cdev_stat BDF */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

int main(int argc, char **argv) {
  const char *bdf = argc > 1 ? argv[1] : "0000:00:03.0";
  char path[256];
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
  return 0;
}
