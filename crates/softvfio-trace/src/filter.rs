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
//! | `mmap` with `fd != -1` or `MAP_FIXED`; `munmap`, `mremap`, `mprotect` | mmap of a device file's BAR, and the calls that change such a mapping (trapped MMIO, docs/MMIO.md); an anonymous `mmap` at a kernel-chosen address cannot touch one and runs free |
//! | `mlock`, `mlock2`, `mlockall` | the program locks memory itself: pins must leave its locks (rare calls) |
//! | `execve`, `execveat` | the old image's pinned pages must be kept before they go, when VFIO files survive the exec (rare calls) |
//! | `stat`, `lstat`, `newfstatat`, `statx`, `fstat` | a VFIO cdev (its path or an open descriptor) must stat as the device number sysfs gives (QEMU checks) |
//! | `dup2`, `dup3`, `close_range`, `io_uring_setup`, `seccomp` (with a listener only) | they replace descriptors, or let the program do so unseen: the supervisor's descriptor cache ([`FD_TABLE_SYSCALLS`]) |
//! | i386 (`int $0x80`): `close`; `ioctl` with a VFIO request; `dup2`, `dup3`, `close_range`, `io_uring_setup`, `seccomp` (with a listener only) | the same descriptor table and objects, through the 32-bit ABI ([`I386_TRACED_SYSCALLS`], [`I386_FD_TABLE_SYSCALLS`]) |
//!
//! With a user-notification listener ([`Spec::notify`]), the calls that
//! never need code run *in* the calling thread return
//! `SECCOMP_RET_USER_NOTIF` instead: the opens, the `pread`/`pwrite`
//! family and the ioctls the embedder names (for `softvfio run`, the VFIO
//! queries of [`VFIO_NOTIFIABLE_IOCTLS`]), and the stat family (a path or
//! descriptor that is not ours, nearly every call, continues to the kernel
//! unchanged: `SECCOMP_USER_NOTIF_FLAG_CONTINUE`).
//! The thread waits in the kernel while the supervisor answers; no ptrace
//! stop, no register traffic. The rest keeps `SECCOMP_RET_TRACE`: `close`
//! (the release must be seen at the close's exit), the memory calls, and
//! the ioctls that pin memory (the supervisor injects `mlock`/`madvise`).
//!
//! What the stat family costs a program for a file that is not ours (the
//! common case: stdio's `fstat`, `opendir`, QEMU's start-up), per call, a
//! static program calling libc (glibc 2.36: `fstat` is
//! `newfstatat(fd, "", AT_EMPTY_PATH)`, `stat` a `newfstatat` of the
//! path), with the VFIO container open (so a descriptor is looked up in
//! `/proc/<tid>/fd`), 11 alternating runs each, medians (2 vCPUs, load
//! 4.7-5.2 from other builds, 2026-12-07 22:59 UTC; the `uapi-stat` rows
//! of docs/PERFORMANCE.md measure the same against native):
//!
//! | call | native | trace, ptrace stop (before) | trace, notified | notified, no VFIO file open | preload |
//! |---|---|---|---|---|---|
//! | `fstat` | 0.38 µs | 17.5 µs | 11.7 µs | 7.6 µs | 0.43 µs |
//! | `stat` (absolute path) | 1.08 µs | 13.2 µs | 8.9 µs | 8.7 µs | 1.10 µs |
//! | `statx` (absolute path) | 1.05 µs | 13.7 µs | 9.0 µs | 8.7 µs | 1.05 µs |
//!
//! The "notified" `fstat` paid a `/proc/<tid>/fd` lookup then; the
//! descriptor cache now keeps descriptors that are no object too
//! (fdcache.rs), and a later set (23:28 UTC, load 7.5, 11 runs) has it
//! where it is with no VFIO file open: median 14.3 against 13.6 µs, best
//! 8.0 against 7.7 µs (before, ptrace stop: 28.2, best 17.4 µs).
//!
//! The ptrace stop's cost moves most with what the other vCPU does (a
//! halted one must be woken): a run eight minutes earlier, at load 5.6,
//! had it at 48-64 µs a call, the notified calls at 9-12 µs
//! (docs/PERFORMANCE.md, "Trapped calls").
//!
//! The ioctl test looks at the low 32 bits of the request only, as the
//! kernel does (`unsigned int cmd`).
//!
//! The i386 ABI (`int $0x80`, `AUDIT_ARCH_I386`) reaches the same
//! descriptor table from a 64-bit process: its `close` stops, its `dup2`,
//! `dup3`, `close_range`, `io_uring_setup` and `seccomp` stop with a
//! listener ([`I386_FD_TABLE_SYSCALLS`]), and its `ioctl` of a VFIO request
//! stops (Linux serves those through `compat_ioctl`); the supervisor
//! serves them as the x86-64 calls (`crate::calls::Call::decode_i386`).
//! Its `dup` and `fcntl`/`fcntl64` (`F_DUPFD*`) run free as x86-64's do:
//! they only take free numbers. Every other i386 call, and every x32
//! call, runs free: an i386 `open` of a VFIO path, or its `read`,
//! `pread64` or `mmap2` of an object's descriptor, gets the kernel's
//! answer for the host's path or the object's socket (known,
//! docs/RELIABILITY.md).

