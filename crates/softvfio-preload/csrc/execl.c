/* The C-variadic exec functions (execl, execlp, execle) of the preload
 * library: stable Rust cannot define a C-variadic function, and glibc's
 * own execl* reach execve through internal aliases the library cannot
 * interpose. The exported names are naked Rust functions that jump here
 * (src/exec.rs: a cdylib exports only its Rust symbols). Each packs its list into an argv array (and execle's
 * environment pointer) and calls the library's Rust entry, which runs the
 * keeper's exec protocol around the real execve/execvpe. */
#include <stdarg.h>
#include <stddef.h>

/* kind: 0 execl (path), 1 execlp (file, PATH search), 2 execle (envp
 * given); envp is NULL for 0 and 1 (the process's environ). */
extern int softvfio_exec_list(int kind, const char *path, char *const argv[], char *const envp[]);

#define PACK_AND_CALL(kind, path, arg, with_env)                    \
  do {                                                              \
    va_list ap;                                                     \
    size_t n = 1;                                                   \
    va_start(ap, arg);                                              \
    while (va_arg(ap, const char *) != NULL) n++;                   \
    va_end(ap);                                                     \
    const char *argv[n + 1];                                        \
    char *const *envp = NULL;                                       \
    argv[0] = arg;                                                  \
    va_start(ap, arg);                                              \
    for (size_t i = 1; i <= n; i++) argv[i] = va_arg(ap, const char *); \
    if (with_env) envp = va_arg(ap, char *const *);                 \
    va_end(ap);                                                     \
    return softvfio_exec_list(kind, path, (char *const *)argv, envp); \
  } while (0)

int softvfio_c_execl(const char *path, const char *arg, ...) { PACK_AND_CALL(0, path, arg, 0); }
int softvfio_c_execlp(const char *file, const char *arg, ...) { PACK_AND_CALL(1, file, arg, 0); }
int softvfio_c_execle(const char *path, const char *arg, ...) { PACK_AND_CALL(2, path, arg, 1); }
