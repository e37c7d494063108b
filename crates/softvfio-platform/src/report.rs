//! What every front end (`softvfio run`'s supervisor, the LD_PRELOAD
//! library) reports when a program ends: the DMA fault log, what the program
//! left open, and whether softvfio itself leaked pins or accounting; and the
//! `VmLck` line of `/proc/<pid>/status` as the kernel would show it.

use std::io::{self, Write};

use softvfio::frontend::FileObject;

use crate::BuiltPlatform;

/// A DMA fault record.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct FaultView {
    /// Order in the fault log.
    pub seq: u64,
    /// Device name.
    pub device: String,
    /// Requester id.
    pub rid: u16,
    /// PASID of the access, if tagged.
    pub pasid: Option<u32>,
    /// Faulting IOVA (or virtual address with a PASID).
    pub iova: u64,
    /// Read or write.
    pub access: String,
    /// Why it faulted.
    pub reason: String,
}

/// The fault log of the platform's IOMMU, with device names.
pub fn fault_views(built: &BuiltPlatform) -> Vec<FaultView> {
    built
        .iommu
        .faults()
        .iter()
        .map(|f| FaultView {
            seq: f.seq,
            device: built
                .devices
                .iter()
                .find(|d| d.rid == Some(f.rid))
                .map(|d| d.name.clone())
                .unwrap_or_else(|| format!("rid {:#06x}", f.rid)),
            rid: f.rid,
            pasid: f.pasid,
            iova: f.iova,
            access: format!("{:?}", f.access).to_lowercase(),
            reason: format!("{:?}", f.reason),
        })
        .collect()
}

/// What the program still held when it exited.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Leftovers {
    /// Containers still open.
    pub containers: u64,
    /// Groups still open.
    pub groups: u64,
    /// Device fds still open (from a group or a cdev).
    pub devices: u64,
    /// `/dev/iommu` files still open.
    pub iommufds: u64,
    /// IOASes of those files.
    pub ioas: u64,
    /// HWPTs of those files.
    pub hwpts: u64,
    /// Mappings (type1 mappings and IOAS areas) still in place.
    pub mappings: u64,
    /// Bytes still mapped.
    pub mapped_bytes: u64,
    /// Pages still accounted.
    pub locked_pages: u64,
    /// With the sanitizer: each thing left behind with its call site.
    #[serde(skip)]
    pub leaks: Vec<crate::sanitize::LeakRecord>,
}

impl Leftovers {
    /// With the sanitizer `s`: records what the object `key` (left open by
    /// the program) holds, with the call sites that made it.
    pub fn note_sanitized(
        &mut self,
        s: &softvfio::sanitizer::Sanitizer,
        key: u64,
        obj: &FileObject,
    ) {
        self.leaks.extend(crate::sanitize::leaks_of(s, key, obj));
    }

    /// Counts `obj`, which the program had open when it ended.
    pub fn note(&mut self, obj: &FileObject) {
        match obj {
            FileObject::Container(c) => {
                self.containers += 1;
                let snap = c.container.snapshot();
                self.mappings += snap.mappings.len() as u64;
                self.mapped_bytes += snap.mappings.iter().map(|m| m.size).sum::<u64>();
                self.locked_pages += snap.mappings.iter().map(|m| m.locked_pages).sum::<u64>();
            }
            FileObject::Group(_) => self.groups += 1,
            FileObject::Device(_) | FileObject::Cdev(_) => self.devices += 1,
            FileObject::Iommufd(ctx) => {
                self.iommufds += 1;
                let snap = ctx.snapshot();
                self.ioas += snap.ioas.len() as u64;
                self.hwpts += snap.hwpts.len() as u64;
                for i in &snap.ioas {
                    self.mappings += i.areas.len() as u64;
                    self.mapped_bytes += i.areas.iter().map(|a| a.len()).sum::<u64>();
                    self.locked_pages += i.areas.iter().map(|a| a.charged).sum::<u64>();
                }
            }
            // Counted with its context (the queue holds nothing).
            FileObject::Fault(_) => {}
        }
    }
}

/// Pins and accounting after every release: anything but zero is a leak
/// of softvfio itself.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FinalState {
    /// Pages still pinned.
    pub pinned_pages: u64,
    /// Pin references still held.
    pub pin_refs: u64,
    /// Pages still accounted.
    pub locked_pages: u64,
    /// Objects (files) still open.
    pub open_objects: u64,
}

/// `n` bytes for people: "4 KiB", "1.5 GiB".
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

/// The fault log, readably.
pub fn write_faults(w: &mut dyn Write, faults: &[FaultView], overflowed: u64) -> io::Result<()> {
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

/// The report `softvfio run` (and the preload library) prints when the
/// program ends.
pub fn write_end_report(
    w: &mut dyn Write,
    built: &BuiltPlatform,
    left: &Leftovers,
    fin: &FinalState,
) -> io::Result<()> {
    writeln!(w, "--- softvfio: program ended ---")?;
    write_faults(w, &fault_views(built), built.iommu.fault_overflow())?;
    if left.containers + left.groups + left.devices + left.iommufds == 0 {
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
        if left.iommufds > 0 {
            writeln!(
                w,
                "left open by the program: {} /dev/iommu file(s) with {} IOAS(es), {} HWPT(s)",
                left.iommufds, left.ioas, left.hwpts
            )?;
        }
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

/// `/proc/<pid>/status` text with `VmLck` as the kernel would show it: the
/// type1 accounting (`accounted_kb`) instead of the mlocks softvfio uses to
/// keep the pinned pages resident (`ours_kb`).
pub fn status_with_vmlck(text: &str, ours_kb: u64, accounted_kb: u64) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmLck:") {
            let real_kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            let shown = real_kb.saturating_sub(ours_kb) + accounted_kb;
            out.push_str(&format!("VmLck:\t{shown:>8} kB\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmlck_is_rewritten() {
        let t = "Name:\tx\nVmLck:\t    1024 kB\nVmPin:\t0 kB\n";
        let out = status_with_vmlck(t, 1000, 8);
        assert!(out.contains("VmLck:\t      32 kB\n"), "{out}");
        assert!(out.starts_with("Name:\tx\n") && out.ends_with("VmPin:\t0 kB\n"));
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(4096), "4 KiB");
        assert_eq!(human_bytes(3), "3 B");
        assert_eq!(human_bytes(2 << 20), "2 MiB");
    }
}
