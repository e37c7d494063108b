// What a VFIO program sees of the host in sysfs under `softvfio run`:
// usage: hostview BDF [MDEV_UUID]
// Prints "key value" lines; tests/hostview.rs compares them with the
// platform and with the host's own /sys.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <linux/vfio.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

static char dev[PATH_MAX];

// The first line of a file, or "ERR<errno>".
static const char *line(const char *path, char *buf, size_t n) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) { snprintf(buf, n, "ERR%d", errno); return buf; }
  ssize_t r = read(fd, buf, n - 1);
  close(fd);
  if (r < 0) { snprintf(buf, n, "ERR%d", errno); return buf; }
  buf[r] = 0;
  char *nl = strchr(buf, '\n');
  if (nl && nl[1] == 0) *nl = 0;
  for (char *p = buf; *p; p++) if (*p == '\n') *p = '|';
  return buf;
}

static void show(const char *key, const char *path) {
  char b[4096];
  printf("%s %s\n", key, line(path, b, sizeof b));
}

static void show_link(const char *key, const char *path) {
  char b[PATH_MAX];
  ssize_t n = readlink(path, b, sizeof b - 1);
  if (n < 0) printf("%s ERR%d\n", key, errno);
  else { b[n] = 0; printf("%s %s\n", key, b); }
}

static void show_real(const char *key, const char *path) {
  char b[PATH_MAX];
  if (!realpath(path, b)) printf("%s ERR%d\n", key, errno);
  else printf("%s %s\n", key, b);
}

// The bytes of the sysfs config file, as hex of the first 8 and the size.
static void show_config(const char *key, const char *path) {
  unsigned char b[4096];
  int fd = open(path, O_RDONLY);
  if (fd < 0) { printf("%s ERR%d\n", key, errno); return; }
  ssize_t n = pread(fd, b, sizeof b, 0);
  close(fd);
  printf("%s %zd", key, n);
  for (int i = 0; i < 8 && i < n; i++) printf(" %02x", b[i]);
  printf("\n");
}

static void *second_thread(void *arg) {
  char p[PATH_MAX + 32], l[256], v[64];
  snprintf(p, sizeof p, "%s/iommu_group", dev);
  ssize_t n = readlink(p, l, sizeof l - 1);
  l[n < 0 ? 0 : n] = 0;
  snprintf(p, sizeof p, "%s/vendor", dev);
  line(p, v, sizeof v);
  snprintf((char *)arg, 512, "%s %s", l, v);
  return NULL;
}

