/* The process model of VFIO files and DMA mappings (issue 13): descriptor
 * exhaustion, the program's own mlock, exec and fork with live mappings.
 * usage: procmodel <case> /dev/vfio/<group> <bdf> [...]
 * Prints "name value" lines; the tests assert each (the Linux 6.1 answer
 * is given beside each check in tests/procmodel.rs). */
#define _GNU_SOURCE
#include "vfio_common.h"
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <linux/filter.h>
#include <pthread.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <spawn.h>
#include <libgen.h>

static const char *err(int r) {
  static char b[32];
  if (r >= 0) return "OK";
  switch (errno) {
  case EMFILE: return "EMFILE";
  case EBUSY: return "EBUSY";
  case EFAULT: return "EFAULT";
  case EINVAL: return "EINVAL";
  case ENOTTY: return "ENOTTY";
  case ESPIPE: return "ESPIPE";
  case EAGAIN: return "EAGAIN";
  case ENODEV: return "ENODEV";
  case EPERM: return "EPERM";
  case ENOMEM: return "ENOMEM";
  default: snprintf(b, sizeof b, "errno%d", errno); return b;
  }
}

static const char *errno_name(int e) {
  errno = e;
  return e ? err(-1) : "0";
}

/* kB of [a, a + len) in VMAs with VM_LOCKED ("lo" in smaps VmFlags). */
static long locked_kb_of(const char *smaps, void *a, size_t len) {
  FILE *f = fopen(smaps, "r");
  if (!f) return -1;
  char line[512];
  unsigned long lo = (unsigned long)a, hi = lo + len, s = 0, e = 0;
  long kb = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long x, y;
    if (sscanf(line, "%lx-%lx ", &x, &y) == 2 && strchr(line, '-') < strchr(line, ' ')) {
      s = x;
      e = y;
      continue;
    }
    if (!strncmp(line, "VmFlags:", 8) && strstr(line, " lo")) {
      unsigned long from = s > lo ? s : lo, to = e < hi ? e : hi;
      if (from < to) kb += (to - from) / 1024;
    }
  }
  fclose(f);
  return kb;
}

static long locked_kb(void *a, size_t len) { return locked_kb_of("/proc/self/smaps", a, len); }

/* ---- the edu device ---- */
static int devfd = -1;
static uint64_t bar0;

static uint32_t rd32(unsigned off) {
  uint32_t v = ~0u;
  if (pread(devfd, &v, 4, bar0 + off) != 4) return ~0u;
  return v;
}

static void wr64(unsigned off, uint64_t v) {
  if (pwrite(devfd, &v, 8, bar0 + off) != 8) die("bar write");
}

/* edu DMA of `cnt` bytes; to_ram: device buffer -> IOVA. 0 when done. */
static int edu_dma(uint64_t src, uint64_t dst, uint64_t cnt, int to_ram) {
  wr64(0x80, src);
  wr64(0x88, dst);
  wr64(0x90, cnt);
  wr64(0x98, 1 | (to_ram ? 2 : 0));
  for (int i = 0; i < 200000; i++) {
    if (!(rd32(0x98) & 1)) return 0;
    usleep(10);
  }
  return -1;
}

static void device_setup(int dev) {
  devfd = dev;
  struct vfio_region_info ri = {.argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX};
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("GET_REGION_INFO bar0");
  bar0 = ri.offset;
  struct vfio_region_info ci = {.argsz = sizeof ci, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ci)) die("GET_REGION_INFO config");
  uint16_t cmd = 0;
  if (pread(dev, &cmd, 2, ci.offset + 4) != 2) die("config read");
  cmd |= 0x6;
  if (pwrite(dev, &cmd, 2, ci.offset + 4) != 2) die("config write");
}

/* The container and group of argv[2] with edu (argv[3]) set up as
 * `devfd`: the container. */
static int open_edu(char **argv, int *g) {
  int c = open_container(argv[2], g);
  int dev = ioctl(*g, VFIO_GROUP_GET_DEVICE_FD, argv[3]);
  if (dev < 0) die("GET_DEVICE_FD");
  device_setup(dev);
  return c;
}

/* Anonymous memory exactly at `addr`, filled with `byte`. */
static char *fixed_page(uint64_t addr, size_t len, int byte) {
  char *p = mmap((void *)addr, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (p == MAP_FAILED || (uint64_t)p != addr) die("mmap fixed");
  memset(p, byte, len);
  return p;
}

static int all_are(const char *p, size_t n, int byte) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != (char)byte) return 0;
  return 1;
}

#define EDU_BUF 0x40000
/* Device copy of 64 bytes from IOVA `from` to IOVA `to` through edu's buffer. */
static int dev_copy(uint64_t from, uint64_t to) {
  int r = edu_dma(from, EDU_BUF, 64, 0);
  return r ? r : edu_dma(EDU_BUF, to, 64, 1);
}
static char first_of(const char *p) { return all_are(p, 64, p[0]) && p[0] > ' ' ? p[0] : '?'; }
#define X_ADDR 0x6a0000000ul /* the page mapped before exec/exit */
#define Z_ADDR 0x6b0000000ul /* the page that fills the edu buffer */
#define IOVA_X 0x100000
#define IOVA_Z 0x200000
/* Does the device read all `byte` at `iova`? 64 bytes copied through edu's
 * buffer to the page at IOVA_Z (`z`, cleared first). Both transfers are
 * made whatever the first answers, as the cases were written. */
static int device_sees(uint64_t iova, char *z, int byte) {
  memset(z, 0, 64);
  edu_dma(iova, EDU_BUF, 64, 0);
  edu_dma(EDU_BUF, IOVA_Z, 64, 1);
  return all_are(z, 64, byte);
}

#define IOVA_NEW 0x300000

/* Descriptor exhaustion: an open that fails for want of a descriptor must
 * leave nothing behind. */
static int case_emfile(const char *group) {
  struct rlimit old;
  getrlimit(RLIMIT_NOFILE, &old);
  struct rlimit low = {64, old.rlim_max};
  if (setrlimit(RLIMIT_NOFILE, &low)) die("setrlimit");
  int fill[64], n = 0;
  while (n < 64 && (fill[n] = open("/dev/null", O_RDONLY)) >= 0) n++;
  int g = open(group, O_RDWR);
  printf("full_group %s\n", err(g));
  int c = open("/dev/vfio/vfio", O_RDWR);
  printf("full_container %s\n", err(c));
  /* Many failures: each must cost the same and leave nothing. */
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int same = 1;
  for (int i = 0; i < 2000; i++)
    if (open(group, O_RDWR) >= 0 || errno != EMFILE) same = 0;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  printf("full_group_2000 %s\n", same ? "EMFILE" : "other");
  fprintf(stderr, "2000 failed opens: %.3f s\n",
          (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
  /* One free slot: open needs one descriptor. */
  close(fill[--n]);
  g = open(group, O_RDWR);
  printf("one_slot_group %s\n", err(g));
  if (g >= 0) close(g);
  while (n > 0) close(fill[--n]);
  setrlimit(RLIMIT_NOFILE, &old);
  g = open(group, O_RDWR);
  printf("group_after %s\n", err(g));
  c = open("/dev/vfio/vfio", O_RDWR);
  printf("container_after %s\n", err(c));
  if (g >= 0 && c >= 0) {
    printf("set_container_after %s\n", err(ioctl(g, VFIO_GROUP_SET_CONTAINER, &c)));
  }
  close(g);
  close(c);
  return 0;
}

/* UNMAP_DMA leaves the program's own mlock alone. */
static int case_mlock(const char *group) {
  int g, c = open_container(group, &g);
  size_t len = 8 * PG;
  char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) die("mmap");
  memset(buf, 1, len);
  if (mlock(buf, 4 * PG)) die("mlock");
  printf("own_locked_kb %ld\n", locked_kb(buf, len));
  printf("map %s\n", errno_name(map(c, 0x100000, buf, len)));
  printf("unmap %s\n", errno_name(unmap(c, 0x100000, len)));
  printf("own_locked_after_unmap_kb %ld\n", locked_kb(buf, len));
  /* Twice: the second pin finds the same lock again. */
  printf("map2 %s\n", errno_name(map(c, 0x100000, buf, len)));
  close(c);
  close(g);
  printf("own_locked_after_close_kb %ld\n", locked_kb(buf, len));
  /* mlockall(MCL_FUTURE): memory mapped later is the program's lock too. */
  c = open_container(group, &g);
  if (mlockall(MCL_CURRENT | MCL_FUTURE)) die("mlockall");
  char *late = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (late == MAP_FAILED) die("mmap late");
  printf("mlockall_map %s\n", errno_name(map(c, 0x200000, late, len)));
  printf("mlockall_unmap %s\n", errno_name(unmap(c, 0x200000, len)));
  printf("mlockall_locked_after_unmap_kb %ld\n", locked_kb(late, len));
  close(c);
  close(g);
  printf("mlockall_locked_after_close_kb %ld\n", locked_kb(late, len));
  munlockall();
  return 0;
}

/* Before exec: map X (filled 'A') and Z ('C'), load the edu buffer from Z,
 * then exec this program with the container and group descriptors. */
static int case_exec(char **argv) {
  int g, c = open_edu(argv, &g);
  fixed_page(X_ADDR, PG, 'A');
  fixed_page(Z_ADDR, PG, 'C');
  if (map(c, IOVA_X, (void *)X_ADDR, PG) || map(c, IOVA_Z, (void *)Z_ADDR, PG)) die("map");
  printf("edu_load %d\n", edu_dma(IOVA_Z, EDU_BUF, 64, 0));
  fflush(stdout);
  char cs[16], gs[16];
  snprintf(cs, sizeof cs, "%d", c);
  snprintf(gs, sizeof gs, "%d", g);
  execl("/proc/self/exe", argv[0], "exec2", cs, gs, argv[3], (char *)NULL);
  die("exec");
  return 1;
}

/* After exec: the new image has its own page at X ('B'); the old mapping
 * of X must never reach it. */
static int case_exec2(char **argv) {
  int c = atoi(argv[2]), g = atoi(argv[3]);
  char *x = fixed_page(X_ADDR, PG, 'B');
  int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[4]);
  printf("exec_device_fd %s\n", err(dev));
  if (dev < 0) return 0;
  device_setup(dev);
  /* Device buffer ('C') -> IOVA_X: the old image's page, never ours. */
  edu_dma(EDU_BUF, IOVA_X, 64, 1);
  printf("exec_new_image_untouched %s\n", all_are(x, PG, 'B') ? "yes" : "no");
  char *y = fixed_page(X_ADDR + 16 * PG, PG, 'D');
  printf("exec_new_map %s\n", errno_name(map(c, IOVA_NEW, y, PG)));
  /* The old image's page X, written by the device above -> our page. */
  int e = dev_copy(IOVA_X, IOVA_NEW);
  printf("exec_old_pages_kept %d %c\n", e, first_of(y));
  return 0;
}

