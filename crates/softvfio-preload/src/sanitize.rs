//! The DMA sanitizer in preload mode (`softvfio run --mode preload
//! --sanitize`; docs/SANITIZER.md): settings from the environment that
//! `softvfio run` passes, call sites from the caller's stack (unwound here
//! with the objects' call frame information, glibc's `backtrace` where that
//! walk cannot be exact; resolved against `/proc/self/maps`), stale-mapping
//! checks on the program's `munmap`/`mremap`/`mmap(MAP_FIXED)`, and the
//! report at exit.
//!
//! Invariant: with the sanitizer off, the memory-call hooks cost one atomic
//! load before passing the call on.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use softvfio::sanitizer::{CallSite, Sanitizer, SanitizerConfig, StaleCause};
use softvfio_platform::sanitize::{self, LeakRecord, ProcessMaps, SanitizeMode};
use softvfio_platform::BuiltPlatform;

use crate::real;

/// The sanitizer runs in this process.
pub static ON: AtomicBool = AtomicBool::new(false);

/// The sanitizer's settings, from `SOFTVFIO_SANITIZE` (`on`, `strict`)
/// and `SOFTVFIO_SANITIZE_DEPTH`.
pub fn from_env() -> Option<Arc<Sanitizer>> {
    let mode = std::env::var("SOFTVFIO_SANITIZE").ok()?;
    SanitizeMode::parse(&mode)?;
    let depth = std::env::var("SOFTVFIO_SANITIZE_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(SanitizerConfig::default().depth);
    ON.store(true, Ordering::Release);
    Some(Sanitizer::new(SanitizerConfig {
        depth,
        ..SanitizerConfig::default()
    }))
}

/// A new image that joins the keeper (no engine of its own): the
/// sanitizer is on in it when the run's settings say so, so that its calls
/// carry their call sites.
pub fn on_from_env() {
    let on = std::env::var("SOFTVFIO_SANITIZE")
        .ok()
        .is_some_and(|m| SanitizeMode::parse(&m).is_some());
    if on {
        ON.store(true, Ordering::Release);
    }
}

/// The program's `dlclose` calls that returned (the hook in `memcalls`):
/// a walk's maps whose count differs are read again
/// ([`ProcessMaps::sync_unloads`]). Sent with each call site after the
/// hand-off, for the keeper's maps of this process.
pub static UNLOADS: AtomicU64 = AtomicU64::new(0);

/// Frames a call site keeps: the innermost frame of this library, then
/// the program's.
const SITE_FRAMES: usize = 24;

/// Frames the walk follows at most: this library's own frames come first.
const WALK_FRAMES: usize = 64;

/// The call site of the program's current call into this library.
pub fn capture(maps: &mut Option<ProcessMaps>) -> Arc<CallSite> {
    let maps = maps.get_or_insert_with(|| ProcessMaps::new(None));
    let mut addrs = [0u64; SITE_FRAMES];
    let n = return_addresses(maps, UNLOADS.load(Ordering::Acquire), &mut addrs);
    maps.site(&addrs[..n])
}

/// After the hand-off: this process's count of unloads ([`UNLOADS`]), then
/// the return addresses of the program's current call (the keeper resolves
/// them against this process's maps), as bytes to send with the call;
/// empty with the sanitizer off.
pub fn capture_raw() -> Vec<u8> {
    if !ON.load(Ordering::Relaxed) {
        return Vec::new();
    }
    let unloads = UNLOADS.load(Ordering::Acquire);
    let mut addrs = [0u64; SITE_FRAMES];
    // No engine state here: the walk has maps of its own (when another
    // thread holds them, or a fork left them locked: glibc's backtrace).
    let n = match WALK_MAPS.try_lock() {
        Ok(mut m) => return_addresses(
            m.get_or_insert_with(|| ProcessMaps::new(None)),
            unloads,
            &mut addrs,
        ),
        Err(_) => real::backtrace_into(&mut addrs),
    };
    std::iter::once(&unloads)
        .chain(&addrs[..n])
        .flat_map(|a| a.to_ne_bytes())
        .collect()
}

static WALK_MAPS: std::sync::Mutex<Option<ProcessMaps>> = std::sync::Mutex::new(None);

/// The return addresses of the calling thread's frames, innermost first,
/// from the innermost frame of this library on (its deeper frames left
/// out): unwound here with the objects' call frame information, steps and
/// all kept in `maps` (the same call sites recur); by glibc's `backtrace`
/// when this walk cannot do it exactly (a frame whose rule it does not
/// know, a stack of the program's own making). `unloads`: the count of
/// [`UNLOADS`] read for this capture (the maps are read again when it
/// changed). The count written.
///
/// The work is here, in the walk's first frame, not in the callers: a
/// caller grown past its own caller's inlining would be one more frame
/// for every walk (~100 instructions a capture).
#[inline(never)]
fn return_addresses(maps: &mut ProcessMaps, unloads: u64, out: &mut [u64]) -> usize {
    maps.sync_unloads(unloads);
    #[cfg(target_arch = "x86_64")]
    if let Some(stack) = real::own_stack::Stack::here() {
        let mut frames = [0u64; WALK_FRAMES];
        let (ip, sp, bp) = (stack.ip(), stack.sp(), stack.bp());
        let walked = if stack.foreign() {
            // On a stack of the program's own making whose frames lead
            // past its mapping (a fiber entered by a stack switch without
            // call frame information that ends the chain), the frames up to
            // there: glibc's backtrace would read past the top.
            let past_top = std::cell::Cell::new(false);
            let (n, complete) = maps.walk_cfi_frames_into(ip, sp, bp, &mut frames, |a| {
                let v = stack.read(a);
                if v.is_none() && stack.past_top(a) {
                    past_top.set(true);
                }
                v
            });
            (complete || past_top.get()).then_some(n)
        } else {
            maps.walk_cfi_into(ip, sp, bp, &mut frames, |a| stack.read(a))
        };
        if let Some(n) = walked {
            let frames = &frames[..n];
            // The last frame of this library before the program's.
            let own = own_code(stack.ip());
            let first = frames
                .iter()
                .position(|a| !own.contains(a))
                .map_or(0, |i| i.saturating_sub(1));
            let keep = &frames[first..];
            let n = keep.len().min(out.len());
            out[..n].copy_from_slice(&keep[..n]);
            return n;
        }
    }
    real::backtrace_into(out)
}

/// This library's code (`here`: an address in it), from its program
/// headers (all its executable segments, however many mappings the kernel
/// shows for them), found once: a preloaded library stays where it was
/// loaded for the life of the image (a fork's child has it at the same
/// addresses; an exec loads a new image, with this variable anew).
fn own_code(here: u64) -> std::ops::Range<u64> {
    static OWN_CODE: std::sync::OnceLock<std::ops::Range<u64>> = std::sync::OnceLock::new();
    if let Some(r) = OWN_CODE.get() {
        return r.clone();
    }
    match real::object_code_range(here) {
        Some(r) => OWN_CODE.get_or_init(|| r).clone(),
        None => 0..0,
    }
}

/// In the keeper: the call site of process `pid`'s call from the return
/// addresses it sent (`None` when it sent none), resolved against that
/// process's maps (its image, not the keeper's).
pub fn site_of(pid: i32, raw: &[u8]) -> Option<Arc<CallSite>> {
    // The count of unloads, then at least one address ([`capture_raw`]).
    if raw.len() < 16 {
        return None;
    }
    let mut words = raw
        .chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(u64::from_ne_bytes));
    let unloads = words.next()?;
    let addrs: Vec<u64> = words.collect();
    let mut all = CALLER_MAPS.lock().unwrap_or_else(|e| e.into_inner());
    let i = match all.iter().position(|(p, _)| *p == pid) {
        Some(i) => i,
        None => {
            all.push((pid, ProcessMaps::new(Some(pid))));
            all.len() - 1
        }
    };
    let maps = &mut all[i].1;
    maps.sync_unloads(unloads);
    Some(maps.site(&addrs))
}

