/* syscall(2) is no cancellation point in glibc, unlike the wrappers of
 * close, openat and pread64: a thread with a deferred cancel pending makes
 * these calls through syscall() and goes on; the cancel acts at the
 * pthread_testcancel after them. Under softvfio preload, syscall() of
 * these numbers goes through the library's hooks, which call the wrappers.
 * Prints what each call answered, how far the thread got, and how it
 * ended (the same on Linux without softvfio).
 *
 * With a group path (rawcancel /dev/vfio/N): ioctl and munmap are no
 * cancellation points either, nor is posix_spawn. Between two phases, a
 * thread with a cancel pending spawns a program with VFIO files open
 * (under preload the engine then moves to the keeper, and every VFIO call
 * is a message to it). In each phase one thread with a cancel pending
 * makes VFIO ioctls, another munmaps and frees memory still mapped for DMA
 * (under --sanitize a stale-mapping check); each thread reaches its
 * pthread_testcancel.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vfio_common.h"

static volatile int stage;
static long answers[4];
static int closed_errno;

static void *calls_with_cancel_pending(void *arg) {
  (void)arg;
  int fd = open("/dev/null", O_RDONLY);
  pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, NULL);
  pthread_cancel(pthread_self());
  char b;
  answers[0] = syscall(SYS_pread64, fd, &b, 1, 0);
  stage = 1;
  answers[1] = syscall(SYS_close, fd);
  stage = 2;
  closed_errno = fcntl(fd, F_GETFD) == -1 ? errno : 0;
  long again = syscall(SYS_openat, AT_FDCWD, "/dev/null", O_RDONLY);
  answers[2] = again >= 0;
  stage = 3;
  answers[3] = syscall(SYS_close, (int)again);
  stage = 4;
  pthread_testcancel();
  stage = 5;
  return NULL;
}

static int container;
static void *dma_buf;
/* A block glibc's malloc serves with a mapping of its own (above
 * M_MMAP_THRESHOLD), and its first whole page. */
static char *heap_block;
static void *heap_page;
static volatile int ioctl_stage, munmap_stage;
static long ioctl_answers[3];
static long munmap_answer;

/* VFIO ioctls (after the hand-off: requests to the keeper) with a cancel
 * pending. */
static void *ioctls_with_cancel_pending(void *arg) {
  (void)arg;
  pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, NULL);
  pthread_cancel(pthread_self());
  ioctl_answers[0] = ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU);
  ioctl_stage = 1;
  ioctl_answers[1] = map(container, 1ul << 20, dma_buf, 2 * PG);
  ioctl_stage = 2;
  ioctl_answers[2] = unmap(container, 1ul << 20, 2 * PG);
  ioctl_stage = 3;
  pthread_testcancel();
  ioctl_stage = 4;
  return NULL;
}

/* madvise, munmap, and free of a mapped heap block, of memory mapped for
 * DMA with a cancel pending. The madvise (MADV_REMOVE of private memory:
 * EINVAL on Linux and here) makes the sanitizer read the maps, which
 * must not act on the cancel either: madvise is no cancellation point. */
static void *munmap_with_cancel_pending(void *arg) {
  (void)arg;
  pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, NULL);
  pthread_cancel(pthread_self());
  (void)madvise(dma_buf, PG, MADV_REMOVE);
  munmap_answer = munmap(dma_buf, 2 * PG);
  munmap_stage = 1;
  free(heap_block);
  munmap_stage = 2;
  pthread_testcancel();
  munmap_stage = 3;
  return NULL;
}

static pid_t spawned, forked;
static int spawn_answer;
static volatile int spawn_stage;

/* posix_spawn with VFIO files open and a cancel pending: under preload
 * the hand-off to the keeper happens inside it; then fork. */
static void *spawn_with_cancel_pending(void *arg) {
  char *argv[] = {"/bin/true", NULL};
  pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, NULL);
  pthread_cancel(pthread_self());
  spawn_answer = posix_spawn(&spawned, "/bin/true", NULL, NULL, argv, arg);
  spawn_stage = 1;
  /* And a fork (after the hand-off, the keeper's fork protocol). */
  forked = fork();
  if (forked == 0) _exit(0);
  spawn_stage = 2;
  pthread_testcancel();
  spawn_stage = 3;
  return NULL;
}

