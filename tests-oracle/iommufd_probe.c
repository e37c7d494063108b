// iommufd_probe: asks /dev/iommu (iommufd) and the VFIO device cdev the
// questions softvfio must answer as Linux 6.12 does, and prints one
// "<case> <result>" line per answer: the errno name (0 on success) and the
// fields the kernel wrote back.
//
// usage: iommufd_probe ioas                 only /dev/iommu, no device
//        iommufd_probe all CDEV GROUP       also bind the device's cdev
//
// The structures are declared here (the build host's linux-libc-dev may
// predate iommufd); their layout is the uAPI of include/uapi/linux/iommufd.h
// and the cdev part of include/uapi/linux/vfio.h in Linux 6.12.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define IOMMUFD_TYPE ';'
#define ICMD(n) _IO(IOMMUFD_TYPE, 0x80 + (n))
#define IOMMU_DESTROY ICMD(0)
#define IOMMU_IOAS_ALLOC ICMD(1)
#define IOMMU_IOAS_ALLOW_IOVAS ICMD(2)
#define IOMMU_IOAS_COPY ICMD(3)
#define IOMMU_IOAS_IOVA_RANGES ICMD(4)
#define IOMMU_IOAS_MAP ICMD(5)
#define IOMMU_IOAS_UNMAP ICMD(6)
#define IOMMU_OPTION ICMD(7)
#define IOMMU_VFIO_IOAS ICMD(8)
#define IOMMU_HWPT_ALLOC ICMD(9)
#define IOMMU_GET_HW_INFO ICMD(10)
#define IOMMU_HWPT_SET_DIRTY_TRACKING ICMD(11)
#define IOMMU_HWPT_GET_DIRTY_BITMAP ICMD(12)
#define IOMMU_HWPT_INVALIDATE ICMD(13)

#define MAP_FIXED_IOVA 1
#define MAP_WRITEABLE 2
#define MAP_READABLE 4
#define RW (MAP_READABLE | MAP_WRITEABLE)

struct destroy { uint32_t size, id; };
struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct iova_range { uint64_t start, last; };
struct iova_ranges { uint32_t size, ioas_id, num_iovas, reserved; uint64_t allowed_iovas, out_iova_alignment; };
struct allow_iovas { uint32_t size, ioas_id, num_iovas, reserved; uint64_t allowed_iovas; };
struct ioas_map { uint32_t size, flags, ioas_id, reserved; uint64_t user_va, length, iova; };
struct ioas_copy { uint32_t size, flags, dst_ioas_id, src_ioas_id; uint64_t length, dst_iova, src_iova; };
struct ioas_unmap { uint32_t size, ioas_id; uint64_t iova, length; };
struct option { uint32_t size, option_id; uint16_t op, reserved; uint32_t object_id; uint64_t val64; };
struct vfio_ioas { uint32_t size, ioas_id; uint16_t op, reserved; };
struct hwpt_alloc { uint32_t size, flags, dev_id, pt_id, out_hwpt_id, reserved, data_type, data_len; uint64_t data_uptr; };
struct hw_info { uint32_t size, flags, dev_id, data_len; uint64_t data_uptr; uint32_t out_data_type, reserved; uint64_t out_capabilities; };
struct set_dirty { uint32_t size, flags, hwpt_id, reserved; };
struct get_dirty { uint32_t size, hwpt_id, flags, reserved; uint64_t iova, length, page_size, data; };

// VFIO (type ';', base 100).
#define VFIO_GET_API_VERSION _IO(';', 100)
#define VFIO_CHECK_EXTENSION _IO(';', 101)
#define VFIO_SET_IOMMU _IO(';', 102)
#define VFIO_IOMMU_GET_INFO _IO(';', 112)
#define VFIO_IOMMU_MAP_DMA _IO(';', 113)
#define VFIO_IOMMU_UNMAP_DMA _IO(';', 114)
#define VFIO_DEVICE_GET_INFO _IO(';', 107)
#define VFIO_DEVICE_BIND_IOMMUFD _IO(';', 118)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(';', 119)
#define VFIO_DEVICE_DETACH_IOMMUFD_PT _IO(';', 120)
#define VFIO_GROUP_GET_STATUS _IO(';', 103)

struct bind { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; };
struct attach { uint32_t argsz, flags, pt_id; };
struct detach { uint32_t argsz, flags; };
struct dma_map { uint32_t argsz, flags; uint64_t vaddr, iova, size; };
struct dma_unmap { uint32_t argsz, flags; uint64_t iova, size; };
struct dev_info { uint32_t argsz, flags, num_regions, num_irqs, cap_offset, pad; };

static const char *ename(int e) {
  switch (e) {
  case 0: return "0";
  case EINVAL: return "EINVAL";
  case EEXIST: return "EEXIST";
  case EFAULT: return "EFAULT";
  case ENOMEM: return "ENOMEM";
  case ENOSPC: return "ENOSPC";
  case EPERM: return "EPERM";
  case ENOENT: return "ENOENT";
  case EBUSY: return "EBUSY";
  case ENOTTY: return "ENOTTY";
  case EOPNOTSUPP: return "EOPNOTSUPP";
  case E2BIG: return "E2BIG";
  case EMSGSIZE: return "EMSGSIZE";
  case EOVERFLOW: return "EOVERFLOW";
  case EBADF: return "EBADF";
  case EBADFD: return "EBADFD";
  case ENODEV: return "ENODEV";
  case ENXIO: return "ENXIO";
  case ERANGE: return "ERANGE";
  default: { static char b[32]; snprintf(b, sizeof b, "errno%d", e); return b; }
  }
}

