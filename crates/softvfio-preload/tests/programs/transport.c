/* The transport of forwarded calls after the keeper hand-off (preload,
 * docs/DESIGN.md section 5): threads calling at once, signals during the
 * wait, callers killed mid-call, the keeper killed while callers wait.
 * usage: transport <case> /dev/vfio/<group> <bdf> <spin ns|default>
 * Each case first hands the engine off (a fork with the files open, the
 * child exits at once), then prints "name value" lines. */
#define _GNU_SOURCE
#include "vfio_common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>

#define EDU_IDENT 0x010000edu

static int devfd = -1, cont = -1;
static uint64_t bar0;

/* Closes the program's VFIO files (the end report then lists nothing). */
static void close_all(void) {
  close(devfd);
  close(cont);
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void setup(char **argv) {
  int g;
  cont = open_container(argv[2], &g);
  devfd = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[3]);
  if (devfd < 0) die("GET_DEVICE_FD");
  close(g); /* the device and the container hold the group */
  struct vfio_region_info ri = {.argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX};
  if (ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("GET_REGION_INFO");
  bar0 = ri.offset;
  /* The keeper's spinning (inherited by the keeper at the hand-off). */
  if (strcmp(argv[4], "default")) setenv("SOFTVFIO_KEEPER_SPIN_NS", argv[4], 1);
  fflush(stdout);
  pid_t c = fork();
  if (c < 0) die("fork");
  if (c == 0) _exit(0);
  if (waitpid(c, NULL, 0) != c) die("waitpid");
}

/* 0 when the ident register reads right, else the errno (or -1). */
static int read_ident(void) {
  uint32_t v = 0;
  ssize_t n = pread(devfd, &v, 4, bar0);
  if (n != 4) return n < 0 ? errno : -1;
  return v == EDU_IDENT ? 0 : -1;
}

/* One 4 KiB MAP_DMA + UNMAP_DMA of `page` at `iova`: 0, or the errno. */
static int map_unmap(char *page, uint64_t iova) {
  int r = map(cont, iova, page, PG);
  return r ? r : unmap(cont, iova, PG);
}

static char *new_page(void) {
  char *p = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  memset(p, 1, PG);
  return p;
}

/* Mappings of the keeper connection's shared area in this process. */
static int areas_mapped(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return -1;
  char line[512];
  int n = 0;
  while (fgets(line, sizeof line, f))
    if (strstr(line, "memfd:softvfio-channel")) n++;
  fclose(f);
  return n;
}

/* ---- threads of one process calling at once ---- */
#define THREADS 4
#define CALLS 1500
static int wrong[THREADS];

static void *caller(void *arg) {
  long t = (long)arg;
  char *page = new_page();
  for (int i = 0; i < CALLS; i++) {
    if (read_ident()) wrong[t]++;
    if (i % 8 == 0 && map_unmap(page, 0x1000000 + t * 0x100000 + (i % 64) * PG)) wrong[t]++;
  }
  return NULL;
}

static int case_threads(char **argv) {
  setup(argv);
  /* The calls go through the shared area: one mapping; a forked child
   * drops its copy of its parent's and makes its own. */
  printf("areas_mapped %d\n", areas_mapped());
  pid_t c = fork();
  if (c == 0) {
    int ok = read_ident() == 0;
    printf("child_areas_mapped %d %s\n", areas_mapped(), ok ? "ok" : "wrong");
    fflush(stdout);
    _exit(0);
  }
  waitpid(c, NULL, 0);
  pthread_t th[THREADS];
  for (long t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, caller, (void *)t);
  int bad = 0;
  for (int t = 0; t < THREADS; t++) {
    pthread_join(th[t], NULL);
    bad += wrong[t];
  }
  printf("threads_wrong %d\n", bad);
  close_all();
  return 0;
}

/* ---- a signal during the wait ---- */
static volatile sig_atomic_t signals;
static void on_alarm(int s) {
  (void)s;
  signals++;
}

static int case_signal(char **argv) {
  setup(argv);
  struct sigaction sa = {0};
  sa.sa_handler = on_alarm; /* no SA_RESTART: a wait must resume by itself */
  sigaction(SIGALRM, &sa, NULL);
  struct itimerval it = {{0, 200}, {0, 200}};
  setitimer(ITIMER_REAL, &it, NULL);
  char *page = new_page();
  int bad = 0, eintr = 0;
  for (int i = 0; i < 6000; i++) {
    int r = read_ident();
    if (r == EINTR) eintr++;
    else if (r) bad++;
    if (i % 8 == 0) {
      r = map_unmap(page, 0x2000000);
      if (r == EINTR) eintr++;
      else if (r) bad++;
    }
  }
  struct itimerval off = {{0, 0}, {0, 0}};
  setitimer(ITIMER_REAL, &off, NULL);
  printf("signal_wrong %d\n", bad);
  printf("signal_eintr %d\n", eintr);
  printf("signal_delivered %s\n", signals > 100 ? "yes" : "no");
  close_all();
  return 0;
}

/* ---- callers SIGKILLed mid-call ---- */
static int case_caller_killed(char **argv) {
  setup(argv);
  int kills = 0;
  for (int k = 0; k < 12; k++) {
    pid_t c = fork();
    if (c < 0) die("fork");
    if (c == 0) {
      char *page = new_page();
      for (uint64_t i = 0;; i++) {
        read_ident();
        map_unmap(page, 0x3000000 + (i % 16) * PG);
      }
    }
    usleep(5000 + k * 1700);
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    kills++;
  }
  char *page = new_page();
  double t0 = now();
  int r = read_ident();
  printf("killed_callers %d\n", kills);
  printf("after_kills_read %s\n", r ? "wrong" : "ok");
  printf("after_kills_map_unmap %d\n", map_unmap(page, 0x5000000));
  printf("after_kills_prompt %s\n", now() - t0 < 1.0 ? "yes" : "no");
  /* What a killed child had mapped stays in the shared container, as on
   * Linux: gone with this unmap. */
  printf("after_kills_unmap_left %d\n", unmap(cont, 0x3000000, 16 * PG));
  close_all();
  return 0;
}

/* ---- the keeper killed while callers wait ---- */
/* The keeper: the process holding the listening socket whose abstract
 * address this process was given (SOFTVFIO_KEEPER), found by its inode in
 * /proc/net/unix and then among the processes' descriptors. */
static pid_t find_keeper(void) {
  const char *addr = getenv("SOFTVFIO_KEEPER");
  if (!addr) return -1;
  FILE *f = fopen("/proc/net/unix", "r");
  if (!f) return -1;
  char line[512], want[300], link[64];
  snprintf(want, sizeof want, "@%s", addr);
  unsigned long inode = 0;
  while (fgets(line, sizeof line, f)) {
    char path[300] = {0};
    unsigned long ino;
    if (sscanf(line, "%*s %*s %*s %*s %*s %*s %lu %299s", &ino, path) == 2 && !strcmp(path, want))
      inode = ino;
  }
  fclose(f);
  if (!inode) return -1;
  snprintf(want, sizeof want, "socket:[%lu]", inode);
  DIR *d = opendir("/proc");
  if (!d) return -1;
  struct dirent *e;
  pid_t found = -1;
  while (found < 0 && (e = readdir(d))) {
    pid_t pid = atoi(e->d_name);
    if (pid <= 0 || pid == getpid()) continue;
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/fd", pid);
    DIR *fds = opendir(dir);
    if (!fds) continue;
    struct dirent *fe;
    while (found < 0 && (fe = readdir(fds))) {
      char path[384];
      snprintf(path, sizeof path, "%s/%s", dir, fe->d_name);
      ssize_t n = readlink(path, link, sizeof link - 1);
      if (n > 0) {
        link[n] = 0;
        if (!strcmp(link, want)) found = pid;
      }
    }
    closedir(fds);
  }
  closedir(d);
  return found;
}

static volatile int waiter_errno = -2;
static volatile double waiter_end;
static void *waiter(void *arg) {
  (void)arg;
  char *page = new_page();
  for (;;) {
    int r = read_ident();
    if (!r) r = map_unmap(page, 0x4000000);
    if (r) {
      waiter_errno = r;
      waiter_end = now();
      return NULL;
    }
  }
}

static int case_keeper_killed(char **argv) {
  setup(argv);
  alarm(20); /* a hang is a failure, not a stuck test */
  pid_t keeper = find_keeper();
  printf("keeper_found %s\n", keeper > 0 ? "yes" : "no");
  if (keeper <= 0) return 0;
  pthread_t th;
  pthread_create(&th, NULL, waiter, NULL);
  usleep(50000);
  double t0 = now();
  kill(keeper, SIGKILL);
  pthread_join(th, NULL);
  printf("waiting_caller_gets %s\n", waiter_errno == EIO ? "EIO" : "other");
  printf("waiting_caller_prompt %s\n", waiter_end - t0 < 1.0 ? "yes" : "no");
  printf("next_call_gets %s\n", read_ident() == EIO ? "EIO" : "other");
  fflush(stdout);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 5) return 2;
  if (!strcmp(argv[1], "threads")) return case_threads(argv);
  if (!strcmp(argv[1], "signal")) return case_signal(argv);
  if (!strcmp(argv[1], "caller_killed")) return case_caller_killed(argv);
  if (!strcmp(argv[1], "keeper_killed")) return case_keeper_killed(argv);
  return 2;
}
