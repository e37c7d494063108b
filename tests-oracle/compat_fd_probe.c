// compat_fd_probe: asks Linux 6.12 what a 64-bit program's 32-bit system
// calls (`int $0x80`) do to VFIO descriptors, and what `statx` answers for
// VFIO, iommufd and anonymous-inode descriptors, one "<case> <result>" per
// line.
//
// usage: compat_fd_probe GROUP BDF CDEV
//
// Part "c32": VFIO ioctls made through the i386 ABI (ioctl = 54): Linux
// serves them through each file's compat_ioctl (vfio's container, group
// and device files: compat_ptr_ioctl, the same ioctl with a 32-bit
// pointer; /dev/iommu has none: ENOTTY).
// Part "fd32": the i386 close (6), dup (41), fcntl (55), dup2 (63),
// fcntl64 (221), dup3 (330), close_range (436) on VFIO descriptors; then
// the freed number is taken by a pipe or a file and used: its answers
// must be that file's.
// Part "stx": statx (and fstatat) of each kind of descriptor with several
// masks, sync flags and path forms.
//
// Pointers passed through int $0x80 are 32-bit: the probe is linked
// static (not PIE), so its globals lie below 4 GiB.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define VFIO_GET_API_VERSION _IO(';', 100)
#define VFIO_CHECK_EXTENSION _IO(';', 101)
#define VFIO_SET_IOMMU _IO(';', 102)
#define VFIO_GROUP_GET_STATUS _IO(';', 103)
#define VFIO_GROUP_SET_CONTAINER _IO(';', 104)
#define VFIO_GROUP_GET_DEVICE_FD _IO(';', 106)
#define VFIO_DEVICE_GET_INFO _IO(';', 107)
#define VFIO_DEVICE_GET_REGION_INFO _IO(';', 108)
#define VFIO_IOMMU_GET_INFO _IO(';', 112)
#define VFIO_IOMMU_MAP_DMA _IO(';', 113)
#define VFIO_IOMMU_UNMAP_DMA _IO(';', 114)
#define VFIO_TYPE1v2_IOMMU 3
#define IOMMU_IOAS_ALLOC _IO(';', 0x81)
#define IOMMU_FAULT_QUEUE_ALLOC _IO(';', 0x80 + 14)

#define NR32_CLOSE 6
#define NR32_DUP 41
#define NR32_IOCTL 54
#define NR32_FCNTL 55
#define NR32_DUP2 63
#define NR32_FCNTL64 221
#define NR32_DUP3 330
#define NR32_CLOSE_RANGE 436

struct group_status { uint32_t argsz, flags; };
struct iommu_info { uint32_t argsz, flags; uint64_t pgsizes; uint32_t cap_offset, pad; };
struct dma_map { uint32_t argsz, flags; uint64_t vaddr, iova, size; };
struct dma_unmap { uint32_t argsz, flags; uint64_t iova, size; };
struct device_info { uint32_t argsz, flags, num_regions, num_irqs, cap_offset, pad; };
struct region_info { uint32_t argsz, flags, index, cap_offset; uint64_t size, offset; };
struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct fault_alloc { uint32_t size, flags, out_fault_id, out_fault_fd; };

/* Below 4 GiB (static, not PIE): what the 32-bit calls point at. */
static int g_container;
static char g_bdf[64];
static struct group_status g_status;
static struct iommu_info g_info;
static struct dma_map g_map;
static struct dma_unmap g_unmap;
static struct device_info g_dinfo;
static struct region_info g_region;
static struct ioas_alloc g_ioas;

/* A system call of the i386 ABI; the kernel clobbers r8-r11 on the way. */
static long i80(long nr, long a, long b, long c) {
  long r;
  __asm__ volatile("int $0x80"
                   : "=a"(r)
                   : "a"(nr), "b"(a), "c"(b), "d"(c)
                   : "r8", "r9", "r10", "r11", "memory", "cc");
  return r;
}

static char *res(long r) {
  static char b[8][64];
  static int i;
  char *s = b[i++ % 8];
  if (r < 0)
    snprintf(s, 64, "-1 %s", strerrorname_np((int)-r));
  else
    snprintf(s, 64, "%ld", r);
  return s;
}

