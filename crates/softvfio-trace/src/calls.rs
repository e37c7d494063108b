//! The system calls the supervisor serves, decoded from their number and
//! raw arguments once, for both ways a call reaches it: a ptrace stop
//! (`Core::dispatch`) and a seccomp user notification
//! (`Core::on_notification`). Which of them each way sees is the filter's
//! business (`crate::filter`); what the arguments mean is this module's.
//!
//! # Invariants
//! - [`Call::decode`] is total: every number decodes (to [`Call::Other`]
//!   when the supervisor has nothing to do with it), every argument value
//!   is accepted; checks that answer an errno (a negative offset, an
//!   unreadable `open_how`) stay with the code that serves the call.
//! - The argument positions are the x86-64 system call ABI's; integer
//!   arguments the kernel takes as `int`/`unsigned int` are truncated as
//!   the kernel truncates them.

/// The arguments of one call of the stat family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatCall {
    /// `fstat(fd, buf)`.
    Fd {
        /// The descriptor.
        fd: i32,
        /// The `struct stat` to fill.
        buf: u64,
    },
    /// `stat`, `lstat`, `newfstatat` or `statx`: a path, relative to
    /// `dirfd` (`AT_FDCWD` for `stat`/`lstat`).
    Path {
        /// The directory descriptor.
        dirfd: i32,
        /// The path's address in the program.
        path: u64,
        /// The buffer to fill (`struct stat`, or `struct statx`).
        buf: u64,
        /// `AT_*` flags (0 for `stat`/`lstat`).
        flags: i32,
        /// `statx` (its buffer is a `struct statx`).
        statx: bool,
        /// `statx`'s mask of the fields asked for (0 for the others).
        mask: u32,
    },
}

/// A system call as the supervisor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// `open(path, flags, mode)` and `openat(dirfd, path, flags, mode)`
    /// (`dirfd` `AT_FDCWD` for `open`).
    Open {
        /// The directory descriptor.
        dirfd: i32,
        /// The path's address in the program.
        path: u64,
        /// `O_*` flags.
        flags: i32,
        /// The creation mode.
        mode: u32,
    },
    /// `openat2(dirfd, path, how, size)`: flags and mode are in the
    /// program's `struct open_how`.
    OpenAt2 {
        /// The directory descriptor.
        dirfd: i32,
        /// The path's address in the program.
        path: u64,
        /// The address of the `struct open_how`.
        how: u64,
        /// Its size as the program gives it.
        size: u64,
    },
    /// `close(fd)`.
    Close {
        /// The descriptor.
        fd: i32,
    },
    /// `dup2`, `dup3`, `close_range`: run as made (by injection).
    ReplaceFds,
    /// The stat family.
    Stat(StatCall),
    /// `mlock`, `mlock2`, `mlockall`: the program locks memory itself.
    LocksMemory,
    /// `execve`, `execveat`.
    Exec,
    /// A call on a descriptor that may be one of the handler's objects:
    /// `ioctl` and the `pread`/`pwrite` family (served by
    /// `Core::serve_fd_call`, which reads the rest of the arguments).
    OnFd {
        /// The descriptor.
        fd: i32,
    },
    /// `read`, `write`, `readv`, `writev` of a descriptor: served when it
    /// is an object that streams (an iommufd fault queue); a process stops
    /// at these only once it holds one (the second filter).
    Stream {
        /// The descriptor.
        fd: i32,
    },
    /// `mmap`, `munmap`, `mremap`, `mprotect`, `madvise`: for the handler's
    /// memory-call hook.
    Memory,
    /// Nothing the supervisor serves: the kernel runs it.
    Other,
}

