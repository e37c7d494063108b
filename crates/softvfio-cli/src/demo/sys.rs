//! The demo's guest memory: an mmap (anonymous with THP asked for, or a
//! hugetlb memfd) the demo owns and hands to the engine by address. The
//! only `unsafe` of the demo besides taking this process's memory.

use crate::report::human_bytes;

/// Anonymous or hugetlb memory owned by the demo.
pub(super) struct GuestMemory {
    pub(super) addr: u64,
    pub(super) len: u64,
    pub(super) backing: &'static str,
}

impl GuestMemory {
    pub(super) fn new(len: u64, huge: bool) -> Result<Self, String> {
        if huge {
            if let Some(m) = Self::hugetlb(len) {
                return Ok(m);
            }
        }
        let (addr, backing) = anon_mmap(len, huge)?;
        Ok(Self { addr, len, backing })
    }

    /// A hugetlb memfd, if the machine has enough free 2 MiB pages.
    fn hugetlb(len: u64) -> Option<Self> {
        let name = c"softvfio-demo";
        // SAFETY: memfd_create reads a NUL-terminated name; the flags are
        // constants. The returned fd is checked and closed below.
        let fd =
            unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_HUGETLB | libc::MFD_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd is the memfd just created.
        let ok = unsafe { libc::ftruncate(fd, len as libc::off_t) } == 0;
        let addr = if ok {
            // SAFETY: a fresh shared mapping of the memfd at a kernel-chosen
            // address; nothing else refers to that range.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd,
                    0,
                )
            }
        } else {
            libc::MAP_FAILED
        };
        // SAFETY: closing our own fd; the mapping keeps the file alive.
        unsafe { libc::close(fd) };
        if addr == libc::MAP_FAILED {
            return None;
        }
        Some(Self {
            addr: addr as u64,
            len,
            backing: "hugetlbfs 2 MiB pages (memfd MFD_HUGETLB)",
        })
    }

    pub(super) fn slice_mut(&mut self) -> &mut [u8] {
        // SAFETY: [addr, addr + len) is a private mapping this struct owns
        // for its whole life; &mut self guarantees no other reference.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len as usize) }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping the range this struct mapped; no references to it
        // outlive self.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len as usize) };
    }
}

/// 2 MiB-aligned anonymous memory, with transparent huge pages requested.
fn anon_mmap(len: u64, huge: bool) -> Result<(u64, &'static str), String> {
    const TWO_MIB: u64 = 2 << 20;
    let over = len + TWO_MIB;
    // SAFETY: a fresh private anonymous mapping at a kernel-chosen address.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            over as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(format!("mmap of {} failed", human_bytes(len)));
    }
    let start = raw as u64;
    let aligned = start.div_ceil(TWO_MIB) * TWO_MIB;
    // SAFETY: trimming the unaligned head and tail of the mapping just made.
    unsafe {
        if aligned > start {
            libc::munmap(raw, (aligned - start) as usize);
        }
        let tail = start + over - (aligned + len);
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail as usize);
        }
    }
    if huge {
        // SAFETY: advice on our own mapping; failure only means no THP.
        let r = unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                len as usize,
                libc::MADV_HUGEPAGE,
            )
        };
        if r == 0 {
            return Ok((aligned, "anonymous, transparent huge pages requested"));
        }
    }
    Ok((aligned, "anonymous 4 KiB pages"))
}
