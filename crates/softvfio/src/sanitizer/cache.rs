//! A cache hint for the recorder's hot path: a new IOVA region takes the
//! slot of the region forgotten longest ago, whose lines (its slot, its
//! first events, its idle-list links) are cold by then; asking for them one
//! call ahead takes the misses off the path of the call that writes them.
//!
//! Invariants:
//! - A hint changes no memory and no result: the x86 `PREFETCHT0`
//!   instruction only moves a line into the cache, never faults, and is
//!   part of x86_64's baseline (SSE); elsewhere the hint does nothing.
//! - The only `unsafe` is that instruction, here, on the address of a live
//!   reference.

#![allow(unsafe_code)]

/// Asks for the cache line holding `r` (a hint: no effect on results).
#[inline(always)]
pub(super) fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 reads nothing architecturally and never faults
    // (whatever the address; this one is a live reference's); SSE, which
    // the intrinsic is declared to need, is in every x86_64 CPU.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            (r as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