use libc::sock_filter;

/// `AUDIT_ARCH_X86_64` (EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE).
pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

/// `AUDIT_ARCH_I386` (EM_386 | __AUDIT_ARCH_LE): a call of the i386 ABI
/// (`int $0x80`), which a 64-bit process can make too.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;

/// The i386 ABI's numbers of the calls the filter looks at (Linux's
/// `arch/x86/entry/syscalls/syscall_32.tbl`; they are not the x86-64
/// ones: i386 `close` is x86-64's `lstat`).
pub mod i386 {
    /// `close`.
    pub const CLOSE: i64 = 6;
    /// `dup` (runs free: it takes a free number).
    pub const DUP: i64 = 41;
    /// `ioctl` (through `compat_sys_ioctl`).
    pub const IOCTL: i64 = 54;
    /// `fcntl` (runs free: `F_DUPFD` takes a free number).
    pub const FCNTL: i64 = 55;
    /// `dup2`.
    pub const DUP2: i64 = 63;
    /// `fcntl64` (runs free, as `fcntl`).
    pub const FCNTL64: i64 = 221;
    /// `dup3`.
    pub const DUP3: i64 = 330;
    /// `seccomp`.
    pub const SECCOMP: i64 = 354;
    /// `io_uring_setup`.
    pub const IO_URING_SETUP: i64 = 425;
    /// `close_range`.
    pub const CLOSE_RANGE: i64 = 436;
}

/// The i386 calls that always stop (as x86-64's `close`), besides an
/// `ioctl` of a VFIO request.
pub const I386_TRACED_SYSCALLS: &[i64] = &[i386::CLOSE];

/// The i386 calls that stop with a listener, as [`FD_TABLE_SYSCALLS`]:
/// the same descriptor table, reached by `int $0x80`.
pub const I386_FD_TABLE_SYSCALLS: &[i64] = &[
    i386::DUP2,
    i386::DUP3,
    i386::CLOSE_RANGE,
    i386::IO_URING_SETUP,
    i386::SECCOMP,
];

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const BPF_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of args[1] (little endian).
const OFF_ARG1_LO: u32 = 16 + 8;
/// The low word of the third argument (`madvise`'s advice).
const OFF_ARG2_LO: u32 = 16 + 2 * 8;
/// The low word of the fourth argument (`mmap`'s flags).
const OFF_ARG3_LO: u32 = 16 + 3 * 8;
/// The low word of the fifth argument (`mmap`'s fd).
const OFF_ARG4_LO: u32 = 16 + 4 * 8;

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

/// The VFIO ioctls the softvfio engine serves without injecting anything
/// (queries and region/interrupt set-up that never pin memory), for
/// [`Spec::notify`] (`softvfio run` passes them through
/// [`crate::Command::user_notification`]). Every other VFIO ioctl (MAP_DMA,
/// UNMAP_DMA, SET_CONTAINER, RESET, iommufd, ...) keeps its ptrace stop,
/// where the supervisor can run `mlock`/`madvise` in the calling thread.
pub const VFIO_NOTIFIABLE_IOCTLS: &[u32] = &[
    0x3b64, // VFIO_GET_API_VERSION
    0x3b65, // VFIO_CHECK_EXTENSION
    0x3b67, // VFIO_GROUP_GET_STATUS
    0x3b6a, // VFIO_GROUP_GET_DEVICE_FD (the descriptor comes by ADDFD)
    0x3b6b, // VFIO_DEVICE_GET_INFO
    0x3b6c, // VFIO_DEVICE_GET_REGION_INFO
    0x3b6d, // VFIO_DEVICE_GET_IRQ_INFO
    0x3b6e, // VFIO_DEVICE_SET_IRQS
    0x3b70, // VFIO_IOMMU_GET_INFO
];