static const char *how(void *ret) {
  return ret == PTHREAD_CANCELED ? "canceled" : "returned";
}

/* Both threads, printed with `name` before each line. */
static int cancel_pending_calls(const char *name) {
  dma_buf = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (dma_buf == MAP_FAILED) die("mmap");
  memset(dma_buf, 0x5a, 2 * PG);
  ioctl_stage = munmap_stage = 0;
  pthread_t t;
  void *ret;
  if (pthread_create(&t, NULL, ioctls_with_cancel_pending, NULL)) return 1;
  if (pthread_join(t, &ret)) return 1;
  printf("%s_ioctl_type1v2 %ld\n", name, ioctl_answers[0]);
  printf("%s_ioctl_map %ld\n", name, ioctl_answers[1]);
  printf("%s_ioctl_unmap %ld\n", name, ioctl_answers[2]);
  printf("%s_ioctl_stage %d\n", name, ioctl_stage);
  printf("%s_ioctl_ended %s\n", name, how(ret));
  /* Mapped again for the munmap thread (the maps are the main
   * thread's). */
  if (map(container, 1ul << 20, dma_buf, 2 * PG)) die("map");
  heap_block = malloc(64 * PG);
  if (!heap_block) die("malloc");
  heap_page = (void *)(((uintptr_t)heap_block + PG - 1) & ~(PG - 1));
  memset(heap_page, 0xa5, PG);
  if (map(container, 2ul << 20, heap_page, PG)) die("map heap");
  if (pthread_create(&t, NULL, munmap_with_cancel_pending, NULL)) return 1;
  if (pthread_join(t, &ret)) return 1;
  printf("%s_munmap %ld\n", name, munmap_answer);
  printf("%s_munmap_stage %d\n", name, munmap_stage);
  printf("%s_munmap_ended %s\n", name, how(ret));
  printf("%s_unmap_after %d\n", name, unmap(container, 1ul << 20, 2 * PG));
  printf("%s_unmap_heap_after %d\n", name, unmap(container, 2ul << 20, PG));
  fflush(stdout);
  return 0;
}

static int vfio_calls(const char *group_path) {
  int group;
  /* A fixed threshold: glibc would raise it to the size of the first
   * mapped block freed, and serve the second from the heap. */
  mallopt(M_MMAP_THRESHOLD, 32 * PG);
  container = open_container(group_path, &group);
  /* Under preload: the engine in this process. */
  if (cancel_pending_calls("in_process")) return 1;
  /* A spawn with VFIO files open: under preload the hand-off to the
   * keeper. */
  extern char **environ;
  pthread_t t;
  void *ret;
  if (pthread_create(&t, NULL, spawn_with_cancel_pending, environ)) return 1;
  if (pthread_join(t, &ret)) return 1;
  int st;
  printf("spawn %d\n", spawn_answer);
  printf("spawn_stage %d\n", spawn_stage);
  printf("spawn_ended %s\n", how(ret));
  printf("spawned_exit %d\n", spawn_answer == 0 && waitpid(spawned, &st, 0) == spawned &&
                                 WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  printf("forked_exit %d\n", forked > 0 && waitpid(forked, &st, 0) == forked &&
                                WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  if (cancel_pending_calls("keeper")) return 1;
  close(group);
  close(container);
  return 0;
}

int main(int argc, char **argv) {
  pthread_t t;
  void *ret;
  if (pthread_create(&t, NULL, calls_with_cancel_pending, NULL)) return 1;
  if (pthread_join(t, &ret)) return 1;
  printf("pread %ld\n", answers[0]);
  printf("close %ld\n", answers[1]);
  printf("closed_fd %s\n", closed_errno == EBADF ? "EBADF" : "open");
  printf("openat_ok %ld\n", answers[2]);
  printf("close_again %ld\n", answers[3]);
  printf("stage %d\n", stage);
  printf("ended %s\n", how(ret));
  fflush(stdout);
  return argc > 1 ? vfio_calls(argv[1]) : 0;
}
