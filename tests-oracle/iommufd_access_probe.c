// iommufd_access_probe: asks Linux 6.12 how iommufd's emulated access path
// (struct iommufd_access: what a mediated device pins and reads through)
// and its locked-memory accounting answer, one "<case> <result>" per line.
//
// usage: iommufd_access_probe mdev CDEV [EDU_CDEV]   an emulated (mdev) device's cdev:
//                                                   bind, attach to IOAS/HWPT, detach
//        iommufd_access_probe mtty [EDU_CDEV]        same, with a mtty mdev it creates (6.12 guest)
//        iommufd_access_probe test                   iommufd_access_pin_pages / _rw through
//                                                   IOMMU_TEST_CMD (CONFIG_IOMMUFD_TEST only)
//        iommufd_access_probe account EDU_CDEV       RLIMIT_MODE, VmPin/VmLck, IOAS_COPY charge
//        iommufd_access_probe pasid EDU_CDEV         a later kernel's PASID attach flag, fault queues
//        iommufd_access_probe fault-thread           a fault queue read by a thread running before it
//                                                    was made, and by its forked child
//        iommufd_access_probe fault EDU_CDEV         a fault queue's object and descriptor: alloc,
//                                                   read/write/poll/fstat, destroy vs close, HWPT
//
// The uAPI structures are declared here (the build host's headers predate
// iommufd); layouts are Linux 6.12's include/uapi/linux/iommufd.h, vfio.h
// and drivers/iommu/iommufd/iommufd_test.h.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/capability.h>

#define ICMD(n) _IO(';', 0x80 + (n))
#define IOMMU_DESTROY ICMD(0)
#define IOMMU_IOAS_ALLOC ICMD(1)
#define IOMMU_IOAS_COPY ICMD(3)
#define IOMMU_IOAS_IOVA_RANGES ICMD(4)
#define IOMMU_IOAS_MAP ICMD(5)
#define IOMMU_IOAS_UNMAP ICMD(6)
#define IOMMU_OPTION ICMD(7)
#define IOMMU_HWPT_ALLOC ICMD(9)
#define IOMMU_GET_HW_INFO ICMD(10)
#define IOMMU_TEST_CMD ICMD(32)
#define VFIO_DEVICE_GET_INFO _IO(';', 107)
#define VFIO_DEVICE_BIND_IOMMUFD _IO(';', 118)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(';', 119)
#define VFIO_DEVICE_DETACH_IOMMUFD_PT _IO(';', 120)
#define FIXED 1
#define WR 2
#define RD 4
#define RW (RD | WR)
#define PG 4096ul

struct destroy { uint32_t size, id; };
struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct iova_range { uint64_t start, last; };
struct iova_ranges { uint32_t size, ioas_id, num_iovas, reserved; uint64_t allowed_iovas, out_iova_alignment; };
struct ioas_map { uint32_t size, flags, ioas_id, reserved; uint64_t user_va, length, iova; };
struct ioas_copy { uint32_t size, flags, dst_ioas_id, src_ioas_id; uint64_t length, dst_iova, src_iova; };
struct ioas_unmap { uint32_t size, ioas_id; uint64_t iova, length; };
struct option { uint32_t size, option_id; uint16_t op, reserved; uint32_t object_id; uint64_t val64; };
struct hwpt_alloc { uint32_t size, flags, dev_id, pt_id, out_hwpt_id, reserved, data_type, data_len; uint64_t data_uptr; };
struct hw_info { uint32_t size, flags, dev_id, data_len; uint64_t data_uptr; uint32_t out_data_type, reserved; uint64_t out_capabilities; };
struct bind { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; };
struct attach { uint32_t argsz, flags, pt_id; };
struct detach { uint32_t argsz, flags; };
struct dev_info { uint32_t argsz, flags, num_regions, num_irqs, cap_offset, pad; };
// struct iommu_test_cmd, the members used here.
struct test_cmd {
  uint32_t size, op, id, reserved;
  union {
    struct { uint32_t out_access_fd, flags; } create_access;
    struct { uint32_t access_pages_id; } destroy_access_pages;
    struct { uint32_t flags, out_access_pages_id; uint64_t iova, length, uptr; } access_pages;
    struct { uint64_t iova, length, uptr; uint32_t flags; } access_rw;
    struct { uint32_t ioas_id; } access_replace_ioas;
    struct { uint32_t out_stdev_id, out_hwpt_id, out_idev_id; } mock_domain;
    uint8_t pad[64];
  };
  uint32_t last;
};
enum { OP_MOCK_DOMAIN = 2, OP_CREATE_ACCESS = 5, OP_DESTROY_ACCESS_PAGES, OP_ACCESS_PAGES, OP_ACCESS_RW,
       OP_ACCESS_REPLACE_IOAS = 11 };

static const char *ename(int e) {
  switch (e) {
  case 0: return "0";
  case EINVAL: return "EINVAL";
  case EEXIST: return "EEXIST";
  case EFAULT: return "EFAULT";
  case ENOMEM: return "ENOMEM";
  case EPERM: return "EPERM";
  case ENOENT: return "ENOENT";
  case EBUSY: return "EBUSY";
  case ENOTTY: return "ENOTTY";
  case EOPNOTSUPP: return "EOPNOTSUPP";
  case EOVERFLOW: return "EOVERFLOW";
  case EADDRINUSE: return "EADDRINUSE";
  case EDEADLK: return "EDEADLK";
  case ENODEV: return "ENODEV";
  case ESPIPE: return "ESPIPE";
  case EBADF: return "EBADF";
  case E2BIG: return "E2BIG";
  case EAGAIN: return "EAGAIN";
  default: { static char b[32]; snprintf(b, sizeof b, "errno%d", e); return b; }
  }
}
static const char *io(int fd, unsigned long req, void *arg) {
  errno = 0;
  int r = ioctl(fd, req, arg);
  return ename(r < 0 ? errno : 0);
}

