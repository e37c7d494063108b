//! The stat family (`stat`, `lstat`, `newfstatat`, `statx`) of a path a
//! handler serves as a character device: a VFIO device cdev
//! (`/dev/vfio/devices/vfioN`) must `stat` as the `major:minor` sysfs
//! `vfio-dev/vfioN/dev` gives, as QEMU checks before it opens it, whatever
//! the host's `/dev` holds.
//!
//! So must `fstat` of a descriptor of the opened cdev (QEMU's `open_cdev`
//! opens the node, then compares `fstat`'s `st_rdev`): `fstat`, and
//! `newfstatat`/`statx` with `AT_EMPTY_PATH` and an empty path, on a
//! descriptor of an object the handler serves as a character device.
//!
//! So do the container's (`/dev/vfio/vfio`, 10:196), a group's
//! (`/dev/vfio/<group>`) and `/dev/iommu`'s paths and descriptors: Linux's
//! are character devices, and a program may compare a descriptor's
//! `st_rdev` with its path's.
//!
//! The answer is the one devtmpfs gives for a device node: a character
//! device with the handler's permission bits, owned by root, one link, the device number; the other
//! fields are zero. Paths and descriptors no handler claims go to the kernel
//! unchanged.
//!
//! [`sys_stat`] is what the dispatcher calls for these system calls; it
//! needs only the arguments, the handler and program memory access.

use std::mem::{offset_of, size_of};
use std::path::PathBuf;

use crate::calls::StatCall;
use crate::errno::Errno;
use crate::handler::{Handler, ObjectId};
use crate::paths::normalize;
use crate::tracee::Tracee;

/// `PATH_MAX`.
const PATH_MAX: usize = 4096;

/// The object of descriptor `fd` of the calling thread, if it is one
/// (through the descriptor cache, fdcache.rs).
fn fd_object(t: &mut Tracee<'_>, fd: i32) -> Option<ObjectId> {
    let (tid, notif) = (t.tid, t.notif);
    t.core.fd_object_cached(tid, fd, notif)
}

/// What the path argument of a stat-family call names.
enum Named {
    /// The absolute, normalized path (as for `open`).
    Path(PathBuf),
    /// The empty path (with `AT_EMPTY_PATH`: the descriptor itself).
    Empty,
}

