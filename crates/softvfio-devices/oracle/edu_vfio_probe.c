#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/eventfd.h>
#include <linux/vfio.h>

static int dev, container, group;
static uint64_t off[9];
#define CFG off[7]
#define BAR off[0]
static const char *E(int r) { static char b[32]; if (r >= 0) { snprintf(b, sizeof b, "%d", r); return b; } return strerror(errno); }
static void rd(const char *what, uint64_t base, uint64_t o, int n) {
  unsigned char b[16]; memset(b, 0xaa, 16);
  ssize_t r = pread(dev, b, n, base + o);
  printf("%-28s off=%#llx n=%d r=%s val=", what, (unsigned long long)o, n, r < 0 ? strerror(errno) : E(r));
  for (int i = n - 1; i >= 0; i--) printf("%02x", b[i]);
  printf("\n");
}
static int wr(uint64_t base, uint64_t o, uint64_t v, int n) { ssize_t r = pwrite(dev, &v, n, base + o); if (r < 0) return -errno; return r; }
static uint32_t r32(uint64_t base, uint64_t o) { uint32_t v = 0xdeadbeef; pread(dev, &v, 4, base + o); return v; }
static void evt(const char *what, int fd) { uint64_t c = 0; ssize_t r = read(fd, &c, 8); printf("%-28s %s count=%llu\n", what, r < 0 ? strerror(errno) : "ok", (unsigned long long)c); }