/// In the keeper: process `pid` exec'd or exited (its maps are another
/// image's, or gone).
pub fn forget_caller(pid: i32) {
    CALLER_MAPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(p, _)| *p != pid);
}

/// The program process `pid` runs, as the report names it (its
/// executable's path).
pub fn program_of(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// In the keeper: each calling process's maps, read on first use.
static CALLER_MAPS: std::sync::Mutex<Vec<(i32, ProcessMaps)>> = std::sync::Mutex::new(Vec::new());

/// The program is about to lose (or has just lost) `[addr, addr + len)`:
/// reports each live DMA mapping of it now, on stderr.
pub fn going_away(addr: u64, len: u64, cause: StaleCause) {
    if len == 0 {
        return;
    }
    // The program's munmap, mremap, madvise, free and realloc are no
    // cancellation points; this check's work has some (the capture's read
    // of /proc/self/maps, the keeper's messages, the report's write).
    real::without_cancel(|| {
        // After the hand-off the engine, and its mappings, are the keeper's.
        if crate::forward::attached() {
            crate::forward::going_away(addr, len, cause);
            return;
        }
        let _ = crate::state::with_existing(|st| st.memory_going_away(addr, len, cause));
    });
}

/// Writes the stale-mapping lines found now.
pub fn write_stale(s: &Sanitizer, found: &[softvfio::sanitizer::StaleReport]) {
    if found.is_empty() {
        return;
    }
    let mut err = std::io::stderr().lock();
    for r in found {
        let _ = sanitize::write_stale_now(&mut err, s, r);
    }
    let _ = err.flush();
}

/// The end of a sanitized run: the report on stderr (unless `quiet`), the
/// JSON file (`SOFTVFIO_REPORT_JSON`), and the error count in the status
/// file `softvfio run` reads for `--sanitize=strict`.
pub fn finish(built: &BuiltPlatform, s: &Sanitizer, leaks: &[LeakRecord], quiet: bool) {
    let json = std::env::var_os("SOFTVFIO_REPORT_JSON").map(PathBuf::from);
    let mut err = std::io::stderr().lock();
    let errors = sanitize::finish(&mut err, built, s, leaks, json.as_deref(), quiet);
    let _ = err.flush();
    if let Some(path) = std::env::var_os("SOFTVFIO_SANITIZE_STATUS") {
        let _ = std::fs::write(path, format!("{errors}\n"));
    }
}
