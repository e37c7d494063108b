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
//!   pair then reads `/proc` once, not at every call).
//! - Descriptors open on something that is no object are kept too (a
//!   notified `fstat` or `pread` of a plain file then reads no `/proc`
//!   either, while VFIO files are open). Such a number turns into an
//!   object's only after it is freed, and the one way to free it that runs
//!   after the cache was emptied is a `close` let go at its entry stop
//!   (the thread closes after the supervisor let go of the lock; `dup2`,
//!   `dup3`, `close_range` and an object's `close` run by injection under
//!   it; `execve`'s close-on-exec is followed by the exec event, which
//!   empties the cache again). So from such a stop until the thread is
//!   seen again (its next notified call or ptrace event: it has finished
//!   the close), no "not ours" entry is made, and no object's either (a
//!   program's double close of a free number, racing an open that takes
//!   that number for an object, closes the object's descriptor; found by
//!   review). A lookup that finds no open descriptor makes none either
//!   (the number is free: an object may take it without any stop).
//! - The i386 ABI (`int $0x80`) reaches the same table: its `close`,
//!   `dup2`, `dup3`, `close_range` (and `io_uring_setup`, `seccomp`) stop
//!   as the x86-64 ones ([`crate::filter::I386_FD_TABLE_SYSCALLS`]) and
//!   are handled as the x86-64 calls they stand for
//!   (`crate::calls::native_of_i386`): the same emptying, injection and
//!   `close` let go. An i386 process (32-bit code) shares no table with a
//!   64-bit one (an exec unshares it) and none of its calls is served: no
//!   entry names its threads.
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
use std::collections::{HashMap, HashSet};

/// Entries kept at most; a program that cycles through more descriptors
/// starts over (each miss costs one `/proc` read, as without the cache).
const MAX_ENTRIES: usize = 256;

/// The cache (module documentation).
#[derive(Debug, Default)]
pub(crate) struct FdCache {
    /// (tid, fd) -> (object, socket inode).
    entries: HashMap<(i32, i32), (ObjectId, u64)>,
    /// (tid, fd) open on something that is no object.
    not_ours: HashSet<(i32, i32)>,
    /// Threads let go at the entry stop of a `close` that is theirs to run
    /// (a descriptor that is no object), not seen since: the close may not
    /// have run yet, so no number is remembered meanwhile, as "not ours"
    /// or as an object (a double close of a number an open takes next).
    closing: HashSet<i32>,
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

    /// Remembers an answer read from `/proc` for a call still pending; not
    /// while a `close` let go may still be on its way (it may close this
    /// very number: a program's double close racing an open).
    pub(crate) fn insert(&mut self, tid: i32, fd: i32, obj: ObjectId, ino: u64) {
        if !self.on || self.off || !self.closing.is_empty() {
            return;
        }
        if self.len() >= MAX_ENTRIES {
            self.clear();
        }
        self.entries.insert((tid, fd), (obj, ino));
    }

    /// Whether descriptor `fd` of `tid` is known to be open on something
    /// that is no object.
    pub(crate) fn is_not_ours(&mut self, tid: i32, fd: i32) -> bool {
        let hit = self.not_ours.contains(&(tid, fd));
        if hit {
            self.hits += 1;
        }
        hit
    }

    /// Remembers that `fd` of `tid`, read from `/proc` for a call still
    /// pending, is open on something that is no object; not while a
    /// `close` let go may still be on its way.
    pub(crate) fn insert_not_ours(&mut self, tid: i32, fd: i32) {
        if !self.on || self.off || !self.closing.is_empty() {
            return;
        }
        if self.len() >= MAX_ENTRIES {
            self.clear();
        }
        self.not_ours.insert((tid, fd));
    }

    /// Thread `tid` was let go at the entry stop of a `close` it runs
    /// itself: until it is seen again, nothing is remembered as not ours.
    pub(crate) fn close_let_go(&mut self, tid: i32) {
        self.closing.insert(tid);
    }

    /// Thread `tid` made another trapped call or ptrace event (so a
    /// `close` it was let go for has run), or is gone.
    pub(crate) fn seen(&mut self, tid: i32) {
        if !self.closing.is_empty() {
            self.closing.remove(&tid);
        }
    }

    /// Forgets everything (a ptrace event, an object gone).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.not_ours.clear();
    }

    /// Forgets everything and keeps nothing from now on.
    pub(crate) fn switch_off(&mut self) {
        self.off = true;
        self.clear();
    }

    fn len(&self) -> usize {
        self.entries.len() + self.not_ours.len()
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
    fn not_ours_waits_for_a_close_let_go() {
        let mut c = FdCache::default();
        c.enable();
        c.insert_not_ours(10, 4);
        assert!(c.is_not_ours(10, 4));
        assert!(!c.is_not_ours(11, 4));
        // A close stop empties the cache, then lets the thread close.
        c.clear();
        c.close_let_go(12);
        c.insert_not_ours(10, 4);
        assert!(!c.is_not_ours(10, 4));
        // Another thread seen changes nothing; the closing one does.
        c.seen(10);
        c.insert_not_ours(10, 4);
        assert!(!c.is_not_ours(10, 4));
        c.seen(12);
        c.insert_not_ours(10, 4);
        assert!(c.is_not_ours(10, 4));
        assert_eq!(c.hits, 2);
        // Objects are not kept either meanwhile: the close let go may be a
        // double close of the number an open is about to take (found by
        // review), until the closing thread is seen again.
        c.close_let_go(12);
        c.insert(10, 5, ObjectId(7), 99);
        assert_eq!(c.get(10, 5), None);
        c.seen(12);
        c.insert(10, 5, ObjectId(7), 99);
        assert_eq!(c.get(10, 5), Some((ObjectId(7), 99)));
        c.close_let_go(12);
        c.switch_off();
        c.seen(12);
        c.insert_not_ours(10, 4);
        assert!(!c.is_not_ours(10, 4));
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