// Runs one ioctl: the errno name of its answer (0 on success).
static const char *io(int fd, unsigned long req, void *arg) {
  errno = 0;
  int r = ioctl(fd, req, arg);
  return ename(r < 0 ? errno : 0);
}

static int ifd;
static char *buf;          // 16 pages of anonymous memory
#define PG 4096ul
#define BUF_PAGES 16

static uint32_t ioas_new(void) {
  struct ioas_alloc a = {sizeof a, 0, 0};
  if (ioctl(ifd, IOMMU_IOAS_ALLOC, &a)) return 0;
  return a.out_ioas_id;
}

static const char *destroy(uint32_t id) {
  struct destroy d = {sizeof d, id};
  return io(ifd, IOMMU_DESTROY, &d);
}

static void ranges(const char *name, uint32_t ioas, uint32_t num) {
  struct iova_range r[8];
  memset(r, 0xab, sizeof r);
  struct iova_ranges q = {sizeof q, ioas, num, 0, (uintptr_t)r, 0x77};
  const char *e = io(ifd, IOMMU_IOAS_IOVA_RANGES, &q);
  printf("%s %s num=%u align=%#llx", name, e, q.num_iovas, (unsigned long long)q.out_iova_alignment);
  for (uint32_t i = 0; i < num && i < 8 && r[i].start != 0xababababababababull; i++)
    printf(" [%#llx,%#llx]", (unsigned long long)r[i].start, (unsigned long long)r[i].last);
  printf("\n");
}

static const char *map(uint32_t ioas, uint32_t flags, void *va, uint64_t len, uint64_t *iova) {
  struct ioas_map m = {sizeof m, flags, ioas, 0, (uintptr_t)va, len, *iova};
  const char *e = io(ifd, IOMMU_IOAS_MAP, &m);
  *iova = m.iova;
  return e;
}

static void map_case(const char *name, uint32_t ioas, uint32_t flags, void *va, uint64_t len, uint64_t iova) {
  uint64_t out = iova;
  const char *e = map(ioas, flags, va, len, &out);
  printf("%s %s iova=%#llx\n", name, e, (unsigned long long)out);
}

static void unmap_case(const char *name, uint32_t ioas, uint64_t iova, uint64_t len) {
  struct ioas_unmap u = {sizeof u, ioas, iova, len};
  const char *e = io(ifd, IOMMU_IOAS_UNMAP, &u);
  printf("%s %s length=%#llx\n", name, e, (unsigned long long)u.length);
}

static void option_case(const char *name, uint32_t id, uint16_t op, uint32_t obj, uint64_t val) {
  struct option o = {sizeof o, id, op, 0, obj, val};
  const char *e = io(ifd, IOMMU_OPTION, &o);
  printf("%s %s val=%#llx\n", name, e, (unsigned long long)o.val64);
}

static void copy_case(const char *name, uint32_t flags, uint32_t dst, uint32_t src, uint64_t len, uint64_t dst_iova,
                      uint64_t src_iova) {
  struct ioas_copy c = {sizeof c, flags, dst, src, len, dst_iova, src_iova};
  const char *e = io(ifd, IOMMU_IOAS_COPY, &c);
  printf("%s %s dst_iova=%#llx\n", name, e, (unsigned long long)c.dst_iova);
}

// Sizes and trailing bytes: the generic checks every iommufd ioctl makes.
static void case_generic(void) {
  struct { struct ioas_alloc a; uint32_t extra[3]; } big;
  memset(&big, 0, sizeof big);
  big.a.size = sizeof big;
  printf("alloc_bigger_zero_tail %s\n", io(ifd, IOMMU_IOAS_ALLOC, &big));
  printf("alloc_bigger_zero_tail_id %s\n", big.a.out_ioas_id ? "set" : "zero");
  if (big.a.out_ioas_id) destroy(big.a.out_ioas_id);
  memset(&big, 0, sizeof big);
  big.a.size = sizeof big;
  big.extra[1] = 1;
  printf("alloc_bigger_nonzero_tail %s\n", io(ifd, IOMMU_IOAS_ALLOC, &big));
  struct ioas_alloc a = {8, 0, 0};
  printf("alloc_short %s\n", io(ifd, IOMMU_IOAS_ALLOC, &a));
  a = (struct ioas_alloc){sizeof a, 1, 0};
  printf("alloc_flags %s\n", io(ifd, IOMMU_IOAS_ALLOC, &a));
  printf("alloc_null %s\n", io(ifd, IOMMU_IOAS_ALLOC, NULL));
  printf("unknown_cmd %s\n", io(ifd, ICMD(40), &a));
  // 0x8e: FAULT_QUEUE_ALLOC in 6.12 (flags must be 0); 0x8f: IOAS_MAP_FILE came in 6.13.
  struct { uint32_t size, flags, out_fault_id, out_fault_fd; } fq = {sizeof fq, 1, 0, 0};
  printf("fault_queue_alloc_flags %s\n", io(ifd, ICMD(14), &fq));
  fq = (typeof(fq)){8, 0, 0, 0};
  printf("fault_queue_alloc_short %s\n", io(ifd, ICMD(14), &fq));
  printf("ioas_map_file %s\n", io(ifd, ICMD(15), &fq));
  printf("below_base %s\n", io(ifd, _IO(IOMMUFD_TYPE, 0x7f), &a));
  struct destroy d = {4, 0};
  printf("destroy_short %s\n", io(ifd, IOMMU_DESTROY, &d));
  printf("destroy_id0 %s\n", destroy(0));
  printf("destroy_unknown %s\n", destroy(12345));
}

