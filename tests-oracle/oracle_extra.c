// Extra questions for the real kernel (run with ../shared/conformance/run-kernel.sh).
// usage: oracle_extra /dev/vfio/<group> <bdf>
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define OUT(name, ...) do { printf("%-40s ", name); printf(__VA_ARGS__); printf("\n"); fflush(stdout); } while (0)
static const char *gp, *bdf;
static int E(int r) { return r < 0 ? errno : 0; }

static void setup(int *c, int *g, int type) {
  *c = open("/dev/vfio/vfio", O_RDWR); *g = open(gp, O_RDWR);
  ioctl(*g, VFIO_GROUP_SET_CONTAINER, c);
  if (type) ioctl(*c, VFIO_SET_IOMMU, type);
}
static void teardown(int c, int g) { ioctl(g, VFIO_GROUP_UNSET_CONTAINER); close(g); close(c); }

int main(int argc, char **argv) {
  gp = argv[1]; bdf = argv[2];
  int c, g, r;
  // nesting type on VT-d
  setup(&c, &g, 0);
  r = ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1_NESTING_IOMMU);
  OUT("set_iommu_nesting", "%d errno=%d", r, r ? errno : 0);
  r = ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU);
  OUT("set_iommu_v1_after_nesting", "%d errno=%d", r, r ? errno : 0);
  for (int e = 1; e <= 11; e++) { char n[64]; snprintf(n, sizeof n, "v1_check_extension_%d", e); OUT(n, "%d", ioctl(c, VFIO_CHECK_EXTENSION, e)); }
  teardown(c, g);
  setup(&c, &g, VFIO_TYPE1v2_IOMMU);
  for (int e = 1; e <= 11; e++) { char n[64]; snprintf(n, sizeof n, "v2_check_extension_%d", e); OUT(n, "%d", ioctl(c, VFIO_CHECK_EXTENSION, e)); }
  r = ioctl(c, VFIO_IOMMU_ENABLE); OUT("container_unknown_ioctl", "errno=%d", E(r));
  r = ioctl(g, VFIO_IOMMU_ENABLE); OUT("group_unknown_ioctl", "errno=%d", E(r));
  int g2 = open(gp, O_RDWR); OUT("group_open_twice", "errno=%d", g2 < 0 ? errno : 0); if (g2 >= 0) close(g2);
  int c2 = open("/dev/vfio/vfio", O_RDWR);
  r = ioctl(g, VFIO_GROUP_SET_CONTAINER, &c2); OUT("set_container_again", "errno=%d", E(r));
  close(c2);
  { struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = 3, .vaddr = 0, .iova = 0x100000, .size = 4096 };
    r = ioctl(c, VFIO_IOMMU_MAP_DMA, &m); OUT("map_null_vaddr", "errno=%d", E(r)); }
  { char buf[64]; struct vfio_iommu_type1_dma_unmap *u = (void *)buf; memset(buf, 0, sizeof buf);
    u->argsz = sizeof buf; u->flags = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP; u->iova = 0x100000; u->size = 4096;
    struct vfio_bitmap *b = (void *)u->data; uint64_t bm = 0; b->pgsize = 4096; b->size = 8; b->data = (void *)&bm;
    r = ioctl(c, VFIO_IOMMU_UNMAP_DMA, u); OUT("unmap_bitmap_not_tracking", "errno=%d", E(r)); }
  int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, bdf);
  OUT("device_fd", "%s", dev >= 0 ? "ok" : strerror(errno));
  int devb = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, bdf);
  OUT("device_fd_twice", "%s errno=%d", devb >= 0 ? "ok" : "fail", devb < 0 ? errno : 0);
  if (devb >= 0) close(devb);
  struct vfio_device_info di = { .argsz = sizeof di };
  r = ioctl(dev, VFIO_DEVICE_GET_INFO, &di);
  OUT("device_info", "%d flags=%#x regions=%u irqs=%u cap_offset=%u argsz=%u", E(r), di.flags, di.num_regions, di.num_irqs, di.cap_offset, di.argsz);
  struct vfio_device_info di2 = { .argsz = 12 };
  r = ioctl(dev, VFIO_DEVICE_GET_INFO, &di2); OUT("device_info_argsz_small", "errno=%d", E(r));
  for (unsigned i = 0; i <= 9; i++) {
    struct vfio_region_info ri = { .argsz = sizeof ri, .index = i };
    r = ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri);
    char n[64]; snprintf(n, sizeof n, "region_info_%u", i);
    OUT(n, "errno=%d flags=%#x size=%#llx offset=%#llx cap_offset=%u argsz=%u", E(r), ri.flags, (unsigned long long)ri.size, (unsigned long long)ri.offset, ri.cap_offset, ri.argsz);
  }
  for (unsigned i = 0; i <= 5; i++) {
    struct vfio_irq_info ii = { .argsz = sizeof ii, .index = i };
    r = ioctl(dev, VFIO_DEVICE_GET_IRQ_INFO, &ii);
    char n[64]; snprintf(n, sizeof n, "irq_info_%u", i);
    OUT(n, "errno=%d flags=%#x count=%u", E(r), ii.flags, ii.count);
  }
  r = ioctl(dev, VFIO_DEVICE_RESET); OUT("device_reset", "errno=%d", E(r));
  r = ioctl(dev, VFIO_IOMMU_MAP_DMA); OUT("device_unknown_ioctl", "errno=%d", E(r));
  unsigned char cfg[256]; memset(cfg, 0xee, sizeof cfg);
  uint64_t cfgoff = (uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40;
  ssize_t n = pread(dev, cfg, 256, cfgoff);
  printf("config_read %zd\n", n);
  for (int i = 0; i < 256; i += 16) { printf("config_%02x ", i); for (int j = 0; j < 16; j++) printf(" %02x", cfg[i + j]); printf("\n"); }
  n = pread(dev, cfg, 4, cfgoff + 256); OUT("config_read_past_end", "%zd errno=%d", n, n < 0 ? errno : 0);
  uint32_t v = 0xffffffff; pwrite(dev, &v, 4, cfgoff + 0x10); v = 0; pread(dev, &v, 4, cfgoff + 0x10);
  OUT("config_bar0_sizing", "%#x", v);
  n = pread(dev, &v, 4, (0ull << 40) + 0x100000); OUT("bar0_read_past_end", "%zd errno=%d", n, n < 0 ? errno : 0);
  n = pread(dev, &v, 4, (0ull << 40) + 0xffffe); OUT("bar0_read_straddle_end", "%zd errno=%d", n, n < 0 ? errno : 0);
  n = pread(dev, &v, 4, (9ull << 40)); OUT("region9_read", "%zd errno=%d", n, n < 0 ? errno : 0);
  n = pread(dev, &v, 4, (1ull << 40)); OUT("bar1_read", "%zd errno=%d", n, n < 0 ? errno : 0);
  n = pread(dev, &v, 4, (8ull << 40)); OUT("vga_read", "%zd errno=%d", n, n < 0 ? errno : 0);
  n = pread(dev, &v, 3, (0ull << 40) + 0x0); OUT("bar0_read_3bytes", "%zd errno=%d", n, n < 0 ? errno : 0);
  n = pread(dev, &v, 1, (0ull << 40) + 0x0); OUT("bar0_read_1byte", "%zd errno=%d v=%#x", n, n < 0 ? errno : 0, v & 0xff);
  uint64_t q = 0; n = pread(dev, &q, 8, (0ull << 40) + 0x0); OUT("bar0_read_8bytes_at_0", "%zd errno=%d v=%#llx", n, n < 0 ? errno : 0, (unsigned long long)q);
  q = 0; n = pread(dev, &q, 8, (0ull << 40) + 0x80); OUT("bar0_read_8bytes_at_80", "%zd errno=%d", n, n < 0 ? errno : 0);
  r = ioctl(g, VFIO_GROUP_UNSET_CONTAINER); OUT("unset_with_device", "errno=%d", E(r));
  close(g);
  int g3 = open(gp, O_RDWR); OUT("group_reopen_while_device_open", "errno=%d", g3 < 0 ? errno : 0); if (g3 >= 0) close(g3);
  close(dev); close(c);
  // device fd before SET_IOMMU
  c = open("/dev/vfio/vfio", O_RDWR); g = open(gp, O_RDWR);
  OUT("group_reopen_after_close", "%s", g >= 0 ? "ok" : strerror(errno));
  r = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, bdf); OUT("device_fd_no_container", "errno=%d", E(r));
  ioctl(g, VFIO_GROUP_SET_CONTAINER, &c);
  r = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, bdf); OUT("device_fd_no_iommu", "errno=%d", E(r));
  int nul = open("/dev/null", O_RDWR);
  int g4c = -1; r = ioctl(g, VFIO_GROUP_UNSET_CONTAINER);
  r = ioctl(g, VFIO_GROUP_SET_CONTAINER, &nul); OUT("set_container_devnull", "errno=%d", E(r));
  g4c = -1; r = ioctl(g, VFIO_GROUP_SET_CONTAINER, &g4c); OUT("set_container_minus1", "errno=%d", E(r));
  g4c = 999; r = ioctl(g, VFIO_GROUP_SET_CONTAINER, &g4c); OUT("set_container_badfd", "errno=%d", E(r));
  r = ioctl(g, VFIO_GROUP_SET_CONTAINER, (void *)8); OUT("set_container_badptr", "errno=%d", E(r));
  r = ioctl(g, VFIO_GROUP_SET_CONTAINER, &c);
  ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
  char longname[5000]; memset(longname, 'a', sizeof longname); longname[4999] = 0;
  r = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, longname); OUT("device_fd_long_name", "errno=%d", E(r));
  r = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, (void *)8); OUT("device_fd_bad_ptr", "errno=%d", E(r));
  // close container fd while group attached: group still works
  close(c);
  struct vfio_group_status st = { .argsz = sizeof st }; ioctl(g, VFIO_GROUP_GET_STATUS, &st);
  OUT("status_after_container_close", "flags=%#x", st.flags);
  int d3 = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, bdf); OUT("device_fd_after_container_close", "%s", d3 >= 0 ? "ok" : strerror(errno)); if (d3 >= 0) close(d3);
  r = ioctl(g, VFIO_GROUP_UNSET_CONTAINER); OUT("unset_after_container_close", "errno=%d", E(r));
  close(g);
  // v1 dirty
  setup(&c, &g, VFIO_TYPE1_IOMMU);
  struct vfio_iommu_type1_dirty_bitmap d = { .argsz = sizeof d, .flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_START };
  r = ioctl(c, VFIO_IOMMU_DIRTY_PAGES, &d); OUT("v1_dirty_start", "errno=%d", E(r));
  d.argsz = 4; r = ioctl(c, VFIO_IOMMU_DIRTY_PAGES, &d); OUT("v1_dirty_argsz_small", "errno=%d", E(r));
  char *b = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); memset(b, 1, 1 << 20);
  struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = 3, .vaddr = (uintptr_t)b, .iova = 0x100000, .size = 0x4000 };
  ioctl(c, VFIO_IOMMU_MAP_DMA, &m);
  struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u, .flags = VFIO_DMA_UNMAP_FLAG_VADDR, .iova = 0x100000, .size = 0x4000 };
  r = ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u); OUT("v1_vaddr_invalidate", "errno=%d size=%#llx", E(r), (unsigned long long)u.size);
  m.flags = VFIO_DMA_MAP_FLAG_VADDR; m.vaddr = (uintptr_t)b + 0x10000;
  r = ioctl(c, VFIO_IOMMU_MAP_DMA, &m); OUT("v1_vaddr_update", "errno=%d", E(r));
  u.flags = 0; u.iova = 0x101000; u.size = 0x1000; r = ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u); OUT("v1_unmap_inside", "errno=%d size=%#llx", E(r), (unsigned long long)u.size);
  u.iova = 0xff000; u.size = 0x2000; r = ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u); OUT("v1_unmap_straddle_start", "errno=%d size=%#llx", E(r), (unsigned long long)u.size);
  teardown(c, g);
  // GET_INFO on v1 and big argsz
  setup(&c, &g, VFIO_TYPE1_IOMMU);
  char ib[256]; struct vfio_iommu_type1_info *info = (void *)ib; memset(ib, 0, sizeof ib); info->argsz = sizeof ib;
  r = ioctl(c, VFIO_IOMMU_GET_INFO, info); OUT("v1_info", "errno=%d flags=%#x argsz=%u cap_offset=%u", E(r), info->flags, info->argsz, info->cap_offset);
  teardown(c, g);
  printf("done\n");
  return 0;
}