/// The system calls served through seccomp user notification when the
/// supervisor has a listener: the thread waits in the kernel, the
/// supervisor answers (or lets the call continue) without a ptrace stop.
///
/// None of them may be a call the supervisor injects ([`INJECTED_SYSCALLS`]):
/// an injected call runs the filter again, and a notified one would wait
/// for the notification thread while the supervisor waits for the call
/// (a deadlock). That is why the `mlock` family keeps its ptrace stop.
pub const NOTIFIED_SYSCALLS: &[i64] = &[
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstat,
];

/// With a user-notification listener, also stopped: the calls that remove
/// or replace a descriptor without `close` (`dup2`, `dup3`, `close_range`),
/// and the two that let the program change descriptors by means the filter
/// cannot see (`io_uring_setup`: a ring's `IORING_OP_CLOSE`; `seccomp`: a
/// listener of its own, whose `ADDFD` can replace a descriptor). Every
/// ptrace stop empties the supervisor's cache of which descriptors name
/// its objects (`crate::fdcache`); these rare calls keep it exact.
pub const FD_TABLE_SYSCALLS: &[i64] = &[
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_close_range,
    libc::SYS_io_uring_setup,
    libc::SYS_seccomp,
];

/// The system calls the supervisor and the engine inject into a stopped
/// thread (pinning, descriptor installation, memory-call following).
pub const INJECTED_SYSCALLS: &[i64] = &[
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_munlock,
    libc::SYS_madvise,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_socketpair,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_memfd_create,
    libc::SYS_getpid,
    // The second filter of `Tracee::serve_reads_and_writes`.
    libc::SYS_seccomp,
];

/// What the filter is built for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spec<'a> {
    /// Also stop at `munmap`/`mremap` and `mmap` with `MAP_FIXED` (the DMA
    /// sanitizer; [`MEMORY_SYSCALLS`]).
    pub memory_calls: bool,
    /// Serve [`NOTIFIED_SYSCALLS`] and these ioctl requests (low 32 bits)
    /// with `SECCOMP_RET_USER_NOTIF` instead of a ptrace stop.
    pub notify: Option<&'a [u32]>,
    /// With `notify`: the opens ([`OPEN_SYSCALLS`]) still stop under
    /// ptrace (the DMA sanitizer records the call site of each open of a
    /// VFIO file, from the registers of a stopped thread).
    pub stop_opens: bool,
}

/// The opens among [`NOTIFIED_SYSCALLS`].
pub const OPEN_SYSCALLS: &[i64] = &[libc::SYS_open, libc::SYS_openat, libc::SYS_openat2];

/// A jump target of the little assembler below.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum To {
    Next,
    Allow,
    Trace,
    Notify,
    Ioctl,
    Mmap,
    Madvise,
    X64,
    IoctlI386,
}

enum Ins {
    Ld(u32),
    And(u32),
    Jeq(u32, To, To),
    Ret(u32),
    Label(To),
}

/// Lays out `code` (classic BPF only jumps forward: every label comes after
/// its uses, the three return blocks last).
fn assemble(code: &[Ins]) -> Vec<sock_filter> {
    let mut at = std::collections::HashMap::new();
    let mut pc = 0usize;
    for i in code {
        match i {
            Ins::Label(l) => {
                at.insert(*l, pc);
            }
            _ => pc += 1,
        }
    }
    let mut out = Vec::with_capacity(pc);
    let rel = |from: usize, to: To| -> u8 {
        match to {
            To::Next => 0,
            // Every label is defined once, after its uses (see build_list).
            l => at.get(&l).map_or(0, |to: &usize| {
                let off = to - from - 1;
                // Classic BPF's jump offsets are 8 bits: the programs built
                // here stay far below (`jumps_fit_in_eight_bits`).
                debug_assert!(off <= usize::from(u8::MAX), "jump of {off}");
                off as u8
            }),
        }
    };
    for i in code {
        let pc = out.len();
        match i {
            Ins::Ld(k) => out.push(stmt(BPF_LD_W_ABS, *k)),
            Ins::And(k) => out.push(stmt(BPF_AND_K, *k)),
            Ins::Jeq(k, t, f) => out.push(jump(BPF_JEQ_K, *k, rel(pc, *t), rel(pc, *f))),
            Ins::Ret(k) => out.push(stmt(BPF_RET_K, *k)),
            Ins::Label(_) => {}
        }
    }
    out
}

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
/// with `MAP_FIXED` (see [`build_spec`]), `madvise` only with an advice of
/// [`MADVISE_WATCHED`].
pub const MEMORY_SYSCALLS: &[i64] = &[libc::SYS_munmap, libc::SYS_mremap, libc::SYS_madvise];

