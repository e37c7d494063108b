//! Calls of the i386 ABI (`int $0x80`) of a 64-bit program
//! (`programs/i386.c`), with and without a user-notification listener:
//! its VFIO ioctls are served as the x86-64 ones (arguments of 32 bits,
//! 100 system calls injected at its stop), a call the kernel is to run
//! after the supervisor injected at its stop (a release) runs from its
//! `int $0x80` again, and its `close`, `dup2`, `dup3`, `close_range` on
//! objects leave no descriptor named after the object.

mod common;

use common::*;
use softvfio_trace::{exit_code, Command, Supervisor};
use std::os::fd::OwnedFd;

const ENOTTY: &str = "-25";

/// Every line the program prints, in order.
const WANT: &[(&str, &str)] = &[
    ("below_4g", "1"),
    ("ioctl32_api", "0"),
    ("ioctl32_rw", "0"),
    ("ioctl32_rw_out", "58"),
    ("ioctl32_injected", "100"),
    ("ioctl32_unknown", ENOTTY),
    ("ioctl32_fioclex", "0"),
    ("ioctl32_cloexec", "1"),
    ("released_before", "0"),
    ("close32_after_injection", "0"),
    ("close32_closed", "-9"),
    ("released_after", "1"),
    ("ioctl32_file_after_injection", ENOTTY),
    ("released_last", "2"),
    ("native_before", "0"),
    ("close32", "0"),
    ("close32_reused", "1"),
    ("close32_ioctl", ENOTTY),
    ("dup2_32", "1"),
    ("dup2_32_ioctl", ENOTTY),
    ("dup3_32", "1"),
    ("dup3_32_cloexec", "1"),
    ("dup3_32_ioctl", ENOTTY),
    ("close_range32", "0"),
    ("close_range32_gone", "1"),
    ("released_end", "2"),
    ("done", ""),
];

/// Runs `exe` under `sup` with `toy` (with a listener: the toy's query,
/// 100, notified; the rest at ptrace stops): its exit status and what it
/// printed (kept in a file named after `name`).
fn run(
    sup: &mut Supervisor,
    toy: &mut Toy,
    exe: &std::path::Path,
    listener: bool,
    name: &str,
) -> (std::process::ExitStatus, String) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out_path = dir.join(format!("{name}-{}-{listener}", std::process::id()));
    let file = std::fs::File::create(&out_path).expect("create");
    let mut cmd = Command::new(exe);
    cmd.stdout(OwnedFd::from(file));
    if listener {
        cmd.user_notification(Some(&[(0x3b << 8) | 100]));
    }
    let status = sup.run(cmd, toy).expect("run");
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    (status, stdout)
}

fn check(listener: bool) {
    let exe = build_c("i386");
    let mut sup = Supervisor::new();
    let mut toy = Toy {
        injector: Some(sup.injector()),
        ..Toy::default()
    };
    let (status, stdout) = run(&mut sup, &mut toy, &exe, listener, "i386-out");
    assert_eq!(exit_code(status), 0, "{stdout}");
    let got: Vec<(&str, &str)> = stdout
        .lines()
        .map(|l| l.split_once(' ').unwrap_or((l, "")))
        .collect();
    assert_eq!(got, WANT, "listener {listener}");
    // The two objects whose last descriptor a native dup2 replaced were
    // released at a stop (injecting), without a failed injection; the
    // container and its duplicates at the end.
    assert_eq!(toy.release_inject_failures, 0);
    assert!(toy.released.len() >= 3, "{:?}", toy.released);
    assert!(toy.released[..2].iter().all(|(_, stopped)| *stopped));
}

#[test]
fn i386_calls_at_ptrace_stops() {
    check(false);
}

#[test]
fn i386_calls_with_a_listener() {
    check(true);
}

/// `programs/i386_process.S` assembled and linked as an i386 program.
fn build_i386_process() -> std::path::PathBuf {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/i386_process.S");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let tag = format!("{}-{:?}", std::process::id(), std::thread::current().id());
    let obj = dir.join(format!("i386_process-{tag}.o"));
    let exe = dir.join(format!("i386_process-{tag}"));
    let st = std::process::Command::new("as")
        .arg("--32")
        .arg("-o")
        .arg(&obj)
        .arg(&src)
        .status()
        .expect("run as");
    assert!(st.success());
    let st = std::process::Command::new("ld")
        .args(["-m", "elf_i386", "-o"])
        .arg(&exe)
        .arg(&obj)
        .status()
        .expect("run ld");
    assert!(st.success());
    exe
}

/// An i386 program (32-bit code) is not served, and its calls the filter
/// stops (its `close`; `dup2` with a listener) run as without softvfio:
/// `dup2(1, 10)` is 10, `close(10)` 0, again EBADF (exit code 7).
#[test]
fn an_i386_program_runs_as_without_softvfio() {
    let exe = build_i386_process();
    for listener in [false, true] {
        let mut sup = Supervisor::new();
        let mut toy = Toy::default();
        let (status, stdout) = run(&mut sup, &mut toy, &exe, listener, "i386-process");
        assert_eq!(
            (exit_code(status), stdout.as_str()),
            (7, "i386\n"),
            "listener {listener}"
        );
        assert!(sup.stats().stops >= 2, "{:?}", sup.stats());
        assert_eq!(sup.stats().served, 0);
    }
}
