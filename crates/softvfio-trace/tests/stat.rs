//! The stat family (`stat`, `lstat`, `newfstatat`, `statx`, `fstat`) under
//! the supervisor, with a user-notification listener (served without a
//! ptrace stop) and without (at ptrace stops): the handler's cdev path and
//! a device object's descriptor stat as the character device 250:0, byte
//! for byte; a regular file, a link to it and every error case get exactly
//! the kernel's answers (compared with the same program run natively).

mod common;

use common::*;
use softvfio_trace::{Command, Supervisor};
use std::collections::HashMap;
use std::mem::{offset_of, size_of};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Loop iterations of the program (3 stat-family calls each).
const LOOP: usize = 1000;

/// A regular file (mode 0640, 1234 bytes), a symbolic link to it, in a
/// directory of their own.
fn fixture(tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "stat-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("file");
    std::fs::write(&file, vec![7u8; 1234]).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let link = dir.join("link");
    std::os::unix::fs::symlink(&file, &link).expect("symlink");
    // Following a link may update its atime (relatime: while it is not
    // after the mtime). An atime an hour ahead keeps it still, so that
    // the native and the supervised runs see the same bytes.
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() + 3600);
    let touched = std::process::Command::new("touch")
        .args(["-h", "-a", "-d", &format!("@{ahead}")])
        .arg(&link)
        .status()
        .expect("run touch");
    assert!(touched.success());
    (dir, file, link)
}

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The whole `struct stat` devtmpfs gives a character device 250:0 with
/// mode 0600 (as the handler answers): every other byte zero.
fn cdev_stat_hex() -> String {
    let mut b = vec![0u8; size_of::<libc::stat>()];
    put(
        &mut b,
        offset_of!(libc::stat, st_mode),
        &(libc::S_IFCHR | 0o600).to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(libc::stat, st_nlink),
        &1u64.to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(libc::stat, st_rdev),
        &libc::makedev(250, 0).to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(libc::stat, st_blksize),
        &4096i64.to_ne_bytes(),
    );
    hex(&b)
}

/// The whole `struct statx` of the same node, asked `STATX_BASIC_STATS`:
/// as Linux 6.12 answers for a VFIO cdev (`stx_cdev_basic` of
/// tests-oracle/kernel-6.12-compat-fd.txt), the mount id in the mask
/// (`STATX_MNT_ID`, 0x1000) and devtmpfs's attributes mask.
fn cdev_statx_hex() -> String {
    let mut b = vec![0u8; size_of::<libc::statx>()];
    put(
        &mut b,
        offset_of!(libc::statx, stx_mask),
        &(libc::STATX_BASIC_STATS | 0x1000).to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(libc::statx, stx_attributes_mask),
        &0x30_3070u64.to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(libc::statx, stx_blksize),
        &4096u32.to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(libc::statx, stx_nlink),
        &1u32.to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(libc::statx, stx_mode),
        &((libc::S_IFCHR | 0o600) as u16).to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(libc::statx, stx_rdev_major),
        &250u32.to_ne_bytes(),
    );
    hex(&b)
}

fn args(file: &Path, link: &Path, dir: &Path) -> Vec<String> {
    vec![
        file.display().to_string(),
        link.display().to_string(),
        dir.display().to_string(),
        "file".to_string(),
        LOOP.to_string(),
    ]
}

