//! Human-readable reports: a session snapshot, the DMA fault log, and what
//! a program left behind.

use std::io::{self, Write};

use softvfio_platform::BuiltPlatform;

use crate::inspect::{fault_views, FaultView, SessionSnapshot};
use crate::run::{FinalState, Leftovers};

pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if n >= size && n.is_multiple_of((size / 1024).max(1)) {
            let v = n as f64 / size as f64;
            return if v.fract() == 0.0 {
                format!("{v:.0} {name}")
            } else {
                format!("{v:.2} {name}")
            };
        }
    }
    format!("{n} B")
}

fn write_faults(w: &mut dyn Write, faults: &[FaultView], overflowed: u64) -> io::Result<()> {
    if faults.is_empty() {
        writeln!(w, "DMA faults: none")?;
    } else {
        writeln!(w, "DMA faults: {}", faults.len())?;
        for f in faults {
            let pasid = f.pasid.map(|p| format!(" pasid {p}")).unwrap_or_default();
            writeln!(
                w,
                "  #{:<4} {} {} iova {:#x}{}: {}",
                f.seq, f.device, f.access, f.iova, pasid, f.reason
            )?;
        }
    }
    if overflowed > 0 {
        writeln!(
            w,
            "  ({overflowed} more faults were not recorded: the log overflowed)"
        )?;
    }
    Ok(())
}

/// The report `softvfio run` prints when the program ends.
pub fn write_end_report(
    w: &mut dyn Write,
    built: &BuiltPlatform,
    left: &Leftovers,
    fin: &FinalState,
) -> io::Result<()> {
    writeln!(w, "--- softvfio: program ended ---")?;
    write_faults(w, &fault_views(built), built.iommu.fault_overflow())?;
    if left.containers + left.groups + left.devices == 0 {
        writeln!(w, "left open by the program: nothing")?;
    } else {
        writeln!(
            w,
            "left open by the program: {} container(s), {} group(s), {} device(s); {} mapping(s) of {}, {} pages accounted",
            left.containers,
            left.groups,
            left.devices,
            left.mappings,
            human_bytes(left.mapped_bytes),
            left.locked_pages
        )?;
    }
    if fin.pinned_pages + fin.pin_refs + fin.locked_pages + fin.open_objects == 0 {
        writeln!(
            w,
            "after release: 0 pinned pages, 0 accounted pages: no leak"
        )?;
    } else {
        writeln!(
            w,
            "LEAK after release: {} pinned pages ({} pins), {} accounted pages, {} objects still open",
            fin.pinned_pages, fin.pin_refs, fin.locked_pages, fin.open_objects
        )?;
    }
    Ok(())
}

/// A readable view of a session snapshot (`softvfio inspect`).
pub fn write_session(w: &mut dyn Write, s: &SessionSnapshot) -> io::Result<()> {
    writeln!(w, "softvfio session (supervisor pid {})", s.supervisor_pid)?;
    if s.containers.is_empty() {
        writeln!(w, "no open containers")?;
    }
    for c in &s.containers {
        let get = |k: &str| c.get(k).cloned().unwrap_or_default();
        writeln!(
            w,
            "container {}: iommu {}, groups {}, dma_avail {}, dirty tracking {}",
            get("id"),
            get("iommu").as_str().unwrap_or("unset"),
            get("groups"),
            get("dma_avail"),
            get("dirty_tracking")
        )?;
        if let Some(ranges) = c.get("iova_ranges").and_then(|r| r.as_array()) {
            for r in ranges {
                writeln!(
                    w,
                    "  valid IOVA {:#x}-{:#x}",
                    r.get("start").and_then(|v| v.as_u64()).unwrap_or(0),
                    r.get("end").and_then(|v| v.as_u64()).unwrap_or(0)
                )?;
            }
        }
        if let Some(domains) = c.get("domains").and_then(|r| r.as_array()) {
            for d in domains {
                writeln!(
                    w,
                    "  domain {} on {}: groups {}, leaf entries 4K {} / 2M {} / 1G {}",
                    d.get("id").cloned().unwrap_or_default(),
                    d.get("unit").and_then(|v| v.as_str()).unwrap_or("?"),
                    d.get("groups").cloned().unwrap_or_default(),
                    d.get("leaf_entries_4k").cloned().unwrap_or_default(),
                    d.get("leaf_entries_2m").cloned().unwrap_or_default(),
                    d.get("leaf_entries_1g").cloned().unwrap_or_default()
                )?;
            }
        }
        if let Some(maps) = c.get("mappings").and_then(|r| r.as_array()) {
            writeln!(w, "  {} mapping(s)", maps.len())?;
            for m in maps.iter().take(64) {
                let u = |k: &str| m.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                let b = |k: &str| m.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                writeln!(
                    w,
                    "    iova {:#x} size {} vaddr {:#x} {}{}{}{}",
                    u("iova"),
                    human_bytes(u("size")),
                    u("vaddr"),
                    if b("read") { "r" } else { "-" },
                    if b("write") { "w" } else { "-" },
                    if b("vaddr_invalid") {
                        " vaddr-invalid"
                    } else {
                        ""
                    },
                    if b("iommu_mapped") {
                        ""
                    } else {
                        " (not pinned)"
                    }
                )?;
            }
            if maps.len() > 64 {
                writeln!(w, "    ... {} more", maps.len() - 64)?;
            }
        }
        let pins = get("pins");
        writeln!(
            w,
            "  pinned pages {}, pin refs {}, accounted pages {}",
            pins.get("pinned_pages").cloned().unwrap_or_default(),
            pins.get("pin_refs").cloned().unwrap_or_default(),
            get("locked_pages")
        )?;
    }
    writeln!(
        w,
        "IOTLB: {} of {} entries valid, {} fills, {} invalidated",
        s.iotlb.get("valid").cloned().unwrap_or_default(),
        s.iotlb.get("capacity").cloned().unwrap_or_default(),
        s.iotlb.get("fills").cloned().unwrap_or_default(),
        s.iotlb.get("invalidated").cloned().unwrap_or_default()
    )?;
    for d in &s.devices {
        let stats = d.get("stats").cloned().unwrap_or_default();
        writeln!(
            w,
            "device {}: {}",
            d.get("name").and_then(|v| v.as_str()).unwrap_or("?"),
            stats
        )?;
    }
    write_faults(w, &s.faults, s.faults_overflowed)
}
