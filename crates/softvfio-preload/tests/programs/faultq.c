/* A process holding an iommufd fault queue: what its other read/write calls
 * and its copies of the queue's descriptor do (tests/faultq.rs).
 *
 *   faultq busy-map GROUP MIB   a thread writes to a pipe while another is
 *                               in a MAP_DMA of MIB MiB (type1 on GROUP)
 *   faultq signal-fork N        N forks while a timer signal's handler
 *                               writes to a pipe
 *   faultq dups                 dup/dup2/dup3/F_DUPFD[_CLOEXEC] of a queue,
 *                               then its number reused by a pipe
 *   faultq fork                 a forked child reads the inherited queue
 *   faultq exec                 exec with one queue close-on-exec (its number
 *                               then an ordinary file's) and one kept
 *   faultq syscall              syscall(SYS_read/write/readv/writev, ...)
 *   faultq answers              dups, fork, syscall and exec in one run (as
 *                               Linux 6.12 answered them)
 *   faultq bench N              time per read/write of a pipe, before and
 *                               after the process holds a queue (best of
 *                               three rounds of N each; docs/IOMMUFD.md)
 *
 * Lines are "name value..."; a read or write prints "name RESULT ERRNO"
 * (-1 and the errno's name on failure), as tests-oracle's probe does. The
 * answers on a queue are Linux 6.12's (tests-oracle/kernel-6.12-iommufd-
 * fault.txt and -fault-thread.txt): a read of a multiple of 40 bytes is 0,
 * of another length ESPIPE; a response naming no pending fault EINVAL.
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
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/vfio.h>

#define IOMMU_FAULT_QUEUE_ALLOC _IO(';', 0x80 + 14)
struct fault_alloc { uint32_t size, flags, out_fault_id, out_fault_fd; };
struct page_response { uint32_t cookie, code; };

static const char *ename(int e) {
  switch (e) {
  case 0: return "0";
  case EINVAL: return "EINVAL";
  case ESPIPE: return "ESPIPE";
  case EBADF: return "EBADF";
  case EAGAIN: return "EAGAIN";
  case EFAULT: return "EFAULT";
  default: { static char b[32]; snprintf(b, sizeof b, "errno%d", e); return b; }
  }
}

static void rw_case(const char *name, ssize_t n) {
  printf("%s %zd %s\n", name, n < 0 ? -1 : n, n < 0 ? ename(errno) : "0");
}

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

/* The iommufd the queues are made on (close-on-exec). */
static int ifd = -1;

/* A fault queue (of the process's iommufd, opened at the first): its
 * descriptor. */
static int new_queue(void) {
  if (ifd < 0) ifd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
  if (ifd < 0) { perror("open /dev/iommu"); exit(1); }
  struct fault_alloc fa = {sizeof fa, 0, 0, 0};
  if (ioctl(ifd, IOMMU_FAULT_QUEUE_ALLOC, &fa)) { perror("IOMMU_FAULT_QUEUE_ALLOC"); exit(1); }
  return (int)fa.out_fault_fd;
}

/* The reads a queue answers (0 for whole records, ESPIPE for part of one). */
static void queue_reads(const char *name, int fd) {
  char rb[128], n[64];
  snprintf(n, sizeof n, "%s_read_40", name);
  errno = 0; rw_case(n, read(fd, rb, 40));
  snprintf(n, sizeof n, "%s_read_32", name);
  errno = 0; rw_case(n, read(fd, rb, 32));
}

/* ---- busy-map ------------------------------------------------------------ */

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

/* While one thread is in a long engine call (a MAP_DMA that pins MIB MiB,
 * the library's state lock held), another writes a pipe once a millisecond:
 * how many of its writes returned while the map still ran, and the longest. */