/* The owner of a mapping exits; its pid goes to another process; the
 * child that kept the descriptors runs DMA through the old mapping: it
 * must not land in the process that now has the pid. Root only (clone3
 * with set_tid makes the pid reuse deterministic). */
static int case_orphan(char **argv) {
  int g, c = open_edu(argv, &g);
  fixed_page(X_ADDR, PG, 'A');
  fixed_page(Z_ADDR, PG, 'C');
  if (map(c, IOVA_X, (void *)X_ADDR, PG) || map(c, IOVA_Z, (void *)Z_ADDR, PG)) die("map");
  if (edu_dma(IOVA_Z, EDU_BUF, 64, 0)) die("edu load");
  fflush(stdout);
  pid_t owner = getpid();
  int report[2];
  if (pipe(report)) die("pipe");
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child > 0) _exit(0); /* the owner of the mapping goes away */
  while (getppid() == owner) usleep(1000);
  /* Wait until the owner is reaped and its pid is free. */
  for (int i = 0; i < 5000 && kill(owner, 0) == 0; i++) usleep(1000);
  /* A process with the owner's pid, with its own page at X ('B'). */
  int go[2];
  if (pipe(go)) die("pipe");
  pid_t tid = owner;
  struct clone_args ca = {.exit_signal = SIGCHLD, .set_tid = (uint64_t)(uintptr_t)&tid,
                          .set_tid_size = 1};
  long other = syscall(SYS_clone3, &ca, sizeof ca);
  if (other == 0) {
    memset((void *)X_ADDR, 'B', PG);
    char b;
    if (read(go[0], &b, 1) != 1) _exit(2);
    char out = all_are((char *)X_ADDR, PG, 'B') ? 'y' : 'n';
    if (write(report[1], &out, 1) != 1) _exit(3);
    _exit(0);
  }
  printf("pid_reused %s\n", other == owner ? "yes" : err(-1));
  if (other < 0) {
    fflush(stdout);
    _exit(0);
  }
  usleep(20000); /* let it fill X */
  /* Device buffer ('C') -> IOVA_X, the mapping of the process that is gone. */
  int r = edu_dma(EDU_BUF, IOVA_X, 64, 1);
  printf("orphan_dma_done %d\n", r);
  if (write(go[1], "g", 1) != 1) die("write");
  char out = '?';
  if (read(report[0], &out, 1) != 1) out = '?';
  waitpid(other, NULL, 0);
  printf("other_process_untouched %s\n", out == 'y' ? "yes" : "no");
  fflush(stdout);
  _exit(0);
}

/* The owner of mappings exits while a forked child keeps the container:
 * the pages it pinned stay (Linux: pinned pages outlive their mm). The
 * private page is seen by the device only; the shared page is the one
 * the child still maps. */
#define S_ADDR 0x6c0000000ul
#define R_ADDR 0x6d0000000ul
#define IOVA_S 0x400000
#define IOVA_M 0x500000
#define IOVA_R 0x500000
static void kept_owner(char **argv) {
  int g, c = open_edu(argv, &g);
  fixed_page(X_ADDR, PG, 'A');
  char *s = mmap((void *)S_ADDR, PG, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (s != (char *)S_ADDR) die("mmap shared");
  memset(s, 's', PG);
  if (map(c, IOVA_X, (void *)X_ADDR, PG) || map(c, IOVA_S, s, PG)) die("map");
  fflush(stdout);
  pid_t owner = getpid();
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child > 0) _exit(0); /* the owner of X and S goes */
  memset((void *)X_ADDR, 'x', PG); /* the child's own copy of X */
  char *r = fixed_page(R_ADDR, PG, 'r');
  while (getppid() == owner) usleep(1000);
  for (int i = 0; i < 5000 && kill(owner, 0) == 0; i++) usleep(1000);
  printf("kept_owner_gone %s\n", kill(owner, 0) ? "yes" : "no");
  printf("kept_child_map %s\n", errno_name(map(c, IOVA_R, r, PG)));
  memset(s, 't', PG); /* after the owner is gone */
  int e = dev_copy(IOVA_X, IOVA_R);
  printf("kept_private_read %d %c\n", e, first_of(r));
  e = dev_copy(IOVA_S, IOVA_R);
  printf("kept_shared_read %d %c\n", e, first_of(r));
  memset(r, 'D', PG);
  e = dev_copy(IOVA_R, IOVA_S);
  printf("kept_shared_write %d %c\n", e, first_of(s));
  memset(r, 'E', PG);
  int e1 = dev_copy(IOVA_R, IOVA_X);
  memset(r, 'F', PG);
  int e2 = dev_copy(IOVA_X, IOVA_R);
  printf("kept_private_write %d %d %c %s\n", e1, e2, first_of(r),
         all_are((char *)X_ADDR, PG, 'x') ? "child-untouched" : "child-touched");
  printf("kept_unmap %s\n", errno_name(unmap(c, IOVA_X, PG)));
  printf("kept_unmap_shared %s\n", errno_name(unmap(c, IOVA_S, PG)));
  printf("kept_unmap_child %s\n", errno_name(unmap(c, IOVA_R, PG)));
  fflush(stdout);
  _exit(0);
}
/* The program's first process only waits: the owner is its child, and the
 * owner's child writes the report (its end of `done` closes at its exit). */
static int case_kept(char **argv) {
  int done[2];
  if (pipe(done)) die("pipe");
  pid_t owner = fork();
  if (owner < 0) die("fork");
  if (owner == 0) {
    close(done[0]);
    kept_owner(argv);
  }
  close(done[1]);
  waitpid(owner, NULL, 0);
  char b;
  while (read(done[0], &b, 1) > 0) {
  }
  return 0;
}

/* fork: the container, group and device are shared; the child's MAP_DMA
 * pins the child's own memory, and its DMA reaches the parent's mappings. */
static int case_fork(char **argv) {
  int g, c = open_edu(argv, &g);
  char *z = fixed_page(Z_ADDR, PG, 'Z');
  char *p = fixed_page(X_ADDR, PG, 'P');
  if (map(c, IOVA_Z, z, PG)) die("map");
  fflush(stdout);
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    memset(p, 'K', PG); /* the child's own copy of the page */
    int r = map(c, IOVA_NEW, p, PG);
    printf("fork_child_map %s\n", errno_name(r));
    /* The child's page -> device -> the parent's page Z. */
    int d1 = edu_dma(IOVA_NEW, EDU_BUF, 64, 0), d2 = edu_dma(EDU_BUF, IOVA_Z, 64, 1);
    printf("fork_child_dma %d %d\n", d1, d2);
    printf("fork_child_unmap %s\n", errno_name(unmap(c, IOVA_NEW, PG)));
    fflush(stdout);
    _exit(0);
  }
  int st = 0;
  waitpid(child, &st, 0);
  printf("fork_parent_sees_child_data %s\n", all_are(z, 64, 'K') ? "yes" : "no");
  printf("fork_parent_page_untouched %s\n", all_are(p, PG, 'P') ? "yes" : "no");
  /* The child's mapping is gone: the IOVA is free again. */
  printf("fork_parent_map_again %s\n", errno_name(map(c, IOVA_NEW, p, PG)));
  close(devfd);
  close(g);
  close(c);
  return 0;
}

/* A fork with no VFIO file open is a plain fork (the engine stays in the
 * process: no keeper address in the environment); the first fork with one
 * open hands the engine to the keeper, and both sides then share the
 * device. */
static int case_plainfork(char **argv) {
  printf("plainfork_before %s\n", getenv("SOFTVFIO_KEEPER") ? "keeper" : "in-process");
  fflush(stdout);
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    int g, c = open_edu(argv, &g);
    printf("plainfork_child %s\n", getenv("SOFTVFIO_KEEPER") ? "keeper" : "in-process");
    fflush(stdout);
    pid_t grand = fork();
    if (grand < 0) die("fork");
    if (grand == 0) {
      wr64(0x80, 0x1234); /* edu's DMA source register: the shared device */
      printf("plainfork_grandchild %s\n", getenv("SOFTVFIO_KEEPER") ? "keeper" : "in-process");
      fflush(stdout);
      _exit(0);
    }
    waitpid(grand, NULL, 0);
    uint64_t v = 0;
    if (pread(devfd, &v, 8, bar0 + 0x80) != 8) die("bar read");
    printf("plainfork_child_after %s %#lx\n", getenv("SOFTVFIO_KEEPER") ? "keeper" : "in-process",
           (unsigned long)v);
    close(devfd);
    close(g);
    close(c);
    fflush(stdout);
    _exit(0);
  }
  waitpid(child, NULL, 0);
  printf("plainfork_parent_after %s\n", getenv("SOFTVFIO_KEEPER") ? "keeper" : "in-process");
  return 0;
}

