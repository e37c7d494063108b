//! Memory-mapped BARs under `softvfio run --mode trace`: the handler side
//! of `mmap` on a device file, of the calls that change such a mapping,
//! and of the faults on it (docs/MMIO.md).
//!
//! A device mapping is anonymous `PROT_NONE` memory in the program (made
//! by injecting `mmap`), recorded per process in a
//! [`BarMappings`] table with the program's own protection. `munmap`,
//! `mremap`, `mprotect` and `mmap(MAP_FIXED)` that touch a recorded range
//! are run by injection and applied to the table when they succeed; calls
//! that touch no recorded range pass to the kernel untouched. A forked
//! child gets a copy of its parent's table (it inherits the mappings), an
//! exec or exit drops the process's table.
//!
//! Invariants: the program's pages behind a recorded range are always
//! `PROT_NONE` (an `mprotect` over them is re-applied as `PROT_NONE`), so
//! every access faults; a device file stays open while a mapping of it
//! exists (its release waits, as the kernel's `vm_file` reference makes it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use softvfio::barmap::{resolve_fault, BarMappings, FaultOutcome};
use softvfio::frontend::Session;
use softvfio_trace::errno::Errno;
use softvfio_trace::handler::ObjectId;
use softvfio_trace::mmio::{FaultReply, Registers, TracedMemory};
use softvfio_trace::tracee::Tracee;

const PAGE: u64 = 4096;
/// `MAP_SHARED_VALIDATE` (not in every libc).
const MAP_TYPE: i32 = 0x0f;

/// The device mappings of every traced process. Shared with the address
/// spaces' [`softvfio::memory::host::HostMemory`] (MAP_DMA of a BAR
/// mapping asks whether a range is one, on the supervisor thread).
#[derive(Default)]
pub struct TracedMappings {
    by_pid: Arc<Mutex<HashMap<i32, BarMappings>>>,
}

fn page_up(len: u64) -> u64 {
    len.div_ceil(PAGE) * PAGE
}

/// Is `r` a raw system call error (`-4095..=-1`)?
fn is_error(r: i64) -> bool {
    (-4095..0).contains(&r)
}

