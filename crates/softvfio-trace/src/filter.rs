//! The seccomp-BPF filter installed in the traced program.
//!
//! The filter decides in the kernel, per system call, whether the
//! supervisor needs to see it: `SECCOMP_RET_TRACE` makes the thread stop
//! (`PTRACE_EVENT_SECCOMP`) at syscall entry, `SECCOMP_RET_ALLOW` lets it
//! run at full speed without any context switch. Only these are traced:
//!
//! | syscall | why |
//! |---|---|
//! | `open`, `openat`, `openat2` | a handler may claim the path (`/dev/vfio/*`, `/proc/self/status`) |
//! | `ioctl` with a VFIO request (`(cmd & 0xffffff00) == 0x3b00`, i.e. `_IO(';', n)`) | the VFIO uAPI; every other ioctl is allowed |
//! | `pread64`, `pwrite64`, `preadv`, `pwritev`, `preadv2`, `pwritev2` | region access on device fds |
//! | `close` | to notice the last close of an object synchronously |
//! | `mmap`, `munmap`, `mremap`, `mprotect` | mmap of a device file's BAR, and the calls that change such a mapping (trapped MMIO, docs/MMIO.md) |
//! | `mlock`, `mlock2`, `mlockall` | the program locks memory itself: pins must leave its locks (rare calls) |
//! | `execve`, `execveat` | the old image's pinned pages must be kept before they go, when VFIO files survive the exec (rare calls) |
//! | `stat`, `lstat`, `newfstatat`, `statx`, `fstat` | a VFIO cdev (its path or an open descriptor) must stat as the device number sysfs gives (QEMU checks) |
//!
//! The ioctl test looks at the low 32 bits of the request only, as the
//! kernel does (`unsigned int cmd`). System calls of another ABI (i386
//! `int 0x80`, x32) are allowed: they cannot name our objects meaningfully.

use libc::sock_filter;

/// `AUDIT_ARCH_X86_64` (EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE).
pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const BPF_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of args[1] (little endian).
const OFF_ARG1_LO: u32 = 16 + 8;
/// The low word of the fourth argument (`mmap`'s flags).
const OFF_ARG3_LO: u32 = 16 + 3 * 8;

/// The ioctl "type" byte of VFIO (`VFIO_TYPE`, ';').
pub const VFIO_IOCTL_TYPE: u32 = 0x3b;

/// The system calls (other than ioctl) that stop in the supervisor.
pub const TRACED_SYSCALLS: &[i64] = &[
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_close,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_mlockall,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstat,
];

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The memory calls the DMA sanitizer watches (stale mappings), traced
/// only when asked ([`crate::Command::trace_memory_calls`]); `mmap` only
/// with `MAP_FIXED` (see [`build_with`]).
pub const MEMORY_SYSCALLS: &[i64] = &[libc::SYS_munmap, libc::SYS_mremap];

/// Builds the filter program.
pub fn build() -> Vec<sock_filter> {
    build_with(&[], false)
}

/// Builds the filter program, also stopping at the system calls `extra`,
/// and at `mmap` with `MAP_FIXED` when `mmap_fixed` (moot while every
/// `mmap` stops anyway, for BAR mappings: see [`TRACED_SYSCALLS`]).
pub fn build_with(extra: &[i64], mmap_fixed: bool) -> Vec<sock_filter> {
    let mut traced: Vec<i64> = TRACED_SYSCALLS.to_vec();
    for nr in extra {
        if !traced.contains(nr) {
            traced.push(*nr);
        }
    }
    let mmap_fixed = mmap_fixed && !traced.contains(&libc::SYS_mmap);
    let n = traced.len();
    let m = usize::from(mmap_fixed);
    // Layout (classic BPF only jumps forward):
    //   0        ld arch
    //   1        jeq X86_64 ? 2 : ALLOW
    //   2        ld nr
    //   3        jeq ioctl ? IOCTL : 4
    //  (4        jeq mmap ? MMAP : 5)                 with mmap_fixed
    //   4+m..    jeq nr_i ? TRACE : next
    //   4+m+n    ALLOW: ret allow
    //   5+m+n    IOCTL: ld arg1.lo
    //   6+m+n    and 0xffffff00
    //   7+m+n    jeq 0x3b00 ? TRACE : 8+m+n
    //   8+m+n    ret allow
    //  (10+n     MMAP: ld arg3.lo (flags)
    //   11+n     and MAP_FIXED
    //   12+n     jeq 0 ? 13+n : TRACE
    //   13+n     ret allow)                           with mmap_fixed
    //   9+5m+n   TRACE: ret trace
    let allow = 4 + m + n;
    let ioctl = 5 + m + n;
    let mmap = 9 + m + n;
    let trace = 9 + 5 * m + n;
    let rel = |from: usize, to: usize| -> u8 { (to - from - 1) as u8 };
    let mut p = Vec::with_capacity(n + 15);
    p.push(stmt(BPF_LD_W_ABS, OFF_ARCH));
    p.push(jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 0, rel(1, allow)));
    p.push(stmt(BPF_LD_W_ABS, OFF_NR));
    p.push(jump(BPF_JEQ_K, libc::SYS_ioctl as u32, rel(3, ioctl), 0));
    if mmap_fixed {
        p.push(jump(BPF_JEQ_K, libc::SYS_mmap as u32, rel(4, mmap), 0));
    }
    for (i, nr) in traced.iter().enumerate() {
        let at = 4 + m + i;
        p.push(jump(BPF_JEQ_K, *nr as u32, rel(at, trace), 0));
    }
    p.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
    p.push(stmt(BPF_LD_W_ABS, OFF_ARG1_LO));
    p.push(stmt(BPF_AND_K, 0xffff_ff00));
    p.push(jump(
        BPF_JEQ_K,
        VFIO_IOCTL_TYPE << 8,
        rel(7 + m + n, trace),
        0,
    ));
    p.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
    if mmap_fixed {
        p.push(stmt(BPF_LD_W_ABS, OFF_ARG3_LO));
        p.push(stmt(BPF_AND_K, libc::MAP_FIXED as u32));
        p.push(jump(BPF_JEQ_K, 0, 0, rel(mmap + 2, trace)));
        p.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
    }
    p.push(stmt(BPF_RET_K, libc::SECCOMP_RET_TRACE));
    debug_assert_eq!(p.len(), 10 + 5 * m + n);
    p
}