/* Every exec entry keeps the container and group descriptors usable in
 * the new image (preload interposes each: glibc reaches execve from execv, execvp and execl*
 * through internal aliases). argv[4] names the entry. */
extern char **environ;
static int case_execvar(char **argv) {
  int g, c = open_container(argv[2], &g);
  char cs[16], gs[16];
  snprintf(cs, sizeof cs, "%d", c);
  snprintf(gs, sizeof gs, "%d", g);
  const char *v = argv[4];
  char *args[] = {argv[0], "execvar2", cs, gs, (char *)v, NULL};
  fflush(stdout);
  char *noenv[] = {NULL};
  if (!strcmp(v, "execve")) execve("/proc/self/exe", args, environ);
  else if (!strncmp(v, "execve_noenv", 12)) execve("/proc/self/exe", args, noenv);
  else if (!strcmp(v, "execv")) execv("/proc/self/exe", args);
  else if (!strcmp(v, "execvp")) execvp("/proc/self/exe", args);
  else if (!strcmp(v, "execvpe")) execvpe("/proc/self/exe", args, environ);
  else if (!strcmp(v, "execl")) execl("/proc/self/exe", argv[0], "execvar2", cs, gs, v, (char *)NULL);
  else if (!strcmp(v, "execlp")) execlp("/proc/self/exe", argv[0], "execvar2", cs, gs, v, (char *)NULL);
  else if (!strcmp(v, "execle")) execle("/proc/self/exe", argv[0], "execvar2", cs, gs, v, (char *)NULL, environ);
  else if (!strcmp(v, "fexecve")) {
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    fexecve(fd, args, environ);
  }
  printf("exec_%s failed %s\n", v, err(-1));
  return 1;
}

/* The new image of an exec with an empty environment maps a page and
 * leaves it mapped: with --sanitize, the leak's call site is these frames
 * (the library got the sanitizer's variables back into the environment). */
__attribute__((noinline)) static int exec_image_maps_and_leaves(int c) {
  char *p = mmap((void *)0x6c0000000ul, 4096, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (p == MAP_FAILED) return errno;
  p[0] = 'E';
  int r = map(c, 0x300000, p, 4096);
  __asm__ volatile("" ::: "memory");
  return r;
}

static int case_execvar2(char **argv) {
  int c = atoi(argv[2]), g = atoi(argv[3]);
  struct vfio_group_status st = {.argsz = sizeof st};
  int r1 = ioctl(g, VFIO_GROUP_GET_STATUS, &st);
  int r2 = ioctl(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU);
  printf("exec_%s %s %d %s\n", argv[4], err(r1), st.flags, r2 == 1 ? "type1v2" : err(r2));
  if (!strcmp(argv[4], "execve_noenv_map")) {
    const char *san = getenv("SOFTVFIO_SANITIZE");
    printf("exec_image_sanitize %s\n", san ? san : "unset");
    printf("exec_image_map %s\n", errno_name(exec_image_maps_and_leaves(c)));
  }
  return 0;
}

/* A thread keeps reading and writing the device while the main thread
 * forks (preload: the hand-off happens under its calls): every call of
 * both threads and of the child answers as the one shared device. */
static volatile int tf_stop;
static long tf_errors, tf_calls;
static void *tf_worker(void *arg) {
  (void)arg;
  for (uint64_t i = 1; !tf_stop; i++) {
    uint64_t v = 0;
    /* edu's DMA count register (0x90) holds what was written. */
    if (pwrite(devfd, &i, 8, bar0 + 0x90) != 8 || pread(devfd, &v, 8, bar0 + 0x90) != 8 || v != i)
      tf_errors++;
    tf_calls++;
  }
  return NULL;
}

static int case_threadfork(char **argv) {
  int g, c = open_edu(argv, &g);
  pthread_t t;
  pthread_create(&t, NULL, tf_worker, NULL);
  usleep(20000);
  fflush(stdout);
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    uint64_t v = 0x77;
    int ok = pwrite(devfd, &v, 8, bar0 + 0x80) == 8;
    _exit(ok ? 0 : 1);
  }
  int st = 0;
  waitpid(child, &st, 0);
  usleep(20000);
  tf_stop = 1;
  pthread_join(t, NULL);
  uint64_t src = 0;
  if (pread(devfd, &src, 8, bar0 + 0x80) != 8) die("bar read");
  printf("threadfork_child %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  printf("threadfork_worker_errors %ld\n", tf_errors);
  printf("threadfork_worker_called %s\n", tf_calls > 10 ? "yes" : "no");
  printf("threadfork_child_write_seen %#lx\n", (unsigned long)src);
  close(devfd);
  close(g);
  close(c);
  return 0;
}

/* QEMU's live update without exec: invalidate the vaddr, map the same
 * memfd elsewhere, give the mapping its new vaddr: DMA reaches it. */
static int memfd_page(int byte) {
  int fd = memfd_create("guest", 0);
  if (fd < 0 || ftruncate(fd, PG)) die("memfd");
  char *p = mmap((void *)X_ADDR, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0);
  if (p == MAP_FAILED) die("mmap memfd");
  memset(p, byte, PG);
  return fd;
}

static int invalidate_vaddr(int c, uint64_t iova, uint64_t size) {
  struct vfio_iommu_type1_dma_unmap u = {.argsz = sizeof u, .flags = VFIO_DMA_UNMAP_FLAG_VADDR,
                                         .iova = iova, .size = size};
  return ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u) ? errno : 0;
}

static int update_vaddr(int c, uint64_t iova, void *vaddr, uint64_t size) {
  struct vfio_iommu_type1_dma_map m = {.argsz = sizeof m, .flags = VFIO_DMA_MAP_FLAG_VADDR,
                                       .vaddr = (uint64_t)(uintptr_t)vaddr, .iova = iova, .size = size};
  return ioctl(c, VFIO_IOMMU_MAP_DMA, &m) ? errno : 0;
}

static int case_vaddr(char **argv) {
  int g, c = open_edu(argv, &g);
  int fd = memfd_page('A');
  char *z = fixed_page(Z_ADDR, PG, 'C');
  if (map(c, IOVA_X, (void *)X_ADDR, PG) || map(c, IOVA_Z, z, PG)) die("map");
  printf("invalidate %s\n", errno_name(invalidate_vaddr(c, IOVA_X, PG)));
  munmap((void *)X_ADDR, PG);
  char *y = mmap((void *)(X_ADDR + 64 * PG), PG, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0);
  if (y == MAP_FAILED) die("mmap again");
  printf("update %s\n", errno_name(update_vaddr(c, IOVA_X, y, PG)));
  int d1 = edu_dma(IOVA_Z, EDU_BUF, 64, 0), d2 = edu_dma(EDU_BUF, IOVA_X, 64, 1);
  printf("vaddr_dma %d %d\n", d1, d2);
  printf("vaddr_dma_reaches_new %s\n", all_are(y, 64, 'C') ? "yes" : "no");
  /* And back: device reads the new place. */
  memset(y, 'N', PG);
  d1 = edu_dma(IOVA_X, EDU_BUF, 64, 0);
  d2 = edu_dma(EDU_BUF, IOVA_Z, 64, 1);
  printf("vaddr_dma_reads_new %s\n", all_are(z, 64, 'N') ? "yes" : "no");
  printf("unmap %s\n", errno_name(unmap(c, IOVA_X, PG)));
  close(devfd);
  close(g);
  close(c);
  return 0;
}

/* QEMU's cpr across exec: invalidate, exec with the container, group and
 * memfd kept; the new image maps the memfd and updates the vaddr. */
static int case_cpr(char **argv) {
  int g, c = open_container(argv[2], &g);
  int fd = memfd_page('A');
  char *z = fixed_page(Z_ADDR, PG, 'C');
  if (map(c, IOVA_X, (void *)X_ADDR, PG) || map(c, IOVA_Z, z, PG)) die("map");
  printf("invalidate %s\n", errno_name(invalidate_vaddr(c, IOVA_X, PG)));
  fflush(stdout);
  char cs[16], gs[16], fs[16];
  snprintf(cs, sizeof cs, "%d", c);
  snprintf(gs, sizeof gs, "%d", g);
  snprintf(fs, sizeof fs, "%d", fd);
  execl("/proc/self/exe", argv[0], "cpr2", cs, gs, argv[3], fs, (char *)NULL);
  die("exec");
  return 1;
}

static int case_cpr2(char **argv) {
  int c = atoi(argv[2]), g = atoi(argv[3]), fd = atoi(argv[5]);
  char *y = mmap((void *)(X_ADDR + 64 * PG), PG, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0);
  if (y == MAP_FAILED) die("mmap memfd");
  printf("cpr_update %s\n", errno_name(update_vaddr(c, IOVA_X, y, PG)));
  int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[4]);
  printf("cpr_device_fd %s\n", err(dev));
  if (dev < 0) return 0;
  device_setup(dev);
  /* Z is the old image's page: its mapping faults; load the device from
   * the new image's own mapping instead. */
  char *w = fixed_page(Z_ADDR + 16 * PG, PG, 'W');
  printf("cpr_new_map %s\n", errno_name(map(c, IOVA_NEW, w, PG)));
  int d1 = edu_dma(IOVA_NEW, EDU_BUF, 64, 0), d2 = edu_dma(EDU_BUF, IOVA_X, 64, 1);
  printf("cpr_dma %d %d\n", d1, d2);
  printf("cpr_dma_reaches_new %s\n", all_are(y, 64, 'W') ? "yes" : "no");
  /* Z, the old image's private page, is still pinned: it still holds 'C'. */
  int e = dev_copy(IOVA_Z, IOVA_NEW);
  printf("cpr_old_page %d %c\n", e, first_of(w));
  printf("cpr_unmap_all %s\n", errno_name(unmap(c, IOVA_X, PG)));
  return 0;
}

