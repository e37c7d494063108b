//! An unmodified QEMU (Debian's `qemu-system-x86_64`, TCG) passing the
//! softvfio edu device through with `-device vfio-pci,host=0000:00:03.0`
//! under `softvfio run`, in trace and in preload mode. The guest is Debian's
//! Linux 6.1 with a busybox initramfs (tests/qemu/build-initramfs.sh):
//!
//! - it lists the device (1234:11e8) in an IOMMU group of its vIOMMU;
//! - its own vfio-pci runs ../shared/conformance/type1_probe.c, whose every
//!   line must equal kernel-6.1.txt (QEMU's vIOMMU notifier turns the
//!   guest's maps into MAP_DMA/UNMAP_DMA on softvfio);
//! - tests/qemu/guest_irq.c raises edu interrupts through the guest's
//!   vfio-pci and counts them: INTx N of N, masked INTx held until the
//!   unmask, MSI N of N.
//!
//! Skipped, saying why, only when qemu-system-x86_64, the kernel package
//! (extracted as ../shared/conformance/run-kernel.sh does, in
//! `$ORACLE_WORK/kroot`, default /tmp/type1-oracle/kroot), busybox or the
//! conformance directory is absent; `.ci/run` installs all of them.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const KVER: &str = "6.1.0-47-amd64";
/// Interrupts raised per kind.
const IRQ_N: u32 = 16;
/// A TCG boot takes 10-40 s on a loaded two-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn conformance() -> PathBuf {
    repo().join("../shared/conformance")
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// The kernel and the initramfs, built once; `Err` says why the test
/// cannot run here.
struct Guest {
    kernel: PathBuf,
    initrd: PathBuf,
}

fn guest() -> Result<&'static Guest, String> {
    static GUEST: OnceLock<Result<Guest, String>> = OnceLock::new();
    GUEST
        .get_or_init(build_guest)
        .as_ref()
        .map_err(Clone::clone)
}

fn build_guest() -> Result<Guest, String> {
    if !on_path("qemu-system-x86_64") {
        return Err("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into());
    }
    let work = std::env::var_os("ORACLE_WORK")
        .map_or_else(|| PathBuf::from("/tmp/type1-oracle"), PathBuf::from);
    let kroot = work.join("kroot");
    let kernel = kroot.join(format!("boot/vmlinuz-{KVER}"));
    if !kernel.is_file() {
        return Err(format!(
            "no kernel at {} (apt-get download linux-image-{KVER}-unsigned; dpkg -x it into {})",
            kernel.display(),
            kroot.display()
        ));
    }
    if !Path::new("/bin/busybox").is_file() {
        return Err("/bin/busybox is absent (apt-get install busybox-static cpio)".into());
    }
    let probe_src = conformance().join("type1_probe.c");
    if !probe_src.is_file() {
        return Err(format!("{} is absent", probe_src.display()));
    }
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("qemu-guest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let gcc = |src: &Path, out: &Path| {
        let st = Command::new("gcc")
            .args(["-O2", "-static", "-o"])
            .arg(out)
            .arg(src)
            .status()
            .expect("run gcc");
        assert!(st.success(), "gcc failed for {}", src.display());
    };
    let probe = dir.join("type1_probe");
    let irq = dir.join("guest_irq");
    gcc(&probe_src, &probe);
    gcc(&repo().join("tests/qemu/guest_irq.c"), &irq);
    let initrd = dir.join("initrd.gz");
    let st = Command::new("bash")
        .arg(repo().join("tests/qemu/build-initramfs.sh"))
        .args([&kroot, &initrd, &probe, &irq])
        .status()
        .expect("run build-initramfs.sh");
    assert!(st.success(), "build-initramfs.sh failed");
    Ok(Guest { kernel, initrd })
}

/// `softvfio run --mode preload` needs the preload library next to the
/// `softvfio` executable; `cargo test` does not build a cdylib.
fn build_preload_lib() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_softvfio"));
        let profile_dir = bin.parent().expect("bin dir");
        let target = profile_dir.parent().expect("target dir");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", target)
            .args(["build", "--quiet", "-p", "softvfio-preload", "--lib"]);
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        assert!(
            cmd.status().expect("cargo build").success(),
            "building the preload library failed"
        );
        assert!(profile_dir.join("libsoftvfio_preload.so").is_file());
    });
}

