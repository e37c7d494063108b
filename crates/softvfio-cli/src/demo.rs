//! `softvfio demo`: the main job on the built-in platform, in this process.
//!
//! It drives the byte-level uAPI exactly as a VFIO program would (argument
//! structs in its own memory, ioctl numbers of `linux/vfio.h`): open the
//! container and group 3, set type1v2, map guest-like memory (huge pages
//! where the machine has them), DMA through the edu device, provoke an IOMMU
//! fault, track dirty pages, and unmap, showing what each step did.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use softvfio::container::{MAP_FLAG_READ, MAP_FLAG_WRITE};
use softvfio::memory::host::HostMemory;
use softvfio::memory::UserMemory;
use softvfio::uapi::{self, ContainerFile, DeviceFile, FdLookup, IoctlOutcome, Vfio};
use softvfio_platform::BuiltPlatform;

use crate::report::human_bytes;
use sys::GuestMemory;

mod sanitizer;
// mmap, munmap, memfd_create, madvise: each block with its SAFETY argument.
#[allow(unsafe_code)]
mod sys;

#[derive(Args)]
pub struct DemoArgs {
    /// Guest memory to map, in MiB.
    #[arg(long, default_value_t = 512)]
    size_mib: u64,
    /// Use plain 4 KiB pages even where huge pages are available.
    #[arg(long)]
    no_huge: bool,
    /// Instead: the DMA sanitizer on a small buggy driver (use after unmap,
    /// DMA into freed memory, a leaked mapping) under `softvfio run
    /// --sanitize` in this mode (`trace` or `preload`; needs gcc).
    #[arg(long, value_name = "MODE", num_args = 0..=1, require_equals = true,
          default_missing_value = "trace", value_parser = ["trace", "preload"])]
    sanitizer: Option<String>,
}

/// The address of a value, as the uAPI's user pointer (this process is the
/// "user").
fn uptr<T>(v: &T) -> u64 {
    v as *const T as u64
}

/// The address of a value the engine writes back (an ioctl's output), as
/// the uAPI's user pointer: derived from a unique borrow, so the write is
/// allowed (`HostMemory::current`'s contract).
fn uptr_mut<T>(v: &mut T) -> u64 {
    v as *mut T as u64
}

struct Demo {
    vfio: Vfio,
    mem: Arc<HostMemory>,
    container: ContainerFile,
    device: Option<DeviceFile>,
    out: std::io::Stdout,
}

impl Demo {
    fn say(&mut self, text: impl AsRef<str>) {
        let _ = writeln!(self.out, "{}", text.as_ref());
    }

    fn ioctl(&self, request: u64, arg: u64) -> Result<i64, String> {
        self.vfio
            .container_ioctl(&self.container, request, arg, self.mem.as_ref())
            .map_err(|e| format!("{e} (errno {})", e.errno()))
    }

    fn map(&self, iova: u64, vaddr: u64, size: u64, flags: u32) -> Result<(), String> {
        let m = vfio_bindings::bindings::vfio::vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<vfio_bindings::bindings::vfio::vfio_iommu_type1_dma_map>()
                as u32,
            flags,
            vaddr,
            iova,
            size,
        };
        self.ioctl(uapi::VFIO_IOMMU_MAP_DMA, uptr(&m)).map(|_| ())
    }

    fn unmap_all(&self) -> Result<u64, String> {
        let mut u = [0u64; 3];
        // argsz (u32) | flags (u32) = UNMAP_ALL, iova 0, size 0
        u[0] = 24 | (u64::from(softvfio::container::UNMAP_FLAG_ALL) << 32);
        self.ioctl(uapi::VFIO_IOMMU_UNMAP_DMA, uptr_mut(&mut u))?;
        Ok(u[2])
    }

    fn dev_write(&self, off: u64, value: &[u8]) -> Result<(), String> {
        let dev = self.device.as_ref().ok_or("no device")?;
        self.vfio
            .device_pwrite(
                dev,
                self.mem.as_ref(),
                value.as_ptr() as u64,
                value.len() as u64,
                off,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn dev_read32(&self, off: u64) -> Result<u32, String> {
        let dev = self.device.as_ref().ok_or("no device")?;
        let mut v = [0u8; 4];
        self.vfio
            .device_pread(dev, self.mem.as_ref(), v.as_mut_ptr() as u64, 4, off)
            .map_err(|e| e.to_string())?;
        Ok(u32::from_ne_bytes(v))
    }

    /// One edu DMA: `to_ram` false copies RAM→device buffer.
    fn edu_dma(&self, src: u64, dst: u64, count: u64, to_ram: bool) -> Result<(), String> {
        self.dev_write(0x80, &src.to_ne_bytes())?;
        self.dev_write(0x88, &dst.to_ne_bytes())?;
        self.dev_write(0x90, &count.to_ne_bytes())?;
        let cmd: u64 = 1 | if to_ram { 2 } else { 0 };
        self.dev_write(0x98, &cmd.to_ne_bytes())?;
        for _ in 0..1000 {
            if self.dev_read32(0x98)? & 1 == 0 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_micros(10));
        }
        Err("edu DMA did not complete".into())
    }
}

