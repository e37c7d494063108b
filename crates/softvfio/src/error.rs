//! Engine errors, each with the errno the kernel returns for the same case.

use thiserror::Error;

use crate::iommu::IommuError;
use crate::memory::MemError;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
/// An engine error: each variant is one errno, with the reason for logs.
pub enum VfioError {
    /// EINVAL: a malformed request or one the current state does not allow.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// EEXIST: the IOVA range overlaps an existing mapping.
    #[error("IOVA range overlaps an existing mapping")]
    Exists,
    /// ENOENT: no mapping at that IOVA (vaddr update).
    #[error("no mapping at that IOVA")]
    NoEntry,
    /// ENOSPC: the container's DMA entry limit is reached.
    #[error("DMA entry limit reached")]
    NoSpace,
    /// EFAULT: user memory could not be read, written or pinned.
    #[error("bad address")]
    Fault,
    /// ENOMEM: RLIMIT_MEMLOCK would be exceeded or memory could not be locked.
    #[error("cannot lock memory: {0}")]
    NoMem(String),
    /// EBUSY.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// ENODEV.
    #[error("no such device or IOMMU type")]
    NoDevice,
    /// EPERM.
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    /// EACCES.
    #[error("not available for this IOMMU type: {0}")]
    Access(&'static str),
    /// ENOTTY: unknown ioctl.
    #[error("inappropriate ioctl")]
    NoTty,
    /// EIO.
    #[error("I/O error: {0}")]
    Io(&'static str),
    /// E2BIG
    #[error("argument too big: {0}")]
    TooBig(&'static str),
    /// EBADF: a file descriptor argument is not open.
    #[error("bad file descriptor")]
    BadFd,
    /// An errno reported by a device model.
    #[error("device error (errno {0})")]
    Errno(i32),
    /// The IOMMU refused an operation.
    #[error("IOMMU: {0}")]
    Iommu(#[from] IommuError),
    /// The memory backend refused an operation.
    #[error("memory: {0}")]
    Memory(#[from] MemError),
}

impl VfioError {
    /// The errno a system call returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            VfioError::Invalid(_) => libc::EINVAL,
            VfioError::Exists => libc::EEXIST,
            VfioError::NoEntry => libc::ENOENT,
            VfioError::NoSpace => libc::ENOSPC,
            VfioError::Fault => libc::EFAULT,
            VfioError::NoMem(_) => libc::ENOMEM,
            VfioError::Busy(_) => libc::EBUSY,
            VfioError::NoDevice => libc::ENODEV,
            VfioError::NotPermitted(_) => libc::EPERM,
            VfioError::Access(_) => libc::EACCES,
            VfioError::NoTty => libc::ENOTTY,
            VfioError::Io(_) => libc::EIO,
            VfioError::TooBig(_) => libc::E2BIG,
            VfioError::BadFd => libc::EBADF,
            VfioError::Errno(e) => *e,
            VfioError::Iommu(e) => e.errno(),
            VfioError::Memory(e) => e.errno(),
        }
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, VfioError>;