struct Boot {
    /// The guest's serial console, `\r` removed.
    console: String,
    /// softvfio's end report and QEMU's own messages.
    stderr: String,
    code: Option<i32>,
    secs: f64,
}

impl Boot {
    /// The lines between "=== NAME start..." and "=== NAME end..." (a
    /// marker may follow the firmware's screen-clearing escapes on its line).
    fn section(&self, name: &str) -> Vec<&str> {
        let start = format!("=== {name} start");
        let end = format!("=== {name} end");
        self.console
            .lines()
            .skip_while(|l| !l.contains(&start))
            .skip(1)
            .take_while(|l| !l.contains(&end))
            .collect()
    }

    /// The "=== NAME end..." marker, from the marker on.
    fn end_line(&self, name: &str) -> Option<&str> {
        let end = format!("=== {name} end");
        self.console
            .lines()
            .find_map(|l| l.find(&end).map(|i| &l[i..]))
    }

    fn dump(&self) -> String {
        format!(
            "exit {:?} after {:.1} s\nconsole:\n{}\nstderr:\n{}",
            self.code, self.secs, self.console, self.stderr
        )
    }
}

/// The edu device of the default platform, by its host BDF.
const HOST_EDU: &str = "vfio-pci,host=0000:00:03.0";
/// The mediated edu of tests-oracle/medu-platform.toml, by its sysfs path.
const MDEV_EDU: &str =
    "vfio-pci,sysfsdev=/sys/bus/mdev/devices/c0ffee00-0000-4000-8000-000000000001";

/// Boots the guest in QEMU under `softvfio run --mode MODE` (with
/// `--config CONFIG` when given), with or without the vIOMMU, passing
/// `device` through.
fn boot(g: &Guest, mode: &str, viommu: bool, device: &str, config: Option<&Path>) -> Boot {
    let viommu = viommu.then_some("intel-iommu,intremap=on,caching-mode=on");
    boot_qemu(
        g,
        mode,
        Path::new("qemu-system-x86_64"),
        &[],
        viommu,
        &[device],
        config,
    )
}

/// `softvfio run` of `qemu` with `qemu_args` first, the vIOMMU device and
/// the `-device`/`-object` arguments `devices` (each after its own flag:
/// `-object` for those starting with "iommufd,", `-device` otherwise).
fn boot_qemu(
    g: &Guest,
    mode: &str,
    qemu: &Path,
    qemu_args: &[String],
    viommu: Option<&str>,
    devices: &[&str],
    config: Option<&Path>,
) -> Boot {
    if mode == "preload" {
        build_preload_lib();
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_softvfio"));
    cmd.args(["run", "--mode", mode]);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.arg("--")
        .arg(qemu)
        .args(qemu_args)
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-M",
            "q35,kernel-irqchip=split",
            "-m",
            "1G",
            "-smp",
            "1",
        ])
        .args(["-net", "none", "-nographic", "-no-reboot"]);
    if let Some(v) = viommu {
        cmd.args(["-device", v]);
    }
    for d in devices {
        let flag = if d.starts_with("iommufd,") {
            "-object"
        } else {
            "-device"
        };
        cmd.args([flag, d]);
    }
    cmd.arg("-kernel")
        .arg(&g.kernel)
        .arg("-initrd")
        .arg(&g.initrd)
        .arg("-append")
        // no_timer_check: a loaded host makes TCG's timer look broken to the
        // IO-APIC check, which panics under interrupt remapping.
        .arg(format!(
            "console=ttyS0 intel_iommu=on quiet panic=-1 no_timer_check sv_irqn={IRQ_N}"
        ))
        .env_remove("SOFTVFIO_QUIET")
        .env_remove("SOFTVFIO_CONFIG")
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn softvfio run");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if start.elapsed() > BOOT_TIMEOUT {
            // SAFETY: kill takes no pointers; the group is the one this
            // test created for the run.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let secs = start.elapsed().as_secs_f64();
    let console = String::from_utf8_lossy(&reader.join().expect("reader")).replace('\r', "");
    let stderr = String::from_utf8_lossy(&err_reader.join().expect("reader")).into_owned();
    let b = Boot {
        console,
        stderr,
        code: status.and_then(|s| s.code()),
        secs,
    };
    assert!(status.is_some(), "QEMU timed out:\n{}", b.dump());
    b
}

