//! The call this thread serves, as the front end said: its call site
//! ([`with_call_site`]) and its process ([`set_current_process`]), read by
//! every recorded event.
//!
//! Invariants:
//! - Two thread-locals: `CURRENT_CALL`, which has nothing to drop (so its
//!   accesses check no state: an event reads it once), holds the visible
//!   site's address, the addresses of the cached sites and the process;
//!   `SITES` owns the cached sites (`Arc`s; it has a destructor, so it is
//!   touched only when the cache changes or a site is interned).
//! - `visible` is 0 (no site) or the address of one of the sites `SITES`
//!   holds, at the same index in `cached` as in `SITES`. An address in
//!   `cached` is that entry's `Arc::as_ptr` while `SITES` holds it (so no
//!   other `CallSite` can have it), 0 for an empty entry. Once `SITES` is
//!   destroyed (the thread exits) `cached` may name freed sites: every use
//!   of a site then goes through `SITES`, whose access fails, and gives no
//!   site.
//! - `with_call_site` makes its site visible for the duration of its
//!   closure and puts the outer one back after (also when the closure
//!   panics). A site already cached costs no reference count change; a new
//!   one takes an entry (an `Arc` clone, the entry's old site dropped).
//!   A nested call (inside another `with_call_site`, whether or not that
//!   one has a site) puts the entry it replaced back on return, so that
//!   every outer site is cached again; the outermost call
//!   leaves its site cached for the next call. Hence the front ends' calls
//!   from a driver's few call sites (a map and an unmap site, alternating)
//!   hand their sites over without touching a reference count.

use std::cell::Cell;
use std::sync::Arc;

use super::CallSite;

/// Sites kept by the thread (see the module's invariants).
const CACHED: usize = 4;

thread_local! {
    /// Owns the cached sites (see the module's invariants).
    static SITES: [Cell<Option<Arc<CallSite>>>; CACHED] =
        const { [const { Cell::new(None) }; CACHED] };
    static CURRENT_CALL: CallKey = const {
        CallKey {
            visible: Cell::new(0),
            cached: [const { Cell::new(0) }; CACHED],
            next: Cell::new(0),
            depth: Cell::new(0),
            process: Cell::new(u32::MAX),
        }
    };
}

/// See `CURRENT_CALL`.
struct CallKey {
    /// The address of the `CallSite` of the call being served (0: none):
    /// only compared, never dereferenced.
    visible: Cell<usize>,
    /// The addresses of the sites `SITES` holds, entry by entry (0: empty).
    cached: [Cell<usize>; CACHED],
    /// The entry a site not cached takes next.
    next: Cell<usize>,
    /// `with_call_site` calls running on this thread (a call inside
    /// another is nested even when the outer one has no site: it must not
    /// push the site of a call further out out of the cache for good).
    depth: Cell<u32>,
    /// The process (a [`Sanitizer::note_process`](super::Sanitizer::note_process)
    /// index); `u32::MAX`: none said (see [`set_current_process`]).
    process: Cell<u32>,
}

/// Runs `f` with `site` as the call site of what the engine records (the
/// front end captured it from the program's stopped thread or its caller).
///
/// (Thread-local storage may be gone while a thread or process exits, e.g.
/// in an `atexit` report: then there is simply no call site.)
#[inline]
pub fn with_call_site<R>(site: Option<&Arc<CallSite>>, f: impl FnOnce() -> R) -> R {
    /// Puts the outer call's site back when dropped: after `f` returns,
    /// and when it panics (a front end catches panics and goes on serving:
    /// later events must not be filed under this call's site).
    struct Restore {
        outer: usize,
        /// The entry this call replaced and what it held, when an outer
        /// call was running (a nested call puts it back).
        replaced: Option<(usize, Option<Arc<CallSite>>)>,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some((k, old)) = self.replaced.take() {
                let addr = old.as_ref().map_or(0, |s| Arc::as_ptr(s) as usize);
                if SITES
                    .try_with(|c| c.get(k).map(|e| drop(e.replace(old))))
                    .is_ok()
                {
                    let _ = CURRENT_CALL.try_with(|c| c.cached.get(k).map(|e| e.set(addr)));
                }
            }
            let _ = CURRENT_CALL.try_with(|c| {
                c.visible.set(self.outer);
                c.depth.set(c.depth.get().saturating_sub(1));
            });
        }
    }
    let Ok((outer, replaced)) = CURRENT_CALL.try_with(|c| {
        let outer = c.visible.get();
        let nested = c.depth.get() > 0;
        c.depth.set(c.depth.get().saturating_add(1));
        let replaced = match site {
            None => {
                c.visible.set(0);
                None
            }
            Some(site) => {
                let addr = Arc::as_ptr(site) as usize;
                if c.cached.iter().any(|e| e.get() == addr) {
                    c.visible.set(addr);
                    None
                } else {
                    cache(c, site, addr, nested)
                }
            }
        };
        (outer, replaced)
    }) else {
        return f();
    };
    let _restore = Restore { outer, replaced };
    f()
}