static void case_ioas(void) {
  uint32_t ioas = ioas_new();
  uint32_t ioas2 = ioas_new();
  printf("ioas_ids %u %u\n", ioas, ioas2);
  ranges("ranges_fresh", ioas, 8);
  ranges("ranges_short", ioas, 0);
  ranges("ranges_unknown_ioas", 999, 8);
  struct iova_ranges q = {sizeof q, ioas, 1, 1, (uintptr_t)buf, 0};
  printf("ranges_reserved %s\n", io(ifd, IOMMU_IOAS_IOVA_RANGES, &q));
  q = (struct iova_ranges){sizeof q, ioas, 1, 0, 0, 0};
  printf("ranges_null_buf %s\n", io(ifd, IOMMU_IOAS_IOVA_RANGES, &q));
  q = (struct iova_ranges){sizeof q, ioas2 + 100, 0, 0, 0, 0};
  printf("ranges_ioas_missing %s\n", io(ifd, IOMMU_IOAS_IOVA_RANGES, &q));

  // ALLOW_IOVAS
  struct iova_range ar[3] = {{0x100000, 0x1fffff}, {0x400000, 0x7fffff}, {0, 0}};
  struct allow_iovas al = {sizeof al, ioas, 2, 0, (uintptr_t)ar};
  printf("allow_ok %s\n", io(ifd, IOMMU_IOAS_ALLOW_IOVAS, &al));
  ranges("ranges_after_allow", ioas, 8);
  map_case("map_outside_allowed", ioas, MAP_FIXED_IOVA | RW, buf, PG, 0x200000);
  map_case("map_auto_in_allowed", ioas, RW, buf, 2 * PG, 0);
  unmap_case("unmap_all_after_auto", ioas, 0, UINT64_MAX);
  struct iova_range bad1[2] = {{0x100000, 0x1fffff}, {0x180000, 0x2fffff}};
  al = (struct allow_iovas){sizeof al, ioas, 2, 0, (uintptr_t)bad1};
  printf("allow_overlap %s\n", io(ifd, IOMMU_IOAS_ALLOW_IOVAS, &al));
  struct iova_range bad2[1] = {{0x200000, 0x100000}};
  al = (struct allow_iovas){sizeof al, ioas, 1, 0, (uintptr_t)bad2};
  printf("allow_backwards %s\n", io(ifd, IOMMU_IOAS_ALLOW_IOVAS, &al));
  struct iova_range odd[1] = {{0x100001, 0x1ffffe}};
  al = (struct allow_iovas){sizeof al, ioas, 1, 0, (uintptr_t)odd};
  printf("allow_unaligned %s\n", io(ifd, IOMMU_IOAS_ALLOW_IOVAS, &al));
  ranges("ranges_after_unaligned_allow", ioas, 8);
  al = (struct allow_iovas){sizeof al, ioas, 1, 1, (uintptr_t)ar};
  printf("allow_reserved %s\n", io(ifd, IOMMU_IOAS_ALLOW_IOVAS, &al));
  al = (struct allow_iovas){sizeof al, ioas, 1, 0, 0};
  printf("allow_null %s\n", io(ifd, IOMMU_IOAS_ALLOW_IOVAS, &al));
  al = (struct allow_iovas){sizeof al, 999, 0, 0, 0};
  printf("allow_unknown_ioas %s\n", io(ifd, IOMMU_IOAS_ALLOW_IOVAS, &al));
  al = (struct allow_iovas){sizeof al, ioas, 0, 0, 0};
  printf("allow_clear %s\n", io(ifd, IOMMU_IOAS_ALLOW_IOVAS, &al));
  ranges("ranges_after_clear", ioas, 8);

  // MAP
  map_case("map_fixed", ioas, MAP_FIXED_IOVA | RW, buf, 4 * PG, 0x100000);
  map_case("map_fixed_overlap", ioas, MAP_FIXED_IOVA | RW, buf, PG, 0x102000);
  map_case("map_fixed_adjacent", ioas, MAP_FIXED_IOVA | MAP_READABLE, buf + 4 * PG, 2 * PG, 0x104000);
  map_case("map_no_prot", ioas, MAP_FIXED_IOVA, buf, PG, 0x200000);
  map_case("map_bad_flags", ioas, MAP_FIXED_IOVA | RW | 8, buf, PG, 0x200000);
  map_case("map_zero_len", ioas, MAP_FIXED_IOVA | RW, buf, 0, 0x200000);
  map_case("map_unaligned_iova", ioas, MAP_FIXED_IOVA | RW, buf, PG, 0x200800);
  map_case("map_unaligned_va", ioas, MAP_FIXED_IOVA | RW, buf + 0x800, PG, 0x300000);
  map_case("map_unaligned_len", ioas, MAP_FIXED_IOVA | RW, buf, 0x800, 0x400000);
  map_case("map_iova_wrap", ioas, MAP_FIXED_IOVA | RW, buf, 2 * PG, UINT64_MAX - PG + 1);
  map_case("map_va_wrap", ioas, MAP_FIXED_IOVA | RW, (void *)(uintptr_t)(UINT64_MAX - PG + 1), 2 * PG, 0x500000);
  map_case("map_top_page", ioas, MAP_FIXED_IOVA | RW, buf, PG, UINT64_MAX - PG + 1);
  map_case("map_bad_va", ioas, MAP_FIXED_IOVA | RW, (void *)0x1000, PG, 0x600000);
  map_case("map_unknown_ioas", 999, MAP_FIXED_IOVA | RW, buf, PG, 0x600000);
  struct ioas_map m = {sizeof m, MAP_FIXED_IOVA | RW, ioas, 1, (uintptr_t)buf, PG, 0x600000};
  printf("map_reserved %s\n", io(ifd, IOMMU_IOAS_MAP, &m));
  map_case("map_auto", ioas, RW, buf, 2 * PG, 0);
  map_case("map_auto_unaligned_va", ioas, RW, buf + 0x800, PG, 0);
  map_case("map_auto_again", ioas, RW, buf, 2 * PG, 0);
  unmap_case("unmap_top_page", ioas, UINT64_MAX - PG + 1, PG);

  // UNMAP
  unmap_case("unmap_split", ioas, 0x101000, PG);
  unmap_case("unmap_head", ioas, 0x100000, PG);
  unmap_case("unmap_hole", ioas, 0x700000, PG);
  unmap_case("unmap_zero_len", ioas, 0x100000, 0);
  unmap_case("unmap_unaligned", ioas, 0x100800, PG);
  unmap_case("unmap_wrap", ioas, UINT64_MAX - PG + 1, 2 * PG);
  unmap_case("unmap_unknown_ioas", 999, 0x100000, 4 * PG);
  unmap_case("unmap_two_areas", ioas, 0x100000, 6 * PG);
  unmap_case("unmap_superset_empty", ioas, 0x100000, 6 * PG);
  map_case("map_again", ioas, MAP_FIXED_IOVA | RW, buf, 4 * PG, 0x100000);
  map_case("map_again2", ioas, MAP_FIXED_IOVA | RW, buf, 4 * PG, 0x800000);
  unmap_case("unmap_superset_gap", ioas, 0, 0x1000000);
  map_case("map_again3", ioas, MAP_FIXED_IOVA | RW, buf, 4 * PG, 0x100000);
  unmap_case("unmap_all", ioas, 0, UINT64_MAX);
  unmap_case("unmap_all_empty", ioas, 0, UINT64_MAX);

  // COPY
  map_case("copy_src_map", ioas, MAP_FIXED_IOVA | RW, buf, 8 * PG, 0x100000);
  copy_case("copy_fixed", MAP_FIXED_IOVA | RW, ioas2, ioas, 8 * PG, 0x200000, 0x100000);
  copy_case("copy_part", MAP_FIXED_IOVA | RW, ioas2, ioas, 2 * PG, 0x300000, 0x102000);
  copy_case("copy_auto", RW, ioas2, ioas, 8 * PG, 0, 0x100000);
  copy_case("copy_overlap_dst", MAP_FIXED_IOVA | RW, ioas2, ioas, 8 * PG, 0x204000, 0x100000);
  copy_case("copy_src_hole", MAP_FIXED_IOVA | RW, ioas2, ioas, PG, 0x400000, 0x900000);
  copy_case("copy_src_past_end", MAP_FIXED_IOVA | RW, ioas2, ioas, 9 * PG, 0x400000, 0x100000);
  copy_case("copy_same_ioas", MAP_FIXED_IOVA | RW, ioas, ioas, 8 * PG, 0x400000, 0x100000);
  copy_case("copy_bad_flags", MAP_FIXED_IOVA | RW | 8, ioas2, ioas, 8 * PG, 0x400000, 0x100000);
  copy_case("copy_no_prot", MAP_FIXED_IOVA, ioas2, ioas, 8 * PG, 0x400000, 0x100000);
  copy_case("copy_zero_len", MAP_FIXED_IOVA | RW, ioas2, ioas, 0, 0x400000, 0x100000);
  copy_case("copy_unknown_src", MAP_FIXED_IOVA | RW, ioas2, 999, 8 * PG, 0x400000, 0x100000);
  copy_case("copy_unknown_dst", MAP_FIXED_IOVA | RW, 999, ioas, 8 * PG, 0x400000, 0x100000);
  unmap_case("unmap_src_after_copy", ioas, 0x100000, 8 * PG);
  unmap_case("unmap_copied_part", ioas2, 0x200000, 2 * PG);
  unmap_case("unmap_copied", ioas2, 0x200000, 8 * PG);
  unmap_case("unmap_all_dst", ioas2, 0, UINT64_MAX);

  // OPTION
  option_case("opt_rlimit_get", 0, 1, 0, 7);
  option_case("opt_rlimit_set1", 0, 0, 0, 1);
  option_case("opt_rlimit_get1", 0, 1, 0, 7);
  option_case("opt_rlimit_set2", 0, 0, 0, 2);
  option_case("opt_rlimit_obj", 0, 1, ioas, 7);
  option_case("opt_rlimit_set0", 0, 0, 0, 0);
  option_case("opt_huge_get", 1, 1, ioas, 7);
  option_case("opt_huge_set0", 1, 0, ioas, 0);
  option_case("opt_huge_get0", 1, 1, ioas, 7);
  option_case("opt_huge_set2", 1, 0, ioas, 2);
  option_case("opt_huge_noobj", 1, 1, 0, 7);
  option_case("opt_huge_unknown_obj", 1, 1, 999, 7);
  option_case("opt_bad_id", 5, 1, 0, 7);
  option_case("opt_bad_op", 0, 2, 0, 7);
  struct option o = {sizeof o, 0, 1, 1, 0, 0};
  printf("opt_reserved %s\n", io(ifd, IOMMU_OPTION, &o));
  map_case("map_huge_off", ioas, MAP_FIXED_IOVA | RW, buf, 4 * PG, 0x100000);
  option_case("opt_huge_set1_with_map", 1, 0, ioas, 1);
  unmap_case("unmap_huge_off", ioas, 0x100000, 4 * PG);

  // IOMMU_VFIO_IOAS (compat IOAS selection)
  struct vfio_ioas v = {sizeof v, 0, 0, 0};
  printf("vfio_ioas_get_none %s\n", io(ifd, IOMMU_VFIO_IOAS, &v));
  v = (struct vfio_ioas){sizeof v, ioas, 1, 0};
  printf("vfio_ioas_set %s\n", io(ifd, IOMMU_VFIO_IOAS, &v));
  v = (struct vfio_ioas){sizeof v, 0, 0, 0};
  const char *e = io(ifd, IOMMU_VFIO_IOAS, &v);
  printf("vfio_ioas_get %s same=%d\n", e, v.ioas_id == ioas);
  v = (struct vfio_ioas){sizeof v, 999, 1, 0};
  printf("vfio_ioas_set_unknown %s\n", io(ifd, IOMMU_VFIO_IOAS, &v));
  v = (struct vfio_ioas){sizeof v, 0, 3, 0};
  printf("vfio_ioas_bad_op %s\n", io(ifd, IOMMU_VFIO_IOAS, &v));
  printf("destroy_compat_ioas %s\n", destroy(ioas));
  v = (struct vfio_ioas){sizeof v, 0, 0, 0};
  printf("vfio_ioas_get_after_destroy %s\n", io(ifd, IOMMU_VFIO_IOAS, &v));
  printf("destroy_twice %s\n", destroy(ioas));
  printf("destroy_ioas2 %s\n", destroy(ioas2));
}

