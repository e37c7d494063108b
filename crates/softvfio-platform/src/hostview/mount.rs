//! Laying a [`HostView`] over the host's `/sys`, in a mount namespace of the
//! program's own, between `fork` and `exec`.
//!
//! Why a mount namespace: the program reaches sysfs through `stat`,
//! `lstat`, `readlink`, `realpath`, `opendir`/`getdents`, `open`/`read`,
//! `*at` variants, `io_uring`, static libcs and any thread. Mounts answer
//! all of them in the kernel, the same way, with no per-call cost and
//! nothing for a front end to intercept. A tmpfs holds the generated files,
//! so the tree lives exactly as long as the namespace (the program and its
//! children) and the host's `/sys` is never written.
//!
//! How: every host directory that gets new or replaced entries (a
//! *target*) is covered by a small tmpfs that repeats the host directory's
//! entries (symbolic links copied, files and subdirectories bind-mounted
//! from the host one, reached through a descriptor opened before the tmpfs
//! covered it) plus the view's entries, and is then made read-only. Host
//! directories with nothing new are untouched, so everything outside the
//! platform stays the host's own, live. Targets are processed parents
//! first: a nested target is reached through its parent's bind mount.
//!
//! Invariants:
//! - [`MountPlan::new`] does all the work that allocates or reads the host
//!   tree, in the parent; [`MountPlan::apply`] only makes system calls on
//!   data of the plan and stack buffers, so it is async-signal-safe and may
//!   run in a child forked from a multi-threaded process;
//! - `apply` changes nothing outside the calling process's new mount (and,
//!   when not root, user) namespace.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{HostView, Node};

/// One step of [`MountPlan::apply`]; every path is absolute.
#[derive(Debug)]
enum Op {
    /// Open the host directory (kept as the *current* source), then cover
    /// it with a fresh tmpfs.
    Enter {
        dir: CString,
    },
    /// Repeat a host entry of the current source: create a mount point at
    /// `at` and bind the host's `name` on it.
    Mirror {
        name: CString,
        at: CString,
        is_dir: bool,
    },
    Link {
        target: CString,
        at: CString,
    },
    Mkdir {
        at: CString,
    },
    File {
        at: CString,
        mode: u32,
        data: Vec<u8>,
    },
    /// Make the tmpfs on `dir` read-only and drop the current source.
    Leave {
        dir: CString,
    },
}

/// The `uid_map`/`gid_map` lines of an unprivileged user namespace that
/// keeps the program's own ids.
#[derive(Debug)]
struct UserNs {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

/// Where [`MountPlan::apply`] failed: the step and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyError {
    /// The step that failed.
    pub step: &'static str,
    /// Its errno.
    pub errno: i32,
}

/// Everything the child does to show a [`HostView`], prepared beforehand.
#[derive(Debug)]
pub struct MountPlan {
    ops: Vec<Op>,
    userns: Option<UserNs>,
}

