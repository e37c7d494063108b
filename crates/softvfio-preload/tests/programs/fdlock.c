/* Descriptor calls on descriptors that are not VFIO files while the process
 * holds VFIO files (tests/fdlock.rs): they must not wait for the library's
 * state lock.
 *
 *   fdlock busy-map GROUP MIB   a thread does close(dup(pipe)), fcntl
 *                               F_GETFL, fstat and ioctl FIONREAD of a pipe
 *                               while another is in a MAP_DMA of MIB MiB
 *   fdlock signal-fork GROUP N  N forks while a timer signal's handler does
 *                               close(dup(pipe)) and fstat of a pipe
 *   fdlock bench GROUP N        ns per fstat+fcntl+close(dup()) round of a
 *                               pipe, without and with a container open
 *   fdlock reuse GROUP          a container's number reused by a pipe, and a
 *                               container dup2'd over a pipe's number
 *
 * Lines are "name value".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/vfio.h>

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

/* A type1 container with GROUP in it. */
static int container(const char *group, int *g) {
  int c = open("/dev/vfio/vfio", O_RDWR);
  *g = open(group, O_RDWR);
  if (c < 0 || *g < 0) { perror("open"); exit(1); }
  if (ioctl(*g, VFIO_GROUP_SET_CONTAINER, &c) || ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) {
    perror("container");
    exit(1);
  }
  return c;
}

/* The four calls on a pipe's read end: 0 when each answered as a pipe's. */
static int pipe_calls(int fd) {
  int d = dup(fd);
  if (d < 0 || close(d)) return 1;
  if ((fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDONLY) return 2;
  struct stat st;
  if (fstat(fd, &st) || !S_ISFIFO(st.st_mode)) return 3;
  int n = -1;
  if (ioctl(fd, FIONREAD, &n) || n < 0) return 4;
  return 0;
}

static atomic_int mapping, map_done;
struct map_job { int container; void *buf; uint64_t size; double ms; int err; };

static void *mapper(void *p) {
  struct map_job *j = p;
  struct vfio_iommu_type1_dma_map m = {.argsz = sizeof m,
    .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
    .vaddr = (uint64_t)(uintptr_t)j->buf, .iova = 0, .size = j->size};
  atomic_store(&mapping, 1);
  double t = now_ns();
  j->err = ioctl(j->container, VFIO_IOMMU_MAP_DMA, &m) ? errno : 0;
  j->ms = (now_ns() - t) / 1e6;
  atomic_store(&mapping, 0);
  atomic_store(&map_done, 1);
  return NULL;
}

static int busy_map(const char *group, long mib) {
  int g, c = container(group, &g);
  int p[2];
  if (pipe(p)) return 1;
  struct map_job j = {c, NULL, (uint64_t)mib << 20, 0, 0};
  j.buf = mmap(NULL, j.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (j.buf == MAP_FAILED) return 1;
  pthread_t t;
  pthread_create(&t, NULL, mapper, &j);
  while (!atomic_load(&mapping) && !atomic_load(&map_done)) {}
  int during = 0, bad = 0;
  double longest = 0;
  while (!atomic_load(&map_done)) {
    usleep(1000);
    double t0 = now_ns();
    int r = pipe_calls(p[0]);
    double us = (now_ns() - t0) / 1e3;
    if (r) bad = r;
    if (atomic_load(&mapping)) {
      during++;
      if (us > longest) longest = us;
    }
  }
  pthread_join(t, NULL);
  printf("map %d\n", j.err);
  printf("map_ms %.0f\n", j.ms);
  printf("calls_during_map %d\n", during);
  printf("longest_calls_us %.0f\n", longest);
  printf("pipe_answers %d\n", bad);
  close(g);
  close(c);
  return 0;
}

static int sig_pipe[2];
static atomic_int handler_calls, handler_bad;

static void on_tick(int sig) {
  (void)sig;
  int saved = errno;
  int d = dup(sig_pipe[0]);
  struct stat st;
  if (d < 0 || close(d) || fstat(sig_pipe[0], &st) || !S_ISFIFO(st.st_mode))
    atomic_fetch_add(&handler_bad, 1);
  atomic_fetch_add(&handler_calls, 1);
  errno = saved;
}

static int signal_fork(const char *group, int n) {
  int g, c = container(group, &g);
  size_t big = 64ul << 20;
  char *m = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (m == MAP_FAILED) return 1;
  if (pipe2(sig_pipe, O_NONBLOCK)) return 1;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_tick;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, NULL);
  timer_t tm;
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_notify = SIGEV_SIGNAL;
  ev.sigev_signo = SIGUSR1;
  if (timer_create(CLOCK_MONOTONIC, &ev, &tm)) { perror("timer_create"); return 1; }
  struct itimerspec its = {{0, 50000}, {0, 50000}};
  alarm(60);
  timer_settime(tm, 0, &its, NULL);
  int forked = 0;
  for (int i = 0; i < n; i++) {
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    if (pid < 0) { perror("fork"); break; }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) forked++;
  }
  struct itimerspec off = {{0, 0}, {0, 0}};
  timer_settime(tm, 0, &off, NULL);
  alarm(0);
  printf("forks %d\n", forked);
  printf("handler_called %s\n", atomic_load(&handler_calls) > 0 ? "yes" : "no");
  printf("handler_bad %d\n", atomic_load(&handler_bad));
  int api = ioctl(c, VFIO_GET_API_VERSION);
  printf("container_api %d\n", api);
  close(g);
  close(c);
  munmap(m, big);
  return 0;
}

