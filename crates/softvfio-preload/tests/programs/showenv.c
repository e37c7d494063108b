/* Says whether LD_PRELOAD is set (which mode `softvfio run --mode auto` chose). */
#include <stdio.h>
#include <stdlib.h>
int main(void){ const char *p = getenv("LD_PRELOAD"); printf("ld_preload %s\n", p && *p ? "set" : "unset"); return 0; }
