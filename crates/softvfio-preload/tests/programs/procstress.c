/* Process-model stress (issue 13): a program forks, execs and kills
 * processes with live DMA mappings while the edu device runs DMA for all
 * of them, for a given number of seconds. Every process checks that the
 * device read and wrote exactly its own memory; the parent keeps pages that
 * are mapped but never a DMA target and checks they never change.
 * usage: procstress SECONDS /dev/vfio/<group> <bdf>
 *        (internal: procstress exec-image <container> <group> <bdf> <slot> <lockfd>)
 * Prints "name value" lines; exit 0 when nothing went wrong. */
#define _GNU_SOURCE
#include "vfio_common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#define EDU_BUF 0x40000
#define SLOTS 6
#define SLOT_IOVA(s) (0x1000000ul + (uint64_t)(s) * 0x100000ul)
#define PARENT_IOVA 0x8000000ul
#define GUARD_IOVA 0x9000000ul
#define LEN 256

struct shared {
  pthread_mutex_t dma; /* the device's DMA registers: one user at a time */
  int bad;
  /* The parent waits for `dma`: children keep off it. A mutex is not fair:
   * children that round-trip without end re-took it before the waiting
   * parent ran, for minutes at load (the parent alone kills them and ends
   * the run: it looked like a hang, keeper and children busy). */
  int parent_waiting;
};

static struct shared *sh;
static int devfd = -1;
static uint64_t bar0;


static int wr64(unsigned off, uint64_t v) { return pwrite(devfd, &v, 8, bar0 + off) == 8 ? 0 : -1; }

static double now(void);
static void bad(const char *what, int slot);

/* Waits for the device's DMA to end. A failed status read is a failure at
 * once (it used to read as "busy": a child whose every read failed polled
 * 200000 times, minutes at load, holding the DMA lock: a hang), and the
 * wait is bounded in time, not in reads (10 s: the DMA itself takes µs). */
static int idle(void) {
  double end = now() + 10;
  for (;;) {
    uint32_t v = ~0u;
    if (pread(devfd, &v, 4, bar0 + 0x98) != 4) {
      bad("status read", -1);
      return -1;
    }
    if (!(v & 1)) return 0;
    if (now() > end) {
      errno = ETIMEDOUT;
      bad("dma never ends", -1);
      return -1;
    }
    usleep(5);
  }
}

static void lock_dma(int parent) {
  if (parent)
    __atomic_store_n(&sh->parent_waiting, 1, __ATOMIC_SEQ_CST);
  else
    while (__atomic_load_n(&sh->parent_waiting, __ATOMIC_SEQ_CST)) usleep(50);
  if (pthread_mutex_lock(&sh->dma) == EOWNERDEAD) pthread_mutex_consistent(&sh->dma);
  if (parent) __atomic_store_n(&sh->parent_waiting, 0, __ATOMIC_SEQ_CST);
}

/* One DMA; 0 when the device finished it. The caller holds the lock. */
static int edu_dma(uint64_t src, uint64_t dst, uint64_t cnt, int to_ram) {
  int r = idle();
  if (!r)
    r = wr64(0x80, src) | wr64(0x88, dst) | wr64(0x90, cnt) | wr64(0x98, 1 | (to_ram ? 2 : 0));
  if (!r) r = idle();
  return r;
}

static void device_setup(int dev) {
  devfd = dev;
  struct vfio_region_info ri = {.argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX};
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("GET_REGION_INFO");
  bar0 = ri.offset;
  struct vfio_region_info ci = {.argsz = sizeof ci, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ci)) die("GET_REGION_INFO config");
  uint16_t cmd = 0;
  if (pread(dev, &cmd, 2, ci.offset + 4) != 2) die("config read");
  cmd |= 0x6;
  if (pwrite(dev, &cmd, 2, ci.offset + 4) != 2) die("config write");
}

static void bad(const char *what, int slot) {
  fprintf(stderr, "BAD: %s (slot %d, pid %d): %s\n", what, slot, getpid(), strerror(errno));
  __atomic_add_fetch(&sh->bad, 1, __ATOMIC_SEQ_CST);
}

/* A round trip through the device in this process's own memory: page 0
 * (a pattern) -> device -> page 1, at `iova`; the mapping stays when
 * `keep`. */
static void round_trip(int c, uint64_t iova, int slot, unsigned seed, int keep) {
  char *p = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  for (int i = 0; i < LEN; i++) p[i] = (char)(seed * 31 + i);
  memset(p + PG, 0, PG);
  int r = map(c, iova, p, 2 * PG);
  if (r) {
    errno = r;
    bad("map", slot);
    return;
  }
  /* Both transfers under one lock: the device buffer is shared. */
  lock_dma(slot < 0);
  r = edu_dma(iova, EDU_BUF, LEN, 0) || edu_dma(EDU_BUF, iova + PG, LEN, 1);
  pthread_mutex_unlock(&sh->dma);
  if (r) bad("dma", slot);
  else if (memcmp(p, p + PG, LEN)) bad("dma data", slot);
  if (keep) return;
  if (unmap(c, iova, 2 * PG)) bad("unmap", slot);
  munmap(p, 2 * PG);
}