fn kv(stdout: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The program run without any supervisor: the kernel's own answers.
fn native(exe: &Path, args: &[String]) -> HashMap<String, String> {
    let out = std::process::Command::new(exe)
        .args(args)
        .output()
        .expect("run natively");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    kv(&String::from_utf8_lossy(&out.stdout))
}

/// The program under the supervisor and the toy handler, with or without
/// a user-notification listener.
fn supervised(
    exe: &Path,
    args: &[String],
    listener: bool,
) -> (HashMap<String, String>, Supervisor) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out_path = dir.join(format!(
        "stat-out-{}-{:?}-{listener}",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = std::fs::File::create(&out_path).expect("create");
    let mut sup = Supervisor::new();
    let mut toy = Toy::default();
    let mut cmd = Command::new(exe);
    cmd.args(args).stdout(OwnedFd::from(file));
    if listener {
        cmd.user_notification(Some(&[]));
    }
    let status = sup.run(cmd, &mut toy).expect("run");
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    assert_eq!(status.code(), Some(0), "{stdout}");
    (kv(&stdout), sup)
}

/// The keys the handler answers, with their exact answers.
fn served_answers() -> Vec<(&'static str, String)> {
    let (st, stx) = (cdev_stat_hex(), cdev_statx_hex());
    let ok = |h: &str| format!("0 0 {h}");
    vec![
        ("cdev_stat", ok(&st)),
        ("cdev_lstat", ok(&st)),
        ("cdev_newfstatat", ok(&st)),
        ("cdev_newfstatat_nofollow", ok(&st)),
        ("cdev_statx", ok(&stx)),
        ("cdev_statx_nofollow", ok(&stx)),
        ("cdev_newfstatat_dirfd", ok(&st)),
        ("cdev_statx_dirfd", ok(&stx)),
        ("cdev_stat_cwd", ok(&st)),
        ("cdev_newfstatat_cwd", ok(&st)),
        ("device_fd_ok", "1".into()),
        ("dev_fstat", ok(&st)),
        ("dev_newfstatat_empty", ok(&st)),
        ("dev_statx_empty", ok(&stx)),
        ("group_fstat", "0 1".into()),
        ("cdev_stat_bad_buffer", "-1 14".into()),
        ("cdev_statx_bad_buffer", "-1 14".into()),
        ("dev_fstat_bad_buffer", "-1 14".into()),
        // An empty path without AT_EMPTY_PATH: the kernel's ENOENT.
        ("newfstatat_empty_without_flag", "-1 2".into()),
        // Four threads at once, each answer checked.
        ("threads_bad", "0".into()),
        // A number closed and taken by dup again and again, stat'ed by
        // another thread all along: each answer is the current one.
        ("reuse_bad", "0".into()),
    ]
}

/// The keys the kernel answers: as natively, and these exact values.
const KERNEL_KEYS: &[(&str, Option<&str>)] = &[
    ("file_stat", None),
    ("file_lstat", None),
    ("file_newfstatat", None),
    ("file_statx", None),
    ("file_newfstatat_dirfd", None),
    ("file_statx_dirfd", None),
    ("file_fstat", None),
    ("file_newfstatat_empty", None),
    ("file_statx_empty", None),
    ("link_stat", None),
    ("link_lstat", None),
    ("link_newfstatat_nofollow", None),
    ("link_statx_nofollow", None),
    ("bad_path_stat", Some("-1 14")),
    ("bad_path_lstat", Some("-1 14")),
    ("bad_path_newfstatat", Some("-1 14")),
    ("bad_path_statx", Some("-1 14")),
    ("file_stat_bad_buffer", Some("-1 14")),
    ("file_fstat_bad_buffer", Some("-1 14")),
    ("fstat_ebadf", Some("-1 9")),
    ("fstat_negative", Some("-1 9")),
    ("newfstatat_bad_dirfd", Some("-1 9")),
    ("statx_bad_dirfd", Some("-1 9")),
    ("openat_bad_dirfd", Some("-1 9")),
    ("newfstatat_bad_flags", Some("-1 22")),
    ("statx_bad_flags", Some("-1 22")),
    ("cdev_leading_zero", Some("-1 2")),
    ("cdev_other", Some("-1 2")),
    ("loop_bad", Some("0")),
];

fn check(got: &HashMap<String, String>, native: &HashMap<String, String>, file: &Path) {
    let mut bad = Vec::new();
    for (k, want) in served_answers() {
        if got.get(k) != Some(&want) {
            bad.push(format!("{k}: want {want}, got {:?}", got.get(k)));
        }
    }
    for (k, exact) in KERNEL_KEYS {
        let want = native.get(*k);
        if want.is_none() || got.get(*k) != want {
            bad.push(format!("{k}: native {want:?}, got {:?}", got.get(*k)));
        }
        if let Some(e) = exact {
            if want.map(String::as_str) != Some(*e) {
                bad.push(format!("{k}: native {want:?}, expected {e}"));
            }
        }
    }
    assert!(bad.is_empty(), "mismatches:\n{}", bad.join("\n"));
    // The file's answers are the file's: mode 0640, 1234 bytes.
    let st = got["file_stat"].split(' ').nth(2).unwrap_or_default();
    let field = |off: usize, len: usize| st.get(2 * off..2 * (off + len)).unwrap_or_default();
    assert_eq!(
        field(offset_of!(libc::stat, st_mode), 4),
        hex(&(libc::S_IFREG | 0o640).to_ne_bytes()),
        "{}",
        file.display()
    );
    assert_eq!(
        field(offset_of!(libc::stat, st_size), 8),
        hex(&1234i64.to_ne_bytes())
    );
}

/// With a listener: every call of the family is served by notification
/// (the loop's 3000 calls make no ptrace stop), with the same answers.
#[test]
fn stat_family_is_notified_with_exact_answers() {
    let exe = build_c("stat");
    let (dir, file, link) = fixture("notified");
    let args = args(&file, &link, &dir);
    let native = native(&exe, &args);
    let (got, sup) = supervised(&exe, &args, true);
    check(&got, &native, &file);
    let st = sup.stats();
    assert!(st.notified >= 3 * LOOP as u64, "{st:?}");
    assert!(st.stops < LOOP as u64, "{st:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Without a listener: the same answers, each call at a ptrace stop.
#[test]
fn stat_family_at_ptrace_stops_answers_the_same() {
    let exe = build_c("stat");
    let (dir, file, link) = fixture("ptrace");
    let args = args(&file, &link, &dir);
    let native = native(&exe, &args);
    let (got, sup) = supervised(&exe, &args, false);
    check(&got, &native, &file);
    let st = sup.stats();
    assert_eq!(st.notified, 0, "{st:?}");
    assert!(st.stops >= 3 * LOOP as u64, "{st:?}");
    let _ = std::fs::remove_dir_all(dir);
}
