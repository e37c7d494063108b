/* The stat family under the supervisor (tests/stat.rs): each system call
 * (stat, lstat, newfstatat, statx, fstat) made directly, on the toy
 * handler's VFIO cdev path (/dev/vfio/devices/vfio0, a character device
 * 250:0), on a descriptor of a device object, and on a regular file and a
 * symbolic link to it; then the error cases the kernel must answer.
 * Every buffer is filled with 0xaa first and printed whole in hex: the
 * bytes the call wrote, exactly.
 * usage: stat FILE LINK DIR NAME N   (DIR/NAME is FILE; N loop calls)
 * Prints "key ret errno hex" lines, then "loop_bad <count>" and
 * "threads_bad <count>" (four threads at once: the device descriptor's
 * fstat, the cdev path's stat, the file's fstat and stat, each checked). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <unistd.h>

#define IO(n) ((0x3b << 8) | (n))
#define CDEV "/dev/vfio/devices/vfio0"

static unsigned char buf[512];

static void show(const char *key, long r, size_t len) {
  printf("%s %ld %d ", key, r, r < 0 ? errno : 0);
  for (size_t i = 0; i < len; i++) printf("%02x", buf[i]);
  printf("\n");
  fflush(stdout);
}

/* Each call with a fresh 0xaa buffer; the result and the bytes. */
#define STAT(key, nr, ...)                          \
  do {                                              \
    memset(buf, 0xaa, sizeof buf);                  \
    errno = 0;                                      \
    long r_ = syscall(nr, __VA_ARGS__);             \
    show(key, r_, sizeof(struct stat));             \
  } while (0)
#define STATX(key, dirfd, path, flags)                                          \
  do {                                                                          \
    memset(buf, 0xaa, sizeof buf);                                              \
    errno = 0;                                                                  \
    long r_ = syscall(SYS_statx, dirfd, path, flags, STATX_BASIC_STATS, buf);   \
    show(key, r_, sizeof(struct statx));                                        \
  } while (0)
/* A call whose only answer is its result and errno. */
#define ERR(key, nr, ...)                                 \
  do {                                                    \
    errno = 0;                                            \
    long r_ = syscall(nr, __VA_ARGS__);                   \
    printf("%s %ld %d\n", key, r_, r_ < 0 ? errno : 0);   \
    fflush(stdout);                                       \
  } while (0)

static int dev_fd, file_fd;
static const char *file_path;
static ino_t file_ino;

/* One of four threads: each stat family answer checked, N times. */
static void *worker(void *arg) {
  long n = (long)arg, bad = 0;
  struct stat st;
  for (long i = 0; i < n; i++) {
    if (fstat(dev_fd, &st) || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(250, 0)) bad++;
    if (stat(CDEV, &st) || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(250, 0)) bad++;
    if (fstat(file_fd, &st) || !S_ISREG(st.st_mode) || st.st_ino != file_ino) bad++;
    if (stat(file_path, &st) || !S_ISREG(st.st_mode) || st.st_ino != file_ino) bad++;
  }
  return (void *)bad;
}

static volatile int race_fd = -1, race_stop;

