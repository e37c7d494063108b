//! `fork`, the `exec` family and `_exit`: where VFIO files start to be
//! shared between processes or outlive an image, so where the engine
//! leaves the program for the keeper ([`crate::keeper`], docs/DESIGN.md
//! §5). A program with no VFIO file open at these calls sees nothing but
//! one atomic load.
//!
//! glibc's `execv`, `execvp` and `execl*` reach `execve` through internal
//! aliases, so each entry is interposed here; `execl`, `execlp` and
//! `execle` are C-variadic: naked functions jump to their C halves
//! (`csrc/execl.c`), which pack the list and call
//! [`softvfio_exec_list`]. `vfork`, `posix_spawn`, `system` and `popen`,
//! whose children exec through libc-internal calls, are in
//! [`crate::spawn`].
//!
//! All `unsafe` of these hooks is here, each with its `SAFETY:` comment.

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::OnceLock;

use crate::{forward, hook, real};

/// # Safety
/// As libc's `fork`.
#[no_mangle]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    hook(-1, real::fork, |pass| forward::fork(|| pass.call()))
}

/// The `SOFTVFIO_*` variables this image was started with (`softvfio
/// run`'s settings: sanitizer, report, configuration, ...), but the
/// keeper's, which each exec's plan gives anew.
static STARTED_WITH: OnceLock<Vec<CString>> = OnceLock::new();

/// Keeps the `SOFTVFIO_*` variables of the environment (at load, before
/// the program can change it).
pub(crate) fn note_started_with() {
    STARTED_WITH.get_or_init(|| {
        std::env::vars_os()
            .filter(|(k, _)| {
                let k = k.as_encoded_bytes();
                k.starts_with(b"SOFTVFIO_")
                    && k != forward::ENV_NAME.to_bytes()
                    && k != forward::ENV_FDS.to_bytes()
            })
            .filter_map(|(k, v)| {
                let mut e = k.into_encoded_bytes();
                e.push(b'=');
                e.extend_from_slice(v.as_encoded_bytes());
                CString::new(e).ok()
            })
            .collect()
    });
}

/// The environment `envp` with the keeper's variables of `plan` instead of
/// any it had, this library in `LD_PRELOAD`, and each `SOFTVFIO_*` variable
/// this image was started with that `envp` lacks (an environment the
/// program cleared or rebuilt would leave the new image without them: its
/// inherited VFIO descriptors, eventfds, would answer ENOTTY where Linux's
/// work, and a sanitized run would go on unsanitized). The array over the
/// entries; `extra` owns the strings made here.
///
/// # Safety
/// `envp` is a NULL-terminated array of NUL-terminated strings (or null).
unsafe fn merged_env(
    envp: *const *const c_char,
    plan: &forward::ExecPlan,
    extra: &mut Vec<CString>,
) -> Vec<*const c_char> {
    let lib = real::own_library_path();
    let mut preload: Option<&[u8]> = None;
    let mut out = Vec::new();
    let mut names: Vec<&[u8]> = Vec::new();
    if !envp.is_null() {
        let mut i = 0;
        loop {
            // SAFETY: within the NULL-terminated array (contract).
            let p = unsafe { *envp.add(i) };
            if p.is_null() {
                break;
            }
            // SAFETY: each entry is a NUL-terminated string (contract).
            let s = unsafe { CStr::from_ptr(p) }.to_bytes();
            if s.starts_with(b"SOFTVFIO_") {
                names.push(s.split(|c| *c == b'=').next().unwrap_or(s));
            }
            if let Some(v) = s.strip_prefix(b"LD_PRELOAD=").filter(|_| lib.is_some()) {
                preload = Some(v);
            } else if !s.starts_with(b"SOFTVFIO_KEEPER=") && !s.starts_with(b"SOFTVFIO_KEEPER_FDS=")
            {
                out.push(p);
            }
            i += 1;
        }
    }
    if let Some(lib) = lib {
        let lib = lib.as_bytes();
        let listed = preload.is_some_and(|v| {
            v.split(|c| *c == b':' || *c == b' ')
                .any(|entry| entry == lib)
        });
        let mut entry = b"LD_PRELOAD=".to_vec();
        if !listed {
            entry.extend_from_slice(lib);
        }
        if let Some(v) = preload.filter(|v| !v.is_empty()) {
            if !listed {
                entry.push(b':');
            }
            entry.extend_from_slice(v);
        }
        if let Ok(c) = CString::new(entry) {
            extra.push(c);
        }
    }
    let lacking = STARTED_WITH.get().into_iter().flatten().filter(|e| {
        let name = e.to_bytes().split(|c| *c == b'=').next().unwrap_or(b"");
        !names.contains(&name)
    });
    out.extend(
        plan.env
            .iter()
            .chain(extra.iter())
            .chain(lacking)
            .map(|c| c.as_ptr()),
    );
    out.push(std::ptr::null());
    out
}

