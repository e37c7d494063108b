//! Shared helpers: building the C test programs, running them under the
//! supervisor with captured output, and a toy VFIO-like handler.
#![allow(dead_code)]

use softvfio_trace::{
    Command, Errno, Handler, ObjectId, OpenReply, OpenRequest, Supervisor, SyscallInjector, Tracee,
};
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;

static BUILT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Compiles `src` with `gcc -O2 -static -pthread` into the target tmpdir
/// (once per test process) and returns the executable.
pub fn build_c_file(src: &Path, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c-programs");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let exe = dir.join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let set = built.get_or_insert_with(HashSet::new);
    if set.contains(&exe) {
        return exe;
    }
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    let st = std::process::Command::new("gcc")
        .args(["-O2", "-static", "-pthread", "-Wall", "-o"])
        .arg(&tmp)
        .arg(src)
        .status()
        .expect("run gcc");
    assert!(st.success(), "gcc failed for {}", src.display());
    std::fs::rename(&tmp, &exe).expect("rename");
    set.insert(exe.clone());
    exe
}

pub fn build_c(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(format!("{name}.c"));
    build_c_file(&src, name)
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// "key value" lines as a map.
    pub fn kv(&self) -> HashMap<String, String> {
        self.stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()
    }
}

fn capture_file(tag: &str) -> (PathBuf, OwnedFd) {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "out-{}-{:?}-{tag}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::File::create(&path).expect("create capture file");
    (path, OwnedFd::from(f))
}

/// Runs `exe args` under `handler` with stdout/stderr captured.
pub fn run_with(
    sup: &mut Supervisor,
    exe: &Path,
    args: &[&str],
    handler: &mut dyn Handler,
) -> Output {
    let (out_p, out_fd) = capture_file("stdout");
    let (err_p, err_fd) = capture_file("stderr");
    let mut cmd = Command::new(exe);
    cmd.args(args).stdout(out_fd).stderr(err_fd);
    let status = sup.run(cmd, handler).expect("supervisor run");
    let stdout = std::fs::read_to_string(&out_p).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_p).unwrap_or_default();
    let _ = std::fs::remove_file(out_p);
    let _ = std::fs::remove_file(err_p);
    Output {
        status,
        stdout,
        stderr,
    }
}

pub fn run(exe: &Path, args: &[&str], handler: &mut dyn Handler) -> Output {
    run_with(&mut Supervisor::new(), exe, args, handler)
}

/// VmLck of a process, in kB, read by the supervisor.
pub fn vmlck_kb(pid: i32) -> i64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(-1)
}

pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Container,
    Group,
    Device,
}

#[derive(Debug)]
pub struct Obj {
    pub kind: Kind,
    pub releases_at_open: u64,
}

const fn io(n: u64) -> u64 {
    (0x3b << 8) | n
}

/// The path [`Toy`] serves as a character device (`stat_chardev`).
pub const TOY_CDEV: &str = "/dev/vfio/devices/vfio0";

/// A toy handler: "/dev/vfio/vfio" → container, "/dev/vfio/3" → group,
/// "/dev/vfio/4" → ENOENT, "/proc/<pid>/status" → the real status with
/// `VmLck: 4242 kB`. Ioctls `_IO(';', n)`:
/// 100 → 0; 101 → rw struct {argsz, in, out}: out = in*2 + argsz;
/// 102 → releases so far; 103 → object id; 104 → releases seen when this
/// object was opened; 105 → 1 if a device; 110/111 → mlock/munlock 64 KiB
/// at arg then the VmLck the supervisor reads; 112 → 100 injected getpids;
/// 114/115 → queue SIGUSR1 (SI_QUEUE, 4242)/tgkill SIGUSR2 to the thread,
/// then inject twice; 116 → install a new device object; 117 → object id
/// of the fd at *arg; 118 → 1 if the injector refuses another thread;
/// 130/131 → one/two injected getpid (benchmark); other → ENOTTY.
/// The stat family of [`TOY_CDEV`], and of a device object's descriptor,
/// answers a character device 250:0.
pub struct Toy {
    pub next: u64,
    pub objs: HashMap<ObjectId, Obj>,
    pub released: Vec<(ObjectId, bool)>,
    pub data: Vec<u8>,
    pub injector: Option<SyscallInjector>,
    pub exited: Vec<i32>,
    pub forked: Vec<(i32, i32)>,
    pub execs: Vec<i32>,
    pub opens: u64,
    pub inject_failures: Vec<softvfio_trace::InjectError>,
    pub release_inject_failures: u64,
}

impl Default for Toy {
    fn default() -> Self {
        Toy {
            next: 1,
            objs: HashMap::new(),
            released: Vec::new(),
            data: vec![0; 4096],
            injector: None,
            exited: Vec::new(),
            forked: Vec::new(),
            execs: Vec::new(),
            opens: 0,
            inject_failures: Vec::new(),
            release_inject_failures: 0,
        }
    }
}