/* Stats race_fd until told to stop, whatever it names. */
static void *spinner(void *arg) {
  (void)arg;
  struct stat st;
  while (!race_stop) fstat(race_fd, &st);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 6) return 2;
  const char *file = argv[1], *link = argv[2], *dir = argv[3], *name = argv[4];
  int n = atoi(argv[5]);
  void *volatile bad = (void *)8; /* hidden from gcc's bounds checks */

  /* The cdev path, every call and every way to name it. */
  STAT("cdev_stat", SYS_stat, CDEV, buf);
  STAT("cdev_lstat", SYS_lstat, CDEV, buf);
  STAT("cdev_newfstatat", SYS_newfstatat, AT_FDCWD, CDEV, buf, 0);
  STAT("cdev_newfstatat_nofollow", SYS_newfstatat, AT_FDCWD, CDEV, buf, AT_SYMLINK_NOFOLLOW);
  STATX("cdev_statx", AT_FDCWD, CDEV, 0);
  STATX("cdev_statx_nofollow", AT_FDCWD, CDEV, AT_SYMLINK_NOFOLLOW);
  int devdir = open("/dev", O_PATH | O_DIRECTORY);
  STAT("cdev_newfstatat_dirfd", SYS_newfstatat, devdir, "vfio/devices/../devices/vfio0", buf, 0);
  STATX("cdev_statx_dirfd", devdir, "vfio/devices/vfio0", 0);
  int back = open(".", O_PATH | O_DIRECTORY);
  if (chdir("/dev") == 0) {
    STAT("cdev_stat_cwd", SYS_stat, "vfio//devices/./vfio0", buf);
    STAT("cdev_newfstatat_cwd", SYS_newfstatat, AT_FDCWD, "vfio/devices/vfio0", buf, 0);
    if (fchdir(back)) return 3;
  }
  close(back);
  close(devdir);

  /* A descriptor of a device object (installed by the handler). */
  int g = open("/dev/vfio/3", O_RDWR);
  int d = ioctl(g, IO(116));
  printf("device_fd_ok %d\n", g >= 0 && d > g);
  STAT("dev_fstat", SYS_fstat, d, buf);
  STAT("dev_newfstatat_empty", SYS_newfstatat, d, "", buf, AT_EMPTY_PATH);
  STATX("dev_statx_empty", d, "", AT_EMPTY_PATH);
  /* The group is no character device: the kernel's answer (a socket). */
  memset(buf, 0, sizeof buf);
  long r = syscall(SYS_fstat, g, buf);
  printf("group_fstat %ld %d\n", r, S_ISSOCK(((struct stat *)buf)->st_mode));

  /* The regular file and the link: the kernel's answers. */
  STAT("file_stat", SYS_stat, file, buf);
  STAT("file_lstat", SYS_lstat, file, buf);
  STAT("file_newfstatat", SYS_newfstatat, AT_FDCWD, file, buf, 0);
  STATX("file_statx", AT_FDCWD, file, 0);
  int dfd = open(dir, O_PATH | O_DIRECTORY);
  STAT("file_newfstatat_dirfd", SYS_newfstatat, dfd, name, buf, 0);
  STATX("file_statx_dirfd", dfd, name, 0);
  int f = open(file, O_RDONLY);
  STAT("file_fstat", SYS_fstat, f, buf);
  STAT("file_newfstatat_empty", SYS_newfstatat, f, "", buf, AT_EMPTY_PATH);
  STATX("file_statx_empty", f, "", AT_EMPTY_PATH);
  STAT("link_stat", SYS_stat, link, buf);
  STAT("link_lstat", SYS_lstat, link, buf);
  STAT("link_newfstatat_nofollow", SYS_newfstatat, AT_FDCWD, link, buf, AT_SYMLINK_NOFOLLOW);
  STATX("link_statx_nofollow", AT_FDCWD, link, AT_SYMLINK_NOFOLLOW);

  /* Errors. Ours with a bad buffer: EFAULT, as the kernel's copy_to_user. */
  ERR("cdev_stat_bad_buffer", SYS_stat, CDEV, bad);
  ERR("cdev_statx_bad_buffer", SYS_statx, AT_FDCWD, CDEV, 0, STATX_BASIC_STATS, bad);
  ERR("dev_fstat_bad_buffer", SYS_fstat, d, bad);
  /* The kernel's: bad path pointers, bad buffers, bad descriptors, bad
   * flags, names that are not ours. */
  ERR("bad_path_stat", SYS_stat, bad, buf);
  ERR("bad_path_lstat", SYS_lstat, bad, buf);
  ERR("bad_path_newfstatat", SYS_newfstatat, AT_FDCWD, bad, buf, 0);
  ERR("bad_path_statx", SYS_statx, AT_FDCWD, bad, 0, STATX_BASIC_STATS, buf);
  ERR("file_stat_bad_buffer", SYS_stat, file, bad);
  ERR("file_fstat_bad_buffer", SYS_fstat, f, bad);
  ERR("fstat_ebadf", SYS_fstat, 9999, buf);
  ERR("fstat_negative", SYS_fstat, -1, buf);
  ERR("newfstatat_empty_without_flag", SYS_newfstatat, d, "", buf, 0);
  ERR("newfstatat_bad_dirfd", SYS_newfstatat, 9999, "dev/vfio/devices/vfio0", buf, 0);
  ERR("statx_bad_dirfd", SYS_statx, 9999, "dev/vfio/devices/vfio0", 0, STATX_BASIC_STATS, buf);
  ERR("newfstatat_bad_flags", SYS_newfstatat, AT_FDCWD, file, buf, 0x40000000);
  ERR("statx_bad_flags", SYS_statx, AT_FDCWD, file, 0x40000000, STATX_BASIC_STATS, buf);
  /* The same for an open of one of the handler's paths. */
  errno = 0;
  r = syscall(SYS_openat, 9999, "dev/vfio/vfio", O_RDWR);
  printf("openat_bad_dirfd %ld %d\n", r, r < 0 ? errno : 0);
  ERR("cdev_leading_zero", SYS_stat, "/dev/vfio/devices/vfio01", buf);
  ERR("cdev_other", SYS_stat, "/dev/vfio/devices/vfio9", buf);

  /* The loop: n fstat of the file, n newfstatat and n statx of its path. */
  struct stat want, st;
  long bad_count = 0;
  if (fstat(f, &want)) bad_count++;
  for (int i = 0; i < n; i++) {
    if (syscall(SYS_fstat, f, &st) || st.st_ino != want.st_ino) bad_count++;
    if (syscall(SYS_newfstatat, AT_FDCWD, file, &st, 0) || st.st_ino != want.st_ino) bad_count++;
    struct statx sx;
    if (syscall(SYS_statx, AT_FDCWD, file, 0, STATX_INO, &sx) || sx.stx_ino != want.st_ino) bad_count++;
  }
  printf("loop_bad %ld\n", bad_count);
  dev_fd = d;
  file_fd = f;
  file_path = file;
  file_ino = want.st_ino;
  pthread_t th[4];
  long threads_bad = 0;
  for (int i = 0; i < 4; i++)
    if (pthread_create(&th[i], NULL, worker, (void *)(long)(n / 4))) threads_bad++;
  for (int i = 0; i < 4; i++) {
    void *r = NULL;
    pthread_join(th[i], &r);
    threads_bad += (long)r;
  }
  printf("threads_bad %ld\n", threads_bad);
  /* A number that goes from a plain file to the device and back, closed
   * and taken again by dup, while another thread stats it all along: each
   * fstat right after the dup must see what the number names now. */
  int spare = dup(f);
  race_fd = spare;
  pthread_t spin;
  long reuse_bad = spare < 0 || pthread_create(&spin, NULL, spinner, NULL);
  for (int i = 0; i < n / 4 && !reuse_bad; i++) {
    close(spare);
    if (dup(d) != spare) reuse_bad++;
    if (fstat(spare, &st) || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(250, 0)) reuse_bad++;
    close(spare);
    if (dup(f) != spare) reuse_bad++;
    if (fstat(spare, &st) || !S_ISREG(st.st_mode) || st.st_ino != want.st_ino) reuse_bad++;
  }
  race_stop = 1;
  if (spare >= 0) pthread_join(spin, NULL);
  close(spare);
  printf("reuse_bad %ld\n", reuse_bad);
  close(f);
  close(dfd);
  close(d);
  close(g);
  return 0;
}
