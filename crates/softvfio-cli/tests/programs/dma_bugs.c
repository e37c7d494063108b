/* A small buggy VFIO driver for the DMA sanitizer (softvfio run --sanitize):
 * each scenario makes one class of mistake with QEMU's edu device (group 3,
 * 0000:00:03.0). Build with frame pointers and debug info so the report can
 * name the functions and lines below.
 *
 *   after-unmap   maps a buffer, unmaps it, then starts a DMA to it
 *   never-mapped  starts a DMA to an IOVA nothing was mapped at
 *   read-only     maps a buffer read-only, then lets the device write it
 *   leak          exits with a mapping, the device fd and an MSI eventfd
 *   left-open     closes the device, exits with the container (nothing
 *                 mapped) and the group open
 *   munmap        munmaps memory still mapped for DMA, then DMAs into it
 *   mremap        mremaps (moves) memory still mapped for DMA
 *   map-fixed     mmap(MAP_FIXED) over memory still mapped for DMA
 *   raw-munmap    munmap through syscall(SYS_munmap), past libc's munmap
 *   free          frees a large (mmapped by glibc) block still mapped for
 *                 DMA: glibc unmaps it inside free()
 *   realloc       shrinks a large block whose last page is mapped for
 *                 DMA: glibc mremaps it smaller inside realloc()
 *   heap-free     frees a small (heap) block still mapped for DMA: its
 *                 pages stay, nothing went away
 *   madv-dontneed madvise(MADV_DONTNEED) of memory mapped for DMA
 *   madv-free     madvise(MADV_FREE) of memory mapped for DMA
 *   madv-remove   madvise(MADV_REMOVE) of shared memory mapped for DMA
 *   madv-remove-private  the same of private memory (EINVAL on Linux too)
 *   madv-dontneed-mlocked  MADV_DONTNEED of memory the program mlocked
 *                 itself before mapping it (EINVAL on Linux too)
 *   madv-remove-hole  MADV_REMOVE of a hole and the shared page after
 *                 it, mapped for DMA (Linux skips the hole, punches the
 *                 page out and answers ENOMEM)
 *   madv-remove-then-private  MADV_REMOVE of a shared page and the
 *                 private page after it, mapped for DMA (Linux punches
 *                 the shared page out and stops at the private one:
 *                 EINVAL; the device's page stays the program's)
 *   madv-overflow MADV_DONTNEED of memory mapped for DMA with a length
 *                 that runs past the end of the address space, and
 *   madv-wrap     with one that wraps when rounded up to pages: Linux
 *                 answers EINVAL before looking at any mapping (nothing
 *                 goes; the DMA after it reads the program's bytes)
 *   madv-dontneed-bar  MADV_DONTNEED of a page of BAR0 and the page mapped
 *                 for DMA after it: Linux stops at the BAR (VM_PFNMAP:
 *                 EINVAL), the device's page stays the program's
 *   madv-dontneed-bar-merged  MADV_DONTNEED of a PROT_NONE reserved
 *                 page, a page of BAR0 mapped over the next reserved page
 *                 and a page mapped for DMA: Linux stops at the BAR
 *                 (EINVAL), the device's page stays the program's
 *   madv-dontneed-locked-bar  MADV_DONTNEED_LOCKED of a page of BAR0 and
 *                 the page mapped for DMA after it: Linux stops at the BAR
 *                 (VM_PFNMAP: EINVAL), the device's page stays the program's
 *   madv-dontneed-huge  MADV_DONTNEED of the second 4 KiB of a 2 MiB
 *                 hugetlb page (EINVAL: not aligned to the huge page), then
 *                 of its first 4 KiB, both mapped for DMA: Linux 6.1 rounds
 *                 the end down to the huge page, so nothing goes (0)
 *   deep          maps 101 calls down (1 KiB frames), unmaps, DMAs
 *   altstack      maps from a signal handler on a sigaltstack, unmaps, DMAs
 *   thread        maps from another thread (its own stack), unmaps, DMAs
 *   clamp         programs a 33-bit address: edu's 28-bit mask clamps it
 *   clean         maps, DMAs, unmaps, closes: nothing to report
 *   hold          after-unmap, then waits for a line on stdin (for inspect)
 *   fork          maps and unmaps, forks; the child maps through the
 *                 inherited container and exits with it mapped; the parent
 *                 then maps and exits with everything open (each process
 *                 gets its own history and leaks)
 *   fork-munmap   forks; the child maps its copy of a buffer through the
 *                 inherited container, closes its VFIO files (the parent
 *                 alone holds the container) and munmaps the buffer: a
 *                 stale mapping of the child's memory; the parent then
 *                 munmaps its own copy (not mapped for DMA), unmaps the
 *                 IOVA and closes everything
 *   killed-owner  forks; the child maps a page of its own (0x5a bytes)
 *                 and waits; the parent maps a zeroed page, SIGKILLs the
 *                 child, has the device copy the child's page into its
 *                 own and prints its first byte (Linux: 5a, the pinned
 *                 page outlives the child)
 *   fork-munmap-child  as fork-munmap, without the parent's munmap
 *   handoff-X     forks first (the child exits at once), then the parent
 *                 runs scenario X (munmap, mremap, map-fixed): in preload
 *                 mode its calls go to the keeper
 *   handoff-reopen forks first (the child exits at once), then the parent
 *                 closes the device and the group, opens the group again
 *                 and exits with it and the container open
 *   exec          maps and unmaps, then execs itself ("exec-image"), which
 *                 maps through the container it kept and exits with it
 *                 mapped (each image gets its own history and leaks)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define IOVA 0x100000ul
#define LEN 0x1000ul
#define EDU_BUF 0x40000ul

static int container, group, device;
static uint64_t bar0;

static void die(const char *what) {
  perror(what);
  exit(2);
}

__attribute__((noinline)) static void setup(void) {
  container = open("/dev/vfio/vfio", O_RDWR);
  group = open("/dev/vfio/3", O_RDWR);
  if (container < 0 || group < 0) die("open");
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) die("SET_CONTAINER");
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("SET_IOMMU");
  device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, "0000:00:03.0");
  if (device < 0) die("GET_DEVICE_FD");
  struct vfio_region_info ri = {.argsz = sizeof ri, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("config region");
  uint16_t cmd;
  if (pread(device, &cmd, 2, ri.offset + 4) != 2) die("read command");
  cmd |= 0x6; /* memory space, bus master */
  if (pwrite(device, &cmd, 2, ri.offset + 4) != 2) die("write command");
  struct vfio_region_info b0 = {.argsz = sizeof b0, .index = VFIO_PCI_BAR0_REGION_INDEX};
  if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &b0)) die("bar0");
  bar0 = b0.offset;
}

