//! `softvfio run`: runs a program with its `/dev/vfio` system calls served by
//! the softvfio engine, in one of two modes:
//!
//! - `trace` (the default): through the ptrace supervisor of
//!   `softvfio-trace`; works for every program, static ones included.
//! - `preload`: with the LD_PRELOAD library `libsoftvfio_preload.so` found
//!   next to this executable; the engine then runs inside the program, with
//!   no ptrace round trip, but only dynamically linked programs and only
//!   calls that go through libc's exported functions are served.
//! - `auto` picks `preload` for dynamically linked ELF programs (those with
//!   a `PT_INTERP` program header) that the loader lets preload (not
//!   set-user-ID/set-group-ID) when the library is there and `--stats` is
//!   not asked, and `trace` for everything else (static programs, scripts,
//!   which may start anything, Go programs, which bypass libc):
//!   [`auto_mode`].
//!
//! In trace mode:
//! The handler maps each descriptor object to a container, group or device
//! file of the byte-level uAPI (`softvfio::uapi`) and passes ioctls, `pread`
//! and `pwrite` straight through; user memory is the traced process's own,
//! pinned with `mlock`/`madvise` injected into it. `/proc/<pid>/status` is
//! served with `VmLck` showing type1's locked-memory accounting, as the
//! kernel shows it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use softvfio::frontend::{FdTarget, FileObject, ProgramFds, Routed, Session};
use softvfio::memory::host::{HostMemory, MmSyscalls};
use softvfio::memory::{UserMemory, PAGE_SIZE};
use softvfio::sanitizer::{self as engine_sanitizer, Sanitizer, SanitizerConfig, StaleCause};
use softvfio::uapi::Vfio;
use softvfio::VfioError;
use softvfio_platform::hostview::mount::MountPlan;
use softvfio_platform::hostview::HostView;
pub use softvfio_platform::report::{FinalState, Leftovers};
use softvfio_platform::sanitize::{self, ProcessMaps, SanitizeMode};

use crate::stack_window::WindowedMemory;
use softvfio_platform::{build, BuiltPlatform, Config};
use softvfio_trace::{
    exit_code, Command, Errno, Handler, ObjectId, OpenReply, OpenRequest, Supervisor,
    SyscallInjector, Tracee,
};

use crate::inspect::{self, Registry};
use crate::report;

/// How `softvfio run` reaches the program's system calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// ptrace + seccomp supervisor: every program, static ones included.
    Trace,
    /// LD_PRELOAD library: dynamically linked programs, libc-level calls.
    Preload,
    /// `preload` for dynamically linked ELF programs (not Go's), else `trace`.
    Auto,
}

/// The preload library's file name, looked up next to the `softvfio`
/// executable (or named by `SOFTVFIO_PRELOAD_LIB`).
pub const PRELOAD_LIB: &str = "libsoftvfio_preload.so";

#[derive(Args)]
pub struct RunArgs {
    /// Platform configuration (TOML); the built-in reference platform by default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// How the program's VFIO calls are served: `trace` (ptrace, any
    /// program), `preload` (LD_PRELOAD library, dynamic programs only) or
    /// `auto` (preload for dynamically linked programs the loader can
    /// preload, else trace; docs/DESIGN.md).
    #[arg(long, value_enum, default_value_t = Mode::Trace)]
    mode: Mode,
    /// Where `softvfio inspect` reaches this session (default
    /// /tmp/softvfio-<pid>.sock).
    #[arg(long)]
    inspect_socket: Option<PathBuf>,
    /// Print nothing after the program ends.
    #[arg(long, short)]
    quiet: bool,
    /// Trace mode: after the end report, count the program's `MAP_DMA`/
    /// `UNMAP_DMA` calls by size, and its region reads and writes
    /// (docs/PERFORMANCE.md, QEMU).
    #[arg(long)]
    stats: bool,
    /// The DMA sanitizer (docs/SANITIZER.md): explain every DMA fault with
    /// the mapping history of its IOVA and the program's call sites, report
    /// stale mappings and what the program leaks. `--sanitize=strict` also
    /// makes any fault, stale mapping or leak a non-zero exit status.
    #[arg(long, value_name = "MODE", num_args = 0..=1, require_equals = true,
          default_missing_value = "on", value_parser = ["on", "strict"])]
    sanitize: Option<String>,
    /// Events kept per IOVA region by the sanitizer.
    #[arg(long, default_value_t = 8)]
    sanitize_depth: usize,
    /// With `--sanitize`: also write the sanitizer's report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    program: Vec<OsString>,
}

/// Loads the platform a command asks for; prints the error and returns the
/// exit status 2 for a bad configuration.
pub fn load_platform(config: Option<&Path>) -> Result<BuiltPlatform, u8> {
    let cfg = match config {
        Some(path) => match Config::from_file(&path.to_string_lossy()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("softvfio: bad configuration {}: {e}", path.display());
                return Err(2);
            }
        },
        None => Config::reference(),
    };
    build(&cfg).map_err(|e| {
        eprintln!("softvfio: bad configuration: {e}");
        2
    })
}