/// True when `cmd` (an ioctl request) is one the filter sends to us.
pub fn is_vfio_ioctl(cmd: u64) -> bool {
    (cmd as u32) & 0xffff_ff00 == VFIO_IOCTL_TYPE << 8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter for the subset the filter uses.
    fn run(prog: &[sock_filter], nr: u32, arch: u32, arg1: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        data[24..32].copy_from_slice(&arg1.to_le_bytes());
        run_data(prog, &data)
    }

    /// Runs the filter on a `seccomp_data` image.
    fn run_data(prog: &[sock_filter], data: &[u8; 64]) -> u32 {
        let mut a: u32 = 0;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    a = u32::from_le_bytes([data[k], data[k + 1], data[k + 2], data[k + 3]]);
                    pc += 1;
                }
                BPF_AND_K => {
                    a &= i.k;
                    pc += 1;
                }
                BPF_JEQ_K => {
                    pc += 1 + if a == i.k {
                        i.jt as usize
                    } else {
                        i.jf as usize
                    };
                }
                BPF_RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn filter_decisions() {
        let p = build();
        let x = AUDIT_ARCH_X86_64;
        let trace = libc::SECCOMP_RET_TRACE;
        let allow = libc::SECCOMP_RET_ALLOW;
        assert_eq!(run(&p, libc::SYS_openat as u32, x, 0), trace);
        assert_eq!(run(&p, libc::SYS_open as u32, x, 0), trace);
        assert_eq!(run(&p, libc::SYS_close as u32, x, 0), trace);
        assert_eq!(run(&p, libc::SYS_pwritev2 as u32, x, 0), trace);
        assert_eq!(run(&p, libc::SYS_mlockall as u32, x, 0), trace);
        assert_eq!(run(&p, libc::SYS_munlock as u32, x, 0), allow);
        assert_eq!(run(&p, libc::SYS_write as u32, x, 0), allow);
        assert_eq!(run(&p, libc::SYS_read as u32, x, 0), allow);
        assert_eq!(run(&p, libc::SYS_brk as u32, x, 0), allow);
        // The calls that map a BAR or change such a mapping.
        for nr in [
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_mprotect,
        ] {
            assert_eq!(run(&p, nr as u32, x, 0), trace);
        }
        // With the sanitizer's memory calls added: every mmap still stops (BAR
        // mappings), the rest as before.
        let m = build_with(MEMORY_SYSCALLS, true);
        assert_eq!(run(&m, libc::SYS_mmap as u32, x, 0), trace);
        let mmap = |flags: u64| {
            let mut data = [0u8; 64];
            data[0..4].copy_from_slice(&(libc::SYS_mmap as u32).to_le_bytes());
            data[4..8].copy_from_slice(&x.to_le_bytes());
            data[40..48].copy_from_slice(&flags.to_le_bytes());
            run_data(&m, &data)
        };
        let (fixed, private) = (libc::MAP_FIXED as u64, libc::MAP_PRIVATE as u64);
        assert_eq!(mmap(private | fixed), trace);
        assert_eq!(mmap(private), trace);
        assert_eq!(run(&m, libc::SYS_munmap as u32, x, 0), trace);
        assert_eq!(run(&m, libc::SYS_mremap as u32, x, 0), trace);
        assert_eq!(run(&m, libc::SYS_openat as u32, x, 0), trace);
        assert_eq!(run(&m, libc::SYS_close as u32, x, 0), trace);
        assert_eq!(run(&m, libc::SYS_write as u32, x, 0), allow);
        assert_eq!(run(&m, libc::SYS_ioctl as u32, x, 0x3b00), trace);
        assert_eq!(run(&m, libc::SYS_ioctl as u32, x, 0x5401), allow);
        assert_eq!(run(&m, libc::SYS_open as u32, 0x4000_0003, 0), allow);
        // VFIO ioctls: _IO(';', 100..)
        assert_eq!(run(&p, libc::SYS_ioctl as u32, x, 0x3b64), trace);
        assert_eq!(run(&p, libc::SYS_ioctl as u32, x, 0x3b77), trace);
        assert_eq!(
            run(&p, libc::SYS_ioctl as u32, x, 0xdead_0000_0000_3b64),
            trace
        );
        // Other ioctls: TCGETS, FIONREAD, a ';' ioctl with size bits.
        assert_eq!(run(&p, libc::SYS_ioctl as u32, x, 0x5401), allow);
        assert_eq!(run(&p, libc::SYS_ioctl as u32, x, 0x541b), allow);
        assert_eq!(run(&p, libc::SYS_ioctl as u32, x, 0x8008_3b64), allow);
        // Other architectures pass.
        assert_eq!(run(&p, libc::SYS_openat as u32, 0x4000_0003, 0), allow);
        assert!(is_vfio_ioctl(0x3b64));
        assert!(!is_vfio_ioctl(0x5401));
    }
}
