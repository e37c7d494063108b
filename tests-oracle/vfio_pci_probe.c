// vfio_pci_probe: drives the vfio-pci device uAPI (device info, regions,
// irqs, SET_IRQS, interrupt delivery, config space virtualization, resets,
// device features, ioeventfds, region read/write) through a fixed list of
// cases against QEMU's "edu" device and prints one line per observation:
// "<case> <result>". Run it against the real kernel (run-kernel.sh: Linux
// 6.1, edu behind an emulated VT-d, bound to vfio-pci) and against any other
// implementation of the same uAPI; diff the outputs.
//
// usage: vfio_pci_probe /dev/vfio/<group> <pci-bdf-of-edu>
//
// Interrupt counts are read from non-blocking eventfds after a wait: when an
// event is expected the probe polls up to EV_WAIT_MS and then lets
// EV_SETTLE_MS pass so that a late second signal would be counted too; when
// none is expected it waits the full EV_WAIT_MS. The lines whose names
// contain "_events" (and "ioeventfd_write_landed", which waits for a
// deferred write) are the timing-sensitive ones: they depend on the device
// model's interrupt (or the kernel's eventfd worker) arriving within that
// time, which it does by a wide margin even under TCG.
//
// Edu (QEMU docs/specs/edu.rst): BAR0 0x00 id, 0x04 liveness (reads the
// inverse of the last write), 0x08 factorial, 0x20 status (bit 0 computing,
// bit 7 raise an interrupt when the factorial is done), 0x24 interrupt
// status, 0x60 raise (ORs into the status, asserts INTx or sends MSI), 0x64
// acknowledge (clears bits; INTx is deasserted when none is left), 0x80..0x98
// DMA (command bit 2: interrupt 0x100 on completion).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

// Older headers may lack these (values from the uAPI).
#ifndef VFIO_DEVICE_FEATURE_PCI_VF_TOKEN
#define VFIO_DEVICE_FEATURE_PCI_VF_TOKEN 0
#endif
#ifndef VFIO_DEVICE_FEATURE_MIGRATION
#define VFIO_DEVICE_FEATURE_MIGRATION 1
#endif
#ifndef VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE
#define VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE 2
#endif
#ifndef VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
#define VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY 3
#endif
#ifndef VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP
#define VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP 4
#endif
#ifndef VFIO_DEVICE_FEATURE_LOW_POWER_EXIT
#define VFIO_DEVICE_FEATURE_LOW_POWER_EXIT 5
#endif

#define offsetofend(T, m) (offsetof(T, m) + sizeof(((T *)0)->m))

#define EV_WAIT_MS 400
#define EV_SETTLE_MS 30

static const char *group_path, *bdf;
static int container, group, dev;
static uint64_t cfg_off, bar0_off, region_off[16];

static const char *ename(int e) {
  switch (e) {
  case 0: return "0";
  case EINVAL: return "EINVAL";
  case EEXIST: return "EEXIST";
  case EFAULT: return "EFAULT";
  case ENOMEM: return "ENOMEM";
  case ENOSPC: return "ENOSPC";
  case EPERM: return "EPERM";
  case EBUSY: return "EBUSY";
  case ENOTTY: return "ENOTTY";
  case ENODEV: return "ENODEV";
  case ENOENT: return "ENOENT";
  case E2BIG: return "E2BIG";
  case EACCES: return "EACCES";
  case ERANGE: return "ERANGE";
  case EOVERFLOW: return "EOVERFLOW";
  case EBADF: return "EBADF";
  case EIO: return "EIO";
  case ETIMEDOUT: return "ETIMEDOUT";
  case EAGAIN: return "EAGAIN";
  case ENXIO: return "ENXIO";
  case EOPNOTSUPP: return "EOPNOTSUPP";
  case ESRCH: return "ESRCH";
  default: { static char b[32]; snprintf(b, sizeof b, "errno%d", e); return b; }
  }
}

#define OUT(name, ...) do { printf("%-44s ", name); printf(__VA_ARGS__); printf("\n"); fflush(stdout); } while (0)

static void msleep(int ms) { usleep(ms * 1000); }

// ---------- setup ----------

static void open_all(void) {
  container = open("/dev/vfio/vfio", O_RDWR);
  if (container < 0) { perror("open container"); exit(1); }
  group = open(group_path, O_RDWR);
  if (group < 0) { perror("open group"); exit(1); }
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) { perror("set container"); exit(1); }
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) { perror("set iommu"); exit(1); }
}

static int open_device(void) {
  int d = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
  if (d < 0) { perror("get device fd"); exit(1); }
  return d;
}

static void learn_offsets(void) {
  for (unsigned i = 0; i < VFIO_PCI_NUM_REGIONS; i++) {
    struct vfio_region_info ri = { .argsz = sizeof ri, .index = i };
    region_off[i] = ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri) ? (uint64_t)i << 40 : ri.offset;
  }
  cfg_off = region_off[VFIO_PCI_CONFIG_REGION_INDEX];
  bar0_off = region_off[VFIO_PCI_BAR0_REGION_INDEX];
}

// ---------- config space and BAR0 access ----------

static uint32_t cfg_rd(unsigned off, int size) {
  uint32_t v = 0;
  if (pread(dev, &v, size, cfg_off + off) != size) return 0xdeadbeef;
  return v;
}
static int cfg_wr(unsigned off, int size, uint32_t v) {
  return pwrite(dev, &v, size, cfg_off + off) == size ? 0 : errno;
}
static uint32_t rd32(unsigned off) {
  uint32_t v = 0;
  if (pread(dev, &v, 4, bar0_off + off) != 4) return 0xdeadbeef;
  return v;
}
static void wr32(unsigned off, uint32_t v) {
  if (pwrite(dev, &v, 4, bar0_off + off) != 4) fprintf(stderr, "bar0 write %#x: %s\n", off, strerror(errno));
}
static void wr64(unsigned off, uint64_t v) {
  if (pwrite(dev, &v, 8, bar0_off + off) != 8) fprintf(stderr, "bar0 write64 %#x: %s\n", off, strerror(errno));
}
static void edu_raise(uint32_t bits) { wr32(0x60, bits); }
static void edu_ack(uint32_t bits) { wr32(0x64, bits); }
static void cmd_set(uint16_t set, uint16_t clear) {
  uint16_t c = (uint16_t)cfg_rd(4, 2);
  c = (uint16_t)((c | set) & ~clear);
  cfg_wr(4, 2, c);
}

// Reads BAR0's id through an mmap of the region; a SIGBUS is reported, not fatal.
static sigjmp_buf sigbus_jmp;
static void on_sigbus(int sig) { (void)sig; siglongjmp(sigbus_jmp, 1); }
static const char *mmap_read_bar0(void) {
  static char res[64];
  long pg = sysconf(_SC_PAGESIZE);
  void *p = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar0_off);
  if (p == MAP_FAILED) { snprintf(res, sizeof res, "%s", ename(errno)); return res; }
  struct sigaction sa = { .sa_handler = on_sigbus }, old;
  sigaction(SIGBUS, &sa, &old);
  if (sigsetjmp(sigbus_jmp, 1)) snprintf(res, sizeof res, "SIGBUS");
  else snprintf(res, sizeof res, "0 id=%#x", *(volatile uint32_t *)p);
  sigaction(SIGBUS, &old, NULL);
  munmap(p, pg);
  return res;
}

// ---------- eventfds ----------

static int efd_new(void) {
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) { perror("eventfd"); exit(1); }
  return fd;
}
static uint64_t ev_read(int fd) {
  uint64_t v = 0;
  if (read(fd, &v, 8) != 8) return 0;
  return v;
}
// Waits for an event (up to EV_WAIT_MS), lets late ones arrive, returns the count.
static uint64_t ev_wait(int fd) {
  struct pollfd p = { .fd = fd, .events = POLLIN };
  if (poll(&p, 1, EV_WAIT_MS) > 0) msleep(EV_SETTLE_MS);
  return ev_read(fd);
}
// Counts of two eventfds after one wait.
static void ev_wait2(int a, int b, uint64_t *ca, uint64_t *cb) {
  struct pollfd p[2] = { { .fd = a, .events = POLLIN }, { .fd = b, .events = POLLIN } };
  if (poll(p, 2, EV_WAIT_MS) > 0) msleep(EV_SETTLE_MS);
  *ca = ev_read(a);
  *cb = ev_read(b);
}

// ---------- SET_IRQS ----------

#define IRQ_SET_MINSZ offsetofend(struct vfio_irq_set, count)

// SET_IRQS with `len` bytes of data; argsz = minsz + len unless argsz != 0.
static int set_irqs_raw(uint32_t argsz, uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
                        const void *data, size_t len) {
  char buf[sizeof(struct vfio_irq_set) + 256];
  struct vfio_irq_set *s = (void *)buf;
  memset(buf, 0, sizeof buf);
  s->argsz = argsz ? argsz : (uint32_t)(IRQ_SET_MINSZ + len);
  s->flags = flags; s->index = index; s->start = start; s->count = count;
  if (len) memcpy(s->data, data, len);
  return ioctl(dev, VFIO_DEVICE_SET_IRQS, s) ? errno : 0;
}
static int irq_none(uint32_t action, uint32_t index, uint32_t start, uint32_t count) {
  return set_irqs_raw(0, VFIO_IRQ_SET_DATA_NONE | action, index, start, count, NULL, 0);
}
static int irq_bool(uint32_t action, uint32_t index, uint32_t start, uint32_t count, uint8_t b) {
  return set_irqs_raw(0, VFIO_IRQ_SET_DATA_BOOL | action, index, start, count, &b, count ? 1 : 0);
}
static int irq_fd(uint32_t action, uint32_t index, uint32_t start, int32_t fd) {
  return set_irqs_raw(0, VFIO_IRQ_SET_DATA_EVENTFD | action, index, start, 1, &fd, 4);
}
#define TRIG VFIO_IRQ_SET_ACTION_TRIGGER
#define MASK VFIO_IRQ_SET_ACTION_MASK
#define UNMASK VFIO_IRQ_SET_ACTION_UNMASK
#define INTX VFIO_PCI_INTX_IRQ_INDEX
#define MSI VFIO_PCI_MSI_IRQ_INDEX
#define MSIX VFIO_PCI_MSIX_IRQ_INDEX
#define ERR VFIO_PCI_ERR_IRQ_INDEX
#define REQ VFIO_PCI_REQ_IRQ_INDEX
static int intx_off(void) { return irq_none(TRIG, INTX, 0, 0); }
static int msi_off(void) { return irq_none(TRIG, MSI, 0, 0); }

// ---------- cases ----------

