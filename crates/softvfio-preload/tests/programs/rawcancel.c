/* syscall(2) is no cancellation point in glibc, unlike the wrappers of
 * close, openat and pread64: a thread with a deferred cancel pending makes
 * these calls through syscall() and goes on; the cancel acts at the
 * pthread_testcancel after them. Under softvfio preload, syscall() of
 * these numbers goes through the library's hooks, which call the wrappers.
 * Prints what each call answered, how far the thread got, and how it
 * ended (the same on Linux without softvfio).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

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

int main(void) {
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
  printf("ended %s\n", ret == PTHREAD_CANCELED ? "canceled" : "returned");
  return 0;
}