pub fn main(args: RunArgs) -> u8 {
    let built = match load_platform(args.config.as_deref()) {
        Ok(b) => Arc::new(b),
        Err(code) => return code,
    };
    let mode = match args.mode {
        Mode::Auto => auto_mode(&args.program[0], args.stats).0,
        m => m,
    };
    if mode == Mode::Preload {
        if args.stats {
            eprintln!("softvfio: warning: --stats counts in trace mode only");
        }
        if is_static_elf(&args.program[0]) {
            eprintln!(
                "softvfio: warning: {} is statically linked; the preload library cannot reach it (use --mode trace)",
                args.program[0].to_string_lossy()
            );
        }
        return run_preloaded(&args, hostview_plan(&built));
    }
    let vfio = Arc::new(Vfio::new(built.platform.clone()));
    let sanitize = args.sanitize.as_deref().and_then(SanitizeMode::parse);
    let sanitizer = sanitize.map(|_| {
        Sanitizer::new(SanitizerConfig {
            depth: args.sanitize_depth,
            ..SanitizerConfig::default()
        })
    });
    if let Some(s) = &sanitizer {
        vfio.set_sanitizer(s.clone());
    }
    let registry = Arc::new(Registry::new(built.clone()));
    registry.set_sanitizer(sanitizer.clone());
    let socket = args
        .inspect_socket
        .clone()
        .unwrap_or_else(|| inspect::default_socket(std::process::id()));
    let server = inspect::serve(&socket, registry.clone());
    if let Err(e) = &server {
        eprintln!(
            "softvfio: inspect socket {} unavailable: {e}",
            socket.display()
        );
    }

    // The program's own Ctrl-C/Ctrl-\ reach it; the supervisor stays to
    // report.
    ignore_interactive_signals();
    let mut sup = Supervisor::new();
    let mut handler = VfioHandler::new(vfio, registry.clone(), sup.injector());
    handler.sanitizer = sanitizer.clone();
    if args.stats {
        handler.stats = Some(CallStats::default());
    }
    let mut cmd = Command::new(&args.program[0]);
    cmd.args(&args.program[1..]);
    // The sanitizer watches munmap/mremap/mmap(MAP_FIXED) for stale mappings.
    cmd.trace_memory_calls(sanitizer.is_some());
    // SOFTVFIO_TRACE_NOTIFY=0: every intercepted call at a ptrace stop, as
    // before seccomp user notification (for comparisons; docs/PERFORMANCE.md).
    if std::env::var_os("SOFTVFIO_TRACE_NOTIFY").is_none_or(|v| v != "0") {
        if sanitizer.is_some() {
            // The calls whose call sites the sanitizer records stop (the
            // walk reads the stopped thread's registers); the region reads
            // and writes and the other queries stay notified.
            cmd.user_notification(Some(&sanitized_notifiable_ioctls()));
            cmd.stop_opens(true);
        } else {
            cmd.user_notification(Some(softvfio_trace::filter::VFIO_NOTIFIABLE_IOCTLS));
        }
    }
    if let Some(plan) = hostview_plan(&built) {
        handler.sysfs = Some((HostView::of(&built), built.clone()));
        // SAFETY: `MountPlan::apply_or_warn` is async-signal-safe (it only
        // makes system calls on data the plan prepared).
        unsafe {
            cmd.before_exec(Arc::new(move || plan.apply_or_warn()));
        }
    }
    let status = sup.run(cmd, &mut handler);
    if server.is_ok() {
        let _ = std::fs::remove_file(&socket);
    }
    let mut code = match status {
        Ok(s) => exit_code(s),
        Err(e) => {
            eprintln!(
                "softvfio: cannot run {}: {e}",
                args.program[0].to_string_lossy()
            );
            127
        }
    };
    let mut err = std::io::stderr().lock();
    if !args.quiet {
        let _ =
            report::write_end_report(&mut err, &built, &handler.leftovers, &handler.final_state());
        if let Some(stats) = &handler.stats {
            let _ = stats.write(&mut err);
        }
    }
    if let (Some(s), Some(mode)) = (&sanitizer, sanitize) {
        let errors = sanitize::finish(
            &mut err,
            &built,
            s,
            &handler.leftovers.leaks,
            args.report_json.as_deref(),
            args.quiet,
        );
        code = strict_status(code, mode, errors);
    }
    u8::try_from(code.clamp(0, 255)).unwrap_or(1)
}

/// The ioctls the sanitizer records a call site for (`Handler::ioctl`):
/// they stop under ptrace, where the walk reads the thread's registers.
const SITE_IOCTLS: [u64; 7] = [
    softvfio::uapi::VFIO_IOMMU_MAP_DMA,
    softvfio::uapi::VFIO_IOMMU_UNMAP_DMA,
    softvfio::uapi::VFIO_GROUP_GET_DEVICE_FD,
    softvfio::uapi::VFIO_DEVICE_SET_IRQS,
    softvfio::iommufd::abi::IOMMU_IOAS_MAP,
    softvfio::iommufd::abi::IOMMU_IOAS_UNMAP,
    softvfio::iommufd::abi::IOMMU_IOAS_COPY,
];

/// The notifiable ioctls of a sanitized run: all but [`SITE_IOCTLS`].
fn sanitized_notifiable_ioctls() -> Vec<u32> {
    softvfio_trace::filter::VFIO_NOTIFIABLE_IOCTLS
        .iter()
        .copied()
        .filter(|c| !SITE_IOCTLS.iter().any(|s| *s as u32 == *c))
        .collect()
}

/// The exit status of a sanitized run: the program's own, or under
/// `--sanitize=strict` [`sanitize::STRICT_EXIT_STATUS`] when the program
/// succeeded but the sanitizer found errors.
fn strict_status(code: i32, mode: SanitizeMode, errors: usize) -> i32 {
    if mode == SanitizeMode::Strict && errors > 0 {
        eprintln!("softvfio: sanitizer: {errors} error(s) (--sanitize=strict)");
        if code == 0 {
            return sanitize::STRICT_EXIT_STATUS;
        }
    }
    code
}

/// The host's view of the platform in sysfs (docs/HOSTVIEW.md), planned
/// here so that the forked child only makes system calls.
/// `SOFTVFIO_HOSTVIEW=0` leaves the program the host's own sysfs.
fn hostview_plan(built: &BuiltPlatform) -> Option<MountPlan> {
    if std::env::var_os("SOFTVFIO_HOSTVIEW").is_some_and(|v| v == "0") {
        return None;
    }
    MountPlan::new(&HostView::of(built))
        .inspect_err(|e| eprintln!("softvfio: warning: no host view of sysfs: {e}"))
        .ok()
}

fn ignore_interactive_signals() {
    // SAFETY: setting the disposition of SIGINT/SIGQUIT to SIG_IGN has no
    // memory-safety preconditions; the traced child resets dispositions at
    // exec only for caught signals, and the supervisor installs the filter
    // in the child before exec, so the child restores them itself.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
}

/// Finds `program` the way `execvp` would.
fn resolve_program(program: &OsString) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.components().count() > 1 || p.is_absolute() {
        return Some(p.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(p))
        .find(|c| c.is_file())
}

/// The start of `program`'s file, where ELF keeps its program headers.
fn head_of(program: &OsString) -> Option<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(resolve_program(program)?).ok()?;
    let mut head = Vec::new();
    f.take(64 * 1024).read_to_end(&mut head).ok()?;
    Some(head)
}

/// What `--mode auto` picks for `program`, and why: the fastest mode that
/// serves it. Preload serves a call in the program itself (no context
/// switch; docs/PERFORMANCE.md, uapi-*), but only reaches a dynamically
/// linked program that the loader lets preload, through libc's functions,
/// and shares nothing across fork/exec; trace serves every program.
pub fn auto_mode(program: &OsString, stats: bool) -> (Mode, &'static str) {
    use std::os::unix::fs::PermissionsExt;
    let path = resolve_program(program);
    let head = path.as_ref().and_then(|_| head_of(program));
    let mode_bits = path
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.permissions().mode());
    let choice = auto_choice(head.as_deref(), mode_bits, preload_library().is_ok(), stats);
    if choice.0 == Mode::Preload && path.as_deref().is_some_and(is_go_program) {
        return (
            Mode::Trace,
            "a Go program: it makes its system calls itself, not through libc, so LD_PRELOAD cannot reach them",
        );
    }
    choice
}

/// Section names that only Go's toolchain writes (its runtime issues
/// system calls directly, also in a cgo build linked with libc).
/// Linux 5.18's `MADV_DONTNEED_LOCKED` (not in every libc crate).
const MADV_DONTNEED_LOCKED: i32 = 24;

