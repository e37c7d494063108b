// mmio_bad: what a program sees for unusual accesses to an mmap of edu's
// BAR0: stores to read-only registers, accesses past the BAR and past the
// mapping, misaligned and narrow accesses, SSE/AVX 16- and 32-byte moves
// and string moves into the BAR, mmap arguments vfio-pci refuses, unmapping
// the BAR and mapping something else at its address, fork with the BAR
// mapped, and a program SIGSEGV handler that must still see its own faults.
// One "<case> <result>" line per observation.
//
// usage: mmio_bad /dev/vfio/<group> <pci-bdf-of-edu>
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static int container, group, dev;
static uint64_t bar0_off, bar0_size;
static long pg;

#define OUT(name, ...) do { printf("%-40s ", name); printf(__VA_ARGS__); printf("\n"); fflush(stdout); } while (0)

static const char *ename(int e) {
  switch (e) {
  case 0: return "0";
  case EINVAL: return "EINVAL";
  case ENODEV: return "ENODEV";
  case EACCES: return "EACCES";
  case EPERM: return "EPERM";
  case ENOMEM: return "ENOMEM";
  case EFAULT: return "EFAULT";
  default: { static char b[32]; snprintf(b, sizeof b, "errno%d", e); return b; }
  }
}

// Faults are caught and reported: "SIGSEGV code=N" / "SIGBUS code=N".
static sigjmp_buf jb;
static volatile int caught_sig, caught_code;
static volatile uintptr_t caught_addr;
static void on_fault(int sig, siginfo_t *si, void *uc) {
  (void)uc;
  caught_sig = sig;
  caught_code = si->si_code;
  caught_addr = (uintptr_t)si->si_addr;
  siglongjmp(jb, 1);
}
static void catch_faults(void) {
  struct sigaction sa = { 0 };
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigaction(SIGSEGV, &sa, NULL);
  sigaction(SIGBUS, &sa, NULL);
}
static const char *fault_text(const volatile void *expect) {
  static char b[80];
  snprintf(b, sizeof b, "%s code=%d addr_ok=%d", caught_sig == SIGSEGV ? "SIGSEGV" : caught_sig == SIGBUS ? "SIGBUS" : "?",
           caught_code, caught_addr == (uintptr_t)expect);
  return b;
}

// A load of `size` bytes at `p`: its value, or the fault.
#define LOAD(name, type, p) do { \
    const volatile void *a_ = (p); \
    if (sigsetjmp(jb, 1)) OUT(name, "%s", fault_text(a_)); \
    else { unsigned long long v_ = *(volatile type *)a_; OUT(name, "%#llx", v_); } } while (0)
#define STORE(name, type, p, v) do { \
    volatile void *a_ = (p); \
    if (sigsetjmp(jb, 1)) OUT(name, "%s", fault_text(a_)); \
    else { *(volatile type *)a_ = (type)(v); OUT(name, "0"); } } while (0)

static uint32_t prd32(unsigned off) {
  uint32_t v = 0;
  if (pread(dev, &v, 4, bar0_off + off) != 4) return 0xdeadbeef;
  return v;
}
// The low half of a 64-bit register: vfio-pci before Linux 6.14 splits an
// 8-byte pread into two 4-byte accesses, and edu reads ~0 at the upper one.
static uint64_t prd64(unsigned off) {
  uint32_t v = 0;
  if (pread(dev, &v, 4, bar0_off + off) != 4) return 0xdeadbeef;
  return v;
}
static void pwr32(unsigned off, uint32_t v) { pwrite(dev, &v, 4, bar0_off + off); }