static int busy_map(const char *group, long mib) {
  int q = new_queue();
  int g, c = open("/dev/vfio/vfio", O_RDWR);
  g = open(group, O_RDWR);
  if (c < 0 || g < 0) { perror("open"); return 1; }
  if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) || ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) {
    perror("container");
    return 1;
  }
  int p[2];
  if (pipe(p)) return 1;
  fcntl(p[1], F_SETFL, O_NONBLOCK);
  fcntl(p[0], F_SETFL, O_NONBLOCK);
  struct map_job j = {c, NULL, (uint64_t)mib << 20, 0, 0};
  j.buf = mmap(NULL, j.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (j.buf == MAP_FAILED) return 1;
  pthread_t t;
  pthread_create(&t, NULL, mapper, &j);
  while (!atomic_load(&mapping) && !atomic_load(&map_done)) {}
  int during = 0;
  double longest = 0;
  char sink[4096];
  while (!atomic_load(&map_done)) {
    usleep(1000);
    double t0 = now_ns();
    ssize_t w = write(p[1], "x", 1);
    double us = (now_ns() - t0) / 1e3;
    if (w != 1) { perror("write"); return 1; }
    if (atomic_load(&mapping)) {
      during++;
      if (us > longest) longest = us;
    }
    while (read(p[0], sink, sizeof sink) > 0) {}
  }
  pthread_join(t, NULL);
  printf("map %s\n", ename(j.err));
  printf("map_ms %.0f\n", j.ms);
  printf("writes_during_map %d\n", during);
  printf("longest_write_us %.0f\n", longest);
  queue_reads("after_map", q);
  struct vfio_iommu_type1_dma_unmap u = {.argsz = sizeof u, .iova = 0, .size = j.size};
  printf("unmap %s\n", ename(ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u) ? errno : 0));
  close(q);
  close(g);
  close(c);
  return 0;
}

/* ---- signal-fork ----------------------------------------------------------- */

static int sig_pipe[2];
static atomic_int handler_writes;

static void on_tick(int sig) {
  (void)sig;
  int saved = errno;
  char c = 's';
  /* Non-blocking: a full pipe answers EAGAIN, which is fine. */
  if (write(sig_pipe[1], &c, 1) == 1) atomic_fetch_add(&handler_writes, 1);
  errno = saved;
}

/* Forks while a timer signal arrives every 50 us, whose handler writes a
 * pipe: a signal lands in the library's fork window (its locks held by this
 * thread). A hang ends the run by alarm. */
static int signal_fork(int n) {
  int q = new_queue();
  /* Some memory to copy makes each fork's window longer. */
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
  char sink[4096];
  for (int i = 0; i < n; i++) {
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    if (pid < 0) { perror("fork"); break; }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) forked++;
    while (read(sig_pipe[0], sink, sizeof sink) > 0) {}
  }
  struct itimerspec off = {{0, 0}, {0, 0}};
  timer_settime(tm, 0, &off, NULL);
  alarm(0);
  printf("forks %d\n", forked);
  printf("handler_wrote %s\n", atomic_load(&handler_writes) > 0 ? "yes" : "no");
  queue_reads("after_forks", q);
  close(q);
  munmap(m, big);
  return 0;
}

/* ---- dups -------------------------------------------------------------------- */