static int reuse(const char *group) {
  int g, c = container(group, &g);
  int c2 = dup(c);
  /* The container's number taken by a pipe (the group keeps the container). */
  close(c);
  int p[2];
  if (pipe(p)) return 1;
  printf("pipe_took_container_number %d\n", p[0] == c);
  printf("reused_pipe_answers %d\n", pipe_calls(p[0]));
  errno = 0;
  printf("reused_lseek %s\n", lseek(p[0], 0, SEEK_SET) < 0 && errno == ESPIPE ? "ESPIPE" : "other");
  /* The copy still is the container. */
  printf("copy_api %d\n", ioctl(c2, VFIO_GET_API_VERSION));
  /* A container copy dup2'd over the pipe's number: the container's. */
  int q[2];
  if (pipe(q)) return 1;
  int r = dup2(c2, q[0]);
  printf("dup2_over_pipe %d\n", r == q[0]);
  printf("dup2_api %d\n", ioctl(q[0], VFIO_GET_API_VERSION));
  /* And a pipe dup2'd back over it: the pipe's (q[1] is the write end). */
  dup2(p[0], q[0]);
  printf("pipe_over_container_answers %d\n", pipe_calls(q[0]));
  /* F_DUPFD of the container, then a pipe over the copy by F_DUPFD. */
  int fdc = fcntl(c2, F_DUPFD, 300);
  printf("dupfd_api %d\n", ioctl(fdc, VFIO_GET_API_VERSION));
  close(fdc);
  int fdp = fcntl(p[0], F_DUPFD, 300);
  printf("dupfd_pipe_same_number %d\n", fdp == fdc);
  printf("dupfd_pipe_answers %d\n", pipe_calls(fdp));
  printf("group_still_viable %d\n", ioctl(c2, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU));
  close(g);
  close(c2);
  return 0;
}

/* ns per round of fstat, fcntl(F_GETFL) and close(dup()) of a pipe: best
 * of three runs of N rounds, with no VFIO file open and then with a
 * container (and GROUP in it) open. */
static double bench_rounds(int fd, long n) {
  double best = 1e18;
  for (int k = 0; k < 3; k++) {
    double t = now_ns();
    for (long i = 0; i < n; i++) {
      struct stat st;
      if (fstat(fd, &st) || fcntl(fd, F_GETFL) < 0 || close(dup(fd))) exit(1);
    }
    double per = (now_ns() - t) / n;
    if (per < best) best = per;
  }
  return best;
}

static int bench(const char *group, long n) {
  int p[2];
  if (pipe(p)) return 1;
  double none = bench_rounds(p[0], n);
  int g, c = container(group, &g);
  double open_ = bench_rounds(p[0], n);
  printf("ns_per_round_no_vfio %.1f\n", none);
  printf("ns_per_round_container_open %.1f\n", open_);
  close(g);
  close(c);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  if (argc >= 4 && !strcmp(argv[1], "busy-map")) return busy_map(argv[2], atol(argv[3]));
  if (argc >= 4 && !strcmp(argv[1], "signal-fork")) return signal_fork(argv[2], atoi(argv[3]));
  if (argc >= 4 && !strcmp(argv[1], "bench")) return bench(argv[2], atol(argv[3]));
  if (argc >= 3 && !strcmp(argv[1], "reuse")) return reuse(argv[2]);
  fprintf(stderr, "usage: fdlock busy-map|signal-fork|reuse ...\n");
  return 2;
}
