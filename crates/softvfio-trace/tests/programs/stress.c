// Threads hammering intercepted calls (with injections) while a timer
// floods the process with signals and children come and go.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#define IO(n) _IO(0x3B, n)
struct rw { uint32_t argsz, in; uint64_t out; };
static int c;
static volatile long sigs;
static void on_alrm(int s) { (void)s; __atomic_add_fetch(&sigs, 1, __ATOMIC_RELAXED); }

static void *worker(void *arg) {
  long id = (long)arg, bad = 0;
  for (int i = 0; i < 1500; i++) {
    if (ioctl(c, IO(131)) != 0) bad++;
    struct rw s = { 16, (uint32_t)(id * 100000 + i), 0 };
    if (ioctl(c, IO(101), &s) != 0 || s.out != (uint64_t)(id * 100000 + i) * 2 + 16) bad++;
    if (i % 50 == 0) {
      int g = open("/dev/vfio/3", O_RDWR);
      if (g < 0 || ioctl(g, IO(100)) != 0) bad++;
      int d = dup(g);
      close(g);
      if (ioctl(d, IO(100)) != 0) bad++;
      close(d);
    }
    if (id == 0 && i % 100 == 0) {
      pid_t p = fork();
      if (p == 0) _exit(ioctl(c, IO(100)) == 0 ? 0 : 1);
      int st;
      while (waitpid(p, &st, 0) < 0 && errno == EINTR) ;
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bad++;
    }
  }
  return (void *)bad;
}

int main(void) {
  c = open("/dev/vfio/vfio", O_RDWR);
  if (c < 0) return 2;
  struct sigaction sa = { 0 };
  sa.sa_handler = on_alrm;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGALRM, &sa, NULL);
  struct itimerval it = { { 0, 200 }, { 0, 200 } };
  setitimer(ITIMER_REAL, &it, NULL);
  pthread_t t[4];
  for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, (void *)i);
  long bad = 0;
  for (int i = 0; i < 4; i++) { void *r; pthread_join(t[i], &r); bad += (long)r; }
  struct itimerval off = { { 0, 0 }, { 0, 0 } };
  setitimer(ITIMER_REAL, &off, NULL);
  printf("bad %ld\nsignals %ld\n", bad, sigs);
  return 0;
}