impl TracedMappings {
    fn all(&self) -> MutexGuard<'_, HashMap<i32, BarMappings>> {
        self.by_pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For `pid`'s address space: the device mappings in a range.
    pub fn device_ranges(&self, pid: i32) -> softvfio::memory::host::DeviceRanges {
        let all = self.by_pid.clone();
        Arc::new(move |vaddr, len| {
            all.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&pid)
                .map(|m| m.device_ranges(vaddr, len))
                .unwrap_or_default()
        })
    }

    /// Is `addr` in a device mapping of `pid`?
    pub fn contains(&self, pid: i32, addr: u64) -> bool {
        self.all()
            .get(&pid)
            .is_some_and(|m| m.lookup(addr).is_some())
    }

    /// The first address of `[start, end)` in a device mapping of `pid`
    /// (a BAR the kernel may have merged into a neighbouring maps line).
    pub fn first_in(&self, pid: i32, start: u64, end: u64) -> Option<u64> {
        let all = self.all();
        let m = all.get(&pid)?;
        m.device_ranges(start, end.checked_sub(start)?)
            .first()
            .map(|r| r.start)
    }

    /// Does any process still map device file `file`?
    pub fn holds(&self, file: u64) -> bool {
        self.all().values().any(|m| m.holds(file))
    }

    /// `pid` forked `child`: the child has the same mappings.
    pub fn forked(&mut self, pid: i32, child: i32) {
        let mut all = self.all();
        if let Some(m) = all.get(&pid).filter(|m| !m.is_empty()) {
            let copy = m.clone();
            all.insert(child, copy);
        }
    }

    /// `pid` exec'd or exited: its address space is gone.
    pub fn forget(&mut self, pid: i32) {
        self.all().remove(&pid);
    }

    /// `mmap`/`munmap`/`mremap`/`mprotect` of the program (see the module
    /// documentation). `None`: the kernel runs it.
    pub fn memory_call(
        &mut self,
        session: &Session,
        t: &mut Tracee<'_>,
        nr: i64,
        a: [u64; 6],
    ) -> Option<Result<i64, Errno>> {
        let pid = t.pid();
        match nr {
            libc::SYS_mmap => {
                let (addr, len, prot, flags, fd, off) =
                    (a[0], a[1], a[2] as i32, a[3] as i32, a[4] as i32, a[5]);
                if flags & libc::MAP_ANONYMOUS == 0 {
                    if let Some(obj) = t.object_of_fd(fd) {
                        return Some(self.map_device(session, t, obj, addr, len, prot, flags, off));
                    }
                }
                let fixed = flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0;
                if !fixed || !self.overlaps(pid, addr, len) {
                    return None;
                }
                let r = inject(t, nr, a);
                if let Ok(r) = r {
                    if !is_error(r) {
                        self.with_table(pid, |t| t.unmap(r as u64, page_up(len)));
                    }
                }
                Some(r)
            }
            libc::SYS_munmap => {
                let (addr, len) = (a[0], a[1]);
                if !self.overlaps(pid, addr, len) {
                    return None;
                }
                let r = inject(t, nr, a);
                if r == Ok(0) {
                    self.with_table(pid, |t| t.unmap(addr, page_up(len)));
                }
                Some(r)
            }
            libc::SYS_mremap => {
                let (old, old_len, new_len, flags, new) = (a[0], a[1], a[2], a[3] as i32, a[4]);
                let ours = self.overlaps(pid, old, old_len.max(1));
                let fixed = flags & libc::MREMAP_FIXED != 0;
                let new_ours = fixed && self.overlaps(pid, new, new_len);
                if !ours && !new_ours {
                    return None;
                }
                // vfio-pci mappings are VM_DONTEXPAND | VM_PFNMAP: they
                // cannot grow (mremap's vma_to_resize).
                if ours && page_up(new_len) > page_up(old_len) {
                    return Some(Err(Errno::EFAULT));
                }
                let r = inject(t, nr, a);
                if let Ok(r) = r {
                    if !is_error(r) {
                        self.with_table(pid, |table| {
                            if ours {
                                table.remap(old, page_up(old_len), r as u64, page_up(new_len));
                            } else {
                                table.unmap(r as u64, page_up(new_len));
                            }
                        });
                    }
                }
                Some(r)
            }
            libc::SYS_mprotect => {
                let (addr, len, prot) = (a[0], a[1], a[2] as i32);
                if !self.overlaps(pid, addr, len) {
                    return None;
                }
                let r = inject(t, nr, a);
                if r == Ok(0) {
                    let len = page_up(len);
                    let pieces: Vec<(u64, u64)> = self.with_table(pid, |t| {
                        t.iter()
                            .filter(|m| m.start < addr + len && m.start + m.len > addr)
                            .map(|m| (m.start.max(addr), (m.start + m.len).min(addr + len)))
                            .collect()
                    });
                    for (s, e) in pieces {
                        let _ = inject(
                            t,
                            libc::SYS_mprotect,
                            [s, e - s, libc::PROT_NONE as u64, 0, 0, 0],
                        );
                    }
                    self.with_table(pid, |t| t.protect(addr, len, prot));
                }
                Some(r)
            }
            _ => None,
        }
    }

    fn overlaps(&self, pid: i32, addr: u64, len: u64) -> bool {
        self.all()
            .get(&pid)
            .is_some_and(|m| m.overlaps(addr, page_up(len)))
    }

    /// Runs `f` on `pid`'s table (made when missing).
    fn with_table<R>(&self, pid: i32, f: impl FnOnce(&mut BarMappings) -> R) -> R {
        f(self.all().entry(pid).or_default())
    }

    /// `mmap` of a device file: the kernel's generic checks, the driver's
    /// (`Session::mmap`), then an inaccessible anonymous mapping where the
    /// program asked for one (`MAP_FIXED` honoured), recorded.
    #[allow(clippy::too_many_arguments)]
    fn map_device(
        &mut self,
        session: &Session,
        t: &mut Tracee<'_>,
        obj: ObjectId,
        addr: u64,
        len: u64,
        prot: i32,
        flags: i32,
        off: u64,
    ) -> Result<i64, Errno> {
        if len == 0 || !off.is_multiple_of(PAGE) {
            return Err(Errno::EINVAL);
        }
        let shared = matches!(flags & MAP_TYPE, libc::MAP_SHARED | 3);
        let target = session
            .mmap(obj.0, off, len, shared)
            .map_err(|e| Errno(e.errno()))?;
        let anon = (flags & !MAP_TYPE & !libc::MAP_POPULATE & !libc::MAP_LOCKED)
            | libc::MAP_PRIVATE
            | libc::MAP_ANONYMOUS
            | libc::MAP_NORESERVE;
        let r = inject(
            t,
            libc::SYS_mmap,
            [addr, len, libc::PROT_NONE as u64, anon as u64, u64::MAX, 0],
        )?;
        if !is_error(r) {
            self.with_table(t.pid(), |m| m.insert(r as u64, page_up(len), target, prot));
        }
        Ok(r)
    }

    /// A SIGSEGV on a device mapping of `pid`.
    pub fn fault(
        &self,
        pid: i32,
        address: u64,
        code: &[u8],
        regs: &mut Registers,
        memory: &mut TracedMemory,
    ) -> FaultReply {
        let all = self.all();
        let Some(maps) = all.get(&pid) else {
            return FaultReply::NotOurs;
        };
        match resolve_fault(maps, code, address, regs, memory) {
            FaultOutcome::NotOurs => FaultReply::NotOurs,
            FaultOutcome::Done { vector_written } => FaultReply::Done { vector_written },
            FaultOutcome::Signal {
                signo,
                code,
                address,
            } => FaultReply::Signal {
                signo,
                code,
                address,
            },
            FaultOutcome::Fatal(e) => FaultReply::Fatal(e.to_string()),
        }
    }
}

fn inject(t: &mut Tracee<'_>, nr: i64, a: [u64; 6]) -> Result<i64, Errno> {
    t.inject_syscall(nr, a).map_err(Errno::from)
}