static int ifd;
static char *buf;  // 32 pages, 2 MiB aligned plus one page
static uint32_t ioas_new(void) {
  struct ioas_alloc a = {sizeof a, 0, 0};
  if (ioctl(ifd, IOMMU_IOAS_ALLOC, &a)) return 0;
  return a.out_ioas_id;
}
static const char *destroy(uint32_t id) { struct destroy d = {sizeof d, id}; return io(ifd, IOMMU_DESTROY, &d); }
static const char *map(uint32_t ioas, uint32_t flags, void *va, uint64_t len, uint64_t iova) {
  struct ioas_map m = {sizeof m, flags | FIXED, ioas, 0, (uintptr_t)va, len, iova};
  return io(ifd, IOMMU_IOAS_MAP, &m);
}
static void unmap_case(const char *name, uint32_t ioas, uint64_t iova, uint64_t len) {
  struct ioas_unmap u = {sizeof u, ioas, iova, len};
  const char *e = io(ifd, IOMMU_IOAS_UNMAP, &u);
  printf("%s %s length=%#llx\n", name, e, (unsigned long long)u.length);
}
static void ranges(const char *name, uint32_t ioas) {
  struct iova_range r[4] = {0};
  struct iova_ranges q = {sizeof q, ioas, 4, 0, (uintptr_t)r, 0};
  const char *e = io(ifd, IOMMU_IOAS_IOVA_RANGES, &q);
  printf("%s %s num=%u align=%#llx [%#llx,%#llx]\n", name, e, q.num_iovas, (unsigned long long)q.out_iova_alignment,
         (unsigned long long)r[0].start, (unsigned long long)r[0].last);
}
static void status(const char *name) {
  char line[256];
  FILE *f = fopen("/proc/self/status", "r");
  long pin = -1, lck = -1;
  while (f && fgets(line, sizeof line, f)) {
    sscanf(line, "VmPin: %ld", &pin);
    sscanf(line, "VmLck: %ld", &lck);
  }
  if (f) fclose(f);
  printf("%s VmPin=%ldkB VmLck=%ldkB\n", name, pin, lck);
}

// ---- an emulated device through its cdev --------------------------------

static int bind_dev(const char *name, int dev, uint32_t *id) {
  struct bind b = {sizeof b, 0, ifd, 0};
  const char *e = io(dev, VFIO_DEVICE_BIND_IOMMUFD, &b);
  printf("%s %s\n", name, e);
  *id = b.out_devid;
  return strcmp(e, "0");
}
static void attach_case(const char *name, int dev, uint32_t pt, uint32_t *out) {
  struct attach a = {sizeof a, 0, pt};
  const char *e = io(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a);
  printf("%s %s pt_is_input=%d\n", name, e, a.pt_id == pt);
  if (out) *out = a.pt_id;
}
static void detach_case(const char *name, int dev) {
  struct detach d = {sizeof d, 0};
  printf("%s %s\n", name, io(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &d));
}

static void case_mdev(const char *cdev, const char *edu_cdev) {
  int dev = open(cdev, O_RDWR);
  printf("mdev_open %s\n", dev < 0 ? ename(errno) : "0");
  if (dev < 0) return;
  struct dev_info di = {sizeof di};
  printf("mdev_info_before_bind %s\n", io(dev, VFIO_DEVICE_GET_INFO, &di));
  uint32_t devid = 0;
  uint32_t ioas = ioas_new(), ioas2 = ioas_new();
  printf("mdev_ioas ioas=%u ioas2=%u\n", ioas, ioas2);
  if (bind_dev("mdev_bind", dev, &devid)) return;
  printf("mdev_devid_is_next %d\n", devid == ioas2 + 1);
  printf("mdev_info_after_bind %s\n", io(dev, VFIO_DEVICE_GET_INFO, &di));
  struct hw_info hi = {sizeof hi, 0, devid, 0, 0};
  printf("mdev_hw_info %s\n", io(ifd, IOMMU_GET_HW_INFO, &hi));
  struct hwpt_alloc ha = {sizeof ha, 0, devid, ioas};
  printf("mdev_hwpt_alloc %s\n", io(ifd, IOMMU_HWPT_ALLOC, &ha));
  printf("mdev_destroy_devid %s\n", destroy(devid));
  attach_case("mdev_attach_unknown", dev, 999, NULL);
  attach_case("mdev_attach_devid", dev, devid, NULL);
  // A byte-aligned area: fine in an IOAS without domain or access.
  printf("mdev_map_unaligned %s\n", map(ioas, RW, buf + 1, 100, 0x1001));
  ranges("mdev_ranges_before", ioas);
  attach_case("mdev_attach_unaligned_area", dev, ioas, NULL);
  unmap_case("mdev_unmap_unaligned", ioas, 0x1001, 100);
  uint32_t pt = 0;
  attach_case("mdev_attach_ioas", dev, ioas, &pt);
  printf("mdev_attach_ioas_pt %s\n", pt == ioas ? "ioas" : "other");
  ranges("mdev_ranges_attached", ioas);
  printf("mdev_map_unaligned_attached %s\n", map(ioas, RW, buf + 1, 100, 0x1001));
  printf("mdev_map_attached %s\n", map(ioas, RW, buf, 4 * PG, 0x100000));
  printf("mdev_destroy_ioas %s\n", destroy(ioas));
  attach_case("mdev_attach_same", dev, ioas, NULL);
  attach_case("mdev_attach_ioas2", dev, ioas2, &pt);
  printf("mdev_destroy_ioas_after_move %s\n", destroy(ioas2 + 100) /* unknown */);
  printf("mdev_destroy_old_ioas %s\n", destroy(ioas));
  ioas = ioas_new();
  printf("mdev_ioas_again %u\n", ioas);
  if (edu_cdev) {
    int edu = open(edu_cdev, O_RDWR);
    uint32_t eid = 0;
    if (edu >= 0 && !bind_dev("mdev_edu_bind", edu, &eid)) {
      struct hwpt_alloc h = {sizeof h, 0, eid, ioas2};
      printf("mdev_edu_hwpt %s\n", io(ifd, IOMMU_HWPT_ALLOC, &h));
      attach_case("mdev_attach_hwpt", dev, h.out_hwpt_id, NULL);
      ranges("mdev_ranges_ioas2", ioas2);
      printf("mdev_destroy_hwpt %s\n", destroy(h.out_hwpt_id));
      close(edu);
    }
  }
  detach_case("mdev_detach", dev);
  detach_case("mdev_detach_again", dev);
  printf("mdev_destroy_ioas2_detached %s\n", destroy(ioas2));
  ranges("mdev_ranges_detached", ioas);
  struct detach bad = {sizeof bad, 1};
  printf("mdev_detach_flags %s\n", io(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &bad));
  struct attach badat = {sizeof badat, 1, ioas};
  printf("mdev_attach_flags %s\n", io(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &badat));
  attach_case("mdev_attach_final", dev, ioas, NULL);
  close(dev);
  printf("mdev_destroy_after_close %s\n", destroy(ioas));
}