// The type1 compatibility ioctls on a /dev/iommu file (no device).
static void case_compat(void) {
  int fd = open("/dev/iommu", O_RDWR);
  printf("compat_api_version %d\n", ioctl(fd, VFIO_GET_API_VERSION));
  printf("compat_ext_type1 %d\n", ioctl(fd, VFIO_CHECK_EXTENSION, 1));
  printf("compat_ext_type1v2 %d\n", ioctl(fd, VFIO_CHECK_EXTENSION, 3));
  printf("compat_ext_nesting %d\n", ioctl(fd, VFIO_CHECK_EXTENSION, 6));
  printf("compat_ext_unmap_all %d\n", ioctl(fd, VFIO_CHECK_EXTENSION, 9));
  printf("compat_ext_update_vaddr %d\n", ioctl(fd, VFIO_CHECK_EXTENSION, 10));
  printf("compat_ext_cc %d\n", ioctl(fd, VFIO_CHECK_EXTENSION, 4));
  printf("compat_set_iommu_noioas %s\n", io(fd, VFIO_SET_IOMMU, (void *)3));
  struct dma_map dm = {sizeof dm, 3, (uintptr_t)buf, 0x100000, PG};
  printf("compat_map_noioas %s\n", io(fd, VFIO_IOMMU_MAP_DMA, &dm));
  struct { uint32_t argsz, flags; uint64_t pgsizes; uint32_t cap_offset, pad; } gi = {sizeof gi, 0, 0, 0, 0};
  printf("compat_get_info_noioas %s\n", io(fd, VFIO_IOMMU_GET_INFO, &gi));
  struct ioas_alloc a = {sizeof a, 0, 0};
  ioctl(fd, IOMMU_IOAS_ALLOC, &a);
  struct vfio_ioas v = {sizeof v, a.out_ioas_id, 1, 0};
  ioctl(fd, IOMMU_VFIO_IOAS, &v);
  printf("compat_set_iommu_type1v2 %s\n", io(fd, VFIO_SET_IOMMU, (void *)3));
  printf("compat_set_iommu_again %s\n", io(fd, VFIO_SET_IOMMU, (void *)1));
  printf("compat_map %s\n", io(fd, VFIO_IOMMU_MAP_DMA, &dm));
  printf("compat_map_overlap %s\n", io(fd, VFIO_IOMMU_MAP_DMA, &dm));
  dm.flags = 0;
  dm.iova = 0x200000;
  printf("compat_map_noprot %s\n", io(fd, VFIO_IOMMU_MAP_DMA, &dm));
  gi = (typeof(gi)){sizeof gi, 0, 0, 0, 0};
  const char *e = io(fd, VFIO_IOMMU_GET_INFO, &gi);
  printf("compat_get_info %s argsz=%u flags=%#x pgsizes=%#llx cap_offset=%u\n", e, gi.argsz, gi.flags,
         (unsigned long long)gi.pgsizes, gi.cap_offset);
  struct dma_unmap du = {sizeof du, 0, 0x100000, PG};
  e = io(fd, VFIO_IOMMU_UNMAP_DMA, &du);
  printf("compat_unmap %s size=%#llx\n", e, (unsigned long long)du.size);
  du = (struct dma_unmap){sizeof du, 2, 0, 0};
  e = io(fd, VFIO_IOMMU_UNMAP_DMA, &du);
  printf("compat_unmap_all %s size=%#llx\n", e, (unsigned long long)du.size);
  close(fd);
}