const GO_SECTIONS: &[&[u8]] = &[b".go.buildinfo", b".note.go.buildid", b".gopclntab"];

/// Is the ELF file at `path` a Go program (a section of [`GO_SECTIONS`])?
fn is_go_program(path: &Path) -> bool {
    elf_section_names(path)
        .is_some_and(|names| names.iter().any(|n| GO_SECTIONS.contains(&n.as_slice())))
}

/// The section names of the ELF file at `path` (read as needed, not
/// whole: Go binaries are large); `None` when it is not an object file.
fn elf_section_names(path: &Path) -> Option<Vec<Vec<u8>>> {
    use object::{Object, ObjectSection};
    let f = std::fs::File::open(path).ok()?;
    let cache = object::read::ReadCache::new(f);
    let obj = object::File::parse(&cache).ok()?;
    let names = obj
        .sections()
        .filter_map(|s| s.name_bytes().ok().map(<[u8]>::to_vec))
        .collect();
    Some(names)
}

/// [`auto_mode`] on what it read: the start of the file, its mode bits,
/// whether the preload library is there, whether `--stats` was asked.
fn auto_choice(
    head: Option<&[u8]>,
    mode_bits: u32,
    lib_present: bool,
    stats: bool,
) -> (Mode, &'static str) {
    let Some(head) = head else {
        return (Mode::Trace, "not found or unreadable: trace reports it");
    };
    if !head.starts_with(b"\x7fELF") {
        return (
            Mode::Trace,
            "not an ELF executable (a script may start any program, static ones too; trace follows every child)",
        );
    }
    if !elf_has_interp(head) {
        return (Mode::Trace, "statically linked: LD_PRELOAD cannot reach it");
    }
    if mode_bits & 0o6000 != 0 {
        return (
            Mode::Trace,
            "set-user-ID or set-group-ID: the loader ignores LD_PRELOAD",
        );
    }
    if stats {
        return (Mode::Trace, "--stats counts in trace mode only");
    }
    if !lib_present {
        return (Mode::Trace, "the preload library is missing");
    }
    (Mode::Preload, "dynamically linked: preloaded")
}

/// Is `program` an ELF executable without `PT_INTERP` (statically linked)?
fn is_static_elf(program: &OsString) -> bool {
    head_of(program).is_some_and(|head| head.starts_with(b"\x7fELF") && !elf_has_interp(&head))
}

/// Does the ELF image `b` have a `PT_INTERP` program header? (64- and 32-bit,
/// either byte order; anything that is not ELF has none.)
pub fn elf_has_interp(b: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if b.len() < 0x34 || &b[..4] != b"\x7fELF" {
        return false;
    }
    let is64 = b[4] == 2;
    let le = b[5] == 1;
    let u16_at = |o: usize| -> Option<u64> {
        let s: [u8; 2] = b.get(o..o + 2)?.try_into().ok()?;
        Some(u64::from(if le {
            u16::from_le_bytes(s)
        } else {
            u16::from_be_bytes(s)
        }))
    };
    let u32_at = |o: usize| -> Option<u64> {
        let s: [u8; 4] = b.get(o..o + 4)?.try_into().ok()?;
        Some(u64::from(if le {
            u32::from_le_bytes(s)
        } else {
            u32::from_be_bytes(s)
        }))
    };
    let u64_at = |o: usize| -> Option<u64> {
        let s: [u8; 8] = b.get(o..o + 8)?.try_into().ok()?;
        Some(if le {
            u64::from_le_bytes(s)
        } else {
            u64::from_be_bytes(s)
        })
    };
    let header = if is64 {
        (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    } else {
        (u32_at(0x1c), u16_at(0x2a), u16_at(0x2c))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = header else {
        return false;
    };
    (0..phnum).any(|i| {
        phoff
            .checked_add(i.saturating_mul(phentsize))
            .and_then(|o| usize::try_from(o).ok())
            .and_then(u32_at)
            .is_some_and(|t| t == u64::from(PT_INTERP))
    })
}

/// The preload library: `SOFTVFIO_PRELOAD_LIB`, else next to this executable.
fn preload_library() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SOFTVFIO_PRELOAD_LIB") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no directory", exe.display()))?;
    let lib = dir.join(PRELOAD_LIB);
    if lib.is_file() {
        Ok(lib)
    } else {
        Err(format!(
            "the preload library {} is missing (`cargo build --release` builds it)",
            lib.display()
        ))
    }
}

/// Preload mode: the program runs with `libsoftvfio_preload.so` in
/// `LD_PRELOAD`; the library serves `/dev/vfio` inside it and prints the end
/// report itself. No ptrace: this process only waits.
fn run_preloaded(args: &RunArgs, hostview: Option<MountPlan>) -> u8 {
    let lib = match preload_library() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("softvfio: {e}");
            return 2;
        }
    };
    let mut preload = lib.into_os_string();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let mut cmd = std::process::Command::new(&args.program[0]);
    // SOFTVFIO_PRELOAD_TOP: the program whose parent is this process
    // reports at exit even if it opens nothing, as in trace mode.
    cmd.args(&args.program[1..])
        .env("LD_PRELOAD", preload)
        .env("SOFTVFIO_PRELOAD_TOP", std::process::id().to_string());
    match &args.config {
        Some(c) => {
            let abs = std::path::absolute(c).unwrap_or_else(|_| c.clone());
            cmd.env("SOFTVFIO_CONFIG", abs);
        }
        None => {
            cmd.env_remove("SOFTVFIO_CONFIG");
        }
    }
    if args.quiet {
        cmd.env("SOFTVFIO_QUIET", "1");
    }
    // The sanitizer runs inside the program; it leaves the number of errors
    // in `status_file` for `--sanitize=strict`.
    let sanitize = args.sanitize.as_deref().and_then(SanitizeMode::parse);
    let status_file =
        std::env::temp_dir().join(format!("softvfio-sanitize-{}.status", std::process::id()));
    cmd.env_remove("SOFTVFIO_SANITIZE")
        .env_remove("SOFTVFIO_REPORT_JSON");
    if let Some(mode) = sanitize {
        cmd.env("SOFTVFIO_SANITIZE", mode.as_str())
            .env("SOFTVFIO_SANITIZE_DEPTH", args.sanitize_depth.to_string())
            .env("SOFTVFIO_SANITIZE_STATUS", &status_file);
        if let Some(j) = &args.report_json {
            cmd.env(
                "SOFTVFIO_REPORT_JSON",
                std::path::absolute(j).unwrap_or_else(|_| j.clone()),
            );
        }
    }
    if let Some(plan) = hostview {
        use std::os::unix::process::CommandExt;
        // SAFETY: `MountPlan::apply_or_warn` is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                plan.apply_or_warn();
                Ok(())
            });
        }
    }
    // The library's keeper (forked by the program at its first fork or
    // exec with VFIO files open, docs/DESIGN.md §5) is reparented here: it
    // dies with this process, and this process waits for it (its end
    // report and sanitizer verdict are the program's).
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1u64, 0u64, 0u64, 0u64) };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "softvfio: cannot run {}: {e}",
                args.program[0].to_string_lossy()
            );
            return 127;
        }
    };
    // The program's own Ctrl-C/Ctrl-\ reach it; this process waits for it
    // (ignoring them only after the spawn, so the program keeps the
    // dispositions it was given).
    ignore_interactive_signals();
    let mut code = match child.wait() {
        Ok(s) => exit_code(s),
        Err(e) => {
            eprintln!("softvfio: waiting for the program: {e}");
            1
        }
    };
    wait_for_keepers();
    if let Some(mode) = sanitize {
        let errors = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let _ = std::fs::remove_file(&status_file);
        code = strict_status(code, mode, errors);
    }
    u8::try_from(code.clamp(0, 255)).unwrap_or(1)
}

