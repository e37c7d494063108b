/* Maps a buffer, says so, and waits for its standard input to close.
 * usage: hold [GROUP] */
#include "vfio_common.h"

int main(int argc, char **argv) {
  int g;
  int c = open_container(argc > 1 ? argv[1] : "/dev/vfio/3", &g);
  char *b = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(b, 1, 4 * PG);
  if (map(c, 0xabc000, b, 4 * PG)) die("map");
  printf("mapped\n");
  fflush(stdout);
  char x;
  while (read(0, &x, 1) > 0) {}
  close(g); close(c);
  return 0;
}