/// What a stat-family call's path names; `None` for unreadable memory or
/// a relative path from a descriptor that is not open (the kernel then
/// answers). Read without checking that a notified call still waits: the
/// caller checks before it answers ([`sys_stat`]), so a call that is not
/// ours (nearly every one) costs no check.
fn path_of(t: &Tracee<'_>, dirfd: i32, path: u64) -> Option<Named> {
    let raw = t.read_cstr_bytes_unchecked(path, PATH_MAX).ok()?;
    if raw.is_empty() {
        return Some(Named::Empty);
    }
    let (pid, tid) = (t.pid(), t.tid());
    let base = if raw.starts_with(b"/") {
        None
    } else {
        let dir = if dirfd == libc::AT_FDCWD {
            format!("/proc/{tid}/cwd")
        } else {
            format!("/proc/{tid}/fd/{dirfd}")
        };
        // No such descriptor: the kernel's EBADF (not a path from the root).
        Some(std::fs::read_link(dir).ok()?)
    };
    let base = base.map(|b| b.into_os_string().into_encoded_bytes());
    Some(Named::Path(normalize(base.as_deref(), &raw, pid, tid)))
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// `struct stat` of a character device `major:minor` (this ABI's layout).
/// `perm` the node's permission bits.
pub(crate) fn stat_bytes(major: u32, minor: u32, perm: u32) -> Vec<u8> {
    let mut b = vec![0u8; size_of::<libc::stat>()];
    put(
        &mut b,
        offset_of!(libc::stat, st_mode),
        &(libc::S_IFCHR | perm).to_ne_bytes(),
    );
    let nlink: libc::nlink_t = 1;
    put(
        &mut b,
        offset_of!(libc::stat, st_nlink),
        &nlink.to_ne_bytes(),
    );
    let rdev: libc::dev_t = libc::makedev(major, minor);
    put(&mut b, offset_of!(libc::stat, st_rdev), &rdev.to_ne_bytes());
    let blksize: libc::blksize_t = 4096;
    put(
        &mut b,
        offset_of!(libc::stat, st_blksize),
        &blksize.to_ne_bytes(),
    );
    b
}

/// `STATX_MNT_ID`.
const STATX_MNT_ID: u32 = 0x1000;
/// `STATX_MNT_ID_UNIQUE` (Linux 6.8).
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;
/// `STATX_BTIME`.
const STATX_BTIME: u32 = 0x800;
/// The attributes devtmpfs (shmem) can report, as Linux 6.12 says for a
/// VFIO node (`stx_attributes_mask`, tests-oracle/kernel-6.12-compat-fd.txt:
/// immutable, append, nodump, automount, mount root, verity, dax).
const DEVTMPFS_ATTRIBUTES: u64 = 0x30_3070;

/// `struct statx` of a character device `major:minor` asked with `mask`,
/// as Linux 6.12 answers for a devtmpfs node: the basic fields, the mount
/// id (`STATX_MNT_ID_UNIQUE` when asked, else `STATX_MNT_ID`), the birth
/// time when asked, whatever else was asked
/// (tests-oracle/kernel-6.12-compat-fd.txt). The times and the mount id
/// stay zero (there is no node to read them from).
pub(crate) fn statx_bytes(major: u32, minor: u32, perm: u32, mask: u32) -> Vec<u8> {
    let mut b = vec![0u8; size_of::<libc::statx>()];
    let mnt = if mask & STATX_MNT_ID_UNIQUE != 0 {
        STATX_MNT_ID_UNIQUE
    } else {
        STATX_MNT_ID
    };
    let answered = libc::STATX_BASIC_STATS | mnt | (mask & STATX_BTIME);
    put(
        &mut b,
        offset_of!(libc::statx, stx_mask),
        &answered.to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(libc::statx, stx_attributes_mask),
        &DEVTMPFS_ATTRIBUTES.to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(libc::statx, stx_blksize),
        &4096u32.to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(libc::statx, stx_nlink),
        &1u32.to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(libc::statx, stx_mode),
        &((libc::S_IFCHR | perm) as u16).to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(libc::statx, stx_rdev_major),
        &major.to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(libc::statx, stx_rdev_minor),
        &minor.to_ne_bytes(),
    );
    b
}

/// The kernel's anonymous inode's stat (or statx) written at `buf`.
fn anon_stat(t: &mut Tracee<'_>, buf: u64, statx: bool) -> Result<i64, Errno> {
    let (st, stx) = crate::sys::anon_inode_stats()?;
    t.write_mem(buf, if statx { &stx } else { &st }).map(|()| 0)
}

/// A descriptor's own stat asked by path, `newfstatat`/`statx` with
/// `AT_EMPTY_PATH` and an empty (or, `null`, a NULL) path: the kernel
/// answers the same call for an anonymous inode first, so that its checks
/// of the flags and mask (EINVAL), of a NULL path (valid since 6.11) and
/// its answer for what was asked are the program's. An object of an
/// anonymous inode (a fault queue) gets that answer; a character device
/// the handler serves, its node's (the mask as devtmpfs answers it).
#[allow(clippy::too_many_arguments)]
fn stat_empty_path(
    h: &mut dyn Handler,
    t: &mut Tracee<'_>,
    dirfd: i32,
    buf: u64,
    flags: i32,
    statx: bool,
    mask: u32,
    null: bool,
) -> Option<Result<i64, Errno>> {
    let obj = fd_object(t, dirfd)?;
    let dev = if h.stat_object_anon(obj) {
        None
    } else {
        Some(h.stat_object(obj)?)
    };
    let kernel = match crate::sys::anon_inode_stat_as(statx, null, flags, mask) {
        Ok(bytes) => bytes,
        Err(e) => return Some(Err(e)),
    };
    let bytes = match dev {
        None => kernel,
        Some((major, minor)) => {
            let perm = h.chardev_perm(major, minor);
            if statx {
                statx_bytes(major, minor, perm, mask)
            } else {
                stat_bytes(major, minor, perm)
            }
        }
    };
    Some(t.write_mem(buf, &bytes).map(|()| 0))
}

/// A stat-family call: `Some(answer)` when the handler serves the path as a
/// character device (0, or EFAULT for an unwritable buffer), `None` to let
/// the kernel run the call.
pub(crate) fn sys_stat(
    h: &mut dyn Handler,
    t: &mut Tracee<'_>,
    call: StatCall,
) -> Option<Result<i64, Errno>> {
    let (dirfd, path, buf, flags, statx, mask) = match call {
        StatCall::Fd { fd, buf } => {
            let obj = fd_object(t, fd)?;
            if h.stat_object_anon(obj) {
                return Some(anon_stat(t, buf, false));
            }
            let (major, minor) = h.stat_object(obj)?;
            let perm = h.chardev_perm(major, minor);
            return Some(
                t.write_mem(buf, &stat_bytes(major, minor, perm))
                    .map(|()| 0),
            );
        }
        StatCall::Path {
            dirfd,
            path,
            buf,
            flags,
            statx,
            mask,
        } => (dirfd, path, buf, flags, statx, mask),
    };
    let empty_path = flags & libc::AT_EMPTY_PATH != 0;
    // A NULL path with AT_EMPTY_PATH: the descriptor itself (Linux 6.11).
    if path == 0 && empty_path {
        return stat_empty_path(h, t, dirfd, buf, flags, statx, mask, true);
    }
    let (major, minor) = match path_of(t, dirfd, path)? {
        Named::Path(path) => h.stat_chardev(&path)?,
        // An empty path with AT_EMPTY_PATH: the descriptor itself.
        Named::Empty if empty_path => {
            return stat_empty_path(h, t, dirfd, buf, flags, statx, mask, false);
        }
        Named::Empty => return None,
    };
    // The path, the cwd or the dirfd's target was read through the tid: a
    // notified call answers only if it still waits (the tid is the caller's).
    if !t.still_waiting() {
        return None;
    }
    let perm = h.chardev_perm(major, minor);
    let bytes = if statx {
        statx_bytes(major, minor, perm, mask)
    } else {
        stat_bytes(major, minor, perm)
    };
    Some(t.write_mem(buf, &bytes).map(|()| 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_layout_is_a_chardev() {
        let b = stat_bytes(250, 3, 0o600);
        let at = offset_of!(libc::stat, st_rdev);
        let rdev = u64::from_ne_bytes(b[at..at + 8].try_into().unwrap());
        assert_eq!(rdev, libc::makedev(250, 3));
        let at = offset_of!(libc::stat, st_mode);
        assert_eq!(
            u32::from_ne_bytes(b[at..at + 4].try_into().unwrap()),
            0o20600
        );
        let x = statx_bytes(10, 196, 0o666, libc::STATX_BASIC_STATS);
        let at = offset_of!(libc::statx, stx_rdev_major);
        assert_eq!(u32::from_ne_bytes(x[at..at + 4].try_into().unwrap()), 10);
        assert_eq!(
            u32::from_ne_bytes(x[at + 4..at + 8].try_into().unwrap()),
            196
        );
        let at = offset_of!(libc::statx, stx_mode);
        assert_eq!(
            u16::from_ne_bytes(x[at..at + 2].try_into().unwrap()),
            0o20666
        );
    }
}
