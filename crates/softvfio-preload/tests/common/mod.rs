//! Shared helpers of the preload tests: the artifacts under test (the
//! preload library, the `softvfio` command, the vfio-ioctls example), the C
//! test programs, and runs of programs under `softvfio run`.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// `target/<profile>`, the directory of this test's build.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps")
        .to_path_buf()
}

pub struct Artifacts {
    pub softvfio: PathBuf,
    pub lib: PathBuf,
    pub example: PathBuf,
}

/// Builds what the tests run, once per test binary. `cargo test` builds
/// neither the cdylib (an integration test cannot link it) nor, always, the
/// `softvfio` binary of another package; `cargo build` does, into the same
/// target directory (cargo holds no lock while tests run).
pub fn artifacts() -> &'static Artifacts {
    static BUILT: OnceLock<Artifacts> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = profile_dir();
        let target = dir.parent().expect("target dir").to_path_buf();
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", &target)
            .args([
                "build",
                "--quiet",
                "-p",
                "softvfio-preload",
                "-p",
                "softvfio-cli",
            ])
            .args(["--lib", "--bins", "--example", "vfio_ioctls_edu"]);
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let st = cmd.status().expect("run cargo build");
        assert!(st.success(), "cargo build of the preload library failed");
        let a = Artifacts {
            softvfio: dir.join("softvfio"),
            lib: dir.join("libsoftvfio_preload.so"),
            example: dir.join("examples").join("vfio_ioctls_edu"),
        };
        for p in [&a.softvfio, &a.lib, &a.example] {
            assert!(p.is_file(), "{} was not built", p.display());
        }
        a
    })
}

/// Compiles `tests/programs/<name>.c` (dynamically linked unless `static_`)
/// into the target tmpdir, once per test binary: a test that rebuilt the
/// file while another test's program ran would leave that program's image
/// deleted (`/proc/self/exe` then names no file, and its frames no symbols).
pub fn build_c(name: &str, static_: bool) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, bool, PathBuf)>> =
        std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, exe)) = built.iter().find(|(n, s, _)| n == name && *s == static_) {
        return exe.clone();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(format!("{name}.c"));
    let exe = build_c_file(
        &src,
        &format!("{name}{}", if static_ { "-static" } else { "" }),
        static_,
    );
    built.push((name.to_string(), static_, exe.clone()));
    exe
}

