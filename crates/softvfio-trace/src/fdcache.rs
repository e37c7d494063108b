//! Which program descriptors name handler objects, remembered between
//! seccomp user notifications.
//!
//! A notified `pread`/`pwrite`/ioctl names a descriptor number; which object
//! it is comes from `/proc/<tid>/fd/<fd>` (a `readlink` of a socket, ~3-4 µs
//! on the reference machine, a third of a notified BAR read). The answer is
//! kept per (thread, descriptor) and reused by the next notified call.
//!
//! # Invariants
//! - An entry was read from `/proc/<tid>/fd/<fd>` for a call of `tid` that
//!   was still pending after the read (`NOTIF_ID_VALID`), and nothing that
//!   can remove or replace a descriptor has run since in any traced
//!   process. What can: `close`, `close_range`, `dup2`, `dup3`, `execve`
//!   (close-on-exec), a thread's or process's end, the same calls injected
//!   by the supervisor ([`changes_descriptors`]). Each of them is a ptrace
//!   event (the filter stops them when there is a listener,
//!   [`crate::filter::FD_TABLE_SYSCALLS`]), and the supervisor empties the
//!   cache, under the lock that notifications are served under: at the
//!   entry stop of such a call (`dup2`, `dup3`, `close_range` then run by
//!   injection before the lock is let go, and `close` of an object's
//!   descriptor too; a `close` of another descriptor cannot make an entry
//!   wrong), after a stop in which such a call was injected, and at every
//!   ptrace event other than a seccomp stop (exits, exec, signals, clones).
//!   Calls that only create descriptors (`open`, `dup`, `fcntl(F_DUPFD)`,
//!   `socket`, `SCM_RIGHTS`, `ADDFD`) take free numbers, which no entry
//!   names.
//! - Entries are made for notified calls and, at ptrace stops, for the
//!   VFIO ioctls, region accesses and the stat family (the MAP_DMA/UNMAP_DMA
//!   pair then reads `/proc` once, not at every call). Only descriptors of
//!   objects are kept: a descriptor that is not one is looked up again at
//!   each call (`/proc/<tid>/fd`, ~4 µs a notified `fstat` while VFIO files
//!   are open, docs/PERFORMANCE-HISTORY.md "Stop 9"). Keeping those too
//!   would need every `close` to be seen done before the next lookup (a
//!   `close` let go at its entry stop runs after the cache was emptied,
//!   and a notified lookup in between would remember a number that an
//!   object's `dup` may take next).
//! - A tid is freed only when the supervisor's own `waitpid` reaps it, and a
//!   task that gets the number again starts stopped until the supervisor
//!   resumes it, after it handled the reap (and emptied the cache): an
//!   entry never speaks for another thread.
//! - An object whose last descriptor went (the epoll sweep) empties the
//!   cache too.
//! - Two ways to change descriptors that no stop shows: an io_uring's
//!   `IORING_OP_CLOSE`, and `SECCOMP_IOCTL_NOTIF_ADDFD` with
//!   `SECCOMP_ADDFD_FLAG_SETFD` on a listener of the program's own. Their
//!   set-up calls (`io_uring_setup`, `seccomp` with
//!   `SECCOMP_FILTER_FLAG_NEW_LISTENER`) stop, and switch the cache off for
//!   the rest of the run. (Android's binder, which can also install
//!   descriptors, is not served.)

use crate::handler::ObjectId;
use std::collections::HashMap;

/// Entries kept at most; a program that cycles through more descriptors
/// starts over (each miss costs one `/proc` read, as without the cache).
const MAX_ENTRIES: usize = 256;

/// The cache (module documentation).
#[derive(Debug, Default)]
pub(crate) struct FdCache {
    /// (tid, fd) -> (object, socket inode).
    entries: HashMap<(i32, i32), (ObjectId, u64)>,
    /// The program's filter stops the calls that replace descriptors (it has
    /// a listener, [`crate::filter::FD_TABLE_SYSCALLS`]): without, `dup2`
    /// and the like run unseen and nothing may be kept.
    on: bool,
    /// Switched off for the rest of the run.
    off: bool,
    /// Lookups answered from the cache.
    pub(crate) hits: u64,
}