static char *mtty_cdev(void) {
  static char path[256];
  const char *uuid = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
  DIR *d = opendir("/sys/class/mdev_bus");
  struct dirent *e;
  char p[512];
  while (d && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    snprintf(p, sizeof p, "/sys/class/mdev_bus/%s/mdev_supported_types/mtty-1/create", e->d_name);
    int f = open(p, O_WRONLY);
    if (f < 0) continue;
    int w = write(f, uuid, strlen(uuid));
    printf("mtty_create %s\n", w < 0 ? ename(errno) : "0");
    close(f);
  }
  if (d) closedir(d);
  snprintf(p, sizeof p, "/sys/bus/mdev/devices/%s/vfio-dev", uuid);
  d = opendir(p);
  while (d && (e = readdir(d)))
    if (!strncmp(e->d_name, "vfio", 4)) snprintf(path, sizeof path, "/dev/vfio/devices/%s", e->d_name);
  if (d) closedir(d);
  return path[0] ? path : NULL;
}

// ---- iommufd_access through the selftest's access (IOMMU_TEST_CMD) -------

static int tcmd(uint32_t op, uint32_t id, struct test_cmd *c) {
  c->size = sizeof *c;
  c->op = op;
  c->id = id;
  errno = 0;
  return ioctl(ifd, IOMMU_TEST_CMD, c) < 0 ? errno : 0;
}
static int afd;
static uint32_t pin(const char *name, uint64_t iova, uint64_t len, uint32_t flags) {
  struct test_cmd c = {0};
  c.access_pages.flags = flags;
  c.access_pages.iova = iova;
  c.access_pages.length = len;
  int e = tcmd(OP_ACCESS_PAGES, afd, &c);
  printf("%s %s\n", name, ename(e));
  return e ? 0 : c.access_pages.out_access_pages_id;
}
static void unpin(uint32_t id) {
  struct test_cmd c = {0};
  c.destroy_access_pages.access_pages_id = id;
  tcmd(OP_DESTROY_ACCESS_PAGES, afd, &c);
}
static void rw(const char *name, uint64_t iova, void *data, uint64_t len, uint32_t flags) {
  struct test_cmd c = {0};
  c.access_rw.iova = iova;
  c.access_rw.length = len;
  c.access_rw.uptr = (uintptr_t)data;
  c.access_rw.flags = flags;
  printf("%s %s\n", name, ename(tcmd(OP_ACCESS_RW, afd, &c)));
}