impl Call {
    /// Decodes system call `nr` with raw arguments `a`.
    pub(crate) fn decode(nr: i64, a: [u64; 6]) -> Call {
        match nr {
            libc::SYS_open => Call::Open {
                dirfd: libc::AT_FDCWD,
                path: a[0],
                flags: a[1] as i32,
                mode: a[2] as u32,
            },
            libc::SYS_openat => Call::Open {
                dirfd: a[0] as i32,
                path: a[1],
                flags: a[2] as i32,
                mode: a[3] as u32,
            },
            libc::SYS_openat2 => Call::OpenAt2 {
                dirfd: a[0] as i32,
                path: a[1],
                how: a[2],
                size: a[3],
            },
            libc::SYS_close => Call::Close { fd: a[0] as i32 },
            libc::SYS_dup2 | libc::SYS_dup3 | libc::SYS_close_range => Call::ReplaceFds,
            libc::SYS_fstat => Call::Stat(StatCall::Fd {
                fd: a[0] as i32,
                buf: a[1],
            }),
            libc::SYS_stat | libc::SYS_lstat => Call::Stat(StatCall::Path {
                dirfd: libc::AT_FDCWD,
                path: a[0],
                buf: a[1],
                flags: 0,
                statx: false,
                mask: 0,
            }),
            libc::SYS_newfstatat => Call::Stat(StatCall::Path {
                dirfd: a[0] as i32,
                path: a[1],
                buf: a[2],
                flags: a[3] as i32,
                statx: false,
                mask: 0,
            }),
            // statx(dirfd, path, flags, mask, buf)
            libc::SYS_statx => Call::Stat(StatCall::Path {
                dirfd: a[0] as i32,
                path: a[1],
                buf: a[4],
                flags: a[2] as i32,
                statx: true,
                mask: a[3] as u32,
            }),
            libc::SYS_mlock | libc::SYS_mlock2 | libc::SYS_mlockall => Call::LocksMemory,
            libc::SYS_execve | libc::SYS_execveat => Call::Exec,
            libc::SYS_ioctl
            | libc::SYS_pread64
            | libc::SYS_pwrite64
            | libc::SYS_preadv
            | libc::SYS_pwritev
            | libc::SYS_preadv2
            | libc::SYS_pwritev2 => Call::OnFd { fd: a[0] as i32 },
            libc::SYS_read | libc::SYS_write | libc::SYS_readv | libc::SYS_writev => {
                Call::Stream { fd: a[0] as i32 }
            }
            libc::SYS_mmap
            | libc::SYS_munmap
            | libc::SYS_mremap
            | libc::SYS_mprotect
            | libc::SYS_madvise => Call::Memory,
            _ => Call::Other,
        }
    }
}