__attribute__((noinline)) static void *map_buffer(void *buf, uint64_t iova, uint32_t flags) {
  struct vfio_iommu_type1_dma_map m = {.argsz = sizeof m, .flags = flags,
    .vaddr = (uintptr_t)buf, .iova = iova, .size = LEN};
  if (ioctl(container, VFIO_IOMMU_MAP_DMA, &m)) die("MAP_DMA");
  return buf;
}

__attribute__((noinline)) static void unmap_buffer(uint64_t iova) {
  struct vfio_iommu_type1_dma_unmap u = {.argsz = sizeof u, .iova = iova, .size = LEN};
  if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u)) die("UNMAP_DMA");
}

static void reg(uint64_t off, uint64_t v) {
  if (pwrite(device, &v, 8, bar0 + off) != 8) die("register write");
}

/* The device copies its buffer to RAM at `iova` (to_ram) or from it. */
__attribute__((noinline)) static void start_dma(uint64_t iova, int to_ram) {
  reg(0x80, to_ram ? EDU_BUF : iova);
  reg(0x88, to_ram ? iova : EDU_BUF);
  reg(0x90, 256);
  reg(0x98, to_ram ? 3 : 1);
}

__attribute__((noinline)) static void enable_msi(void) {
  int efd = eventfd(0, 0);
  char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
  struct vfio_irq_set *s = (struct vfio_irq_set *)buf;
  s->argsz = sizeof buf;
  s->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  s->index = VFIO_PCI_MSI_IRQ_INDEX;
  s->start = 0;
  s->count = 1;
  memcpy(s->data, &efd, sizeof efd);
  if (ioctl(device, VFIO_DEVICE_SET_IRQS, s)) die("SET_IRQS");
}