static void case_test(void) {
  uint32_t ioas = ioas_new();
  // Areas: [0x100000, 4 pages RW] [0x104000, 2 pages RW] (adjacent), [0x200000, 2 pages RO],
  // [0x300000, 1 page WO].
  printf("t_map_a %s\n", map(ioas, RW, buf, 4 * PG, 0x100000));
  printf("t_map_b %s\n", map(ioas, RW, buf + 4 * PG, 2 * PG, 0x104000));
  printf("t_map_ro %s\n", map(ioas, RD, buf + 8 * PG, 2 * PG, 0x200000));
  printf("t_map_wo %s\n", map(ioas, WR, buf + 10 * PG, PG, 0x300000));
  printf("t_map_unaligned %s\n", map(ioas, RW, buf + 12 * PG + 8, 64, 0x400008));
  struct test_cmd c = {0};
  c.create_access.flags = 1;
  printf("t_access_unaligned_area %s\n", ename(tcmd(OP_CREATE_ACCESS, ioas, &c)));
  if (c.create_access.out_access_fd) close(c.create_access.out_access_fd);
  unmap_case("t_unmap_unaligned", ioas, 0x400008, 64);
  memset(&c, 0, sizeof c);
  c.create_access.flags = 1;
  int e = tcmd(OP_CREATE_ACCESS, ioas, &c);
  printf("t_access_create %s\n", ename(e));
  if (e) return;
  afd = c.create_access.out_access_fd;
  ranges("t_ranges_access", ioas);
  printf("t_map_unaligned_access %s\n", map(ioas, RW, buf + 12 * PG + 8, 64, 0x400008));
  printf("t_destroy_ioas %s\n", destroy(ioas));
  status("t_status_before_pin");
  uint32_t p1 = pin("t_pin_read", 0x100000, PG, 0);
  uint32_t p2 = pin("t_pin_write", 0x101000, PG, 1);
  status("t_status_2_pinned");
  uint32_t p3 = pin("t_pin_same_again", 0x100000, PG, 1);
  status("t_status_same_again");
  pin("t_pin_unmapped", 0x500000, PG, 0);
  pin("t_pin_hole_after", 0x105000, 2 * PG, 0);
  pin("t_pin_ro_write", 0x200000, PG, 1);
  uint32_t p4 = pin("t_pin_ro_read", 0x200000, PG, 0);
  pin("t_pin_wo_read", 0x300000, PG, 0);
  uint32_t p5 = pin("t_pin_wo_write", 0x300000, PG, 1);
  uint32_t p6 = pin("t_pin_across_areas", 0x103000, 2 * PG, 1);
  pin("t_pin_zero", 0x100000, 0, 0);
  pin("t_pin_wrap", 0xfffffffffffff000ull, 0x2000, 0);
  pin("t_pin_unaligned_iova", 0x100800, 0x100, 0);
  pin("t_pin_flags", 0x100000, PG, 4);
  status("t_status_pins");
  char data[32], back[32];
  for (int i = 0; i < 32; i++) data[i] = (char)(0x40 + i);
  rw("t_rw_write", 0x100010, data, 16, 1);
  printf("t_rw_write_landed %d\n", !memcmp(buf + 0x10, data, 16));
  memset(back, 0, sizeof back);
  rw("t_rw_read", 0x100010, back, 16, 0);
  printf("t_rw_read_data %d\n", !memcmp(back, data, 16));
  rw("t_rw_across_areas", 0x103ff8, data, 16, 1);
  printf("t_rw_across_landed %d\n", !memcmp(buf + 4 * PG - 8, data, 16));
  rw("t_rw_unmapped", 0x500000, back, 16, 0);
  rw("t_rw_into_hole", 0x105ff8, back, 16, 0);
  rw("t_rw_ro_write", 0x200000, data, 16, 1);
  rw("t_rw_ro_read", 0x200000, back, 16, 0);
  rw("t_rw_wo_read", 0x300000, back, 16, 0);
  rw("t_rw_wo_write", 0x300000, data, 16, 1);
  rw("t_rw_zero", 0x100000, back, 0, 0);
  rw("t_rw_wrap", 0xfffffffffffffff0ull, back, 32, 0);
  // Unmap of areas with access pins: the access's unmap callback runs (the selftest's drops its pins).
  unmap_case("t_unmap_pinned", ioas, 0x100000, 4 * PG);
  status("t_status_after_unmap");
  pin("t_pin_after_unmap", 0x100000, PG, 0);
  unmap_case("t_unmap_part_of_area", ioas, 0x104000, PG);
  (void)p1; (void)p2; (void)p3; (void)p6;
  unpin(p4);
  unpin(p5);
  status("t_status_unpinned");
  // Replace: the access moves to another IOAS.
  uint32_t ioas2 = ioas_new();
  memset(&c, 0, sizeof c);
  c.access_replace_ioas.ioas_id = ioas2;
  printf("t_replace %s\n", ename(tcmd(OP_ACCESS_REPLACE_IOAS, afd, &c)));
  pin("t_pin_after_replace_old_iova", 0x200000, PG, 0);
  printf("t_destroy_old_ioas %s\n", destroy(ioas));
  printf("t_destroy_new_ioas %s\n", destroy(ioas2));
  close(afd);
  printf("t_destroy_new_ioas_closed %s\n", destroy(ioas2));
}

// ---- accounting ----------------------------------------------------------

// IOMMU_OPTION: option RLIMIT_MODE is 0; op SET is 0, GET is 1.
static int set_mode(uint64_t v) {
  struct option o = {sizeof o, 0, 0, 0, 0, v};
  errno = 0;
  return ioctl(ifd, IOMMU_OPTION, &o) < 0 ? errno : 0;
}

// Turns capability `cap` off (0) or on (1) in the effective set.
static const char *cap_set(int cap, int on) {
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2];
  syscall(SYS_capget, &h, d);
  if (on) d[cap / 32].effective |= 1u << (cap % 32);
  else d[cap / 32].effective &= ~(1u << (cap % 32));
  return syscall(SYS_capset, &h, d) ? ename(errno) : "0";
}

