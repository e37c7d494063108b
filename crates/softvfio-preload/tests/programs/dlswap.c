/* Call sites across dlclose and dlopen (softvfio run --sanitize): loads
 * plugin A (argv[1]), maps and unmaps a buffer from it, unloads it, loads
 * plugin B (argv[2], built from the same source: same size, same layout)
 * at the address A had, and maps a buffer from B that it leaves mapped at
 * exit. The leak's call site must name B's function, file and line, not
 * A's. Prints "same-base 1" when B landed where A was. With a third
 * argument "handoff" it forks first (the child exits at once): in preload
 * mode the calls then go to the keeper, which resolves their sites. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

typedef int (*map_fn)(int, void *, uint64_t, uint64_t);
typedef int (*unmap_fn)(int, uint64_t, uint64_t);

static void die(const char *what) {
  perror(what);
  exit(2);
}

/* The plugin's map and unmap, called from the same two places for either
 * plugin: the whole return address tuple repeats. */
__attribute__((noinline)) static int call_map(void *lib, int c, void *buf, uint64_t iova) {
  map_fn f = (map_fn)dlsym(lib, "plugin_map");
  if (!f) die("dlsym plugin_map");
  return f(c, buf, iova, 4096);
}

__attribute__((noinline)) static int call_unmap(void *lib, int c, uint64_t iova) {
  unmap_fn f = (unmap_fn)dlsym(lib, "plugin_unmap");
  if (!f) die("dlsym plugin_unmap");
  return f(c, iova, 4096);
}

static uintptr_t base_of(void *lib) {
  Dl_info info;
  void *sym = dlsym(lib, "plugin_map");
  if (!sym || !dladdr(sym, &info)) die("dladdr");
  return (uintptr_t)info.dli_fbase;
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  int container = open("/dev/vfio/vfio", O_RDWR);
  int group = open("/dev/vfio/3", O_RDWR);
  if (container < 0 || group < 0) die("open");
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) die("SET_CONTAINER");
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("SET_IOMMU");
  if (argc > 3 && !strcmp(argv[3], "handoff")) {
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) _exit(0);
    int status;
    if (waitpid(child, &status, 0) != child || status != 0) die("child");
  }
  char *buf = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) die("mmap");
  memset(buf, 1, 2 * 4096);

  void *a = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!a) die(dlerror());
  uintptr_t a_base = base_of(a);
  if (call_map(a, container, buf, 0x100000)) die("map from A");
  if (call_unmap(a, container, 0x100000)) die("unmap from A");
  if (dlclose(a)) die("dlclose A");

  void *b = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
  if (!b) die(dlerror());
  printf("same-base %d\n", base_of(b) == a_base);
  /* Left mapped: a leak at exit, with B's call site. */
  if (call_map(b, container, buf, 0x100000)) die("map from B");
  printf("done dlswap\n");
  fflush(stdout);
  return 0;
}