impl Toy {
    fn new_obj(&mut self, kind: Kind) -> ObjectId {
        let id = ObjectId(self.next);
        self.next += 1;
        self.objs.insert(
            id,
            Obj {
                kind,
                releases_at_open: self.released.len() as u64,
            },
        );
        id
    }

    fn is_status_path(t: &Tracee<'_>, p: &Path) -> bool {
        p == Path::new(&format!("/proc/{}/status", t.pid()))
            || p == Path::new(&format!("/proc/{}/task/{}/status", t.pid(), t.tid()))
    }
}

fn read_u32(t: &Tracee<'_>, addr: u64) -> Result<u32, Errno> {
    let mut b = [0u8; 4];
    t.read_mem(addr, &mut b)?;
    Ok(u32::from_ne_bytes(b))
}

impl Handler for Toy {
    fn open(&mut self, t: &mut Tracee<'_>, req: &OpenRequest) -> Option<Result<OpenReply, Errno>> {
        if req.raw.to_string_lossy().contains("inject-then-pass") {
            // Consume the program's call with injections, then decline.
            let _ = t.syscall(libc::SYS_getpid, [0; 6]);
            let _ = t.syscall(libc::SYS_getpid, [0; 6]);
            return None;
        }
        let p = req.path.as_path();
        if p == Path::new("/dev/vfio/vfio") {
            self.opens += 1;
            return Some(Ok(OpenReply::Object(self.new_obj(Kind::Container))));
        }
        if p == Path::new("/dev/vfio/3") {
            self.opens += 1;
            return Some(Ok(OpenReply::Object(self.new_obj(Kind::Group))));
        }
        if p == Path::new("/dev/vfio/4") {
            return Some(Err(Errno::ENOENT));
        }
        if Self::is_status_path(t, p) {
            let real =
                std::fs::read_to_string(format!("/proc/{}/status", t.pid())).unwrap_or_default();
            let text: String = real
                .lines()
                .map(|l| {
                    if l.starts_with("VmLck:") {
                        "VmLck:\t    4242 kB".to_string()
                    } else {
                        l.to_string()
                    }
                })
                .map(|l| l + "\n")
                .collect();
            return Some(Ok(OpenReply::File(text.into_bytes())));
        }
        None
    }