/// Waits until no child of this process is the preload library's keeper
/// (`softvfio-keeper`), reaping every child that ends meanwhile (other
/// orphans of the program are not waited for: they go to init when this
/// process exits).
fn wait_for_keepers() {
    loop {
        if !children().iter().any(|pid| is_keeper(*pid)) {
            return;
        }
        let mut st = 0;
        // SAFETY: `st` is a live int; waits for any child.
        let r = unsafe { libc::waitpid(-1, &mut st, 0) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// The children of this process (all threads).
fn children() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

fn is_keeper(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim() == "softvfio-keeper")
}

/// `MmSyscalls` that run inside the traced process.
struct TracedMm(SyscallInjector);

impl MmSyscalls for TracedMm {
    fn madvise(&self, addr: u64, len: u64, advice: i32) -> Result<(), i32> {
        self.0.madvise(addr, len, advice).map_err(|e| e.0)
    }
    fn mlock(&self, addr: u64, len: u64) -> Result<(), i32> {
        self.0.mlock(addr, len).map_err(|e| e.0)
    }
    fn munlock(&self, addr: u64, len: u64) -> Result<(), i32> {
        // Another process's unmap may unpin this one's pages: the munlock
        // runs in the owner all the same (before that call returns).
        self.0.munlock_in_owner(addr, len).map_err(|e| e.0)
    }
    fn calls_are_costly(&self) -> bool {
        // Each call is injected: ptrace round trips.
        true
    }
}

/// What `--stats` counts: DMA map calls by size (the size each `MAP_DMA`
/// asked for; the size each `UNMAP_DMA` reported unmapped), and accesses to
/// device regions.
#[derive(Default)]
struct CallStats {
    map_sizes: std::collections::BTreeMap<u64, u64>,
    map_failed: u64,
    unmap_sizes: std::collections::BTreeMap<u64, u64>,
    unmap_failed: u64,
    preads: u64,
    pwrites: u64,
    /// With the sanitizer: call sites captured (registers read, stack
    /// walked) and the time that took.
    sites: u64,
    site_time: std::time::Duration,
    /// Reads of the program's stack those captures made.
    site_reads: u64,
}

impl CallStats {
    /// After an ioctl: for the DMA map calls, the size field of the
    /// program's argument (`vfio_iommu_type1_dma_map.size` at byte 24,
    /// `vfio_iommu_type1_dma_unmap.size` at byte 16, which the kernel
    /// rewrites to the size unmapped).
    fn note_ioctl(&mut self, request: u64, arg: u64, ok: bool, user: &dyn UserMemory) {
        let (sizes, failed, at) = match request {
            softvfio::uapi::VFIO_IOMMU_MAP_DMA => (&mut self.map_sizes, &mut self.map_failed, 24),
            softvfio::uapi::VFIO_IOMMU_UNMAP_DMA => {
                (&mut self.unmap_sizes, &mut self.unmap_failed, 16)
            }
            _ => return,
        };
        let mut b = [0u8; 8];
        if !ok || user.read(arg.wrapping_add(at), &mut b).is_err() {
            *failed += 1;
            return;
        }
        *sizes.entry(u64::from_le_bytes(b)).or_insert(0) += 1;
    }

    fn write(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        fn line(
            w: &mut impl std::io::Write,
            name: &str,
            sizes: &std::collections::BTreeMap<u64, u64>,
            failed: u64,
        ) -> std::io::Result<()> {
            let calls: u64 = sizes.values().sum();
            let bytes: u64 = sizes.iter().map(|(s, n)| s * n).sum();
            write!(
                w,
                "{name}: {calls} call(s) of {bytes} bytes, {failed} failed; by size:"
            )?;
            for (size, n) in sizes {
                write!(w, " {size:#x}:{n}")?;
            }
            writeln!(w)
        }
        line(w, "MAP_DMA", &self.map_sizes, self.map_failed)?;
        line(w, "UNMAP_DMA", &self.unmap_sizes, self.unmap_failed)?;
        if self.sites > 0 {
            writeln!(
                w,
                "sanitizer call sites: {} captured in {:.3} ms ({:.1} us each), {} stack reads",
                self.sites,
                self.site_time.as_secs_f64() * 1e3,
                self.site_time.as_secs_f64() * 1e6 / self.sites as f64,
                self.site_reads
            )?;
        }
        writeln!(
            w,
            "region reads: {}, region writes: {}",
            self.preads, self.pwrites
        )
    }
}

struct VfioHandler {
    stats: Option<CallStats>,
    session: Session,
    registry: Arc<Registry>,
    injector: SyscallInjector,
    /// One address space per traced process (mlock state is per mm).
    mems: HashMap<i32, Arc<HostMemory>>,
    /// Address spaces of processes that exited or exec'd, for the report.
    retired: Vec<Arc<HostMemory>>,
    leftovers: Leftovers,
    /// The sysfs view and the platform whose device models serve `config`.
    sysfs: Option<(HostView, Arc<BuiltPlatform>)>,
    /// Device mappings of the traced processes (trapped MMIO).
    bars: crate::run_mmio::TracedMappings,
    /// Device files closed while still mapped: released with their last
    /// mapping.
    mapped_closed: Vec<u64>,
    /// The DMA sanitizer, with `--sanitize`.
    sanitizer: Option<Arc<Sanitizer>>,
    /// Each traced process's file mappings, for call sites.
    maps: HashMap<i32, ProcessMaps>,
    /// The stack a call-site walk reads (its buffer reused).
    stack_window: crate::stack_window::StackWindow,
    /// Bytes above the stack pointer the walks from each (process,
    /// instruction) read at most: how much the next one reads at once.
    stack_hints: HashMap<(i32, u64), u64>,
    /// With the sanitizer: each traced process's index in its process list
    /// (a new one after an exec), so that each has its own history.
    images: HashMap<i32, u32>,
    /// Objects already counted as left open.
    noted: std::collections::HashSet<u64>,
    /// Every process of the program is gone.
    ended: bool,
}

fn errno(e: VfioError) -> Errno {
    Errno(e.errno())
}

impl VfioHandler {
    /// Counts each of `keys` (once) as left open by the program, with what
    /// it holds now (and its sanitizer leak lines).
    fn note_left_open(&mut self, keys: Vec<u64>) {
        for key in keys {
            if !self.noted.insert(key) {
                continue;
            }
            if let Some(o) = self.session.object(key) {
                self.leftovers.note(o);
                if let Some(s) = &self.sanitizer {
                    self.leftovers.note_sanitized(s, key, o);
                }
            }
        }
    }

    /// The sanitizer's watch on munmap/mremap/mmap(MAP_FIXED) and
    /// madvise(MADV_DONTNEED, or MADV_REMOVE of shared memory) of memory
    /// mapped for DMA (stale
    /// mappings); `None` when it does not apply.
    fn sanitize_memory_call(
        &mut self,
        t: &mut Tracee<'_>,
        nr: i64,
        a: [u64; 6],
    ) -> Option<Result<i64, Errno>> {
        let s = self.sanitizer.clone()?;
        if nr == libc::SYS_mmap && a[3] & libc::MAP_FIXED as u64 == 0 {
            return None;
        }
        let madvise = match (nr, a[2] as i32) {
            (libc::SYS_madvise, libc::MADV_DONTNEED | MADV_DONTNEED_LOCKED) => {
                Some(StaleCause::MadvDontneed)
            }
            // Pages go only from shared writable memory (Linux answers
            // EINVAL or EACCES elsewhere): which, after the call.
            (libc::SYS_madvise, libc::MADV_REMOVE) => Some(StaleCause::MadvRemove),
            (libc::SYS_madvise, _) => return None,
            _ => None,
        };
        // The mappings whose memory is this process's (image's): those it
        // made or moved the vaddr of, in any container, whoever holds it (a
        // fork child's, made through an inherited container, still maps the
        // child's pages after the child closed its copy of the file).
        let owner = *self.images.get(&t.pid())?;
        if !s.owns_live_mappings(owner) {
            return None;
        }
        // Made here, so that only a call that succeeded is reported.
        let site = self.call_site(t);
        let res = t.inject_syscall(nr, a).ok()?;
        // madvise: Linux answers 0 on memory mapped for DMA (and the
        // program goes on with other pages than the device's); here the
        // pin's mlock makes it EINVAL. Either way the program meant the
        // memory to go; an unaligned address is EINVAL on Linux too, and
        // so is memory the program locked itself (then nothing goes: a
        // program that locks memory is not reported on EINVAL).
        if let Some(cause) = madvise {
            let own_locks = self.mems.get(&t.pid()).is_some_and(|m| m.program_locks());
            let errno = i32::try_from(-res).unwrap_or(0);
            let pid = t.pid();
            let bar = |start, end| self.bars.first_in(pid, start, end);
            let taken =
                sanitize::madvise_taken(Some(pid), cause, a[0], a[1], errno, own_locks, &bar);
            for (addr, len) in taken {
                self.report_going_away(&s, owner, site.clone(), addr, len, cause);
            }
            return Some(Ok(res));
        }
        // -4095..-1 is an errno.
        if !(-4095..0).contains(&res) {
            let lost = match nr {
                libc::SYS_mremap if res as u64 != a[0] => Some((a[0], a[1])),
                libc::SYS_mremap if a[2] < a[1] => Some((a[0] + a[2], a[1] - a[2])),
                libc::SYS_mremap => None,
                _ => Some((a[0], a[1])),
            };
            let cause = match nr {
                libc::SYS_munmap => StaleCause::Munmap,
                libc::SYS_mremap => StaleCause::Mremap,
                _ => StaleCause::MmapFixed,
            };
            if let Some((addr, len)) = lost.filter(|l| l.1 > 0) {
                self.report_going_away(&s, owner, site, addr, len, cause);
            }
        }
        Some(Ok(res))
    }

    /// Process (image) `owner` lost `[addr, addr + len)` by `cause` at
    /// `site`: each live mapping of it is reported now.
    fn report_going_away(
        &self,
        s: &Sanitizer,
        owner: u32,
        site: Option<Arc<engine_sanitizer::CallSite>>,
        addr: u64,
        len: u64,
        cause: StaleCause,
    ) {
        let found = engine_sanitizer::with_call_site(site.as_ref(), || {
            s.memory_going_away(Some(owner), addr, len, cause)
        });
        let mut err = std::io::stderr().lock();
        for r in &found {
            let _ = sanitize::write_stale_now(&mut err, s, r);
        }
    }

    fn new(vfio: Arc<Vfio>, registry: Arc<Registry>, injector: SyscallInjector) -> Self {
        Self {
            stats: None,
            session: Session::new(vfio),
            registry,
            injector,
            mems: HashMap::new(),
            retired: Vec::new(),
            leftovers: Leftovers::default(),
            sysfs: None,
            bars: Default::default(),
            mapped_closed: Vec::new(),
            sanitizer: None,
            maps: HashMap::new(),
            stack_window: Default::default(),
            stack_hints: HashMap::new(),
            images: HashMap::new(),
            noted: std::collections::HashSet::new(),
            ended: false,
        }
    }

    /// With the sanitizer: the program's call site of the system call `t`
    /// is stopped in (its frames, unwound with the objects' call frame
    /// information; `ProcessMaps` keeps the steps and sites it made).
    fn call_site(&mut self, t: &Tracee<'_>) -> Option<Arc<engine_sanitizer::CallSite>> {
        let s = self.sanitizer.as_ref()?;
        // What this call records belongs to this process (image).
        let image = *self.images.entry(t.pid()).or_insert_with(|| {
            let program = std::fs::read_link(format!("/proc/{}/exe", t.pid()))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "?".into());
            s.note_process(t.pid(), program)
        });
        engine_sanitizer::set_current_process(Some(image));
        let started = std::time::Instant::now();
        let (ip, sp, bp) = t.stack_registers()?;
        let maps = self
            .maps
            .entry(t.pid())
            .or_insert_with(|| ProcessMaps::new(Some(t.pid())));
        // The walk reads a few words per frame, upwards from `sp`: as many
        // bytes as the last walk from `ip` used, in one read, more only if
        // this one goes further.
        // With `process_vm_readv`, which reads what the program may read
        // (a `pread` of `/proc/<pid>/mem` is ~0.8 us cheaper here, but it
        // forces its way into PROT_NONE pages, and the ioctl's argument is
        // read from these bytes: docs/SANITIZER.md).
        let mut fill = |at: u64, buf: &mut [u8]| {
            let mut got = 0;
            for chunk in buf.chunks_mut(16 * 1024) {
                let n = t.read_prefix(at + got as u64, chunk).unwrap_or(0);
                got += n;
                if n < chunk.len() {
                    break;
                }
            }
            got
        };
        let hint = self.stack_hints.get(&(t.pid(), ip)).copied();
        let window = &mut self.stack_window;
        window.start(sp, hint, &mut fill);
        let frames = maps.walk(ip, sp, bp, 16, |a| window.word(a, &mut fill));
        let used = window.used();
        let hint = self.stack_hints.entry((t.pid(), ip)).or_insert(used);
        *hint = (*hint).max(used);
        let site = maps.site(&frames);
        if let Some(stats) = &mut self.stats {
            stats.sites += 1;
            stats.site_time += started.elapsed();
            stats.site_reads += u64::from(self.stack_window.reads());
        }
        Some(site)
    }

    fn mem_for(&mut self, pid: i32) -> Arc<HostMemory> {
        let injector = self.injector.for_pid(pid);
        self.mems
            .entry(pid)
            .or_insert_with(|| {
                let mem = HostMemory::for_pid(pid, Arc::new(TracedMm(injector)));
                // MAP_DMA of a BAR mapping (peer to peer).
                mem.set_device_ranges(self.bars.device_ranges(pid));
                mem.into_shared()
            })
            .clone()
    }

    /// `/proc/<pid>/status` with `VmLck` as the kernel would show it: the
    /// type1 accounting instead of the mlocks softvfio uses to keep the
    /// pinned pages resident.
    fn status_file(&self, path: &Path, pid: i32) -> Option<Result<OpenReply, Errno>> {
        let mem = self.mems.get(&pid)?;
        let text = std::fs::read_to_string(path).ok()?;
        let ours_kb = mem.stats().locked_bytes / 1024;
        let accounted_kb = mem.account().locked_pages() * PAGE_SIZE / 1024;
        let out = softvfio_platform::report::status_with_vmlck(&text, ours_kb, accounted_kb);
        Some(Ok(OpenReply::File(out.into_bytes())))
    }

    /// A platform device's sysfs `config`, opened for reading: the live
    /// config space of the device model at open time.
    fn config_file(&self, path: &str, flags: i32) -> Option<Result<OpenReply, Errno>> {
        let (view, built) = self.sysfs.as_ref()?;
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return None;
        }
        let dev = built.device(view.config_device(path)?)?;
        Some(Ok(OpenReply::File(dev.config_bytes())))
    }

    /// Releases the device files whose last mapping is gone.
    fn release_unmapped(&mut self) {
        let bars = &self.bars;
        let (gone, kept): (Vec<u64>, Vec<u64>) =
            self.mapped_closed.iter().partition(|k| !bars.holds(**k));
        self.mapped_closed = kept;
        for key in gone {
            self.session.release(key);
        }
    }

    /// The address space of `pid` is gone (exec or exit): nothing reaches
    /// it through the pid any more. It is kept for the end report while
    /// mappings still count pins or pages in it; the others are dropped, so
    /// that a program that starts many processes does not grow this list.
    fn retire(&mut self, pid: i32) {
        if let Some(m) = self.mems.remove(&pid) {
            m.retire();
            self.retired.push(m);
        }
        self.retired
            .retain(|m| m.stats().pin_refs > 0 || m.account().locked_pages() > 0);
    }

    fn final_state(&self) -> FinalState {
        let mut f = FinalState {
            open_objects: self.session.len() as u64,
            ..FinalState::default()
        };
        for m in self.mems.values().chain(self.retired.iter()) {
            let s = m.stats();
            f.pinned_pages += s.pinned_pages;
            f.pin_refs += s.pin_refs;
            f.locked_pages += m.account().locked_pages();
        }
        f
    }
}

