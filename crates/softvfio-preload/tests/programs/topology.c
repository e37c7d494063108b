/* Prints what a configured platform shows: dma_avail, the IOVA ranges and
 * the address width answers, with two groups in one container.
 * usage: topology GROUP_A BDF_A GROUP_B BDF_B */
#include "vfio_common.h"

int main(int argc, char **argv) {
  if (argc < 5) { fprintf(stderr, "usage\n"); return 2; }
  int g;
  int c = open_container(argv[1], &g);
  int g2 = open(argv[3], O_RDWR);
  if (g2 < 0) die("open second group");
  if (ioctl(g2, VFIO_GROUP_SET_CONTAINER, &c)) die("second VFIO_GROUP_SET_CONTAINER");
  int d1 = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  int d2 = ioctl(g2, VFIO_GROUP_GET_DEVICE_FD, argv[4]);
  printf("devices %s\n", d1 >= 0 && d2 >= 0 ? "both" : "missing");
  char buf[4096] = {0};
  struct vfio_iommu_type1_info *info = (void *)buf;
  info->argsz = sizeof buf;
  if (ioctl(c, VFIO_IOMMU_GET_INFO, info)) die("VFIO_IOMMU_GET_INFO");
  for (uint32_t off = info->cap_offset; off;) {
    struct vfio_info_cap_header *h = (void *)(buf + off);
    if (h->id == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL)
      printf("dma_avail %u\n", ((struct vfio_iommu_type1_info_dma_avail *)h)->avail);
    if (h->id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
      struct vfio_iommu_type1_info_cap_iova_range *r = (void *)h;
      printf("iova_ranges %u\n", r->nr_iovas);
      printf("iova_end %#llx\n", (unsigned long long)r->iova_ranges[r->nr_iovas - 1].end);
    }
    off = h->next;
  }
  char *b = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(b, 1, 16 * PG);
  printf("map_above_2^39 %d\n", map(c, 1ull << 40, b, PG));
  int full = 0;
  for (int i = 1; i < 16; i++) {
    int r = map(c, 0x100000 + i * 0x10000, b + i * PG, PG);
    if (r) { full = r; printf("map_fails_at %d %s\n", i + 1, r == ENOSPC ? "ENOSPC" : strerror(r)); break; }
  }
  if (!full) printf("map_fails_at never\n");
  close(d1); close(d2); close(g2); close(g); close(c);
  return 0;
}