impl FdCache {
    pub(crate) fn get(&mut self, tid: i32, fd: i32) -> Option<(ObjectId, u64)> {
        let e = self.entries.get(&(tid, fd)).copied();
        if e.is_some() {
            self.hits += 1;
        }
        e
    }

    /// The program's filter has a listener (and stops the calls that
    /// replace descriptors): from now on answers are kept.
    pub(crate) fn enable(&mut self) {
        self.on = true;
    }

    /// Remembers an answer read from `/proc` for a call still pending.
    pub(crate) fn insert(&mut self, tid: i32, fd: i32, obj: ObjectId, ino: u64) {
        if !self.on || self.off {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        self.entries.insert((tid, fd), (obj, ino));
    }

    /// Forgets everything (a ptrace event, an object gone).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Forgets everything and keeps nothing from now on.
    pub(crate) fn switch_off(&mut self) {
        self.off = true;
        self.entries.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Whether the system call `nr` can close or replace a descriptor of the
/// calling process (or of the image it becomes).
pub(crate) fn changes_descriptors(nr: i64) -> bool {
    matches!(
        nr,
        libc::SYS_close
            | libc::SYS_close_range
            | libc::SYS_dup2
            | libc::SYS_dup3
            | libc::SYS_execve
            | libc::SYS_execveat
    )
}

/// Whether the system call `nr` with arguments `a`, seen at a ptrace stop,
/// can change descriptors by means no later stop shows (module
/// documentation).
pub(crate) fn hides_later_descriptor_changes(nr: i64, a: [u64; 6]) -> bool {
    const SECCOMP_SET_MODE_FILTER: u64 = 1;
    const SECCOMP_FILTER_FLAG_NEW_LISTENER: u64 = 1 << 3;
    match nr {
        libc::SYS_io_uring_setup => true,
        libc::SYS_seccomp => {
            a[0] == SECCOMP_SET_MODE_FILTER && a[1] & SECCOMP_FILTER_FLAG_NEW_LISTENER != 0
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_answers_until_cleared() {
        let mut c = FdCache::default();
        // Not enabled (no listener): nothing is kept.
        c.insert(10, 5, ObjectId(7), 99);
        assert_eq!(c.get(10, 5), None);
        c.enable();
        c.insert(10, 5, ObjectId(7), 99);
        assert_eq!(c.get(10, 5), Some((ObjectId(7), 99)));
        // Per thread: another thread's table may differ (unshare).
        assert_eq!(c.get(11, 5), None);
        assert_eq!(c.hits, 1);
        c.clear();
        assert_eq!(c.get(10, 5), None);
    }

    #[test]
    fn switched_off_keeps_nothing() {
        let mut c = FdCache::default();
        c.enable();
        c.insert(10, 5, ObjectId(7), 99);
        c.switch_off();
        assert_eq!(c.get(10, 5), None);
        c.insert(10, 5, ObjectId(7), 99);
        assert_eq!(c.get(10, 5), None);
    }

    #[test]
    fn bounded() {
        let mut c = FdCache::default();
        c.enable();
        for fd in 0..MAX_ENTRIES as i32 {
            c.insert(1, fd, ObjectId(1), 1);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        c.insert(1, 100_000, ObjectId(1), 1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(1, 100_000), Some((ObjectId(1), 1)));
    }

    #[test]
    fn what_switches_it_off() {
        assert!(hides_later_descriptor_changes(
            libc::SYS_io_uring_setup,
            [0; 6]
        ));
        // seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER).
        assert!(hides_later_descriptor_changes(
            libc::SYS_seccomp,
            [1, 8, 0, 0, 0, 0]
        ));
        // A filter without a listener (QEMU's -sandbox), strict mode.
        assert!(!hides_later_descriptor_changes(
            libc::SYS_seccomp,
            [1, 0, 0, 0, 0, 0]
        ));
        assert!(!hides_later_descriptor_changes(
            libc::SYS_seccomp,
            [0, 0, 0, 0, 0, 0]
        ));
        assert!(!hides_later_descriptor_changes(libc::SYS_dup2, [0; 6]));
    }
}