/// "name value" with the value's spacing as the probe printed it.
fn fields(line: &str) -> (String, String) {
    let mut it = line.trim_end().splitn(2, char::is_whitespace);
    let name = it.next().unwrap_or("").to_string();
    (name, it.next().unwrap_or("").trim().to_string())
}

/// The probe's result lines, selected as check.sh selects them.
fn result_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<(String, String)> {
    lines
        .into_iter()
        .filter(|l| {
            let name = l.split_whitespace().next().unwrap_or("");
            *l == "done"
                || (l.contains(' ')
                    && !name.is_empty()
                    && name.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || "_^[]".contains(c)
                    }))
        })
        .map(fields)
        .collect()
}

fn check_devices(b: &Boot, viommu: bool) -> String {
    let devices = b.section("devices");
    let edu: Vec<&&str> = devices
        .iter()
        .filter(|l| l.contains(" 1234:11e8 "))
        .collect();
    assert_eq!(edu.len(), 1, "the guest lists the edu once:\n{}", b.dump());
    let group = edu[0].rsplit("group=").next().unwrap_or("").to_string();
    if viommu {
        assert!(
            group.parse::<u32>().is_ok(),
            "edu in an IOMMU group:\n{}",
            b.dump()
        );
    } else {
        assert_eq!(group, "none", "{}", b.dump());
    }
    assert!(b.console.contains("=== guest done"), "{}", b.dump());
    assert!(
        b.stderr
            .contains("after release: 0 pinned pages, 0 accounted pages: no leak"),
        "{}",
        b.dump()
    );
    group
}

fn check_probe(b: &Boot) {
    assert_eq!(
        b.end_line("probe"),
        Some("=== probe end rc=0"),
        "{}",
        b.dump()
    );
    let want_text =
        std::fs::read_to_string(conformance().join("kernel-6.1.txt")).expect("kernel-6.1.txt");
    let mut want = result_lines(want_text.lines());
    want.push(("done".into(), String::new()));
    let got = result_lines(b.section("probe"));
    // Every line, in order: the guest's vfio is Linux's own, so even the
    // lines check.sh allows to differ (the module's entry limit) must match.
    for (i, w) in want.iter().enumerate() {
        assert_eq!(
            got.get(i),
            Some(w),
            "probe line {i} differs from kernel-6.1.txt:\n{}",
            b.dump()
        );
    }
    assert_eq!(got.len(), want.len(), "{}", b.dump());
}

