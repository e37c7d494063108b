/* What Linux answers for madvise lengths past the address space: does the
 * walk take anything? Two pages: page 0 written, page 1 mlocked (VM_LOCKED
 * stops Linux's walk with EINVAL, so a walk that went on cannot reach the
 * stack). Prints: case errno page0-kept. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static void one(const char *name, int shared, size_t len, int advice) {
  int flags = (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS;
  unsigned char *p = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED) { perror("mmap"); return; }
  memset(p, 0x5a, 2 * 4096);
  if (mlock(p + 4096, 4096)) { perror("mlock"); return; }
  long r = syscall(SYS_madvise, p, len, advice);
  printf("%s %d kept=%d\n", name, r ? errno : 0, p[0] == 0x5a);
  munmap(p, 2 * 4096);
}

int main(void) {
  one("dontneed-len-2^63", 0, 1ul << 63, MADV_DONTNEED);
  one("dontneed-len-minus-page", 0, (size_t)0 - 4096, MADV_DONTNEED);
  one("dontneed-len-max", 0, SIZE_MAX, MADV_DONTNEED);
  one("dontneed-len-max-minus-page-plus-2", 0, SIZE_MAX - 4096 + 2, MADV_DONTNEED);
  one("dontneed-len-0", 0, 0, MADV_DONTNEED);
  one("dontneed-len-8193", 0, 8193, MADV_DONTNEED);
  one("remove-len-2^63", 1, 1ul << 63, MADV_REMOVE);
  one("remove-len-minus-page", 1, (size_t)0 - 4096, MADV_REMOVE);
  one("remove-len-max", 1, SIZE_MAX, MADV_REMOVE);
  return 0;
}