pub fn build_c_file(src: &Path, out: &str, static_: bool) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("preload-c-programs");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let exe = dir.join(out);
    let tmp = dir.join(format!(
        "{out}.{}.{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut cmd = Command::new("gcc");
    cmd.args(["-O2", "-Wall", "-o"]).arg(&tmp).arg(src);
    if static_ {
        cmd.arg("-static");
    }
    let st = cmd.status().expect("run gcc");
    assert!(st.success(), "gcc failed for {}", src.display());
    std::fs::rename(&tmp, &exe).expect("rename");
    exe
}

pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// "key value" lines of stdout.
    pub fn kv(&self) -> HashMap<String, String> {
        self.stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()
    }

    pub fn get(&self, key: &str) -> String {
        self.kv().get(key).cloned().unwrap_or_else(|| {
            panic!(
                "no `{key}` line in\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts exit 0 and softvfio's "no leak, nothing left open" report.
    pub fn assert_clean(&self) {
        assert_eq!(
            self.code,
            Some(0),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr
                .contains("after release: 0 pinned pages, 0 accounted pages: no leak"),
            "no clean end report:\n{}",
            self.stderr
        );
        assert!(
            self.stderr.contains("left open by the program: nothing"),
            "{}",
            self.stderr
        );
    }
}

fn output(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().expect("run program");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `softvfio run --mode MODE [extra...] -- program args`.
pub fn softvfio_run(mode: &str, extra: &[&str], program: &Path, args: &[&str]) -> Output {
    let a = artifacts();
    let mut cmd = Command::new(&a.softvfio);
    cmd.args(["run", "--mode", mode])
        .args(extra)
        .arg("--")
        .arg(program)
        .args(args)
        .env_remove("SOFTVFIO_QUIET")
        .env_remove("SOFTVFIO_CONFIG")
        .env_remove("SOFTVFIO_PRELOAD_LIB")
        .env_remove("LD_PRELOAD");
    output(&mut cmd)
}

/// `program args` with the library in LD_PRELOAD and nothing else.
pub fn preloaded(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let a = artifacts();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LD_PRELOAD", &a.lib)
        .env_remove("SOFTVFIO_QUIET")
        .env_remove("SOFTVFIO_CONFIG")
        .env_remove("SOFTVFIO_PRELOAD_TOP");
    for (k, v) in env {
        cmd.env(k, v);
    }
    output(&mut cmd)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A hugetlbfs mount with a few free 2 MiB pages, as check.sh makes one
/// (root only); unmounted on drop.
pub struct HugeMount {
    pub dir: PathBuf,
}

impl HugeMount {
    pub fn new() -> Option<Self> {
        if !is_root() {
            return None;
        }
        let nr: u64 = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if nr < 8 {
            let _ = std::fs::write("/proc/sys/vm/nr_hugepages", "16");
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "huge-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let st = Command::new("mount")
            .args(["-t", "hugetlbfs", "none"])
            .arg(&dir)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        st.success().then_some(HugeMount { dir })
    }
}

impl Drop for HugeMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The probe's result lines, as check.sh selects them, as (name, value).
pub fn result_lines(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter(|l| {
            let name = l.split_whitespace().next().unwrap_or("");
            *l == "done"
                || (l.contains(' ')
                    && !name.is_empty()
                    && name.chars().all(|c| {
                        c.is_ascii_lowercase()
                            || c.is_ascii_digit()
                            || c == '_'
                            || c == '^'
                            || c == '['
                            || c == ']'
                    }))
        })
        .map(|l| {
            let mut parts = l.splitn(2, char::is_whitespace);
            let name = parts.next().unwrap_or("").to_string();
            let value = parts.next().unwrap_or("").trim().to_string();
            (name, value)
        })
        .collect()
}

/// `got` with each documented deviation (case, softvfio's exact answer,
/// why) replaced by Linux's answer, after
/// checking that softvfio gave exactly the documented answer.
pub fn excuse_deviations(
    deviations: &[(&str, &str, &str)],
    want: &[(String, String)],
    got: &[(String, String)],
) -> Vec<(String, String)> {
    let linux: HashMap<&str, &str> = want.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    got.iter()
        .map(|(k, v)| match deviations.iter().find(|(c, _, _)| c == k) {
            Some((_, ours, _)) if v == ours => {
                (k.clone(), linux.get(k.as_str()).unwrap_or(&"").to_string())
            }
            _ => (k.clone(), v.clone()),
        })
        .collect()
}

/// The lines of `got` that differ from `want`, as readable report lines:
/// `name: linux `A` softvfio `B``, `name: missing (linux `A`)`, and
/// `name: extra `B``; plus a note when the order differs.
pub fn differences(want: &[(String, String)], got: &[(String, String)]) -> Vec<String> {
    let got_map: HashMap<&str, &str> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let want_names: HashSet<&str> = want.iter().map(|(k, _)| k.as_str()).collect();
    let mut out = Vec::new();
    for (name, value) in want {
        match got_map.get(name.as_str()) {
            None => out.push(format!("{name}: missing (linux `{value}`)")),
            Some(g) if g != value => out.push(format!("{name}: linux `{value}` softvfio `{g}`")),
            Some(_) => {}
        }
    }
    for (name, value) in got {
        if !want_names.contains(name.as_str()) {
            out.push(format!("{name}: extra `{value}`"));
        }
    }
    if out.is_empty() {
        let order_want: Vec<&str> = want.iter().map(|(k, _)| k.as_str()).collect();
        let order_got: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        if order_want != order_got {
            out.push("same lines in another order (or repeated)".to_string());
        }
    }
    out
}