/// The x86-64 call (number and arguments) that a call of the i386 ABI
/// (`int $0x80`) of a 64-bit process stands for, for the calls the filter
/// stops ([`crate::filter::I386_TRACED_SYSCALLS`],
/// [`crate::filter::I386_FD_TABLE_SYSCALLS`], `ioctl`); `None` for any
/// other. `a` are the i386 argument registers in ABI order (`ebx`, `ecx`,
/// `edx`, `esi`, `edi`, `ebp`): each is taken as the 32-bit value the
/// compat entry takes, an `ioctl`'s argument zero-extended as
/// `compat_ptr` makes it. These calls mean the same in both ABIs (Linux
/// runs the same `sys_close`, `sys_dup2`, `sys_dup3`, `sys_close_range`;
/// `compat_sys_ioctl` hands VFIO's files their `compat_ptr_ioctl`, the
/// same ioctl), so the supervisor serves them as the x86-64 ones.
pub(crate) fn native_of_i386(nr: i64, a: [u64; 6]) -> Option<(i64, [u64; 6])> {
    use crate::filter::i386;
    let w = a.map(|v| v & 0xffff_ffff);
    let native = match nr {
        i386::CLOSE => libc::SYS_close,
        i386::DUP2 => libc::SYS_dup2,
        i386::DUP3 => libc::SYS_dup3,
        i386::CLOSE_RANGE => libc::SYS_close_range,
        i386::IOCTL => libc::SYS_ioctl,
        i386::IO_URING_SETUP => libc::SYS_io_uring_setup,
        i386::SECCOMP => libc::SYS_seccomp,
        _ => return None,
    };
    Some((native, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens() {
        let flags = (libc::O_RDWR | libc::O_CLOEXEC) as u64;
        assert_eq!(
            Call::decode(libc::SYS_open, [0x1000, flags, 0o644, 9, 9, 9]),
            Call::Open {
                dirfd: libc::AT_FDCWD,
                path: 0x1000,
                flags: flags as i32,
                mode: 0o644
            }
        );
        // The kernel's int dirfd: the high half of the register is ignored.
        assert_eq!(
            Call::decode(
                libc::SYS_openat,
                [0xffff_ffff_0000_0005, 0x1000, 2, 0, 9, 9]
            ),
            Call::Open {
                dirfd: 5,
                path: 0x1000,
                flags: 2,
                mode: 0
            }
        );
        assert_eq!(
            Call::decode(libc::SYS_openat2, [7, 0x1000, 0x2000, 24, 9, 9]),
            Call::OpenAt2 {
                dirfd: 7,
                path: 0x1000,
                how: 0x2000,
                size: 24
            }
        );
    }

    #[test]
    fn stat_family() {
        let a = [3, 0x1000, 0x2000, 0x3000, 0x4000, 0];
        assert_eq!(
            Call::decode(libc::SYS_fstat, a),
            Call::Stat(StatCall::Fd { fd: 3, buf: 0x1000 })
        );
        for nr in [libc::SYS_stat, libc::SYS_lstat] {
            assert_eq!(
                Call::decode(nr, [0x1000, 0x2000, 0, 0, 0, 0]),
                Call::Stat(StatCall::Path {
                    dirfd: libc::AT_FDCWD,
                    path: 0x1000,
                    buf: 0x2000,
                    flags: 0,
                    statx: false,
                    mask: 0
                })
            );
        }
        let empty = libc::AT_EMPTY_PATH as u64;
        assert_eq!(
            Call::decode(libc::SYS_newfstatat, [3, 0x1000, 0x2000, empty, 0, 0]),
            Call::Stat(StatCall::Path {
                dirfd: 3,
                path: 0x1000,
                buf: 0x2000,
                flags: libc::AT_EMPTY_PATH,
                statx: false,
                mask: 0
            })
        );
        // statx(dirfd, path, flags, mask, buf): the buffer is the fifth.
        assert_eq!(
            Call::decode(libc::SYS_statx, [3, 0x1000, empty, 0x7ff, 0x4000, 0]),
            Call::Stat(StatCall::Path {
                dirfd: 3,
                path: 0x1000,
                buf: 0x4000,
                flags: libc::AT_EMPTY_PATH,
                statx: true,
                mask: 0x7ff
            })
        );
    }

    #[test]
    fn i386_calls_stand_for_the_x86_64_ones() {
        use crate::filter::i386;
        // ebx, ecx, edx, ...: the high halves of the registers are not the
        // call's (the compat entry takes 32 bits).
        let a = [0xdead_0000_0000_0007, 9, 0x8000_0000, 4, 5, 6];
        let w = [7, 9, 0x8000_0000, 4, 5, 6];
        for (nr, native) in [
            (i386::CLOSE, libc::SYS_close),
            (i386::DUP2, libc::SYS_dup2),
            (i386::DUP3, libc::SYS_dup3),
            (i386::CLOSE_RANGE, libc::SYS_close_range),
            (i386::IOCTL, libc::SYS_ioctl),
            (i386::IO_URING_SETUP, libc::SYS_io_uring_setup),
            (i386::SECCOMP, libc::SYS_seccomp),
        ] {
            assert_eq!(native_of_i386(nr, a), Some((native, w)), "{nr}");
        }
        // An ioctl's pointer is zero-extended (compat_ptr), never signed.
        let (_, args) = native_of_i386(i386::IOCTL, [3, 0x3b6b, 0xffff_f000, 0, 0, 0]).unwrap();
        assert_eq!(args[2], 0xffff_f000);
        // i386 6 is close, x86-64 6 is lstat; dup and fcntl run free.
        for nr in [i386::DUP, i386::FCNTL, i386::FCNTL64, 3, 5, 11, 192] {
            assert_eq!(native_of_i386(nr, a), None, "{nr}");
        }
    }

    #[test]
    fn the_rest() {
        assert_eq!(
            Call::decode(libc::SYS_close, [4, 0, 0, 0, 0, 0]),
            Call::Close { fd: 4 }
        );
        for nr in [libc::SYS_dup2, libc::SYS_dup3, libc::SYS_close_range] {
            assert_eq!(Call::decode(nr, [0; 6]), Call::ReplaceFds);
        }
        for nr in [
            libc::SYS_ioctl,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_preadv2,
            libc::SYS_pwritev2,
        ] {
            assert_eq!(
                Call::decode(nr, [6, 1, 2, 3, 4, 5]),
                Call::OnFd { fd: 6 },
                "{nr}"
            );
        }
        assert_eq!(Call::decode(libc::SYS_mlockall, [0; 6]), Call::LocksMemory);
        assert_eq!(Call::decode(libc::SYS_execveat, [0; 6]), Call::Exec);
        assert_eq!(Call::decode(libc::SYS_madvise, [0; 6]), Call::Memory);
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_readv,
            libc::SYS_writev,
        ] {
            assert_eq!(Call::decode(nr, [5, 0, 0, 0, 0, 0]), Call::Stream { fd: 5 });
        }
        assert_eq!(Call::decode(libc::SYS_getpid, [0; 6]), Call::Other);
        assert_eq!(Call::decode(-1, [0; 6]), Call::Other);
    }
}