int main(int argc, char **argv) {
  const char *bdf = argv[1];
  char p[PATH_MAX + 64];
  snprintf(dev, sizeof dev, "/sys/bus/pci/devices/%s", bdf);
  struct stat st;
  printf("lstat_dev_is_link %d\n", lstat(dev, &st) == 0 && S_ISLNK(st.st_mode));
  printf("stat_dev_is_dir %d\n", stat(dev, &st) == 0 && S_ISDIR(st.st_mode));
  show_real("realpath_dev", dev);
  snprintf(p, sizeof p, "%s/iommu_group", dev);
  show_link("iommu_group", p);
  show_real("iommu_group_real", p);
  char grp[PATH_MAX] = "/none";
  if (!realpath(p, grp)) strcpy(grp, "/none");
  const char *gid = strrchr(grp, '/') + 1;
  printf("group %s\n", gid);
  const char *links[] = {"driver", "iommu", "subsystem"};
  for (int i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s/%s", dev, links[i]);
    show_link(links[i], p);
  }
  const char *files[] = {"vendor", "device", "subsystem_vendor", "subsystem_device", "class",
                         "revision", "irq", "numa_node", "resource", "vfio-dev/vfio0/dev"};
  for (int i = 0; i < 10; i++) {
    snprintf(p, sizeof p, "%s/%s", dev, files[i]);
    show(files[i], p);
  }
  snprintf(p, sizeof p, "%s/config", dev);
  printf("config_mode %o\n", stat(p, &st) == 0 ? st.st_mode & 07777 : 0);
  printf("config_size %lld\n", (long long)st.st_size);
  show_config("config", p);
  snprintf(p, sizeof p, "/sys/kernel/iommu_groups/%s/reserved_regions", gid);
  show("reserved_regions", p);
  snprintf(p, sizeof p, "/sys/kernel/iommu_groups/%s/type", gid);
  show("group_type", p);
  snprintf(p, sizeof p, "/sys/kernel/iommu_groups/%s/devices/%s", gid, bdf);
  show_real("group_device_real", p);
  snprintf(p, sizeof p, "/sys/bus/pci/drivers/vfio-pci/%s", bdf);
  show_real("driver_device_real", p);
  show("dma_entry_limit", "/sys/module/vfio_iommu_type1/parameters/dma_entry_limit");
  show("disable_hugepages", "/sys/module/vfio_iommu_type1/parameters/disable_hugepages");
  show("allow_unsafe_interrupts", "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts");
  printf("module_vfio %d\n", stat("/sys/module/vfio", &st) == 0 && S_ISDIR(st.st_mode));
  printf("module_vfio_pci %d\n", stat("/sys/module/vfio_pci", &st) == 0 && S_ISDIR(st.st_mode));
  show("dmar_cap", "/sys/class/iommu/dmar0/intel-iommu/cap");
  show("dmar_ecap", "/sys/class/iommu/dmar0/intel-iommu/ecap");
  show("dmar_address", "/sys/class/iommu/dmar0/intel-iommu/address");

  // Every PCI device the program sees, and where its link points.
  DIR *d = opendir("/sys/bus/pci/devices");
  struct dirent *e;
  char names[4096] = "";
  int seen = 0;
  while (d && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    if (!strcmp(e->d_name, bdf)) seen = 1;
    snprintf(p, sizeof p, "/sys/bus/pci/devices/%s", e->d_name);
    char key[300];
    snprintf(key, sizeof key, "link:%s", e->d_name);
    show_link(key, p);
    strncat(names, e->d_name, sizeof names - strlen(names) - 2);
    strcat(names, ",");
  }
  if (d) closedir(d);
  printf("listed_bdf %d\n", seen);

  // From another thread.
  char res[512] = "";
  pthread_t t;
  pthread_create(&t, NULL, second_thread, res);
  pthread_join(t, NULL);
  printf("thread %s\n", res);

  // The config file follows the device: enable memory decoding through
  // the VFIO device and read sysfs again.
  int c = open("/dev/vfio/vfio", O_RDWR);
  snprintf(p, sizeof p, "/dev/vfio/%s", gid);
  int g = open(p, O_RDWR);
  ioctl(g, VFIO_GROUP_SET_CONTAINER, &c);
  ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
  int df = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, bdf);
  unsigned short cmd = 0;
  off_t cfg = (off_t)VFIO_PCI_CONFIG_REGION_INDEX << 40;
  pread(df, &cmd, 2, cfg + 4);
  unsigned short on = cmd ^ 0x2;  // toggle PCI_COMMAND_MEMORY
  printf("config_write %zd\n", pwrite(df, &on, 2, cfg + 4));
  snprintf(p, sizeof p, "%s/config", dev);
  show_config("config_after", p);
  FILE *f = fopen(p, "rb");
  unsigned char cb[8] = {0};
  size_t got = f ? fread(cb, 1, sizeof cb, f) : 0;
  if (f) fclose(f);
  printf("config_after_fopen %zu %02x %02x\n", got, cb[4], cb[5]);
  pwrite(df, &cmd, 2, cfg + 4);
  close(df); close(g); close(c);

  if (argc > 2) {
    const char *uuid = argv[2];
    char m[PATH_MAX];
    snprintf(m, sizeof m, "/sys/bus/mdev/devices/%s", uuid);
    show_real("mdev_real", m);
    snprintf(p, sizeof p, "%s/iommu_group", m);
    show_link("mdev_iommu_group", p);
    show_real("mdev_group_real", p);
    snprintf(p, sizeof p, "%s/mdev_type/device_api", m);
    show("mdev_device_api", p);
    snprintf(p, sizeof p, "%s/mdev_type/name", m);
    show("mdev_type_name", p);
  }
  // A host path outside the platform (HOSTVIEW_HOST_DEV: a host device's
  // directory, reached through a covered directory's bind mount).
  const char *host = getenv("HOSTVIEW_HOST_DEV");
  if (host) {
    snprintf(p, sizeof p, "%s/vendor", host);
    show("host_vendor", p);
    snprintf(p, sizeof p, "%s/driver", host);
    show_link("host_driver", p);
    DIR *hd = opendir(host);
    int n = 0;
    while (hd && readdir(hd)) n++;
    if (hd) closedir(hd);
    printf("host_entries %d\n", n);
  }
  printf("done 1\n");
  return 0;
}