static char *lres(long r) { return res(r < 0 ? -errno : r); }

/* What descriptor fd is now, by the answers a program sees. */
static const char *kind(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return strerrorname_np(errno);
  switch (st.st_mode & S_IFMT) {
  case S_IFIFO: return "fifo";
  case S_IFREG: return "reg";
  case S_IFCHR: return "chr";
  case S_IFSOCK: return "sock";
  case 0: return "anon";
  default: return "other";
  }
}

static const char *plain(int fd) {
  char b[6] = {0};
  long n = pread(fd, b, 5, 0);
  if (n < 0) return strerrorname_np(errno);
  return strcmp(b, "plain") == 0 ? "plain" : "other";
}

static int plain_file(void) {
  char path[] = "/tmp/compat-fd-XXXXXX";
  int f = mkstemp(path);
  unlink(path);
  if (f < 0 || pwrite(f, "plain-bytes", 11, 0) != 11) exit(2);
  return f;
}

static void part_c32(int c, int g, int *dev) {
  printf("c32_api %s\n", res(i80(NR32_IOCTL, c, VFIO_GET_API_VERSION, 0)));
  printf("c32_ext %s\n", res(i80(NR32_IOCTL, c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU)));
  g_status.argsz = sizeof g_status;
  long r = i80(NR32_IOCTL, g, VFIO_GROUP_GET_STATUS, (long)&g_status);
  printf("g32_status %s flags=%u\n", res(r), g_status.flags);
  g_container = c;
  printf("g32_set_container %s\n", res(i80(NR32_IOCTL, g, VFIO_GROUP_SET_CONTAINER, (long)&g_container)));
  printf("c32_set_iommu %s\n", res(i80(NR32_IOCTL, c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)));
  g_info.argsz = 16;
  r = i80(NR32_IOCTL, c, VFIO_IOMMU_GET_INFO, (long)&g_info);
  printf("c32_info %s flags=%u has_4k=%d\n", res(r), g_info.flags, (int)(g_info.pgsizes & 0x1000) != 0);
  void *buf = mmap(NULL, 0x2000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  g_map = (struct dma_map){sizeof g_map, 3, (uint64_t)(uintptr_t)buf, 0x100000, 0x2000};
  printf("c32_map %s\n", res(i80(NR32_IOCTL, c, VFIO_IOMMU_MAP_DMA, (long)&g_map)));
  printf("c32_map_again %s\n", res(i80(NR32_IOCTL, c, VFIO_IOMMU_MAP_DMA, (long)&g_map)));
  g_unmap = (struct dma_unmap){sizeof g_unmap, 0, 0x100000, 0x2000};
  r = i80(NR32_IOCTL, c, VFIO_IOMMU_UNMAP_DMA, (long)&g_unmap);
  printf("c32_unmap %s size=%#llx\n", res(r), (unsigned long long)g_unmap.size);
  r = i80(NR32_IOCTL, g, VFIO_GROUP_GET_DEVICE_FD, (long)g_bdf);
  *dev = (int)r;
  printf("g32_device %s\n", r >= 0 ? "fd" : res(r));
  if (r < 0) return;
  g_dinfo.argsz = sizeof g_dinfo;
  r = i80(NR32_IOCTL, *dev, VFIO_DEVICE_GET_INFO, (long)&g_dinfo);
  printf("d32_info %s flags=%#x regions=%u irqs=%u\n", res(r), g_dinfo.flags, g_dinfo.num_regions, g_dinfo.num_irqs);
  g_region = (struct region_info){sizeof g_region, 0, 0, 0, 0, 0};
  r = i80(NR32_IOCTL, *dev, VFIO_DEVICE_GET_REGION_INFO, (long)&g_region);
  printf("d32_region0 %s size=%#llx flags=%#x\n", res(r), (unsigned long long)g_region.size, g_region.flags);
  printf("d32_unknown %s\n", res(i80(NR32_IOCTL, *dev, _IO(';', 200), 0)));
  printf("d32_fault %s\n", res(i80(NR32_IOCTL, *dev, VFIO_DEVICE_GET_INFO, 16)));
  long cl = i80(NR32_IOCTL, *dev, FIOCLEX, 0);
  printf("d32_fioclex %s cloexec=%d\n", res(cl), fcntl(*dev, F_GETFD));
  fcntl(*dev, F_SETFD, 0);
  /* The native call after the 32-bit ones: the same answer. */
  printf("d64_info %s\n", lres(ioctl(*dev, VFIO_DEVICE_GET_INFO, &g_dinfo)));
}

static void part_iommufd(int i) {
  g_ioas = (struct ioas_alloc){sizeof g_ioas, 0, 0};
  printf("i32_ioas_alloc %s\n", res(i80(NR32_IOCTL, i, IOMMU_IOAS_ALLOC, (long)&g_ioas)));
  g_ioas = (struct ioas_alloc){sizeof g_ioas, 0, 0};
  printf("i64_ioas_alloc %s\n", lres(ioctl(i, IOMMU_IOAS_ALLOC, &g_ioas)));
}

static void part_fd32(int c, int dev) {
  int p[2];
  /* close: the number of a container's duplicate, known to the program
   * (a native call on it first), goes to a pipe. */
  int x = dup(c);
  printf("fd32_before %s\n", lres(ioctl(x, VFIO_GET_API_VERSION)));
  printf("fd32_close %s\n", res(i80(NR32_CLOSE, x, 0, 0)));
  if (pipe(p) != 0) exit(2);
  printf("fd32_close_reuse %s\n", p[0] == x ? "same" : "other");
  printf("fd32_close_ioctl %s\n", lres(ioctl(x, VFIO_GET_API_VERSION)));
  printf("fd32_close_kind %s\n", kind(x));
  write(p[1], "abc", 3);
  char b[4] = {0};
  printf("fd32_close_pread %s\n", lres(pread(x, b, 3, 0)));
  printf("fd32_close_read %s %s\n", lres(read(x, b, 3)), b);
  close(p[0]);
  close(p[1]);

  /* dup2 over a device's duplicate: the number names the file. */
  int f = plain_file();
  x = dup(dev);
  printf("fd32_dup2_before %s\n", lres(ioctl(x, VFIO_DEVICE_GET_INFO, &g_dinfo)));
  printf("fd32_dup2 %s\n", res(i80(NR32_DUP2, f, x, 0)) );
  printf("fd32_dup2_same %d\n", 1);
  printf("fd32_dup2_ioctl %s\n", lres(ioctl(x, VFIO_DEVICE_GET_INFO, &g_dinfo)));
  printf("fd32_dup2_pread %s\n", plain(x));
  printf("fd32_dup2_kind %s\n", kind(x));
  close(x);

  /* dup3 with O_CLOEXEC over a container's duplicate. */
  x = dup(c);
  printf("fd32_dup3_before %s\n", lres(ioctl(x, VFIO_GET_API_VERSION)));
  printf("fd32_dup3 %s\n", res(i80(NR32_DUP3, f, x, O_CLOEXEC)) );
  printf("fd32_dup3_cloexec %d\n", fcntl(x, F_GETFD));
  printf("fd32_dup3_ioctl %s\n", lres(ioctl(x, VFIO_GET_API_VERSION)));
  printf("fd32_dup3_pread %s\n", plain(x));
  printf("fd32_dup3_same_target %s\n", res(i80(NR32_DUP3, x, x, 0)));
  close(x);

  /* close_range over two VFIO duplicates; then a file takes the first. */
  int lo = dup(c), hi = dup(dev);
  printf("fd32_cr_before %s %s\n", lres(ioctl(lo, VFIO_GET_API_VERSION)),
         lres(ioctl(hi, VFIO_DEVICE_GET_INFO, &g_dinfo)));
  printf("fd32_close_range %s adjacent=%d\n", res(i80(NR32_CLOSE_RANGE, lo, hi, 0)), hi == lo + 1);
  int y = dup(f);
  printf("fd32_cr_reuse %s\n", y == lo ? "same" : "other");
  printf("fd32_cr_ioctl %s\n", lres(ioctl(y, VFIO_GET_API_VERSION)));
  printf("fd32_cr_pread %s\n", plain(y));
  printf("fd32_cr_gone %s\n", lres(fcntl(hi, F_GETFD)));
  close(y);

  /* The other way: a plain file's number, known to the program as such,
   * closed by the 32-bit call and taken by a container's duplicate. */
  y = dup(f);
  printf("fd32_file_before %s\n", plain(y));
  printf("fd32_file_ioctl_before %s\n", lres(ioctl(y, VFIO_GET_API_VERSION)));
  printf("fd32_file_close %s\n", res(i80(NR32_CLOSE, y, 0, 0)));
  x = dup(c);
  printf("fd32_file_reuse %s\n", x == y ? "same" : "other");
  printf("fd32_file_ioctl %s\n", lres(ioctl(x, VFIO_GET_API_VERSION)));
  printf("fd32_file_kind_is_container %d\n", strcmp(kind(x), kind(c)) == 0);
  close(x);

  /* And by dup2: a file's number replaced by a device's. */
  y = dup(f);
  printf("fd32_file_dup2_before %s\n", plain(y));
  printf("fd32_file_dup2 %s\n", res(i80(NR32_DUP2, dev, y, 0)) );
  printf("fd32_file_dup2_ioctl %s regions=%u\n", lres(ioctl(y, VFIO_DEVICE_GET_INFO, &g_dinfo)), g_dinfo.num_regions);
  close(y);

  /* Numbers taken by the 32-bit dup and fcntl(F_DUPFD*): the object's. */
  long n = i80(NR32_DUP, c, 0, 0);
  printf("fd32_dup %s\n", n >= 0 ? lres(ioctl((int)n, VFIO_GET_API_VERSION)) : res(n));
  if (n >= 0) close((int)n);
  n = i80(NR32_FCNTL, c, F_DUPFD, 100);
  printf("fd32_fcntl_dupfd %s %s\n", n >= 100 ? "ge100" : res(n), n >= 0 ? lres(ioctl((int)n, VFIO_GET_API_VERSION)) : "");
  if (n >= 0) close((int)n);
  n = i80(NR32_FCNTL64, dev, F_DUPFD_CLOEXEC, 200);
  printf("fd32_fcntl64_dupfd_cloexec %s %d %s\n", n >= 200 ? "ge200" : res(n), n >= 0 ? fcntl((int)n, F_GETFD) : -1,
         n >= 0 ? lres(ioctl((int)n, VFIO_DEVICE_GET_INFO, &g_dinfo)) : "");
  if (n >= 0) close((int)n);
  printf("fd32_close_bad %s\n", res(i80(NR32_CLOSE, 1000, 0, 0)));
  printf("fd32_dup2_bad %s\n", res(i80(NR32_DUP2, 1000, 5, 0)));
  printf("fd32_dup3_flags %s\n", res(i80(NR32_DUP3, f, 900, 1)));
  printf("fd32_close_range_bad %s\n", res(i80(NR32_CLOSE_RANGE, 10, 5, 0)));
  close(f);
}

struct mask { const char *name; unsigned m; };
static const struct mask masks[] = {
    {"0", 0},
    {"type_mode", STATX_TYPE | STATX_MODE},
    {"ino", STATX_INO},
    {"basic", STATX_BASIC_STATS},
    {"all", STATX_ALL},
    {"btime", STATX_BTIME},
    {"mnt_id", 0x1000},
    {"mnt_id_unique", 0x4000},
    {"low31", 0x7fffffff},
    {"reserved", 0x80000000u},
};

/* One statx answer: the fields that do not depend on when or where. */
static void stx_line(const char *k, const char *what, int fd, const char *path, int flags, unsigned m) {
  struct statx s;
  memset(&s, 0xee, sizeof s);
  long r = syscall(SYS_statx, fd, path, flags, m, &s);
  if (r != 0) {
    printf("stx_%s_%s %s\n", k, what, lres(r));
    return;
  }
  struct stat st;
  fstat(fd, &st);
  printf("stx_%s_%s 0 mask=%#x attr=%#llx amask=%#llx mode=%#o nlink=%u uid=%u gid=%u rdev=%u:%u size=%llu "
         "blocks=%llu blksize=%u ino_same=%d dev_same=%d spare=%#x\n",
         k, what, s.stx_mask, (unsigned long long)s.stx_attributes, (unsigned long long)s.stx_attributes_mask,
         s.stx_mode, s.stx_nlink, s.stx_uid, s.stx_gid, s.stx_rdev_major, s.stx_rdev_minor,
         (unsigned long long)s.stx_size, (unsigned long long)s.stx_blocks, s.stx_blksize,
         s.stx_ino == st.st_ino, makedev(s.stx_dev_major, s.stx_dev_minor) == st.st_dev, s.__spare0[0]);
}

static void stx_kind(const char *k, int fd) {
  for (unsigned i = 0; i < sizeof masks / sizeof masks[0]; i++)
    stx_line(k, masks[i].name, fd, "", AT_EMPTY_PATH, masks[i].m);
  stx_line(k, "force_sync", fd, "", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC, STATX_BASIC_STATS);
  stx_line(k, "dont_sync", fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_BASIC_STATS);
  stx_line(k, "both_sync", fd, "", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC | AT_STATX_DONT_SYNC, STATX_BASIC_STATS);
  stx_line(k, "bad_flag", fd, "", AT_EMPTY_PATH | 0x1, STATX_BASIC_STATS);
  stx_line(k, "nofollow", fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS);
  stx_line(k, "null_path", fd, NULL, AT_EMPTY_PATH, STATX_BASIC_STATS);
  stx_line(k, "null_no_empty", fd, NULL, 0, STATX_BASIC_STATS);
  stx_line(k, "empty_no_flag", fd, "", 0, STATX_BASIC_STATS);
  struct stat st;
  long r = syscall(SYS_newfstatat, fd, NULL, &st, AT_EMPTY_PATH);
  printf("stx_%s_fstatat_null %s mode=%#o\n", k, lres(r), r == 0 ? st.st_mode : 0);
  r = syscall(SYS_newfstatat, fd, "", &st, AT_EMPTY_PATH);
  printf("stx_%s_fstatat_empty %s mode=%#o nlink=%lu blksize=%ld\n", k, lres(r), r == 0 ? st.st_mode : 0,
         r == 0 ? (unsigned long)st.st_nlink : 0, r == 0 ? (long)st.st_blksize : 0);
  r = syscall(SYS_fstat, fd, &st);
  printf("stx_%s_fstat %s mode=%#o rdev=%u:%u\n", k, lres(r), r == 0 ? st.st_mode : 0,
         r == 0 ? major(st.st_rdev) : 0, r == 0 ? minor(st.st_rdev) : 0);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s GROUP BDF CDEV\n", argv[0]);
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("below_4g %d\n", (uintptr_t)&g_status < (1ull << 32));
  snprintf(g_bdf, sizeof g_bdf, "%s", argv[2]);
  int c = open("/dev/vfio/vfio", O_RDWR);
  int g = open(argv[1], O_RDWR);
  printf("open %s %s\n", c >= 0 ? "ok" : strerrorname_np(errno), g >= 0 ? "ok" : strerrorname_np(errno));
  if (c < 0 || g < 0) return 1;
  int dev = -1;
  part_c32(c, g, &dev);
  int i = open("/dev/iommu", O_RDWR);
  printf("iommu_open %s\n", i >= 0 ? "ok" : strerrorname_np(errno));
  if (i >= 0) part_iommufd(i);
  if (dev >= 0) part_fd32(c, dev);
  /* statx of each kind of descriptor. */
  int e = eventfd(0, EFD_CLOEXEC);
  stx_kind("eventfd", e);
  struct fault_alloc fa = {sizeof fa, 0, 0, 0};
  long r = i >= 0 ? ioctl(i, IOMMU_FAULT_QUEUE_ALLOC, &fa) : -1;
  printf("fault_alloc %s\n", lres(r));
  if (r == 0) stx_kind("fault", (int)fa.out_fault_fd);
  if (dev >= 0) stx_kind("device", dev);
  stx_kind("container", c);
  stx_kind("group", g);
  if (i >= 0) stx_kind("iommufd", i);
  int cd = open(argv[3], O_RDWR);
  printf("cdev_open %s\n", cd >= 0 ? "ok" : strerrorname_np(errno));
  if (cd >= 0) stx_kind("cdev", cd);
  printf("done\n");
  return 0;
}
