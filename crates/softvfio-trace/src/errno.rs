//! A Linux error number, the currency of every reply to the traced program.

use std::fmt;

/// A positive Linux `errno` value (`Errno::EFAULT`, ...).
///
/// Handlers return `Err(Errno)` to make the intercepted system call fail
/// with `-1`/`errno` in the traced program.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(pub i32);

impl Errno {
    /// `EPERM`.
    pub const EPERM: Errno = Errno(libc::EPERM);
    /// `ENOENT`.
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    /// `ESRCH`.
    pub const ESRCH: Errno = Errno(libc::ESRCH);
    /// `EINTR`.
    pub const EINTR: Errno = Errno(libc::EINTR);
    /// `EIO`.
    pub const EIO: Errno = Errno(libc::EIO);
    /// `E2BIG`.
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    /// `EBADF`.
    pub const EBADF: Errno = Errno(libc::EBADF);
    /// `EAGAIN`.
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    /// `ENOMEM`.
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    /// `EACCES`.
    pub const EACCES: Errno = Errno(libc::EACCES);
    /// `EFAULT`.
    pub const EFAULT: Errno = Errno(libc::EFAULT);
    /// `EBUSY`.
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    /// `EEXIST`.
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    /// `ENODEV`.
    pub const ENODEV: Errno = Errno(libc::ENODEV);
    /// `EINVAL`.
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// `EMFILE`.
    pub const EMFILE: Errno = Errno(libc::EMFILE);
    /// `ENOTTY`.
    pub const ENOTTY: Errno = Errno(libc::ENOTTY);
    /// `ENOSPC`.
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    /// `ESPIPE`.
    pub const ESPIPE: Errno = Errno(libc::ESPIPE);
    /// `ERANGE`.
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    /// `ENOSYS`.
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    /// `EOVERFLOW`.
    pub const EOVERFLOW: Errno = Errno(libc::EOVERFLOW);
    /// `ECHILD`.
    pub const ECHILD: Errno = Errno(libc::ECHILD);
    /// `ENAMETOOLONG`.
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);

    /// The calling thread's `errno` after a failed libc call.
    pub fn last() -> Errno {
        Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }

    /// Decodes a raw system call return value (`-4095..=-1` is an error).
    pub fn result(raw: i64) -> Result<u64, Errno> {
        if (-4095..0).contains(&raw) {
            Err(Errno((-raw) as i32))
        } else {
            Ok(raw as u64)
        }
    }

    /// The raw system call return value for this error (`-errno`).
    pub fn to_ret(self) -> i64 {
        -i64::from(self.0)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Errno({}: {})",
            self.0,
            std::io::Error::from_raw_os_error(self.0)
        )
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> Self {
        std::io::Error::from_raw_os_error(e.0)
    }
}
