/* Opens the edu device, maps 1 MiB, enables INTx or MSI with an eventfd,
 * says "interrupts enabled" and waits to be killed.
 * usage: irq_hold intx|msi */
#include <fcntl.h>
#include <linux/vfio.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
static int irqs(int dev, unsigned index, int fd) {
  char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
  struct vfio_irq_set *s = (void *)buf;
  *s = (struct vfio_irq_set){.argsz = sizeof buf, .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                             .index = index, .start = 0, .count = 1};
  memcpy(s->data, &fd, sizeof fd);
  return ioctl(dev, VFIO_DEVICE_SET_IRQS, s);
}
int main(int argc, char **argv) {
  int c = open("/dev/vfio/vfio", O_RDWR), g = open("/dev/vfio/3", O_RDWR);
  if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) || ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) return 1;
  int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:03.0");
  if (dev < 0) return 1;
  void *buf = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(buf, 1, 1 << 20);
  struct vfio_iommu_type1_dma_map m = {.argsz = sizeof m, .flags = 3, .vaddr = (uintptr_t)buf, .iova = 0x100000, .size = 1 << 20};
  if (ioctl(c, VFIO_IOMMU_MAP_DMA, &m)) return 1;
  int msi = strcmp(argv[1], "msi") == 0;
  if (irqs(dev, msi ? VFIO_PCI_MSI_IRQ_INDEX : VFIO_PCI_INTX_IRQ_INDEX, eventfd(0, 0))) return 1;
  printf("interrupts enabled\n");
  fflush(stdout);
  pause();
  return 0;
}