static void account_round(const char *tag, int mode, int ipc_lock, const char *edu_cdev) {
  char n[96];
#define N(s) (snprintf(n, sizeof n, "%s_%s", tag, s), n)
  if (!ipc_lock) cap_set(CAP_IPC_LOCK, 0);
  ifd = open("/dev/iommu", O_RDWR);
  printf("%s %s\n", N("set_mode"), ename(set_mode(mode)));
  struct option g = {sizeof g, 0, 1, 0, 0, 0x55};
  const char *ge = io(ifd, IOMMU_OPTION, &g);
  printf("%s %s val=%llu\n", N("get_mode"), ge, (unsigned long long)g.val64);
  int dev = open(edu_cdev, O_RDWR);
  uint32_t devid = 0;
  if (bind_dev(N("bind"), dev, &devid)) return;
  printf("%s %s\n", N("set_mode_bound"), ename(set_mode(mode)));
  uint32_t ioas = ioas_new(), ioas2 = ioas_new();
  status(N("status_start"));
  printf("%s %s\n", N("map_no_domain"), map(ioas, RW, buf, 8 * PG, 0x100000));
  status(N("status_no_domain"));
  attach_case(N("attach"), dev, ioas, NULL);
  status(N("status_attached"));
  struct ioas_copy cp = {sizeof cp, FIXED | RW, ioas, ioas, 4 * PG, 0x200000, 0x100000};
  printf("%s %s\n", N("copy_same_ioas"), io(ifd, IOMMU_IOAS_COPY, &cp));
  status(N("status_copied"));
  cp.dst_ioas_id = ioas2;
  printf("%s %s\n", N("copy_other_ioas"), io(ifd, IOMMU_IOAS_COPY, &cp));
  status(N("status_copied_other"));
  printf("%s %s\n", N("map_same_memory_again"), map(ioas, RW, buf, 8 * PG, 0x300000));
  status(N("status_same_memory_again"));
  unmap_case(N("unmap_src"), ioas, 0x100000, 8 * PG);
  status(N("status_src_unmapped"));
  unmap_case(N("unmap_copy"), ioas, 0x200000, 4 * PG);
  status(N("status_copy_unmapped"));
  struct rlimit old, lim = {40 * PG, 40 * PG};
  getrlimit(RLIMIT_MEMLOCK, &old);
  setrlimit(RLIMIT_MEMLOCK, &lim);
  // 8 + 4 pages are charged now (in this mode's account); 40 allowed.
  printf("%s %s\n", N("map_over_rlimit"), map(ioas, RW, buf + 8 * PG, 30 * PG, 0x800000));
  status(N("status_over"));
  printf("%s %s\n", N("map_to_rlimit"), map(ioas, RW, buf + 8 * PG, 28 * PG, 0x900000));
  status(N("status_to_limit"));
  printf("%s %s\n", N("map_one_more"), map(ioas, RW, buf + 40 * PG, PG, 0xa00000));
  struct ioas_copy c2 = {sizeof c2, FIXED | RW, ioas2, ioas, 28 * PG, 0xb00000, 0x900000};
  printf("%s %s\n", N("copy_at_limit"), io(ifd, IOMMU_IOAS_COPY, &c2));
  setrlimit(RLIMIT_MEMLOCK, &old);
  close(dev);
  status(N("status_dev_closed"));
  close(ifd);
  status(N("status_closed"));
  if (!ipc_lock) cap_set(CAP_IPC_LOCK, 1);
#undef N
}

static void case_account(const char *edu_cdev) {
  close(ifd);
  ifd = open("/dev/iommu", O_RDWR);
  struct option g = {sizeof g, 0, 1, 0, 0, 0x55};
  const char *ge = io(ifd, IOMMU_OPTION, &g);
  printf("acct_get_mode %s val=%llu\n", ge, (unsigned long long)g.val64);
  printf("acct_set_mode_2 %s\n", ename(set_mode(2)));
  printf("acct_set_mode_1 %s\n", ename(set_mode(1)));
  g.val64 = 0x55;
  ge = io(ifd, IOMMU_OPTION, &g);
  printf("acct_get_mode_after %s val=%llu\n", ge, (unsigned long long)g.val64);
  printf("acct_set_mode_0 %s\n", ename(set_mode(0)));
  ioas_new();
  printf("acct_set_mode_with_ioas %s\n", ename(set_mode(1)));
  close(ifd);
  account_round("acct_user_cap", 0, 1, edu_cdev);
  account_round("acct_user_nocap", 0, 0, edu_cdev);
  account_round("acct_mm_cap", 1, 1, edu_cdev);
  account_round("acct_mm_nocap", 1, 0, edu_cdev);
  printf("acct_drop_sys_resource %s\n", cap_set(CAP_SYS_RESOURCE, 0));
  ifd = open("/dev/iommu", O_RDWR);
  printf("acct_set_mode_nocap %s\n", ename(set_mode(1)));
  printf("acct_set_mode_nocap_0 %s\n", ename(set_mode(0)));
  printf("acct_set_mode_nocap_2 %s\n", ename(set_mode(2)));
  struct option g2 = {sizeof g2, 0, 1, 0, 0, 0x55};
  const char *ge2 = io(ifd, IOMMU_OPTION, &g2);
  printf("acct_get_mode_nocap %s val=%llu\n", ge2, (unsigned long long)g2.val64);
  close(ifd);
}

// ---- PASID attach (a later kernel's flag) and fault queues -----------------

struct attach_pasid { uint32_t argsz, flags, pasid, pt_id; };
struct detach_pasid { uint32_t argsz, flags, pasid; };
struct fault_alloc { uint32_t size, flags, out_fault_id, out_fault_fd; };
struct hwpt_alloc_fault { uint32_t size, flags, dev_id, pt_id, out_hwpt_id, reserved, data_type, data_len;
                          uint64_t data_uptr; uint32_t fault_id, reserved2; };
#define IOMMU_FAULT_QUEUE_ALLOC ICMD(14)
#define VFIO_DEVICE_ATTACH_PASID 1
#define VFIO_DEVICE_DETACH_PASID 1
#define HWPT_FAULT_ID_VALID 4