/* read, lseek and FIONREAD on VFIO descriptors (the table in
 * docs/RELIABILITY.md). */
static const char *num_or_err(long r) {
  static char b[32];
  if (r < 0) return err(-1);
  snprintf(b, sizeof b, "%ld", r);
  return b;
}

static int case_fdops(char **argv) {
  int c = open("/dev/vfio/vfio", O_RDWR);
  int g = open(argv[2], O_RDWR);
  char buf[8];
  int n = 0;
  printf("container_read %s\n", num_or_err(read(c, buf, 4)));
  printf("container_lseek %s\n", num_or_err(lseek(c, 0, SEEK_SET)));
  printf("container_fionread %s\n", num_or_err(ioctl(c, FIONREAD, &n)));
  printf("group_lseek %s\n", num_or_err(lseek(g, 0, SEEK_SET)));
  printf("group_fionread %s\n", num_or_err(ioctl(g, FIONREAD, &n)));
  if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) || ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
    die("setup");
  int d = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[3]);
  if (d < 0) die("GET_DEVICE_FD");
  printf("device_read %s\n", num_or_err(read(d, buf, 4)));
  printf("device_lseek %s\n", num_or_err(lseek(d, 0, SEEK_CUR)));
  printf("device_fionread %s\n", num_or_err(ioctl(d, FIONREAD, &n)));
  close(d);
  close(g);
  close(c);
  return 0;
}

/* GET_DEVICE_FD names as vfio_pci_core_match reads them. */
static int case_names(char **argv) {
  int g, c = open_container(argv[2], &g);
  char name[64];
  snprintf(name, sizeof name, "%s ", argv[3]);
  int d = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, name);
  printf("name_trailing_space %s\n", err(d));
  if (d >= 0) close(d);
  snprintf(name, sizeof name, " %s", argv[3]);
  printf("name_leading_space %s\n", err(ioctl(g, VFIO_GROUP_GET_DEVICE_FD, name)));
  snprintf(name, sizeof name, "%s  vf_token=x", argv[3]);
  printf("name_option %s\n", err(ioctl(g, VFIO_GROUP_GET_DEVICE_FD, name)));
  snprintf(name, sizeof name, "%sx", argv[3]);
  printf("name_suffix %s\n", err(ioctl(g, VFIO_GROUP_GET_DEVICE_FD, name)));
  close(g);
  close(c);
  return 0;
}

/* A program that forbids itself mlock, munlock and madvise (seccomp) and
 * is not dumpable: VFIO's pins need neither. */
static int case_seccomp(char **argv) {
  int g, c = open_edu(argv, &g);
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mlock, 3, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_munlock, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_madvise, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
  };
  struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
    die("seccomp");
  if (prctl(PR_SET_DUMPABLE, 0)) die("dumpable");
  char *x = fixed_page(X_ADDR, 2 * PG, 'S');
  char *z = fixed_page(Z_ADDR, PG, 0);
  printf("seccomp_mlock %s\n", err(mlock(x, PG)));
  printf("seccomp_map %s\n", errno_name(map(c, IOVA_X, x, 2 * PG)));
  printf("seccomp_map_z %s\n", errno_name(map(c, IOVA_Z, z, PG)));
  int d1 = edu_dma(IOVA_X + PG, EDU_BUF, 64, 0), d2 = edu_dma(EDU_BUF, IOVA_Z, 64, 1);
  printf("seccomp_dma %d %d %s\n", d1, d2, all_are(z, 64, 'S') ? "yes" : "no");
  printf("seccomp_unmap %s\n", errno_name(unmap(c, IOVA_X, 2 * PG)));
  close(devfd);
  close(g);
  close(c);
  return 0;
}

/* What DMA sees after the program changes mapped memory (the table in
 * docs/RELIABILITY.md): mprotect, MADV_DONTNEED, mremap, munmap. */
static int case_quirks(char **argv) {
  int g, c = open_edu(argv, &g);
  char *x = fixed_page(X_ADDR, 2 * PG, 'Q');
  char *z = fixed_page(Z_ADDR, PG, 'Z');
  if (map(c, IOVA_X, x, 2 * PG) || map(c, IOVA_Z, z, PG)) die("map");
  /* Read-only now: the device writes into it anyway (Linux: yes). */
  mprotect(x, 2 * PG, PROT_READ);
  memset(z, 'W', 64);
  edu_dma(IOVA_Z, EDU_BUF, 64, 0);
  edu_dma(EDU_BUF, IOVA_X, 64, 1);
  printf("mprotect_ro_dma_write %s\n", all_are(x, 64, 'W') ? "yes" : "no");
  mprotect(x, 2 * PG, PROT_NONE);
  printf("mprotect_none_dma_read %s\n", device_sees(IOVA_X + PG, z, 'Q') ? "yes" : "no");
  mprotect(x, 2 * PG, PROT_READ | PROT_WRITE);
  printf("madv_dontneed %s\n", err(madvise(x + PG, PG, MADV_DONTNEED)));
  /* mremap away: what is at the old address now gets the DMA. */
  char *moved = mremap(x, 2 * PG, 2 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)(X_ADDR + 32 * PG));
  if (moved == MAP_FAILED) die("mremap");
  char *again = fixed_page(X_ADDR, 2 * PG, 'R');
  memset(z, 'M', 64);
  edu_dma(IOVA_Z, EDU_BUF, 64, 0);
  edu_dma(EDU_BUF, IOVA_X, 64, 1);
  printf("mremap_dma_reaches_moved %s\n", all_are(moved, 64, 'M') ? "yes" : "no");
  printf("mremap_dma_reaches_new_at_old_address %s\n", all_are(again, 64, 'M') ? "yes" : "no");
  printf("unmap %s\n", errno_name(unmap(c, IOVA_X, 2 * PG)));
  close(devfd);
  close(g);
  close(c);
  return 0;
}