/* A deep stack: the map is made `n` calls down, through frames of 1 KiB
 * each (not a tail call: the result is used after the return). */
__attribute__((noinline)) static int descend(void *buf, int n) {
  volatile char pad[1024];
  pad[0] = (char)n;
  if (n == 0) {
    map_buffer(buf, IOVA, 3); /* deep map */
    return pad[0];
  }
  return descend(buf, n - 1) + pad[0]; /* deep descent */
}

/* A map from a signal handler running on an alternate stack (malloc'd:
 * not the thread's own stack, which the preload library's walk reads). */
static void *signal_buf;
__attribute__((noinline)) static void on_signal(int sig) {
  (void)sig;
  signal_buf = map_buffer(signal_buf, IOVA, 3); /* signal map (not a tail call) */
}

/* A map from a thread of the program's (its own stack, not main's). */
__attribute__((noinline)) static void *thread_main(void *buf) {
  void *r = map_buffer(buf, IOVA, 3); /* thread map */
  return r == buf ? NULL : buf;
}

static void *anon(void) {
  void *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  memset(p, 0x5a, LEN);
  return p;
}

static void finish(void) {
  close(device);
  close(group);
  close(container);
}

int main(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "clean";
  if (!strcmp(what, "exec-image") && argc > 2) {
    container = atoi(argv[2]); /* kept across the exec */
    map_buffer(anon(), 0x400000, 3); /* the new image's */
    printf("done exec\n");
    return 0;
  }
  setup();
  void *buf = anon();
  const char *scenario = what;
  if (!strncmp(what, "handoff-", 8)) {
    /* A fork with the VFIO files open: in preload mode the engine moves to
     * the keeper and every later call of this process goes there. */
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) _exit(0);
    int status;
    if (waitpid(child, &status, 0) != child || status != 0) die("child");
    what += 8;
  }
  if (!strcmp(what, "reopen")) {
    close(device); /* a device file holds its group's file */
    close(group);
    group = open("/dev/vfio/3", O_RDWR);
    if (group < 0) die("reopen group");
    printf("done %s\n", scenario);
    return 0; /* all open: the group from the reopen above */
  }
  if (!strcmp(what, "after-unmap") || !strcmp(what, "hold")) {
    map_buffer(buf, IOVA, 3);
    unmap_buffer(IOVA);
    start_dma(IOVA, 1);
    if (!strcmp(what, "hold")) {
      char line[16];
      printf("holding\n");
      fflush(stdout);
      if (!fgets(line, sizeof line, stdin)) return 3;
    }
  } else if (!strcmp(what, "never-mapped")) {
    map_buffer(buf, IOVA, 3);
    start_dma(0x300000, 1);
    unmap_buffer(IOVA);
  } else if (!strcmp(what, "read-only")) {
    map_buffer(buf, IOVA, VFIO_DMA_MAP_FLAG_READ);
    start_dma(IOVA, 1);
    unmap_buffer(IOVA);
  } else if (!strcmp(what, "leak")) {
    map_buffer(buf, IOVA, 3);
    enable_msi();
    return 0; /* nothing closed */
  } else if (!strcmp(what, "left-open")) {
    close(device);
    printf("done %s\n", what);
    return 0; /* container and group left open */
  } else if (!strcmp(what, "exec")) {
    map_buffer(buf, IOVA, 3);
    unmap_buffer(IOVA);
    char fd[16];
    snprintf(fd, sizeof fd, "%d", container);
    fflush(stdout);
    execl("/proc/self/exe", argv[0], "exec-image", fd, (char *)NULL);
    die("exec");
  } else if (!strcmp(what, "fork")) {
    map_buffer(buf, IOVA, 3);
    unmap_buffer(IOVA);
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
      map_buffer(anon(), 0x200000, 3); /* the child's */
      printf("child %d\n", getpid());
      fflush(stdout);
      _exit(0);
    }
    int status;
    if (waitpid(child, &status, 0) != child) die("waitpid");
    map_buffer(buf, 0x300000, 3); /* the parent's */
    printf("parent %d\ndone fork\n", getpid());
    return 0; /* nothing closed */
  } else if (!strcmp(what, "fork-munmap") || !strcmp(what, "fork-munmap-child")) {
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
      map_buffer(buf, 0x200000, 3); /* the child's copy of the pages */
      close(device);
      close(group);
      close(container);
      munmap(buf, LEN);
      _exit(0);
    }
    int status;
    if (waitpid(child, &status, 0) != child || status != 0) die("child");
    if (!strcmp(what, "fork-munmap")) munmap(buf, LEN); /* the parent's own copy */
    unmap_buffer(0x200000);
  } else if (!strcmp(what, "killed-owner")) {
    int ready[2];
    if (pipe(ready)) die("pipe");
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
      map_buffer(anon(), 0x200000, 3); /* the child's own page */
      if (write(ready[1], "r", 1) != 1) _exit(2);
      for (;;) pause();
    }
    char c;
    if (read(ready[0], &c, 1) != 1) die("child not ready");
    printf("child %d\n", child);
    memset(buf, 0, LEN);
    map_buffer(buf, IOVA, 3); /* the parent's page */
    kill(child, SIGKILL);
    int status;
    if (waitpid(child, &status, 0) != child || !WIFSIGNALED(status)) die("child");
    start_dma(0x200000, 0); /* the killed child's page to the device */
    start_dma(IOVA, 1);     /* and on into the parent's page */
    printf("parent page %02x\n", ((unsigned char *)buf)[0]);
    unmap_buffer(IOVA);
    unmap_buffer(0x200000);
  } else if (!strcmp(what, "munmap")) {
    map_buffer(buf, IOVA, 3);
    munmap(buf, LEN);
    start_dma(IOVA, 1);
    unmap_buffer(IOVA);
  } else if (!strcmp(what, "mremap")) {
    map_buffer(buf, IOVA, 3);
    void *moved = mremap(buf, LEN, LEN, MREMAP_MAYMOVE | MREMAP_FIXED, anon());
    if (moved == MAP_FAILED) die("mremap");
    unmap_buffer(IOVA);
  } else if (!strcmp(what, "map-fixed")) {
    map_buffer(buf, IOVA, 3);
    if (mmap(buf, LEN, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
      die("mmap fixed");
    unmap_buffer(IOVA);
  } else if (!strcmp(what, "deep")) {
    descend(buf, 100);
    unmap_buffer(IOVA);
    start_dma(IOVA, 1);
  } else if (!strcmp(what, "altstack")) {
    stack_t ss = {.ss_sp = malloc(65536), .ss_size = 65536};
    if (!ss.ss_sp || sigaltstack(&ss, NULL)) die("sigaltstack");
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_ONSTACK};
    if (sigaction(SIGUSR1, &sa, NULL)) die("sigaction");
    signal_buf = buf;
    raise(SIGUSR1);
    unmap_buffer(IOVA);
    printf("signal handled\n"); /* a tail of its own: not merged with another branch's */
    start_dma(IOVA, 1);
  } else if (!strcmp(what, "thread")) {
    pthread_t th;
    void *res = buf;
    if (pthread_create(&th, NULL, thread_main, buf) || pthread_join(th, &res) || res) die("thread");
    unmap_buffer(IOVA);
    printf("thread joined\n"); /* a tail of its own */
    start_dma(IOVA, 1);
  } else if (!strcmp(what, "raw-munmap")) {
    map_buffer(buf, IOVA, 3);
    if (syscall(SYS_munmap, buf, LEN) != 0) die("raw munmap");
    unmap_buffer(IOVA);
  } else if (!strcmp(what, "free") || !strcmp(what, "realloc") || !strcmp(what, "heap-free")) {
    /* 1 MiB is past glibc's mmap threshold: a mapping of its own. */
    size_t size = !strcmp(what, "heap-free") ? 2 * LEN : 1ul << 20;
    void *big;
    if (posix_memalign(&big, LEN, size)) die("posix_memalign");
    char *dma = (char *)big + size - LEN; /* its last page */
    memset(dma, 0x5a, LEN);
    map_buffer(dma, IOVA, 3);
    if (!strcmp(what, "realloc")) {
      big = realloc(big, 4 * LEN);
      if (!big) die("realloc");
    }
    free(big);
    unmap_buffer(IOVA);
  } else if (!strcmp(what, "madv-dontneed") || !strcmp(what, "madv-free") ||
             !strcmp(what, "madv-remove") || !strcmp(what, "madv-remove-private") ||
             !strcmp(what, "madv-dontneed-mlocked")) {
    int advice = !strcmp(what, "madv-free") ? MADV_FREE
                 : !strncmp(what, "madv-remove", 11) ? MADV_REMOVE : MADV_DONTNEED;
    if (!strcmp(what, "madv-remove")) {
      /* Shared memory: MADV_REMOVE punches its pages out. */
      buf = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
      if (buf == MAP_FAILED) die("mmap shared");
    }
    if (!strcmp(what, "madv-dontneed-mlocked") && mlock(buf, LEN)) die("mlock");
    map_buffer(buf, IOVA, 3);
    int r = madvise(buf, LEN, advice);
    /* Linux: 0 (the device keeps the old pages); softvfio: EINVAL. */
    printf("madvise %d\n", r ? errno : 0);
    unmap_buffer(IOVA);
  } else if (!strcmp(what, "madv-remove-hole") || !strcmp(what, "madv-remove-then-private")) {
    /* Two pages: a hole or shared memory, then the page mapped for DMA. */
    int hole = !strcmp(what, "madv-remove-hole");
    char *range = mmap(NULL, 2 * LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (range == MAP_FAILED) die("mmap range");
    char *shared = hole ? range + LEN : range;
    if (mmap(shared, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0) !=
        shared)
      die("mmap shared");
    if (hole && munmap(range, LEN)) die("munmap hole");
    char *dma = range + LEN;
    memset(dma, 0x5a, LEN);
    map_buffer(dma, IOVA, 3);
    int r = madvise(range, 2 * LEN, MADV_REMOVE);
    /* Linux: ENOMEM (hole) or EINVAL (the private page); softvfio: EINVAL. */
    printf("madvise %d\n", r ? errno : 0);
    unmap_buffer(IOVA);
  } else if (!strcmp(what, "madv-overflow") || !strcmp(what, "madv-wrap")) {
    size_t len = !strcmp(what, "madv-wrap") ? SIZE_MAX : (size_t)0 - LEN;
    memset(buf, 0x5a, LEN);
    map_buffer(buf, IOVA, 3);
    int r = madvise(buf, len, MADV_DONTNEED);
    /* Linux (and softvfio): EINVAL up front. */
    printf("madvise %d\n", r ? errno : 0);
    const unsigned char *bytes = buf;
    printf("kept %d\n", bytes[0] == 0x5a && bytes[LEN - 1] == 0x5a);
    start_dma(IOVA, 1);
    unmap_buffer(IOVA);
  } else if (!strcmp(what, "madv-dontneed-bar")) {
    char *range = mmap(NULL, 2 * LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (range == MAP_FAILED) die("mmap range");
    if (mmap(range, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, device, bar0) != range)
      die("mmap bar0");
    char *dma = range + LEN;
    memset(dma, 0x5a, LEN);
    map_buffer(dma, IOVA, 3);
    int r = madvise(range, 2 * LEN, MADV_DONTNEED);
    /* Linux: EINVAL at the BAR; softvfio: EINVAL (the pin's mlock). */
    printf("madvise %d\n", r ? errno : 0);
    printf("kept %d\n", dma[0] == 0x5a && dma[LEN - 1] == 0x5a);
    unmap_buffer(IOVA);
    if (munmap(range, 2 * LEN)) die("munmap range");
  } else if (!strcmp(what, "madv-dontneed-bar-merged")) {
    /* softvfio emulates the BAR with anonymous PROT_NONE memory (private,
     * MAP_NORESERVE), which the kernel merges with the reserved page before
     * it (a reservation made the usual way). */
    char *range = mmap(NULL, 3 * LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (range == MAP_FAILED) die("mmap range");
    if (mmap(range + LEN, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, device, bar0) !=
        range + LEN)
      die("mmap bar0");
    char *dma = range + 2 * LEN;
    if (mprotect(dma, LEN, PROT_READ | PROT_WRITE)) die("mprotect");
    memset(dma, 0x5a, LEN);
    map_buffer(dma, IOVA, 3);
    int r = madvise(range, 3 * LEN, MADV_DONTNEED);
    printf("madvise %d\n", r ? errno : 0);
    printf("kept %d\n", dma[0] == 0x5a && dma[LEN - 1] == 0x5a);
    unmap_buffer(IOVA);
    if (munmap(range, 3 * LEN)) die("munmap range");
  } else if (!strcmp(what, "madv-dontneed-locked-bar")) {
    char *range = mmap(NULL, 2 * LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (range == MAP_FAILED) die("mmap range");
    if (mmap(range, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, device, bar0) != range)
      die("mmap bar0");
    char *dma = range + LEN;
    memset(dma, 0x5a, LEN);
    map_buffer(dma, IOVA, 3);
    int r = madvise(range, 2 * LEN, 24 /* MADV_DONTNEED_LOCKED */);
    printf("madvise %d\n", r ? errno : 0);
    printf("kept %d\n", dma[0] == 0x5a && dma[LEN - 1] == 0x5a);
    unmap_buffer(IOVA);
    if (munmap(range, 2 * LEN)) die("munmap range");
  } else if (!strcmp(what, "madv-dontneed-huge")) {
    size_t huge_len = 2ul << 20;
    char *huge = mmap(NULL, huge_len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (huge == MAP_FAILED) die("mmap hugetlb");
    memset(huge, 0x5a, huge_len);
    map_buffer(huge, IOVA, 3);
    map_buffer(huge + LEN, IOVA + LEN, 3);
    int r = madvise(huge + LEN, LEN, MADV_DONTNEED);
    printf("madvise-unaligned %d\n", r ? errno : 0);
    printf("kept %d\n", huge[0] == 0x5a && huge[2 * LEN - 1] == 0x5a);
    r = madvise(huge, LEN, MADV_DONTNEED);
    printf("madvise-first-page %d\n", r ? errno : 0);
    printf("kept %d\n", huge[0] == 0x5a && huge[2 * LEN - 1] == 0x5a);
    unmap_buffer(IOVA);
    unmap_buffer(IOVA + LEN);
    if (munmap(huge, huge_len)) die("munmap hugetlb");
  } else if (!strcmp(what, "clamp")) {
    map_buffer(buf, IOVA, 3);
    start_dma(0x100000000ul | IOVA, 1);
    unmap_buffer(IOVA);
  } else {
    map_buffer(buf, IOVA, 3);
    start_dma(IOVA, 1);
    unmap_buffer(IOVA);
  }
  finish();
  printf("done %s\n", scenario);
  return 0;
}
