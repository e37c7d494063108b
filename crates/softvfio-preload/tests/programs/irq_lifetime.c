/* Interrupt eventfds as the kernel holds them: a trigger keeps working after
 * the program closes its descriptor (the kernel holds a reference), the
 * engine's references go away with the device's last close, and a program
 * that exits with interrupts enabled leaves nothing behind.
 * argv: group path, BDF, "exit-enabled" (optional: end without closing). */
#include <poll.h>
#include <sys/eventfd.h>
#include "vfio_common.h"

static int set_irq(int dev, unsigned index, unsigned action, int fd) {
  char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
  struct vfio_irq_set *s = (void *)buf;
  s->argsz = sizeof buf;
  s->flags = VFIO_IRQ_SET_DATA_EVENTFD | action;
  s->index = index;
  s->start = 0;
  s->count = 1;
  memcpy(s->data, &fd, sizeof fd);
  return ioctl(dev, VFIO_DEVICE_SET_IRQS, s) ? errno : 0;
}

static uint64_t events(int fd) {
  struct pollfd p = { .fd = fd, .events = POLLIN };
  if (poll(&p, 1, 400) <= 0) return 0;
  uint64_t v = 0;
  if (read(fd, &v, 8) != 8) return 0;
  return v;
}

static void bar0_write(int dev, uint64_t off, uint32_t v) {
  if (pwrite(dev, &v, 4, off) != 4) die("bar0 write");
}

int main(int argc, char **argv) {
  int g, c = open_container(argv[1], &g);
  int fds_before = count_fds();
  int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  if (dev < 0) die("GET_DEVICE_FD");
  /* Memory and bus master on (command register). */
  uint16_t cmd = 0x6;
  if (pwrite(dev, &cmd, 2, (7ull << 40) + 4) != 2) die("command");

  int e = eventfd(0, EFD_NONBLOCK), copy = dup(e);
  printf("intx_enable %d\n", set_irq(dev, VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER, e));
  close(e);
  bar0_write(dev, 0x60, 1); /* raise */
  printf("intx_after_close_events %llu\n", (unsigned long long)events(copy));
  bar0_write(dev, 0x64, 1); /* acknowledge */

  /* An unmask eventfd and an ioeventfd: two watchers. */
  int u = eventfd(0, EFD_NONBLOCK), io = eventfd(0, EFD_NONBLOCK);
  printf("unmask_eventfd %d\n", set_irq(dev, VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_UNMASK, u));
  struct vfio_device_ioeventfd ioe = { .argsz = sizeof ioe, .flags = 4, .offset = 4,
                                       .data = 0x12345678, .fd = io };
  printf("ioeventfd %d\n", ioctl(dev, VFIO_DEVICE_IOEVENTFD, &ioe) ? errno : 0);
  uint64_t one = 1;
  if (write(io, &one, 8) != 8) die("signal ioeventfd");
  uint32_t live = 0;
  for (int i = 0; i < 400 && live != ~0x12345678u; i++) {
    if (pread(dev, &live, 4, 4) != 4) die("liveness");
    if (live != ~0x12345678u) usleep(1000);
  }
  printf("ioeventfd_landed 0x%x\n", live);

  if (argc > 3 && !strcmp(argv[3], "exit-enabled")) {
    printf("exiting 1\n");
    fflush(stdout);
    exit(0); /* the preload library reports at exit(3) */
  }
  close(dev);
  /* The program's own descriptors: copy, u, io. Everything the engine held
   * for the device (its triggers, watchers) is gone with the device. */
  printf("fds_after_close %d\n", count_fds() - fds_before - 3);
  /* The closed device no longer signals the old trigger. */
  printf("intx_after_device_close_events %llu\n", (unsigned long long)events(copy));
  close(copy);
  close(u);
  close(io);
  close(g);
  close(c);
  printf("done 1\n");
  return 0;
}
