//! Pinned pages that outlive their address space.
//!
//! Linux's type1 holds a reference on every page it pinned until the
//! mapping is unmapped: when the process that made a mapping exits while
//! the container stays open (a forked child holds it), its mm is torn
//! down but the pinned pages are not, and a device keeps reading and
//! writing them. Nobody can see a private page any more; a shared page
//! (`MAP_SHARED` memory, a memfd, hugetlbfs) is still seen by every other
//! process that maps it.
//!
//! User space cannot keep another process's pages alive, but it can keep
//! what they hold. At the exit stop of the process's last thread (its
//! memory is still there), the owner of a [`super::HostMemory`] takes the
//! pinned ranges over ([`OrphanPages::keep`]):
//! - a range in a shared VMA keeps the file behind it (opened through
//!   `/proc/<pid>/map_files`, root or CAP_CHECKPOINT_RESTORE): device
//!   accesses go to the very pages every other process sees;
//! - a range in a private VMA (or a shared one whose file cannot be opened)
//!   is copied, as it is at that moment, into a memfd: the device reads
//!   what the pages held and its writes stay where only the device sees
//!   them, as with Linux's orphaned pages.
//!
//! Invariants:
//! - pieces are sorted by `start`, do not overlap, and are each non-empty;
//! - a piece covers only pinned bytes of the address space that was
//!   taken over; an access that leaves the pieces is a fault, as an
//!   access to memory nobody pinned would be after the mm is gone;
//! - the memfd is written only here and by device accesses.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::super::MemError;

/// One taken-over range: `[start, end)` of the old address space is the
/// file's bytes from `offset`.
#[derive(Debug)]
struct Piece {
    start: u64,
    end: u64,
    file: Arc<File>,
    offset: u64,
}

/// What [`OrphanPages::keep`] kept, for the log and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OrphanStats {
    /// Bytes still shared with other processes (their file kept).
    pub shared_bytes: u64,
    /// Bytes copied (private memory, or shared memory whose file could
    /// not be opened).
    pub copied_bytes: u64,
    /// Pinned bytes that could not be read at all (no VMA any more, or
    /// the read failed); device accesses there fault.
    pub lost_bytes: u64,
}

/// The pinned pages of an address space that is gone (module docs).
#[derive(Debug, Default)]
pub struct OrphanPages {
    pieces: Vec<Piece>,
}

/// One line of `/proc/<pid>/maps`, as far as taking pages over cares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MapsLine {
    start: u64,
    end: u64,
    shared: bool,
    /// File offset of `start` (bytes).
    offset: u64,
}

fn parse_maps(text: &str) -> Vec<MapsLine> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_ascii_whitespace();
            let (start, end) = f.next()?.split_once('-')?;
            let perms = f.next()?;
            let offset = f.next()?;
            Some(MapsLine {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                shared: perms.as_bytes().get(3) == Some(&b's'),
                offset: u64::from_str_radix(offset, 16).ok()?,
            })
        })
        .collect()
}

/// Copies `[start, end)` of `mm` to `out` at `at`; false when a read
/// fails (the bytes copied so far stay, the rest is zero).
fn copy_range(mm: &File, start: u64, end: u64, out: &File, at: u64) -> bool {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK.min(end - start) as usize];
    let mut addr = start;
    while addr < end {
        let n = CHUNK.min(end - addr) as usize;
        let chunk = &mut buf[..n];
        if mm.read_exact_at(chunk, addr).is_err() {
            return false;
        }
        if out.write_all_at(chunk, at + (addr - start)).is_err() {
            return false;
        }
        addr += n as u64;
    }
    true
}

impl OrphanPages {
    /// Takes over the `pinned` ranges (sorted, disjoint) of process `pid`,
    /// whose address space `mm` (its `/proc/<pid>/mem`) is about to go.
    /// Must run while the process is stopped before its memory is torn
    /// down (the exit stop of its last thread).
    pub fn keep(pid: i32, mm: &File, pinned: &[(u64, u64)]) -> (Self, OrphanStats) {
        let mut stats = OrphanStats::default();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map(|t| parse_maps(&t))
            .unwrap_or_default();
        let mut pieces = Vec::new();
        // Private pieces go into one memfd, made on first need.
        let mut copies: Option<(Arc<File>, u64)> = None;
        for &(start, end) in pinned {
            let mut at = start;
            for vma in maps.iter().filter(|v| v.start < end && start < v.end) {
                let (s, e) = (vma.start.max(start), vma.end.min(end));
                if at < s {
                    stats.lost_bytes += s - at;
                }
                at = e;
                if vma.shared {
                    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", vma.start, vma.end);
                    let file = OpenOptions::new().read(true).write(true).open(&path);
                    if let Ok(file) = file {
                        pieces.push(Piece {
                            start: s,
                            end: e,
                            file: Arc::new(file),
                            offset: vma.offset + (s - vma.start),
                        });
                        stats.shared_bytes += e - s;
                        continue;
                    }
                }
                if copies.is_none() {
                    match memfd() {
                        Some(f) => copies = Some((Arc::new(f), 0)),
                        None => {
                            stats.lost_bytes += e - s;
                            continue;
                        }
                    }
                }
                let Some((file, used)) = copies.as_mut() else {
                    continue;
                };
                if copy_range(mm, s, e, file, *used) {
                    pieces.push(Piece {
                        start: s,
                        end: e,
                        file: file.clone(),
                        offset: *used,
                    });
                    *used += e - s;
                    stats.copied_bytes += e - s;
                } else {
                    stats.lost_bytes += e - s;
                }
            }
            if at < end {
                stats.lost_bytes += end - at;
            }
        }
        pieces.sort_by_key(|p| p.start);
        (OrphanPages { pieces }, stats)
    }

