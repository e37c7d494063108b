/* The supervisor's descriptor cache (tests/notify.rs): a notified pread on
 * a descriptor number must reach what that number names now, after dup2,
 * dup3, close_range and close replaced it, from this thread and others.
 * argv[1] "uring": io_uring_setup first (the cache switches off).
 * Prints "key value" lines. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void out(const char *k, long v) { printf("%s %ld\n", k, v); fflush(stdout); }

/* 1: the device ("hello" at 10), 2: the plain file ("plain" at 10), 0: else. */
static int what(int fd) {
  char b[6] = {0};
  if (pread(fd, b, 5, 10) != 5) return 0;
  if (memcmp(b, "hello", 5) == 0) return 1;
  if (memcmp(b, "plain", 5) == 0) return 2;
  return 0;
}

static int reads(int fd, int n) {
  int ok = 0;
  for (int i = 0; i < n; i++) ok += what(fd) == 1;
  return ok;
}

static int shared_fd;
static void *reader(void *arg) {
  (void)arg;
  return (void *)(long)reads(shared_fd, 50);
}

static int open_dev(void) { return open("/dev/vfio/3", O_RDWR); }

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "uring") == 0) {
    char params[120] = {0};
    long r = syscall(SYS_io_uring_setup, 1, params);
    if (r >= 0) close((int)r);
  }
  char path[] = "/tmp/softvfio-fdcache-XXXXXX";
  int f = mkstemp(path);
  unlink(path);
  if (f < 0 || pwrite(f, "0123456789plain", 15, 0) != 15) return 1;
  int g = open_dev();
  if (g < 0 || pwrite(g, "hello", 5, 10) != 5) return 1;
  out("reads", reads(g, 100));
  /* Another thread reads the same number. */
  shared_fd = g;
  pthread_t t;
  void *r;
  pthread_create(&t, NULL, reader, NULL);
  pthread_join(t, &r);
  out("thread_reads", (long)r);
  /* dup2 of the plain file over the device's number. */
  out("dup2", dup2(f, g) == g);
  out("after_dup2", what(g));
  /* dup3 likewise. */
  int g2 = open_dev();
  out("reads2", reads(g2, 10));
  out("dup3", dup3(f, g2, O_CLOEXEC) == g2);
  out("after_dup3", what(g2));
  /* close_range, then the number taken by a plain file again. */
  int g3 = open_dev();
  out("reads3", reads(g3, 10));
  out("close_range", syscall(SYS_close_range, g3, g3, 0) == 0);
  int f3 = dup(f);
  out("reused3", f3 == g3);
  out("after_close_range", what(g3));
  /* close, then the number reused by the plain file. */
  int g4 = open_dev();
  out("reads4", reads(g4, 10));
  close(g4);
  int f4 = dup(f);
  out("reused4", f4 == g4);
  out("after_close", what(g4));
  /* And the other way round: a device on a number the plain file had. */
  close(f4);
  int g5 = open_dev();
  out("reused5", g5 == f4);
  out("after_reopen", what(g5));
  /* dup2 of a device over a plain file's number. */
  out("dup2_dev", dup2(g5, f3) == f3);
  out("after_dup2_dev", what(f3));
  out("done", 1);
  return 0;
}