/// The `madvise` advice that makes memory go away (`MADV_DONTNEED`,
/// Linux 5.18's `MADV_DONTNEED_LOCKED`, 24, and `MADV_REMOVE`, of shared
/// memory only: the handler looks): the only advice the filter
/// stops at. The supervisor's own injected advice (populate, willneed) is
/// none of them, and an injected call is never handed to the handler
/// anyway. `MADV_FREE` leaves pinned pages in place (docs/SANITIZER.md).
pub const MADVISE_WATCHED: &[u32] = &[libc::MADV_DONTNEED as u32, 24, libc::MADV_REMOVE as u32];

/// Builds the ptrace-only filter program.
pub fn build() -> Vec<sock_filter> {
    build_spec(Spec::default())
}

/// Builds the ptrace-only filter program, also stopping at the system
/// calls `extra` (`mmap_fixed` is implied: an `mmap` with `MAP_FIXED`
/// always stops, as it may replace a BAR mapping).
pub fn build_with(extra: &[i64], mmap_fixed: bool) -> Vec<sock_filter> {
    let _ = mmap_fixed;
    build_list(extra, None, NOTIFIED_SYSCALLS)
}

/// Builds the filter program for `spec`.
pub fn build_spec(spec: Spec<'_>) -> Vec<sock_filter> {
    let extra: &[i64] = if spec.memory_calls {
        MEMORY_SYSCALLS
    } else {
        &[]
    };
    let notified: Vec<i64> = NOTIFIED_SYSCALLS
        .iter()
        .copied()
        .filter(|nr| !(spec.stop_opens && OPEN_SYSCALLS.contains(nr)))
        .collect();
    build_list(extra, spec.notify, &notified)
}

/// `mmap` stops only when it can concern a BAR mapping: a file mapping
/// (`fd != -1`, possibly a device file) or `MAP_FIXED` (it may replace
/// one). An anonymous mapping at an address the kernel picks cannot.
/// With `notify_ioctls`, the system calls `notified` (of
/// [`NOTIFIED_SYSCALLS`]) are notified too.
fn build_list(extra: &[i64], notify_ioctls: Option<&[u32]>, notified: &[i64]) -> Vec<sock_filter> {
    let notify = notify_ioctls.is_some();
    let mut traced: Vec<i64> = TRACED_SYSCALLS
        .iter()
        .copied()
        .filter(|nr| *nr != libc::SYS_mmap && !(notify && notified.contains(nr)))
        .collect();
    let fd_table: &[i64] = if notify { FD_TABLE_SYSCALLS } else { &[] };
    for nr in extra.iter().chain(fd_table) {
        if !traced.contains(nr) && *nr != libc::SYS_mmap {
            traced.push(*nr);
        }
    }
    let mut c = vec![
        Ins::Ld(OFF_ARCH),
        Ins::Jeq(AUDIT_ARCH_X86_64, To::X64, To::Next),
        // The i386 ABI (`int $0x80`), first: a short block, so that the
        // jump over it stays short.
        Ins::Jeq(AUDIT_ARCH_I386, To::Next, To::Allow),
        Ins::Ld(OFF_NR),
        Ins::Jeq(i386::IOCTL as u32, To::IoctlI386, To::Next),
    ];
    let i386_fd_table: &[i64] = if notify { I386_FD_TABLE_SYSCALLS } else { &[] };
    for nr in I386_TRACED_SYSCALLS.iter().chain(i386_fd_table) {
        c.push(Ins::Jeq(*nr as u32, To::Trace, To::Next));
    }
    c.extend([
        Ins::Jeq(0, To::Allow, To::Allow),
        Ins::Label(To::IoctlI386),
        Ins::Ld(OFF_ARG1_LO),
        Ins::And(0xffff_ff00),
        Ins::Jeq(VFIO_IOCTL_TYPE << 8, To::Trace, To::Allow),
        Ins::Label(To::X64),
        Ins::Ld(OFF_NR),
        Ins::Jeq(libc::SYS_ioctl as u32, To::Ioctl, To::Next),
        Ins::Jeq(libc::SYS_mmap as u32, To::Mmap, To::Next),
    ]);
    if notify {
        for nr in notified {
            c.push(Ins::Jeq(*nr as u32, To::Notify, To::Next));
        }
    }
    for nr in &traced {
        let to = if *nr == libc::SYS_madvise {
            To::Madvise
        } else {
            To::Trace
        };
        c.push(Ins::Jeq(*nr as u32, to, To::Next));
    }
    // No match: allow (an unconditional forward jump).
    c.push(Ins::Jeq(0, To::Allow, To::Allow));
    c.push(Ins::Label(To::Ioctl));
    c.push(Ins::Ld(OFF_ARG1_LO));
    // Bounded so that every jump stays within classic BPF's 8-bit offsets.
    for cmd in notify_ioctls.unwrap_or(&[]).iter().take(64) {
        c.push(Ins::Jeq(*cmd, To::Notify, To::Next));
    }
    c.push(Ins::And(0xffff_ff00));
    c.push(Ins::Jeq(VFIO_IOCTL_TYPE << 8, To::Trace, To::Allow));
    c.push(Ins::Label(To::Mmap));
    c.push(Ins::Ld(OFF_ARG4_LO));
    c.push(Ins::Jeq(u32::MAX, To::Next, To::Trace));
    c.push(Ins::Ld(OFF_ARG3_LO));
    c.push(Ins::And(libc::MAP_FIXED as u32));
    c.push(Ins::Jeq(0, To::Allow, To::Trace));
    if traced.contains(&libc::SYS_madvise) {
        c.push(Ins::Label(To::Madvise));
        c.push(Ins::Ld(OFF_ARG2_LO));
        for advice in MADVISE_WATCHED {
            c.push(Ins::Jeq(*advice, To::Trace, To::Next));
        }
        c.push(Ins::Jeq(0, To::Allow, To::Allow));
    }
    c.push(Ins::Label(To::Allow));
    c.push(Ins::Ret(libc::SECCOMP_RET_ALLOW));
    c.push(Ins::Label(To::Trace));
    c.push(Ins::Ret(libc::SECCOMP_RET_TRACE));
    c.push(Ins::Label(To::Notify));
    c.push(Ins::Ret(libc::SECCOMP_RET_USER_NOTIF));
    assemble(&c)
}

