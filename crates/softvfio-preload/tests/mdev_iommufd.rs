//! A mediated device (mdev-edu) on iommufd, in both front ends: through its
//! cdev (`VFIO_DEVICE_BIND_IOMMUFD` makes an emulated access, attached to an
//! IOAS) and through its group with `/dev/iommu` as the container.
//!
//! - The bind/attach/detach answers are Linux 6.12's for an mdev (mtty,
//!   built into the reference kernel): the `mdev_*` lines of
//!   `tests-oracle/kernel-6.12-iommufd-access.txt`, printed by
//!   `tests-oracle/iommufd_access_probe.c`, must be printed the same here.
//! - DMA traffic (edu's engine, medu's pin cache or `dma_rw`) goes through
//!   the access: round trips, a read-only page no DMA writes, an unmapped
//!   IOVA no DMA reads, an unmap of pinned memory that succeeds because the
//!   device is told to unpin (exact lines below). The reference's mdev has
//!   no DMA engine, so those answers follow iommufd's access rules
//!   (`iommufd_access_pin_pages`/`_rw`), whose errno the engine's unit
//!   tests assert from the selftest access (`t_*` lines).

mod common;

use std::path::{Path, PathBuf};

use common::{build_c, build_c_file, result_lines, softvfio_run};

const UUID: &str = "c0ffee00-0000-4000-8000-000000000001";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// edu (vfio0, group 3) and a mediated edu (vfio1, group 10).
fn config(dma: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mdev-iommufd");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // One file per test thread: tests run in parallel and a file another
    // test is rewriting reads as empty ("at least one [[device]]").
    let path = dir.join(format!(
        "platform-{dma}-{}-{:?}.toml",
        std::process::id(),
        std::thread::current().id()
    ));
    let text = format!(
        "[[device]]\nkind = \"edu\"\nbdf = \"0000:00:03.0\"\ngroup = 3\n\n\
         [[device]]\nkind = \"mdev-edu\"\nbdf = \"{UUID}\"\ngroup = 10\ndma = \"{dma}\"\n"
    );
    std::fs::write(&path, text).expect("config");
    path
}

fn run(mode: &str, dma: &str, program: &Path, args: &[&str]) -> Vec<(String, String)> {
    let cfg = config(dma);
    let out = softvfio_run(
        mode,
        &["--config", cfg.to_str().expect("utf-8")],
        program,
        args,
    );
    out.assert_clean();
    result_lines(&out.stdout)
}

fn program(mode: &str) -> PathBuf {
    build_c("mdev_iommufd", mode == "trace")
}

fn expect(lines: &[(String, String)], want: &[(&str, &str)]) {
    let got: Vec<(&str, &str)> = lines
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, want);
}

const CDEV: &[(&str, &str)] = &[
    ("cdev_bind", "0"),
    ("cdev_ioas", "0"),
    ("cdev_map", "0"),
    ("cdev_map_ro", "0"),
    ("cdev_attach", "0 pt_is_ioas=1"),
    ("cdev_roundtrip", "0 0 same"),
    ("cdev_cross_page", "0 0 same"),
    ("cdev_to_read_only", "0 unchanged"),
    ("cdev_from_unmapped", "0 0 kept"),
    ("cdev_unmap_pinned", "0 length=0x4000"),
    ("cdev_map_again", "0"),
    ("cdev_dma_after_unmap", "0 same"),
    ("cdev_detach", "0"),
    ("cdev_dma_detached", "0 unchanged"),
    ("done", ""),
];

const COMPAT: &[(&str, &str)] = &[
    ("compat_set_container", "0"),
    ("compat_set_iommu", "0"),
    ("compat_map", "0"),
    ("compat_map_ro", "0"),
    ("compat_device", "0"),
    ("compat_roundtrip", "0 0 same"),
    ("compat_cross_page", "0 0 same"),
    ("compat_to_read_only", "0 unchanged"),
    ("compat_from_unmapped", "0 0 kept"),
    ("compat_unmap_pinned", "0 size=0x4000"),
    ("done", ""),
];

fn traffic(mode: &str) {
    let prog = program(mode);
    for dma in ["pin", "rw"] {
        let lines = run(mode, dma, &prog, &["cdev", "/dev/vfio/devices/vfio1"]);
        expect(&lines, CDEV);
        let lines = run(mode, dma, &prog, &["compat", "/dev/vfio/10", UUID]);
        expect(&lines, COMPAT);
    }
}

#[test]
fn mdev_dma_through_iommufd_under_trace() {
    traffic("trace");
}

#[test]
fn mdev_dma_through_iommufd_under_preload() {
    traffic("preload");
}

/// The `mdev_*` lines Linux 6.12 printed for its mdev.
fn recorded() -> Vec<(String, String)> {
    let path = repo().join("tests-oracle/kernel-6.12-iommufd-access.txt");
    let text = std::fs::read_to_string(&path).expect("recording");
    let lines = result_lines(&text);
    assert!(
        lines.iter().any(|(k, _)| k == "t_unmap_pinned"),
        "one whole run"
    );
    lines
        .into_iter()
        .filter(|(k, _)| k.starts_with("mdev_"))
        .collect()
}

fn answers(mode: &str) {
    let mdev = ["mdev", "/dev/vfio/devices/vfio1", "/dev/vfio/devices/vfio0"];
    let got: Vec<(String, String)> = access_probe(mode, &mdev)
        .into_iter()
        .filter(|(k, _)| k.starts_with("mdev_"))
        .collect();
    let want = recorded();
    assert_eq!(want.len(), 39);
    assert_eq!(got, want, "{mode}: the mdev's cdev answers as Linux 6.12's");
}