static void mmap_args(void) {
  void *p = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar0_off + bar0_size - pg);
  OUT("mmap_last_page", "%s", p == MAP_FAILED ? ename(errno) : "0");
  if (p != MAP_FAILED) munmap(p, pg);
  p = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar0_off + bar0_size - pg);
  OUT("mmap_past_bar_end", "%s", p == MAP_FAILED ? ename(errno) : "0");
  if (p != MAP_FAILED) munmap(p, 2 * pg);
  p = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar0_off + 0x100);
  OUT("mmap_unaligned_offset", "%s", p == MAP_FAILED ? ename(errno) : "0");
  if (p != MAP_FAILED) munmap(p, pg);
  p = mmap(NULL, pg, PROT_READ, MAP_SHARED, dev, bar0_off);
  OUT("mmap_read_only", "%s", p == MAP_FAILED ? ename(errno) : "0");
  if (p != MAP_FAILED) {
    LOAD("mmap_read_only_load", uint32_t, p);
    STORE("mmap_read_only_store", uint32_t, (char *)p + 4, 1);
    munmap(p, pg);
  }
  p = mmap(NULL, pg, PROT_WRITE, MAP_SHARED, dev, bar0_off);
  OUT("mmap_write_only", "%s", p == MAP_FAILED ? ename(errno) : "0");
  if (p != MAP_FAILED) munmap(p, pg);
  p = mmap(NULL, pg, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_SHARED, dev, bar0_off);
  OUT("mmap_exec", "%s", p == MAP_FAILED ? ename(errno) : "0");
  if (p != MAP_FAILED) munmap(p, pg);
  p = mmap(NULL, 0, PROT_READ, MAP_SHARED, dev, bar0_off);
  OUT("mmap_zero_length", "%s", p == MAP_FAILED ? ename(errno) : "0");
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s GROUP BDF\n", argv[0]); return 2; }
  pg = sysconf(_SC_PAGESIZE);
  container = open("/dev/vfio/vfio", O_RDWR);
  group = open(argv[1], O_RDWR);
  if (container < 0 || group < 0) { perror("open"); return 1; }
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) { perror("set container"); return 1; }
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) { perror("set iommu"); return 1; }
  dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  if (dev < 0) { perror("device"); return 1; }
  struct vfio_region_info ri = { .argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX };
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri)) { perror("region info"); return 1; }
  bar0_off = ri.offset;
  bar0_size = ri.size;
  uint64_t cfg = (uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40;
  uint16_t cmd = 0;
  pread(dev, &cmd, 2, cfg + 4);
  cmd |= 2;
  pwrite(dev, &cmd, 2, cfg + 4);
  catch_faults();

  mmap_args();

  // The whole BAR, with a reserved inaccessible page right after it.
  char *resv = mmap(NULL, bar0_size + pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  volatile uint8_t *bar = mmap(resv, bar0_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, dev, bar0_off);
  OUT("mmap_bar0_fixed", "%s", bar == MAP_FAILED ? ename(errno) : bar == (void *)resv ? "0 at_hint=1" : "0 at_hint=0");
  if (bar == MAP_FAILED) return 1;

  // Read-only registers.
  STORE("store_id", uint32_t, bar + 0x00, 0xffffffff);
  OUT("store_id_after", "%#x", prd32(0x00));
  pwr32(0x64, 0xffffffff);
  STORE("store_irq_status", uint32_t, bar + 0x24, 0x5);
  OUT("store_irq_status_after", "%#x", prd32(0x24));
  // Registers nothing decodes.
  LOAD("load_unused_0x10", uint32_t, bar + 0x10);
  LOAD("load_unused_0x1000", uint32_t, bar + 0x1000);
  STORE("store_unused_0x1000", uint32_t, bar + 0x1000, 7);
  LOAD("load_last_dword", uint32_t, bar + bar0_size - 4);
  LOAD("load_last_qword", uint64_t, bar + bar0_size - 8);
  // Past the BAR: the reserved page after the mapping.
  LOAD("load_past_bar", uint32_t, bar + bar0_size);
  STORE("store_past_bar", uint32_t, bar + bar0_size, 1);
  // Narrow and misaligned accesses.
  pwr32(0x04, 0x11223344);
  LOAD("load1_liveness", uint8_t, bar + 0x04);
  LOAD("load2_liveness", uint16_t, bar + 0x04);
  LOAD("load4_misaligned_0x05", uint32_t, bar + 0x05);
  LOAD("load4_misaligned_0x02", uint32_t, bar + 0x02);
  LOAD("load8_0x00", uint64_t, bar + 0x00);
  LOAD("load8_misaligned_0x04", uint64_t, bar + 0x04);
  STORE("store1_liveness", uint8_t, bar + 0x04, 0x55);
  OUT("store1_liveness_after", "%#x", prd32(0x04));
  STORE("store2_liveness", uint16_t, bar + 0x04, 0x5555);
  OUT("store2_liveness_after", "%#x", prd32(0x04));
  STORE("store4_misaligned_0x05", uint32_t, bar + 0x05, 0x01020304);
  OUT("store4_misaligned_0x05_after", "%#x", prd32(0x04));
  pwr32(0x04, 0);
  STORE("store8_liveness", uint64_t, bar + 0x00, 0x0102030405060708ull);
  OUT("store8_liveness_after", "id=%#x liveness=%#x", prd32(0x00), prd32(0x04));
  STORE("store8_dma_src_misaligned", uint64_t, bar + 0x84, 0x1111222233334444ull);
  OUT("store8_dma_src_misaligned_after", "src=%#llx", (unsigned long long)prd64(0x80));

  // Vector and string moves.
  {
    uint64_t v[4] __attribute__((aligned(32))) = { 0x1000, 0x40000, 0x10, 0 };
    uint64_t back[4] __attribute__((aligned(32))) = { 0 };
    if (sigsetjmp(jb, 1)) OUT("sse_store16", "%s", fault_text(bar + 0x80));
    else {
      __asm__ volatile("movdqu (%0), %%xmm1\n\tmovdqu %%xmm1, (%1)" : : "r"(v), "r"(bar + 0x80) : "xmm1", "memory");
      OUT("sse_store16", "src=%#llx dst=%#llx", (unsigned long long)prd64(0x80), (unsigned long long)prd64(0x88));
    }
    if (sigsetjmp(jb, 1)) OUT("sse_load16", "%s", fault_text(bar + 0x80));
    else {
      __asm__ volatile("movdqu (%1), %%xmm2\n\tmovdqu %%xmm2, (%0)" : : "r"(back), "r"(bar + 0x80) : "xmm2", "memory");
      OUT("sse_load16", "%#llx %#llx", (unsigned long long)back[0], (unsigned long long)back[1]);
    }
    v[0] = 0x2000; v[1] = 0x40100; v[2] = 0x20; v[3] = 0;
    if (sigsetjmp(jb, 1)) OUT("avx_store32", "%s", fault_text(bar + 0x80));
    else {
      __asm__ volatile("vmovdqu (%0), %%ymm3\n\tvmovdqu %%ymm3, (%1)\n\tvzeroupper" : : "r"(v), "r"(bar + 0x80) : "xmm3", "memory");
      OUT("avx_store32", "src=%#llx dst=%#llx cnt=%#llx cmd=%#x", (unsigned long long)prd64(0x80),
          (unsigned long long)prd64(0x88), (unsigned long long)prd64(0x90), prd32(0x98));
    }
    memset(back, 0, sizeof back);
    if (sigsetjmp(jb, 1)) OUT("avx_load32", "%s", fault_text(bar + 0x80));
    else {
      __asm__ volatile("vmovdqu (%1), %%ymm4\n\tvmovdqu %%ymm4, (%0)\n\tvzeroupper" : : "r"(back), "r"(bar + 0x80) : "xmm4", "memory");
      OUT("avx_load32", "%#llx %#llx %#llx %#llx", (unsigned long long)back[0], (unsigned long long)back[1],
          (unsigned long long)back[2], (unsigned long long)back[3]);
    }
    uint64_t q[2] = { 0x3000, 0x40200 };
    if (sigsetjmp(jb, 1)) OUT("rep_movsq", "%s", fault_text(bar + 0x80));
    else {
      void *d = (void *)(bar + 0x80); const void *s = q; unsigned long n = 2;
      __asm__ volatile("rep movsq" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
      OUT("rep_movsq", "src=%#llx dst=%#llx", (unsigned long long)prd64(0x80), (unsigned long long)prd64(0x88));
    }
    uint32_t l = 0xa5a5a5a5;
    if (sigsetjmp(jb, 1)) OUT("rep_movsl", "%s", fault_text(bar + 0x04));
    else {
      void *d = (void *)(bar + 0x04); const void *s = &l; unsigned long n = 1;
      __asm__ volatile("rep movsl" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
      OUT("rep_movsl", "liveness=%#x", prd32(0x04));
    }
    uint8_t b[16];
    for (int i = 0; i < 16; i++) b[i] = (uint8_t)(0x10 + i);
    if (sigsetjmp(jb, 1)) OUT("rep_movsb", "%s", fault_text(bar + 0x80));
    else {
      void *d = (void *)(bar + 0x80); const void *s = b; unsigned long n = 16;
      __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
      OUT("rep_movsb", "src=%#llx dst=%#llx", (unsigned long long)prd64(0x80), (unsigned long long)prd64(0x88));
    }
    uint8_t in[8] = { 0 };
    if (sigsetjmp(jb, 1)) OUT("rep_movsb_from_bar", "%s", fault_text(bar));
    else {
      void *d = in; const void *s = (const void *)bar; unsigned long n = 8;
      __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
      OUT("rep_movsb_from_bar", "%02x %02x %02x %02x %02x %02x %02x %02x", in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7]);
    }
  }

  // A program SIGSEGV handler still sees its own faults.
  {
    char *own = mmap(NULL, pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    LOAD("own_fault", uint32_t, own);
    struct sigaction cur;
    sigaction(SIGSEGV, NULL, &cur);
    OUT("own_handler_installed", "%d", cur.sa_sigaction == on_fault);
    LOAD("bar_after_own_handler", uint32_t, bar);
    munmap(own, pg);
  }

  // fork with the BAR mapped: the child's mapping reaches the device.
  fflush(stdout);
  pid_t child = fork();
  if (child == 0) {
    OUT("fork_child_id", "%#x", *(volatile uint32_t *)bar);
    *(volatile uint32_t *)(bar + 4) = 0x0f0f0f0f;
    OUT("fork_child_liveness", "%#x", *(volatile uint32_t *)(bar + 4));
    _exit(0);
  }
  int st = 0;
  waitpid(child, &st, 0);
  OUT("fork_child_status", "%d", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  OUT("fork_parent_liveness", "%#x", *(volatile uint32_t *)(bar + 4));

  // mremap moves the BAR mapping: the new address reaches the device, the
  // old one is gone.
  volatile uint8_t *moved = mremap((void *)bar, pg, pg, MREMAP_MAYMOVE | MREMAP_FIXED, resv + bar0_size - 16 * pg);
  OUT("mremap_first_page", "%s", moved == MAP_FAILED ? ename(errno) : "0");
  if (moved == MAP_FAILED) return 1;
  LOAD("mremap_new_id", uint32_t, moved);
  LOAD("mremap_old_address", uint32_t, bar);
  LOAD("mremap_second_page_liveness", uint32_t, bar + pg + 0);

  // Unmap the BAR, map memory at the same address.
  OUT("munmap_bar0", "%d", munmap((void *)(bar + pg), 4 * pg));
  LOAD("munmapped_load", uint32_t, bar + pg);
  char *anon = mmap((void *)(bar + pg), pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  OUT("anon_at_bar_address", "%s", anon == (void *)(bar + pg) ? "0" : "moved");
  STORE("anon_store", uint32_t, anon, 0xabcdef01);
  LOAD("anon_load", uint32_t, anon);
  // MAP_FIXED over a live BAR page, without unmapping first.
  char *over = mmap((void *)(bar + 8 * pg), pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  STORE("fixed_over_bar_store", uint32_t, over, 0x600d);
  LOAD("fixed_over_bar_load", uint32_t, over);
  LOAD("bar_page_after_fixed", uint32_t, bar + 9 * pg + 4);
  // mprotect and mremap of a BAR mapping.
  volatile uint8_t *pr = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar0_off);
  if (pr == MAP_FAILED) return 1;
  OUT("mprotect_read_only", "%s", ename(mprotect((void *)pr, pg, PROT_READ) ? errno : 0));
  LOAD("mprotect_read_only_load", uint32_t, pr);
  STORE("mprotect_read_only_store", uint32_t, pr + 4, 0x1111);
  STORE("mprotect_other_page_store", uint32_t, pr + pg + 4, 0x2222);
  OUT("mprotect_none", "%s", ename(mprotect((void *)pr, pg, PROT_NONE) ? errno : 0));
  LOAD("mprotect_none_load", uint32_t, pr);
  OUT("mprotect_read_write", "%s", ename(mprotect((void *)pr, pg, PROT_READ | PROT_WRITE) ? errno : 0));
  STORE("mprotect_read_write_store", uint32_t, pr + 4, 0x3333);
  OUT("mprotect_read_write_after", "%#x", prd32(0x04));
  void *grown = mremap((void *)pr, 2 * pg, 3 * pg, MREMAP_MAYMOVE);
  OUT("mremap_grow", "%s", grown == MAP_FAILED ? ename(errno) : "0");
  void *shrunk = mremap((void *)pr, 2 * pg, pg, 0);
  OUT("mremap_shrink", "%s", shrunk == MAP_FAILED ? ename(errno) : shrunk == (void *)pr ? "0 same" : "0 moved");
  LOAD("mremap_shrink_kept", uint32_t, pr);
  LOAD("mremap_shrink_dropped", uint32_t, pr + pg);
  munmap((void *)pr, pg);

  // Memory decoding off: the mapping faults with SIGBUS. (A fresh mapping:
  // Linux 6.1 does not zap a mapping that mremap moved, which then reads
  // the disabled BAR as QEMU's unassigned memory.)
  volatile uint8_t *fresh = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar0_off);
  if (fresh == MAP_FAILED) return 1;
  pread(dev, &cmd, 2, cfg + 4);
  cmd &= ~2;
  pwrite(dev, &cmd, 2, cfg + 4);
  LOAD("memory_disabled_load", uint32_t, fresh);
  STORE("memory_disabled_store", uint32_t, fresh + 4, 1);
  cmd |= 2;
  pwrite(dev, &cmd, 2, cfg + 4);
  LOAD("memory_enabled_again", uint32_t, fresh);
  // The mapping outlives the device descriptor.
  close(dev);
  LOAD("after_close_id", uint32_t, fresh);
  STORE("after_close_liveness_store", uint32_t, fresh + 4, 0x12345678);
  LOAD("after_close_liveness", uint32_t, fresh + 4);
  printf("done\n");
  return 0;
}