/* The madvise advice the DMA sanitizer does not report (docs/SANITIZER.md):
 * MADV_FREE then MADV_PAGEOUT (reclaim now) of a page mapped for DMA;
 * does the program keep its page, does the device read it, and see the
 * program's later writes? MADV_REMOVE of private memory, MADV_DONTFORK. */
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#define IOVA_W 0x300000
#define IOVA_S 0x400000
static int case_madvise(char **argv) {
  int g, c = open_edu(argv, &g);
  char *x = fixed_page(X_ADDR, 2 * PG, 'F');
  char *z = fixed_page(Z_ADDR, PG, 'Z');
  if (map(c, IOVA_X, x, 2 * PG) || map(c, IOVA_Z, z, PG)) die("map");
  printf("madv_free %s\n", err(madvise(x, PG, MADV_FREE)));
  printf("madv_free_pageout %s\n", err(madvise(x, PG, MADV_PAGEOUT)));
  printf("madv_free_program_keeps %s\n", all_are(x, 64, 'F') ? "yes" : "no");
  printf("madv_free_device_reads_old %s\n", device_sees(IOVA_X, z, 'F') ? "yes" : "no");
  memset(x, 'G', 64);
  edu_dma(IOVA_X, EDU_BUF, 64, 0);
  edu_dma(EDU_BUF, IOVA_Z, 64, 1);
  printf("madv_free_device_sees_new_writes %s\n", all_are(z, 64, 'G') ? "yes" : "no");
  /* The control: a page of the same kind that is not mapped for DMA is
   * discarded (Linux: zero-filled after the reclaim). */
  char *y = fixed_page(X_ADDR + 8 * PG, PG, 'F');
  madvise(y, PG, MADV_FREE);
  madvise(y, PG, MADV_PAGEOUT);
  printf("madv_free_unmapped_page_kept %s\n", all_are(y, 64, 'F') ? "yes" : "no");
  printf("madv_remove_private %s\n", err(madvise(x + PG, PG, MADV_REMOVE)));
  printf("madv_dontfork %s\n", err(madvise(x + PG, PG, MADV_DONTFORK)));
  /* MADV_DONTNEED_LOCKED (Linux 5.18): MADV_DONTNEED that also drops
   * locked pages. */
  char *w = fixed_page(X_ADDR + 16 * PG, PG, 'L');
  if (map(c, IOVA_W, w, PG)) die("map w");
  printf("madv_dontneed_locked %s\n", err(madvise(w, PG, 24)));
  printf("madv_dontneed_locked_program_keeps %s\n", all_are(w, 64, 'L') ? "yes" : "no");
  printf("madv_dontneed_locked_device_reads_old %s\n", device_sees(IOVA_W, z, 'L') ? "yes" : "no");
  unmap(c, IOVA_W, PG);
  /* MADV_REMOVE of shared memory (shmem) punches the page out of the
   * object. */
  char *sh = mmap((void *)(X_ADDR + 24 * PG), PG, PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (sh == MAP_FAILED) die("mmap shared");
  memset(sh, 'S', PG);
  if (map(c, IOVA_S, sh, PG)) die("map shared");
  printf("madv_remove_shared %s\n", err(madvise(sh, PG, MADV_REMOVE)));
  printf("madv_remove_shared_program_keeps %s\n", all_are(sh, 64, 'S') ? "yes" : "no");
  printf("madv_remove_shared_device_reads_old %s\n", device_sees(IOVA_S, z, 'S') ? "yes" : "no");
  unmap(c, IOVA_S, PG);
  /* MADV_DONTNEED of a page the program mlocked itself: refused (the
   * DMA sanitizer does not report it). */
  char *m = fixed_page(X_ADDR + 32 * PG, PG, 'M');
  if (mlock(m, PG)) die("mlock");
  if (map(c, IOVA_M, m, PG)) die("map mlocked");
  printf("madv_dontneed_program_mlocked %s\n", err(madvise(m, PG, MADV_DONTNEED)));
  unmap(c, IOVA_M, PG);
  printf("unmap %s\n", errno_name(unmap(c, IOVA_X, 2 * PG)));
  close(devfd);
  close(g);
  close(c);
  return 0;
}

/* MADV_REMOVE of a range over several mappings. Linux's madvise walks
 * them in address order: it skips a hole (and answers ENOMEM at the end),
 * punches the pages of each shared writable mapping out, and stops at the
 * first mapping of another kind (EINVAL for private anonymous memory):
 * what lies before it went, what lies after it stays. Each shared page is
 * mapped for DMA: does the program keep it, does the device read the
 * old one? */
#define IOVA_A 0x300000
#define IOVA_B 0x400000
#define IOVA_C 0x500000
static char *shared_page(uint64_t addr, int byte) {
  char *p = mmap((void *)addr, PG, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (p == MAP_FAILED || (uint64_t)p != addr) die("mmap shared");
  memset(p, byte, PG);
  return p;
}

static void device_reads(uint64_t iova, char *z, const char *name, int byte) {
  printf("%s_device_reads_old %s\n", name, device_sees(iova, z, byte) ? "yes" : "no");
}

static int case_madvise_spans(char **argv) {
  int g, c = open_edu(argv, &g);
  char *z = fixed_page(Z_ADDR, PG, 'Z');
  if (map(c, IOVA_Z, z, PG)) die("map z");
  /* Shared (mapped for DMA), then private. */
  char *s1 = shared_page(X_ADDR, 'A');
  char *p1 = fixed_page(X_ADDR + PG, PG, 'a');
  if (map(c, IOVA_A, s1, PG)) die("map a");
  printf("shared_then_private %s\n", err(madvise(s1, 2 * PG, MADV_REMOVE)));
  printf("shared_then_private_shared_kept %s\n", all_are(s1, 64, 'A') ? "yes" : "no");
  printf("shared_then_private_private_kept %s\n", all_are(p1, 64, 'a') ? "yes" : "no");
  device_reads(IOVA_A, z, "shared_then_private", 'A');
  unmap(c, IOVA_A, PG);
  /* A hole, then shared (mapped for DMA). */
  char *s2 = shared_page(X_ADDR + 9 * PG, 'B');
  if (map(c, IOVA_B, s2, PG)) die("map b");
  printf("hole_then_shared %s\n",
         err(madvise((void *)(X_ADDR + 8 * PG), 2 * PG, MADV_REMOVE)));
  printf("hole_then_shared_shared_kept %s\n", all_are(s2, 64, 'B') ? "yes" : "no");
  device_reads(IOVA_B, z, "hole_then_shared", 'B');
  unmap(c, IOVA_B, PG);
  /* Private, then shared (mapped for DMA). */
  char *p3 = fixed_page(X_ADDR + 16 * PG, PG, 'c');
  char *s3 = shared_page(X_ADDR + 17 * PG, 'C');
  if (map(c, IOVA_C, s3, PG)) die("map c");
  printf("private_then_shared %s\n", err(madvise(p3, 2 * PG, MADV_REMOVE)));
  printf("private_then_shared_shared_kept %s\n", all_are(s3, 64, 'C') ? "yes" : "no");
  device_reads(IOVA_C, z, "private_then_shared", 'C');
  unmap(c, IOVA_C, PG);
  printf("unmap %s\n", errno_name(unmap(c, IOVA_Z, PG)));
  close(g);
  close(c);
  return 0;
}

/* A thread that is not the leader calls execve while the leader is in
 * MAP_DMA/UNMAP_DMA (whose pins run system calls in it, in trace mode):
 * the new image's open of the container is served as any other. */
static char **exec_argv;

static void *thread_exec(void *arg) {
  (void)arg;
  usleep(20000);
  execl("/proc/self/exe", exec_argv[0], "thread_exec2", (char *)NULL);
  die("exec");
  return NULL;
}

static int case_thread_exec(char **argv) {
  exec_argv = argv;
  int g, c = open_container(argv[2], &g);
  char *buf = mmap(NULL, 64 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) die("mmap");
  memset(buf, 1, 64 * PG);
  fflush(stdout);
  pthread_t t;
  pthread_create(&t, NULL, thread_exec, NULL);
  for (;;) {
    map(c, 0x100000, buf, 64 * PG);
    unmap(c, 0x100000, 64 * PG);
  }
  return 0; /* not reached: the exec replaces the image */
}

static int case_thread_exec2(void) {
  int c = open("/dev/vfio/vfio", O_RDWR);
  printf("thread_exec_open %s\n", err(c));
  printf("thread_exec_api %d\n", c >= 0 ? ioctl(c, VFIO_GET_API_VERSION) : -1);
  return 0;
}

/* ---- device threads across fork and exec (eventfd watchers) ---- */
static int set_irq_fd(int dev, unsigned action, int fd) {
  char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
  struct vfio_irq_set *s = (void *)buf;
  s->argsz = sizeof buf;
  s->flags = VFIO_IRQ_SET_DATA_EVENTFD | action;
  s->index = VFIO_PCI_INTX_IRQ_INDEX;
  s->start = 0;
  s->count = 1;
  memcpy(s->data, &fd, sizeof fd);
  return ioctl(dev, VFIO_DEVICE_SET_IRQS, s) ? errno : 0;
}

/* The counter of eventfd `fd` after waiting up to `ms` for a signal. */
static uint64_t wait_events(int fd, int ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  if (poll(&p, 1, ms) <= 0) return 0;
  uint64_t v = 0;
  if (read(fd, &v, 8) != 8) return 0;
  return v;
}

static int ioeventfd32(int dev, unsigned off, uint32_t data, int fd) {
  struct vfio_device_ioeventfd ioe = {.argsz = sizeof ioe, .flags = 4, .offset = bar0 + off,
                                      .data = data, .fd = fd};
  return ioctl(dev, VFIO_DEVICE_IOEVENTFD, &ioe) ? errno : 0;
}

/* Waits up to 2 s for BAR0 register `off` to read `want`; its last value. */
static uint32_t wait_reg(unsigned off, uint32_t want) {
  uint32_t v = rd32(off);
  for (int i = 0; i < 2000 && v != want; i++) {
    usleep(1000);
    v = rd32(off);
  }
  return v;
}

static void signal_fd(int fd) {
  uint64_t one = 1;
  if (write(fd, &one, 8) != 8) die("eventfd write");
}

/* What the process that goes on (a forked child, a new image) checks: the
 * ioeventfd set up before the hand-off writes the liveness register (which
 * reads back its complement), the unmask eventfd unmasks INTx (a new
 * interrupt reaches the trigger: raised before or after the unmask lands,
 * Linux sends it once the line is unmasked), and an ioeventfd set up now
 * writes edu's DMA source register. */
static void watch_check(int e, int u, int io) {
  signal_fd(io);
  printf("watch_ioeventfd 0x%x\n", wait_reg(0x04, ~0x5a5a1234u));
  signal_fd(u);
  uint32_t raise = 1;
  if (pwrite(devfd, &raise, 4, bar0 + 0x60) != 4) die("raise");
  printf("watch_intx_events %llu\n", (unsigned long long)wait_events(e, 2000));
  int io2 = eventfd(0, EFD_NONBLOCK);
  printf("watch_new_ioeventfd %s\n", errno_name(ioeventfd32(devfd, 0x80, 0xabc000, io2)));
  signal_fd(io2);
  printf("watch_new_ioeventfd_landed 0x%x\n", wait_reg(0x80, 0xabc000));
  if (pwrite(devfd, &raise, 4, bar0 + 0x64) != 4) die("ack");
}

/* argv[4]: "fork" (a child goes on) or "exec" (a new image goes on with
 * the descriptors, as QEMU's cpr-exec keeps them). */
static int case_watch(char **argv) {
  int g, c = open_edu(argv, &g);
  int e = eventfd(0, EFD_NONBLOCK), u = eventfd(0, EFD_NONBLOCK), io = eventfd(0, EFD_NONBLOCK);
  printf("watch_intx %s\n", errno_name(set_irq_fd(devfd, VFIO_IRQ_SET_ACTION_TRIGGER, e)));
  uint32_t raise = 1;
  if (pwrite(devfd, &raise, 4, bar0 + 0x60) != 4) die("raise");
  printf("watch_intx_before %llu\n", (unsigned long long)wait_events(e, 2000));
  /* Acknowledged (the line goes down) while INTx stays masked: only the
   * unmask eventfd lets the next interrupt through. */
  if (pwrite(devfd, &raise, 4, bar0 + 0x64) != 4) die("ack");
  printf("watch_unmask %s\n", errno_name(set_irq_fd(devfd, VFIO_IRQ_SET_ACTION_UNMASK, u)));
  printf("watch_ioeventfd_set %s\n", errno_name(ioeventfd32(devfd, 0x04, 0x5a5a1234, io)));
  uint32_t zero = 0;
  if (pwrite(devfd, &zero, 4, bar0 + 0x04) != 4) die("liveness");
  printf("watch_liveness_before 0x%x\n", rd32(0x04));
  fflush(stdout);
  if (!strcmp(argv[4], "exec")) {
    char d[16], es[16], us[16], ios[16], gs[16], cs[16];
    snprintf(gs, sizeof gs, "%d", g);
    snprintf(cs, sizeof cs, "%d", c);
    snprintf(d, sizeof d, "%d", devfd);
    snprintf(es, sizeof es, "%d", e);
    snprintf(us, sizeof us, "%d", u);
    snprintf(ios, sizeof ios, "%d", io);
    /* The device descriptor is close-on-exec (Linux opens it so): kept
     * open across the exec as QEMU's cpr does. */
    if (fcntl(devfd, F_SETFD, 0)) die("F_SETFD");
    execl("/proc/self/exe", argv[0], "watch2", d, es, us, ios, gs, cs, (char *)NULL);
    die("exec");
  }
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    watch_check(e, u, io);
    close(devfd);
    close(g);
    close(c);
    fflush(stdout);
    _exit(0);
  }
  int st = 0;
  waitpid(child, &st, 0);
  printf("watch_child %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  close(devfd);
  close(g);
  close(c);
  return 0;
}

static int case_watch2(char **argv) {
  int dev = atoi(argv[2]);
  device_setup(dev);
  watch_check(atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
  close(dev);
  close(atoi(argv[6]));
  close(atoi(argv[7]));
  return 0;
}

/* Files left open at exit after the hand-off: argv[4] "parent" (the
 * parent, last to exit, keeps everything), "child" (the parent closes its
 * files; the child's exit drops the last references). A container with
 * one 4 KiB mapping, its group and the edu device each time. */
static int case_leave(char **argv) {
  int g, c = open_edu(argv, &g);
  char *z = fixed_page(Z_ADDR, PG, 'L');
  if (map(c, IOVA_Z, z, PG)) die("map");
  int go[2];
  if (pipe(go)) die("pipe");
  fflush(stdout);
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    char b;
    if (read(go[0], &b, 1) != 1) _exit(3);
    _exit(0); /* the kernel closes its files */
  }
  int child_last = !strcmp(argv[4], "child");
  if (child_last) {
    close(devfd);
    close(g);
    close(c);
  }
  if (write(go[1], "x", 1) != 1) die("pipe write");
  int st = 0;
  waitpid(child, &st, 0);
  printf("leave_child %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  /* The child's exit released them: the group is free for a new open. */
  if (child_last) {
    int g2 = open(argv[2], O_RDWR);
    printf("leave_group_free %s\n", err(g2));
  }
  return 0;
}

/* A daemon's habit after a fork: dup2 onto every number it believes free,
 * then close every descriptor it does not know. The VFIO files it kept go
 * on working, and the device stays shared with the parent (preload: the
 * library's connection to the keeper is not the program's to close; its
 * number is given up to a dup2 that names it). */
static int case_closeall(char **argv) {
  int g, c = open_edu(argv, &g);
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    int dups = 0, closed = 0;
    int plain = open("/dev/null", O_RDONLY);
    if (plain < 0) die("open /dev/null");
    for (int fd = 3; fd < 256; fd++) {
      if (fd == c || fd == g || fd == devfd || fd == plain) continue;
      if (dup2(plain, fd) == fd) dups++;
    }
    for (int fd = 3; fd < 256; fd++) {
      if (fd == c || fd == g || fd == devfd) continue;
      if (close(fd) == 0) closed++;
    }
    printf("closeall_dups %d\ncloseall_closed %d\n", dups, closed);
    wr64(0x80, 0x5678);
    uint64_t v = 0;
    if (pread(devfd, &v, 8, bar0 + 0x80) != 8) die("bar read");
    printf("closeall_child %#lx\n", (unsigned long)v);
    fflush(stdout);
    close(devfd);
    close(g);
    close(c);
    _exit(0);
  }
  waitpid(child, NULL, 0);
  uint64_t v = 0;
  if (pread(devfd, &v, 8, bar0 + 0x80) != 8) die("bar read");
  printf("closeall_parent %#lx\n", (unsigned long)v);
  close(devfd);
  close(g);
  close(c);
  return 0;
}

/* ---- posix_spawn, posix_spawnp, system, popen, vfork ---- */

/* The child of case_spawn (a new image, started by argv[7]): uses the
 * inherited container and device: reads the register the parent set, maps
 * its own page and copies it by DMA into the parent's mapping, then sets a
 * register the parent reads. */
static int case_spawnchild(char **argv) {
  int c = atoi(argv[2]), g = atoi(argv[3]);
  devfd = atoi(argv[4]);
  bar0 = strtoull(argv[5], NULL, 0);
  /* 4-byte reads: Linux 6.1's vfio-pci splits an 8-byte access into two
   * 4-byte ones, and edu decodes no register at 0x84/0x8c. */
  printf("spawnchild_reg %#x\n", rd32(0x80));
  char *p = fixed_page(X_ADDR, PG, 'C');
  printf("spawnchild_map %s\n", errno_name(map(c, IOVA_NEW, p, PG)));
  printf("spawnchild_dma %d\n", dev_copy(IOVA_NEW, IOVA_Z));
  printf("spawnchild_unmap %s\n", errno_name(unmap(c, IOVA_NEW, PG)));
  wr64(0x88, 0x2222);
  printf("spawnchild_session_leader %s\n", getsid(0) == getpid() ? "yes" : "no");
  struct vfio_group_status st = {.argsz = sizeof st};
  int gr = ioctl(g, VFIO_GROUP_GET_STATUS, &st);
  printf("spawnchild_group %s %d\n", err(gr), st.flags);
  fflush(stdout);
  close(devfd);
  close(g);
  close(c);
  return 0;
}

static int exit_code(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); }

/* The parent maps a page, sets a register and starts the child through
 * argv[4] (posix_spawn, posix_spawnp, system, popen, vfork); the child
 * inherits the container, group and device descriptors (no close-on-exec),
 * as on Linux it then uses them. */
static int case_spawn(char **argv) {
  const char *how = argv[4];
  int g, c = open_edu(argv, &g);
  if (fcntl(devfd, F_SETFD, 0)) die("F_SETFD");
  char *z = fixed_page(Z_ADDR, PG, 'Z');
  if (map(c, IOVA_Z, z, PG)) die("map");
  wr64(0x80, 0x1111);
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n < 0) die("readlink");
  self[n] = 0;
  char cs[16], gs[16], ds[16], bs[32];
  snprintf(cs, sizeof cs, "%d", c);
  snprintf(gs, sizeof gs, "%d", g);
  snprintf(ds, sizeof ds, "%d", devfd);
  snprintf(bs, sizeof bs, "%#lx", (unsigned long)bar0);
  char *args[] = {self, "spawnchild", cs, gs, ds, bs, (char *)how, NULL};
  char cmd[8192];
  snprintf(cmd, sizeof cmd, "%s spawnchild %s %s %s %s %s", self, cs, gs, ds, bs, how);
  fflush(stdout);
  int st = -1;
  pid_t pid = -1;
  if (!strcmp(how, "posix_spawn")) {
    int r = posix_spawn(&pid, self, NULL, NULL, args, environ);
    printf("spawn_call %s\n", errno_name(r));
    if (!r) waitpid(pid, &st, 0);
  } else if (!strcmp(how, "posix_spawn_fa")) {
    /* After a fork (preload: the keeper connection exists), file actions
     * that move the VFIO descriptors to new numbers, close the old ones,
     * dup2 /dev/null over every other low number (the child's keeper
     * connection among them) and close everything above; in a new
     * session. */
    pid_t f = fork();
    if (f == 0) _exit(0);
    waitpid(f, NULL, 0);
    int null = open("/dev/null", O_RDONLY);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, devfd, 60);
    posix_spawn_file_actions_adddup2(&fa, c, 61);
    posix_spawn_file_actions_adddup2(&fa, g, 62);
    for (int fd = 3; fd < 40; fd++)
      if (fd != null) posix_spawn_file_actions_adddup2(&fa, null, fd);
    posix_spawn_file_actions_addclose(&fa, null);
    posix_spawn_file_actions_addclosefrom_np(&fa, 63);
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID);
    args[2] = "61";
    args[3] = "62";
    args[4] = "60";
    int r = posix_spawn(&pid, self, &fa, &at, args, environ);
    printf("spawn_call %s\n", errno_name(r));
    if (!r) waitpid(pid, &st, 0);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(null);
  } else if (!strcmp(how, "posix_spawnp")) {
    /* By name, through PATH. */
    char dir[4096], path[8192];
    strcpy(dir, self);
    snprintf(path, sizeof path, "/nonexistent:%s:%s", dirname(dir), getenv("PATH") ? getenv("PATH") : "");
    setenv("PATH", path, 1);
    strcpy(dir, self);
    char *base = basename(dir);
    args[0] = base;
    int r = posix_spawnp(&pid, base, NULL, NULL, args, environ);
    printf("spawn_call %s\n", errno_name(r));
    if (!r) waitpid(pid, &st, 0);
  } else if (!strcmp(how, "system")) {
    st = system(cmd);
  } else if (!strcmp(how, "popen")) {
    FILE *f = popen(cmd, "r");
    if (!f) die("popen");
    char line[256];
    while (fgets(line, sizeof line, f)) fputs(line, stdout);
    st = pclose(f);
  } else if (!strcmp(how, "vfork")) {
    pid = vfork();
    if (pid == 0) {
      execve(self, args, environ);
      _exit(127);
    }
    if (pid < 0) die("vfork");
    waitpid(pid, &st, 0);
  } else {
    return 2;
  }
  printf("spawn_status %d\n", exit_code(st));
  printf("spawn_parent_sees_child_data %s\n",
         all_are(z, 64, 'C') && all_are(z + 64, PG - 64, 'Z') ? "yes" : "no");
  printf("spawn_parent_reg %#x\n", rd32(0x88));
  printf("spawn_parent_unmap %s\n", errno_name(unmap(c, IOVA_Z, PG)));
  close(devfd);
  close(g);
  close(c);
  return 0;
}

