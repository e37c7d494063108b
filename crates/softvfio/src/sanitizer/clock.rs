//! The sanitizer's event clock: a timestamp per recorded event must cost
//! little next to a map/unmap pair (`Instant::now()` is ~30 ns on the VMs we
//! run on, reading the TSC ~10 ns), and converts to `Instant` only when a
//! report is made.
//!
//! Invariants:
//! - With an invariant TSC (`constant_tsc` and `nonstop_tsc` in
//!   `/proc/cpuinfo`: it ticks at one rate on every CPU, in every power
//!   state), ticks are the TSC; otherwise they are nanoseconds of
//!   `Instant` since the clock was made. Either way they never go back.
//! - Ticks and `Instant` are related by two anchors, each read with the TSC
//!   read on both sides of `Instant::now()` (the midpoint is within half of
//!   that window, tens of ns); the rate comes from the anchors when a
//!   question is asked, so no calibration wait is needed when the clock is
//!   made.
//! - The only `unsafe` is the TSC read, here.

#![allow(unsafe_code)]

use std::time::{Duration, Instant};

/// Where ticks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Tsc,
    Instant,
}

/// A clock for event timestamps (see the module's invariants).
#[derive(Debug, Clone, Copy)]
pub(super) struct EventClock {
    source: Source,
    /// When the clock was made, and its ticks then.
    start: Instant,
    start_ticks: u64,
}

/// The conversion between ticks and `Instant` at one moment (one question).
#[derive(Debug, Clone, Copy)]
pub(super) struct Calibration {
    start: Instant,
    start_ticks: u64,
    ns_per_tick: f64,
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tsc() -> u64 {
    // SAFETY: RDTSC reads a counter register: no memory access, no
    // precondition; every x86_64 CPU has it (CR4.TSD is not set by Linux for
    // user space).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn tsc() -> u64 {
    0
}

/// Does this machine have a TSC that ticks at one rate everywhere?
fn invariant_tsc() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let Ok(text) = std::fs::read_to_string("/proc/cpuinfo") else {
        return false;
    };
    text.lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| {
            let has = |w: &str| l.split_whitespace().any(|x| x == w);
            has("constant_tsc") && has("nonstop_tsc")
        })
}

impl EventClock {
    /// A clock starting now.
    pub(super) fn new() -> Self {
        let source = if invariant_tsc() {
            Source::Tsc
        } else {
            Source::Instant
        };
        let mut c = Self {
            source,
            start: Instant::now(),
            start_ticks: 0,
        };
        let (at, ticks) = c.anchor();
        c.start = at;
        c.start_ticks = ticks;
        c
    }

    /// The TSC is the source (for tests and reports).
    pub(super) fn uses_tsc(&self) -> bool {
        self.source == Source::Tsc
    }

    /// Ticks now: the cheap read of the hot path (inlined: one compare and
    /// the TSC read).
    #[inline(always)]
    pub(super) fn now(&self) -> u64 {
        match self.source {
            Source::Tsc => tsc(),
            Source::Instant => self.now_by_instant(),
        }
    }

    #[cold]
    #[inline(never)]
    fn now_by_instant(&self) -> u64 {
        self.start_ticks
            .saturating_add(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// An `Instant` and the ticks at the same moment: the TSC read on both
    /// sides of it, the midpoint taken (the narrowest of a few tries, so
    /// that an interruption between the reads does not count).
    fn anchor(&self) -> (Instant, u64) {
        if self.source == Source::Instant {
            let at = Instant::now();
            let ticks = self.start_ticks.saturating_add(
                u64::try_from(at.saturating_duration_since(self.start).as_nanos())
                    .unwrap_or(u64::MAX),
            );
            return (at, ticks);
        }
        let mut best: Option<(u64, Instant, u64)> = None;
        for _ in 0..5 {
            let before = tsc();
            let at = Instant::now();
            let after = tsc();
            let width = after.wrapping_sub(before);
            if best.is_none_or(|(w, _, _)| width < w) {
                best = Some((width, at, before + width / 2));
            }
        }
        best.map_or((Instant::now(), tsc()), |(_, at, ticks)| (at, ticks))
    }

    /// The conversion as of now.
    pub(super) fn calibrate(&self) -> Calibration {
        let ns_per_tick = match self.source {
            Source::Instant => 1.0,
            Source::Tsc => {
                let (at, ticks) = self.anchor();
                let ns = at.saturating_duration_since(self.start).as_nanos() as f64;
                let dt = ticks.saturating_sub(self.start_ticks) as f64;
                if ns > 0.0 && dt > 0.0 {
                    ns / dt
                } else {
                    1.0
                }
            }
        };
        Calibration {
            start: self.start,
            start_ticks: self.start_ticks,
            ns_per_tick,
        }
    }
}

impl Calibration {
    /// The `Instant` of `ticks`.
    pub(super) fn instant(&self, ticks: u64) -> Instant {
        let ns = ticks.saturating_sub(self.start_ticks) as f64 * self.ns_per_tick;
        self.start + Duration::from_nanos(ns as u64)
    }

    /// The ticks of `at` (before the clock's start: its start).
    pub(super) fn ticks(&self, at: Instant) -> u64 {
        let ns = at.saturating_duration_since(self.start).as_nanos() as f64;
        self.start_ticks
            .saturating_add((ns / self.ns_per_tick) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_convert_to_instants_and_back_within_a_microsecond() {
        let c = EventClock::new();
        std::thread::sleep(Duration::from_millis(2));
        let before = Instant::now();
        let t = c.now();
        let after = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let cal = c.calibrate();
        let at = cal.instant(t);
        let slack = Duration::from_micros(1);
        assert!(
            at + slack >= before && at <= after + slack,
            "{:?}",
            (before, at, after)
        );
        let back = cal.ticks(at);
        assert!(
            back.abs_diff(t) <= 1 + (1.0 / cal.ns_per_tick) as u64,
            "{back} vs {t}"
        );
        // Later ticks are later instants.
        let t2 = c.now();
        assert!(t2 > t);
        assert!(c.calibrate().instant(t2) > at);
    }
}
