/* Calls of the i386 ABI (int $0x80) of a 64-bit program on the toy
 * handler's objects (tests/i386.rs): VFIO ioctls served as the x86-64
 * ones, injections at an i386 stop, a call the kernel runs after the
 * supervisor injected at its stop (run again from its int $0x80), and the
 * descriptor calls. Prints "key value" lines. Static, not PIE: the 32-bit
 * pointers name globals below 4 GiB. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <string.h>
#include <unistd.h>

#define IO(n) ((';' << 8) | (n))

static long i80(long nr, long a, long b, long c) {
  long r;
  __asm__ volatile("int $0x80"
                   : "=a"(r)
                   : "a"(nr), "b"(a), "c"(b), "d"(c)
                   : "r8", "r9", "r10", "r11", "memory", "cc");
  return r;
}

static struct { uint32_t argsz, in; uint64_t out; } rw = {16, 21, 0};

static void out(const char *k, long v) { printf("%s %ld\n", k, v); }

static int plain(void) {
  char path[] = "/tmp/softvfio-i386-XXXXXX";
  int f = mkstemp(path);
  unlink(path);
  return f;
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  int c = open("/dev/vfio/vfio", O_RDWR);
  out("below_4g", (uintptr_t)&rw < (1ull << 32));
  out("ioctl32_api", i80(54, c, IO(100), 0));
  out("ioctl32_rw", i80(54, c, IO(101), (long)&rw));
  out("ioctl32_rw_out", (long)rw.out);
  out("ioctl32_injected", i80(54, c, IO(112), 0));
  out("ioctl32_unknown", i80(54, c, IO(200), 0));
  out("ioctl32_fioclex", i80(54, c, 0x5451, 0));
  out("ioctl32_cloexec", fcntl(c, F_GETFD));

  /* An object's last descriptor replaced by a native dup2 (stopped only
   * with a listener): without one, its release comes at the next stop,
   * an i386 close of a plain file, whose release injects: the close then
   * runs from its int $0x80 again. */
  int x = open("/dev/vfio/vfio", O_RDWR);
  int f = plain();
  int g = plain();
  out("released_before", i80(54, c, IO(102), 0));
  dup2(f, x);
  out("close32_after_injection", i80(6, g, 0, 0));
  out("close32_closed", fcntl(g, F_GETFD) < 0 ? -errno : 0);
  out("released_after", i80(54, c, IO(102), 0));
  /* The same with an i386 VFIO ioctl on a plain file: its own answer. */
  int y = open("/dev/vfio/vfio", O_RDWR);
  dup2(f, y);
  out("ioctl32_file_after_injection", i80(54, f, IO(100), 0));
  out("released_last", i80(54, c, IO(102), 0));

  /* Descriptor calls on objects, then the number reused. */
  int z = dup(c);
  out("native_before", ioctl(z, IO(100)));
  out("close32", i80(6, z, 0, 0));
  int p[2];
  if (pipe(p) != 0) return 1;
  out("close32_reused", p[0] == z);
  out("close32_ioctl", ioctl(z, IO(100)) < 0 ? -errno : 0);
  close(p[0]);
  close(p[1]);
  z = dup(c);
  out("dup2_32", i80(63, f, z, 0) == z);
  out("dup2_32_ioctl", ioctl(z, IO(100)) < 0 ? -errno : 0);
  close(z);
  z = dup(c);
  out("dup3_32", i80(330, f, z, O_CLOEXEC) == z);
  out("dup3_32_cloexec", fcntl(z, F_GETFD));
  out("dup3_32_ioctl", ioctl(z, IO(100)) < 0 ? -errno : 0);
  close(z);
  z = dup(c);
  int w = dup(c);
  out("close_range32", i80(436, z, w, 0));
  out("close_range32_gone", fcntl(z, F_GETFD) < 0 && fcntl(w, F_GETFD) < 0);
  out("released_end", i80(54, c, IO(102), 0));
  printf("done\n");
  return 0;
}
