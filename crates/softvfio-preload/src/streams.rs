//! Which descriptor numbers may be ours (any object of the table: a
//! container, group, device, iommufd, fault queue...), and which of them
//! may be served streams (iommufd fault queues), asked without any lock:
//! "ours" by every hook that looks a descriptor up in the table (`close`,
//! `dup*`, `fcntl(F_DUPFD*)`, `lseek`, `fstat`, `ioctl`, `pread`/`pwrite`,
//! the `open` that reuses a stale number...), "stream" by the
//! `read`/`write`/`readv`/`writev` hooks and `syscall(SYS_read, ...)` and
//! its kin.
//!
//! The "ours" set ([`may_be_ours`]) follows the same rules as the stream
//! set below, with "object of the table" for "served stream": a number's
//! bit is set before the program can see it (by the table insert, or by
//! [`mark`] ahead of it), cleared only when its entry leaves (or on the
//! failure path of a number never handed out), so a number the table holds
//! always has its bit and a stale bit costs only the locked check.
//! [`ANY_OURS`] is set with the first bit and never cleared.
//!
//! Once a process holds a fault queue, every `read`/`write` it makes must
//! learn whether its descriptor is the queue. The descriptor table that
//! knows (the state's, or after the hand-off the keeper client's) sits
//! behind a lock that a long engine call holds (a large `MAP_DMA`), and
//! that the forking thread holds across `fork`: a `write` to a pipe had to
//! wait for it, and a signal handler's `write` in that thread's fork window
//! waited for ever. The hooks ask this set first, and take the table's lock
//! only for a number in it.
//!
//! Invariants:
//! - [`SERVED_STREAMS`] is set before the first number is marked, and never
//!   cleared: while it is clear (no queue was ever made here), the hooks
//!   cost this one load.
//! - A descriptor number that the table holds as a served stream has its
//!   bit set (numbers from [`LIMIT`] up: [`BEYOND`] is set). A bit is set
//!   before the program can see the number: before the ioctl that makes the
//!   queue writes its number into the program's reply, before a `dup` of it
//!   returns, before a new image runs with a queue its exec kept. A missing
//!   bit would send the program's read to the stand-in eventfd: never.
//! - Bits change only under the lock of the table they mirror (the state
//!   lock in process, the client lock after the hand-off), in the same
//!   critical section as the table's change: a number's entry removed
//!   (close, `close_range`, `dup2` over it, an open reusing a stale number)
//!   clears its bit, an entry added sets it for a stream and clears it for
//!   any other object. A close clears before the real close, so a number
//!   reused after it is marked again by its new owner, never cleared after.
//!   So the set equals the table's streams, except a number closed behind
//!   the library's back (a raw `syscall` instruction), whose stale bit only
//!   costs the locked check until the table forgets it.
//! - A `fork` copies the set with the table (the child's memory); an exec
//!   starts a new image with an empty set, marked again at load from the
//!   queues the exec kept (`SOFTVFIO_KEEPER_FDS`).
//! - Loads are relaxed: the program can only name a number it learned
//!   from the call that marked it (or from another thread, through its own
//!   synchronization), so the mark happens before the load, and coherence
//!   makes the load see it.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Numbers below this have a bit of their own: `fs.nr_open`'s default, the
/// largest `RLIMIT_NOFILE` a process gets unless the host raised it. 128 KiB
/// of zero pages until a bit is set.
pub(crate) const LIMIT: usize = 1 << 20;

/// One bit per descriptor number below [`LIMIT`].
static BITS: [AtomicU64; LIMIT / 64] = [const { AtomicU64::new(0) }; LIMIT / 64];

/// A stream was given a number from [`LIMIT`] up: every such number takes
/// the locked check (never cleared).
static BEYOND: AtomicBool = AtomicBool::new(false);

/// A fault queue was made in this process (or the keeper serving it):
/// only then do `read`/`write` look at the set.
pub static SERVED_STREAMS: AtomicBool = AtomicBool::new(false);

/// One bit per descriptor number below [`LIMIT`] that the table holds (any
/// kind of object).
static OURS_BITS: [AtomicU64; LIMIT / 64] = [const { AtomicU64::new(0) }; LIMIT / 64];

/// An object was given a number from [`LIMIT`] up (never cleared).
static OURS_BEYOND: AtomicBool = AtomicBool::new(false);

/// An object was ever tracked here: only then do the descriptor hooks look
/// at [`OURS_BITS`].
static ANY_OURS: AtomicBool = AtomicBool::new(false);

/// The word and bit of `fd`, when it has one.
fn slot(fd: c_int) -> Option<(&'static AtomicU64, u64)> {
    let n = usize::try_from(fd).ok()?;
    BITS.get(n / 64).map(|w| (w, 1u64 << (n % 64)))
}

/// The word and bit of `fd` in the "ours" set, when it has one.
fn ours_slot(fd: c_int) -> Option<(&'static AtomicU64, u64)> {
    let n = usize::try_from(fd).ok()?;
    OURS_BITS.get(n / 64).map(|w| (w, 1u64 << (n % 64)))
}

/// `fd` is now one of our objects. Called with the table's lock held,
/// before the program can see the number.
fn own(fd: c_int) {
    ANY_OURS.store(true, Ordering::Relaxed);
    match ours_slot(fd) {
        Some((word, bit)) => {
            word.fetch_or(bit, Ordering::Relaxed);
        }
        None if fd >= 0 => OURS_BEYOND.store(true, Ordering::Relaxed),
        None => {}
    }
}

