/* The process pattern of Linux's kselftest harness: for every test the
 * parent forks a child, the child forks a grandchild, and the grandchild
 * opens the container and the group, takes the device, maps DMA and exits
 * without closing anything. The group must be free again as soon as the
 * parent has reaped the grandchild: the next grandchild's open must succeed.
 * While one process holds the group, another's open answers EBUSY.
 *
 * usage: fork_group_program /dev/vfio/<group> <device name> <rounds>
 * Prints one line per observation; the Rust test asserts every line. */
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *group_path, *dev_name;

/* The fixture setup and body of one test: 0 when every step succeeded,
 * else a code naming the failed step * 1000 + errno. */
static int use_device(void) {
  int container = open("/dev/vfio/vfio", O_RDWR);
  if (container < 0) return 1000 + errno;
  int group = open(group_path, O_RDWR);
  if (group < 0) return 2000 + errno;
  struct vfio_group_status st = { .argsz = sizeof st };
  if (ioctl(group, VFIO_GROUP_GET_STATUS, &st)) return 3000 + errno;
  if (!(st.flags & VFIO_GROUP_FLAGS_VIABLE)) return 3999;
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) return 4000 + errno;
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) return 5000 + errno;
  int dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, dev_name);
  if (dev < 0) return 6000 + errno;
  size_t sz = 1 << 20;
  void *buf = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) return 7000 + errno;
  struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m,
    .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
    .vaddr = (uint64_t)(uintptr_t)buf, .iova = 1 << 30, .size = sz };
  if (ioctl(container, VFIO_IOMMU_MAP_DMA, &m)) return 8000 + errno;
  return 0;
}

/* Runs `body` in a grandchild the way TEST_F does and waits for the child
 * the way the harness does: poll its pidfd, then waitpid(WNOHANG), which
 * must find it (a dead child is waitable when its pidfd turns readable).
 * Returns the child's exit code, 252 when WNOHANG found nothing. */
static int in_grandchild(int (*body)(void)) {
  pid_t child = fork();
  if (child < 0) return 254;
  if (child == 0) {
    setpgrp();
    pid_t gc = fork();
    if (gc < 0) _exit(254);
    if (gc == 0) _exit(body() ? 1 : 0); /* exits with everything open */
    int s;
    if (waitpid(gc, &s, 0) != gc || !WIFEXITED(s)) _exit(253);
    _exit(WEXITSTATUS(s));
  }
  int pidfd = syscall(SYS_pidfd_open, child, 0);
  if (pidfd < 0) return 251;
  struct pollfd p = { .fd = pidfd, .events = POLLIN };
  if (poll(&p, 1, 30000) != 1) return 250;
  close(pidfd);
  int s = 0;
  pid_t r = waitpid(child, &s, WNOHANG);
  if (r == 0) {
    waitpid(child, &s, 0); /* reap it anyway, then report the miss */
    return 252;
  }
  if (r != child || !WIFEXITED(s)) return 253;
  return WEXITSTATUS(s);
}

static int report_body(void) {
  int r = use_device();
  if (r) printf("  step failed: %d\n", r);
  fflush(stdout);
  return r;
}

/* Keeps a supervisor busy (in trace mode every VFIO ioctl stops at it),
 * as a program's other threads would: a child's exit then waits in its
 * queue, which widens the window in which the child's pidfd is readable
 * but a traced child would not be waitable yet. */
static void *busy(void *arg) {
  int container = *(int *)arg;
  for (;;) ioctl(container, VFIO_GET_API_VERSION);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 4) { fprintf(stderr, "usage: %s GROUP DEVICE ROUNDS\n", argv[0]); return 2; }
  group_path = argv[1];
  dev_name = argv[2];
  int rounds = atoi(argv[3]);
  setvbuf(stdout, NULL, _IOLBF, 0);
  static int busy_container;
  busy_container = open("/dev/vfio/vfio", O_RDWR);
  pthread_t t;
  if (busy_container < 0 || pthread_create(&t, NULL, busy, &busy_container)) return 2;
  for (int i = 0; i < rounds; i++) {
    printf("round %d grandchild %d\n", i, in_grandchild(report_body));
  }

  /* Exclusivity: while a child holds the group, this process's open
   * answers EBUSY; once the child is gone, the same open succeeds. */
  int ready[2], go[2];
  if (pipe(ready) || pipe(go)) return 2;
  pid_t holder = fork();
  if (holder == 0) {
    int g = open(group_path, O_RDWR);
    char c = g < 0 ? 'n' : 'y';
    if (write(ready[1], &c, 1) != 1) _exit(2);
    if (read(go[0], &c, 1) != 1) _exit(2);
    _exit(0);
  }
  char c = 0;
  if (read(ready[0], &c, 1) != 1) return 2;
  printf("holder open %s\n", c == 'y' ? "ok" : "failed");
  int g = open(group_path, O_RDWR);
  printf("open while held: %s\n", g < 0 ? (errno == EBUSY ? "EBUSY" : strerror(errno)) : "ok");
  if (g >= 0) close(g);
  if (write(go[1], &c, 1) != 1) return 2;
  int s;
  waitpid(holder, &s, 0);
  g = open(group_path, O_RDWR);
  printf("open after holder exit: %s\n", g < 0 ? strerror(errno) : "ok");
  if (g >= 0) close(g);
  printf("done\n");
  return 0;
}