/// Caches `site` (at `addr`) in the next entry and makes it visible; the
/// entry's old site, when `nested` (the caller puts it back), else dropped.
/// Out of line: the front ends' sites are cached after their first call.
#[inline(never)]
fn cache(
    c: &CallKey,
    site: &Arc<CallSite>,
    addr: usize,
    nested: bool,
) -> Option<(usize, Option<Arc<CallSite>>)> {
    let k = c.next.get() % CACHED;
    let Ok(old) = SITES.try_with(|s| s.get(k).map(|e| e.replace(Some(Arc::clone(site))))) else {
        // The thread is exiting: no site.
        c.visible.set(0);
        return None;
    };
    c.next.set(k + 1);
    if let Some(e) = c.cached.get(k) {
        e.set(addr);
    }
    c.visible.set(addr);
    let old = old.flatten();
    if nested {
        Some((k, old))
    } else {
        drop(old);
        None
    }
}

/// The visible call site's address (0: none) and the process (`u32::MAX`:
/// none said): what an event reads, in one thread-local access that checks
/// no state.
#[inline(always)]
pub(super) fn call() -> (usize, u32) {
    CURRENT_CALL
        .try_with(|c| (c.visible.get(), c.process.get()))
        .unwrap_or((0, u32::MAX))
}

/// Runs `f` on the visible call site, if there is one (and the thread's
/// storage is still there).
pub(super) fn with_visible_site<R>(f: impl FnOnce(&Arc<CallSite>) -> R) -> Option<R> {
    let (addr, _) = call();
    if addr == 0 {
        return None;
    }
    let k = CURRENT_CALL
        .try_with(|c| c.cached.iter().position(|e| e.get() == addr))
        .ok()
        .flatten()?;
    // A reference of our own (the slow path: a site interned for the first
    // time, or a report's question), so that the entry stays filled even if
    // `f` panics.
    let site = SITES
        .try_with(|s| {
            let e = s.get(k)?;
            let site = e.take();
            let copy = site.clone();
            e.set(site);
            copy
        })
        .ok()
        .flatten()?;
    (Arc::as_ptr(&site) as usize == addr).then(|| f(&site))
}

/// The call site set by [`with_call_site`] on this thread, if any.
pub fn current_site() -> Option<Arc<CallSite>> {
    with_visible_site(Arc::clone)
}

/// Says which process (a [`Sanitizer::note_process`](super::Sanitizer::note_process)
/// index) the VFIO calls this thread serves from now on come from (`None`:
/// not known), so that each process of a multi-process run gets its own
/// history and leaks.
pub fn set_current_process(process: Option<u32>) {
    let _ = CURRENT_CALL.try_with(|c| c.process.set(process.unwrap_or(u32::MAX)));
}