fn cstr(p: &str) -> io::Result<CString> {
    CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

impl MountPlan {
    /// The plan that shows `view` over the host's `/sys`.
    pub fn new(view: &HostView) -> io::Result<MountPlan> {
        Self::with_root(view, "/sys")
    }

    /// The plan that shows `view` with its `/sys` at `root` (tests use a
    /// directory of their own; `softvfio run` uses `/sys`).
    pub fn with_root(view: &HostView, root: &str) -> io::Result<MountPlan> {
        let mut ops = Vec::new();
        if view.get("/sys").is_some() {
            plan_dir(view, "/sys", root, &mut ops)?;
        }
        // SAFETY: geteuid/getegid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let userns = (uid != 0).then(|| UserNs {
            uid_map: format!("{uid} {uid} 1\n").into_bytes(),
            gid_map: format!("{gid} {gid} 1\n").into_bytes(),
        });
        Ok(MountPlan { ops, userns })
    }

    /// How many host directories the plan covers.
    pub fn targets(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o, Op::Enter { .. }))
            .count()
    }

    /// Enters a new mount namespace and lays the view over the host's
    /// tree. Async-signal-safe (see the module invariants).
    pub fn apply(&self) -> Result<(), ApplyError> {
        // SAFETY: only system calls on NUL-terminated strings and byte
        // buffers owned by `self`, descriptors opened here, and constants;
        // no allocation, no locks.
        unsafe {
            sys::enter_namespace(self.userns.as_ref())?;
            let old_umask = libc::umask(0);
            let r = self.run_ops();
            libc::umask(old_umask);
            r
        }
    }

    /// [`apply`](Self::apply), reporting a failure on stderr instead: the
    /// program then runs with the host's own sysfs (or part of the view).
    pub fn apply_or_warn(&self) {
        if let Err(e) = self.apply() {
            sys::warn(e);
        }
    }

    /// # Safety
    /// As [`apply`](Self::apply).
    unsafe fn run_ops(&self) -> Result<(), ApplyError> {
        // SAFETY: see `apply`.
        unsafe {
            let cwd = sys::open_path(c".")?;
            let mut src = -1;
            let mut result = Ok(());
            for op in &self.ops {
                let r = match op {
                    Op::Enter { dir } => sys::open_path(dir).and_then(|fd| {
                        src = fd;
                        sys::mount_tmpfs(dir)
                    }),
                    Op::Mirror { name, at, is_dir } => sys::mirror(src, name, at, *is_dir),
                    Op::Link { target, at } => sys::symlink(target, at),
                    Op::Mkdir { at } => sys::mkdir(at),
                    Op::File { at, mode, data } => sys::write_file(at, *mode, data),
                    Op::Leave { dir } => {
                        libc::close(src);
                        src = -1;
                        sys::make_read_only(dir)
                    }
                };
                if let Err(e) = r {
                    result = Err(e);
                    break;
                }
            }
            if src >= 0 {
                libc::close(src);
            }
            libc::fchdir(cwd);
            libc::close(cwd);
            result
        }
    }
}

/// The host path of view path `vpath` (which starts with `/sys`).
fn host_path(root: &str, vpath: &str) -> String {
    format!("{root}{}", &vpath["/sys".len()..])
}

/// Plans the view's directory `vpath`, which exists on the host as a
/// directory and is merged with it.
fn plan_dir(view: &HostView, vpath: &str, root: &str, ops: &mut Vec<Op>) -> io::Result<()> {
    let hpath = host_path(root, vpath);
    let mut merged: Vec<&str> = Vec::new();
    let mut needs_cover = false;
    for (name, node) in view.children(vpath) {
        let child = format!("{vpath}/{name}");
        let host_is_dir = std::fs::symlink_metadata(format!("{hpath}/{name}"))
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if matches!(node, Node::Dir) && host_is_dir && !view.replaces(&child) {
            merged.push(name);
        } else {
            needs_cover = true;
        }
    }
    if needs_cover {
        ops.push(Op::Enter { dir: cstr(&hpath)? });
        let mut host: Vec<_> = std::fs::read_dir(&hpath)?.collect::<Result<_, _>>()?;
        host.sort_by_key(|e| e.file_name());
        for e in host {
            let name = e.file_name();
            let Some(name_s) = name.to_str() else {
                continue;
            };
            let ours = view.get(&format!("{vpath}/{name_s}")).is_some();
            if ours && !merged.contains(&name_s) {
                continue; // the view's entry replaces the host's
            }
            let at = cstr(&format!("{hpath}/{name_s}"))?;
            let ft = e.file_type()?;
            if ft.is_symlink() {
                let target = std::fs::read_link(e.path())?;
                ops.push(Op::Link {
                    target: cpath(&target)?,
                    at,
                });
            } else {
                ops.push(Op::Mirror {
                    name: cstr(name_s)?,
                    at,
                    is_dir: ft.is_dir(),
                });
            }
        }
        for (name, _) in view.children(vpath) {
            if !merged.contains(&name) {
                plan_subtree(view, &format!("{vpath}/{name}"), root, ops)?;
            }
        }
        ops.push(Op::Leave { dir: cstr(&hpath)? });
    }
    for name in merged {
        plan_dir(view, &format!("{vpath}/{name}"), root, ops)?;
    }
    Ok(())
}

