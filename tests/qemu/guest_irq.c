// Runs inside the QEMU guest, on the guest's own vfio-pci: raises interrupts
// of the passed-through edu device and counts the ones that arrive on the
// guest's eventfds. Each line "name value" is compared by the host test.
//
// usage: guest_irq /dev/vfio/<group> <bdf> <N>
//
// edu: BAR0 0x60 = raise (ORed into the status), 0x64 = acknowledge (clears
// the bits and lowers INTx), 0x24 = status.
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static int dev;
static uint64_t bar0;

static void wr(uint32_t off, uint32_t v) {
  if (pwrite(dev, &v, 4, bar0 + off) != 4) { printf("error pwrite %d\n", errno); exit(1); }
}
static uint32_t rd(uint32_t off) {
  uint32_t v = 0;
  if (pread(dev, &v, 4, bar0 + off) != 4) { printf("error pread %d\n", errno); exit(1); }
  return v;
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec;
}

// Waits up to `ms` for the eventfd; returns its counter (0 when none came).
static uint64_t wait_efd(int efd, int ms) {
  struct pollfd p = {.fd = efd, .events = POLLIN};
  if (poll(&p, 1, ms) <= 0) return 0;
  uint64_t c = 0;
  if (read(efd, &c, 8) != 8) return 0;
  return c;
}

static int set_irqs(uint32_t index, uint32_t flags, int fd) {
  char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
  struct vfio_irq_set *s = (void *)buf;
  s->argsz = sizeof(buf);
  s->flags = flags;
  s->index = index;
  s->start = 0;
  s->count = 1;
  if ((flags & VFIO_IRQ_SET_DATA_TYPE_MASK) == VFIO_IRQ_SET_DATA_NONE) s->argsz = sizeof(*s);
  memcpy(s->data, &fd, sizeof(int));
  return ioctl(dev, VFIO_DEVICE_SET_IRQS, s) ? errno : 0;
}

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  int n = atoi(argv[3]);
  int container = open("/dev/vfio/vfio", O_RDWR);
  int group = open(argv[1], O_RDWR);
  if (container < 0 || group < 0) { printf("error open %d\n", errno); return 1; }
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) ||
      ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) { printf("error setup %d\n", errno); return 1; }
  dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  if (dev < 0) { printf("error device %d\n", errno); return 1; }
  struct vfio_region_info ri = {.argsz = sizeof(ri), .index = VFIO_PCI_BAR0_REGION_INDEX};
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri)) { printf("error region %d\n", errno); return 1; }
  bar0 = ri.offset;
  printf("edu_id %#x\n", rd(0));
  wr(4, 0x12345678);
  printf("edu_liveness %#x\n", rd(4));
  // The cost of a BAR read as the guest sees it (guest clock; "time_"
  // lines are measurements, not compared).
  uint64_t t0 = now_ns();
  for (int i = 0; i < 1000; i++) rd(0);
  printf("time_bar_read_ns %llu\n", (unsigned long long)((now_ns() - t0) / 1000));

  // INTx, automasked by vfio-pci on each interrupt; unmasked after the ack.
  int efd = eventfd(0, EFD_NONBLOCK);
  printf("intx_enable %d\n", set_irqs(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, efd));
  int got = 0;
  t0 = now_ns();
  for (int i = 0; i < n; i++) {
    wr(0x60, 1);
    got += wait_efd(efd, 5000) ? 1 : 0;
    wr(0x64, 1);
    set_irqs(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, -1);
  }
  // Raise, receive, acknowledge, unmask.
  printf("time_intx_ns %llu\n", (unsigned long long)((now_ns() - t0) / (n ? n : 1)));
  printf("intx_raised %d\nintx_received %d\n", n, got);
  // Masked by the user: nothing until the unmask, then the pending one.
  printf("intx_mask %d\n", set_irqs(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK, -1));
  wr(0x60, 1);
  printf("intx_while_masked %llu\n", (unsigned long long)wait_efd(efd, 500));
  printf("intx_unmask %d\n", set_irqs(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, -1));
  printf("intx_after_unmask %llu\n", (unsigned long long)wait_efd(efd, 5000));
  wr(0x64, 1);
  set_irqs(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, -1);
  // DATA_NONE|TRIGGER with a zero count disables INTx.
  {
    struct vfio_irq_set s = {.argsz = sizeof(s), .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                             .index = VFIO_PCI_INTX_IRQ_INDEX, .start = 0, .count = 0};
    printf("intx_off %d\n", ioctl(dev, VFIO_DEVICE_SET_IRQS, &s) ? errno : 0);
  }

  // MSI: one vector; every raise is a message, a memory write of the
  // device: bus mastering must be on.
  struct vfio_region_info ci = {.argsz = sizeof(ci), .index = VFIO_PCI_CONFIG_REGION_INDEX};
  uint16_t cmd = 0;
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ci) || pread(dev, &cmd, 2, ci.offset + 4) != 2) {
    printf("error config %d\n", errno);
    return 1;
  }
  cmd |= 0x4;
  printf("bus_master %d\n", pwrite(dev, &cmd, 2, ci.offset + 4) == 2 ? 0 : errno);
  int mfd = eventfd(0, EFD_NONBLOCK);
  printf("msi_enable %d\n", set_irqs(VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, mfd));
  got = 0;
  t0 = now_ns();
  for (int i = 0; i < n; i++) {
    wr(0x60, 1);
    got += wait_efd(mfd, 5000) ? 1 : 0;
    wr(0x64, 1);
  }
  // Raise, receive, acknowledge.
  printf("time_msi_ns %llu\n", (unsigned long long)((now_ns() - t0) / (n ? n : 1)));
  printf("msi_raised %d\nmsi_received %d\n", n, got);
  printf("msi_status %#x\n", rd(0x24));
  printf("done\n");
  return 0;
}