/// The process set by [`set_current_process`] on this thread.
pub fn current_process() -> Option<u32> {
    CURRENT_CALL
        .try_with(|c| c.process.get())
        .ok()
        .filter(|&p| p != u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sanitizer::Frame;

    fn site(addr: u64) -> Arc<CallSite> {
        Arc::new(CallSite {
            frames: vec![Frame {
                addr,
                object: None,
                offset: addr,
            }],
        })
    }

    /// The module's invariant: the visible site is cached, the addresses
    /// are those of the sites held.
    fn check() {
        let (visible, cached) =
            CURRENT_CALL.with(|c| (c.visible.get(), c.cached.each_ref().map(Cell::get)));
        let held = SITES.with(|s| {
            s.each_ref().map(|e| {
                let site = e.take();
                let addr = site.as_ref().map_or(0, |s| Arc::as_ptr(s) as usize);
                e.set(site);
                addr
            })
        });
        assert_eq!(cached, held);
        assert!(visible == 0 || cached.contains(&visible));
    }

    /// A site handed over again is taken from the cache: no reference is
    /// taken, and the caller's count goes back to what it was after each
    /// call; a new site takes an entry, round the entries.
    #[test]
    fn cached_sites_are_handed_over_without_a_reference_count_change() {
        let sites: Vec<Arc<CallSite>> = (1..=6).map(|k| site(k * 0x1000)).collect();
        // A driver's two sites, alternating: each cached once.
        for _ in 0..3 {
            for s in &sites[..2] {
                with_call_site(Some(s), || {
                    check();
                    assert_eq!(Arc::strong_count(s), 2, "the cache's reference only");
                    assert_eq!(
                        current_site().as_ref().map(|c| c.frames[0].addr),
                        Some(s.frames[0].addr)
                    );
                });
                check();
                assert!(current_site().is_none());
            }
        }
        // More sites than entries: the oldest entries go, and with them
        // the cache's references.
        for s in &sites {
            with_call_site(Some(s), check);
        }
        let counts: Vec<usize> = sites.iter().map(Arc::strong_count).collect();
        assert_eq!(counts.iter().filter(|&&c| c == 2).count(), CACHED);
        assert_eq!(counts.iter().filter(|&&c| c == 1).count(), 6 - CACHED);
    }

    /// Nested calls whose sites push the outer one out of the cache put it
    /// back: the outer site is visible again, cached, after each.
    #[test]
    fn a_nested_call_puts_the_outer_site_back_in_the_cache() {
        let outer = site(0x10);
        let inner: Vec<Arc<CallSite>> = (1..=2 * CACHED as u64).map(|k| site(0x100 * k)).collect();
        with_call_site(Some(&outer), || {
            for s in &inner {
                with_call_site(Some(s), || {
                    check();
                    assert_eq!(
                        current_site().map(|c| c.frames[0].addr),
                        Some(s.frames[0].addr)
                    );
                    // A call without a site inside: none visible.
                    with_call_site(None, || assert!(current_site().is_none()));
                });
                check();
                assert_eq!(current_site().map(|c| c.frames[0].addr), Some(0x10));
            }
        });
        check();
        assert!(current_site().is_none());
    }

    /// A call with no site between an outer call and an inner one with a
    /// new site: the inner one is nested too, and the outer site is cached
    /// (and visible) again after both.
    #[test]
    fn a_call_without_a_site_does_not_make_the_next_one_outermost() {
        let outer = site(0x77);
        let inner: Vec<Arc<CallSite>> = (1..=2 * CACHED as u64).map(|k| site(0x900 * k)).collect();
        with_call_site(Some(&outer), || {
            with_call_site(None, || {
                for s in &inner {
                    with_call_site(Some(s), check);
                }
            });
            check();
            assert_eq!(current_site().map(|c| c.frames[0].addr), Some(0x77));
        });
        check();
    }

    /// On a thread whose storage is gone (a destructor of another
    /// thread-local running while the thread exits), a call has no site and
    /// nothing panics.
    #[test]
    fn a_call_while_the_thread_exits_has_no_site() {
        struct AtExit(Arc<CallSite>);
        impl Drop for AtExit {
            fn drop(&mut self) {
                let seen = with_call_site(Some(&self.0), current_site);
                // `SITES` may be destroyed before or after this one: either
                // the site or none, never another.
                assert!(seen.is_none_or(|s| Arc::ptr_eq(&s, &self.0)));
            }
        }
        thread_local! {
            static AT_EXIT: Cell<Option<AtExit>> = const { Cell::new(None) };
        }
        std::thread::spawn(|| {
            let s = site(0x42);
            with_call_site(Some(&s), || ());
            AT_EXIT.with(|a| a.set(Some(AtExit(s))));
        })
        .join()
        .expect("the thread exits cleanly");
    }
}