static void case_device_info(void) {
  struct vfio_device_info di = { .argsz = sizeof di };
  int r = ioctl(dev, VFIO_DEVICE_GET_INFO, &di) ? errno : 0;
  OUT("device_info", "%s flags=%#x num_regions=%u num_irqs=%u argsz=%u", ename(r), di.flags,
      di.num_regions, di.num_irqs, di.argsz);
  struct vfio_device_info d2 = { .argsz = offsetofend(struct vfio_device_info, num_irqs) };
  r = ioctl(dev, VFIO_DEVICE_GET_INFO, &d2) ? errno : 0;
  OUT("device_info_argsz_minsz", "%s flags=%#x num_regions=%u num_irqs=%u argsz=%u", ename(r), d2.flags,
      d2.num_regions, d2.num_irqs, d2.argsz);
  struct vfio_device_info d3 = { .argsz = offsetofend(struct vfio_device_info, num_irqs) - 1 };
  OUT("device_info_argsz_small", "%s", ename(ioctl(dev, VFIO_DEVICE_GET_INFO, &d3) ? errno : 0));
  struct vfio_device_info d4 = { .argsz = 0 };
  OUT("device_info_argsz_0", "%s", ename(ioctl(dev, VFIO_DEVICE_GET_INFO, &d4) ? errno : 0));
  OUT("device_unknown_ioctl", "%s", ename(ioctl(dev, _IO(VFIO_TYPE, VFIO_BASE + 40)) ? errno : 0));
  // Container/group ioctl numbers, the gfx ones and iommufd's (6.1 has none
  // of these on a vfio-pci device fd); a zeroed argument each.
  const unsigned nrs[] = { 0, 1, 2, 3, 4, 5, 6, 14, 15, 18, 19, 20, 21, 22 };
  for (unsigned i = 0; i < sizeof nrs / sizeof *nrs; i++) {
    char name[64], zero[256];
    memset(zero, 0, sizeof zero);
    snprintf(name, sizeof name, "device_ioctl_base_plus_%u", nrs[i]);
    OUT(name, "%s", ename(ioctl(dev, _IO(VFIO_TYPE, VFIO_BASE + nrs[i]), zero) ? errno : 0));
  }
}

static void print_caps(const char *prefix, const char *buf, uint32_t first, uint32_t limit) {
  int n = 0;
  for (uint32_t off = first; off && off + sizeof(struct vfio_info_cap_header) <= limit && n < 8; n++) {
    const struct vfio_info_cap_header *h = (const void *)(buf + off);
    char name[96];
    snprintf(name, sizeof name, "%s_cap%d", prefix, n);
    if (h->id == VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
      const struct vfio_region_info_cap_sparse_mmap *s = (const void *)h;
      OUT(name, "off=%u id=%u ver=%u nr_areas=%u", off, h->id, h->version, s->nr_areas);
    } else if (h->id == VFIO_REGION_INFO_CAP_TYPE) {
      const struct vfio_region_info_cap_type *t = (const void *)h;
      OUT(name, "off=%u id=%u ver=%u type=%u subtype=%u", off, h->id, h->version, t->type, t->subtype);
    } else {
      OUT(name, "off=%u id=%u ver=%u next=%u", off, h->id, h->version, h->next);
    }
    off = h->next;
  }
  if (!n) { char name[96]; snprintf(name, sizeof name, "%s_caps", prefix); OUT(name, "none"); }
}

static void case_region_info(void) {
  const uint32_t minsz = offsetofend(struct vfio_region_info, offset);
  for (unsigned i = 0; i <= 10; i++) {
    char name[64], buf[4096];
    struct vfio_region_info *ri = (void *)buf;
    memset(buf, 0, sizeof buf);
    ri->argsz = sizeof buf; ri->index = i;
    int r = ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, ri) ? errno : 0;
    snprintf(name, sizeof name, "region_info_%u", i);
    if (r) OUT(name, "%s", ename(r));
    else OUT(name, "0 flags=%#x size=%#llx offset=%#llx argsz=%u cap_offset=%u", ri->flags,
             (unsigned long long)ri->size, (unsigned long long)ri->offset, ri->argsz, ri->cap_offset);
    if (!r) {
      snprintf(name, sizeof name, "region_info_%u", i);
      if (ri->flags & VFIO_REGION_INFO_FLAG_CAPS) print_caps(name, buf, ri->cap_offset, sizeof buf);
    }
    // exactly minsz
    memset(buf, 0xa5, sizeof buf);
    ri->argsz = minsz; ri->index = i; ri->flags = 0; ri->cap_offset = 0;
    r = ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, ri) ? errno : 0;
    snprintf(name, sizeof name, "region_info_%u_minsz", i);
    if (r) OUT(name, "%s", ename(r));
    else OUT(name, "0 flags=%#x size=%#llx argsz=%u cap_offset=%#x", ri->flags,
             (unsigned long long)ri->size, ri->argsz, ri->cap_offset);
    // one byte short
    ri->argsz = minsz - 1; ri->index = i;
    snprintf(name, sizeof name, "region_info_%u_argsz_small", i);
    OUT(name, "%s", ename(ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, ri) ? errno : 0));
  }
  struct vfio_region_info ri = { .argsz = sizeof ri, .index = 0xffffffffu };
  OUT("region_info_index_max", "%s", ename(ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri) ? errno : 0));
}

static void case_irq_info(void) {
  for (unsigned i = 0; i <= 6; i++) {
    char name[64];
    struct vfio_irq_info ii = { .argsz = sizeof ii, .index = i };
    int r = ioctl(dev, VFIO_DEVICE_GET_IRQ_INFO, &ii) ? errno : 0;
    snprintf(name, sizeof name, "irq_info_%u", i);
    if (r) OUT(name, "%s", ename(r));
    else OUT(name, "0 flags=%#x count=%u argsz=%u", ii.flags, ii.count, ii.argsz);
    struct vfio_irq_info small = { .argsz = sizeof ii - 1, .index = i };
    snprintf(name, sizeof name, "irq_info_%u_argsz_small", i);
    OUT(name, "%s", ename(ioctl(dev, VFIO_DEVICE_GET_IRQ_INFO, &small) ? errno : 0));
  }
  struct vfio_irq_info big = { .argsz = sizeof big + 64, .index = 0 };
  int r = ioctl(dev, VFIO_DEVICE_GET_IRQ_INFO, &big) ? errno : 0;
  OUT("irq_info_0_argsz_big", "%s count=%u argsz=%u", ename(r), big.count, big.argsz);
}

static void dump_cfg(const char *prefix, unsigned len) {
  for (unsigned off = 0; off < len; off += 16) {
    char name[64], line[128];
    int n = 0;
    for (unsigned i = 0; i < 16; i += 4) n += snprintf(line + n, sizeof line - n, "%s%08x", i ? " " : "", cfg_rd(off + i, 4));
    snprintf(name, sizeof name, "%s_%02x", prefix, off);
    OUT(name, "%s", line);
  }
}