static void case_pasid(const char *edu_cdev) {
  int dev = open(edu_cdev, O_RDWR);
  uint32_t devid = 0;
  if (bind_dev("pasid_bind", dev, &devid)) return;
  uint32_t ioas = ioas_new();
  struct attach_pasid ap = {sizeof ap, VFIO_DEVICE_ATTACH_PASID, 1, ioas};
  printf("pasid_attach_flag %s\n", io(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &ap));
  struct attach_pasid ap12 = {12, VFIO_DEVICE_ATTACH_PASID, 1, ioas};
  printf("pasid_attach_flag_argsz12 %s\n", io(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &ap12));
  struct detach_pasid dp = {sizeof dp, VFIO_DEVICE_DETACH_PASID, 1};
  printf("pasid_detach_flag %s\n", io(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &dp));
  attach_case("pasid_attach_plain", dev, ioas, NULL);
  struct fault_alloc fa = {sizeof fa, 0, 0, 0};
  const char *e = io(ifd, IOMMU_FAULT_QUEUE_ALLOC, &fa);
  printf("fault_alloc %s id_is_next=%d fd_valid=%d\n", e, fa.out_fault_id > ioas, fcntl((int)fa.out_fault_fd, F_GETFD) >= 0);
  struct fault_alloc fb = {sizeof fb, 1, 0, 0};
  printf("fault_alloc_flags %s\n", io(ifd, IOMMU_FAULT_QUEUE_ALLOC, &fb));
  struct fault_alloc fc = {12, 0, 0, 0};
  printf("fault_alloc_short %s\n", io(ifd, IOMMU_FAULT_QUEUE_ALLOC, &fc));
  struct hwpt_alloc_fault ha = {sizeof ha, HWPT_FAULT_ID_VALID, devid, ioas, 0, 0, 0, 0, 0, fa.out_fault_id, 0};
  e = io(ifd, IOMMU_HWPT_ALLOC, &ha);
  printf("hwpt_alloc_fault %s\n", e);
  if (!strcmp(e, "0")) {
    attach_case("attach_fault_hwpt", dev, ha.out_hwpt_id, NULL);
    char rb[64];
    int fl = fcntl((int)fa.out_fault_fd, F_GETFL);
    fcntl((int)fa.out_fault_fd, F_SETFL, fl | O_NONBLOCK);
    errno = 0;
    ssize_t n = read((int)fa.out_fault_fd, rb, sizeof rb);
    printf("fault_read %zd %s\n", n, n < 0 ? ename(errno) : "0");
    detach_case("detach_fault_hwpt", dev);
    printf("destroy_fault_hwpt %s\n", destroy(ha.out_hwpt_id));
  }
  struct hwpt_alloc_fault hb = {sizeof hb, HWPT_FAULT_ID_VALID, devid, ioas, 0, 0, 0, 0, 0, 999, 0};
  printf("hwpt_alloc_bad_fault %s\n", io(ifd, IOMMU_HWPT_ALLOC, &hb));
  printf("destroy_fault %s\n", destroy(fa.out_fault_id));
  close((int)fa.out_fault_fd);
  close(dev);
}

// ---- A fault queue's object and descriptor (drivers/iommu/iommufd/fault.c) --

struct page_response { uint32_t cookie, code; };
static void rw_case(const char *name, ssize_t n) { printf("%s %zd %s\n", name, n < 0 ? -1 : n, n < 0 ? ename(errno) : "0"); }
static void poll_case(const char *name, int fd, short events) {
  struct pollfd p = {fd, events, 0};
  errno = 0;
  int n = poll(&p, 1, 0);
  printf("%s %d revents=%#x\n", name, n, (unsigned)p.revents);
}
static void *volatile null_ptr;  // NULL the compiler cannot see
static void fault_fd_cases(int fd) {
  char rb[128];
  memset(rb, 0x5a, sizeof rb);
  errno = 0; rw_case("fault_read_32", read(fd, rb, 32));
  errno = 0; rw_case("fault_read_64", read(fd, rb, 64));
  errno = 0; rw_case("fault_read_40", read(fd, rb, 40));
  errno = 0; rw_case("fault_read_48", read(fd, rb, 48));
  errno = 0; rw_case("fault_read_80", read(fd, rb, 80));
  errno = 0; rw_case("fault_read_0", read(fd, rb, 0));
  errno = 0; rw_case("fault_read_1", read(fd, rb, 1));
  errno = 0; rw_case("fault_read_31", read(fd, rb, 31));
  errno = 0; rw_case("fault_read_33", read(fd, rb, 33));
  errno = 0; rw_case("fault_read_null_32", read(fd, null_ptr, 32));
  errno = 0; rw_case("fault_read_null_40", read(fd, null_ptr, 40));
  printf("fault_read_untouched %d\n", rb[0] == 0x5a && rb[127] == 0x5a);
  errno = 0; rw_case("fault_pread_32_0", pread(fd, rb, 32, 0));
  errno = 0; rw_case("fault_pread_32_32", pread(fd, rb, 32, 32));
  errno = 0; rw_case("fault_lseek", (ssize_t)lseek(fd, 0, SEEK_CUR));
  struct page_response r[2] = {{1, 0}, {2, 1}};
  errno = 0; rw_case("fault_write_0", write(fd, r, 0));
  errno = 0; rw_case("fault_write_7", write(fd, r, 7));
  errno = 0; rw_case("fault_write_9", write(fd, r, 9));
  errno = 0; rw_case("fault_write_unknown_cookie", write(fd, r, 8));
  errno = 0; rw_case("fault_write_unknown_invalid", write(fd, &r[1], 8));
  errno = 0; rw_case("fault_write_two", write(fd, r, 16));
  struct page_response bad = {1, 2};
  errno = 0; rw_case("fault_write_bad_code", write(fd, &bad, 8));
  errno = 0; rw_case("fault_write_null_8", write(fd, null_ptr, 8));
  errno = 0; rw_case("fault_pwrite_8_0", pwrite(fd, r, 8, 0));
  struct iovec v2[2] = {{rb, 40}, {rb + 40, 40}}, v32[2] = {{rb, 0}, {rb, 32}}, w8[1] = {{r, 8}};
  errno = 0; rw_case("fault_readv_40_40", readv(fd, v2, 2));
  errno = 0; rw_case("fault_readv_0_32", readv(fd, v32, 2));
  errno = 0; rw_case("fault_readv_none", readv(fd, v2, 0));
  errno = 0; rw_case("fault_writev_8", writev(fd, w8, 1));
  errno = 0; rw_case("fault_writev_0_32", writev(fd, v32, 1));
  poll_case("fault_poll_all", fd, POLLIN | POLLOUT | POLLPRI | POLLRDNORM | POLLWRNORM | POLLRDHUP);
  poll_case("fault_poll_in", fd, POLLIN);
  poll_case("fault_poll_out", fd, POLLOUT);
  poll_case("fault_poll_none", fd, 0);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {EPOLLIN | EPOLLOUT | EPOLLRDNORM | EPOLLWRNORM, {0}};
  errno = 0;
  int ea = epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  struct epoll_event got = {0, {0}};
  int en = epoll_wait(ep, &got, 1, 0);
  printf("fault_epoll %s %d events=%#x\n", ename(ea ? errno : 0), en, en > 0 ? got.events : 0);
  close(ep);
  fd_set rs, ws;
  FD_ZERO(&rs); FD_ZERO(&ws); FD_SET(fd, &rs); FD_SET(fd, &ws);
  struct timeval tv = {0, 0};
  int sn = select(fd + 1, &rs, &ws, NULL, &tv);
  printf("fault_select %d read=%d write=%d\n", sn, FD_ISSET(fd, &rs) ? 1 : 0, FD_ISSET(fd, &ws) ? 1 : 0);
  struct stat st;
  errno = 0;
  int sr = fstat(fd, &st);
  printf("fault_fstat %s mode=%#o size=%lld\n", ename(sr ? errno : 0), (unsigned)st.st_mode, (long long)st.st_size);
  printf("fault_fcntl_getfd %#x\n", fcntl(fd, F_GETFD));
  printf("fault_fcntl_getfl %#x\n", fcntl(fd, F_GETFL) & ~O_LARGEFILE);
  char path[64], link[128] = {0};
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t ln = readlink(path, link, sizeof link - 1);
  printf("fault_fd_link %s\n", ln > 0 ? link : ename(errno));
  struct destroy d = {sizeof d, 1};
  printf("fault_fd_ioctl_destroy %s\n", io(fd, IOMMU_DESTROY, &d));
  errno = 0;
  void *m = mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, 0);
  printf("fault_fd_mmap %s\n", m == MAP_FAILED ? ename(errno) : "0");
  if (m != MAP_FAILED) munmap(m, PG);
}