static int dups(void) {
  alarm(20);
  int q = new_queue();
  int d_dup = dup(q);
  int d_dup2 = dup2(q, 100);
  int d_dup3 = dup3(q, 101, O_CLOEXEC);
  int d_fd = fcntl(q, F_DUPFD, 200);
  int d_fdc = fcntl(q, F_DUPFD_CLOEXEC, 300);
  printf("numbers %d %d %d %d\n", d_dup2, d_dup3, d_fd >= 200, d_fdc >= 300);
  queue_reads("dup", d_dup);
  queue_reads("dup2", d_dup2);
  queue_reads("dup3", d_dup3);
  queue_reads("dupfd", d_fd);
  queue_reads("dupfd_cloexec", d_fdc);
  struct page_response r = {1, 0};
  errno = 0; rw_case("dup_write_unknown_cookie", write(d_dup, &r, 8));
  char rb[80];
  struct iovec v[2] = {{rb, 40}, {rb + 40, 40}};
  errno = 0; rw_case("dup3_readv_40_40", readv(d_dup3, v, 2));
  /* Closed copies are closed (EBADF), by close and by close_range. */
  int d_range = fcntl(q, F_DUPFD, 400);
  printf("close_range %d\n", close_range(d_range, d_range, 0));
  errno = 0; rw_case("close_range_read_40", read(d_range, rb, 40));
  /* The queue's number reused by a pipe: the pipe's. */
  close(q);
  errno = 0; rw_case("closed_read_40", read(q, rb, 40));
  int p[2];
  if (pipe(p)) return 1;
  printf("pipe_took_queue_number %d\n", p[0] == q);
  errno = 0; rw_case("pipe_write_5", write(p[1], "abcde", 5));
  memset(rb, 0, sizeof rb);
  errno = 0; rw_case("pipe_read_5", read(p[0], rb, 5));
  printf("pipe_data %s\n", rb);
  /* A pipe dup2'd over a copy of the queue: the pipe's. */
  dup2(p[0], d_dup2);
  errno = 0; rw_case("pipe_write_3", write(p[1], "xyz", 3));
  memset(rb, 0, sizeof rb);
  errno = 0; rw_case("dup2_over_read_3", read(d_dup2, rb, 3));
  printf("dup2_over_data %s\n", rb);
  /* The other copies are still the queue. */
  queue_reads("dup_after", d_dup);
  close(d_dup);
  close(d_dup3);
  close(d_fd);
  close(d_fdc);
  close(d_dup2);
  close(p[0]);
  close(p[1]);
  return 0;
}

/* ---- fork -------------------------------------------------------------------- */