pub fn main(args: DemoArgs) -> u8 {
    let result = match &args.sanitizer {
        Some(mode) => sanitizer::main(mode),
        None => run(args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("softvfio demo: {e}");
            1
        }
    }
}

fn run(args: DemoArgs) -> Result<(), String> {
    let built = BuiltPlatform::reference().map_err(|e| e.to_string())?;
    let vfio = Vfio::new(built.platform.clone());
    // SAFETY: the engine writes only the guest memory this command maps for
    // DMA (its own mmap, used through `GuestMemory` only between engine
    // calls) and the ioctl outputs passed with `uptr_mut` (unique borrows);
    // the arguments passed with `uptr` are only read.
    #[allow(unsafe_code)]
    let mem = Arc::new(unsafe { HostMemory::current() });
    let container = vfio.open_container(mem.clone());
    let mut d = Demo {
        vfio,
        mem: mem.clone(),
        container,
        device: None,
        out: std::io::stdout(),
    };
    d.say("softvfio demo: the VFIO type1 IOMMU backend over a software VT-d, in user space");
    d.say("platform: edu 1234:11e8 at 0000:00:03.0, IOMMU group 3, VT-d 39-bit, pages 4K|2M|1G");

    // Container and group, as a VFIO program does it.
    let group = d.vfio.open_group(3).map_err(|e| e.to_string())?;
    let fd: i32 = 3;
    let cf = d.container.clone();
    let mut lookup = |_fd: i32| FdLookup::Container(cf.clone());
    d.vfio
        .group_ioctl(
            &group,
            uapi::VFIO_GROUP_SET_CONTAINER,
            uptr(&fd),
            mem.as_ref(),
            &mut lookup,
        )
        .map_err(|e| e.to_string())?;
    d.ioctl(uapi::VFIO_SET_IOMMU, softvfio::container::TYPE1V2_IOMMU)?;
    let info = d.container.container.info().map_err(|e| e.to_string())?;
    d.say(format!(
        "VFIO_SET_IOMMU type1v2: iova_pgsizes {:#x}, dma_avail {}",
        info.pgsize_bitmap, info.dma_avail
    ));
    for r in &info.iova_ranges {
        d.say(format!(
            "  valid IOVA range {:#012x}-{:#012x}",
            r.start, r.end
        ));
    }
    let name = c"0000:00:03.0";
    match d.vfio.group_ioctl(
        &group,
        uapi::VFIO_GROUP_GET_DEVICE_FD,
        name.as_ptr() as u64,
        mem.as_ref(),
        &mut lookup,
    ) {
        Ok(IoctlOutcome::Device(dev)) => d.device = Some(dev),
        Ok(IoctlOutcome::Value(_)) => return Err("GET_DEVICE_FD returned no device".into()),
        Err(e) => return Err(e.to_string()),
    }
    // Memory space and bus mastering on (config space command register).
    let cfg_cmd =
        (u64::from(vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX) << 40) + 4;
    d.dev_write(cfg_cmd, &0x0006u16.to_ne_bytes())?;
    d.say(format!(
        "edu identification register: {:#x}",
        d.dev_read32(0)?
    ));

    // Guest memory.
    let size = args.size_mib.max(4) << 20;
    let mut guest = GuestMemory::new(size, !args.no_huge)?;
    d.say(format!(
        "guest memory: {} at {:#x}, {}",
        human_bytes(size),
        guest.addr,
        guest.backing
    ));

    // Guest RAM goes above 4 GiB; edu's 28-bit DMA mask cannot reach there,
    // so a small DMA window of the same pages is also mapped low (a page
    // mapped twice is pinned and accounted twice, as in type1).
    const RAM_IOVA: u64 = 0x1_0000_0000;
    const DMA_WINDOW_IOVA: u64 = 0x10_0000;
    const DMA_WINDOW: u64 = 4 << 20;
    // Map it in 64 MiB pieces (as a VMM maps RAM regions), with progress.
    let chunk = (64u64 << 20).min(size);
    let start = Instant::now();
    let bar = ProgressBar::hidden();
    bar.set_length(size);
    bar.set_style(
        ProgressStyle::with_template("  mapping [{bar:40}] {bytes}/{total_bytes} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut done = 0;
    while done < size {
        let n = chunk.min(size - done);
        d.map(
            RAM_IOVA + done,
            guest.addr + done,
            n,
            MAP_FLAG_READ | MAP_FLAG_WRITE,
        )?;
        done += n;
        bar.set_position(done);
        // Only something that runs for over a second gets a progress bar.
        if bar.is_hidden() && start.elapsed() > Duration::from_millis(300) && done < size {
            let projected = start.elapsed().as_secs_f64() * size as f64 / done as f64;
            if projected > 1.0 {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
        }
    }
    bar.finish_and_clear();
    let map_time = start.elapsed();
    let snap = d.container.container.snapshot();
    let stats = mem.stats();
    d.say(format!(
        "VFIO_IOMMU_MAP_DMA: {} in {} mappings in {:.1} ms ({:.2} GiB/s): pinned {} pages in {} pin operations",
        human_bytes(size),
        snap.mappings.len(),
        map_time.as_secs_f64() * 1e3,
        size as f64 / (1u64 << 30) as f64 / map_time.as_secs_f64(),
        stats.pinned_pages,
        stats.pin_ops
    ));
    if let Some(dom) = snap.domains.first() {
        d.say(format!(
            "  I/O page table of domain {}: {} 4K + {} 2M + {} 1G leaf entries",
            dom.id, dom.leaf_entries_4k, dom.leaf_entries_2m, dom.leaf_entries_1g
        ));
    }
    d.say(format!(
        "  locked-memory accounting: {} pages ({}), {} accounting updates",
        mem.account().locked_pages(),
        human_bytes(mem.account().locked_pages() * 4096),
        mem.account().updates()
    ));

    d.map(
        DMA_WINDOW_IOVA,
        guest.addr,
        DMA_WINDOW.min(size),
        MAP_FLAG_READ | MAP_FLAG_WRITE,
    )?;
    d.say(format!(
        "  plus a {} DMA window of the same memory at IOVA {:#x} for edu's 28-bit DMA mask",
        human_bytes(DMA_WINDOW.min(size)),
        DMA_WINDOW_IOVA
    ));

    // DMA round trip through the IOMMU: RAM -> edu buffer -> RAM.
    let g = guest.slice_mut();
    for (i, b) in g[..4096].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    g[8192..8192 + 4096].fill(0);
    let t = Instant::now();
    let rounds = 200u32;
    for _ in 0..rounds {
        d.edu_dma(DMA_WINDOW_IOVA, 0x40000, 4096, false)?;
        d.edu_dma(0x40000, DMA_WINDOW_IOVA + 8192, 4096, true)?;
    }
    let dma_time = t.elapsed();
    let g = guest.slice_mut();
    let same = g[..4096] == g[8192..8192 + 4096];
    d.say(format!(
        "edu DMA RAM->device->RAM through the IOMMU: {} round trips of 4 KiB, {:.1} us each, data {}",
        rounds,
        dma_time.as_secs_f64() * 1e6 / f64::from(rounds),
        if same { "matches" } else { "DIFFERS" }
    ));

    // A device write into a read-only mapping is an IOMMU fault, not a crash.
    let ro_iova = 0x80_0000u64;
    d.map(ro_iova, guest.addr + size - 4096, 4096, MAP_FLAG_READ)?;
    d.edu_dma(0x40000, ro_iova, 64, true)?;
    // DMA to an IOVA nobody mapped.
    d.edu_dma(0x40000, 0x0fff_0000, 64, true)?;
    d.say("device wrote to a read-only mapping and to an unmapped IOVA:");
    let faults = built.iommu.faults();
    d.say(format!("IOMMU fault log: {} record(s)", faults.len()));
    for f in &faults {
        d.say(format!(
            "  rid {:#06x} {:?} iova {:#x}: {:?}",
            f.rid, f.access, f.iova, f.reason
        ));
    }

    // Dirty tracking as the kernel reports it: every pinned page is dirty.
    let dirty = vfio_bindings::bindings::vfio::VFIO_IOMMU_DIRTY_PAGES_FLAG_START;
    let req: [u32; 2] = [8, dirty];
    d.ioctl(uapi::VFIO_IOMMU_DIRTY_PAGES, uptr(&req))?;
    d.say("dirty page tracking started (VFIO_IOMMU_DIRTY_PAGES_FLAG_START)");

    let t = Instant::now();
    let unmapped = d.unmap_all()?;
    let unmap_time = t.elapsed();
    let stats = mem.stats();
    d.say(format!(
        "VFIO_IOMMU_UNMAP_DMA (ALL): {} in {:.1} ms; now {} pinned pages, {} accounted pages",
        human_bytes(unmapped),
        unmap_time.as_secs_f64() * 1e3,
        stats.pinned_pages,
        mem.account().locked_pages()
    ));
    if let Some(dev) = d.device.take() {
        d.vfio.release_device(dev);
    }
    d.vfio.release_group(group);
    let cf = d.container.clone();
    d.vfio.release_container(cf);
    drop(guest);
    if !same {
        return Err("DMA data mismatch".into());
    }
    Ok(())
}