// Edu's BAR0 (region 0 at offset 0 of the device file), 32-bit accesses.
static void edu_wr(int dev, unsigned off, uint32_t v) {
  if (pwrite(dev, &v, 4, off) != 4) printf("edu_write_%#x %s\n", off, ename(errno));
}
static uint32_t edu_rd(int dev, unsigned off) {
  uint32_t v = 0;
  if (pread(dev, &v, 4, off) != 4) return 0xffffffff;
  return v;
}
static int edu_dma(int dev, uint32_t src, uint32_t dst, uint32_t cnt, uint32_t cmd) {
  edu_wr(dev, 0x80, src);
  edu_wr(dev, 0x88, dst);
  edu_wr(dev, 0x90, cnt);
  edu_wr(dev, 0x98, cmd);
  for (int i = 0; i < 1000; i++) {
    if (!(edu_rd(dev, 0x98) & 1)) return 0;
    usleep(1000);
  }
  return -1;
}

// DMA by edu through the IOAS the device is attached to: memory at IOVA
// 0x100000 (buf) into edu's buffer, and back out to IOVA 0x101000.
static void dma_case(int dev) {
  // Bus master and memory space on (config space is region 7).
  uint64_t cfg = 7ull << 40;
  uint16_t cmd = 0;
  if (pread(dev, &cmd, 2, cfg + 4) != 2) printf("cfg_read %s\n", ename(errno));
  cmd |= 0x6;
  if (pwrite(dev, &cmd, 2, cfg + 4) != 2) printf("cfg_write %s\n", ename(errno));
  memset(buf, 0, 2 * PG);
  memcpy(buf, "iommufd!", 8);
  int a = edu_dma(dev, 0x100000, 0x40000, 8, 1);
  int b = edu_dma(dev, 0x40000, 0x101000, 8, 1 | 2);
  printf("dma_roundtrip %d %d %s\n", a, b, memcmp(buf + PG, "iommufd!", 8) ? "mismatch" : "same");
}