/// Plans a subtree of the view that is created whole in a tmpfs.
fn plan_subtree(view: &HostView, top: &str, root: &str, ops: &mut Vec<Op>) -> io::Result<()> {
    let prefix = format!("{top}/");
    let nodes = view
        .nodes()
        .filter(|(p, _)| *p == top || p.starts_with(&prefix));
    for (p, node) in nodes {
        let at = cstr(&host_path(root, p))?;
        ops.push(match node {
            Node::Dir => Op::Mkdir { at },
            Node::File { mode, data } => Op::File {
                at,
                mode: *mode,
                data: data.clone(),
            },
            Node::Link(t) => Op::Link {
                target: cstr(t)?,
                at,
            },
        });
    }
    Ok(())
}

/// The system calls of [`MountPlan::apply`]: async-signal-safe, each
/// failure named.
mod sys {
    use super::{ApplyError, UserNs};
    use std::ffi::CStr;

    fn fail(step: &'static str) -> ApplyError {
        ApplyError {
            step,
            // SAFETY: reads this thread's errno slot.
            errno: unsafe { *libc::__errno_location() },
        }
    }

    fn check(r: libc::c_int, step: &'static str) -> Result<libc::c_int, ApplyError> {
        if r < 0 {
            Err(fail(step))
        } else {
            Ok(r)
        }
    }