static void case_config(void) {
  dump_cfg("cfg_open", 256);
  char b[8];
  ssize_t n = pread(dev, b, 4, cfg_off + 256);
  OUT("cfg_read_256", "%s", n < 0 ? ename(errno) : "read");
  n = pread(dev, b, 4, cfg_off + 4092);
  OUT("cfg_read_4092", "%s", n < 0 ? ename(errno) : "read");
  n = pread(dev, b, 4, cfg_off + 254);
  OUT("cfg_read_254_len4", "%zd %s", n, n < 0 ? ename(errno) : "");
  n = pread(dev, b, 8, cfg_off);
  OUT("cfg_read_8bytes", "%zd %08x %08x", n, ((uint32_t *)b)[0], ((uint32_t *)b)[1]);
  n = pread(dev, b, 3, cfg_off + 1);
  OUT("cfg_read_3bytes_at_1", "%zd %02x %02x %02x", n, (uint8_t)b[0], (uint8_t)b[1], (uint8_t)b[2]);

  // BAR sizing
  const unsigned bars[] = { 0x10, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x30 };
  for (unsigned i = 0; i < 7; i++) {
    char name[64];
    uint32_t old = cfg_rd(bars[i], 4);
    int r = cfg_wr(bars[i], 4, 0xffffffff);
    uint32_t sz = cfg_rd(bars[i], 4);
    cfg_wr(bars[i], 4, old);
    uint32_t back = cfg_rd(bars[i], 4);
    snprintf(name, sizeof name, "cfg_bar_sizing_%02x", bars[i]);
    OUT(name, "%s sized=%#x restored=%d", ename(r), sz, back == old);
  }
  uint32_t old = cfg_rd(0x30, 4);
  cfg_wr(0x30, 4, 0xfffff801);
  OUT("cfg_rom_sizing_with_enable", "%#x", cfg_rd(0x30, 4));
  cfg_wr(0x30, 4, old);
  old = cfg_rd(0x10, 4);
  cfg_wr(0x10, 4, 0x12345678);
  OUT("cfg_bar0_write_unaligned_addr", "%#x", cfg_rd(0x10, 4));
  cfg_wr(0x10, 4, old);
  cfg_wr(0x10, 2, 0xffff);
  OUT("cfg_bar0_write_low_word", "%#x", cfg_rd(0x10, 4));
  cfg_wr(0x10, 4, old);
  OUT("cfg_bar0_restored", "%d", cfg_rd(0x10, 4) == old);
  cfg_wr(0x10, 4, 0xc0000000);
  OUT("cfg_bar0_moved", "%#x", cfg_rd(0x10, 4));
  OUT("bar0_read_id_while_bar_moved", "%#x", rd32(0));
  cfg_wr(0x13, 1, 0xab);
  OUT("cfg_bar0_byte_write_at_0x13", "%#x", cfg_rd(0x10, 4));
  cfg_wr(0x10, 4, old);
  OUT("bar0_read_id_after_sizing", "%#x", rd32(0));

  // Command register
  uint16_t cmd0 = (uint16_t)cfg_rd(4, 2);
  OUT("cfg_command_open", "%#x", cmd0);
  cfg_wr(4, 2, 0);
  OUT("cfg_command_write_0", "%#x", cfg_rd(4, 2));
  uint32_t v = 0;
  n = pread(dev, &v, 4, bar0_off);
  OUT("bar0_read_memory_disabled", "%s %#x", n < 0 ? ename(errno) : "ok", v);
  v = 1;
  n = pwrite(dev, &v, 4, bar0_off + 4);
  OUT("bar0_write_memory_disabled", "%s", n < 0 ? ename(errno) : "ok");
  cfg_wr(4, 2, 0x2);
  OUT("cfg_command_memory", "%#x", cfg_rd(4, 2));
  OUT("bar0_read_memory_enabled", "%#x", rd32(0));
  cfg_wr(4, 2, 0x6);
  OUT("cfg_command_memory_master", "%#x", cfg_rd(4, 2));
  cfg_wr(4, 2, 0x406);
  OUT("cfg_command_intx_disable", "%#x", cfg_rd(4, 2));
  cfg_wr(4, 2, 0xffff);
  OUT("cfg_command_write_ffff", "%#x", cfg_rd(4, 2));
  cfg_wr(4, 2, 0x7);
  OUT("cfg_command_io_memory_master", "%#x", cfg_rd(4, 2));
  cfg_wr(4, 2, 0x6);
  OUT("cfg_command_restore", "%#x", cfg_rd(4, 2));
  cfg_wr(5, 1, 0x04);
  OUT("cfg_command_byte_write_at_5", "%#x", cfg_rd(4, 2));
  cfg_wr(4, 2, 0x6);

  // Status register (read-only, write-1-to-clear error bits)
  OUT("cfg_status", "%#x", cfg_rd(6, 2));
  cfg_wr(6, 2, 0xffff);
  OUT("cfg_status_after_write_ffff", "%#x", cfg_rd(6, 2));

  // Read-only IDs and others
  cfg_wr(0, 4, 0xdeadbeef);
  OUT("cfg_ids_after_write", "%#x", cfg_rd(0, 4));
  cfg_wr(8, 4, 0xffffffff);
  OUT("cfg_class_rev_after_write", "%#x", cfg_rd(8, 4));
  cfg_wr(0x2c, 4, 0xffffffff);
  OUT("cfg_subsys_after_write", "%#x", cfg_rd(0x2c, 4));
  OUT("cfg_cacheline_latency_hdr_bist", "%#x", cfg_rd(0xc, 4));
  old = cfg_rd(0xc, 4);
  cfg_wr(0xc, 1, 0x10);
  cfg_wr(0xd, 1, 0x40);
  OUT("cfg_cacheline_latency_after_write", "%#x", cfg_rd(0xc, 4));
  cfg_wr(0xc, 2, (uint16_t)old);

  // Interrupt line/pin
  uint8_t line0 = (uint8_t)cfg_rd(0x3c, 1);
  OUT("cfg_interrupt_pin", "%#x", cfg_rd(0x3d, 1));
  cfg_wr(0x3c, 1, 0x5a);
  OUT("cfg_interrupt_line_write", "%#x", cfg_rd(0x3c, 1));
  cfg_wr(0x3d, 1, 0x3);
  OUT("cfg_interrupt_pin_after_write", "%#x", cfg_rd(0x3d, 1));
  cfg_wr(0x3c, 1, line0);
  OUT("cfg_min_gnt_max_lat", "%#x", cfg_rd(0x3e, 2));

  // Capability list
  OUT("cfg_cap_ptr", "%#x", cfg_rd(0x34, 1));
  cfg_wr(0x34, 1, 0x80);
  OUT("cfg_cap_ptr_after_write", "%#x", cfg_rd(0x34, 1));
  unsigned p = cfg_rd(0x34, 1) & 0xfc;
  for (int i = 0; p && i < 8; i++) {
    char name[64];
    uint32_t h = cfg_rd(p, 4);
    snprintf(name, sizeof name, "cfg_cap%d", i);
    OUT(name, "at=%#x id=%#x next=%#x dw0=%#x dw1=%#x dw2=%#x dw3=%#x", p, h & 0xff, (h >> 8) & 0xff, h,
        cfg_rd(p + 4, 4), cfg_rd(p + 8, 4), cfg_rd(p + 12, 4));
    p = (h >> 8) & 0xfc;
  }
  cfg_wr(0x40, 2, 0x9911);
  OUT("cfg_msi_cap_header_after_write", "%#x", cfg_rd(0x40, 2));
  // Writes into the MSI capability (virtualized)
  uint32_t msi_addr = cfg_rd(0x44, 4);
  cfg_wr(0x44, 4, 0xfee00000);
  cfg_wr(0x48, 4, 0x1);
  cfg_wr(0x4c, 2, 0x4321);
  OUT("cfg_msi_addr_data_write", "%#x %#x %#x", cfg_rd(0x44, 4), cfg_rd(0x48, 4), cfg_rd(0x4c, 2));
  cfg_wr(0x44, 4, msi_addr);
  cfg_wr(0x48, 4, 0);
  cfg_wr(0x4c, 2, 0);
  uint16_t mctl = (uint16_t)cfg_rd(0x42, 2);
  cfg_wr(0x42, 2, (uint16_t)(mctl | 0x70));
  OUT("cfg_msi_ctl_write_mme", "%#x", cfg_rd(0x42, 2));
  cfg_wr(0x42, 2, mctl);
  // Unused space above the capabilities
  cfg_wr(0x80, 4, 0x11223344);
  OUT("cfg_write_0x80", "%#x", cfg_rd(0x80, 4));
  cfg_wr(0xfc, 4, 0x11223344);
  OUT("cfg_write_0xfc", "%#x", cfg_rd(0xfc, 4));
  cfg_wr(0x81, 1, 0x77);
  OUT("cfg_write_byte_0x81", "%#x", cfg_rd(0x80, 4));
  cfg_wr(0x80, 4, 0);
  cfg_wr(0xfc, 4, 0);
  uint64_t q8 = 0xffffffffffffffffull;
  old = cfg_rd(0x3c, 4);
  n = pwrite(dev, &q8, 8, cfg_off + 0x38);
  OUT("cfg_write_8bytes_at_0x38", "%zd %#x %#x", n, cfg_rd(0x38, 4), cfg_rd(0x3c, 4));
  cfg_wr(0x3c, 4, old);
  cfg_wr(0x3e, 2, 0xffff);
  OUT("cfg_min_gnt_max_lat_after_write", "%#x", cfg_rd(0x3e, 2));
  n = pwrite(dev, &q8, 2, cfg_off + 0x3f);
  OUT("cfg_write_2bytes_at_0x3f", "%zd %s", n, n < 0 ? ename(errno) : "");
  uint16_t w = 0;
  n = pread(dev, &w, 2, cfg_off + 0x3);
  OUT("cfg_read_2bytes_at_3", "%zd %#x", n, w);
  dump_cfg("cfg_after", 64);
}