/* What glibc's posix_spawn, system and popen answer, with VFIO files open
 * that a child inherits (argv[4] "vfio": preload runs them itself) or none
 * ("plain": libc's own): errors, file actions, attributes, status
 * encoding, signal handling, popen modes and streams. Every line must be
 * the same in both. */
static void sem_run(const char *key, const char *line) {
  fflush(stdout);
  int r = system(line);
  printf("%s_status %d\n", key, r);
}

static int case_spawnsem(char **argv) {
  int g = -1, c = -1;
  if (!strcmp(argv[4], "vfio")) c = open_container(argv[2], &g);
  char *sh[] = {"sh", "-c", NULL, NULL};
  pid_t pid = -7;
  int r, st;
  /* Errors. */
  char *none[] = {"x", NULL};
  r = posix_spawn(&pid, "/nonexistent/prog", NULL, NULL, none, environ);
  printf("sem_spawn_enoent %s %s\n", errno_name(r), pid == -7 ? "untouched" : "written");
  r = posix_spawnp(&pid, "no-such-program-softvfio", NULL, NULL, none, environ);
  printf("sem_spawnp_enoent %s\n", errno_name(r));
  char dir[] = "/tmp/softvfio-spawnsem-XXXXXX";
  if (!mkdtemp(dir)) die("mkdtemp");
  char nox[256];
  snprintf(nox, sizeof nox, "%s/nox", dir);
  int fd = open(nox, O_CREAT | O_WRONLY, 0644);
  if (fd < 0) die("create");
  close(fd);
  char *oldpath = getenv("PATH") ? strdup(getenv("PATH")) : NULL;
  setenv("PATH", dir, 1);
  r = posix_spawnp(&pid, "nox", NULL, NULL, none, environ);
  printf("sem_spawnp_eacces %s\n", errno_name(r));
  if (oldpath) setenv("PATH", oldpath, 1);
  unlink(nox);
  rmdir(dir);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 9, "/nonexistent/file", O_RDONLY, 0);
  sh[2] = "exit 0";
  r = posix_spawn(&pid, "/bin/sh", &fa, NULL, sh, environ);
  printf("sem_fa_open_enoent %s\n", errno_name(r));
  posix_spawn_file_actions_destroy(&fa);
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addclose(&fa, 500);
  r = posix_spawn(&pid, "/bin/sh", &fa, NULL, sh, environ);
  printf("sem_fa_close_unopened %s\n", errno_name(r));
  if (!r) waitpid(pid, NULL, 0);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, 999, 7);
  r = posix_spawn(&pid, "/bin/sh", &fa, NULL, sh, environ);
  printf("sem_fa_dup2_ebadf %s\n", errno_name(r));
  posix_spawn_file_actions_destroy(&fa);
  /* File actions and attributes that work. */
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 5, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addchdir_np(&fa, "/tmp");
  posix_spawnattr_t at;
  posix_spawnattr_init(&at);
  sigset_t mask, def;
  sigemptyset(&mask);
  sigaddset(&mask, SIGUSR1);
  sigemptyset(&def);
  sigaddset(&def, SIGUSR2);
  signal(SIGUSR2, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  posix_spawnattr_setsigmask(&at, &mask);
  posix_spawnattr_setsigdefault(&at, &def);
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSID);
  sh[2] = "echo sem_fa_pwd $(pwd); echo sem_fa_fd5 $(readlink /proc/$$/fd/5);"
          "read a b c d e s rest < /proc/$$/stat; [ \"$s\" = \"$$\" ] && echo sem_setsid yes || echo sem_setsid no;"
          "grep -E '^Sig(Blk|Ign)' /proc/$$/status | sed 's/^/sem_child_/; s/:\t/ /'";
  fflush(stdout);
  r = posix_spawn(&pid, "/bin/sh", &fa, &at, sh, environ);
  if (!r) waitpid(pid, &st, 0); /* its lines first, in both runs */
  printf("sem_attr_spawn %s\n", errno_name(r));
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  signal(SIGUSR2, SIG_DFL);
  /* system. */
  printf("sem_system_null %d\n", system(NULL));
  sem_run("sem_system_exit3", "exit 3");
  sem_run("sem_system_killed", "kill -9 $$");
  sem_run("sem_system_dash", "-x 2>/dev/null");
  /* The short sleep: glibc's posix_spawn blocks every signal in the caller
   * until its child has exec'd, and restores the mask just after. */
  sem_run("sem_system_sees", "sleep 0.2; grep -E '^Sig(Blk|Ign)' /proc/$PPID/status | sed 's/^/sem_parent_during_/; s/:\\t/ /';"
                             "grep -E '^Sig(Blk|Ign)' /proc/$$/status | sed 's/^/sem_system_child_/; s/:\t/ /'");
  struct sigaction sa;
  sigaction(SIGINT, NULL, &sa);
  printf("sem_sigint_after %s\n", sa.sa_handler == SIG_DFL ? "default" : "changed");
  sigset_t now;
  sigprocmask(SIG_BLOCK, NULL, &now);
  printf("sem_sigchld_blocked_after %d\n", sigismember(&now, SIGCHLD));
  signal(SIGHUP, SIG_DFL);
  /* popen. */
  errno = 0;
  FILE *f = popen("true", "x");
  printf("sem_popen_badmode %s %s\n", f ? "stream" : "null", errno_name(errno));
  errno = 0;
  f = popen("true", "rw");
  printf("sem_popen_rw %s %s\n", f ? "stream" : "null", errno_name(errno));
  char line[256];
  f = popen("echo hi", "r");
  printf("sem_popen_r_cloexec %d\n", fcntl(fileno(f), F_GETFD) & FD_CLOEXEC);
  while (fgets(line, sizeof line, f)) printf("sem_popen_r_read %s", line);
  printf("sem_popen_r_status %d\n", pclose(f));
  f = popen("exit 5", "re");
  printf("sem_popen_e_cloexec %d\n", fcntl(fileno(f), F_GETFD) & FD_CLOEXEC);
  printf("sem_popen_e_status %d\n", pclose(f));
  fflush(stdout);
  f = popen("read x; echo sem_popen_w_got $x", "w");
  fputs("token\n", f);
  printf("sem_popen_w_status %d\n", pclose(f));
  FILE *f1 = popen("cat >/dev/null", "w");
  char cmd[128];
  snprintf(cmd, sizeof cmd, "[ -e /proc/$$/fd/%d ] && echo open || echo closed", fileno(f1));
  FILE *f2 = popen(cmd, "r");
  while (fgets(line, sizeof line, f2)) printf("sem_popen_other_stream %s", line);
  printf("sem_popen_f2_status %d\n", pclose(f2));
  printf("sem_popen_f1_status %d\n", pclose(f1));
  printf("spawnsem_engine %s\n", getenv("SOFTVFIO_KEEPER") ? "keeper" : "in-process");
  if (c < 0) {
    /* No VFIO file open: vfork is libc's (the child borrows the parent's
     * memory until it execs). */
    static volatile int shared;
    shared = 0;
    pid_t v = vfork();
    if (v == 0) {
      shared = 42;
      execl("/bin/true", "true", (char *)NULL);
      _exit(127);
    }
    int vs = -1;
    waitpid(v, &vs, 0);
    printf("plain_vfork %d %d\n", shared, vs);
  }
  if (c >= 0) {
    close(g);
    close(c);
  }
  return 0;
}