/// The filter a process gets on top of its first one once it holds an
/// object whose `read(2)`/`write(2)` the handler serves
/// ([`crate::Tracee::serve_reads_and_writes`]): it stops at every `read`
/// and `write` (`readv`, `writev`) of that process (and of the children it
/// makes later); the
/// supervisor serves those on such objects and lets the others run. Among
/// stacked filters the kernel takes the strongest action, so the first
/// filter's notifications and kills stay as they were.
pub fn build_reads_and_writes() -> Vec<sock_filter> {
    let c = vec![
        Ins::Ld(OFF_ARCH),
        Ins::Jeq(AUDIT_ARCH_X86_64, To::Next, To::Allow),
        Ins::Ld(OFF_NR),
        Ins::Jeq(libc::SYS_read as u32, To::Trace, To::Next),
        Ins::Jeq(libc::SYS_write as u32, To::Trace, To::Next),
        Ins::Jeq(libc::SYS_readv as u32, To::Trace, To::Next),
        Ins::Jeq(libc::SYS_writev as u32, To::Trace, To::Allow),
        Ins::Label(To::Allow),
        Ins::Ret(libc::SECCOMP_RET_ALLOW),
        Ins::Label(To::Trace),
        Ins::Ret(libc::SECCOMP_RET_TRACE),
    ];
    assemble(&c)
}