/// Every exec: with VFIO files open, the keeper learns which descriptors
/// the exec closes and the new image gets its address; `run` is the real
/// exec with the environment to use.
///
/// # Safety
/// `envp` as for [`merged_env`]; `run` is an exec whose other arguments
/// are the program's.
unsafe fn exec_with(
    envp: *const *const c_char,
    run: impl Fn(*const *const c_char) -> c_int + Copy,
) -> c_int {
    hook(
        -1,
        move || run(envp),
        move |pass| {
            let Some(plan) = forward::exec_prepare() else {
                return pass.call();
            };
            let mut extra = Vec::new();
            // SAFETY: this function's contract.
            let env = unsafe { merged_env(envp, &plan, &mut extra) };
            let r = {
                let _program = crate::Passing::new();
                run(env.as_ptr())
            };
            forward::exec_failed();
            drop(plan);
            r
        },
    )
}

/// # Safety
/// As libc's `execve`.
#[no_mangle]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: the program's arguments; only the environment may change.
    unsafe { exec_with(envp, |e| real::execve(&real::EXECVE, path, argv, e)) }
}

/// # Safety
/// As glibc's `execvpe`.
#[no_mangle]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: as in `execve`.
    unsafe { exec_with(envp, |e| real::execve(&real::EXECVPE, file, argv, e)) }
}

/// # Safety
/// As libc's `execv`.
#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: as in `execve`; with no change, the program's own `execv`.
    unsafe {
        exec_with(real::environ(), |e| {
            if e == real::environ() {
                real::execv(&real::EXECV, path, argv)
            } else {
                real::execve(&real::EXECVE, path, argv, e)
            }
        })
    }
}

/// # Safety
/// As libc's `execvp`.
#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: as in `execv`.
    unsafe {
        exec_with(real::environ(), |e| {
            if e == real::environ() {
                real::execv(&real::EXECVP, file, argv)
            } else {
                real::execve(&real::EXECVPE, file, argv, e)
            }
        })
    }
}

/// # Safety
/// As libc's `fexecve`.
#[no_mangle]
pub unsafe extern "C" fn fexecve(
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: as in `execve`.
    unsafe { exec_with(envp, |e| real::fexecve(fd, argv, e)) }
}

/// # Safety
/// As glibc's `execveat`.
#[no_mangle]
pub unsafe extern "C" fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    flags: c_int,
) -> c_int {
    // SAFETY: as in `execve`.
    unsafe { exec_with(envp, |e| real::execveat(dirfd, path, argv, e, flags)) }
}

/// The list exec functions, from `csrc/execl.c`: `kind` 0 `execl`, 1
/// `execlp`, 2 `execle` (with `envp`).
///
/// # Safety
/// As the exec function `kind` names, with the list packed into `argv`.
#[no_mangle]
pub unsafe extern "C" fn softvfio_exec_list(
    kind: c_int,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: the program's arguments (this function's contract).
    unsafe {
        match kind {
            0 => execv(path, argv),
            1 => execvp(path, argv),
            _ => execve(path, argv, envp),
        }
    }
}

extern "C" {
    fn softvfio_c_execl(path: *const c_char, arg: *const c_char, ...) -> c_int;
    fn softvfio_c_execlp(file: *const c_char, arg: *const c_char, ...) -> c_int;
    fn softvfio_c_execle(path: *const c_char, arg: *const c_char, ...) -> c_int;
}

/// libc's `execl`: a jump to the C half, with the program's registers and
/// stack untouched (a variadic call's arguments stay where they are).
#[no_mangle]
#[unsafe(naked)]
pub extern "C" fn execl() {
    core::arch::naked_asm!("jmp {}", sym softvfio_c_execl)
}

/// libc's `execlp` (see [`execl`]).
#[no_mangle]
#[unsafe(naked)]
pub extern "C" fn execlp() {
    core::arch::naked_asm!("jmp {}", sym softvfio_c_execlp)
}

/// libc's `execle` (see [`execl`]).
#[no_mangle]
#[unsafe(naked)]
pub extern "C" fn execle() {
    core::arch::naked_asm!("jmp {}", sym softvfio_c_execle)
}

static EXIT: real::Next = real::Next::new(c"_exit");
static EXIT_UPPER: real::Next = real::Next::new(c"_Exit");

/// `_exit`/`_Exit`: an attached process tells the keeper first, so that
/// what its pinned pages hold stays reachable (as Linux keeps pinned pages
/// past their mm).
fn exit_hook(next: &'static real::Next, code: c_int) -> ! {
    if forward::attached() {
        let _ = std::panic::catch_unwind(forward::exiting);
    }
    type ExitFn = unsafe extern "C" fn(c_int) -> !;
    let f = next.get();
    if !f.is_null() {
        // SAFETY: the next definition of `_exit`/`_Exit`, whose prototype
        // is `ExitFn`.
        let f = unsafe { std::mem::transmute::<*mut std::ffi::c_void, ExitFn>(f) };
        // SAFETY: ends the process with the program's code.
        unsafe { f(code) }
    }
    real::exit_now(code)
}

/// # Safety
/// As libc's `_exit`.
#[no_mangle]
pub unsafe extern "C" fn _exit(code: c_int) -> ! {
    exit_hook(&EXIT, code)
}

/// # Safety
/// As libc's `_Exit`.
#[no_mangle]
pub unsafe extern "C" fn _Exit(code: c_int) -> ! {
    exit_hook(&EXIT_UPPER, code)
}

/// At `exit` (atexit, registered when the process attaches): as `_exit`.
pub(crate) extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(forward::exiting);
}