/// `fd` is no longer one of our objects. Called with the table's lock held.
fn disown(fd: c_int) {
    if let Some((word, bit)) = ours_slot(fd) {
        if word.load(Ordering::Relaxed) & bit != 0 {
            word.fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

/// May `fd` be one of our objects? `false` is certain (the hook goes on
/// without the table); `true` asks the table under its lock. One load
/// while no object was ever tracked, two after.
#[inline]
pub(crate) fn may_be_ours(fd: c_int) -> bool {
    ANY_OURS.load(Ordering::Relaxed)
        && match ours_slot(fd) {
            Some((word, bit)) => word.load(Ordering::Relaxed) & bit != 0,
            None => fd >= 0 && OURS_BEYOND.load(Ordering::Relaxed),
        }
}

/// `fd` is now a served stream. Called with the table's lock held, before
/// the program can see the number.
pub(crate) fn mark(fd: c_int) {
    own(fd);
    SERVED_STREAMS.store(true, Ordering::Relaxed);
    match slot(fd) {
        Some((word, bit)) => {
            word.fetch_or(bit, Ordering::Relaxed);
        }
        None if fd >= 0 => BEYOND.store(true, Ordering::Relaxed),
        None => {}
    }
}

/// `fd` no longer is ours (its entry left the table, or a number made for
/// an object was closed before the program saw it). Called with the
/// table's lock held, before the real close.
pub(crate) fn unmark(fd: c_int) {
    disown(fd);
    unmark_stream(fd);
}

/// `fd` no longer is a served stream (another object took the number).
fn unmark_stream(fd: c_int) {
    if let Some((word, bit)) = slot(fd) {
        if word.load(Ordering::Relaxed) & bit != 0 {
            word.fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

/// The table's new entry for `fd`: marks it ours, and a stream or not.
pub(crate) fn set(fd: c_int, stream: bool) {
    if stream {
        mark(fd);
    } else {
        own(fd);
        unmark_stream(fd);
    }
}

/// Is `fd` marked (with the table's lock held: the table's own answer for
/// a number it holds; for numbers from [`LIMIT`] up, whether any was)?
pub(crate) fn is_marked(fd: c_int) -> bool {
    match slot(fd) {
        Some((word, bit)) => word.load(Ordering::Relaxed) & bit != 0,
        None => fd >= 0 && BEYOND.load(Ordering::Relaxed),
    }
}

/// May `fd` be a served stream? `false` is certain (the call goes on
/// without the table); `true` asks the table under its lock. One load
/// while no queue was ever made, two after.
#[inline]
pub(crate) fn may_be_served(fd: c_int) -> bool {
    SERVED_STREAMS.load(Ordering::Relaxed) && is_marked(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The set is the process's: each test uses numbers of its own.

    #[test]
    fn a_marked_number_is_served_until_unmarked() {
        assert!(!is_marked(1000));
        mark(1000);
        assert!(SERVED_STREAMS.load(Ordering::Relaxed));
        assert!(may_be_served(1000));
        assert!(!may_be_served(1001));
        assert!(!may_be_served(999));
        unmark(1000);
        assert!(!may_be_served(1000));
        // Unmarking a number never marked changes nothing.
        unmark(1002);
        assert!(!is_marked(1002));
    }

    #[test]
    fn set_follows_the_new_entry() {
        set(2063, true);
        assert!(is_marked(2063));
        assert!(may_be_ours(2063));
        assert!(!is_marked(2062) && !is_marked(2064));
        set(2063, false);
        assert!(!is_marked(2063));
        // Still ours: another kind of object took the number.
        assert!(may_be_ours(2063));
        unmark(2063);
        assert!(!may_be_ours(2063));
    }

    #[test]
    fn every_object_is_ours_until_its_entry_leaves() {
        assert!(!may_be_ours(5000));
        set(5000, false);
        assert!(may_be_ours(5000));
        assert!(!is_marked(5000));
        assert!(!may_be_ours(4999) && !may_be_ours(5001));
        unmark(5000);
        assert!(!may_be_ours(5000));
        mark(5002);
        assert!(may_be_ours(5002) && is_marked(5002));
        unmark(5002);
        assert!(!may_be_ours(5002) && !is_marked(5002));
        let big = c_int::try_from(LIMIT).unwrap() + 9;
        set(big, false);
        assert!(may_be_ours(big) && may_be_ours(big + 1));
        assert!(!may_be_ours(-3));
    }

    #[test]
    fn neighbours_in_one_word_are_kept_apart() {
        for fd in 3000..3064 {
            if fd % 3 == 0 {
                mark(fd);
            }
        }
        for fd in 3000..3064 {
            assert_eq!(is_marked(fd), fd % 3 == 0, "{fd}");
        }
        for fd in (3000..3064).filter(|fd| fd % 3 == 0) {
            unmark(fd);
        }
        assert!((3000..3064).all(|fd| !is_marked(fd)));
    }

    #[test]
    fn numbers_past_the_bitmap_fall_back_to_the_locked_check() {
        let big = c_int::try_from(LIMIT).unwrap() + 5;
        // Negative numbers are never streams.
        mark(-1);
        assert!(!is_marked(-1));
        assert!(!may_be_served(-1));
        mark(big);
        assert!(BEYOND.load(Ordering::Relaxed));
        assert!(may_be_served(big) && may_be_served(big + 1000));
        // Lazy: an unmark there keeps the locked check.
        unmark(big);
        assert!(is_marked(big));
        assert!(!is_marked(c_int::try_from(LIMIT).unwrap() - 1));
    }
}
