// Exercises the supervisor from inside a static program: handler objects,
// dup/close/release ordering, ioctl results and errno, pread/pwrite,
// synthesized /proc/self/status, injection, signals, fork, exec, threads.
// Prints one "key value" line per observation; the Rust test checks them.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define IO(n) _IO(0x3B, n)

static void out(const char *k, long v) { printf("%s %ld\n", k, v); fflush(stdout); }

struct rw { uint32_t argsz, in; uint64_t out; };

static long status_vmlck(const char *path) {
  FILE *f = fopen(path, "r");
  char line[256]; long v = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "VmLck:", 6)) v = strtol(line + 6, NULL, 10);
  if (f) fclose(f);
  return v;
}

static volatile int sig_count; static volatile int sig_code, sig_val, sig_pid;
static void on_sig(int s, siginfo_t *si, void *uc) {
  (void)s; (void)uc;
  sig_count++; sig_code = si->si_code; sig_val = si->si_value.sival_int; sig_pid = si->si_pid;
}

static int g;
static void *thread_main(void *arg) {
  long base = (long)arg, bad = 0;
  for (int i = 0; i < 200; i++) {
    struct rw s = { 16, (uint32_t)(base + i), 0 };
    if (ioctl(g, IO(101), &s) != 0 || s.out != (uint64_t)(base + i) * 2 + 16) bad++;
  }
  return (void *)bad;
}