/// True when `cmd` (an ioctl request) is one the filter sends to us.
pub fn is_vfio_ioctl(cmd: u64) -> bool {
    (cmd as u32) & 0xffff_ff00 == VFIO_IOCTL_TYPE << 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_filter_stops_at_reads_and_writes_only() {
        let p = build_reads_and_writes();
        let x = AUDIT_ARCH_X86_64;
        let trace = libc::SECCOMP_RET_TRACE;
        let allow = libc::SECCOMP_RET_ALLOW;
        assert_eq!(run(&p, libc::SYS_read as u32, x, 0), trace);
        assert_eq!(run(&p, libc::SYS_write as u32, x, 0), trace);
        assert_eq!(run(&p, libc::SYS_readv as u32, x, 0), trace);
        assert_eq!(run(&p, libc::SYS_writev as u32, x, 0), trace);
        for nr in [
            libc::SYS_recvfrom,
            libc::SYS_pread64,
            libc::SYS_ioctl,
            libc::SYS_close,
        ] {
            assert_eq!(run(&p, nr as u32, x, 0), allow, "{nr}");
        }
        // Another ABI's read (i386 `read` is 3) runs.
        assert_eq!(run(&p, 0, 0x4000_0003, 0), allow);
    }

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
        // Without a listener the stat family stops (the cdev's stat).
        for nr in [
            libc::SYS_stat,
            libc::SYS_lstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_fstat,
        ] {
            assert_eq!(run(&p, nr as u32, x, 0), trace, "syscall {nr}");
        }
        // Without a listener nothing is cached: descriptor calls run free.
        for nr in FD_TABLE_SYSCALLS {
            assert_eq!(run(&p, *nr as u32, x, 0), allow, "syscall {nr}");
        }
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

    /// A `seccomp_data` image: nr, arch, then args.
    fn data(nr: i64, args: [u64; 6]) -> [u8; 64] {
        let mut d = [0u8; 64];
        d[0..4].copy_from_slice(&(nr as u32).to_le_bytes());
        d[4..8].copy_from_slice(&AUDIT_ARCH_X86_64.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            d[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        d
    }

    #[test]
    fn notify_filter_decisions() {
        let n = build_spec(Spec {
            memory_calls: false,
            notify: Some(VFIO_NOTIFIABLE_IOCTLS),
            stop_opens: false,
        });
        let (trace, allow, notify) = (
            libc::SECCOMP_RET_TRACE,
            libc::SECCOMP_RET_ALLOW,
            libc::SECCOMP_RET_USER_NOTIF,
        );
        let call = |nr: i64, args: [u64; 6]| run_data(&n, &data(nr, args));
        for nr in NOTIFIED_SYSCALLS {
            assert_eq!(call(*nr, [0; 6]), notify, "syscall {nr}");
        }
        // The stat family: served by notification (the cdev's stat).
        for nr in [
            libc::SYS_stat,
            libc::SYS_lstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_fstat,
        ] {
            assert_eq!(call(nr, [0; 6]), notify, "syscall {nr}");
        }
        assert_eq!(call(libc::SYS_close, [3, 0, 0, 0, 0, 0]), trace);
        assert_eq!(call(libc::SYS_mlock, [0; 6]), trace);
        assert_eq!(call(libc::SYS_mlockall, [0; 6]), trace);
        // Nothing the supervisor injects is notified (it would deadlock).
        for nr in INJECTED_SYSCALLS {
            assert_ne!(call(*nr, [0; 6]), notify, "injected syscall {nr}");
            assert!(!NOTIFIED_SYSCALLS.contains(nr));
        }
        assert_eq!(call(libc::SYS_munmap, [0; 6]), trace);
        assert_eq!(call(libc::SYS_mremap, [0; 6]), trace);
        assert_eq!(call(libc::SYS_mprotect, [0; 6]), trace);
        assert_eq!(call(libc::SYS_read, [0; 6]), allow);
        assert_eq!(call(libc::SYS_munlock, [0; 6]), allow);
        // What can replace a descriptor without close stops (the cache of
        // descriptors is emptied at every stop); dup and fcntl only take
        // free numbers and run free.
        for nr in FD_TABLE_SYSCALLS {
            assert_eq!(call(*nr, [0; 6]), trace, "syscall {nr}");
        }
        assert_eq!(call(libc::SYS_dup, [3, 0, 0, 0, 0, 0]), allow);
        assert_eq!(call(libc::SYS_fcntl, [3, 0, 0, 0, 0, 0]), allow);
        // Queries and region/interrupt set-up: notified; the ioctls that pin
        // or set up a container: ptrace.
        for cmd in VFIO_NOTIFIABLE_IOCTLS {
            assert_eq!(
                call(libc::SYS_ioctl, [3, u64::from(*cmd), 0, 0, 0, 0]),
                notify
            );
            // The kernel's request is an unsigned int: high bits are ignored.
            let high = 0xdead_0000_0000_0000 | u64::from(*cmd);
            assert_eq!(call(libc::SYS_ioctl, [3, high, 0, 0, 0, 0]), notify);
        }
        for cmd in [
            0x3b66u64, 0x3b68, 0x3b69, 0x3b6f, 0x3b71, 0x3b72, 0x3b75, 0x3b80,
        ] {
            assert_eq!(
                call(libc::SYS_ioctl, [3, cmd, 0, 0, 0, 0]),
                trace,
                "{cmd:#x}"
            );
        }
        assert_eq!(call(libc::SYS_ioctl, [3, 0x5401, 0, 0, 0, 0]), allow);
        assert_eq!(call(libc::SYS_ioctl, [3, 0x8008_3b6c, 0, 0, 0, 0]), allow);
        // Other architectures pass untouched.
        let mut other = data(libc::SYS_pread64, [0; 6]);
        other[4..8].copy_from_slice(&0x4000_0003u32.to_le_bytes());
        assert_eq!(run_data(&n, &other), allow);
    }

    /// The sanitizer's filter: user notification for the reads and writes
    /// and the notifiable ioctls it is given, ptrace stops for the opens
    /// and the memory calls (their call sites need a stopped thread).
    #[test]
    fn sanitizer_filter_keeps_opens_and_memory_calls_stopped() {
        let ioctls: Vec<u32> = VFIO_NOTIFIABLE_IOCTLS
            .iter()
            .copied()
            .filter(|c| *c != 0x3b6a)
            .collect();
        let n = build_spec(Spec {
            memory_calls: true,
            notify: Some(&ioctls),
            stop_opens: true,
        });
        let (trace, allow, notify) = (
            libc::SECCOMP_RET_TRACE,
            libc::SECCOMP_RET_ALLOW,
            libc::SECCOMP_RET_USER_NOTIF,
        );
        let call = |nr: i64, args: [u64; 6]| run_data(&n, &data(nr, args));
        for nr in NOTIFIED_SYSCALLS {
            let want = if OPEN_SYSCALLS.contains(nr) {
                trace
            } else {
                notify
            };
            assert_eq!(call(*nr, [0; 6]), want, "syscall {nr}");
        }
        for nr in MEMORY_SYSCALLS {
            // madvise stops for the advice that makes memory go away only
            // (`only_madvise_that_drops_memory_stops`): 0 is MADV_NORMAL.
            let want = if *nr == libc::SYS_madvise {
                allow
            } else {
                trace
            };
            assert_eq!(call(*nr, [0; 6]), want, "syscall {nr}");
        }
        let dontneed = libc::MADV_DONTNEED as u64;
        assert_eq!(call(libc::SYS_madvise, [0, 4096, dontneed, 0, 0, 0]), trace);
        let fixed = (libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let minus_one = u64::from(u32::MAX);
        assert_eq!(
            call(libc::SYS_mmap, [0, 4096, 3, fixed, minus_one, 0]),
            trace
        );
        assert_eq!(
            call(libc::SYS_mmap, [0, 4096, 3, anon, minus_one, 0]),
            allow
        );
        assert_eq!(call(libc::SYS_ioctl, [3, 0x3b6c, 0, 0, 0, 0]), notify);
        assert_eq!(call(libc::SYS_ioctl, [3, 0x3b6a, 0, 0, 0, 0]), trace);
        assert_eq!(call(libc::SYS_ioctl, [3, 0x3b71, 0, 0, 0, 0]), trace);
        assert_eq!(call(libc::SYS_read, [0; 6]), allow);
    }

    /// An i386 call (`int $0x80`) of the filter's concern: `nr`, `args`.
    fn i386_data(nr: i64, args: [u64; 6]) -> [u8; 64] {
        let mut d = data(nr, args);
        d[4..8].copy_from_slice(&AUDIT_ARCH_I386.to_le_bytes());
        d
    }

    /// The i386 ABI's descriptor calls stop as the x86-64 ones do: `close`
    /// always, `dup2`, `dup3`, `close_range` (and the two that hide later
    /// changes) with a listener; its VFIO ioctls stop, never notified;
    /// `dup` and `fcntl` run free. Its numbers are its own (6 is `close`,
    /// not `lstat`).
    #[test]
    fn i386_descriptor_calls_stop() {
        let (trace, allow) = (libc::SECCOMP_RET_TRACE, libc::SECCOMP_RET_ALLOW);
        let notify = Spec {
            memory_calls: true,
            notify: Some(VFIO_NOTIFIABLE_IOCTLS),
            stop_opens: false,
        };
        for (spec, listener) in [(Spec::default(), false), (notify, true)] {
            let p = build_spec(spec);
            let call = |nr: i64, args: [u64; 6]| run_data(&p, &i386_data(nr, args));
            assert_eq!(call(i386::CLOSE, [3, 0, 0, 0, 0, 0]), trace);
            for nr in I386_FD_TABLE_SYSCALLS {
                let want = if listener { trace } else { allow };
                assert_eq!(call(*nr, [3, 4, 0, 0, 0, 0]), want, "{nr}");
            }
            for cmd in [0x3b64u64, 0x3b6b, 0x3b71, 0xdead_0000_0000_3b6c] {
                assert_eq!(call(i386::IOCTL, [3, cmd, 0, 0, 0, 0]), trace, "{cmd:#x}");
            }
            for cmd in [0x5401u64, 0x5451, 0x8008_3b64] {
                assert_eq!(call(i386::IOCTL, [3, cmd, 0, 0, 0, 0]), allow, "{cmd:#x}");
            }
            for nr in [
                i386::DUP,
                i386::FCNTL,
                i386::FCNTL64,
                3,   // read
                5,   // open
                192, // mmap2
                libc::SYS_close,
                libc::SYS_lstat,
            ] {
                if nr == i386::CLOSE {
                    continue;
                }
                assert_eq!(call(nr, [3, 0, 0, 0, 0, 0]), allow, "{nr}");
            }
            // Another architecture still passes.
            let mut arm = data(libc::SYS_close, [3, 0, 0, 0, 0, 0]);
            arm[4..8].copy_from_slice(&0xC000_00B7u32.to_le_bytes());
            assert_eq!(run_data(&p, &arm), allow);
        }
    }

    /// Every jump of the largest program built lands inside it (classic
    /// BPF's offsets are 8 bits; the i386 block sits between the arch test
    /// and the x86-64 block).
    #[test]
    fn jumps_fit_in_eight_bits() {
        let many: Vec<u32> = (0..64).map(|n| 0x3b00 + n).collect();
        for spec in [
            Spec::default(),
            Spec {
                memory_calls: true,
                notify: Some(&many),
                stop_opens: true,
            },
        ] {
            let p = build_spec(spec);
            for (pc, i) in p.iter().enumerate() {
                if i.code == BPF_JEQ_K {
                    for off in [i.jt, i.jf] {
                        assert!(pc + 1 + usize::from(off) < p.len(), "pc {pc}");
                    }
                }
            }
            assert_eq!(p.last().map(|i| i.code), Some(BPF_RET_K));
        }
    }

    #[test]
    fn only_mmaps_that_can_concern_a_bar_stop() {
        let fixed = libc::MAP_FIXED as u64;
        let private_anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let minus_one = u32::MAX as u64; // the fd as the kernel reads it
        for spec in [
            Spec::default(),
            Spec {
                memory_calls: true,
                notify: None,
                stop_opens: false,
            },
            Spec {
                memory_calls: false,
                notify: Some(VFIO_NOTIFIABLE_IOCTLS),
                stop_opens: false,
            },
            Spec {
                memory_calls: true,
                notify: Some(VFIO_NOTIFIABLE_IOCTLS),
                stop_opens: true,
            },
        ] {
            let p = build_spec(spec);
            let mmap = |flags: u64, fd: u64| {
                run_data(&p, &data(libc::SYS_mmap, [0, 4096, 3, flags, fd, 0]))
            };
            assert_eq!(mmap(private_anon, minus_one), libc::SECCOMP_RET_ALLOW);
            assert_eq!(mmap(private_anon, u64::MAX), libc::SECCOMP_RET_ALLOW);
            assert_eq!(
                mmap(private_anon | fixed, minus_one),
                libc::SECCOMP_RET_TRACE
            );
            assert_eq!(mmap(libc::MAP_SHARED as u64, 3), libc::SECCOMP_RET_TRACE);
            assert_eq!(mmap(libc::MAP_SHARED as u64, 0), libc::SECCOMP_RET_TRACE);
        }
    }

    /// With the sanitizer's memory calls, `madvise` stops only for the
    /// advice that makes memory go away; the populate/willneed advice the
    /// supervisor injects to pin, and every other, runs free. Without
    /// them no `madvise` stops.
    #[test]
    fn only_madvise_that_drops_memory_stops() {
        let watched = build_spec(Spec {
            memory_calls: true,
            notify: None,
            stop_opens: false,
        });
        let madvise = |p: &[sock_filter], advice: i32| {
            run_data(
                p,
                &data(libc::SYS_madvise, [0x1000, 4096, advice as u64, 0, 0, 0]),
            )
        };
        for advice in [libc::MADV_DONTNEED, 24, libc::MADV_REMOVE] {
            assert_eq!(
                madvise(&watched, advice),
                libc::SECCOMP_RET_TRACE,
                "{advice}"
            );
        }
        for advice in [
            libc::MADV_NORMAL,
            libc::MADV_WILLNEED,
            libc::MADV_POPULATE_READ,
            libc::MADV_POPULATE_WRITE,
            libc::MADV_HUGEPAGE,
            libc::MADV_DONTFORK,
            libc::MADV_FREE,
        ] {
            assert_eq!(
                madvise(&watched, advice),
                libc::SECCOMP_RET_ALLOW,
                "{advice}"
            );
        }
        // The other memory calls still stop after the madvise block.
        let munmap = run_data(
            &watched,
            &data(libc::SYS_munmap, [0x1000, 4096, 0, 0, 0, 0]),
        );
        assert_eq!(munmap, libc::SECCOMP_RET_TRACE);
        let plain = build_spec(Spec::default());
        assert_eq!(
            madvise(&plain, libc::MADV_DONTNEED),
            libc::SECCOMP_RET_ALLOW
        );
    }
}
