/* softvfio bench trap-floor: what the kernel mechanisms under trace mode
 * cost on this machine, each per call, next to a native system call
 * (getppid) measured in the same round. One line per round and kind:
 *   "<kind> <native getppid ns> <ns per call>"
 * kinds:
 *   notif-recv     getppid answered by a seccomp user-notification
 *                  supervisor thread waiting in NOTIF_RECV, with
 *                  SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (trace mode now)
 *   notif-poll     the same, the supervisor polling the listener first
 *                  (trace mode before)
 *   ptrace-stop    getppid stopping at a seccomp ptrace stop of a tracer
 *                  process, which resumes it (PTRACE_CONT)
 *   ptrace-inject  the same stop, the tracer turning the call into another
 *                  one and resuming to its exit (a MAP_DMA's one injected
 *                  mlock: GETREGS, SETREGS, PTRACE_SYSCALL, wait, SETREGS,
 *                  PTRACE_CONT)
 *   proc-fd        readlink of /proc/<pid>/fd/<n> for a socket (how the
 *                  supervisor tells which object a descriptor is)
 * usage: trap_floor ROUNDS ITERS */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP 1
#endif

static int iters;

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

static double native(void) {
  double t0 = now_ns();
  for (int i = 0; i < iters; i++) syscall(SYS_getppid);
  return (now_ns() - t0) / iters;
}

/* A filter sending getppid to `action`, everything else allowed. */
static int install(unsigned action, unsigned flags) {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, action),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
  struct sock_fprog p = {4, f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) return -1;
  return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &p);
}

/* ---- user notification: a thread with the filter, this one serving ---- */
static volatile int listener = -1;
static volatile double notif_ns = -1;
static volatile int notif_done;

static void *notifying(void *arg) {
  (void)arg;
  int fd = install(SECCOMP_RET_USER_NOTIF, SECCOMP_FILTER_FLAG_NEW_LISTENER);
  if (fd < 0) {
    notif_done = 1;
    return NULL;
  }
  listener = fd;
  syscall(SYS_getppid); /* the server is up */
  double t0 = now_ns();
  for (int i = 0; i < iters; i++) syscall(SYS_getppid);
  notif_ns = (now_ns() - t0) / iters;
  notif_done = 1;
  return NULL;
}

static double notif(int use_poll) {
  pthread_t t;
  listener = -1;
  notif_done = 0;
  notif_ns = -1;
  if (pthread_create(&t, NULL, notifying, NULL)) return -1;
  while (listener < 0 && !notif_done) usleep(100);
  int fd = listener;
  if (fd >= 0) {
    if (!use_poll && ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP))
      use_poll = 1;
    for (int served = 0; served < iters + 1;) {
      if (use_poll) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, -1) < 0) break;
      }
      struct seccomp_notif n;
      memset(&n, 0, sizeof n);
      if (ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &n)) continue;
      struct seccomp_notif_resp r = {n.id, 1, 0, 0};
      ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &r);
      served++;
    }
  }
  pthread_join(t, NULL);
  if (fd >= 0) close(fd);
  return notif_ns;
}

/* ---- ptrace: a child with a RET_TRACE filter, this process tracing ---- */
static double traced(int inject) {
  int p[2];
  if (pipe(p)) return -1;
  pid_t c = fork();
  if (c < 0) return -1;
  if (c == 0) {
    if (ptrace(PTRACE_TRACEME, 0, 0, 0)) _exit(2);
    raise(SIGSTOP);
    if (install(SECCOMP_RET_TRACE, 0) < 0) _exit(3);
    syscall(SYS_getppid);
    double t0 = now_ns();
    for (int i = 0; i < iters; i++) syscall(SYS_getppid);
    double dt = (now_ns() - t0) / iters;
    if (write(p[1], &dt, sizeof dt) != sizeof dt) _exit(4);
    _exit(0);
  }
  close(p[1]);
  int st;
  waitpid(c, &st, 0);
  ptrace(PTRACE_SETOPTIONS, c, 0, PTRACE_O_TRACESECCOMP | PTRACE_O_EXITKILL | PTRACE_O_TRACESYSGOOD);
  ptrace(PTRACE_CONT, c, 0, 0);
  for (;;) {
    if (waitpid(c, &st, 0) < 0 || WIFEXITED(st) || WIFSIGNALED(st)) break;
    if (WIFSTOPPED(st) && (st >> 8) == (SIGTRAP | (PTRACE_EVENT_SECCOMP << 8))) {
      if (inject) {
        struct user_regs_struct r, saved;
        ptrace(PTRACE_GETREGS, c, 0, &r);
        saved = r;
        r.orig_rax = SYS_getpid;
        ptrace(PTRACE_SETREGS, c, 0, &r);
        ptrace(PTRACE_SYSCALL, c, 0, 0);
        waitpid(c, &st, 0); /* the injected call's exit */
        ptrace(PTRACE_GETREGS, c, 0, &r);
        saved.rax = 1;
        saved.orig_rax = (unsigned long long)-1;
        ptrace(PTRACE_SETREGS, c, 0, &saved);
      }
      ptrace(PTRACE_CONT, c, 0, 0);
    } else {
      ptrace(PTRACE_CONT, c, 0, WIFSTOPPED(st) && WSTOPSIG(st) != SIGTRAP ? WSTOPSIG(st) : 0);
    }
  }
  double dt = -1;
  if (read(p[0], &dt, sizeof dt) != sizeof dt) dt = -1;
  close(p[0]);
  return dt;
}

static double proc_fd(void) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return -1;
  char path[64], buf[256];
  double t0 = now_ns();
  for (int i = 0; i < iters; i++) {
    snprintf(path, sizeof path, "/proc/%d/fd/%d", getpid(), sv[0]);
    if (readlink(path, buf, sizeof buf) <= 0) return -1;
  }
  double dt = (now_ns() - t0) / iters;
  close(sv[0]);
  close(sv[1]);
  return dt;
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  int rounds = atoi(argv[1]);
  iters = atoi(argv[2]);
  for (int r = 0; r < rounds; r++) {
    double b = native(), v;
    if ((v = notif(0)) < 0) return 3;
    printf("notif-recv %.1f %.1f\n", b, v);
    b = native();
    if ((v = notif(1)) < 0) return 3;
    printf("notif-poll %.1f %.1f\n", b, v);
    b = native();
    if ((v = traced(0)) < 0) return 4;
    printf("ptrace-stop %.1f %.1f\n", b, v);
    b = native();
    if ((v = traced(1)) < 0) return 4;
    printf("ptrace-inject %.1f %.1f\n", b, v);
    b = native();
    if ((v = proc_fd()) < 0) return 5;
    printf("proc-fd %.1f %.1f\n", b, v);
    fflush(stdout);
  }
  return 0;
}