static void case_fault(const char *edu_cdev) {
  uint32_t ioas = ioas_new();
  struct fault_alloc fa = {sizeof fa, 0, 0, 0};
  const char *e = io(ifd, IOMMU_FAULT_QUEUE_ALLOC, &fa);
  int fd = (int)fa.out_fault_fd;
  printf("fault_alloc %s id=%u ioas=%u fd_valid=%d\n", e, fa.out_fault_id, ioas, fcntl(fd, F_GETFD) >= 0);
  struct { struct fault_alloc a; uint32_t tail; } big = {{sizeof big, 0, 0, 0}, 0};
  e = io(ifd, IOMMU_FAULT_QUEUE_ALLOC, &big);
  printf("fault_alloc_size20 %s id=%u\n", e, big.a.out_fault_id);
  if (!strcmp(e, "0")) close((int)big.a.out_fault_fd);
  big.tail = 1;
  big.a.out_fault_id = 0;
  printf("fault_alloc_size20_tail %s id=%u\n", io(ifd, IOMMU_FAULT_QUEUE_ALLOC, &big), big.a.out_fault_id);
  struct fault_alloc fs = {15, 0, 0, 0};
  printf("fault_alloc_size15 %s\n", io(ifd, IOMMU_FAULT_QUEUE_ALLOC, &fs));
  struct fault_alloc fl = {sizeof fl, 0x80000000u, 0, 0};
  printf("fault_alloc_flag31 %s\n", io(ifd, IOMMU_FAULT_QUEUE_ALLOC, &fl));
  printf("fault_alloc_null %s\n", io(ifd, IOMMU_FAULT_QUEUE_ALLOC, NULL));
  fault_fd_cases(fd);
  // The object against its descriptor.
  struct iova_range r[1];
  struct iova_ranges q = {sizeof q, fa.out_fault_id, 1, 0, (uintptr_t)r, 0};
  printf("fault_iova_ranges_on_fault %s\n", io(ifd, IOMMU_IOAS_IOVA_RANGES, &q));
  printf("fault_destroy_open %s\n", destroy(fa.out_fault_id));
  char rbuf[64];
  int dupfd = dup(fd);
  close(fd);
  printf("fault_destroy_dup_open %s\n", destroy(fa.out_fault_id));
  errno = 0; rw_case("fault_dup_read_40", read(dupfd, rbuf, 40));
  close(dupfd);
  printf("fault_destroy_closed %s\n", destroy(fa.out_fault_id));
  printf("fault_destroy_again %s\n", destroy(fa.out_fault_id));
  // HWPT allocation naming a fault queue.
  int dev = open(edu_cdev, O_RDWR);
  uint32_t devid = 0;
  if (bind_dev("fault_bind", dev, &devid)) return;
  struct fault_alloc f2 = {sizeof f2, 0, 0, 0};
  printf("fault_alloc2 %s\n", io(ifd, IOMMU_FAULT_QUEUE_ALLOC, &f2));
  struct hwpt_alloc_fault ha = {sizeof ha, HWPT_FAULT_ID_VALID, devid, ioas, 0, 0, 0, 0, 0, f2.out_fault_id, 0};
  printf("hwpt_fault_valid_id %s\n", io(ifd, IOMMU_HWPT_ALLOC, &ha));
  ha.fault_id = ioas;
  printf("hwpt_fault_ioas_id %s\n", io(ifd, IOMMU_HWPT_ALLOC, &ha));
  ha.fault_id = 0;
  printf("hwpt_fault_zero_id %s\n", io(ifd, IOMMU_HWPT_ALLOC, &ha));
  struct hwpt_alloc_fault hp = {sizeof hp, 0, devid, ioas, 0, 0, 0, 0, 0, 0, 0};
  e = io(ifd, IOMMU_HWPT_ALLOC, &hp);
  printf("hwpt_paging %s\n", e);
  uint64_t s1[4] = {0x1000, 0, 48, 0};  // struct iommu_hwpt_vtd_s1: pgtbl_addr, flags, addr_width
  struct hwpt_alloc_fault hn = {sizeof hn, HWPT_FAULT_ID_VALID, devid, hp.out_hwpt_id, 0, 0, 1, 24,
                                (uintptr_t)s1, f2.out_fault_id, 0};
  printf("hwpt_nested_fault %s\n", io(ifd, IOMMU_HWPT_ALLOC, &hn));
  hn.fault_id = 999;
  printf("hwpt_nested_bad_fault %s\n", io(ifd, IOMMU_HWPT_ALLOC, &hn));
  hn.flags = 0;
  printf("hwpt_nested_plain %s\n", io(ifd, IOMMU_HWPT_ALLOC, &hn));
  struct hwpt_alloc_fault hq = {sizeof hq, 0, devid, f2.out_fault_id, 0, 0, 0, 0, 0, 0, 0};
  printf("hwpt_on_fault_id %s\n", io(ifd, IOMMU_HWPT_ALLOC, &hq));
  attach_case("attach_fault_id", dev, f2.out_fault_id, NULL);
  printf("hwpt_fault_reserved2 %s\n", (ha.fault_id = f2.out_fault_id, ha.reserved2 = 1, io(ifd, IOMMU_HWPT_ALLOC, &ha)));
  printf("fault_destroy2_open %s\n", destroy(f2.out_fault_id));
  close(dev);
  // The descriptor outlives its iommufd.
  close(ifd);
  errno = 0; rw_case("fault_after_iommufd_read_40", read((int)f2.out_fault_fd, rbuf, 40));
  poll_case("fault_after_iommufd_poll", (int)f2.out_fault_fd, POLLIN | POLLOUT);
  printf("fault_after_iommufd_close %s\n", ename(close((int)f2.out_fault_fd) ? errno : 0));
  ifd = open("/dev/iommu", O_RDWR);
  struct fault_alloc f3 = {sizeof f3, 0, 0, 0};
  e = io(ifd, IOMMU_FAULT_QUEUE_ALLOC, &f3);
  printf("fault_alloc_fresh_iommufd %s id=%u\n", e, f3.out_fault_id);
  // A forked child shares the descriptor; the parent's copy keeps the object busy.
  int cfd = (int)f3.out_fault_fd;
  fflush(stdout);
  pid_t child = fork();
  if (child == 0) {
    errno = 0; rw_case("fault_child_read_40", read(cfd, rbuf, 40));
    errno = 0; rw_case("fault_child_read_32", read(cfd, rbuf, 32));
    struct page_response cr = {7, 0};
    errno = 0; rw_case("fault_child_write_8", write(cfd, &cr, 8));
    poll_case("fault_child_poll", cfd, POLLIN | POLLOUT);
    close(cfd);
    printf("fault_child_destroy %s\n", destroy(f3.out_fault_id));
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  printf("fault_child_exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  printf("fault_fork_destroy_open %s\n", destroy(f3.out_fault_id));
  close(cfd);
  printf("fault_fork_destroy_closed %s\n", destroy(f3.out_fault_id));
}

// ---- A fault queue read by a thread that was running before it was made ----
// (and by that thread's forked child): each reads as the thread that made it.

static int thread_fd = -1;
static int thread_go[2];
static void *fault_reader(void *unused) {
  (void)unused;
  char c, rb[64];
  if (read(thread_go[0], &c, 1) != 1) return NULL;
  errno = 0; rw_case("thread_read_40", read(thread_fd, rb, 40));
  errno = 0; rw_case("thread_read_32", read(thread_fd, rb, 32));
  struct page_response r = {1, 0};
  errno = 0; rw_case("thread_write_unknown_cookie", write(thread_fd, &r, 8));
  pid_t child = fork();
  if (child == 0) {
    errno = 0; rw_case("thread_child_read_40", read(thread_fd, rb, 40));
    fflush(stdout);
    _exit(0);
  }
  int st = 0;
  waitpid(child, &st, 0);
  printf("thread_child_exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  return NULL;
}
static void case_fault_thread(void) {
  // A read that hangs (the queue's descriptor not served in that thread)
  // ends the run instead of the test's time.
  alarm(20);
  if (pipe(thread_go)) return;
  pthread_t t;
  pthread_create(&t, NULL, fault_reader, NULL);
  struct fault_alloc fa = {sizeof fa, 0, 0, 0};
  printf("fault_alloc %s\n", io(ifd, IOMMU_FAULT_QUEUE_ALLOC, &fa));
  thread_fd = (int)fa.out_fault_fd;
  if (write(thread_go[1], "g", 1) != 1) return;
  pthread_join(t, NULL);
  close(thread_fd);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 2) return 2;
  char *raw = mmap(NULL, 64 * PG + (4ul << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                   -1, 0);
  buf = (char *)((((uintptr_t)raw + (2ul << 20) - 1) & ~((2ul << 20) - 1)) + PG);
  ifd = open("/dev/iommu", O_RDWR);
  printf("iommu_open %s\n", ifd < 0 ? ename(errno) : "0");
  if (ifd < 0) return 1;
  if (!strcmp(argv[1], "mdev") && argc >= 3) case_mdev(argv[2], argc >= 4 ? argv[3] : NULL);
  if (!strcmp(argv[1], "mtty")) {
    char *c = mtty_cdev();
    printf("mtty_cdev %s\n", c ? "found" : "none");
    if (c) case_mdev(c, argc >= 3 ? argv[2] : NULL);
  }
  if (!strcmp(argv[1], "test")) case_test();
  if (!strcmp(argv[1], "account") && argc >= 3) case_account(argv[2]);
  if (!strcmp(argv[1], "pasid") && argc >= 3) case_pasid(argv[2]);
  if (!strcmp(argv[1], "fault") && argc >= 3) case_fault(argv[2]);
  if (!strcmp(argv[1], "fault-thread")) case_fault_thread();
  close(ifd);
  printf("done\n");
  return 0;
}