fn check_irqs(b: &Boot) {
    assert_eq!(b.end_line("irq"), Some("=== irq end rc=0"), "{}", b.dump());
    let n = IRQ_N.to_string();
    let want: Vec<(String, String)> = [
        ("edu_id", "0x10000ed"),
        ("edu_liveness", "0xedcba987"),
        ("intx_enable", "0"),
        ("intx_raised", &n),
        ("intx_received", &n),
        ("intx_mask", "0"),
        // Raised while masked: nothing arrives...
        ("intx_while_masked", "0"),
        ("intx_unmask", "0"),
        // ...until the unmask delivers the pending one.
        ("intx_after_unmask", "1"),
        ("intx_off", "0"),
        ("bus_master", "0"),
        ("msi_enable", "0"),
        ("msi_raised", &n),
        ("msi_received", &n),
        ("msi_status", "0"),
        ("done", ""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // "time_" lines are measurements (docs/PERFORMANCE.md): present, numbers.
    let (times, got): (Vec<_>, Vec<_>) = b
        .section("irq")
        .into_iter()
        .map(fields)
        .partition(|(k, _)| k.starts_with("time_"));
    let names: Vec<&str> = times.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["time_bar_read_ns", "time_intx_ns", "time_msi_ns"],
        "{}",
        b.dump()
    );
    assert!(
        times.iter().all(|(_, v)| v.parse::<u64>().is_ok()),
        "{}",
        b.dump()
    );
    assert_eq!(got, want, "{}", b.dump());
}

fn passthrough_with_viommu(mode: &str) {
    let g = match guest() {
        Ok(g) => g,
        Err(why) => {
            eprintln!("SKIPPED: QEMU passthrough test needs: {why}");
            return;
        }
    };
    let b = boot(g, mode, true, HOST_EDU, None);
    check_devices(&b, true);
    check_probe(&b);
    check_irqs(&b);
    eprintln!("{mode} with vIOMMU: {:.1} s", b.secs);
}

/// QEMU's mdev path (`-device vfio-pci,sysfsdev=/sys/bus/mdev/devices/UUID`)
/// with the mediated edu: QEMU finds the device and its group through the
/// host view's mdev sysfs, the guest's own vfio-pci drives it behind the
/// vIOMMU (the probe prints kernel-6.1.txt, interrupts arrive), and every
/// guest unmap that QEMU turns into UNMAP_DMA reaches the device through
/// the notifier: no pin is left behind ("no leak" after release).
fn mdev_passthrough_with_viommu(mode: &str) {
    let g = match guest() {
        Ok(g) => g,
        Err(why) => {
            eprintln!("SKIPPED: QEMU passthrough test needs: {why}");
            return;
        }
    };
    let config = repo().join("tests-oracle/medu-platform.toml");
    let b = boot(g, mode, true, MDEV_EDU, Some(&config));
    check_devices(&b, true);
    check_probe(&b);
    check_irqs(&b);
    // With the device still open at QEMU's exit, nothing is accounted: the
    // pages the guest's DMA pinned were all let go when their mappings went
    // (an mdev-only container accounts pinned pages only).
    let left_open = b
        .stderr
        .lines()
        .find(|l| l.starts_with("left open by the program:"))
        .unwrap_or("");
    assert!(
        left_open.contains(" 1 device(s);") && left_open.ends_with(", 0 pages accounted"),
        "{}",
        b.dump()
    );
    // QEMU reset the device through VFIO_DEVICE_RESET (GET_INFO says RESET,
    // as for medu), so it did not complain that it could not.
    assert!(
        !b.stderr.contains("no available reset mechanism"),
        "{}",
        b.dump()
    );
    eprintln!("{mode} mdev with vIOMMU: {:.1} s", b.secs);
}

#[test]
fn qemu_passthrough_trace() {
    passthrough_with_viommu("trace");
}

#[test]
fn qemu_passthrough_preload() {
    passthrough_with_viommu("preload");
}

#[test]
fn qemu_mdev_passthrough_trace() {
    mdev_passthrough_with_viommu("trace");
}

#[test]
fn qemu_mdev_passthrough_preload() {
    mdev_passthrough_with_viommu("preload");
}

/// A QEMU with iommufd (8.2 or later): `$QEMU_IOMMUFD`, or
/// `qemu-system-x86_64` on PATH when it is recent enough, with its
/// arguments: `-L $QEMU_IOMMUFD_FIRMWARE` (colon-separated directories,
/// for a QEMU unpacked outside /usr, e.g. Debian bookworm-backports' 10.0
/// extracted with `dpkg -x`), and `-display none -audio none` (so that it
/// loads no module of the system's older QEMU). `Err` says why not.
fn iommufd_qemu() -> Result<(PathBuf, Vec<String>), String> {
    let qemu = std::env::var_os("QEMU_IOMMUFD")
        .map_or_else(|| PathBuf::from("qemu-system-x86_64"), PathBuf::from);
    let version = Command::new(&qemu)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e} (set QEMU_IOMMUFD to a QEMU 8.2+)", qemu.display()))?;
    let text = String::from_utf8_lossy(&version.stdout).into_owned();
    let v: Vec<u32> = text
        .split("version ")
        .nth(1)
        .unwrap_or("")
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .filter_map(|n| n.parse().ok())
        .collect();
    if v.len() < 2 || (v[0], v[1]) < (8, 2) {
        return Err(format!(
            "{} is {}, without iommufd (set QEMU_IOMMUFD to a QEMU 8.2+)",
            qemu.display(),
            text.lines().next().unwrap_or("?")
        ));
    }
    let mut args: Vec<String> = ["-display", "none", "-audio", "none"]
        .map(String::from)
        .to_vec();
    if let Some(dirs) = std::env::var_os("QEMU_IOMMUFD_FIRMWARE") {
        for d in std::env::split_paths(&dirs) {
            args.push("-L".into());
            args.push(d.to_string_lossy().into_owned());
        }
    }
    Ok((qemu, args))
}

