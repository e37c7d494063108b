// Ends in the way argv[1] asks for: exit7, segv, kill, kill-holding
// (SIGKILL while holding a handler object), thread-exit (the main thread
// leaves with pthread_exit, another thread calls exit(9)).
#include <fcntl.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fd;
static void *slow_ioctls(void *arg) {
  (void)arg;
  for (;;) ioctl(fd, _IO(0x3B, 132));
  return NULL;
}

static char *self_exe;
static void *exec_from_thread(void *arg) {
  (void)arg;
  execl(self_exe, "die", "exit7", (char *)NULL);
  return NULL;
}

static void *later(void *arg) {
  (void)arg;
  usleep(20000);
  exit(9);
}

int main(int argc, char **argv) {
  const char *how = argc > 1 ? argv[1] : "exit7";
  static char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) exe[n] = 0;
  self_exe = exe;
  if (!strcmp(how, "thread-exec")) {
    // A non-leader thread execs: the thread id changes to the process id.
    pthread_t t;
    pthread_create(&t, NULL, exec_from_thread, NULL);
    for (;;) pause();
  }
  if (!strcmp(how, "exec-cloexec")) {
    // The close-on-exec container goes away at exec; the group stays.
    int c = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
    int g = open("/dev/vfio/3", O_RDWR);
    if (c < 0 || g < 0) return 2;
    char num[16];
    snprintf(num, sizeof num, "%d", g);
    execl(self_exe, "die", "after-exec", num, (char *)NULL);
    return 3;
  }
  if (!strcmp(how, "after-exec")) {
    int g = atoi(argv[2]);
    // exit status: releases seen by the handler so far (the container).
    return (int)ioctl(g, _IO(0x3B, 102));
  }
  if (!strcmp(how, "exit7")) return 7;
  if (!strcmp(how, "segv")) { volatile int *p = (int *)0; *p = 1; }
  if (!strcmp(how, "kill")) kill(getpid(), SIGKILL);
  if (!strcmp(how, "kill-holding")) {
    int fd = open("/dev/vfio/vfio", O_RDWR);
    if (fd < 0) return 2;
    kill(getpid(), SIGKILL);
  }
  if (!strcmp(how, "exit-during-ioctl-leader")) {
    // The leader is stopped in a slow handler call when another thread
    // calls exit_group.
    fd = open("/dev/vfio/vfio", O_RDWR);
    pthread_t t;
    pthread_create(&t, NULL, later, NULL);
    slow_ioctls(NULL);
  }
  if (!strcmp(how, "exit-during-ioctl-thread")) {
    fd = open("/dev/vfio/vfio", O_RDWR);
    pthread_t t;
    pthread_create(&t, NULL, slow_ioctls, NULL);
    usleep(20000);
    exit(9);
  }
  if (!strcmp(how, "thread-exit")) {
    pthread_t t;
    pthread_create(&t, NULL, later, NULL);
    pthread_exit(NULL);
  }
  return 1;
}