int main(void) {
  g = open("/dev/vfio/3", O_RDWR);
  out("group_fd_ok", g >= 0);
  int c = open("/dev/vfio/vfio", O_RDWR);
  out("container_fd_ok", c >= 0);
  struct stat st;
  out("fstat_ok", fstat(c, &st) == 0);
  out("is_socket", S_ISSOCK(st.st_mode));
  out("api", ioctl(c, IO(100)));
  errno = 0;
  out("unknown_ret", ioctl(c, IO(99 + 100)));
  out("unknown_errno", errno);
  struct rw s = { 16, 21, 0 };
  out("rw_ret", ioctl(c, IO(101), &s));
  out("rw_out", (long)s.out);
  errno = 0;
  out("badptr_ret", ioctl(c, IO(101), (void *)8));
  out("badptr_errno", errno);
  int nread = -1;
  out("fionread", ioctl(c, FIONREAD, &nread));
  out("fionread_val", nread);
  char rb[4];
  out("read_eof", read(c, rb, sizeof rb));

  // dup, release ordering
  long cid = ioctl(c, IO(103));
  long gid = ioctl(g, IO(103));
  out("ids_differ", cid != gid);
  int d = dup(c);
  out("dup_same_obj", ioctl(d, IO(103)) == cid);
  long rel0 = ioctl(g, IO(102));
  close(c);
  out("released_after_first_close", ioctl(g, IO(102)) - rel0);
  int d2 = fcntl(d, F_DUPFD_CLOEXEC, 100);
  out("dupfd_100", d2 >= 100);
  out("dupfd_same_obj", ioctl(d2, IO(103)) == cid);
  close(d);
  out("released_after_second_close", ioctl(g, IO(102)) - rel0);
  close(d2);
  out("released_after_last_close", ioctl(g, IO(102)) - rel0);
  errno = 0;
  out("ioctl_closed_errno", (ioctl(d2, IO(100)), errno));
  // close + immediate reopen: the handler saw the release before the open
  c = open("/dev/vfio/vfio", O_RDWR);
  long r1 = ioctl(g, IO(102));
  close(c);
  c = open("/dev/vfio/vfio", O_RDWR);
  out("reopen_saw_release", ioctl(c, IO(104)) - r1);
  // dup2 over one of ours: found at the next stop
  int other = open("/dev/vfio/vfio", O_RDWR);
  long r2 = ioctl(g, IO(102));
  int devnull = open("/dev/null", O_RDONLY);
  dup2(devnull, other);
  close(devnull);
  out("released_after_dup2", ioctl(g, IO(102)) - r2);
  close(other);

  // install_object from an ioctl (like VFIO_GROUP_GET_DEVICE_FD)
  int dev = ioctl(g, IO(116));
  out("devfd_ok", dev >= 0);
  out("devfd_cloexec", (fcntl(dev, F_GETFD) & FD_CLOEXEC) != 0);
  out("devfd_is_device", ioctl(dev, IO(105)));
  // object_of_fd (like VFIO_GROUP_SET_CONTAINER)
  out("object_of_fd", ioctl(g, IO(117), &c) == ioctl(c, IO(103)));
  int notours = 0;
  errno = 0;
  out("object_of_fd_stdin_errno", (ioctl(g, IO(117), &notours), errno));
  close(dev);

  // open errors decided by the handler
  errno = 0;
  out("open4", open("/dev/vfio/4", O_RDWR));
  out("open4_errno", errno);
  errno = 0;
  out("openat_rel", ({ int dfd = open("/dev", O_RDONLY | O_DIRECTORY);
                       int r = dfd < 0 ? -2 : openat(dfd, "vfio/../vfio/./3", O_RDWR);
                       long k = r >= 0 ? ioctl(r, IO(105)) : -3; if (r >= 0) close(r); if (dfd >= 0) close(dfd); k; }));

  // pread/pwrite
  out("pwrite", pwrite(g, "hello", 5, 10));
  char buf[32] = {0};
  out("pread", pread(g, buf, 5, 10));
  out("pread_match", !memcmp(buf, "hello", 5));
  out("pread_eof", pread(g, buf, 16, 4096));
  out("pread_short", pread(g, buf, 16, 4090));
  memset(buf, 0, sizeof buf);
  struct iovec iov[2] = { { buf, 2 }, { buf + 8, 3 } };
  out("preadv", preadv(g, iov, 2, 10));
  out("preadv_match", !memcmp(buf, "he", 2) && !memcmp(buf + 8, "llo", 3));
  struct iovec wv[2] = { { "ab", 2 }, { "cd", 2 } };
  out("pwritev", pwritev(g, wv, 2, 100));
  memset(buf, 0, sizeof buf);
  pread(g, buf, 4, 100);
  out("pwritev_match", !memcmp(buf, "abcd", 4));
  errno = 0;
  out("pread_efault", pread(g, (void *)8, 4, 0));
  out("pread_efault_errno", errno);
  errno = 0;
  out("pread_container_errno", (pread(c, buf, 4, 0), errno));
  errno = 0;
  out("pread_negative_errno", (pread(g, buf, 4, -5), errno));

  // /proc/self/status served by the handler
  out("vmlck_self", status_vmlck("/proc/self/status"));
  out("vmlck_thread_self", status_vmlck("/proc/thread-self/status"));
  {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256]; int has_name = 0;
    while (f && fgets(line, sizeof line, f)) if (!strncmp(line, "Name:", 5)) has_name = 1;
    if (f) fclose(f);
    out("status_has_name", has_name);
    int sfd = open("/proc/self/status", O_RDONLY);
    errno = 0;
    out("status_write_fails", write(sfd, "x", 1) < 0);
    close(sfd);
  }
  out("stat_not_claimed", ({ FILE *f = fopen("/proc/self/stat", "r"); int ok = f != NULL; if (f) fclose(f); ok; }));

  // ordinary file IO is untouched
  {
    char path[] = "/tmp/svt-basic-XXXXXX";
    int fd = mkstemp(path);
    int ok = fd >= 0 && write(fd, "data123", 7) == 7;
    memset(buf, 0, sizeof buf);
    ok = ok && pread(fd, buf, 7, 0) == 7 && !memcmp(buf, "data123", 7);
    ok = ok && close(fd) == 0;
    // A path the handler looks at, injects into, and then declines.
    char p2[64];
    snprintf(p2, sizeof p2, "/tmp/svt-inject-then-pass-%d", getpid());
    FILE *w = fopen(p2, "w");
    if (w) { fputs("passed", w); fclose(w); }
    int fd2 = open(p2, O_RDONLY);
    memset(buf, 0, sizeof buf);
    out("inject_then_pass_ok", fd2 >= 0 && read(fd2, buf, 6) == 6 && !memcmp(buf, "passed", 6));
    if (fd2 >= 0) close(fd2);
    unlink(p2);
    unlink(path);
    out("file_io_ok", ok);
  }

  // injection: mlock/munlock in this process, many injections per call
  {
    char *m = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(m, 1, 65536);
    out("mlock_vmlck", ioctl(g, IO(110), m));
    out("munlock_vmlck", ioctl(g, IO(111), m));
    out("inject_many", ioctl(g, IO(112)));
    out("injector_other_thread_refused", ioctl(g, IO(118)));
  }

  // scratch memory when the stack pointer is at the bottom of a mapping
  {
    char *two = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(two, 4096);
    char *pg = two + 4096;
    static const char path[] = "/dev/vfio/vfio";
    long r;
    __asm__ volatile("mov %%rsp, %%r12\n\t"
                     "mov %[sp], %%rsp\n\t"
                     "syscall\n\t"
                     "mov %%r12, %%rsp"
                     : "=a"(r)
                     : "a"((long)SYS_open), "D"(path), "S"((long)O_RDWR), [sp] "r"(pg + 64)
                     : "rcx", "r11", "r12", "memory");
    out("tiny_stack_open_ok", r >= 0 && ioctl((int)r, IO(100)) == 0);
    if (r >= 0) close((int)r);
  }

  // signals dequeued during an injection are delivered once, unchanged
  {
    struct sigaction sa = { 0 };
    sa.sa_sigaction = on_sig;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    sig_count = 0;
    out("sigqueue_ioctl", ioctl(g, IO(114)));
    out("sigqueue_count", sig_count);
    out("sigqueue_code_ok", sig_code == SI_QUEUE);
    out("sigqueue_value", sig_val);
    sig_count = 0;
    out("tkill_ioctl", ioctl(g, IO(115)));
    out("tkill_count", sig_count);
    out("tkill_code_ok", sig_code == SI_TKILL);
    out("tkill_pid_ok", sig_pid == getppid());
    sig_count = 0;
    kill(getpid(), SIGUSR1);
    out("plain_signal_count", sig_count);
  }

  // fork: the child uses the inherited descriptor; its exit releases nothing
  {
    long rb0 = ioctl(g, IO(102));
    pid_t p = fork();
    if (p == 0) {
      long v = ioctl(g, IO(100));
      long id2 = ioctl(g, IO(103));
      _exit(v == 0 && id2 == gid ? 0 : 1);
    }
    int wst;
    waitpid(p, &wst, 0);
    out("fork_child_ok", WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    out("fork_no_release", ioctl(g, IO(102)) - rb0);
    // exec in a child (a dynamic binary, passing through)
    p = fork();
    if (p == 0) {
      execl("/bin/sh", "sh", "-c", "exit 3", (char *)NULL);
      _exit(99);
    }
    waitpid(p, &wst, 0);
    out("child_exec_status", WIFEXITED(wst) ? WEXITSTATUS(wst) : -1);
    // posix_spawn: clone(CLONE_VM | CLONE_VFORK) + exec
    char *sargv[] = { "sh", "-c", "exit 4", NULL };
    extern char **environ;
    if (posix_spawn(&p, "/bin/sh", NULL, NULL, sargv, environ) == 0) {
      waitpid(p, &wst, 0);
      out("posix_spawn_status", WIFEXITED(wst) ? WEXITSTATUS(wst) : -1);
    } else {
      out("posix_spawn_status", -2);
    }
    // job control: a stopped child is seen stopped by its parent
    p = fork();
    if (p == 0) { raise(SIGSTOP); _exit(5); }
    waitpid(p, &wst, WUNTRACED);
    out("child_stopped", WIFSTOPPED(wst) && WSTOPSIG(wst) == SIGSTOP);
    kill(p, SIGCONT);
    waitpid(p, &wst, 0);
    out("child_cont_exit", WIFEXITED(wst) ? WEXITSTATUS(wst) : -1);
  }

  // threads
  {
    pthread_t th[4];
    for (long i = 0; i < 4; i++) pthread_create(&th[i], NULL, thread_main, (void *)(i * 1000));
    long bad = 0;
    for (int i = 0; i < 4; i++) { void *r; pthread_join(th[i], &r); bad += (long)r; }
    out("threads_bad", bad);
  }

  close(c);
  out("done", 1);
  return 0;
}