/// Is `/proc/<pid>/status` or `/proc/<pid>/task/<tid>/status`? Returns the pid.
fn status_pid(path: &Path) -> Option<i32> {
    let s = path.to_str()?;
    let rest = s.strip_prefix("/proc/")?;
    let mut parts = rest.split('/');
    let pid: i32 = parts.next()?.parse().ok()?;
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("status"), None, None, None) => Some(pid),
        (Some("task"), Some(tid), Some("status"), None) if tid.parse::<i32>().is_ok() => Some(pid),
        _ => None,
    }
}

/// A traced program's descriptor table as the session sees it.
struct TraceeFds<'a, 'b>(&'a mut Tracee<'b>);

impl ProgramFds for TraceeFds<'_, '_> {
    fn target(&mut self, fd: i32) -> FdTarget {
        let tid = self.0.tid();
        match self.0.object_of_fd(fd) {
            Some(o) => FdTarget::Object(o.0),
            None if fd >= 0
                && Path::new(&format!("/proc/{tid}/fd/{fd}"))
                    .symlink_metadata()
                    .is_ok() =>
            {
                FdTarget::Foreign
            }
            None => FdTarget::NotOpen,
        }
    }

    fn duplicate(&mut self, fd: i32) -> Result<std::os::fd::OwnedFd, i32> {
        // pidfd_getfd: the supervisor's own reference, valid after the
        // program closes its descriptor, as the kernel's is.
        self.0.dup_fd(fd).map_err(|e| e.0)
    }
}

