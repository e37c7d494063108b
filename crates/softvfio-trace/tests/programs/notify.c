/* Calls served through seccomp user notification (tests/notify.rs): opens,
 * ioctls the test names, pread/pwrite, descriptor installation by ADDFD,
 * from several threads and a forked child, mixed with ptrace-served calls.
 * Prints "key value" lines. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define IO(n) ((0x3b << 8) | (n))
static void out(const char *k, long v) { printf("%s %ld\n", k, v); fflush(stdout); }

static int g;

static void *reader(void *arg) {
  long bad = 0;
  for (int i = 0; i < 500; i++) {
    char b[4] = {0};
    if (pread(g, b, 4, 10) != 4 || memcmp(b, "hell", 4)) bad++;
  }
  return (void *)bad;
}

int main(void) {
  g = open("/dev/vfio/3", O_RDWR);
  struct stat st;
  out("group_fd_ok", g >= 0);
  out("is_socket", fstat(g, &st) == 0 && S_ISSOCK(st.st_mode));
  out("group_cloexec", (fcntl(g, F_GETFD) & FD_CLOEXEC) != 0);
  int gc = open("/dev/vfio/3", O_RDWR | O_CLOEXEC);
  out("group_o_cloexec", gc >= 0 && (fcntl(gc, F_GETFD) & FD_CLOEXEC) != 0);
  out("objects_differ", ioctl(g, IO(103)) != ioctl(gc, IO(103)));
  close(gc);
  errno = 0;
  out("enoent", open("/dev/vfio/4", O_RDWR) == -1 && errno == ENOENT);
  out("api", ioctl(g, IO(100)));
  struct { uint32_t argsz, in; uint64_t out; } rw = { sizeof rw, 21, 0 };
  out("rw_ret", ioctl(g, IO(101), &rw));
  out("rw_out", (long)rw.out);
  errno = 0;
  out("rw_efault", ioctl(g, IO(101), (void *)8) == -1 && errno == EFAULT);
  /* 112 injects 100 getpids: nothing can be injected in a notified call. */
  out("inject_refused", ioctl(g, IO(112)));
  out("pwrite", pwrite(g, "hello", 5, 10));
  char b[8] = {0};
  out("pread", pread(g, b, 5, 10));
  out("pread_match", memcmp(b, "hello", 5) == 0);
  errno = 0;
  void *volatile unmapped = (void *)1; /* hidden from gcc's bounds check */
  out("pread_efault", pread(g, unmapped, 4, 0) == -1 && errno == EFAULT);
  errno = 0;
  out("pread_negative", pread(g, b, 4, -1) == -1 && errno == EINVAL);
  char v1[2], v2[3];
  struct iovec iov[2] = {{v1, 2}, {v2, 3}};
  out("preadv", preadv(g, iov, 2, 10));
  out("preadv_match", memcmp(v1, "he", 2) == 0 && memcmp(v2, "llo", 3) == 0);
  /* A device descriptor installed by ADDFD from a notified ioctl. */
  int d = ioctl(g, IO(116));
  out("devfd_ok", d > g);
  out("devfd_cloexec", d >= 0 && (fcntl(d, F_GETFD) & FD_CLOEXEC) != 0);
  out("devfd_is_device", ioctl(d, IO(105))); /* at a ptrace stop */
  out("object_of_fd", ioctl(g, IO(117), &d) == ioctl(d, IO(103)));
  /* A synthesized file. */
  int s = open("/proc/self/status", O_RDONLY);
  char text[8192] = {0};
  ssize_t n = s >= 0 ? read(s, text, sizeof text - 1) : -1;
  out("status_vmlck", n > 0 && strstr(text, "VmLck:\t    4242 kB") != NULL);
  close(s);
  /* Not ours: the kernel runs it (SECCOMP_USER_NOTIF_FLAG_CONTINUE). */
  char path[] = "/tmp/softvfio-notify-XXXXXX";
  int f = mkstemp(path);
  int f2 = f >= 0 ? open(path, O_RDWR) : -1;
  ssize_t w = f2 >= 0 ? pwrite(f2, "plain", 5, 3) : -1;
  char p[6] = {0};
  out("plain_file", w == 5 && pread(f, p, 5, 3) == 5 && memcmp(p, "plain", 5) == 0);
  unlink(path);
  close(f);
  close(f2);
  /* Threads, all served at once. */
  pthread_t th[4];
  long bad = 0;
  for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, reader, NULL);
  for (int i = 0; i < 4; i++) {
    void *r;
    pthread_join(th[i], &r);
    bad += (long)r;
  }
  out("threads_bad", bad);
  /* A forked child's notifications. */
  pid_t c = fork();
  if (c == 0) {
    char cb[5] = {0};
    _exit(pread(g, cb, 5, 10) == 5 && memcmp(cb, "hello", 5) == 0 ? 7 : 1);
  }
  int wst = 0;
  waitpid(c, &wst, 0);
  out("child_status", WIFEXITED(wst) ? WEXITSTATUS(wst) : -1);
  long before = ioctl(d, IO(102));
  close(d);
  out("released_by_close", ioctl(g, IO(102)) - before);
  out("done", 1);
  return 0;
}