static int fork_case(void) {
  alarm(20);
  int q = new_queue();
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    queue_reads("child", q);
    struct page_response r = {1, 0};
    errno = 0; rw_case("child_write_unknown_cookie", write(q, &r, 8));
    fflush(stdout);
    _exit(0);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  printf("child_exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  queue_reads("parent", q);
  close(q);
  return 0;
}

/* ---- exec -------------------------------------------------------------------- */

static int exec_case(const char *self) {
  int q = new_queue();   /* close-on-exec, as 6.12 makes it */
  int kept = new_queue();
  fcntl(kept, F_SETFD, 0);
  printf("queue_cloexec %d\n", (fcntl(q, F_GETFD) & FD_CLOEXEC) != 0);
  fflush(stdout);
  char qs[16], ks[16];
  snprintf(qs, sizeof qs, "%d", q);
  snprintf(ks, sizeof ks, "%d", kept);
  execl(self, self, "exec-image", qs, ks, (char *)NULL);
  perror("execl");
  return 1;
}

static int exec_image(int q, int kept) {
  alarm(20);
  char path[] = "/tmp/softvfio-faultq-XXXXXX";
  int f = mkstemp(path);
  if (f < 0) return 1;
  if (write(f, "filedata", 8) != 8) return 1;
  unlink(path);
  /* The number the exec closed, now an ordinary file's (the library may
   * have taken it for its own connection: dup2 moves that away). */
  if (f != q) {
    if (dup2(f, q) != q) return 1;
    close(f);
  }
  lseek(q, 0, SEEK_SET);
  char rb[64] = {0};
  errno = 0; rw_case("image_file_read", read(q, rb, 40));
  printf("image_file_data %s\n", rb);
  queue_reads("image_kept", kept);
  close(q);
  close(kept);
  return 0;
}

/* ---- syscall ------------------------------------------------------------------- */

static int syscall_case(void) {
  alarm(20);
  int q = new_queue();
  char rb[128];
  errno = 0; rw_case("sys_read_40", syscall(SYS_read, q, rb, 40));
  errno = 0; rw_case("sys_read_32", syscall(SYS_read, q, rb, 32));
  struct page_response r = {1, 0};
  errno = 0; rw_case("sys_write_unknown_cookie", syscall(SYS_write, q, &r, 8));
  errno = 0; rw_case("sys_write_7", syscall(SYS_write, q, &r, 7));
  struct iovec v[2] = {{rb, 40}, {rb + 40, 40}};
  errno = 0; rw_case("sys_readv_40_40", syscall(SYS_readv, q, v, 2));
  struct iovec w[1] = {{&r, 8}};
  errno = 0; rw_case("sys_writev_8", syscall(SYS_writev, q, w, 1));
  /* Other descriptors: the kernel's answers, errno kept on success. */
  int p[2];
  if (pipe2(p, O_NONBLOCK)) return 1;
  errno = 1234;
  long n = syscall(SYS_write, p[1], "abc", 3);
  printf("sys_pipe_write %ld errno_kept=%d\n", n, errno == 1234);
  memset(rb, 0, sizeof rb);
  errno = 1234;
  n = syscall(SYS_read, p[0], rb, sizeof rb);
  printf("sys_pipe_read %ld %s errno_kept=%d\n", n, rb, errno == 1234);
  errno = 0; rw_case("sys_pipe_read_empty", syscall(SYS_read, p[0], rb, 8));
  struct iovec pv[2] = {{"de", 2}, {"fg", 2}};
  errno = 0; rw_case("sys_pipe_writev", syscall(SYS_writev, p[1], pv, 2));
  memset(rb, 0, sizeof rb);
  struct iovec rv[1] = {{rb, 64}};
  errno = 0; rw_case("sys_pipe_readv", syscall(SYS_readv, p[0], rv, 1));
  printf("sys_pipe_readv_data %s\n", rb);
  errno = 0; rw_case("sys_read_bad_fd", syscall(SYS_read, 999, rb, 8));
  close(p[0]);
  close(p[1]);
  close(q);
  return 0;
}

/* ---- bench --------------------------------------------------------------------- */

/* Time per call of a 1-byte write and read of a pipe, n of each. */
static double pipe_loop(int n) {
  int p[2];
  if (pipe(p)) exit(1);
  char c = 0;
  double t = now_ns();
  for (int i = 0; i < n; i++) {
    if (write(p[1], &c, 1) != 1 || read(p[0], &c, 1) != 1) abort();
  }
  double per = (now_ns() - t) / n / 2;
  close(p[0]);
  close(p[1]);
  return per;
}

static int bench(int n) {
  pipe_loop(n / 10);
  double best_before = 1e18, best_after = 1e18;
  for (int r = 0; r < 3; r++) {
    double b = pipe_loop(n);
    if (b < best_before) best_before = b;
  }
  printf("no_queue_ns %.1f\n", best_before);
  int q = new_queue();
  for (int r = 0; r < 3; r++) {
    double a = pipe_loop(n);
    if (a < best_after) best_after = a;
  }
  printf("with_queue_ns %.1f\n", best_after);
  close(q);
  return 0;
}

static int run_case(int argc, char **argv) {
  if (!strcmp(argv[1], "busy-map") && argc >= 4) return busy_map(argv[2], atol(argv[3]));
  if (!strcmp(argv[1], "signal-fork") && argc >= 3) return signal_fork(atoi(argv[2]));
  if (!strcmp(argv[1], "dups")) return dups();
  if (!strcmp(argv[1], "fork")) return fork_case();
  if (!strcmp(argv[1], "exec")) return exec_case("/proc/self/exe");
  if (!strcmp(argv[1], "exec-image") && argc >= 4) return exec_image(atoi(argv[2]), atoi(argv[3]));
  if (!strcmp(argv[1], "syscall")) return syscall_case();
  if (!strcmp(argv[1], "bench") && argc >= 3) return bench(atoi(argv[2]));
  if (!strcmp(argv[1], "answers")) {
    /* The cases whose answers are the kernel's, in one run (recorded under
     * Linux 6.12: tests-oracle/kernel-6.12-faultq.txt); the exec last. */
    if (dups() || fork_case() || syscall_case()) return 1;
    return exec_case("/proc/self/exe");
  }
  return 2;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 2) return 2;
  int r = run_case(argc, argv);
  if (ifd >= 0) close(ifd);
  return r;
}