impl Handler for VfioHandler {
    /// The emulated `/dev` nodes stat as character devices: the container
    /// 10:196, `/dev/iommu`, a group's node, a device cdev as sysfs
    /// `vfio-dev/vfioN/dev` says (`hostview::dev_node`), as in preload mode.
    fn stat_chardev(&mut self, path: &std::path::Path) -> Option<(u32, u32)> {
        let platform = self.session.vfio().platform();
        softvfio_platform::hostview::dev_node(platform, path.to_str()?)
            .map(|(major, minor, _)| (major, minor))
    }

    /// A descriptor opened from one of those nodes stats as its node.
    fn stat_object(&mut self, obj: ObjectId) -> Option<(u32, u32)> {
        use softvfio_platform::hostview::{
            group_node, IOMMUFD_MINOR, MISC_MAJOR, VFIO_CDEV_MAJOR, VFIO_CONTAINER_MINOR,
        };
        let platform = self.session.vfio().platform();
        match self.session.object(obj.0)? {
            FileObject::Container(_) => Some((MISC_MAJOR, VFIO_CONTAINER_MINOR)),
            FileObject::Iommufd(_) => Some((MISC_MAJOR, IOMMUFD_MINOR)),
            FileObject::Group(g) => group_node(platform, g.group.id),
            FileObject::Cdev(c) => {
                let n = softvfio::iommufd::cdev::cdev_devices(platform)
                    .iter()
                    .position(|(_, d)| Arc::ptr_eq(d, &c.device))?;
                Some((VFIO_CDEV_MAJOR, u32::try_from(n).ok()?))
            }
            FileObject::Device(_) | FileObject::Fault(_) => None,
        }
    }

    fn chardev_perm(&mut self, major: u32, minor: u32) -> u32 {
        softvfio_platform::hostview::node_perm(major, minor)
    }

