/* softvfio bench ipc-floor: what one request/answer round trip between two
 * processes costs on this machine, per transport, next to a native system
 * call (getppid) measured in the same round. These are the floors of a
 * forwarded call in preload mode after the keeper hand-off
 * (uapi-bar:preload-keeper). One line per round and kind:
 *   "<kind> <native getppid ns> <ns per round trip>"
 * kinds:
 *   seqpacket   a 64-byte record each way over a SOCK_SEQPACKET pair, both
 *               sides blocking in recv (the keeper's transport before)
 *   pipe        one byte each way over two pipes
 *   eventfd     an eventfd each way
 *   futex       a word in shared memory, both sides waiting in FUTEX_WAIT
 *               at once (no spinning)
 *   spin-futex  the same, each side spinning up to SPIN_NS first (the
 *               keeper's transport now)
 *   spin        both sides spinning without bound (the lower bound)
 * usage: ipc_floor ROUNDS ITERS */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SPIN_NS 5000.0

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

static void must(int ok, const char *what) {
  if (!ok) {
    perror(what);
    exit(1);
  }
}

static double seqpacket(void) {
  int sv[2];
  char buf[64] = {0};
  must(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0, "socketpair");
  pid_t c = fork();
  if (c == 0) {
    close(sv[0]);
    while (recv(sv[1], buf, sizeof buf, 0) > 0) send(sv[1], buf, sizeof buf, 0);
    _exit(0);
  }
  close(sv[1]);
  double t0 = now_ns();
  for (int i = 0; i < iters; i++) {
    send(sv[0], buf, sizeof buf, 0);
    recv(sv[0], buf, sizeof buf, 0);
  }
  double t = (now_ns() - t0) / iters;
  close(sv[0]);
  waitpid(c, NULL, 0);
  return t;
}

/* Two one-way channels (pipes or eventfds): a[0]/a[1] to the server,
 * b[0]/b[1] back. */
static double pair(int a[2], int b[2]) {
  uint64_t v = 1;
  pid_t c = fork();
  if (c == 0) {
    close(a[1]);
    close(b[0]);
    while (read(a[0], &v, 8) > 0) write(b[1], &v, 8);
    _exit(0);
  }
  close(a[0]);
  close(b[1]);
  double t0 = now_ns();
  for (int i = 0; i < iters; i++) {
    write(a[1], &v, 8);
    read(b[0], &v, 8);
  }
  double t = (now_ns() - t0) / iters;
  close(a[1]);
  close(b[0]);
  /* An eventfd has no end of file. */
  kill(c, SIGKILL);
  waitpid(c, NULL, 0);
  return t;
}

static double pipes(void) {
  int a[2], b[2];
  must(pipe(a) == 0 && pipe(b) == 0, "pipe");
  return pair(a, b);
}

static double eventfds(void) {
  /* One eventfd each way: both ends of a pair are the same descriptor. */
  int x = eventfd(0, 0), y = eventfd(0, 0);
  must(x >= 0 && y >= 0, "eventfd");
  int a[2] = {x, dup(x)}, b[2] = {dup(y), y};
  return pair(a, b);
}

/* The shared word: 1 a request for the server, 2 an answer, 3 the end. */
struct area {
  _Atomic uint32_t state;
  /* Per side (0 the server, 1 the client): in or entering FUTEX_WAIT. */
  _Atomic uint32_t waiting[2];
};

static void wake(struct area *a, int side) {
  if (atomic_load(&a->waiting[side]))
    syscall(SYS_futex, &a->state, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Waits until the state leaves `from`, spinning up to `spin_ns` first. */
static uint32_t await_change(struct area *a, int side, uint32_t from, double spin_ns) {
  uint32_t s;
  if (spin_ns > 0) {
    double t0 = now_ns();
    do {
      for (int i = 0; i < 64; i++) {
        s = atomic_load(&a->state);
        if (s != from) return s;
        __builtin_ia32_pause();
      }
    } while (now_ns() - t0 < spin_ns);
  }
  for (;;) {
    atomic_store(&a->waiting[side], 1);
    s = atomic_load(&a->state);
    if (s != from) break;
    syscall(SYS_futex, &a->state, FUTEX_WAIT, from, NULL, NULL, 0);
    s = atomic_load(&a->state);
    if (s != from) break;
  }
  atomic_store(&a->waiting[side], 0);
  return s;
}

static uint32_t spin_forever(struct area *a, uint32_t from) {
  uint32_t s;
  while ((s = atomic_load(&a->state)) == from) __builtin_ia32_pause();
  return s;
}

static double futexes(double spin_ns) {
  struct area *a = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  must(a != MAP_FAILED, "mmap");
  atomic_store(&a->state, 2);
  pid_t c = fork();
  if (c == 0) {
    for (;;) {
      uint32_t s = spin_ns < 0 ? spin_forever(a, 2) : await_change(a, 0, 2, spin_ns);
      if (s == 3) _exit(0);
      atomic_store(&a->state, 2);
      wake(a, 1);
    }
  }
  double t0 = now_ns();
  for (int i = 0; i < iters; i++) {
    atomic_store(&a->state, 1);
    wake(a, 0);
    if (spin_ns < 0)
      spin_forever(a, 1);
    else
      await_change(a, 1, 1, spin_ns);
  }
  double t = (now_ns() - t0) / iters;
  atomic_store(&a->state, 3);
  wake(a, 0);
  waitpid(c, NULL, 0);
  munmap(a, 4096);
  return t;
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 3;
  iters = argc > 2 ? atoi(argv[2]) : 5000;
  for (int r = 0; r < rounds; r++) {
    double b = native();
    printf("seqpacket %.1f %.1f\n", b, seqpacket());
    printf("pipe %.1f %.1f\n", b, pipes());
    printf("eventfd %.1f %.1f\n", b, eventfds());
    printf("futex %.1f %.1f\n", b, futexes(0));
    printf("spin-futex %.1f %.1f\n", b, futexes(SPIN_NS));
    if (getenv("IPC_FLOOR_SPIN")) printf("spin %.1f %.1f\n", b, futexes(-1));
    fflush(stdout);
  }
  return 0;
}