    /// Writes all of `data` to the file `path` (an existing one).
    fn write_proc(path: &CStr, data: &[u8], step: &'static str) -> Result<(), ApplyError> {
        // SAFETY: `path` is NUL-terminated, `data` a live slice.
        unsafe {
            let fd = check(
                libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC),
                step,
            )?;
            let n = libc::write(fd, data.as_ptr().cast(), data.len());
            let r = if n == data.len() as isize {
                Ok(())
            } else {
                Err(fail(step))
            };
            libc::close(fd);
            r
        }
    }

    /// `unshare` the mount namespace (and the user namespace when not
    /// root), and stop mount events from leaking back to the host.
    pub(super) fn enter_namespace(userns: Option<&UserNs>) -> Result<(), ApplyError> {
        // SAFETY: plain system calls on constants and NUL-terminated strings.
        unsafe {
            match userns {
                None => check(libc::unshare(libc::CLONE_NEWNS), "unshare(CLONE_NEWNS)")?,
                Some(u) => {
                    check(
                        libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS),
                        "unshare(CLONE_NEWUSER|CLONE_NEWNS)",
                    )?;
                    write_proc(c"/proc/self/setgroups", b"deny", "setgroups")?;
                    write_proc(c"/proc/self/uid_map", &u.uid_map, "uid_map")?;
                    write_proc(c"/proc/self/gid_map", &u.gid_map, "gid_map")?;
                    0
                }
            };
            check(
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ),
                "mount(/, MS_SLAVE)",
            )?;
        }
        Ok(())
    }

    pub(super) fn open_path(p: &CStr) -> Result<libc::c_int, ApplyError> {
        // SAFETY: `p` is NUL-terminated.
        check(
            unsafe {
                libc::open(
                    p.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            },
            "open host directory",
        )
    }

    pub(super) fn mount_tmpfs(dir: &CStr) -> Result<(), ApplyError> {
        // SAFETY: NUL-terminated strings.
        check(
            unsafe {
                libc::mount(
                    c"softvfio".as_ptr(),
                    dir.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"mode=755".as_ptr().cast(),
                )
            },
            "mount tmpfs",
        )
        .map(drop)
    }

    pub(super) fn make_read_only(dir: &CStr) -> Result<(), ApplyError> {
        // SAFETY: NUL-terminated string.
        check(
            unsafe {
                libc::mount(
                    std::ptr::null(),
                    dir.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT
                        | libc::MS_BIND
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    std::ptr::null(),
                )
            },
            "remount read-only",
        )
        .map(drop)
    }

    /// Binds host entry `name` of directory `src` (a descriptor) on a new
    /// mount point `at`.
    pub(super) fn mirror(
        src: libc::c_int,
        name: &CStr,
        at: &CStr,
        is_dir: bool,
    ) -> Result<(), ApplyError> {
        // SAFETY: NUL-terminated strings, descriptors of this process.
        unsafe {
            if is_dir {
                check(libc::mkdir(at.as_ptr(), 0o755), "mkdir mount point")?;
            } else {
                let fd = check(
                    libc::open(
                        at.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o444,
                    ),
                    "create mount point",
                )?;
                libc::close(fd);
            }
            // `name` is relative: resolved from the host directory.
            check(libc::fchdir(src), "fchdir host directory")?;
            let r = libc::mount(
                name.as_ptr(),
                at.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            );
            if r < 0 {
                let e = fail("bind host entry");
                if e.errno != libc::ENOENT {
                    return Err(e);
                }
                // The host entry went away since the plan was made (a
                // device unplugged): so does its mount point.
                if is_dir {
                    libc::rmdir(at.as_ptr());
                } else {
                    libc::unlink(at.as_ptr());
                }
            }
        }
        Ok(())
    }

    pub(super) fn symlink(target: &CStr, at: &CStr) -> Result<(), ApplyError> {
        // SAFETY: NUL-terminated strings.
        check(
            unsafe { libc::symlink(target.as_ptr(), at.as_ptr()) },
            "symlink",
        )
        .map(drop)
    }

    pub(super) fn mkdir(at: &CStr) -> Result<(), ApplyError> {
        // SAFETY: NUL-terminated string.
        check(unsafe { libc::mkdir(at.as_ptr(), 0o755) }, "mkdir").map(drop)
    }

    pub(super) fn write_file(at: &CStr, mode: u32, data: &[u8]) -> Result<(), ApplyError> {
        // SAFETY: NUL-terminated string, live slice, our descriptor.
        unsafe {
            let fd = check(
                libc::open(
                    at.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    mode,
                ),
                "create file",
            )?;
            let mut done = 0;
            while done < data.len() {
                let n = libc::write(fd, data[done..].as_ptr().cast(), data.len() - done);
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                if n <= 0 {
                    let e = fail("write file");
                    libc::close(fd);
                    return Err(e);
                }
                done += n as usize;
            }
            libc::close(fd);
        }
        Ok(())
    }

    /// `softvfio: no host view of sysfs (STEP: errno N)` on stderr, formatted
    /// without allocating.
    pub(super) fn warn(e: ApplyError) {
        let mut buf = [0u8; 160];
        let mut len = 0;
        let mut put = |s: &[u8]| {
            let n = s.len().min(buf.len() - len);
            buf[len..len + n].copy_from_slice(&s[..n]);
            len += n;
        };
        put(b"softvfio: warning: the host view of sysfs is incomplete (");
        put(e.step.as_bytes());
        put(b": errno ");
        let mut digits = [0u8; 12];
        let mut v = e.errno.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        put(&digits[i..]);
        put(b")\n");
        // SAFETY: writes our stack buffer to stderr.
        unsafe {
            libc::write(2, buf.as_ptr().cast(), len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view_with(nodes: &[(&str, Node)], replaced: &[&str]) -> HostView {
        let mut v = HostView::default();
        for (p, n) in nodes {
            v.add(p, n.clone());
        }
        for r in replaced {
            v.replaced.insert(r.to_string());
        }
        v
    }

    fn file(s: &str) -> Node {
        Node::File {
            mode: 0o444,
            data: s.as_bytes().to_vec(),
        }
    }

    /// A fake host `/sys` in a temporary directory.
    fn fake_host(test: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("softvfio-hostview-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("devices/pci0000:00/0000:00:03.0")).unwrap();
        std::fs::write(d.join("devices/pci0000:00/0000:00:03.0/vendor"), "0x1af4\n").unwrap();
        std::fs::create_dir_all(d.join("devices/pci0000:00/0000:00:01.0")).unwrap();
        std::fs::write(d.join("devices/pci0000:00/uevent"), "host\n").unwrap();
        std::fs::create_dir_all(d.join("bus/pci/devices")).unwrap();
        std::os::unix::fs::symlink(
            "../../../devices/pci0000:00/0000:00:01.0",
            d.join("bus/pci/devices/0000:00:01.0"),
        )
        .unwrap();
        std::fs::create_dir_all(d.join("kernel")).unwrap();
        d
    }

    #[test]
    fn plan_covers_only_directories_with_new_entries() {
        let host = fake_host("plan");
        let v = view_with(
            &[
                (
                    "/sys/devices/pci0000:00/0000:00:03.0/vendor",
                    file("0x1234\n"),
                ),
                (
                    "/sys/bus/pci/devices/0000:00:03.0",
                    Node::Link("../../../devices/pci0000:00/0000:00:03.0".into()),
                ),
                ("/sys/kernel/iommu_groups/3/type", file("DMA\n")),
            ],
            &["/sys/devices/pci0000:00/0000:00:03.0"],
        );
        let plan = MountPlan::with_root(&v, host.to_str().unwrap()).unwrap();
        let entered: Vec<String> = plan
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::Enter { dir } => Some(dir.to_str().unwrap().to_string()),
                _ => None,
            })
            .collect();
        let h = host.to_str().unwrap();
        // /sys, /sys/bus, /sys/bus/pci, /sys/devices are untouched.
        assert_eq!(
            entered,
            [
                format!("{h}/bus/pci/devices"),
                format!("{h}/devices/pci0000:00"),
                format!("{h}/kernel"),
            ]
        );
        // The host's 0000:00:03.0 is not mirrored (ours replaces it); its
        // siblings are.
        let mirrored: Vec<String> = plan
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::Mirror { name, .. } => Some(name.to_str().unwrap().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(mirrored, ["0000:00:01.0", "uevent"]);
        let _ = std::fs::remove_dir_all(&host);
    }

    /// Runs `script` with `sh` in a child that applied the plan first.
    fn run_in_view(plan: MountPlan, script: &str) -> String {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        // SAFETY: `apply` is async-signal-safe (module invariants) and the
        // plan outlives the spawn (moved into the closure).
        unsafe {
            cmd.pre_exec(move || {
                plan.apply()
                    .map_err(|e| io::Error::from_raw_os_error(e.errno))
            });
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{:?}", out);
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn applied_plan_shows_merged_tree_and_leaves_the_host_alone() {
        let host = fake_host("apply");
        let h = host.to_str().unwrap().to_string();
        let v = view_with(
            &[
                (
                    "/sys/devices/pci0000:00/0000:00:03.0/vendor",
                    file("0x1234\n"),
                ),
                (
                    "/sys/bus/pci/devices/0000:00:03.0",
                    Node::Link("../../../devices/pci0000:00/0000:00:03.0".into()),
                ),
                ("/sys/kernel/iommu_groups/3/type", file("DMA\n")),
            ],
            &["/sys/devices/pci0000:00/0000:00:03.0"],
        );
        let plan = MountPlan::with_root(&v, &h).unwrap();
        let out = run_in_view(
            plan,
            &format!(
                "cd {h} && cat bus/pci/devices/0000:00:03.0/vendor kernel/iommu_groups/3/type devices/pci0000:00/uevent; \
                 readlink bus/pci/devices/0000:00:01.0; ls devices/pci0000:00 | tr '\\n' ' '; echo; \
                 echo x > devices/pci0000:00/0000:00:01.0/new && echo writable-host-dir; \
                 echo x > kernel/new 2>/dev/null || echo read-only"
            ),
        );
        assert_eq!(
            out,
            "0x1234\nDMA\nhost\n../../../devices/pci0000:00/0000:00:01.0\n0000:00:01.0 0000:00:03.0 uevent \nwritable-host-dir\nread-only\n"
        );
        // The host's own tree is unchanged, except for the write that went
        // through a bind mount to it.
        assert_eq!(
            std::fs::read_to_string(host.join("devices/pci0000:00/0000:00:03.0/vendor")).unwrap(),
            "0x1af4\n"
        );
        assert!(host.join("devices/pci0000:00/0000:00:01.0/new").exists());
        assert!(!host.join("kernel/iommu_groups").exists());
        let _ = std::fs::remove_dir_all(&host);
    }

    #[test]
    fn a_host_entry_gone_since_planning_is_left_out() {
        let host = fake_host("gone");
        let h = host.to_str().unwrap().to_string();
        let v = view_with(
            &[(
                "/sys/devices/pci0000:00/0000:00:03.0/vendor",
                file("0x1234\n"),
            )],
            &["/sys/devices/pci0000:00/0000:00:03.0"],
        );
        let plan = MountPlan::with_root(&v, &h).unwrap();
        // Unplugged between planning and the child's apply.
        std::fs::remove_dir_all(host.join("devices/pci0000:00/0000:00:01.0")).unwrap();
        let out = run_in_view(plan, &format!("ls {h}/devices/pci0000:00 | tr '\\n' ' '"));
        assert_eq!(out, "0000:00:03.0 uevent ");
        let _ = std::fs::remove_dir_all(&host);
    }
}