    fn open(&mut self, t: &mut Tracee<'_>, req: &OpenRequest) -> Option<Result<OpenReply, Errno>> {
        let path = req.path.to_str()?;
        let mem: Arc<dyn UserMemory> = self.mem_for(t.pid());
        let site = if path.starts_with("/dev/vfio/") || path == "/dev/iommu" {
            self.call_site(t)
        } else {
            None
        };
        let session = &mut self.session;
        if let Some(res) =
            engine_sanitizer::with_call_site(site.as_ref(), || session.open(path, || mem))
        {
            return Some(match res {
                Ok(key) => {
                    if let Some(c) = self.session.container(key) {
                        self.registry.add_container(c);
                    }
                    if let Some(FileObject::Iommufd(c)) = self.session.object(key) {
                        self.registry.add_iommufd(c);
                    }
                    Ok(OpenReply::Object(ObjectId(key)))
                }
                Err(e) => Err(errno(e)),
            });
        }
        if let Some(reply) = self.config_file(path, req.flags) {
            return Some(reply);
        }
        let pid = status_pid(&req.path)?;
        self.status_file(&req.path, pid)
    }

    fn ioctl(
        &mut self,
        t: &mut Tracee<'_>,
        obj: ObjectId,
        request: u64,
        arg: u64,
    ) -> Result<i64, Errno> {
        let user = self.mem_for(t.pid());
        let site = if SITE_IOCTLS.contains(&request) {
            self.call_site(t)
        } else {
            None
        };
        let routed = {
            let mut fds = TraceeFds(t);
            let session = &mut self.session;
            // The walk of this stop read the stack, where the argument
            // most often is.
            let windowed = site
                .is_some()
                .then(|| WindowedMemory::new(user.as_ref(), self.stack_window.snapshot()));
            let mem: &dyn UserMemory = match &windowed {
                Some(w) => w,
                None => user.as_ref(),
            };
            engine_sanitizer::with_call_site(site.as_ref(), || {
                session
                    .ioctl(obj.0, request, arg, mem, &mut fds)
                    .map_err(errno)
            })
        };
        if let Some(stats) = &mut self.stats {
            stats.note_ioctl(request, arg, routed.is_ok(), user.as_ref());
        }
        let routed = routed?;
        match routed {
            Routed::Value(v) => Ok(v),
            Routed::NewObject(key) => {
                // vfio hands out device fds with O_CLOEXEC.
                t.install_object(ObjectId(key), true)
                    .map(i64::from)
                    .inspect_err(|_| {
                        self.session.release(key);
                    })
            }
            // A fault queue: its descriptor's number goes into the reply.
            // Its reads and writes are served when the process can be given
            // the filter that stops them; else they reach the socket.
            Routed::NewFileAt { key, fd_at } => {
                let installed = if t.serve_reads_and_writes().is_ok() {
                    t.install_served_object(ObjectId(key), true)
                } else {
                    t.install_object(ObjectId(key), true)
                };
                let fd = installed.inspect_err(|_| {
                    self.session.abort(key);
                })?;
                if let Err(e) = t.write_mem(fd_at, &(fd as u32).to_ne_bytes()) {
                    // The reply was writable a moment ago: the program
                    // unmapped it meanwhile. Its descriptor goes again.
                    let _ = t.close_fd(fd);
                    self.session.abort(key);
                    return Err(e);
                }
                Ok(0)
            }
        }
    }

    fn pread(
        &mut self,
        t: &mut Tracee<'_>,
        obj: ObjectId,
        buf: u64,
        len: u64,
        offset: u64,
    ) -> Result<i64, Errno> {
        let user = self.mem_for(t.pid());
        if let Some(stats) = &mut self.stats {
            stats.preads += 1;
        }
        self.session
            .pread(obj.0, user.as_ref(), buf, len, offset)
            .map_err(errno)
    }

    /// iommufd's files have no `compat_ioctl` (an i386 ioctl is ENOTTY,
    /// tests-oracle/kernel-6.12-compat-fd.txt); VFIO's have.
    fn compat_ioctl(&mut self, obj: ObjectId) -> bool {
        !matches!(
            self.session.object(obj.0),
            Some(FileObject::Iommufd(_) | FileObject::Fault(_))
        )
    }

    /// A fault queue's descriptor and a device's from
    /// `VFIO_GROUP_GET_DEVICE_FD` are files of the kernel's anonymous inode
    /// (`anon_inode:[iommufd-pgfault]`, `anon_inode:[vfio-device]`), and
    /// stat as it (tests-oracle/kernel-6.12-compat-fd.txt).
    fn stat_object_anon(&mut self, obj: ObjectId) -> bool {
        matches!(
            self.session.object(obj.0),
            Some(FileObject::Fault(_) | FileObject::Device(_))
        )
    }

    fn stream_rw(
        &mut self,
        t: &mut Tracee<'_>,
        obj: ObjectId,
        buf: u64,
        len: u64,
        write: bool,
    ) -> Option<Result<i64, Errno>> {
        let user = self.mem_for(t.pid());
        self.session
            .stream_rw(obj.0, user.as_ref(), buf, len, write)
            .map(|r| r.map_err(errno))
    }

    fn pwrite(
        &mut self,
        t: &mut Tracee<'_>,
        obj: ObjectId,
        buf: u64,
        len: u64,
        offset: u64,
    ) -> Result<i64, Errno> {
        let user = self.mem_for(t.pid());
        if let Some(stats) = &mut self.stats {
            stats.pwrites += 1;
        }
        self.session
            .pwrite(obj.0, user.as_ref(), buf, len, offset)
            .map_err(errno)
    }

    fn memory_call(
        &mut self,
        t: &mut Tracee<'_>,
        nr: i64,
        args: [u64; 6],
    ) -> Option<Result<i64, Errno>> {
        let r = self.bars.memory_call(&self.session, t, nr, args);
        if r.is_some() && !self.mapped_closed.is_empty() {
            self.release_unmapped();
        }
        // A BAR mapping is not memory mapped for DMA: what the BAR code
        // performed is done; anything else may concern the sanitizer.
        r.or_else(|| self.sanitize_memory_call(t, nr, args))
    }

    fn is_mmio_address(&self, pid: i32, address: u64) -> bool {
        self.bars.contains(pid, address)
    }

    fn mmio_fault(
        &mut self,
        pid: i32,
        address: u64,
        code: &[u8],
        regs: &mut softvfio_trace::mmio::Registers,
        memory: &mut softvfio_trace::mmio::TracedMemory,
    ) -> softvfio_trace::mmio::FaultReply {
        self.bars.fault(pid, address, code, regs, memory)
    }

    fn forked(&mut self, pid: i32, child: i32) {
        self.bars.forked(pid, child);
    }

    fn program_ended(&mut self) {
        self.ended = true;
    }