#[test]
fn mdev_cdev_answers_as_linux_under_trace() {
    answers("trace");
}

#[test]
fn mdev_cdev_answers_as_linux_under_preload() {
    answers("preload");
}

/// `tests-oracle/iommufd_access_probe.c` (static for trace mode) run with
/// `args` under `mode`: its result lines.
fn access_probe(mode: &str, args: &[&str]) -> Vec<(String, String)> {
    let src = repo().join("tests-oracle/iommufd_access_probe.c");
    let name = if mode == "trace" {
        "access_probe-static"
    } else {
        "access_probe"
    };
    let probe = build_c_file(&src, name, mode == "trace");
    run(mode, "pin", &probe, args)
}

/// PASID through iommufd and fault queues: Linux 6.12 has no PASID flag for
/// `VFIO_DEVICE_ATTACH/DETACH_IOMMUFD_PT` (a later kernel's
/// `VFIO_DEVICE_ATTACH_PASID` is EINVAL), makes a fault queue (an object
/// with a descriptor) and takes none on a paging HWPT (EOPNOTSUPP):
/// `tests-oracle/kernel-6.12-iommufd-pasid.txt`, every line as recorded.
fn pasid_answers(mode: &str) {
    let got = access_probe(mode, &["pasid", "/dev/vfio/devices/vfio0"]);
    let path = repo().join("tests-oracle/kernel-6.12-iommufd-pasid.txt");
    let want = result_lines(&std::fs::read_to_string(path).expect("recording"));
    assert_eq!(want.len(), 13);
    assert_eq!(got, want, "{mode}");
}

#[test]
fn pasid_and_fault_queue_answers_under_trace() {
    pasid_answers("trace");
}

#[test]
fn pasid_and_fault_queue_answers_under_preload() {
    pasid_answers("preload");
}

/// What the fault queue's descriptor answers differently under
/// `softvfio run --mode trace`, where it is an `AF_UNIX` socket (the
/// supervisor tells its objects apart by their socket inode; its reads,
/// writes and stats are served, docs/IOMMUFD.md): a socket's `poll` adds
/// `POLLWRNORM` (0x100) to `POLLOUT` when asked for it, and
/// `/proc/self/fd` names a socket (the number varies: a prefix here).
const FAULT_TRACE_DEVIATIONS: &[(&str, &str)] = &[
    ("fault_poll_all", "1 revents=0x104"),
    ("fault_epoll", "0 1 events=0x104"),
    ("fault_fd_link", "socket:["),
];

/// Under `--mode preload` the descriptor is an eventfd: `/proc/self/fd`
/// names it so.
const FAULT_PRELOAD_DEVIATIONS: &[(&str, &str)] = &[("fault_fd_link", "anon_inode:[eventfd]")];

/// A fault queue's object and descriptor (`iommufd_access_probe fault`):
/// every line as Linux 6.12 answered (`kernel-6.12-iommufd-fault.txt`)
/// but the deviations above.
fn fault_answers(mode: &str) {
    let got = access_probe(mode, &["fault", "/dev/vfio/devices/vfio0"]);
    let path = repo().join("tests-oracle/kernel-6.12-iommufd-fault.txt");
    let want = result_lines(&std::fs::read_to_string(path).expect("recording"));
    assert_eq!(want.len(), 80);
    assert_eq!(want.last().map(|(k, _)| k.as_str()), Some("done"));
    let deviations = if mode == "trace" {
        FAULT_TRACE_DEVIATIONS
    } else {
        FAULT_PRELOAD_DEVIATIONS
    };
    assert_eq!(got.len(), want.len(), "{mode}: {got:?}");
    for ((gk, gv), (wk, wv)) in got.iter().zip(&want) {
        assert_eq!(gk, wk, "{mode}");
        match deviations.iter().find(|(c, _)| c == gk) {
            Some((_, ours)) if ours.ends_with('[') => {
                assert!(gv.starts_with(ours), "{mode} {gk}: {gv} (Linux: {wv})")
            }
            Some((_, ours)) => assert_eq!(gv, ours, "{mode} {gk} (Linux: {wv})"),
            None => assert_eq!(gv, wv, "{mode} {gk}"),
        }
    }
}

/// A fault queue read by a thread that was running before the queue was
/// made, and by that thread's forked child, answers as in the thread that
/// made it: every line as Linux 6.12 answered
/// (`kernel-6.12-iommufd-fault-thread.txt`: 0 for a whole record, ESPIPE
/// for part of one, EINVAL for an unknown cookie). Found by review: under trace the
/// second filter was on the allocating thread only, and the worker's read
/// blocked on the socket.
fn fault_thread_answers(mode: &str) {
    let got = access_probe(mode, &["fault-thread"]);
    let path = repo().join("tests-oracle/kernel-6.12-iommufd-fault-thread.txt");
    let want = result_lines(&std::fs::read_to_string(path).expect("recording"));
    assert_eq!(want.len(), 8);
    assert_eq!(got, want, "{mode}");
}

#[test]
fn fault_queue_read_by_another_thread_under_trace() {
    fault_thread_answers("trace");
}

#[test]
fn fault_queue_read_by_another_thread_under_preload() {
    fault_thread_answers("preload");
}

#[test]
fn fault_queue_answers_under_trace() {
    fault_answers("trace");
}

#[test]
fn fault_queue_answers_under_preload() {
    fault_answers("preload");
}
