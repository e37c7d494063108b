//! `softvfio run`: runs a program with its `/dev/vfio` system calls served by
//! the softvfio engine, through the ptrace supervisor of `softvfio-trace`.
//!
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

use clap::Args;
use softvfio::frontend::{FdTarget, FileObject, Routed, Session};
use softvfio::memory::host::{HostMemory, MmSyscalls};
use softvfio::memory::{UserMemory, PAGE_SIZE};
use softvfio::uapi::Vfio;
use softvfio::VfioError;
use softvfio_platform::{build, BuiltPlatform, Config};
use softvfio_trace::{
    exit_code, Command, Errno, Handler, ObjectId, OpenReply, OpenRequest, Supervisor,
    SyscallInjector, Tracee,
};

use crate::inspect::{self, Registry};
use crate::report;

#[derive(Args)]
pub struct RunArgs {
    /// Platform configuration (TOML); the built-in reference platform by default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where `softvfio inspect` reaches this session (default
    /// /tmp/softvfio-<pid>.sock).
    #[arg(long)]
    inspect_socket: Option<PathBuf>,
    /// Print nothing after the program ends.
    #[arg(long, short)]
    quiet: bool,
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
    let vfio = Arc::new(Vfio::new(built.platform.clone()));
    let registry = Arc::new(Registry::new(built.clone()));
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
    let mut cmd = Command::new(&args.program[0]);
    cmd.args(&args.program[1..]);
    let status = sup.run(cmd, &mut handler);
    if server.is_ok() {
        let _ = std::fs::remove_file(&socket);
    }
    let code = match status {
        Ok(s) => exit_code(s),
        Err(e) => {
            eprintln!(
                "softvfio: cannot run {}: {e}",
                args.program[0].to_string_lossy()
            );
            127
        }
    };
    if !args.quiet {
        let mut err = std::io::stderr().lock();
        let _ =
            report::write_end_report(&mut err, &built, &handler.leftovers, &handler.final_state());
    }
    u8::try_from(code.clamp(0, 255)).unwrap_or(1)
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
        self.0.munlock(addr, len).map_err(|e| e.0)
    }
}

/// What the program still held when it exited.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Leftovers {
    pub containers: u64,
    pub groups: u64,
    pub devices: u64,
    pub mappings: u64,
    pub mapped_bytes: u64,
    pub locked_pages: u64,
}

/// Pins and accounting after every release: anything but zero is a leak
/// of softvfio itself.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FinalState {
    pub pinned_pages: u64,
    pub pin_refs: u64,
    pub locked_pages: u64,
    pub open_objects: u64,
}

struct VfioHandler {
    session: Session,
    registry: Arc<Registry>,
    injector: SyscallInjector,
    /// One address space per traced process (mlock state is per mm).
    mems: HashMap<i32, Arc<HostMemory>>,
    /// Address spaces of processes that exited or exec'd, for the report.
    retired: Vec<Arc<HostMemory>>,
    leftovers: Leftovers,
}

fn errno(e: VfioError) -> Errno {
    Errno(e.errno())
}

impl VfioHandler {
    fn new(vfio: Arc<Vfio>, registry: Arc<Registry>, injector: SyscallInjector) -> Self {
        Self {
            session: Session::new(vfio),
            registry,
            injector,
            mems: HashMap::new(),
            retired: Vec::new(),
            leftovers: Leftovers::default(),
        }
    }

    fn mem_for(&mut self, pid: i32) -> Arc<HostMemory> {
        let injector = self.injector.for_pid(pid);
        self.mems
            .entry(pid)
            .or_insert_with(|| Arc::new(HostMemory::for_pid(pid, Arc::new(TracedMm(injector)))))
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
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("VmLck:") {
                let real_kb: u64 = rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0);
                let shown = real_kb.saturating_sub(ours_kb) + accounted_kb;
                out.push_str(&format!("VmLck:\t{shown:>8} kB\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        Some(Ok(OpenReply::File(out.into_bytes())))
    }

    fn note_leftovers(left: &mut Leftovers, obj: &FileObject) {
        match obj {
            FileObject::Container(c) => {
                left.containers += 1;
                let snap = c.container.snapshot();
                left.mappings += snap.mappings.len() as u64;
                left.mapped_bytes += snap.mappings.iter().map(|m| m.size).sum::<u64>();
                left.locked_pages += snap.mappings.iter().map(|m| m.locked_pages).sum::<u64>();
            }
            FileObject::Group(_) => left.groups += 1,
            FileObject::Device(_) => left.devices += 1,
        }
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

impl Handler for VfioHandler {
    fn open(&mut self, t: &mut Tracee<'_>, req: &OpenRequest) -> Option<Result<OpenReply, Errno>> {
        let path = req.path.to_str()?;
        let mem: Arc<dyn UserMemory> = self.mem_for(t.pid());
        if let Some(res) = self.session.open(path, || mem) {
            return Some(match res {
                Ok(key) => {
                    if let Some(c) = self.session.container(key) {
                        self.registry.add_container(c);
                    }
                    Ok(OpenReply::Object(ObjectId(key)))
                }
                Err(e) => Err(errno(e)),
            });
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
        let tid = t.tid();
        let routed = {
            let mut resolve = |fd: i32| match t.object_of_fd(fd) {
                Some(o) => FdTarget::Object(o.0),
                None if fd >= 0
                    && Path::new(&format!("/proc/{tid}/fd/{fd}"))
                        .symlink_metadata()
                        .is_ok() =>
                {
                    FdTarget::Foreign
                }
                None => FdTarget::NotOpen,
            };
            self.session
                .ioctl(obj.0, request, arg, user.as_ref(), &mut resolve)
                .map_err(errno)?
        };
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
        self.session
            .pread(obj.0, user.as_ref(), buf, len, offset)
            .map_err(errno)
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
        self.session
            .pwrite(obj.0, user.as_ref(), buf, len, offset)
            .map_err(errno)
    }

    fn release(&mut self, t: Option<&mut Tracee<'_>>, obj: ObjectId) {
        if t.is_none() {
            if let Some(o) = self.session.object(obj.0) {
                Self::note_leftovers(&mut self.leftovers, o);
            }
        }
        self.session.release(obj.0);
    }

    fn exec(&mut self, pid: i32) {
        // A new address space: later opens pin the new one.
        if let Some(m) = self.mems.remove(&pid) {
            self.retired.push(m);
        }
    }

    fn exited(&mut self, pid: i32) {
        if let Some(m) = self.mems.remove(&pid) {
            self.retired.push(m);
        }
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
}