    fn ioctl(
        &mut self,
        t: &mut Tracee<'_>,
        obj: ObjectId,
        request: u64,
        arg: u64,
    ) -> Result<i64, Errno> {
        let kind = self.objs.get(&obj).map(|o| o.kind).ok_or(Errno::EBADF)?;
        match request {
            r if r == io(100) => Ok(0),
            r if r == io(101) => {
                let argsz = read_u32(t, arg)?;
                let input = read_u32(t, arg + 4)?;
                let out = u64::from(input) * 2 + u64::from(argsz);
                t.write_mem(arg + 8, &out.to_ne_bytes())?;
                Ok(0)
            }
            r if r == io(102) => Ok(self.released.len() as i64),
            r if r == io(103) => Ok(obj.0 as i64),
            r if r == io(104) => Ok(self.objs[&obj].releases_at_open as i64),
            r if r == io(105) => Ok((kind == Kind::Device) as i64),
            r if r == io(110) => {
                let inj = self.injector.clone().ok_or(Errno::EINVAL)?;
                // Restricted to another process: refused without effect.
                let other = inj.for_pid(t.pid() + 1_000_000);
                if other.inject_syscall(libc::SYS_mlock, [arg, 65536, 0, 0, 0, 0])
                    != Err(softvfio_trace::InjectError::OtherProcess {
                        wanted: t.pid() + 1_000_000,
                        current: t.pid(),
                    })
                    || vmlck_kb(t.pid()) != 0
                {
                    return Err(Errno::EIO);
                }
                inj.for_pid(t.pid()).mlock(arg, 65536)?;
                Ok(vmlck_kb(t.pid()))
            }
            r if r == io(111) => {
                t.syscall(libc::SYS_munlock, [arg, 65536, 0, 0, 0, 0])?;
                Ok(vmlck_kb(t.pid()))
            }
            r if r == io(112) => {
                let mut ok = 0;
                for _ in 0..100 {
                    if t.syscall(libc::SYS_getpid, [0; 6]) == Ok(t.pid() as u64) {
                        ok += 1;
                    }
                }
                Ok(ok)
            }
            r if r == io(114) || r == io(115) => {
                if r == io(114) {
                    // SAFETY: an all-zero siginfo_t is valid; we fill the fields the kernel reads.
                    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
                    si.si_signo = libc::SIGUSR1;
                    si.si_code = libc::SI_QUEUE;
                    // si_pid at byte 16, si_uid at 20, si_value at 24.
                    let raw = &mut si as *mut libc::siginfo_t as *mut u8;
                    // SAFETY: offsets are within the 128-byte siginfo_t.
                    unsafe {
                        std::ptr::write_unaligned(raw.add(16) as *mut i32, libc::getpid());
                        std::ptr::write_unaligned(raw.add(24) as *mut i32, 4242);
                    }
                    // SAFETY: plain syscall with a pointer to a live siginfo_t.
                    let rc = unsafe {
                        libc::syscall(
                            libc::SYS_rt_tgsigqueueinfo,
                            t.pid(),
                            t.tid(),
                            libc::SIGUSR1,
                            &si,
                        )
                    };
                    assert_eq!(rc, 0, "rt_tgsigqueueinfo");
                } else {
                    // SAFETY: plain syscall with integer arguments.
                    let rc =
                        unsafe { libc::syscall(libc::SYS_tgkill, t.pid(), t.tid(), libc::SIGUSR2) };
                    assert_eq!(rc, 0, "tgkill");
                }
                // The first injection runs from the entry stop; the second
                // returns to user mode, where the pending signal is dequeued.
                t.syscall(libc::SYS_getpid, [0; 6])?;
                t.syscall(libc::SYS_getpid, [0; 6])?;
                Ok(0)
            }
            r if r == io(116) => {
                let dev = self.new_obj(Kind::Device);
                t.install_object(dev, true).map(i64::from)
            }
            r if r == io(117) => {
                let fd = read_u32(t, arg)? as i32;
                t.object_of_fd(fd).map(|o| o.0 as i64).ok_or(Errno::EBADF)
            }
            r if r == io(118) => {
                let inj = t.injector();
                let refused = std::thread::spawn(move || inj.mlock(0, 4096) == Err(Errno::EPERM))
                    .join()
                    .unwrap_or(false);
                Ok(refused as i64)
            }
            r if r == io(132) => {
                // Slow, then inject: the process may be dying meanwhile.
                std::thread::sleep(std::time::Duration::from_millis(30));
                for _ in 0..3 {
                    if let Err(e) = t.inject_syscall(libc::SYS_getpid, [0; 6]) {
                        self.inject_failures.push(e);
                        return Err(e.into());
                    }
                }
                Ok(0)
            }
            r if r == io(130) => {
                t.syscall(libc::SYS_getpid, [0; 6])?;
                Ok(0)
            }
            r if r == io(131) => {
                t.syscall(libc::SYS_getpid, [0; 6])?;
                t.syscall(libc::SYS_getpid, [0; 6])?;
                Ok(0)
            }
            _ => Err(Errno::ENOTTY),
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
        if self.objs.get(&obj).map(|o| o.kind) != Some(Kind::Group) {
            return Err(Errno::EINVAL);
        }
        let start = (offset as usize).min(self.data.len());
        let end = (start + len as usize).min(self.data.len());
        t.write_mem(buf, &self.data[start..end])?;
        Ok((end - start) as i64)
    }

    fn pwrite(
        &mut self,
        t: &mut Tracee<'_>,
        obj: ObjectId,
        buf: u64,
        len: u64,
        offset: u64,
    ) -> Result<i64, Errno> {
        if self.objs.get(&obj).map(|o| o.kind) != Some(Kind::Group) {
            return Err(Errno::EINVAL);
        }
        let start = (offset as usize).min(self.data.len());
        let end = (start + len as usize).min(self.data.len());
        let bytes = t.read_bytes(buf, end - start)?;
        self.data[start..end].copy_from_slice(&bytes);
        Ok((end - start) as i64)
    }

    fn release(&mut self, t: Option<&mut Tracee<'_>>, obj: ObjectId) {
        // Injection works during release (at a close's exit, or at the entry
        // of whatever call the thread is stopped in, which then runs anyway).
        let with_tracee = t.is_some();
        if let Some(t) = t {
            if t.syscall(libc::SYS_getpid, [0; 6]) != Ok(t.pid() as u64) {
                self.release_inject_failures += 1;
            }
        }
        self.released.push((obj, with_tracee));
    }

    /// `/dev/vfio/devices/vfio0` is a character device 250:0 (a VFIO cdev).
    fn stat_chardev(&mut self, path: &Path) -> Option<(u32, u32)> {
        (path == Path::new(TOY_CDEV)).then_some((250, 0))
    }

    /// A device object's descriptor stats as that node.
    fn stat_object(&mut self, obj: ObjectId) -> Option<(u32, u32)> {
        (self.objs.get(&obj)?.kind == Kind::Device).then_some((250, 0))
    }

    fn forked(&mut self, pid: i32, child: i32) {
        self.forked.push((pid, child));
    }

    fn exec(&mut self, pid: i32) {
        self.execs.push(pid);
    }

    fn exited(&mut self, pid: i32) {
        self.exited.push(pid);
    }
}
