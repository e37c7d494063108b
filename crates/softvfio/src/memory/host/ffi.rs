//! The libc calls of the host memory backend, each in a small helper with
//! its `// SAFETY:` argument. Nothing else in the memory backends uses
//! `unsafe`.

use super::procfs::Vma;
use super::PAGE_SIZE;

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

pub fn madvise(addr: u64, len: u64, advice: i32) -> Result<(), i32> {
    // SAFETY: the callers pass only advice that faults pages in and
    // never changes their contents; the kernel validates the range.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, advice) };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

pub fn mlock(addr: u64, len: u64) -> Result<(), i32> {
    // SAFETY: mlock only changes residency, never contents; the kernel
    // validates the range.
    let r = unsafe { libc::mlock(addr as *const libc::c_void, len as usize) };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// `mlock2(addr, len, MLOCK_ONFAULT)`: the range is locked, and each page
/// is locked as it is faulted in (pages present now are locked now).
pub fn mlock_onfault(addr: u64, len: u64) -> Result<(), i32> {
    // SAFETY: as for mlock: residency only, the kernel validates the range.
    let r = unsafe {
        libc::mlock2(
            addr as *const libc::c_void,
            len as usize,
            libc::MLOCK_ONFAULT,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

pub fn munlock(addr: u64, len: u64) -> Result<(), i32> {
    // SAFETY: as for mlock.
    let r = unsafe { libc::munlock(addr as *const libc::c_void, len as usize) };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// Reads remote memory into `buf`; returns the bytes transferred (fewer
/// than asked when a page in the range is missing).
pub fn process_vm_read(pid: i32, addr: u64, buf: &mut [u8]) -> Result<usize, i32> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, writable for its length; the
    // remote side is checked by the kernel, which reports a missing page
    // as EFAULT instead of faulting.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    usize::try_from(n).map_err(|_| errno())
}

/// Writes `data` to the memory of process `pid`; returns the bytes
/// transferred.
///
/// # Safety
/// When `pid` is this process, `[addr, addr + data.len())` must be memory
/// that no Rust reference of this process covers while the call runs (the
/// kernel writes it behind the compiler's back), and not memory that Rust
/// code owns (the heap, a stack, a static): a program's DMA buffer, as a
/// VMM's guest memory is. For any other process there is no requirement.
pub unsafe fn process_vm_write(pid: i32, addr: u64, data: &[u8]) -> Result<usize, i32> {
    let local = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: `local` describes `data`, which the kernel only reads; the
    // remote side is checked by the kernel.
    let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    usize::try_from(n).map_err(|_| errno())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The effective capability set of thread `pid` (0: the calling thread).
pub fn capget_effective(pid: i32) -> Result<u64, String> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 takes a header and an array of two data structs,
    // both valid for writes for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(format!("capget: errno {}", errno()));
    }
    Ok(u64::from(data[0].effective) | u64::from(data[1].effective) << 32)
}

/// RLIMIT_MEMLOCK soft limit of `pid` (0: this process) in bytes, `None`
/// when unlimited.
pub fn memlock_limit(pid: i32) -> Result<Option<u64>, i32> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a null new limit only reads; `old` is valid for writes.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_MEMLOCK, std::ptr::null(), &mut old) };
    if r != 0 {
        return Err(errno());
    }
    Ok((old.rlim_cur != libc::RLIM_INFINITY).then_some(old.rlim_cur))
}

/// `struct procmap_query` of linux/fs.h (6.11).
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}
const _: () = assert!(std::mem::size_of::<ProcmapQuery>() == 104);

/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: u64 = 0xC068_6611;
const PROCMAP_QUERY_VMA_READABLE: u64 = 0x01;
const PROCMAP_QUERY_VMA_WRITABLE: u64 = 0x02;
const PROCMAP_QUERY_COVERING_OR_NEXT_VMA: u64 = 0x10;

/// The VMA covering `addr`, or the next one after it.
pub fn procmap_query(maps_fd: i32, addr: u64) -> Result<Vma, i32> {
    let mut q = ProcmapQuery {
        size: std::mem::size_of::<ProcmapQuery>() as u64,
        query_flags: PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
        query_addr: addr,
        ..Default::default()
    };
    // SAFETY: `q` is a valid procmap_query with no name or build-id
    // buffers (sizes 0), writable for the duration of the call.
    let r = unsafe { libc::ioctl(maps_fd, PROCMAP_QUERY as _, &mut q as *mut ProcmapQuery) };
    if r != 0 {
        return Err(errno());
    }
    Ok(Vma {
        start: q.vma_start,
        end: q.vma_end,
        read: q.vma_flags & PROCMAP_QUERY_VMA_READABLE != 0,
        write: q.vma_flags & PROCMAP_QUERY_VMA_WRITABLE != 0,
        page_size: q.vma_page_size.max(PAGE_SIZE),
    })
}

/// `struct pm_scan_arg` of linux/fs.h (6.7).
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}
const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = 0xC060_6610;
const PAGE_IS_HUGE: u64 = 1 << 6;

/// The sub-ranges of `[start, end)` mapped huge (PMD-mapped THP or
/// hugetlb), merged where they touch.
pub fn pagemap_scan_huge(pagemap_fd: i32, start: u64, end: u64) -> Result<Vec<(u64, u64)>, i32> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut regions = [PageRegion::default(); 32];
    let mut cur = start;
    while cur < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start: cur,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_anyof_mask: PAGE_IS_HUGE,
            return_mask: PAGE_IS_HUGE,
            ..Default::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points to
        // `regions`, writable for `vec_len` entries; no write-protect
        // flags, so the scan only reads page tables.
        let n = unsafe { libc::ioctl(pagemap_fd, PAGEMAP_SCAN as _, &mut arg as *mut PmScanArg) };
        let Ok(n) = usize::try_from(n) else {
            return Err(errno());
        };
        for r in &regions[..n.min(regions.len())] {
            match out.last_mut() {
                Some(last) if last.1 == r.start => last.1 = r.end,
                _ => out.push((r.start, r.end)),
            }
        }
        if arg.walk_end <= cur {
            break;
        }
        cur = arg.walk_end;
    }
    Ok(out)
}
