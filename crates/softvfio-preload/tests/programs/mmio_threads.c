/* Trapped MMIO from several threads at once, while another thread maps and
 * unmaps memory (MAP_FIXED over its own range, mprotect) and a second BAR
 * mapping comes and goes: every load of edu's ID register gives the ID,
 * every fault of the program's own (a PROT_NONE page) reaches its handler.
 * One reader runs on a small alternate signal stack (SIGSTKSZ).
 * usage: mmio_threads /dev/vfio/<group> <bdf> */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include "vfio_common.h"

#define READS 3000
static volatile uint32_t *bar;
static int dev;
static uint64_t bar_off;
static volatile int stop;
static __thread sigjmp_buf jb;
static __thread volatile int own_faults;

static void on_segv(int sig, siginfo_t *si, void *uc) {
  (void)sig; (void)si; (void)uc;
  own_faults++;
  siglongjmp(jb, 1);
}

static void *reader(void *arg) {
  long alt = (long)arg;
  if (alt) {
    stack_t ss = { .ss_sp = malloc(SIGSTKSZ), .ss_size = SIGSTKSZ };
    if (sigaltstack(&ss, NULL)) die("sigaltstack");
  }
  char *own = mmap(NULL, PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  /* volatile: changed between sigsetjmp and siglongjmp. */
  volatile long bad = 0;
  for (int i = 0; i < READS; i++) {
    if (bar[0] != 0x10000ed) bad++;
    if (i % 100 == 0 && !sigsetjmp(jb, 1)) {
      (void)*(volatile char *)own;
      bad++; /* not reached: the load faults */
    }
  }
  munmap(own, PG);
  return (void *)(bad + (own_faults != READS / 100 ? 1000000 : 0));
}

static void *churn(void *arg) {
  (void)arg;
  long n = 0;
  char *mine = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  while (!stop) {
    mmap(mine + (n % 16) * PG, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    mprotect(mine, PG, (n & 1) ? PROT_READ : PROT_READ | PROT_WRITE);
    void *other = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar_off);
    if (other == MAP_FAILED || *(volatile uint32_t *)other != 0x10000ed) return (void *)1;
    munmap(other, PG);
    n++;
  }
  munmap(mine, 16 * PG);
  return (void *)0;
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  int c = open("/dev/vfio/vfio", O_RDWR), g = open(argv[1], O_RDWR);
  if (c < 0 || g < 0) die("open");
  if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c)) die("set container");
  if (ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("set iommu");
  dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  if (dev < 0) die("device");
  struct vfio_region_info ri = { .argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX };
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("region info");
  bar_off = ri.offset;
  uint16_t cmd = 2;
  pwrite(dev, &cmd, 2, ((uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40) + 4);
  struct sigaction sa = { .sa_sigaction = on_segv, .sa_flags = SA_SIGINFO | SA_ONSTACK };
  sigaction(SIGSEGV, &sa, NULL);
  bar = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar_off);
  if (bar == MAP_FAILED) die("mmap");
  pthread_t r[3], ch;
  pthread_create(&ch, NULL, churn, NULL);
  for (long i = 0; i < 3; i++) pthread_create(&r[i], NULL, reader, (void *)(long)(i == 2));
  long bad = 0;
  for (int i = 0; i < 3; i++) {
    void *v;
    pthread_join(r[i], &v);
    bad += (long)v;
  }
  stop = 1;
  void *cv;
  pthread_join(ch, &cv);
  printf("readers bad=%ld churn=%ld\n", bad, (long)cv);
  return 0;
}
