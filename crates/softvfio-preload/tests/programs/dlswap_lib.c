/* A plugin that maps and unmaps DMA for dlswap.c. The test builds this one
 * source twice, as liba.c and libb.c (same code, same layout), so that the
 * two objects' functions lie at the same offsets: loaded at the same base,
 * their return addresses are the same numbers. */
#include <linux/vfio.h>
#include <stdint.h>
#include <sys/ioctl.h>

__attribute__((noinline)) int plugin_map(int container, void *buf, uint64_t iova, uint64_t len) {
  struct vfio_iommu_type1_dma_map m = {.argsz = sizeof m, .flags = 3,
    .vaddr = (uintptr_t)buf, .iova = iova, .size = len};
  return ioctl(container, VFIO_IOMMU_MAP_DMA, &m);
}

__attribute__((noinline)) int plugin_unmap(int container, uint64_t iova, uint64_t len) {
  struct vfio_iommu_type1_dma_unmap u = {.argsz = sizeof u, .iova = iova, .size = len};
  return ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u);
}
