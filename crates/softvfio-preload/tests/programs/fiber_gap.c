/* A fiber on a stack the program mapped in the unmapped gap below the main
 * thread's [stack] (inside RLIMIT_STACK, where glibc's pthread_getattr_np
 * says the main thread's stack lies), entered by a manual stack switch whose
 * frame's call frame information describes the main stack's frame, not the
 * fiber's: an unwinder that follows it reads past the fiber stack's top
 * (unmapped). The main thread makes a VFIO call first (the library learns
 * its stack then); the fiber maps a buffer and leaves it mapped: the leak
 * must name fiber_map <- fiber_entry (the frames on the fiber's stack). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static int container;
static char *buf;

static void die(const char *w) { perror(w); exit(2); }

__attribute__((noinline)) static void fiber_map(void) {
  struct vfio_iommu_type1_dma_map m = {.argsz = sizeof m, .flags = 3,
    .vaddr = (uintptr_t)buf, .iova = 0x200000, .size = 4096};
  if (ioctl(container, VFIO_IOMMU_MAP_DMA, &m)) die("MAP_DMA from the fiber");
}

__attribute__((noinline)) static void fiber_entry(void) {
  fiber_map();
}

__attribute__((noinline)) static void on_stack(void *top, void (*fn)(void)) {
  __asm__ volatile("mov %%rsp, %%rbx\n\t"
                   "mov %0, %%rsp\n\t"
                   "call *%1\n\t"
                   "mov %%rbx, %%rsp\n\t"
                   :
                   : "r"(top), "r"(fn)
                   : "rbx", "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
}

static uintptr_t stack_start(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  char line[512];
  uintptr_t lo = 0, hi;
  while (fgets(line, sizeof line, f))
    if (strstr(line, "[stack]")) sscanf(line, "%lx-%lx", &lo, &hi);
  fclose(f);
  return lo;
}

int main(void) {
  container = open("/dev/vfio/vfio", O_RDWR);
  int group = open("/dev/vfio/3", O_RDWR);
  if (container < 0 || group < 0) die("open");
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) die("SET_CONTAINER");
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("SET_IOMMU");
  buf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(buf, 1, 4096);
  struct vfio_iommu_type1_dma_map m = {.argsz = sizeof m, .flags = 3,
    .vaddr = (uintptr_t)buf, .iova = 0x100000, .size = 4096};
  if (ioctl(container, VFIO_IOMMU_MAP_DMA, &m)) die("MAP_DMA");
  size_t len = 64 * 1024;
  uintptr_t at = stack_start() - (1 << 20) - len;
  char *stack = mmap((void *)at, len, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (stack == MAP_FAILED || (uintptr_t)stack != at) die("mmap fiber stack");
  on_stack(stack + len, fiber_entry);
  printf("done fiber_gap\n");
  return 0;
}