/// QEMU's iommufd backend (`-object iommufd -device vfio-pci,iommufd=`):
/// QEMU opens softvfio's `/dev/iommu` and the device's cdev (after
/// comparing the cdev's `fstat` with sysfs `vfio-dev/vfio0/dev`), binds,
/// attaches to an IOAS and maps guest memory with `IOMMU_IOAS_MAP`; the
/// guest's own vfio-pci behind the vIOMMU (its address width set to the
/// platform VT-d's 39 bits, which QEMU checks against `IOMMU_GET_HW_INFO`)
/// then sees the device, its probe prints kernel-6.1.txt, and INTx and MSI
/// arrive, as with the container.
fn iommufd_passthrough(mode: &str) {
    let (g, (qemu, args)) = match guest().and_then(|g| Ok((g, iommufd_qemu()?))) {
        Ok(x) => x,
        Err(why) => {
            eprintln!("SKIPPED: QEMU iommufd passthrough test needs: {why}");
            return;
        }
    };
    let b = boot_qemu(
        g,
        mode,
        &qemu,
        &args,
        Some("intel-iommu,intremap=on,caching-mode=on,aw-bits=39"),
        &["iommufd,id=ifd0", "vfio-pci,host=0000:00:03.0,iommufd=ifd0"],
        None,
    );
    check_devices(&b, true);
    check_probe(&b);
    check_irqs(&b);
    // The end report shows QEMU's /dev/iommu with its IOAS and HWPT (QEMU
    // exits without closing them) and no container.
    assert!(
        b.stderr
            .contains("1 /dev/iommu file(s) with 1 IOAS(es), 1 HWPT(s)")
            && b.stderr
                .contains("left open by the program: 0 container(s)"),
        "{}",
        b.dump()
    );
    eprintln!("{mode} with iommufd: {:.1} s", b.secs);
}

#[test]
fn qemu_iommufd_passthrough_trace() {
    iommufd_passthrough("trace");
}

#[test]
fn qemu_iommufd_passthrough_preload() {
    iommufd_passthrough("preload");
}

/// Without a vIOMMU the guest sees the device on its PCI bus but in no
/// IOMMU group (and so runs neither program); QEMU maps all guest RAM.
#[test]
fn qemu_passthrough_without_viommu() {
    let g = match guest() {
        Ok(g) => g,
        Err(why) => {
            eprintln!("SKIPPED: QEMU passthrough test needs: {why}");
            return;
        }
    };
    let b = boot(g, "trace", false, HOST_EDU, None);
    check_devices(&b, false);
    assert!(b.section("probe").is_empty(), "{}", b.dump());
}