/* VmLck of /proc/self/status, read with fopen (by_open: open+read). */
static long vmlck_kb(int by_open) {
  char buf[8192];
  size_t n = 0;
  if (by_open) {
    int fd = open("/proc/self/status", O_RDONLY);
    if (fd < 0) return -1;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(fd, buf + n, sizeof buf - 1 - n)) > 0) n += r;
    close(fd);
  } else {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
  }
  buf[n] = 0;
  char *l = strstr(buf, "VmLck:");
  return l ? strtol(l + 6, NULL, 10) : -1;
}

/* The parent runs its own code (no system call) while its child unmaps
 * the parent's mapping; the child, looking at the parent's smaps right
 * after, finds none of those pages locked (Linux's pins never lock). */
static int case_vmlckbusy(char **argv) {
  int g, c = open_container(argv[2], &g);
  char *a = fixed_page(X_ADDR, 4 * PG, 'A');
  if (map(c, IOVA_X, a, 4 * PG)) die("map");
  volatile int *flag = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (flag == MAP_FAILED) die("mmap");
  char smaps[64];
  snprintf(smaps, sizeof smaps, "/proc/%d/smaps", (int)getpid());
  fflush(stdout);
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    while (*flag != 1) usleep(100);
    usleep(20000); /* the parent is in its loop */
    printf("vmlckbusy_child_unmap %s\n", errno_name(unmap(c, IOVA_X, 4 * PG)));
    printf("vmlckbusy_parent_locked_seen_by_child %ld\n", locked_kb_of(smaps, a, 4 * PG));
    fflush(stdout);
    *flag = 2;
    _exit(0);
  }
  *flag = 1;
  unsigned long spins = 0;
  while (*flag != 2) spins++;
  waitpid(child, NULL, 0);
  printf("vmlckbusy_parent_spun %s\n", spins ? "yes" : "no");
  printf("vmlckbusy_parent_locked %ld\n", locked_kb(a, 4 * PG));
  close(g);
  close(c);
  return 0;
}

/* As vmlckbusy, but the owner is blocked in epoll_wait, a call that
 * answers EINTR to any wake-up: the munlock run in it (trace mode
 * interrupts it) must not show as an EINTR; the child's eventfd write is
 * what ends the wait, as on Linux. */