// The device cdev: before bind, bind, hardware info, attach, HWPTs.
static void case_cdev(const char *cdev, const char *group) {
  int dev = open(cdev, O_RDWR);
  printf("cdev_open %s\n", dev < 0 ? ename(errno) : "0");
  if (dev < 0) return;
  struct dev_info di = {sizeof di, 0, 0, 0, 0, 0};
  printf("cdev_info_before_bind %s\n", io(dev, VFIO_DEVICE_GET_INFO, &di));
  struct attach at = {sizeof at, 0, 1};
  printf("cdev_attach_before_bind %s\n", io(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at));
  struct detach dt = {sizeof dt, 0};
  printf("cdev_detach_before_bind %s\n", io(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &dt));
  struct bind b = {sizeof b, 0, -1, 0};
  printf("bind_bad_fd %s\n", io(dev, VFIO_DEVICE_BIND_IOMMUFD, &b));
  int devnull = open("/dev/null", O_RDWR);
  b = (struct bind){sizeof b, 0, devnull, 0};
  printf("bind_not_iommufd %s\n", io(dev, VFIO_DEVICE_BIND_IOMMUFD, &b));
  b = (struct bind){sizeof b, 1, ifd, 0};
  printf("bind_flags %s\n", io(dev, VFIO_DEVICE_BIND_IOMMUFD, &b));
  b = (struct bind){8, 0, ifd, 0};
  printf("bind_short %s\n", io(dev, VFIO_DEVICE_BIND_IOMMUFD, &b));
  int g = open(group, O_RDWR);
  printf("group_open_while_cdev_open %s\n", g < 0 ? ename(errno) : "0");
  if (g >= 0) close(g);
  b = (struct bind){sizeof b, 0, ifd, 0};
  const char *e = io(dev, VFIO_DEVICE_BIND_IOMMUFD, &b);
  printf("bind %s devid_set=%d\n", e, b.out_devid != 0);
  uint32_t devid = b.out_devid;
  b = (struct bind){sizeof b, 0, ifd, 0};
  printf("bind_again %s\n", io(dev, VFIO_DEVICE_BIND_IOMMUFD, &b));
  g = open(group, O_RDWR);
  printf("group_open_after_bind %s\n", g < 0 ? ename(errno) : "0");
  if (g >= 0) {
    struct { uint32_t argsz, flags; } gs = {8, 0};
    e = io(g, VFIO_GROUP_GET_STATUS, &gs);
    printf("group_status_after_bind %s flags=%#x\n", e, gs.flags);
    close(g);
  }
  di = (struct dev_info){sizeof di, 0, 0, 0, 0, 0};
  e = io(dev, VFIO_DEVICE_GET_INFO, &di);
  printf("cdev_info_after_bind %s regions=%u irqs=%u\n", e, di.num_regions, di.num_irqs);

  // Hardware info.
  uint64_t vtd[4];
  memset(vtd, 0xab, sizeof vtd);
  struct hw_info hi = {sizeof hi, 0, devid, sizeof vtd, (uintptr_t)vtd, 0, 0, 0};
  e = io(ifd, IOMMU_GET_HW_INFO, &hi);
  printf("hw_info %s len=%u type=%u caps=%#llx flags=%#llx cap=%#llx ecap=%#llx tail=%#llx\n", e, hi.data_len,
         hi.out_data_type, (unsigned long long)hi.out_capabilities, (unsigned long long)vtd[0],
         (unsigned long long)vtd[1], (unsigned long long)vtd[2], (unsigned long long)vtd[3]);
  memset(vtd, 0xab, sizeof vtd);
  hi = (struct hw_info){sizeof hi, 0, devid, 8, (uintptr_t)vtd, 0, 0, 0};
  e = io(ifd, IOMMU_GET_HW_INFO, &hi);
  printf("hw_info_short %s len=%u w1=%#llx\n", e, hi.data_len, (unsigned long long)vtd[1]);
  hi = (struct hw_info){sizeof hi, 0, devid, 0, 0, 0, 0, 0};
  e = io(ifd, IOMMU_GET_HW_INFO, &hi);
  printf("hw_info_zero %s len=%u type=%u\n", e, hi.data_len, hi.out_data_type);
  hi = (struct hw_info){sizeof hi, 1, devid, 0, 0, 0, 0, 0};
  printf("hw_info_flags %s\n", io(ifd, IOMMU_GET_HW_INFO, &hi));
  hi = (struct hw_info){sizeof hi, 0, 999, 0, 0, 0, 0, 0};
  printf("hw_info_unknown_dev %s\n", io(ifd, IOMMU_GET_HW_INFO, &hi));
  hi = (struct hw_info){sizeof hi, 0, devid, 0, 0, 0, 1, 0};
  printf("hw_info_reserved %s\n", io(ifd, IOMMU_GET_HW_INFO, &hi));

  // Attach to an IOAS: an automatic HWPT.
  uint32_t ioas = ioas_new();
  at = (struct attach){sizeof at, 0, 999};
  printf("attach_unknown %s\n", io(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at));
  at = (struct attach){sizeof at, 1, ioas};
  printf("attach_flags %s\n", io(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at));
  at = (struct attach){sizeof at, 0, devid};
  printf("attach_to_device_id %s\n", io(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at));
  at = (struct attach){sizeof at, 0, ioas};
  e = io(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at);
  uint32_t auto_hwpt = at.pt_id;
  printf("attach_ioas %s pt_is_new=%d\n", e, auto_hwpt != ioas);
  ranges("ranges_attached", ioas, 8);
  map_case("map_attached", ioas, MAP_FIXED_IOVA | RW, buf, 4 * PG, 0x100000);
  dma_case(dev);
  map_case("map_attached_past_aperture", ioas, MAP_FIXED_IOVA | RW, buf, PG, 1ull << 40);
  map_case("map_attached_msi", ioas, MAP_FIXED_IOVA | RW, buf, PG, 0xfee00000);
  map_case("map_attached_auto", ioas, RW, buf, 4 * PG, 0);
  printf("destroy_ioas_attached %s\n", destroy(ioas));
  printf("destroy_auto_hwpt %s\n", destroy(auto_hwpt));
  printf("destroy_device_id %s\n", destroy(devid));

  // HWPT_ALLOC.
  struct hwpt_alloc ha = {sizeof ha, 0, devid, ioas, 0, 0, 0, 0, 0};
  e = io(ifd, IOMMU_HWPT_ALLOC, &ha);
  uint32_t hwpt = ha.out_hwpt_id;
  printf("hwpt_alloc %s\n", e);
  ha = (struct hwpt_alloc){sizeof ha, 2, devid, ioas, 0, 0, 0, 0, 0};
  e = io(ifd, IOMMU_HWPT_ALLOC, &ha);
  printf("hwpt_alloc_dirty %s\n", e);
  if (!strcmp(e, "0")) destroy(ha.out_hwpt_id);
  ha = (struct hwpt_alloc){sizeof ha, 1, devid, ioas, 0, 0, 0, 0, 0};
  e = io(ifd, IOMMU_HWPT_ALLOC, &ha);
  printf("hwpt_alloc_nest_parent %s\n", e);
  uint32_t parent = !strcmp(e, "0") ? ha.out_hwpt_id : 0;
  ha = (struct hwpt_alloc){sizeof ha, 4, devid, ioas, 0, 0, 0, 0, 0};
  printf("hwpt_alloc_bad_flags %s\n", io(ifd, IOMMU_HWPT_ALLOC, &ha));
  ha = (struct hwpt_alloc){sizeof ha, 0, 999, ioas, 0, 0, 0, 0, 0};
  printf("hwpt_alloc_unknown_dev %s\n", io(ifd, IOMMU_HWPT_ALLOC, &ha));
  ha = (struct hwpt_alloc){sizeof ha, 0, devid, 999, 0, 0, 0, 0, 0};
  printf("hwpt_alloc_unknown_pt %s\n", io(ifd, IOMMU_HWPT_ALLOC, &ha));
  ha = (struct hwpt_alloc){sizeof ha, 0, devid, ioas, 0, 1, 0, 0, 0};
  printf("hwpt_alloc_reserved %s\n", io(ifd, IOMMU_HWPT_ALLOC, &ha));
  ha = (struct hwpt_alloc){sizeof ha, 0, devid, ioas, 0, 0, 1, 0, 0};
  printf("hwpt_alloc_vtd_s1_on_ioas %s\n", io(ifd, IOMMU_HWPT_ALLOC, &ha));
  ha = (struct hwpt_alloc){sizeof ha, 0, devid, ioas, 0, 0, 0, 8, (uintptr_t)buf};
  printf("hwpt_alloc_none_with_data %s\n", io(ifd, IOMMU_HWPT_ALLOC, &ha));
  if (parent) {
    uint64_t s1[3] = {0, 0x1000, 48};
    ha = (struct hwpt_alloc){sizeof ha, 0, devid, parent, 0, 0, 1, sizeof s1, (uintptr_t)s1};
    e = io(ifd, IOMMU_HWPT_ALLOC, &ha);
    printf("hwpt_alloc_nested %s\n", e);
    if (!strcmp(e, "0")) destroy(ha.out_hwpt_id);
    printf("destroy_parent %s\n", destroy(parent));
  }
  // HWPT_INVALIDATE: size, hwpt_id, data_uptr, data_type, entry_len, entry_num, reserved.
  struct { uint32_t size, hwpt_id; uint64_t data_uptr; uint32_t data_type, entry_len, entry_num, reserved; } inv;
  inv = (typeof(inv)){sizeof inv, hwpt, 0, 0, 0, 0, 0};
  printf("invalidate_paging %s\n", io(ifd, IOMMU_HWPT_INVALIDATE, &inv));
  inv = (typeof(inv)){sizeof inv, 999, 0, 0, 0, 0, 0};
  printf("invalidate_unknown %s\n", io(ifd, IOMMU_HWPT_INVALIDATE, &inv));
  inv = (typeof(inv)){sizeof inv, hwpt, 0, 0, 0, 0, 1};
  printf("invalidate_reserved %s\n", io(ifd, IOMMU_HWPT_INVALIDATE, &inv));
  inv = (typeof(inv)){sizeof inv, hwpt, 0, 0, 16, 1, 0};
  printf("invalidate_entries_no_data %s\n", io(ifd, IOMMU_HWPT_INVALIDATE, &inv));
  struct set_dirty sd = {sizeof sd, 1, hwpt, 0};
  printf("set_dirty_on_plain %s\n", io(ifd, IOMMU_HWPT_SET_DIRTY_TRACKING, &sd));
  sd = (struct set_dirty){sizeof sd, 2, hwpt, 0};
  printf("set_dirty_bad_flags %s\n", io(ifd, IOMMU_HWPT_SET_DIRTY_TRACKING, &sd));
  sd = (struct set_dirty){sizeof sd, 1, ioas, 0};
  printf("set_dirty_on_ioas %s\n", io(ifd, IOMMU_HWPT_SET_DIRTY_TRACKING, &sd));
  uint64_t bm[2] = {0, 0};
  struct get_dirty gd = {sizeof gd, hwpt, 0, 0, 0x100000, 4 * PG, PG, (uintptr_t)bm};
  printf("get_dirty_on_plain %s\n", io(ifd, IOMMU_HWPT_GET_DIRTY_BITMAP, &gd));
  gd = (struct get_dirty){sizeof gd, hwpt, 2, 0, 0x100000, 4 * PG, PG, (uintptr_t)bm};
  printf("get_dirty_bad_flags %s\n", io(ifd, IOMMU_HWPT_GET_DIRTY_BITMAP, &gd));

  // Replace the automatic HWPT with the allocated one, then detach.
  at = (struct attach){sizeof at, 0, hwpt};
  e = io(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at);
  printf("attach_hwpt %s same=%d\n", e, at.pt_id == hwpt);
  printf("destroy_auto_hwpt_after_replace %s\n", destroy(auto_hwpt));
  printf("destroy_hwpt_attached %s\n", destroy(hwpt));
  dt = (struct detach){sizeof dt, 1};
  printf("detach_flags %s\n", io(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &dt));
  dt = (struct detach){sizeof dt, 0};
  printf("detach %s\n", io(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &dt));
  printf("detach_again %s\n", io(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &dt));
  printf("destroy_hwpt %s\n", destroy(hwpt));
  unmap_case("unmap_after_detach", ioas, 0, UINT64_MAX);
  printf("destroy_ioas %s\n", destroy(ioas));
  printf("destroy_device_bound %s\n", destroy(devid));
  close(dev);
  g = open(group, O_RDWR);
  printf("group_open_after_cdev_close %s\n", g < 0 ? ename(errno) : "0");
  int dev2 = open(cdev, O_RDWR);
  printf("cdev_open_while_group_open %s\n", dev2 < 0 ? ename(errno) : "0");
  if (dev2 >= 0) {
    b = (struct bind){sizeof b, 0, ifd, 0};
    printf("bind_while_group_open %s\n", io(dev2, VFIO_DEVICE_BIND_IOMMUFD, &b));
    close(dev2);
  }
  if (g >= 0) close(g);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 2) {
    fprintf(stderr, "usage: %s ioas | all CDEV GROUP\n", argv[0]);
    return 2;
  }
  // The buffer starts one page past a 2 MiB boundary, so that the IOVAs
  // the kernel picks (aligned as the user address is, up to the length)
  // do not depend on where mmap put it.
  char *raw = mmap(NULL, BUF_PAGES * PG + (4ul << 20), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  buf = (char *)((((uintptr_t)raw + (2ul << 20) - 1) & ~((2ul << 20) - 1)) + PG);
  ifd = open("/dev/iommu", O_RDWR);
  printf("iommu_open %s\n", ifd < 0 ? ename(errno) : "0");
  if (ifd < 0) return 1;
  case_generic();
  case_ioas();
  case_compat();
  if (!strcmp(argv[1], "all") && argc >= 4) case_cdev(argv[2], argv[3]);
  close(ifd);
  printf("done\n");
  return 0;
}
