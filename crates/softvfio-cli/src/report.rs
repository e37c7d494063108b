//! Human-readable reports: a session snapshot, the DMA fault log, and what
//! a program left behind.

use std::io::{self, Write};

use softvfio_platform::report::write_faults;
pub use softvfio_platform::report::{human_bytes, write_end_report};

use crate::inspect::SessionSnapshot;

/// The `/dev/iommu` files of a snapshot: IOASes with ranges and areas,
/// HWPTs, bound devices.
fn write_iommufds(w: &mut dyn Write, ctxs: &[serde_json::Value]) -> io::Result<()> {
    for c in ctxs {
        writeln!(w, "iommufd {}:", c.get("id").cloned().unwrap_or_default())?;
        let list = |k: &str| {
            c.get(k)
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default()
        };
        for i in list("ioas") {
            let areas = i
                .get("areas")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            writeln!(
                w,
                "  IOAS {}: {} area(s), HWPTs {}",
                i.get("id").cloned().unwrap_or_default(),
                areas.len(),
                i.get("hwpts").cloned().unwrap_or_default()
            )?;
            for r in i
                .get("iova_ranges")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default()
            {
                let at = |n: usize| r.get(n).and_then(|v| v.as_u64()).unwrap_or(0);
                writeln!(w, "    valid IOVA {:#x}-{:#x}", at(0), at(1))?;
            }
            for a in areas.iter().take(64) {
                let u = |k: &str| a.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                let pinned = a.get("pinned").and_then(|v| v.as_bool()).unwrap_or(false);
                writeln!(
                    w,
                    "    area {:#x}-{:#x} uptr {:#x}{}",
                    u("iova"),
                    u("last"),
                    u("uptr"),
                    if pinned { " pinned" } else { "" }
                )?;
            }
        }
        for h in list("hwpts") {
            writeln!(
                w,
                "  HWPT {} on IOAS {}: domain {}{}, devices {}",
                h.get("id").cloned().unwrap_or_default(),
                h.get("ioas").cloned().unwrap_or_default(),
                h.get("domain").cloned().unwrap_or_default(),
                if h.get("auto").and_then(|v| v.as_bool()).unwrap_or(false) {
                    " (automatic)"
                } else {
                    ""
                },
                h.get("devices").cloned().unwrap_or_default()
            )?;
        }
        for d in list("devices") {
            writeln!(w, "  device {d}")?;
        }
    }
    Ok(())
}

/// A readable view of a session snapshot (`softvfio inspect`).
pub fn write_session(w: &mut dyn Write, s: &SessionSnapshot) -> io::Result<()> {
    writeln!(w, "softvfio session (supervisor pid {})", s.supervisor_pid)?;
    write_iommufds(w, &s.iommufds)?;
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
    write_faults(w, &s.faults, s.faults_overflowed)?;
    if let Some(r) = &s.sanitizer {
        softvfio_platform::sanitize::write_report(w, r)?;
    }
    Ok(())
}