static void child(int c, int g, const char *bdf, int slot, int lockfd, unsigned seed) {
  srand(seed);
  round_trip(c, SLOT_IOVA(slot), slot, seed, 1);
  switch (rand() % 4) {
  case 0: /* tidy: unmap, exit */
    if (unmap(c, SLOT_IOVA(slot), 2 * PG)) bad("unmap", slot);
    _exit(0);
  case 1: /* exit with the mapping in place (the parent unmaps) */
    _exit(0);
  case 2: { /* exec: the new image maps its own memory */
    char cs[16], gs[16], ss[16], ls[16];
    snprintf(cs, sizeof cs, "%d", c);
    snprintf(gs, sizeof gs, "%d", g);
    snprintf(ss, sizeof ss, "%d", slot);
    snprintf(ls, sizeof ls, "%d", lockfd);
    execl("/proc/self/exe", "procstress", "exec-image", cs, gs, bdf, ss, ls, (char *)NULL);
    bad("exec", slot);
    _exit(1);
  }
  default: /* keep going until killed */
    for (unsigned i = 1;; i++) {
      uint64_t iova = SLOT_IOVA(slot) + 0x10000 + (i % 8) * 2 * PG;
      round_trip(c, iova, slot, seed + i, 0);
    }
  }
}

static int exec_image(char **argv) {
  int c = atoi(argv[2]), g = atoi(argv[3]), slot = atoi(argv[5]), lockfd = atoi(argv[6]);
  sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED, lockfd, 0);
  if (sh == MAP_FAILED) die("mmap shared");
  int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[4]);
  if (dev < 0) {
    bad("device after exec", slot);
    return 1;
  }
  device_setup(dev);
  round_trip(c, SLOT_IOVA(slot) + 0x80000, slot, (unsigned)getpid(), 1);
  return 0;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc > 6 && !strcmp(argv[1], "exec-image")) return exec_image(argv);
  if (argc < 4) return 2;
  double end = now() + atof(argv[1]);
  /* Shared state in a memfd, so that exec'd images find it again. */
  int lockfd = memfd_create("procstress", 0);
  if (lockfd < 0 || ftruncate(lockfd, PG)) die("memfd");
  sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED, lockfd, 0);
  if (sh == MAP_FAILED) die("mmap shared");
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&sh->dma, &ma);

  int g, c = open_container(argv[2], &g);
  int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[3]);
  if (dev < 0) die("GET_DEVICE_FD");
  device_setup(dev);
  /* A page mapped for DMA that no one targets: it must never change. */
  char *guard = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(guard, 0x5a, PG);
  if (map(c, GUARD_IOVA, guard, PG)) die("map guard");
  /* The parent's own page at the same address the children use. */
  pid_t kids[SLOTS] = {0};
  long forks = 0, kills = 0, parent_trips = 0;
  unsigned seed = 1;
  while (now() < end) {
    for (int s = 0; s < SLOTS; s++) {
      if (kids[s]) continue;
      /* The slot's IOVAs are free again (mappings of exited processes
       * stay until unmapped, as in Linux). */
      unmap(c, SLOT_IOVA(s), 0x100000);
      pid_t p = fork();
      if (p < 0) die("fork");
      if (p == 0) child(c, g, argv[3], s, lockfd, seed + s * 7919);
      kids[s] = p;
      forks++;
    }
    seed++;
    usleep(2000);
    /* Kill one at random, mid-DMA or not. */
    int victim = rand() % SLOTS;
    if (kids[victim] && rand() % 3 == 0) {
      kill(kids[victim], SIGKILL);
      kills++;
    }
    int st;
    pid_t p;
    while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
      for (int s = 0; s < SLOTS; s++)
        if (kids[s] == p) kids[s] = 0;
      if (WIFEXITED(st) && WEXITSTATUS(st)) bad("child exit status", -1);
    }
    round_trip(c, PARENT_IOVA + (parent_trips % 16) * 2 * PG, -1, seed, 0);
    parent_trips++;
    for (int i = 0; i < PG; i++)
      if (guard[i] != 0x5a) {
        bad("guard page changed", -1);
        break;
      }
  }
  for (int s = 0; s < SLOTS; s++)
    if (kids[s]) kill(kids[s], SIGKILL);
  while (wait(NULL) > 0) {
  }
  struct vfio_iommu_type1_dma_unmap u = {.argsz = sizeof u, .flags = VFIO_DMA_UNMAP_FLAG_ALL};
  if (ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u)) bad("unmap all", -1);
  printf("forks %ld\n", forks);
  printf("kills %ld\n", kills);
  printf("parent_round_trips %ld\n", parent_trips);
  printf("bad %d\n", sh->bad);
  close(dev);
  close(g);
  close(c);
  return sh->bad ? 1 : 0;
}