    fn releasing_together(&mut self, objs: &[ObjectId]) {
        // A process's death dropped these together: noted as they are now,
        // before a group's release unmaps the container noted after it.
        self.note_left_open(objs.iter().map(|o| o.0).collect());
    }

    fn release(&mut self, t: Option<&mut Tracee<'_>>, obj: ObjectId) {
        // A close records releases in the closing process's history.
        let image = t.as_ref().and_then(|t| self.images.get(&t.pid()).copied());
        engine_sanitizer::set_current_process(image);
        if t.is_none() {
            // Left open by the program. At its end, everything left is noted
            // before the first such release: releasing a group detaches it
            // from its container, which unmaps everything. Before its end
            // (one of several processes died), only what that death
            // dropped: the rest is still in use.
            let keys = if self.ended && self.noted.is_empty() {
                self.session.keys()
            } else {
                vec![obj.0]
            };
            self.note_left_open(keys);
        }
        if t.is_some() && self.bars.holds(obj.0) {
            // The mapping holds the file (the kernel's vm_file).
            self.mapped_closed.push(obj.0);
            return;
        }
        self.session.release(obj.0);
    }

    fn locks_memory(&mut self, pid: i32) {
        if let Some(m) = self.mems.get(&pid) {
            m.note_program_locks();
        }
    }

    fn exec_starting(&mut self, pid: i32) {
        // The exec may still fail: take the pages now, use them at the exec.
        if let Some(stats) = self.mems.get(&pid).and_then(|m| m.prepare_kept_pages()) {
            tracing::info!(
                pid,
                shared = stats.shared_bytes,
                copied = stats.copied_bytes,
                lost = stats.lost_bytes,
                "exec with VFIO files kept and pinned pages mapped: kept for the devices"
            );
        }
    }

    fn exec(&mut self, pid: i32) {
        if let Some(m) = self.mems.get(&pid) {
            m.commit_kept_pages();
        }
        self.bars.forget(pid);
        self.release_unmapped();
        // A new image: its own file mappings and history.
        self.maps.remove(&pid);
        self.stack_hints.retain(|k, _| k.0 != pid);
        self.images.remove(&pid);
        // A new address space: later opens pin the new one; the old one is
        // gone, and nothing may reach the new image through its pid.
        self.retire(pid);
    }

    fn exiting(&mut self, pid: i32) {
        // Linux keeps the pages a gone process pinned for as long as they
        // are mapped; keep what they hold (HostMemory::keep_pinned_pages).
        if let Some(stats) = self.mems.get(&pid).and_then(|m| m.keep_pinned_pages()) {
            tracing::info!(
                pid,
                shared = stats.shared_bytes,
                copied = stats.copied_bytes,
                lost = stats.lost_bytes,
                "process exits with pinned pages still mapped: kept for the devices"
            );
        }
    }

    fn ended(&mut self, pid: i32, status: i32) {
        if let Some(s) = &self.sanitizer {
            s.note_process_end(pid, engine_sanitizer::ProcessEnd::from_wait_status(status));
        }
    }

    fn exited(&mut self, pid: i32) {
        self.bars.forget(pid);
        self.images.remove(&pid);
        self.stack_hints.retain(|k, _| k.0 != pid);
        self.release_unmapped();
        // The pid may be reused by any process from now on.
        self.retire(pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_paths() {
        assert_eq!(status_pid(Path::new("/proc/12/status")), Some(12));
        assert_eq!(status_pid(Path::new("/proc/12/task/13/status")), Some(12));
        assert_eq!(status_pid(Path::new("/proc/12/stat")), None);
        assert_eq!(status_pid(Path::new("/proc/self/status")), None);
        assert_eq!(status_pid(Path::new("/proc/12/task/x/status")), None);
    }

    #[test]
    fn auto_picks_preload_only_where_it_serves_the_program() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let dynamic = &exe[..exe.len().min(64 * 1024)];
        assert_eq!(
            auto_choice(Some(dynamic), 0o755, true, false).0,
            Mode::Preload
        );
        // Static-like: the same image with no program headers (e_phnum 0).
        let mut static_like = dynamic.to_vec();
        let phnum_off = 0x38;
        static_like[phnum_off] = 0;
        static_like[phnum_off + 1] = 0;
        assert!(!elf_has_interp(&static_like));
        assert_eq!(
            auto_choice(Some(&static_like), 0o755, true, false).0,
            Mode::Trace
        );
        assert_eq!(
            auto_choice(Some(dynamic), 0o4755, true, false).0,
            Mode::Trace
        );
        assert_eq!(
            auto_choice(Some(dynamic), 0o2755, true, false).0,
            Mode::Trace
        );
        assert_eq!(
            auto_choice(Some(dynamic), 0o755, false, false).0,
            Mode::Trace
        );
        assert_eq!(auto_choice(Some(dynamic), 0o755, true, true).0, Mode::Trace);
        assert_eq!(
            auto_choice(Some(b"#!/bin/sh\n"), 0o755, true, false).0,
            Mode::Trace
        );
        assert_eq!(auto_choice(None, 0, true, false).0, Mode::Trace);
    }

    /// A Go program stays in trace mode (`auto_mode`): the section names
    /// are found in a real binary, and a copy of it with one section renamed
    /// as Go's toolchain names it is taken for Go.
    #[test]
    fn go_programs_are_traced() {
        let exe = std::env::current_exe().unwrap();
        let names = elf_section_names(&exe).expect("section headers");
        assert!(names.iter().any(|n| n == b".text"));
        assert!(names.iter().any(|n| n == b".shstrtab"));
        assert!(!is_go_program(&exe));
        // Rename a section name of 10 or more characters (a whole name in
        // the string table, between NULs) to ".gopclntab".
        let mut bytes = std::fs::read(&exe).unwrap();
        let victim = names
            .iter()
            .filter(|n| n.len() >= b".gopclntab".len())
            .find_map(|n| {
                let mut whole = vec![0u8];
                whole.extend_from_slice(n);
                whole.push(0);
                let at = bytes.windows(whole.len()).rposition(|w| w == whole)?;
                Some((at + 1, n.len()))
            })
            .expect("a section name of 10+ characters");
        let mut go = b".gopclntab".to_vec();
        go.resize(victim.1, 0);
        bytes[victim.0..victim.0 + victim.1].copy_from_slice(&go);
        let dir = std::env::temp_dir().join(format!("softvfio-go-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("fake-go");
        std::fs::write(&fake, &bytes).unwrap();
        let go_program = is_go_program(&fake);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(go_program);
        assert!(elf_section_names(Path::new("/proc/self/status")).is_none());
    }

    #[test]
    fn dynamic_elf_detection() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries link libc dynamically.
        assert!(elf_has_interp(&exe));
        assert!(!elf_has_interp(b"#!/bin/sh\necho\n"));
        assert!(!elf_has_interp(b"\x7fELF"));
    }
}
