/* Cost of a spawn whose child inherits VFIO files (preload: the library
 * runs it as a fork + exec through the keeper) against the same spawn
 * before any VFIO file is open (libc's). usage: spawnbench /dev/vfio/N COUNT
 * (not run by the tests; docs/PERFORMANCE-HISTORY.md, "Spawns"). */
#define _GNU_SOURCE
#include "vfio_common.h"
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
extern char **environ;
static double now(void){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+t.tv_nsec/1e9;}
static double run(int n, const char *what){
  char *a[]={"true",NULL}; double t0=now();
  for(int i=0;i<n;i++){ pid_t p; if(!strcmp(what,"spawn")){ if(posix_spawn(&p,"/bin/true",NULL,NULL,a,environ)) die("spawn"); waitpid(p,NULL,0);} else { if (system("true")) die("system"); } }
  return (now()-t0)/n*1e6;
}
int main(int argc,char**argv){
  int n=atoi(argv[2]);
  double s0=run(n,"spawn"), y0=run(n/4,"system");
  int g,c=open_container(argv[1],&g);
  double s1=run(n,"spawn"), y1=run(n/4,"system");
  printf("posix_spawn /bin/true: libc %.0f us, with VFIO files inherited %.0f us (%.2fx)\n", s0, s1, s1/s0);
  printf("system(\"true\"): libc %.0f us, with VFIO files inherited %.0f us (%.2fx)\n", y0, y1, y1/y0);
  close(g); close(c); return 0;
}