static void case_set_irqs_validation(void) {
  int efd = efd_new();
  int32_t fd = efd;
  // Header checks.
  OUT("irqs_argsz_1", "%s", ename(set_irqs_raw(1, VFIO_IRQ_SET_DATA_NONE | TRIG, INTX, 0, 0, NULL, 0)));
  OUT("irqs_argsz_below_minsz", "%s", ename(set_irqs_raw(IRQ_SET_MINSZ - 1, VFIO_IRQ_SET_DATA_NONE | TRIG, INTX, 0, 0, NULL, 0)));
  OUT("irqs_unknown_flag_bit6", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_NONE | TRIG | (1u << 6), INTX, 0, 1, NULL, 0)));
  OUT("irqs_unknown_flag_bit31", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_NONE | TRIG | (1u << 31), INTX, 0, 1, NULL, 0)));
  OUT("irqs_two_data_none_bool", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | MASK, INTX, 0, 1, "\1", 1)));
  OUT("irqs_two_data_bool_eventfd", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD | TRIG, INTX, 0, 1, &fd, 4)));
  OUT("irqs_no_data_bit", "%s", ename(set_irqs_raw(0, TRIG, INTX, 0, 1, NULL, 0)));
  OUT("irqs_two_action_mask_unmask", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_NONE | MASK | UNMASK, INTX, 0, 1, NULL, 0)));
  OUT("irqs_two_action_mask_trigger", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_NONE | MASK | TRIG, INTX, 0, 1, NULL, 0)));
  OUT("irqs_no_action_bit", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_NONE, INTX, 0, 1, NULL, 0)));
  OUT("irqs_index_5", "%s", ename(irq_fd(TRIG, 5, 0, efd)));
  OUT("irqs_index_6", "%s", ename(irq_fd(TRIG, 6, 0, efd)));
  OUT("irqs_index_max", "%s", ename(irq_fd(TRIG, 0xffffffffu, 0, efd)));
  OUT("irqs_msix_trigger_eventfd", "%s", ename(irq_fd(TRIG, MSIX, 0, efd)));
  OUT("irqs_msix_disable_none_0", "%s", ename(irq_none(TRIG, MSIX, 0, 0)));
  OUT("irqs_err_trigger_eventfd", "%s", ename(irq_fd(TRIG, ERR, 0, efd)));
  OUT("irqs_err_disable_none_0", "%s", ename(irq_none(TRIG, ERR, 0, 0)));
  OUT("irqs_intx_start_1", "%s", ename(irq_fd(TRIG, INTX, 1, efd)));
  OUT("irqs_intx_start_1_count_0", "%s", ename(irq_none(TRIG, INTX, 1, 0)));
  int32_t two[2] = { efd, efd };
  OUT("irqs_intx_count_2", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_EVENTFD | TRIG, INTX, 0, 2, two, 8)));
  OUT("irqs_msi_count_2", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_EVENTFD | TRIG, MSI, 0, 2, two, 8)));
  OUT("irqs_msi_start_1", "%s", ename(irq_fd(TRIG, MSI, 1, efd)));
  OUT("irqs_intx_eventfd_count_0", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_EVENTFD | TRIG, INTX, 0, 0, NULL, 0)));
  OUT("irqs_intx_bool_count_0", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_BOOL | TRIG, INTX, 0, 0, NULL, 0)));
  OUT("irqs_msi_eventfd_count_0", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_EVENTFD | TRIG, MSI, 0, 0, NULL, 0)));
  OUT("irqs_msi_bool_count_0", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_BOOL | TRIG, MSI, 0, 0, NULL, 0)));
  OUT("irqs_eventfd_argsz_minsz", "%s", ename(set_irqs_raw(IRQ_SET_MINSZ, VFIO_IRQ_SET_DATA_EVENTFD | TRIG, INTX, 0, 1, &fd, 4)));
  OUT("irqs_eventfd_argsz_minsz_plus_3", "%s", ename(set_irqs_raw(IRQ_SET_MINSZ + 3, VFIO_IRQ_SET_DATA_EVENTFD | TRIG, INTX, 0, 1, &fd, 4)));
  OUT("irqs_bool_argsz_minsz", "%s", ename(set_irqs_raw(IRQ_SET_MINSZ, VFIO_IRQ_SET_DATA_BOOL | MASK, INTX, 0, 1, "\1", 1)));
  OUT("irqs_count_u32_max", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_EVENTFD | TRIG, INTX, 0, 0xffffffffu, &fd, 4)));
  OUT("irqs_count_huge_start_1", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_EVENTFD | TRIG, INTX, 1, 0xfffffffeu, &fd, 4)));
  OUT("irqs_count_2pow30_bool", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_BOOL | TRIG, MSI, 0, 0x40000000u, "\1", 1)));
  OUT("irqs_start_u32_max", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_NONE | TRIG, INTX, 0xffffffffu, 0, NULL, 0)));

  // Nothing enabled yet: INTx actions.
  OUT("irqs_intx_mask_not_enabled", "%s", ename(irq_none(MASK, INTX, 0, 1)));
  OUT("irqs_intx_unmask_not_enabled", "%s", ename(irq_none(UNMASK, INTX, 0, 1)));
  OUT("irqs_intx_trigger_none_not_enabled", "%s", ename(irq_none(TRIG, INTX, 0, 1)));
  OUT("irqs_intx_trigger_bool_not_enabled", "%s", ename(irq_bool(TRIG, INTX, 0, 1, 1)));
  OUT("irqs_intx_disable_not_enabled", "%s", ename(intx_off()));
  OUT("irqs_msi_disable_not_enabled", "%s", ename(msi_off()));
  OUT("irqs_msi_trigger_none_not_enabled", "%s", ename(irq_none(TRIG, MSI, 0, 1)));
  OUT("irqs_msi_trigger_bool_not_enabled", "%s", ename(irq_bool(TRIG, MSI, 0, 1, 1)));
  OUT("irqs_msi_mask", "%s", ename(irq_none(MASK, MSI, 0, 1)));
  OUT("irqs_msi_unmask", "%s", ename(irq_none(UNMASK, MSI, 0, 1)));

  // Bad file descriptors.
  int closed = efd_new(); close(closed);
  OUT("irqs_intx_enable_closed_fd", "%s", ename(irq_fd(TRIG, INTX, 0, closed)));
  int pipefd[2];
  if (pipe(pipefd)) { perror("pipe"); exit(1); }
  OUT("irqs_intx_enable_pipe_fd", "%s", ename(irq_fd(TRIG, INTX, 0, pipefd[0])));
  OUT("irqs_intx_enable_fd_minus2", "%s", ename(irq_fd(TRIG, INTX, 0, -2)));
  OUT("irqs_intx_disable_after_bad_fds", "%s", ename(intx_off()));
  OUT("irqs_msi_enable_closed_fd", "%s", ename(irq_fd(TRIG, MSI, 0, closed)));
  OUT("irqs_msi_enable_pipe_fd", "%s", ename(irq_fd(TRIG, MSI, 0, pipefd[0])));
  OUT("irqs_msi_disable_after_bad_fds", "%s", ename(msi_off()));
  OUT("irqs_msi_enable_fd_minus1", "%s", ename(irq_fd(TRIG, MSI, 0, -1)));
  OUT("irqs_msi_enable_fd_minus1_then_intx", "%s", ename(irq_fd(TRIG, INTX, 0, efd)));
  OUT("irqs_msi_disable_after_minus1", "%s", ename(msi_off()));

  // INTx enable with fd -1: enables INTx with no eventfd.
  OUT("irqs_intx_enable_fd_minus1", "%s", ename(irq_fd(TRIG, INTX, 0, -1)));
  OUT("irqs_intx_enabled_then_msi", "%s", ename(irq_fd(TRIG, MSI, 0, efd)));
  OUT("irqs_intx_set_eventfd", "%s", ename(irq_fd(TRIG, INTX, 0, efd)));
  OUT("irqs_intx_reset_eventfd_closed", "%s", ename(irq_fd(TRIG, INTX, 0, closed)));
  OUT("irqs_intx_reset_eventfd_pipe", "%s", ename(irq_fd(TRIG, INTX, 0, pipefd[0])));
  OUT("irqs_intx_detach_eventfd", "%s", ename(irq_fd(TRIG, INTX, 0, -1)));
  OUT("irqs_intx_enable_again_eventfd", "%s", ename(irq_fd(TRIG, INTX, 0, efd)));
  OUT("irqs_msi_while_intx", "%s", ename(irq_fd(TRIG, MSI, 0, efd)));
  OUT("irqs_msi_disable_while_intx", "%s", ename(msi_off()));
  OUT("irqs_msix_disable_while_intx", "%s", ename(irq_none(TRIG, MSIX, 0, 0)));
  OUT("irqs_intx_trigger_none_count_0_start_0", "%s", ename(irq_none(TRIG, INTX, 0, 0)));
  OUT("irqs_intx_enable_after_disable", "%s", ename(irq_fd(TRIG, INTX, 0, efd)));
  OUT("irqs_intx_mask_none", "%s", ename(irq_none(MASK, INTX, 0, 1)));
  OUT("irqs_intx_mask_none_twice", "%s", ename(irq_none(MASK, INTX, 0, 1)));
  OUT("irqs_intx_unmask_none", "%s", ename(irq_none(UNMASK, INTX, 0, 1)));
  OUT("irqs_intx_mask_none_count_0", "%s", ename(irq_none(MASK, INTX, 0, 0)));
  OUT("irqs_intx_unmask_none_count_0", "%s", ename(irq_none(UNMASK, INTX, 0, 0)));
  OUT("irqs_intx_mask_bool_0", "%s", ename(irq_bool(MASK, INTX, 0, 1, 0)));
  OUT("irqs_intx_mask_bool_1", "%s", ename(irq_bool(MASK, INTX, 0, 1, 1)));
  OUT("irqs_intx_unmask_bool_0", "%s", ename(irq_bool(UNMASK, INTX, 0, 1, 0)));
  OUT("irqs_intx_unmask_bool_1", "%s", ename(irq_bool(UNMASK, INTX, 0, 1, 1)));
  OUT("irqs_intx_mask_bool_count_0", "%s", ename(irq_bool(MASK, INTX, 0, 0, 1)));
  OUT("irqs_intx_mask_eventfd", "%s", ename(irq_fd(MASK, INTX, 0, efd)));
  OUT("irqs_intx_mask_eventfd_minus1", "%s", ename(irq_fd(MASK, INTX, 0, -1)));
  int ufd = efd_new();
  OUT("irqs_intx_unmask_eventfd", "%s", ename(irq_fd(UNMASK, INTX, 0, ufd)));
  OUT("irqs_intx_unmask_eventfd_again", "%s", ename(irq_fd(UNMASK, INTX, 0, ufd)));
  OUT("irqs_intx_unmask_eventfd_closed", "%s", ename(irq_fd(UNMASK, INTX, 0, closed)));
  OUT("irqs_intx_unmask_eventfd_pipe", "%s", ename(irq_fd(UNMASK, INTX, 0, pipefd[0])));
  OUT("irqs_intx_unmask_eventfd_minus1", "%s", ename(irq_fd(UNMASK, INTX, 0, -1)));
  OUT("irqs_intx_unmask_eventfd_minus1_again", "%s", ename(irq_fd(UNMASK, INTX, 0, -1)));
  OUT("irqs_intx_unmask_eventfd_minus2", "%s", ename(irq_fd(UNMASK, INTX, 0, -2)));
  OUT("irqs_intx_trigger_none_enabled", "%s", ename(irq_none(TRIG, INTX, 0, 1)));
  OUT("irqs_intx_trigger_bool_1_enabled", "%s", ename(irq_bool(TRIG, INTX, 0, 1, 1)));
  OUT("irqs_intx_trigger_bool_count_0", "%s", ename(irq_bool(TRIG, INTX, 0, 0, 1)));
  OUT("irqs_intx_trigger_none_count_1_start_1", "%s", ename(irq_none(TRIG, INTX, 1, 1)));
  OUT("irqs_intx_loopbacks_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("irqs_intx_disable_bool_count_0", "%s", ename(irq_bool(TRIG, INTX, 0, 0, 0)));
  OUT("irqs_intx_disable", "%s", ename(intx_off()));
  OUT("irqs_intx_disable_twice", "%s", ename(intx_off()));
  OUT("irqs_intx_mask_after_disable", "%s", ename(irq_none(MASK, INTX, 0, 1)));
  OUT("irqs_intx_unmask_eventfd_after_disable", "%s", ename(irq_fd(UNMASK, INTX, 0, ufd)));

  // MSI.
  OUT("irqs_msi_enable", "%s", ename(irq_fd(TRIG, MSI, 0, efd)));
  OUT("irqs_intx_while_msi", "%s", ename(irq_fd(TRIG, INTX, 0, efd)));
  OUT("irqs_intx_disable_while_msi", "%s", ename(intx_off()));
  OUT("irqs_intx_mask_while_msi", "%s", ename(irq_none(MASK, INTX, 0, 1)));
  OUT("irqs_intx_unmask_while_msi", "%s", ename(irq_none(UNMASK, INTX, 0, 1)));
  OUT("irqs_msi_set_same_eventfd", "%s", ename(irq_fd(TRIG, MSI, 0, efd)));
  OUT("irqs_msi_set_closed_fd_enabled", "%s", ename(irq_fd(TRIG, MSI, 0, closed)));
  OUT("irqs_msi_set_pipe_fd_enabled", "%s", ename(irq_fd(TRIG, MSI, 0, pipefd[0])));
  OUT("irqs_msi_trigger_none_enabled", "%s", ename(irq_none(TRIG, MSI, 0, 1)));
  OUT("irqs_msi_after_bad_fd_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("irqs_msi_reattach", "%s", ename(irq_fd(TRIG, MSI, 0, efd)));
  OUT("irqs_msi_trigger_none_count_1", "%s", ename(irq_none(TRIG, MSI, 0, 1)));
  OUT("irqs_msi_trigger_bool_1", "%s", ename(irq_bool(TRIG, MSI, 0, 1, 1)));
  OUT("irqs_msi_trigger_bool_0", "%s", ename(irq_bool(TRIG, MSI, 0, 1, 0)));
  OUT("irqs_msi_loopback_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("irqs_msi_detach_minus1", "%s", ename(irq_fd(TRIG, MSI, 0, -1)));
  OUT("irqs_msi_trigger_none_detached", "%s", ename(irq_none(TRIG, MSI, 0, 1)));
  OUT("irqs_msi_detached_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("irqs_msi_count_2_while_enabled", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_EVENTFD | TRIG, MSI, 0, 2, two, 8)));
  OUT("irqs_msi_disable", "%s", ename(msi_off()));
  OUT("irqs_msi_disable_twice", "%s", ename(msi_off()));
  OUT("irqs_msi_disable_bool_count_0", "%s", ename(irq_bool(TRIG, MSI, 0, 0, 0)));
  OUT("irqs_msi_disable_eventfd_count_0", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_EVENTFD | TRIG, MSI, 0, 0, NULL, 0)));

  // REQ.
  OUT("irqs_req_trigger_none_no_fd", "%s", ename(irq_none(TRIG, REQ, 0, 1)));
  OUT("irqs_req_disable_none_no_fd", "%s", ename(irq_none(TRIG, REQ, 0, 0)));
  OUT("irqs_req_trigger_bool_no_fd", "%s", ename(irq_bool(TRIG, REQ, 0, 1, 1)));
  OUT("irqs_req_mask", "%s", ename(irq_none(MASK, REQ, 0, 1)));
  OUT("irqs_req_unmask", "%s", ename(irq_none(UNMASK, REQ, 0, 1)));
  OUT("irqs_req_set_closed_fd", "%s", ename(irq_fd(TRIG, REQ, 0, closed)));
  OUT("irqs_req_set_pipe_fd", "%s", ename(irq_fd(TRIG, REQ, 0, pipefd[0])));
  OUT("irqs_req_set_eventfd", "%s", ename(irq_fd(TRIG, REQ, 0, efd)));
  OUT("irqs_req_trigger_none", "%s", ename(irq_none(TRIG, REQ, 0, 1)));
  OUT("irqs_req_trigger_bool_1", "%s", ename(irq_bool(TRIG, REQ, 0, 1, 1)));
  OUT("irqs_req_trigger_bool_0", "%s", ename(irq_bool(TRIG, REQ, 0, 1, 0)));
  OUT("irqs_req_loopback_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("irqs_req_eventfd_count_0", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_EVENTFD | TRIG, REQ, 0, 0, NULL, 0)));
  OUT("irqs_req_count_2", "%s", ename(set_irqs_raw(0, VFIO_IRQ_SET_DATA_EVENTFD | TRIG, REQ, 0, 2, two, 8)));
  OUT("irqs_req_start_1", "%s", ename(irq_fd(TRIG, REQ, 1, efd)));
  OUT("irqs_req_disable_none_count_0", "%s", ename(irq_none(TRIG, REQ, 0, 0)));
  OUT("irqs_req_trigger_none_after_disable", "%s", ename(irq_none(TRIG, REQ, 0, 1)));
  OUT("irqs_req_set_eventfd_again", "%s", ename(irq_fd(TRIG, REQ, 0, efd)));
  OUT("irqs_req_detach_minus1", "%s", ename(irq_fd(TRIG, REQ, 0, -1)));
  OUT("irqs_req_detach_minus1_again", "%s", ename(irq_fd(TRIG, REQ, 0, -1)));
  OUT("irqs_req_after_detach_events", "%llu", (unsigned long long)ev_wait(efd));
  close(pipefd[0]); close(pipefd[1]);
  close(ufd);
  close(efd);
}

static void case_intx_delivery(void) {
  int efd = efd_new();
  cmd_set(0x6, 0x400);
  edu_ack(0xffffffff);
  OUT("intx_enable", "%s", ename(irq_fd(TRIG, INTX, 0, efd)));
  OUT("intx_idle_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_raise(0x1);
  OUT("intx_raise_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("intx_raise_edu_status", "%#x", rd32(0x24));
  OUT("intx_raise_cfg_status", "%#x", cfg_rd(6, 2));
  OUT("intx_raise_cfg_command", "%#x", cfg_rd(4, 2));
  edu_raise(0x2);
  OUT("intx_second_raise_automasked_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("intx_unmask_while_asserted", "%s", ename(irq_none(UNMASK, INTX, 0, 1)));
  OUT("intx_unmask_while_asserted_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("intx_unmask_while_asserted_cfg_command", "%#x", cfg_rd(4, 2));
  edu_ack(0x3);
  OUT("intx_ack_edu_status", "%#x", rd32(0x24));
  OUT("intx_ack_cfg_status", "%#x", cfg_rd(6, 2));
  OUT("intx_ack_then_unmask", "%s", ename(irq_none(UNMASK, INTX, 0, 1)));
  OUT("intx_ack_then_unmask_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("intx_unmask_again", "%s", ename(irq_none(UNMASK, INTX, 0, 1)));
  OUT("intx_unmask_again_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_raise(0x4);
  OUT("intx_raise_after_unmask_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_ack(0x4);
  irq_none(UNMASK, INTX, 0, 1);
  OUT("intx_ack_unmask_events", "%llu", (unsigned long long)ev_wait(efd));

  // User mask.
  OUT("intx_mask", "%s", ename(irq_none(MASK, INTX, 0, 1)));
  OUT("intx_mask_cfg_command", "%#x", cfg_rd(4, 2));
  edu_raise(0x8);
  OUT("intx_raise_while_masked_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("intx_unmask_after_masked_raise", "%s", ename(irq_none(UNMASK, INTX, 0, 1)));
  OUT("intx_unmask_after_masked_raise_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_ack(0x8);
  irq_none(UNMASK, INTX, 0, 1);
  OUT("intx_after_mask_cycle_events", "%llu", (unsigned long long)ev_wait(efd));

  // Mask and ack before unmask: nothing pending, nothing delivered.
  irq_none(MASK, INTX, 0, 1);
  edu_raise(0x10);
  msleep(50);
  edu_ack(0x10);
  irq_none(UNMASK, INTX, 0, 1);
  OUT("intx_masked_raise_acked_before_unmask_events", "%llu", (unsigned long long)ev_wait(efd));

  // Mask with DATA_BOOL.
  irq_bool(MASK, INTX, 0, 1, 1);
  edu_raise(0x20);
  OUT("intx_bool_masked_raise_events", "%llu", (unsigned long long)ev_wait(efd));
  irq_bool(UNMASK, INTX, 0, 1, 0);
  OUT("intx_unmask_bool_0_events", "%llu", (unsigned long long)ev_wait(efd));
  irq_bool(UNMASK, INTX, 0, 1, 1);
  OUT("intx_unmask_bool_1_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_ack(0x20);
  irq_none(UNMASK, INTX, 0, 1);
  ev_wait(efd);

  // Loopback triggers while unmasked / masked.
  irq_none(TRIG, INTX, 0, 1);
  OUT("intx_loopback_none_events", "%llu", (unsigned long long)ev_wait(efd));
  irq_bool(TRIG, INTX, 0, 1, 1);
  OUT("intx_loopback_bool_1_events", "%llu", (unsigned long long)ev_wait(efd));
  irq_bool(TRIG, INTX, 0, 1, 0);
  OUT("intx_loopback_bool_0_events", "%llu", (unsigned long long)ev_wait(efd));
  irq_none(TRIG, INTX, 0, 1);
  irq_none(TRIG, INTX, 0, 1);
  irq_none(TRIG, INTX, 0, 1);
  OUT("intx_loopback_none_x3_events", "%llu", (unsigned long long)ev_wait(efd));
  irq_none(MASK, INTX, 0, 1);
  irq_none(TRIG, INTX, 0, 1);
  OUT("intx_loopback_while_masked_events", "%llu", (unsigned long long)ev_wait(efd));
  irq_none(UNMASK, INTX, 0, 1);
  OUT("intx_unmask_after_loopback_events", "%llu", (unsigned long long)ev_wait(efd));

  // Unmask eventfd: signalling it unmasks.
  int ufd = efd_new();
  OUT("intx_unmask_eventfd_set", "%s", ename(irq_fd(UNMASK, INTX, 0, ufd)));
  edu_raise(0x40);
  OUT("intx_unmask_eventfd_raise_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_ack(0x40);
  uint64_t one = 1;
  if (write(ufd, &one, 8) != 8) perror("write ufd");
  msleep(50);
  edu_raise(0x40);
  OUT("intx_after_unmask_eventfd_signal_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("intx_unmask_eventfd_consumed", "%llu", (unsigned long long)ev_read(ufd));
  // Still asserted and masked: signalling the unmask eventfd redelivers.
  if (write(ufd, &one, 8) != 8) perror("write ufd");
  OUT("intx_unmask_eventfd_while_asserted_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_ack(0x40);
  if (write(ufd, &one, 8) != 8) perror("write ufd");
  OUT("intx_unmask_eventfd_after_ack_events", "%llu", (unsigned long long)ev_wait(efd));
  irq_fd(UNMASK, INTX, 0, -1);
  close(ufd);

  // INTx disable in the command register.
  cmd_set(0x400, 0);
  OUT("intx_cfg_disable_cmd", "%#x", cfg_rd(4, 2));
  edu_raise(0x80);
  OUT("intx_cfg_disabled_raise_events", "%llu", (unsigned long long)ev_wait(efd));
  irq_none(TRIG, INTX, 0, 1);
  OUT("intx_cfg_disabled_loopback_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("intx_cfg_disabled_unmask", "%s", ename(irq_none(UNMASK, INTX, 0, 1)));
  OUT("intx_cfg_disabled_unmask_events", "%llu", (unsigned long long)ev_wait(efd));
  cmd_set(0, 0x400);
  OUT("intx_cfg_enable_cmd", "%#x", cfg_rd(4, 2));
  OUT("intx_cfg_reenabled_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_ack(0x80);
  irq_none(UNMASK, INTX, 0, 1);
  OUT("intx_cfg_reenabled_ack_unmask_events", "%llu", (unsigned long long)ev_wait(efd));

  // Factorial completion interrupt.
  wr32(0x20, 0x80);
  wr32(0x08, 5);
  OUT("intx_factorial_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("intx_factorial_result", "%u irq_status=%#x", rd32(0x08), rd32(0x24));
  edu_ack(0x1);
  irq_none(UNMASK, INTX, 0, 1);
  OUT("intx_factorial_ack_unmask_events", "%llu", (unsigned long long)ev_wait(efd));
  wr32(0x20, 0);
  wr32(0x08, 4);
  OUT("intx_factorial_no_irq_bit_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("intx_factorial_no_irq_bit_result", "%u irq_status=%#x", rd32(0x08), rd32(0x24));

  // DMA completion interrupt.
  long pg = sysconf(_SC_PAGESIZE);
  char *buf = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(buf, 0x5a, pg);
  struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                                        .vaddr = (uint64_t)(uintptr_t)buf, .iova = 0x1000000, .size = pg };
  int r = ioctl(container, VFIO_IOMMU_MAP_DMA, &m) ? errno : 0;
  wr64(0x80, 0x1000000); wr64(0x88, 0x40000); wr64(0x90, 64); wr64(0x98, 1 | 4);
  OUT("intx_dma_events", "%s %llu", ename(r), (unsigned long long)ev_wait(efd));
  OUT("intx_dma_irq_status", "%#x cmd=%#x", rd32(0x24), rd32(0x98));
  edu_ack(0x100);
  irq_none(UNMASK, INTX, 0, 1);
  OUT("intx_dma_ack_unmask_events", "%llu", (unsigned long long)ev_wait(efd));
  wr64(0x80, 0x1000000); wr64(0x88, 0x40000); wr64(0x90, 64); wr64(0x98, 1);
  OUT("intx_dma_no_irq_bit_events", "%llu", (unsigned long long)ev_wait(efd));
  struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u, .iova = 0x1000000, .size = pg };
  ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u);
  munmap(buf, pg);

  // Swap the trigger eventfd while enabled: events go to the new one.
  int efd2 = efd_new();
  OUT("intx_swap_eventfd", "%s", ename(irq_fd(TRIG, INTX, 0, efd2)));
  edu_raise(0x400);
  uint64_t o1, o2;
  ev_wait2(efd, efd2, &o1, &o2);
  OUT("intx_swap_raise_events", "old=%llu new=%llu", (unsigned long long)o1, (unsigned long long)o2);
  edu_ack(0x400);
  irq_none(UNMASK, INTX, 0, 1);
  OUT("intx_swap_back", "%s", ename(irq_fd(TRIG, INTX, 0, efd)));
  close(efd2);
  // Raise with INTx disabled through SET_IRQS: nothing on the old eventfd.
  OUT("intx_disable", "%s", ename(intx_off()));
  edu_raise(0x200);
  OUT("intx_disabled_raise_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("intx_disabled_cfg_command", "%#x", cfg_rd(4, 2));
  // Re-enable while the line is asserted.
  OUT("intx_enable_while_asserted", "%s", ename(irq_fd(TRIG, INTX, 0, efd)));
  OUT("intx_enable_while_asserted_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_ack(0x200);
  irq_none(UNMASK, INTX, 0, 1);
  ev_wait(efd);
  intx_off();
  edu_ack(0xffffffff);
  close(efd);
}

static void case_msi_delivery(void) {
  int efd = efd_new(), ifd = efd_new();
  cmd_set(0x6, 0x400);
  edu_ack(0xffffffff);
  // INTx first, then switch to MSI: the INTx eventfd must stay silent.
  irq_fd(TRIG, INTX, 0, ifd);
  intx_off();
  OUT("msi_ctl_before", "%#x", cfg_rd(0x42, 2));
  OUT("msi_enable", "%s", ename(irq_fd(TRIG, MSI, 0, efd)));
  OUT("msi_ctl_after_enable", "%#x", cfg_rd(0x42, 2));
  OUT("msi_cap_after_enable", "%#x %#x %#x %#x", cfg_rd(0x40, 4), cfg_rd(0x44, 4), cfg_rd(0x48, 4), cfg_rd(0x4c, 4));
  OUT("msi_cfg_command", "%#x", cfg_rd(4, 2));
  OUT("msi_idle_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_raise(0x1);
  uint64_t cm, ci;
  ev_wait2(efd, ifd, &cm, &ci);
  OUT("msi_raise_events", "msi=%llu intx=%llu", (unsigned long long)cm, (unsigned long long)ci);
  edu_raise(0x2);
  OUT("msi_raise_again_unacked_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_ack(0x3);
  OUT("msi_ack_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_raise(0x4);
  edu_ack(0x4);
  edu_raise(0x4);
  edu_ack(0x4);
  OUT("msi_raise_ack_x2_events", "%llu", (unsigned long long)ev_wait(efd));
  // MSI is edge: no masking, no unmask needed.
  OUT("msi_unmask_intx", "%s", ename(irq_none(UNMASK, INTX, 0, 1)));
  // Factorial completion and DMA completion with MSI.
  wr32(0x20, 0x80);
  wr32(0x08, 6);
  OUT("msi_factorial_events", "%llu", (unsigned long long)ev_wait(efd));
  OUT("msi_factorial_result", "%u irq_status=%#x", rd32(0x08), rd32(0x24));
  edu_ack(0x1);
  wr32(0x20, 0);
  // Bus master off.
  cmd_set(0, 0x4);
  OUT("msi_master_off_cfg_command", "%#x", cfg_rd(4, 2));
  edu_raise(0x8);
  OUT("msi_master_off_raise_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_ack(0x8);
  cmd_set(0x4, 0);
  OUT("msi_master_on_again_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_raise(0x8);
  OUT("msi_master_on_raise_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_ack(0x8);
  // INTx disable bit does not affect MSI.
  cmd_set(0x400, 0);
  edu_raise(0x10);
  OUT("msi_intx_disable_bit_raise_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_ack(0x10);
  cmd_set(0, 0x400);
  // Loopback triggers.
  irq_none(TRIG, MSI, 0, 1);
  OUT("msi_loopback_none_events", "%llu", (unsigned long long)ev_wait(efd));
  irq_bool(TRIG, MSI, 0, 1, 1);
  OUT("msi_loopback_bool_1_events", "%llu", (unsigned long long)ev_wait(efd));
  irq_bool(TRIG, MSI, 0, 1, 0);
  OUT("msi_loopback_bool_0_events", "%llu", (unsigned long long)ev_wait(efd));
  // Swap eventfd while enabled.
  int efd2 = efd_new();
  OUT("msi_swap_eventfd", "%s", ename(irq_fd(TRIG, MSI, 0, efd2)));
  edu_raise(0x20);
  uint64_t c1, c2;
  ev_wait2(efd, efd2, &c1, &c2);
  OUT("msi_swap_raise_events", "old=%llu new=%llu", (unsigned long long)c1, (unsigned long long)c2);
  edu_ack(0x20);
  OUT("msi_detach", "%s", ename(irq_fd(TRIG, MSI, 0, -1)));
  OUT("msi_ctl_after_detach", "%#x", cfg_rd(0x42, 2));
  edu_raise(0x40);
  ev_wait2(efd, efd2, &c1, &c2);
  OUT("msi_detached_raise_events", "old=%llu new=%llu", (unsigned long long)c1, (unsigned long long)c2);
  edu_ack(0x40);
  OUT("msi_disable", "%s", ename(msi_off()));
  OUT("msi_ctl_after_disable", "%#x", cfg_rd(0x42, 2));
  edu_raise(0x80);
  ev_wait2(efd2, ifd, &c1, &c2);
  OUT("msi_disabled_raise_events", "msi=%llu intx=%llu", (unsigned long long)c1, (unsigned long long)c2);
  OUT("msi_disabled_edu_status", "%#x", rd32(0x24));
  edu_ack(0x80);
  // Virtual MSI enable bit written by the user, without SET_IRQS.
  uint16_t ctl = (uint16_t)cfg_rd(0x42, 2);
  cfg_wr(0x42, 2, (uint16_t)(ctl | 1));
  OUT("msi_ctl_user_enable_bit", "%#x", cfg_rd(0x42, 2));
  edu_raise(0x1);
  ev_wait2(efd2, ifd, &c1, &c2);
  OUT("msi_user_enable_bit_raise_events", "msi=%llu intx=%llu", (unsigned long long)c1, (unsigned long long)c2);
  edu_ack(0x1);
  cfg_wr(0x42, 2, ctl);
  OUT("msi_ctl_user_disable_bit", "%#x", cfg_rd(0x42, 2));
  // Enable twice with the bit set in config, then disable.
  OUT("msi_enable_again", "%s", ename(irq_fd(TRIG, MSI, 0, efd)));
  OUT("msi_ctl_enable_again", "%#x", cfg_rd(0x42, 2));
  cfg_wr(0x42, 2, (uint16_t)(ctl | 1));
  OUT("msi_ctl_user_enable_bit_while_enabled", "%#x", cfg_rd(0x42, 2));
  cfg_wr(0x42, 2, (uint16_t)(ctl | 0x71));
  OUT("msi_ctl_user_qsize_while_enabled", "%#x", cfg_rd(0x42, 2));
  edu_raise(0x1);
  OUT("msi_user_enable_bit_while_enabled_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_ack(0x1);
  cfg_wr(0x42, 2, ctl);
  OUT("msi_ctl_user_clear_enable_while_enabled", "%#x", cfg_rd(0x42, 2));
  edu_raise(0x1);
  OUT("msi_user_cleared_enable_raise_events", "%llu", (unsigned long long)ev_wait(efd));
  edu_ack(0x1);
  OUT("msi_disable_again", "%s", ename(msi_off()));
  OUT("msi_ctl_after_disable_again", "%#x", cfg_rd(0x42, 2));
  close(efd2);
  close(efd);
  close(ifd);
}

static void case_reset(void) {
  OUT("reset", "%s", ename(ioctl(dev, VFIO_DEVICE_RESET) ? errno : 0));
  OUT("reset_bar0_id", "%#x", rd32(0));
  char buf[4096];
  struct vfio_pci_hot_reset_info *hi = (void *)buf;
  memset(buf, 0, sizeof buf);
  hi->argsz = offsetofend(struct vfio_pci_hot_reset_info, count) - 1;
  OUT("hot_reset_info_argsz_small", "%s", ename(ioctl(dev, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, hi) ? errno : 0));
  memset(buf, 0, sizeof buf);
  hi->argsz = offsetofend(struct vfio_pci_hot_reset_info, count);
  int r = ioctl(dev, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, hi) ? errno : 0;
  OUT("hot_reset_info_minsz", "%s flags=%#x count=%u", ename(r), hi->flags, hi->count);
  memset(buf, 0, sizeof buf);
  hi->argsz = sizeof buf;
  r = ioctl(dev, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, hi) ? errno : 0;
  OUT("hot_reset_info_full", "%s flags=%#x count=%u", ename(r), hi->flags, hi->count);
  for (unsigned i = 0; !r && i < hi->count && i < 8; i++) {
    char name[64];
    snprintf(name, sizeof name, "hot_reset_info_dev%u", i);
    OUT(name, "group=%u seg=%u bus=%u devfn=%#x", hi->devices[i].group_id, hi->devices[i].segment,
        hi->devices[i].bus, hi->devices[i].devfn);
  }
  struct { struct vfio_pci_hot_reset h; int32_t fds[2]; } hr;
  memset(&hr, 0, sizeof hr);
  hr.h.argsz = offsetofend(struct vfio_pci_hot_reset, count) - 1;
  OUT("hot_reset_argsz_small", "%s", ename(ioctl(dev, VFIO_DEVICE_PCI_HOT_RESET, &hr) ? errno : 0));
  memset(&hr, 0, sizeof hr);
  hr.h.argsz = offsetofend(struct vfio_pci_hot_reset, count);
  OUT("hot_reset_no_groups", "%s", ename(ioctl(dev, VFIO_DEVICE_PCI_HOT_RESET, &hr) ? errno : 0));
  memset(&hr, 0, sizeof hr);
  hr.h.argsz = sizeof hr; hr.h.count = 1; hr.fds[0] = group;
  OUT("hot_reset_own_group", "%s", ename(ioctl(dev, VFIO_DEVICE_PCI_HOT_RESET, &hr) ? errno : 0));
  hr.h.flags = 1;
  OUT("hot_reset_bad_flags", "%s", ename(ioctl(dev, VFIO_DEVICE_PCI_HOT_RESET, &hr) ? errno : 0));
  hr.h.flags = 0; hr.h.count = 1; hr.fds[0] = container;
  OUT("hot_reset_container_fd", "%s", ename(ioctl(dev, VFIO_DEVICE_PCI_HOT_RESET, &hr) ? errno : 0));
  hr.h.count = 2; hr.fds[0] = group; hr.fds[1] = group;
  OUT("hot_reset_group_twice", "%s", ename(ioctl(dev, VFIO_DEVICE_PCI_HOT_RESET, &hr) ? errno : 0));
  hr.h.count = 1; hr.h.argsz = offsetofend(struct vfio_pci_hot_reset, count);
  OUT("hot_reset_argsz_short_for_count", "%s", ename(ioctl(dev, VFIO_DEVICE_PCI_HOT_RESET, &hr) ? errno : 0));
}

static int feature(uint32_t argsz, uint32_t flags, void *data, size_t len) {
  char buf[256];
  struct vfio_device_feature *f = (void *)buf;
  memset(buf, 0, sizeof buf);
  f->argsz = argsz ? argsz : (uint32_t)(sizeof *f + len);
  f->flags = flags;
  if (len) memcpy(f->data, data, len);
  int r = ioctl(dev, VFIO_DEVICE_FEATURE, f) ? errno : 0;
  if (len) memcpy(data, f->data, len);
  return r;
}

static void case_feature(void) {
  const uint32_t G = VFIO_DEVICE_FEATURE_GET, S = VFIO_DEVICE_FEATURE_SET, P = VFIO_DEVICE_FEATURE_PROBE;
  char d[64];
  memset(d, 0, sizeof d);
  OUT("feature_argsz_1", "%s", ename(feature(1, P | G | 1, NULL, 0)));
  OUT("feature_argsz_7", "%s", ename(feature(7, P | G | 1, NULL, 0)));
  OUT("feature_unknown_flag_bit19", "%s", ename(feature(0, P | G | (1u << 19), NULL, 0)));
  OUT("feature_unknown_flag_bit31", "%s", ename(feature(0, G | (1u << 31) | 3, NULL, 0)));
  OUT("feature_get_and_set", "%s", ename(feature(0, G | S | 3, NULL, 0)));
  OUT("feature_no_op_bits_3", "%s", ename(feature(0, 3, NULL, 0)));
  OUT("feature_no_op_bits_99", "%s", ename(feature(0, 99, NULL, 0)));
  for (unsigned id = 0; id <= 12; id++) {
    char name[64];
    snprintf(name, sizeof name, "feature_%u_probe", id);
    OUT(name, "%s", ename(feature(0, P | id, NULL, 0)));
    snprintf(name, sizeof name, "feature_%u_probe_get", id);
    OUT(name, "%s", ename(feature(0, P | G | id, NULL, 0)));
    snprintf(name, sizeof name, "feature_%u_probe_set", id);
    OUT(name, "%s", ename(feature(0, P | S | id, NULL, 0)));
    snprintf(name, sizeof name, "feature_%u_probe_get_set", id);
    OUT(name, "%s", ename(feature(0, P | G | S | id, NULL, 0)));
  }
  OUT("feature_0_probe_bit15", "%s", ename(feature(0, P | 0x8000, NULL, 0)));
  OUT("feature_probe_65535", "%s", ename(feature(0, P | 0xffff, NULL, 0)));
  // Migration on edu (no migration support).
  memset(d, 0, sizeof d);
  OUT("feature_migration_get", "%s", ename(feature(0, G | VFIO_DEVICE_FEATURE_MIGRATION, d, 8)));
  OUT("feature_mig_state_get", "%s", ename(feature(0, G | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, d, 8)));
  memset(d, 0, sizeof d);
  d[0] = 2; // STOP
  OUT("feature_mig_state_set_stop", "%s", ename(feature(0, S | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, d, 8)));
  // VF token: edu is not an SR-IOV PF.
  memset(d, 0, sizeof d);
  OUT("feature_vf_token_set", "%s", ename(feature(0, S | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, d, 16)));
  OUT("feature_vf_token_get", "%s", ename(feature(0, G | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, d, 16)));
  // Low power: GET is not allowed; SET enters/exits.
  OUT("feature_low_power_entry_get", "%s", ename(feature(0, G | VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, NULL, 0)));
  OUT("feature_low_power_exit_get", "%s", ename(feature(0, G | VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, NULL, 0)));
  OUT("feature_low_power_exit_set_not_entered", "%s", ename(feature(0, S | VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, NULL, 0)));
  int r = feature(0, S | VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, NULL, 0);
  OUT("feature_low_power_entry_set", "%s", ename(r));
  OUT("feature_low_power_entry_set_twice", "%s", ename(feature(0, S | VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, NULL, 0)));
  OUT("feature_low_power_entered_cfg_command", "%#x", cfg_rd(4, 2));
  OUT("feature_low_power_entered_bar0_id", "%#x", rd32(0));
  OUT("feature_low_power_entered_mmap_read", "%s", mmap_read_bar0());
  OUT("feature_low_power_entered_set_irqs_intx", "%s", ename(irq_fd(TRIG, INTX, 0, -1)));
  intx_off();
  OUT("feature_low_power_exit_set", "%s", ename(feature(0, S | VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, NULL, 0)));
  OUT("feature_low_power_exit_set_twice", "%s", ename(feature(0, S | VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, NULL, 0)));
  OUT("feature_low_power_exited_mmap_read", "%s", mmap_read_bar0());
  OUT("feature_low_power_entry_set_with_data", "%s", ename(feature(0, S | VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, d, 8)));
  OUT("feature_low_power_exit_set_with_data", "%s", ename(feature(0, S | VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, d, 8)));
  int efd = efd_new();
  OUT("feature_low_power_wakeup_entry_no_data", "%s", ename(feature(0, S | VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP, NULL, 0)));
  struct { int32_t fd; uint32_t reserved; } wk = { efd, 0 };
  OUT("feature_low_power_wakeup_entry", "%s", ename(feature(0, S | VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP, &wk, sizeof wk)));
  OUT("feature_low_power_wakeup_exit", "%s", ename(feature(0, S | VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, NULL, 0)));
  OUT("feature_low_power_wakeup_events", "%llu", (unsigned long long)ev_wait(efd));
  wk.fd = -1;
  OUT("feature_low_power_wakeup_entry_fd_minus1", "%s", ename(feature(0, S | VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP, &wk, sizeof wk)));
  feature(0, S | VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, NULL, 0);
  close(efd);
  OUT("feature_low_power_bar0_id_after", "%#x", rd32(0));
  OUT("feature_low_power_cfg_command_after", "%#x", cfg_rd(4, 2));
  cmd_set(0x6, 0);
}

static int ioeventfd(uint32_t argsz, uint32_t flags, uint64_t offset, uint64_t data, int32_t fd) {
  struct vfio_device_ioeventfd io = { .argsz = argsz ? argsz : sizeof io, .flags = flags, .offset = offset, .data = data, .fd = fd };
  return ioctl(dev, VFIO_DEVICE_IOEVENTFD, &io) ? errno : 0;
}

static void case_ioeventfd(void) {
  int efd = efd_new();
  uint64_t one = 1;
  cmd_set(0x6, 0);
  OUT("ioeventfd_argsz_small", "%s", ename(ioeventfd(offsetofend(struct vfio_device_ioeventfd, fd) - 1, 4, bar0_off + 4, 0x12345678, efd)));
  OUT("ioeventfd_bad_flags_0x10", "%s", ename(ioeventfd(0, 0x14, bar0_off + 4, 0x12345678, efd)));
  OUT("ioeventfd_flags_0", "%s", ename(ioeventfd(0, 0, bar0_off + 4, 0x12345678, efd)));
  OUT("ioeventfd_size_3", "%s", ename(ioeventfd(0, 3, bar0_off + 4, 0x12345678, efd)));
  OUT("ioeventfd_fd_minus2", "%s", ename(ioeventfd(0, 4, bar0_off + 4, 0x12345678, -2)));
  OUT("ioeventfd_deassign_unknown", "%s", ename(ioeventfd(0, 4, bar0_off + 4, 0x12345678, -1)));
  OUT("ioeventfd_past_bar0", "%s", ename(ioeventfd(0, 4, bar0_off + 0x100000, 0, efd)));
  OUT("ioeventfd_straddles_bar0_end", "%s", ename(ioeventfd(0, 4, bar0_off + 0xffffe, 0, efd)));
  OUT("ioeventfd_last_dword_bar0", "%s", ename(ioeventfd(0, 4, bar0_off + 0xffffc, 0, efd)));
  OUT("ioeventfd_last_dword_bar0_deassign", "%s", ename(ioeventfd(0, 4, bar0_off + 0xffffc, 0, -1)));
  OUT("ioeventfd_config_region", "%s", ename(ioeventfd(0, 4, cfg_off + 4, 0, efd)));
  OUT("ioeventfd_bar1", "%s", ename(ioeventfd(0, 4, region_off[1] + 4, 0, efd)));
  OUT("ioeventfd_rom", "%s", ename(ioeventfd(0, 4, region_off[6], 0, efd)));
  OUT("ioeventfd_index_9", "%s", ename(ioeventfd(0, 4, (uint64_t)9 << 40, 0, efd)));
  int closed = efd_new(); close(closed);
  OUT("ioeventfd_closed_fd", "%s", ename(ioeventfd(0, 4, bar0_off + 4, 0x12345678, closed)));
  int pipefd[2];
  if (pipe(pipefd)) { perror("pipe"); exit(1); }
  OUT("ioeventfd_pipe_fd", "%s", ename(ioeventfd(0, 4, bar0_off + 4, 0x12345678, pipefd[0])));
  close(pipefd[0]); close(pipefd[1]);

  OUT("ioeventfd_bar0_4", "%s", ename(ioeventfd(0, 4, bar0_off + 4, 0x12345678, efd)));
  wr32(4, 0);
  OUT("ioeventfd_before_signal", "%#x", rd32(4));
  if (write(efd, &one, 8) != 8) perror("write efd");
  msleep(100);
  OUT("ioeventfd_write_landed", "%#x", rd32(4));
  OUT("ioeventfd_duplicate", "%s", ename(ioeventfd(0, 4, bar0_off + 4, 0x12345678, efd)));
  int efd2 = efd_new();
  OUT("ioeventfd_duplicate_other_fd", "%s", ename(ioeventfd(0, 4, bar0_off + 4, 0x12345678, efd2)));
  OUT("ioeventfd_same_addr_other_data", "%s", ename(ioeventfd(0, 4, bar0_off + 4, 0x11111111, efd2)));
  OUT("ioeventfd_same_addr_other_size", "%s", ename(ioeventfd(0, 2, bar0_off + 4, 0x12345678, efd2)));
  OUT("ioeventfd_same_eventfd_other_addr", "%s", ename(ioeventfd(0, 4, bar0_off + 8, 3, efd)));
  wr32(4, 0);
  if (write(efd, &one, 8) != 8) perror("write efd");
  msleep(100);
  OUT("ioeventfd_two_on_one_eventfd", "liveness=%#x fact=%u", rd32(4), rd32(8));
  wr32(4, 0);
  if (write(efd2, &one, 8) != 8) perror("write efd2");
  msleep(100);
  OUT("ioeventfd_other_data_landed", "%#x", rd32(4));
  OUT("ioeventfd_deassign_other_data", "%s", ename(ioeventfd(0, 4, bar0_off + 4, 0x11111111, -1)));
  OUT("ioeventfd_deassign_other_size", "%s", ename(ioeventfd(0, 2, bar0_off + 4, 0x12345678, -1)));
  OUT("ioeventfd_deassign_fact", "%s", ename(ioeventfd(0, 4, bar0_off + 8, 3, -1)));
  OUT("ioeventfd_deassign", "%s", ename(ioeventfd(0, 4, bar0_off + 4, 0x12345678, -1)));
  OUT("ioeventfd_deassign_twice", "%s", ename(ioeventfd(0, 4, bar0_off + 4, 0x12345678, -1)));
  wr32(4, 0);
  if (write(efd, &one, 8) != 8) perror("write efd");
  msleep(100);
  OUT("ioeventfd_after_deassign", "%#x", rd32(4));
  // Sizes: 1, 2, 8.
  OUT("ioeventfd_size_1", "%s", ename(ioeventfd(0, 1, bar0_off + 4, 0xab, efd)));
  OUT("ioeventfd_size_1_deassign", "%s", ename(ioeventfd(0, 1, bar0_off + 4, 0xab, -1)));
  OUT("ioeventfd_size_2", "%s", ename(ioeventfd(0, 2, bar0_off + 4, 0xabcd, efd)));
  OUT("ioeventfd_size_2_deassign", "%s", ename(ioeventfd(0, 2, bar0_off + 4, 0xabcd, -1)));
  OUT("ioeventfd_size_8", "%s", ename(ioeventfd(0, 8, bar0_off + 0x80, 0x1000, efd)));
  OUT("ioeventfd_size_8_deassign", "%s", ename(ioeventfd(0, 8, bar0_off + 0x80, 0x1000, -1)));
  OUT("ioeventfd_unaligned_4_at_2", "%s", ename(ioeventfd(0, 4, bar0_off + 2, 0, efd)));
  ioeventfd(0, 4, bar0_off + 2, 0, -1);
  OUT("ioeventfd_data_high_bits_size_4", "%s", ename(ioeventfd(0, 4, bar0_off + 4, 0x1ffffffffull, efd)));
  ioeventfd(0, 4, bar0_off + 4, 0x1ffffffffull, -1);
  // Memory decode off: a signalled write is dropped (or not).
  OUT("ioeventfd_for_memory_off", "%s", ename(ioeventfd(0, 4, bar0_off + 4, 0x0f0f0f0f, efd)));
  wr32(4, 0);
  cmd_set(0, 0x2);
  if (write(efd, &one, 8) != 8) perror("write efd");
  msleep(100);
  cmd_set(0x2, 0);
  OUT("ioeventfd_memory_off_write", "%#x", rd32(4));
  ioeventfd(0, 4, bar0_off + 4, 0x0f0f0f0f, -1);
  // How many registrations one device takes.
  int nreg = 0, rmax = 0;
  for (; nreg < 1100 && !(rmax = ioeventfd(0, 4, bar0_off + 4, 0x10000 + nreg, efd)); nreg++) ;
  OUT("ioeventfd_max", "registered=%d then %s", nreg, ename(rmax));
  int ndel = 0;
  for (int i = 0; i < nreg; i++) ndel += !ioeventfd(0, 4, bar0_off + 4, 0x10000 + i, -1);
  OUT("ioeventfd_max_deassigned", "%d", ndel);
  // Still registered when the device fd is closed: checked in case_close.
  close(efd2);
  close(efd);
}

static void case_rw(void) {
  char b[16];
  memset(b, 0, sizeof b);
  ssize_t n;
#define RW_CASE(name, call) do { n = call; OUT(name, "%zd %s", n, n < 0 ? ename(errno) : ""); } while (0)
  RW_CASE("rw_rom_read", pread(dev, b, 4, region_off[6]));
  RW_CASE("rw_rom_write", pwrite(dev, b, 4, region_off[6]));
  RW_CASE("rw_vga_read", pread(dev, b, 4, region_off[8]));
  RW_CASE("rw_vga_write", pwrite(dev, b, 4, region_off[8]));
  for (unsigned i = 1; i <= 5; i++) {
    char name[64];
    snprintf(name, sizeof name, "rw_bar%u_read", i);
    RW_CASE(name, pread(dev, b, 4, region_off[i]));
    snprintf(name, sizeof name, "rw_bar%u_write", i);
    RW_CASE(name, pwrite(dev, b, 4, region_off[i]));
  }
  RW_CASE("rw_index_9_read", pread(dev, b, 4, (uint64_t)9 << 40));
  RW_CASE("rw_index_255_read", pread(dev, b, 4, (uint64_t)255 << 40));
  RW_CASE("rw_bar0_past_end", pread(dev, b, 4, bar0_off + 0x100000));
  RW_CASE("rw_bar0_straddle_end", pread(dev, b, 8, bar0_off + 0xffffc));
  RW_CASE("rw_bar0_last_dword", pread(dev, b, 4, bar0_off + 0xffffc));
  RW_CASE("rw_config_past_end", pread(dev, b, 4, cfg_off + 256));
  RW_CASE("rw_config_straddle_end", pread(dev, b, 8, cfg_off + 252));
  RW_CASE("rw_config_write_past_end", pwrite(dev, b, 4, cfg_off + 256));
  RW_CASE("rw_bar0_read_0_bytes", pread(dev, b, 0, bar0_off));
  uint32_t v[4] = { 0 };
  wr32(4, 0x0f0f0f0f);
  n = pread(dev, v, 8, bar0_off);
  OUT("rw_bar0_read_8", "%zd %#x %#x", n, v[0], v[1]);
  n = pread(dev, v, 8, bar0_off + 4);
  OUT("rw_bar0_read_8_at_4", "%zd %#x %#x", n, v[0], v[1]);
  n = pread(dev, v, 16, bar0_off);
  OUT("rw_bar0_read_16", "%zd %#x %#x %#x %#x", n, v[0], v[1], v[2], v[3]);
  uint64_t q = 0x1111222233334444ull;
  n = pwrite(dev, &q, 8, bar0_off + 4);
  OUT("rw_bar0_write_8_at_4", "%zd liveness=%#x fact=%u", n, rd32(4), rd32(8));
  q = 0x0000000055556666ull;
  n = pwrite(dev, &q, 8, bar0_off + 0x80);
  uint64_t src = 0;
  pread(dev, &src, 8, bar0_off + 0x80);
  OUT("rw_bar0_write_8_dma_src", "%zd %#llx", n, (unsigned long long)src);
  uint16_t h = 0;
  n = pread(dev, &h, 2, bar0_off);
  OUT("rw_bar0_read_2", "%zd %#x", n, h);
  uint8_t c = 0;
  n = pread(dev, &c, 1, bar0_off + 1);
  OUT("rw_bar0_read_1", "%zd %#x", n, c);
  n = pread(dev, v, 4, bar0_off + 2);
  OUT("rw_bar0_read_4_at_2", "%zd %#x", n, v[0]);
  n = pread(dev, &q, 8, cfg_off + 0x40);
  OUT("rw_config_read_8_at_0x40", "%zd %#llx", n, (unsigned long long)q);
  // A write that the device ignores (size 2 to a 4-byte register).
  wr32(4, 0);
  h = 0x1234;
  n = pwrite(dev, &h, 2, bar0_off + 4);
  OUT("rw_bar0_write_2_liveness", "%zd %#x", n, rd32(4));
  // BAR0 mmap.
  long pg = sysconf(_SC_PAGESIZE);
  OUT("mmap_bar0", "%s", mmap_read_bar0());
  cmd_set(0, 0x2);
  OUT("mmap_bar0_memory_disabled", "%s", mmap_read_bar0());
  cmd_set(0x2, 0);
  void *p = mmap(NULL, pg, PROT_READ, MAP_SHARED, dev, cfg_off);
  OUT("mmap_config", "%s", p == MAP_FAILED ? ename(errno) : "0");
  if (p != MAP_FAILED) munmap(p, pg);
  p = mmap(NULL, pg, PROT_READ, MAP_SHARED, dev, region_off[1]);
  OUT("mmap_bar1", "%s", p == MAP_FAILED ? ename(errno) : "0");
  if (p != MAP_FAILED) munmap(p, pg);
  p = mmap(NULL, 2 << 20, PROT_READ, MAP_SHARED, dev, bar0_off);
  OUT("mmap_bar0_2m", "%s", p == MAP_FAILED ? ename(errno) : "0");
  if (p != MAP_FAILED) munmap(p, 2 << 20);
  p = mmap(NULL, pg, PROT_READ, MAP_PRIVATE, dev, bar0_off);
  OUT("mmap_bar0_private", "%s", p == MAP_FAILED ? ename(errno) : "0");
  if (p != MAP_FAILED) munmap(p, pg);
}

static void case_close(void) {
  int efd = efd_new(), ifd = efd_new();
  cmd_set(0x6, 0);
  // Leave state behind: INTx unmask eventfd, MSI trigger, an ioeventfd, a
  // user-written interrupt line.
  irq_fd(TRIG, INTX, 0, ifd);
  int ufd = efd_new();
  irq_fd(UNMASK, INTX, 0, ufd);
  intx_off();
  OUT("close_msi_enable", "%s", ename(irq_fd(TRIG, MSI, 0, efd)));
  OUT("close_ioeventfd", "%s", ename(ioeventfd(0, 4, bar0_off + 4, 0x12345678, efd)));
  cfg_wr(0x3c, 1, 0x5a);
  OUT("close_before_cmd", "%#x", cfg_rd(4, 2));
  OUT("close_before_msi_ctl", "%#x", cfg_rd(0x42, 2));
  close(dev);
  // The old eventfds get nothing after the close.
  uint64_t one = 1;
  if (write(efd, &one, 8) != 8) perror("write efd");
  ev_read(efd);
  dev = open_device();
  learn_offsets();
  OUT("reopen_cfg_command", "%#x", cfg_rd(4, 2));
  OUT("reopen_cfg_status", "%#x", cfg_rd(6, 2));
  OUT("reopen_msi_ctl", "%#x", cfg_rd(0x42, 2));
  OUT("reopen_interrupt_line_user_value", "%d", cfg_rd(0x3c, 1) == 0x5a);
  OUT("reopen_bar0_id", "%#x", rd32(0));
  wr32(4, 0);
  if (write(efd, &one, 8) != 8) perror("write efd");
  msleep(100);
  OUT("reopen_old_ioeventfd_gone", "%#x", rd32(4));
  OUT("reopen_intx_disable", "%s", ename(intx_off()));
  OUT("reopen_msi_disable", "%s", ename(msi_off()));
  OUT("reopen_intx_mask", "%s", ename(irq_none(MASK, INTX, 0, 1)));
  cmd_set(0x6, 0x400);
  edu_ack(0xffffffff);
  OUT("reopen_intx_enable", "%s", ename(irq_fd(TRIG, INTX, 0, ifd)));
  edu_raise(0x1);
  OUT("reopen_intx_raise_events", "%llu", (unsigned long long)ev_wait(ifd));
  edu_ack(0x1);
  OUT("reopen_intx_unmask", "%s", ename(irq_none(UNMASK, INTX, 0, 1)));
  OUT("reopen_old_unmask_eventfd_events", "%llu", (unsigned long long)ev_read(ufd));
  intx_off();
  // A second device fd at once.
  int dev2 = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
  OUT("second_device_fd", "%s", dev2 < 0 ? ename(errno) : "fd");
  if (dev2 >= 0) close(dev2);
  // Close with INTx enabled and the line asserted, then reopen.
  irq_fd(TRIG, INTX, 0, ifd);
  edu_raise(0x2);
  ev_wait(ifd);
  close(dev);
  dev = open_device();
  learn_offsets();
  OUT("reopen2_cfg_command", "%#x", cfg_rd(4, 2));
  OUT("reopen2_edu_status", "%#x", rd32(0x24));
  cmd_set(0x6, 0x400);
  OUT("reopen2_intx_enable_asserted", "%s", ename(irq_fd(TRIG, INTX, 0, ifd)));
  OUT("reopen2_intx_enable_asserted_events", "%llu", (unsigned long long)ev_wait(ifd));
  edu_ack(0xffffffff);
  irq_none(UNMASK, INTX, 0, 1);
  intx_off();
  close(ufd);
  close(ifd);
  close(efd);
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s /dev/vfio/<group> <bdf>\n", argv[0]); return 2; }
  group_path = argv[1]; bdf = argv[2];
  open_all();
  dev = open_device();
  learn_offsets();
  case_device_info();
  case_region_info();
  case_irq_info();
  case_config();
  case_set_irqs_validation();
  case_intx_delivery();
  case_msi_delivery();
  case_reset();
  case_feature();
  case_ioeventfd();
  case_rw();
  case_close();
  close(dev);
  ioctl(group, VFIO_GROUP_UNSET_CONTAINER);
  close(group);
  close(container);
  printf("done\n");
  return 0;
}