int main(int argc, char **argv) {
  container = open("/dev/vfio/vfio", O_RDWR);
  group = open(argv[1], O_RDWR);
  ioctl(group, VFIO_GROUP_SET_CONTAINER, &container);
  ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
  dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  struct vfio_device_info di = { .argsz = sizeof di };
  int r = ioctl(dev, VFIO_DEVICE_GET_INFO, &di);
  printf("device_info r=%d flags=%#x regions=%u irqs=%u\n", r, di.flags, di.num_regions, di.num_irqs);
  for (unsigned i = 0; i < 10; i++) {
    struct vfio_region_info ri = { .argsz = sizeof ri, .index = i };
    r = ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri);
    printf("region %u r=%s flags=%#x size=%#llx off=%#llx argsz=%u cap_off=%u\n", i, r ? strerror(errno) : "0", ri.flags, (unsigned long long)ri.size, (unsigned long long)ri.offset, ri.argsz, ri.cap_offset);
    if (i < 9) off[i] = ri.offset;
  }
  for (unsigned i = 0; i < 6; i++) {
    struct vfio_irq_info ii = { .argsz = sizeof ii, .index = i };
    r = ioctl(dev, VFIO_DEVICE_GET_IRQ_INFO, &ii);
    printf("irq %u r=%s flags=%#x count=%u\n", i, r ? strerror(errno) : "0", ii.flags, ii.count);
  }
  printf("config:");
  for (int i = 0; i < 256; i += 4) { if (i % 32 == 0) printf("\n %02x:", i); printf(" %08x", r32(CFG, i)); }
  printf("\n");
  rd("cfg_bar0", CFG, 0x10, 4);
  wr(CFG, 0x10, 0xffffffff, 4); rd("cfg_bar0_sized", CFG, 0x10, 4);
  wr(CFG, 0x14, 0xffffffff, 4); rd("cfg_bar1_sized", CFG, 0x14, 4);
  wr(CFG, 0x30, 0xffffffff, 4); rd("cfg_rom_sized", CFG, 0x30, 4);
  wr(CFG, 0x10, 0x12345678, 4); rd("cfg_bar0_write", CFG, 0x10, 4);
  wr(CFG, 0x10, 0xfea00000, 4);
  rd("cfg_byte_1", CFG, 1, 1); rd("cfg_word_2", CFG, 2, 2); rd("cfg_unal_1_4", CFG, 1, 4); rd("cfg_8", CFG, 0, 8);
  rd("cfg_252_8", CFG, 252, 8); rd("cfg_254_2", CFG, 254, 2); rd("cfg_256_4", CFG, 256, 4);
  rd("cfg_255_4", CFG, 255, 4);
  printf("cfg_w_252_8 r=%d\n", wr(CFG, 252, 0, 8));
  rd("cfg_cmd", CFG, 4, 2);
  wr(CFG, 4, 0xffff, 2); rd("cfg_cmd_ffff", CFG, 4, 2); rd("cfg_status", CFG, 6, 2);
  wr(CFG, 4, 0x0000, 2); rd("cfg_cmd_0", CFG, 4, 2);
  rd("bar_mem_off", BAR, 0, 4);
  printf("bar_mem_off_write r=%d\n", wr(BAR, 4, 1, 4));
  wr(CFG, 4, 0x0103, 2);
  wr(CFG, 0x3c, 0xff, 1); rd("cfg_intline", CFG, 0x3c, 4);
  wr(CFG, 0x0c, 0xffffffff, 4); rd("cfg_0c", CFG, 0x0c, 4);
  wr(CFG, 0x42, 0xffff, 2); rd("cfg_msi_flags_ffff", CFG, 0x40, 4);
  wr(CFG, 0x42, 0x0000, 2); rd("cfg_msi_flags_0", CFG, 0x40, 4);
  wr(CFG, 0x42, 0x0080, 2);
  wr(CFG, 0x44, 0xffffffff, 4); rd("cfg_msi_addr", CFG, 0x44, 4); wr(CFG, 0x44, 0, 4);
  wr(CFG, 0x4c, 0xffffffff, 4); rd("cfg_msi_data", CFG, 0x4c, 4); wr(CFG, 0x4c, 0, 4);
  wr(CFG, 0x50, 0x12345678, 4); rd("cfg_50", CFG, 0x50, 4); wr(CFG, 0x50, 0, 4);
  wr(CFG, 0x40, 0xffffffff, 4); rd("cfg_40_after_ff", CFG, 0x40, 4); wr(CFG, 0x40, 0x00800005, 4); rd("cfg_40_restored", CFG, 0x40, 4);
  wr(CFG, 0x08, 0xffffffff, 4); rd("cfg_08", CFG, 0x08, 4);
  wr(CFG, 0x00, 0xffffffff, 4); rd("cfg_00", CFG, 0x00, 4);
  wr(CFG, 0x06, 0xffff, 2); rd("cfg_status_w", CFG, 0x06, 2);
  wr(CFG, 0x3d, 0x0, 1); rd("cfg_pin", CFG, 0x3c, 4);
  wr(CFG, 0x34, 0x0, 1); rd("cfg_cap", CFG, 0x34, 4);
  wr(CFG, 0x2c, 0xffffffff, 4); rd("cfg_subsys", CFG, 0x2c, 4);
  wr(CFG, 0x30, 0x0, 4);
  // BAR0 accesses
  for (int o = 0; o < 8; o++) { char w[32]; snprintf(w, 32, "bar_1_%d", o); rd(w, BAR, o, 1); }
  rd("bar_2_0", BAR, 0, 2); rd("bar_2_2", BAR, 2, 2); rd("bar_4_0", BAR, 0, 4); rd("bar_4_2", BAR, 2, 4); rd("bar_8_0", BAR, 0, 8);
  rd("bar_3_0", BAR, 0, 3); rd("bar_4_1", BAR, 1, 4);
  rd("bar_4_c", BAR, 0xc, 4); rd("bar_4_24", BAR, 0x24, 4); rd("bar_4_60", BAR, 0x60, 4); rd("bar_4_7c", BAR, 0x7c, 4);
  rd("bar_4_a0", BAR, 0xa0, 4); rd("bar_4_40000", BAR, 0x40000, 4);
  wr(BAR, 0x80, 0x1122334455667788ull, 8); rd("bar_src_8", BAR, 0x80, 8); rd("bar_src_4", BAR, 0x80, 4); rd("bar_src_84", BAR, 0x84, 4);
  wr(BAR, 0x80, 0xaabbccdd, 4); rd("bar_src_after4", BAR, 0x80, 8);
  wr(BAR, 0x84, 0x99, 4); rd("bar_src_after84", BAR, 0x80, 8);
  wr(BAR, 0x80, 0x1234, 2); rd("bar_src_after2", BAR, 0x80, 8);
  wr(BAR, 0x80, 0, 4);
  rd("bar_2_80", BAR, 0x80, 2); rd("bar_1_80", BAR, 0x80, 1);
  rd("bar_end_8", BAR, 0xffffc, 8); rd("bar_end_1", BAR, 0xfffff, 1); rd("bar_past", BAR, 0x100000, 4);
  printf("bar_past_write r=%d\n", wr(BAR, 0x100000, 0, 4));
  rd("bar1", off[1], 0, 4); rd("rom", off[6], 0, 4); rd("vga", off[8], 0, 4);
  rd("bar_98", BAR, 0x98, 4); rd("bar_90", BAR, 0x90, 4);
  // liveness
  wr(BAR, 4, 0x12345678, 4); rd("live", BAR, 4, 4);
  wr(BAR, 4, 0x1234, 2); rd("live_after_2", BAR, 4, 4);
  // factorial
  wr(BAR, 8, 5, 4); usleep(10000); rd("fact5", BAR, 8, 4); rd("status", BAR, 0x20, 4);
  wr(BAR, 0x20, 0xff, 4); rd("status_ff", BAR, 0x20, 4); wr(BAR, 0x20, 0, 4);
  wr(BAR, 8, 13, 4); usleep(10000); rd("fact13", BAR, 8, 4);
  wr(BAR, 8, 0, 4); usleep(10000); rd("fact0", BAR, 8, 4);
  wr(BAR, 8, 40, 4); usleep(10000); rd("fact40", BAR, 8, 4);
  // interrupts
  int efd = eventfd(0, EFD_NONBLOCK);
  char buf[sizeof(struct vfio_irq_set) + 4];
  struct vfio_irq_set *is = (void *)buf;
  is->argsz = sizeof buf; is->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER; is->index = 0; is->start = 0; is->count = 1;
  memcpy(is->data, &efd, 4);
  printf("intx_set r=%s\n", E(ioctl(dev, VFIO_DEVICE_SET_IRQS, is)));
  rd("cfg_cmd_intx", CFG, 4, 2); rd("cfg_status_intx", CFG, 6, 2);
  wr(BAR, 0x60, 0x5, 4); usleep(10000); evt("intx_raise", efd);
  rd("irq_status", BAR, 0x24, 4); rd("cfg_status_asserted", CFG, 6, 2); rd("cfg_cmd_asserted", CFG, 4, 2);
  wr(BAR, 0x60, 0x10, 4); usleep(10000); evt("intx_raise2", efd);
  wr(BAR, 0x64, 0x15, 4); rd("irq_status_acked", BAR, 0x24, 4);
  wr(BAR, 0x60, 0x1, 4); usleep(10000); evt("intx_raise_masked", efd);
  struct vfio_irq_set um = { .argsz = sizeof um, .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, .index = 0, .start = 0, .count = 1 };
  printf("intx_unmask r=%s\n", E(ioctl(dev, VFIO_DEVICE_SET_IRQS, &um))); usleep(10000); evt("intx_after_unmask", efd);
  wr(BAR, 0x64, 0xffffffff, 4);
  ioctl(dev, VFIO_DEVICE_SET_IRQS, &um);
  wr(BAR, 0x20, 0x80, 4); wr(BAR, 8, 4, 4); usleep(10000); evt("intx_fact", efd); rd("irq_status_fact", BAR, 0x24, 4); rd("fact4", BAR, 8, 4); rd("status_fact", BAR, 0x20, 4);
  wr(BAR, 0x64, 0xffffffff, 4); wr(BAR, 0x20, 0, 4);
  ioctl(dev, VFIO_DEVICE_SET_IRQS, &um);
  is->flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER; is->count = 0; is->argsz = sizeof(struct vfio_irq_set);
  printf("intx_disable r=%s\n", E(ioctl(dev, VFIO_DEVICE_SET_IRQS, is)));
  int mfd = eventfd(0, EFD_NONBLOCK);
  is->argsz = sizeof buf; is->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER; is->index = 1; is->count = 1; memcpy(is->data, &mfd, 4);
  printf("msi_set r=%s\n", E(ioctl(dev, VFIO_DEVICE_SET_IRQS, is)));
  rd("cfg_msi_after_set", CFG, 0x40, 4); rd("cfg_cmd_msi", CFG, 4, 2);
  wr(CFG, 0x42, 0x0081, 2); rd("cfg_msi_enable_w", CFG, 0x40, 4);
  wr(BAR, 0x60, 0x2, 4); usleep(10000); evt("msi_raise", mfd);
  wr(BAR, 0x60, 0x2, 4); usleep(10000); evt("msi_raise_again", mfd);
  wr(BAR, 0x64, 0x2, 4);
  wr(CFG, 0x42, 0x0080, 2); rd("cfg_msi_disable_w", CFG, 0x40, 4);
  wr(BAR, 0x60, 0x2, 4); usleep(10000); evt("msi_raise_cfgdis", mfd); wr(BAR, 0x64, 0x2, 4);
  is->flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER; is->count = 0; is->argsz = sizeof(struct vfio_irq_set);
  printf("msi_disable r=%s\n", E(ioctl(dev, VFIO_DEVICE_SET_IRQS, is)));
  rd("cfg_msi_after_dis", CFG, 0x40, 4);
  is->index = 3; printf("err_set r=%s\n", E(ioctl(dev, VFIO_DEVICE_SET_IRQS, is)));
  // reset
  wr(BAR, 4, 0x0, 4); wr(BAR, 0x80, 0x1000, 8); wr(CFG, 4, 0x0107, 2);
  printf("reset r=%s\n", E(ioctl(dev, VFIO_DEVICE_RESET)));
  rd("live_after_reset", BAR, 4, 4); rd("src_after_reset", BAR, 0x80, 8); rd("cmd_after_reset", CFG, 4, 2);
  close(dev);
  dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  rd("cmd_after_reopen", CFG, 4, 2); rd("live_after_reopen", BAR, 4, 4); rd("src_after_reopen", BAR, 0x80, 8);
  printf("done\n");
  return 0;
}
