/* fstat of a descriptor opened from a VFIO node answers as the node: for
 * /dev/vfio/vfio, a group, /dev/iommu and a device cdev, prints stat()'s
 * answer for the path (type, major:minor, permission bits, nlink, uid,
 * gid), and whether lstat, statx of the path, and fstat,
 * fstatat(AT_EMPTY_PATH) and statx(AT_EMPTY_PATH) of an opened descriptor
 * agree with it field by field (mode, rdev, ino, dev, nlink, uid, gid),
 * and the statx mask asked for STATX_BASIC_STATS.
 * With "fork": the same agreement of fstat and stat for the container
 * and the group in a forked child and in the parent after it (preload:
 * after the hand-off to the keeper).
 * usage: fd_stat [GROUP_PATH [fork]] */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

static int same(const struct stat *a, const struct stat *b) {
  return a->st_mode == b->st_mode && a->st_rdev == b->st_rdev && a->st_ino == b->st_ino &&
         a->st_dev == b->st_dev && a->st_nlink == b->st_nlink && a->st_uid == b->st_uid &&
         a->st_gid == b->st_gid;
}

static int same_x(const struct stat *a, const struct statx *x) {
  return a->st_mode == x->stx_mode && major(a->st_rdev) == x->stx_rdev_major &&
         minor(a->st_rdev) == x->stx_rdev_minor && a->st_ino == x->stx_ino &&
         major(a->st_dev) == x->stx_dev_major && minor(a->st_dev) == x->stx_dev_minor &&
         a->st_nlink == x->stx_nlink && a->st_uid == x->stx_uid && a->st_gid == x->stx_gid;
}

static void one(const char *tag, const char *path) {
  struct stat p, o;
  struct statx x;
  if (stat(path, &p)) {
    printf("%s stat %s\n", tag, strerror(errno));
    return;
  }
  printf("%s stat chr=%d %u:%u perm=%o nlink=%lu uid=%u gid=%u\n", tag, S_ISCHR(p.st_mode),
         major(p.st_rdev), minor(p.st_rdev), p.st_mode & 07777, (unsigned long)p.st_nlink,
         p.st_uid, p.st_gid);
  printf("%s lstat_same %d\n", tag, !lstat(path, &o) && same(&p, &o));
  memset(&x, 0, sizeof x);
  int r = statx(AT_FDCWD, path, 0, STATX_BASIC_STATS, &x);
  printf("%s statx_path_same %d mask=%#x\n", tag, !r && same_x(&p, &x), x.stx_mask);
  int fd = open(path, O_RDWR);
  if (fd < 0) {
    printf("%s open %s\n", tag, strerror(errno));
    return;
  }
  memset(&o, 0, sizeof o);
  r = fstat(fd, &o);
  printf("%s fstat_same %d chr=%d %u:%u\n", tag, !r && same(&p, &o), S_ISCHR(o.st_mode),
         major(o.st_rdev), minor(o.st_rdev));
  memset(&o, 0, sizeof o);
  printf("%s fstatat_empty_same %d\n", tag, !fstatat(fd, "", &o, AT_EMPTY_PATH) && same(&p, &o));
  memset(&x, 0, sizeof x);
  r = statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &x);
  printf("%s statx_empty_same %d mask=%#x\n", tag, !r && same_x(&p, &x), x.stx_mask);
  close(fd);
}

/* fstat(fd) against stat(path), one line. */
static void agree(const char *tag, int fd, const char *path) {
  struct stat p, o;
  int ok = !stat(path, &p) && !fstat(fd, &o) && same(&p, &o);
  printf("%s %d chr=%d %u:%u\n", tag, ok, S_ISCHR(o.st_mode), major(o.st_rdev), minor(o.st_rdev));
}

static int after_fork(const char *group) {
  int c = open("/dev/vfio/vfio", O_RDWR), g = open(group, O_RDWR);
  if (c < 0 || g < 0) {
    printf("open %s\n", strerror(errno));
    return 1;
  }
  pid_t pid = fork();
  if (pid == 0) {
    agree("child_container", c, "/dev/vfio/vfio");
    agree("child_group", g, group);
    _exit(0);
  }
  int status;
  waitpid(pid, &status, 0);
  agree("parent_container", c, "/dev/vfio/vfio");
  agree("parent_group", g, group);
  close(g);
  close(c);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc > 2 && !strcmp(argv[2], "fork")) return after_fork(argv[1]);
  one("container", "/dev/vfio/vfio");
  one("group", argc > 1 ? argv[1] : "/dev/vfio/3");
  one("iommufd", "/dev/iommu");
  one("cdev", "/dev/vfio/devices/vfio0");
  one("nogroup", "/dev/vfio/99");
  return 0;
}
