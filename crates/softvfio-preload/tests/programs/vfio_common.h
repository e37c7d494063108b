/* Small helpers shared by the test programs. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/vfio.h>

#define PG 4096ul
#define RW (VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE)

static inline void die(const char *what) {
  fprintf(stderr, "%s: %s\n", what, strerror(errno));
  exit(1);
}

static inline int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) die("opendir /proc/self/fd");
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1; /* the directory's own descriptor */
}

static inline int map(int c, uint64_t iova, void *vaddr, uint64_t size) {
  struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = RW,
    .vaddr = (uint64_t)(uintptr_t)vaddr, .iova = iova, .size = size };
  return ioctl(c, VFIO_IOMMU_MAP_DMA, &m) ? errno : 0;
}

static inline int unmap(int c, uint64_t iova, uint64_t size) {
  struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u, .iova = iova, .size = size };
  return ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u) ? errno : 0;
}

/* A container with `group` attached and type1v2 set; the group fd in *g. */
static inline int open_container(const char *group, int *g) {
  int c = open("/dev/vfio/vfio", O_RDWR);
  if (c < 0) die("open /dev/vfio/vfio");
  *g = open(group, O_RDWR);
  if (*g < 0) die("open group");
  if (ioctl(*g, VFIO_GROUP_SET_CONTAINER, &c)) die("VFIO_GROUP_SET_CONTAINER");
  if (ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("VFIO_SET_IOMMU");
  return c;
}
