//! The DMA sanitizer in preload mode (`softvfio run --mode preload
//! --sanitize`; docs/SANITIZER.md): settings from the environment that
//! `softvfio run` passes, call sites from the caller's stack (glibc's
//! `backtrace`, resolved against `/proc/self/maps`), stale-mapping checks
//! on the program's `munmap`/`mremap`/`mmap(MAP_FIXED)`, and the report at
//! exit.
//!
//! Invariant: with the sanitizer off, the memory-call hooks cost one atomic
//! load before passing the call on.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The call site of the program's current call into this library.
pub fn capture(maps: &mut Option<ProcessMaps>) -> Arc<CallSite> {
    let mut addrs = [0u64; 24];
    let n = real::backtrace_into(&mut addrs);
    maps.get_or_insert_with(|| ProcessMaps::new(None))
        .site(&addrs[..n])
}

/// The program is about to lose (or has just lost) `[addr, addr + len)`:
/// reports each live DMA mapping of it now, on stderr.
pub fn going_away(addr: u64, len: u64, cause: StaleCause) {
    if len == 0 {
        return;
    }
    let _ = crate::state::with_existing(|st| st.memory_going_away(addr, len, cause));
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