    /// Calls `f(file, file offset, buffer range)` for each piece of
    /// `[vaddr, vaddr + len)`; a fault when part of it is not kept.
    fn each(
        &self,
        vaddr: u64,
        len: usize,
        mut f: impl FnMut(&File, u64, std::ops::Range<usize>) -> std::io::Result<()>,
    ) -> Result<(), MemError> {
        let end = vaddr.checked_add(len as u64).ok_or(MemError::Fault)?;
        let mut at = vaddr;
        let first = self.pieces.partition_point(|p| p.end <= vaddr);
        for p in &self.pieces[first..] {
            if at >= end {
                break;
            }
            if p.start > at {
                return Err(MemError::Fault);
            }
            let stop = p.end.min(end);
            let buf = (at - vaddr) as usize..(stop - vaddr) as usize;
            f(&p.file, p.offset + (at - p.start), buf).map_err(|_| MemError::Fault)?;
            at = stop;
        }
        if at < end {
            return Err(MemError::Fault);
        }
        Ok(())
    }

    /// A device read of the kept pages.
    pub fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len();
        self.each(vaddr, len, |file, off, r| {
            file.read_exact_at(&mut buf[r], off)
        })
    }

    /// A device write to the kept pages.
    pub fn write(&self, vaddr: u64, data: &[u8]) -> Result<(), MemError> {
        self.each(vaddr, data.len(), |file, off, r| {
            file.write_all_at(&data[r], off)
        })
    }
}

fn memfd() -> Option<File> {
    rustix::fs::memfd_create("softvfio-orphaned-pages", rustix::fs::MemfdFlags::CLOEXEC)
        .map(File::from)
        .inspect_err(|e| tracing::warn!("memfd for orphaned pinned pages: {e}"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let text = "\
7f00aa000000-7f00aa002000 rw-s 00003000 00:01 1234                       /dev/zero (deleted)
7f00bb000000-7f00bb001000 rw-p 00000000 00:00 0 
bad line
";
        assert_eq!(
            parse_maps(text),
            vec![
                MapsLine {
                    start: 0x7f00_aa00_0000,
                    end: 0x7f00_aa00_2000,
                    shared: true,
                    offset: 0x3000
                },
                MapsLine {
                    start: 0x7f00_bb00_0000,
                    end: 0x7f00_bb00_1000,
                    shared: false,
                    offset: 0
                },
            ]
        );
    }

    /// A private page and a shared one of this very process taken over:
    /// the private one is a copy (later writes by the process are not
    /// seen, device writes do not reach the process), the shared one is
    /// the same memory.
    #[test]
    fn keeps_private_copies_and_shared_pages() {
        let private = vec![b'P'; 8192];
        let shared = memfd().expect("memfd");
        shared.set_len(8192).unwrap();
        shared.write_all_at(&[b'S'; 8192], 0).unwrap();
        let mm = File::open("/proc/self/mem").unwrap();
        let p = private.as_ptr() as u64;
        let (orphan, stats) = OrphanPages::keep(std::process::id() as i32, &mm, &[(p, p + 8192)]);
        assert_eq!(stats.copied_bytes, 8192);
        assert_eq!(stats.lost_bytes, 0);
        let mut got = [0u8; 16];
        orphan.read(p + 4090, &mut got).unwrap();
        assert_eq!(got, [b'P'; 16]);
        orphan.write(p, b"device").unwrap();
        let mut back = [0u8; 6];
        orphan.read(p, &mut back).unwrap();
        assert_eq!(&back, b"device");
        assert_eq!(private[0], b'P', "the copy is not the process's page");
        assert_eq!(orphan.read(p + 8192, &mut got), Err(MemError::Fault));
        assert_eq!(orphan.read(p - 1, &mut got), Err(MemError::Fault));
        // The file of a shared piece is the same memory (what map_files
        // gives): reads and writes meet the other sharers'.
        let kept = OrphanPages {
            pieces: vec![Piece {
                start: 0x10000,
                end: 0x12000,
                file: Arc::new(shared.try_clone().unwrap()),
                offset: 0,
            }],
        };
        kept.write(0x11000, b"dev").unwrap();
        let mut s = [0u8; 3];
        shared.read_exact_at(&mut s, 0x1000).unwrap();
        assert_eq!(&s, b"dev");
    }
}