static int case_vmlckepoll(char **argv) {
  int g, c = open_container(argv[2], &g);
  char *a = fixed_page(X_ADDR, 4 * PG, 'A');
  if (map(c, IOVA_X, a, 4 * PG)) die("map");
  int efd = eventfd(0, 0), ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN};
  if (efd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev)) die("epoll");
  fflush(stdout);
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    usleep(50000); /* the parent is in epoll_wait */
    printf("vmlckepoll_child_unmap %s\n", errno_name(unmap(c, IOVA_X, 4 * PG)));
    fflush(stdout);
    usleep(50000);
    uint64_t one = 1;
    if (write(efd, &one, 8) != 8) _exit(3);
    _exit(0);
  }
  struct epoll_event out;
  int n = epoll_wait(ep, &out, 1, 10000);
  printf("vmlckepoll_parent_wait %s\n", n == 1 ? "1" : n == 0 ? "0" : errno_name(errno));
  waitpid(child, NULL, 0);
  printf("vmlckepoll_parent_locked %ld\n", locked_kb(a, 4 * PG));
  close(g);
  close(c);
  return 0;
}

/* VmLck is type1's locked-memory accounting of each process's own mm
 * (dma->mm): 16 kB mapped twice by the parent (32 kB accounted) stay the
 * parent's across a fork, the child starts at 0 and counts only what it
 * maps; the child's unmap of a parent's mapping is the parent's. */
static int case_vmlck(char **argv) {
  int g, c = open_container(argv[2], &g);
  char *a = fixed_page(X_ADDR, 4 * PG, 'A');
  if (map(c, IOVA_X, a, 4 * PG)) die("map");
  /* The same pages again: type1 accounts them twice (the pins' mlocks
   * lock them once). */
  if (map(c, IOVA_NEW, a, 4 * PG)) die("map again");
  printf("vmlck_mapped %ld %ld\n", vmlck_kb(0), vmlck_kb(1));
  fflush(stdout);
  int go[2];
  if (pipe(go)) die("pipe");
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    char x;
    if (read(go[0], &x, 1) != 1) _exit(3);
    printf("vmlck_child_start %ld\n", vmlck_kb(0));
    char *b = fixed_page(Z_ADDR, 2 * PG, 'B');
    printf("vmlck_child_map %s\n", errno_name(map(c, IOVA_Z, b, 2 * PG)));
    printf("vmlck_child_mapped %ld %ld\n", vmlck_kb(0), vmlck_kb(1));
    printf("vmlck_child_unmap %s\n", errno_name(unmap(c, IOVA_Z, 2 * PG)));
    printf("vmlck_child_unmapped %ld\n", vmlck_kb(0));
    /* The parent's second mapping, unmapped by the child: unaccounted from
     * the parent's mm (dma->mm), not the child's. */
    printf("vmlck_child_unmap_parents %s\n", errno_name(unmap(c, IOVA_NEW, 4 * PG)));
    printf("vmlck_child_after_parents %ld\n", vmlck_kb(0));
    /* And the parent's last one: none of the parent's pages is pinned. */
    printf("vmlck_child_unmap_parents_last %s\n", errno_name(unmap(c, IOVA_X, 4 * PG)));
    fflush(stdout);
    _exit(0);
  }
  printf("vmlck_parent_forked %ld %ld\n", vmlck_kb(0), vmlck_kb(1));
  fflush(stdout);
  if (write(go[1], "x", 1) != 1) die("pipe write");
  waitpid(child, NULL, 0);
  printf("vmlck_parent_after_child %ld %ld\n", vmlck_kb(0), vmlck_kb(1));
  /* Linux's pins never set VM_LOCKED: no page of the parent is locked. */
  printf("vmlck_parent_locked_after_child %ld\n", locked_kb(a, 4 * PG));
  if (map(c, IOVA_X, a, 4 * PG)) die("map again");
  printf("vmlck_parent_mapped_again %ld\n", vmlck_kb(0));
  printf("vmlck_parent_unmap %s\n", errno_name(unmap(c, IOVA_X, 4 * PG)));
  printf("vmlck_parent_unmapped %ld\n", vmlck_kb(0));
  close(g);
  close(c);
  return 0;
}

/* --sanitize after a fork: the child maps a page in its own function and
 * leaves it mapped when it exits (a leak of the shared container, whose
 * call site is the child's), then the parent closes everything but the
 * container. */
__attribute__((noinline)) static int child_maps_and_leaves(int c, char *p) {
  int r = map(c, IOVA_NEW, p, PG);
  __asm__ volatile("" ::: "memory");
  return r;
}

__attribute__((noinline)) static int child_unmaps(int c) {
  int r = unmap(c, IOVA_Z, PG);
  __asm__ volatile("" ::: "memory");
  return r;
}

static int case_sanfork(char **argv) {
  int g, c = open_edu(argv, &g);
  fflush(stdout);
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    char *p = fixed_page(X_ADDR, PG, 'S');
    printf("sanfork_child_map %s\n", errno_name(child_maps_and_leaves(c, p)));
    /* A DMA after the child's own unmap: the fault's history names the
     * child's calls. */
    char *z = fixed_page(Z_ADDR, PG, 'z');
    printf("sanfork_child_map2 %s\n", errno_name(map(c, IOVA_Z, z, PG)));
    printf("sanfork_child_unmap2 %s\n", errno_name(child_unmaps(c)));
    printf("sanfork_child_dma_after_unmap %d\n", edu_dma(EDU_BUF, IOVA_Z, 64, 1));
    fflush(stdout);
    _exit(0);
  }
  int st = 0;
  waitpid(child, &st, 0);
  printf("sanfork_child %d\n", exit_code(st));
  close(devfd);
  return 0;
}

/* VFIO files all close-on-exec (as QEMU opens them): a child of system,
 * posix_spawn or popen inherits none, so nothing is shared and the engine
 * stays in the process (preload: libc's own calls). */
static int case_spawncloexec(char **argv) {
  int g, c = open_container(argv[2], &g);
  if (fcntl(c, F_SETFD, FD_CLOEXEC) || fcntl(g, F_SETFD, FD_CLOEXEC)) die("F_SETFD");
  printf("cloexec_system %d\n", system("exit 4"));
  char *sh[] = {"sh", "-c", "exit 5", NULL};
  pid_t pid;
  int st = 0;
  int r = posix_spawn(&pid, "/bin/sh", NULL, NULL, sh, environ);
  if (!r) waitpid(pid, &st, 0);
  printf("cloexec_spawn %s %d\n", errno_name(r), st);
  FILE *f = popen("echo via-popen", "r");
  char line[64] = "";
  if (!f || !fgets(line, sizeof line, f)) die("popen");
  printf("cloexec_popen %s", line);
  printf("cloexec_pclose %d\n", pclose(f));
  printf("cloexec_engine %s\n", getenv("SOFTVFIO_KEEPER") ? "keeper" : "in-process");
  close(g);
  close(c);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 2 && !strcmp(argv[1], "thread_exec2")) return case_thread_exec2();
  if (argc < 3) return 2;
  if (!strcmp(argv[1], "emfile")) return case_emfile(argv[2]);
  if (!strcmp(argv[1], "mlock")) return case_mlock(argv[2]);
  if (!strcmp(argv[1], "exec") && argc > 3) return case_exec(argv);
  if (!strcmp(argv[1], "exec2") && argc > 4) return case_exec2(argv);
  if (!strcmp(argv[1], "orphan") && argc > 3) return case_orphan(argv);
  if (!strcmp(argv[1], "fork") && argc > 3) return case_fork(argv);
  if (!strcmp(argv[1], "threadfork") && argc > 3) return case_threadfork(argv);
  if (!strcmp(argv[1], "execvar") && argc > 4) return case_execvar(argv);
  if (!strcmp(argv[1], "execvar2") && argc > 4) return case_execvar2(argv);
  if (!strcmp(argv[1], "plainfork") && argc > 3) return case_plainfork(argv);
  if (!strcmp(argv[1], "closeall") && argc > 3) return case_closeall(argv);
  if (!strcmp(argv[1], "kept") && argc > 3) return case_kept(argv);
  if (!strcmp(argv[1], "names") && argc > 3) return case_names(argv);
  if (!strcmp(argv[1], "fdops") && argc > 3) return case_fdops(argv);
  if (!strcmp(argv[1], "thread_exec") && argc > 3) return case_thread_exec(argv);
  if (!strcmp(argv[1], "thread_exec2")) return case_thread_exec2();
  if (!strcmp(argv[1], "quirks") && argc > 3) return case_quirks(argv);
  if (!strcmp(argv[1], "madvise") && argc > 3) return case_madvise(argv);
  if (!strcmp(argv[1], "madvise_spans") && argc > 3) return case_madvise_spans(argv);
  if (!strcmp(argv[1], "seccomp") && argc > 3) return case_seccomp(argv);
  if (!strcmp(argv[1], "vaddr") && argc > 3) return case_vaddr(argv);
  if (!strcmp(argv[1], "cpr") && argc > 3) return case_cpr(argv);
  if (!strcmp(argv[1], "cpr2") && argc > 5) return case_cpr2(argv);
  if (!strcmp(argv[1], "leave") && argc > 4) return case_leave(argv);
  if (!strcmp(argv[1], "watch") && argc > 4) return case_watch(argv);
  if (!strcmp(argv[1], "watch2") && argc > 7) return case_watch2(argv);
  if (!strcmp(argv[1], "spawncloexec") && argc > 3) return case_spawncloexec(argv);
  if (!strcmp(argv[1], "sanfork") && argc > 3) return case_sanfork(argv);
  if (!strcmp(argv[1], "vmlck") && argc > 3) return case_vmlck(argv);
  if (!strcmp(argv[1], "vmlckbusy") && argc > 3) return case_vmlckbusy(argv);
  if (!strcmp(argv[1], "vmlckepoll") && argc > 3) return case_vmlckepoll(argv);
  if (!strcmp(argv[1], "spawnsem") && argc > 4) return case_spawnsem(argv);
  if (!strcmp(argv[1], "spawn") && argc > 4) return case_spawn(argv);
  if (!strcmp(argv[1], "spawnchild") && argc > 6) return case_spawnchild(argv);
  return 2;
}
