//! The host memory backend against the real kernel: EFAULT cases, lock state
//! read back from /proc, rollback, process_vm access, lock policy in a child
//! without CAP_IPC_LOCK, hugetlbfs and THP.
//!
//! Tests run in parallel threads of one process, so every test works on its
//! own memory at fixed addresses far below where the kernel places mappings
//! (holes it punches are not refilled by other threads), bounded by PROT_NONE
//! guards (its VMAs never merge with anyone else's), and reads the lock state
//! of those VMAs only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use softvfio::memory::host::{HostMemory, LocalSyscalls, MmSyscalls};
use softvfio::memory::{MemError, PinnedRun, UserMemory, PAGE_SIZE};

const K4: u64 = PAGE_SIZE;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const GUARD: u64 = M2;

mod sys {
    //! The libc calls the tests need, each in a small helper.

    pub fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// Maps anonymous PROT_NONE memory exactly at `addr`, or fails.
    pub fn reserve_at(addr: u64, len: u64) -> Result<(), i32> {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so
        // no memory anyone uses is touched.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_NORESERVE
                    | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(errno());
        }
        if p as u64 != addr {
            // Old kernels treat the flag as a hint.
            unmap(p as u64, len);
            return Err(libc::EEXIST);
        }
        Ok(())
    }

    /// Maps `fd` shared at `addr`, replacing what is there (memory the
    /// caller owns).
    pub fn map_fd_fixed(addr: u64, len: u64, fd: i32) -> Result<(), i32> {
        // SAFETY: the caller owns `[addr, addr + len)` (its own reservation),
        // so replacing it affects no other code.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            Err(errno())
        } else {
            Ok(())
        }
    }

    /// Maps anonymous read-write memory at `addr`, replacing what is
    /// there (memory the caller owns).
    pub fn map_anon_fixed(addr: u64, len: u64) -> Result<(), i32> {
        // SAFETY: the caller owns `[addr, addr + len)`, so replacing it
        // affects no other code.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            Err(errno())
        } else {
            Ok(())
        }
    }

    pub fn unmap(addr: u64, len: u64) {
        // SAFETY: only called on memory the test owns and no reference to.
        unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) };
    }

    pub fn protect(addr: u64, len: u64, prot: i32) {
        // SAFETY: only called on memory the test owns.
        let r = unsafe { libc::mprotect(addr as *mut libc::c_void, len as usize, prot) };
        assert_eq!(r, 0, "mprotect: errno {}", errno());
    }

    pub fn madvise(addr: u64, len: u64, advice: i32) -> Result<(), i32> {
        // SAFETY: only called with advice that does not discard memory, on
        // memory the test owns.
        let r = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, advice) };
        if r == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }

    /// Writes `byte` to `[addr, addr + len)`.
    pub fn fill(addr: u64, len: u64, byte: u8) {
        // SAFETY: callers pass memory the test mapped read-write and owns.
        unsafe { std::ptr::write_bytes(addr as *mut u8, byte, len as usize) };
    }

    /// Reads one byte.
    pub fn peek(addr: u64) -> u8 {
        // SAFETY: callers pass mapped, readable memory the test owns.
        unsafe { std::ptr::read_volatile(addr as *const u8) }
    }

    pub fn geteuid() -> u32 {
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() }
    }

    pub fn memfd_hugetlb(flags: u32) -> Result<i32, i32> {
        // SAFETY: the name is a valid C string.
        let fd =
            unsafe { libc::memfd_create(c"softvfio-test".as_ptr(), libc::MFD_HUGETLB | flags) };
        if fd < 0 {
            Err(errno())
        } else {
            Ok(fd)
        }
    }

    /// An empty memfd (shmem).
    pub fn memfd() -> Result<i32, i32> {
        // SAFETY: the name is a valid C string.
        let fd = unsafe { libc::memfd_create(c"softvfio-test".as_ptr(), 0) };
        if fd < 0 {
            Err(errno())
        } else {
            Ok(fd)
        }
    }

    pub fn ftruncate(fd: i32, len: u64) -> Result<(), i32> {
        // SAFETY: plain system call on an fd we own.
        let r = unsafe { libc::ftruncate(fd, len as libc::off_t) };
        if r == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }

    pub fn close(fd: i32) {
        // SAFETY: closes an fd the test owns.
        unsafe { libc::close(fd) };
    }

    pub fn pipe() -> (i32, i32) {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for the two descriptors.
        let r = unsafe { libc::pipe(fds.as_mut_ptr()) };
        assert_eq!(r, 0);
        (fds[0], fds[1])
    }

    pub fn write_all(fd: i32, mut buf: &[u8]) -> bool {
        while !buf.is_empty() {
            // SAFETY: `buf` is valid for reads of its length.
            let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
            if n <= 0 {
                return false;
            }
            buf = &buf[n as usize..];
        }
        true
    }

    pub fn read_full(fd: i32, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: the tail of `buf` is valid for writes of its length.
            let n = unsafe { libc::read(fd, buf[done..].as_mut_ptr().cast(), buf.len() - done) };
            if n <= 0 {
                break;
            }
            done += n as usize;
        }
        done
    }

    pub fn fork() -> i32 {
        // SAFETY: the child only runs code that is safe after fork (glibc
        // resets its allocator locks; no other locks are taken) and leaves
        // with _exit.
        unsafe { libc::fork() }
    }

    pub fn exit_now(code: i32) -> ! {
        // SAFETY: ends the forked child without running the parent's
        // destructors or test harness.
        unsafe { libc::_exit(code) }
    }

    pub fn wait_exit(pid: i32) -> i32 {
        let mut status = 0;
        // SAFETY: `status` is valid for writes.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        }
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

    /// Clears `cap` from the calling thread's effective set.
    pub fn drop_effective_cap(cap: u32) -> Result<(), i32> {
        let mut hdr = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        // SAFETY: version 3 header and two data structs, valid for writes.
        let r = unsafe {
            libc::syscall(
                libc::SYS_capget,
                &mut hdr as *mut CapHeader,
                data.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(errno());
        }
        data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
        // SAFETY: as above, read by the kernel.
        let r =
            unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
        if r != 0 {
            return Err(errno());
        }
        Ok(())
    }

    /// mlock as the program itself would.
    pub fn mlock(addr: u64, len: u64) -> Result<(), i32> {
        // SAFETY: mlock changes residency only; the kernel checks the range.
        let r = unsafe { libc::mlock(addr as *const libc::c_void, len as usize) };
        if r == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }

    /// A child process with pid `pid` (clone3 with set_tid; needs
    /// CAP_SYS_ADMIN): 0 in the child, as fork.
    pub fn fork_with_pid(pid: i32) -> Result<i32, i32> {
        #[repr(C)]
        #[derive(Default)]
        struct CloneArgs {
            flags: u64,
            pidfd: u64,
            child_tid: u64,
            parent_tid: u64,
            exit_signal: u64,
            stack: u64,
            stack_size: u64,
            tls: u64,
            set_tid: u64,
            set_tid_size: u64,
            cgroup: u64,
        }
        let tid = pid;
        let args = CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            set_tid: &tid as *const i32 as u64,
            set_tid_size: 1,
            ..CloneArgs::default()
        };
        // SAFETY: as fork (see `fork`); `args` and `tid` outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if r < 0 {
            Err(errno())
        } else {
            Ok(r as i32)
        }
    }

    pub fn set_memlock_limit(bytes: u64) -> Result<(), i32> {
        let lim = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: `lim` is a valid rlimit.
        let r = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
        if r == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }
}

/// Test memory at a fixed address, with PROT_NONE guards around it.
struct Area {
    base: u64,
    total: u64,
    start: u64,
    len: u64,
}

/// Addresses handed out to areas: 64 TiB, far below the binary, the heap and
/// the mmap base, so the kernel never places other mappings there.
static NEXT_AREA: AtomicU64 = AtomicU64::new(0x4000_0000_0000);

impl Area {
    /// `len` bytes at a 2 MiB aligned address, with protection `prot`.
    fn new(len: u64, prot: i32) -> Area {
        Area::with_guard(len, GUARD, prot)
    }

    /// `len` bytes between two guards of `guard` bytes, aligned to `guard`
    /// (a power of two up to 1 GiB).
    fn with_guard(len: u64, guard: u64, prot: i32) -> Area {
        let total = len + 2 * guard;
        let slot = total.div_ceil(G1) * G1;
        for _ in 0..64 {
            let base = NEXT_AREA.fetch_add(slot, Ordering::Relaxed);
            if sys::reserve_at(base, total).is_err() {
                continue;
            }
            let a = Area {
                base,
                total,
                start: base + guard,
                len,
            };
            if prot != libc::PROT_NONE {
                sys::protect(a.start, len, prot);
            }
            return a;
        }
        panic!("no room for a test area");
    }

    fn rw(len: u64) -> Area {
        let a = Area::new(len, libc::PROT_READ | libc::PROT_WRITE);
        sys::fill(a.start, len, 0x5a);
        a
    }

    fn at(&self, off: u64) -> u64 {
        self.start + off
    }

    fn end(&self) -> u64 {
        self.start + self.len
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        sys::unmap(self.base, self.total);
    }
}

/// The VMAs of this process overlapping `[start, end)`, from smaps: range
/// and the fields of interest.
fn smaps(start: u64, end: u64) -> Vec<(u64, u64, HashMap<String, String>)> {
    let text = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let mut out: Vec<(u64, u64, HashMap<String, String>)> = Vec::new();
    for line in text.lines() {
        let first = line.split_ascii_whitespace().next().unwrap_or("");
        if let Some((key, val)) = line.split_once(':').filter(|_| first.ends_with(':')) {
            if let Some(last) = out.last_mut() {
                last.2.insert(key.to_string(), val.trim().to_string());
            }
            continue;
        }
        if let Some((a, b)) = first.split_once('-') {
            let (a, b) = (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            );
            out.push((a, b, HashMap::new()));
        }
    }
    out.retain(|v| v.1 > start && v.0 < end);
    out
}

fn kb_field(m: &HashMap<String, String>, key: &str) -> u64 {
    m.get(key)
        .and_then(|v| v.split_ascii_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sum of smaps `Locked:` over the area's VMAs, in pages.
fn locked_pages(a: &Area) -> u64 {
    smaps(a.base, a.base + a.total)
        .iter()
        .map(|v| kb_field(&v.2, "Locked"))
        .sum::<u64>()
        * 1024
        / K4
}

/// Bytes of `[start, end)` inside VMAs flagged VM_LOCKED (`lo`).
fn locked_vma_bytes(start: u64, end: u64) -> u64 {
    smaps(start, end)
        .iter()
        .filter(|v| {
            v.2.get("VmFlags")
                .is_some_and(|f| f.split_ascii_whitespace().any(|x| x == "lo"))
        })
        .map(|v| v.1.min(end) - v.0.max(start))
        .sum()
}

fn pin_runs(
    m: &dyn UserMemory,
    vaddr: u64,
    len: u64,
    write: bool,
) -> Result<Vec<PinnedRun>, MemError> {
    let mut runs = Vec::new();
    m.pin(vaddr, len, write, &mut |r| {
        runs.push(r);
        Ok(())
    })?;
    Ok(runs)
}

/// Runs cover `[vaddr, vaddr + len)` in order, without gaps.
fn assert_cover(runs: &[PinnedRun], vaddr: u64, len: u64) {
    let mut cur = vaddr;
    for r in runs {
        assert_eq!(r.vaddr, cur, "runs {runs:?}");
        assert!(r.len > 0 && r.len % K4 == 0);
        cur += r.len;
    }
    assert_eq!(cur, vaddr + len);
}

fn is_root() -> bool {
    sys::geteuid() == 0
}

#[test]
fn unmapped_range_is_fault() {
    let a = Area::rw(4 * K4);
    sys::unmap(a.start, a.len);
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() };
    assert_eq!(pin_runs(&m, a.start, a.len, false), Err(MemError::Fault));
    assert_eq!(pin_runs(&m, a.start, a.len, true), Err(MemError::Fault));
    assert_eq!(m.stats().pinned_pages, 0);
    assert_eq!(m.stats().pin_ops, 0);
}

#[test]
fn prot_none_is_fault() {
    let a = Area::new(4 * K4, libc::PROT_NONE);
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() };
    assert_eq!(pin_runs(&m, a.start, a.len, false), Err(MemError::Fault));
    assert_eq!(pin_runs(&m, a.start, a.len, true), Err(MemError::Fault));
    // A PROT_NONE page in the middle of read-write memory.
    let b = Area::rw(8 * K4);
    sys::protect(b.at(4 * K4), K4, libc::PROT_NONE);
    assert_eq!(pin_runs(&m, b.start, b.len, true), Err(MemError::Fault));
    assert_eq!(locked_pages(&b), 0);
    assert_eq!(m.stats().pinned_pages, 0);
}

#[test]
fn read_only_memory() {
    let a = Area::rw(8 * K4);
    sys::protect(a.start, a.len, libc::PROT_READ);
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() };
    assert_eq!(pin_runs(&m, a.start, a.len, true), Err(MemError::Fault));
    assert_eq!(locked_pages(&a), 0);
    let runs = pin_runs(&m, a.start, a.len, false).expect("read-only pin of read-only memory");
    assert_cover(&runs, a.start, a.len);
    assert_eq!(locked_pages(&a), 8);
    assert_eq!(m.stats().pinned_pages, 8);
    m.unpin(a.start, a.len);
    assert_eq!(locked_pages(&a), 0);
    assert_eq!(m.stats().pinned_pages, 0);
}

#[test]
fn half_backed_range_leaves_nothing_locked() {
    let a = Area::rw(16 * K4);
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() };
    // An earlier pin of the first pages must survive the failed one.
    pin_runs(&m, a.start, 4 * K4, true).unwrap();
    sys::unmap(a.at(12 * K4), 4 * K4);
    assert_eq!(pin_runs(&m, a.start, a.len, true), Err(MemError::Fault));
    assert_eq!(pin_runs(&m, a.start, a.len, false), Err(MemError::Fault));
    assert_eq!(locked_pages(&a), 4);
    assert_eq!(m.pin_count(a.start), 1);
    assert_eq!(m.pin_count(a.at(4 * K4)), 0);
    let s = m.stats();
    assert_eq!((s.pinned_pages, s.pin_refs), (4, 4));
    m.unpin(a.start, 4 * K4);
    assert_eq!(locked_pages(&a), 0);
}

#[test]
fn overlapping_pins_count_and_lock_state() {
    let a = Area::rw(16 * K4);
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() };
    let p = |i: u64| a.at(i * K4);
    pin_runs(&m, p(0), 8 * K4, true).unwrap();
    pin_runs(&m, p(4), 8 * K4, true).unwrap();
    assert_eq!(locked_pages(&a), 12);
    assert_eq!(locked_vma_bytes(p(0), p(12)), 12 * K4);
    assert_eq!(
        (
            m.pin_count(p(0)),
            m.pin_count(p(4)),
            m.pin_count(p(8)),
            m.pin_count(p(12))
        ),
        (1, 2, 1, 0)
    );
    let s = m.stats();
    assert_eq!(
        (s.pinned_pages, s.pin_refs, s.locked_bytes),
        (12, 16, 12 * K4)
    );

    // Dropping the first pin unlocks only pages no other pin holds.
    m.unpin(p(0), 8 * K4);
    assert_eq!(locked_pages(&a), 8);
    assert_eq!(locked_vma_bytes(p(0), p(4)), 0);
    assert_eq!(locked_vma_bytes(p(4), p(12)), 8 * K4);

    // The same range pinned twice stays locked after one unpin.
    pin_runs(&m, p(4), 8 * K4, true).unwrap();
    m.unpin(p(4), 8 * K4);
    assert_eq!(locked_pages(&a), 8);
    assert_eq!(m.pin_count(p(4)), 1);
    m.unpin(p(4), 8 * K4);
    assert_eq!(locked_pages(&a), 0);
    let s = m.stats();
    assert_eq!((s.pinned_pages, s.pin_refs, s.locked_bytes), (0, 0, 0));
    assert_eq!(m.tracked_segments(), 0);
}

#[test]
fn unpin_of_never_pinned_is_ignored() {
    let a = Area::rw(4 * K4);
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() };
    m.unpin(a.start, a.len);
    m.unpin(a.start + 1, a.len);
    m.unpin(a.start, 0);
    pin_runs(&m, a.start, K4, true).unwrap();
    m.unpin(a.start, a.len);
    assert_eq!(locked_pages(&a), 0);
    assert_eq!(m.stats().pinned_pages, 0);
}

/// Local system calls, with mlock failing on demand.
struct FailingMlock {
    fail: AtomicBool,
    mlocks: AtomicUsize,
}

impl MmSyscalls for FailingMlock {
    fn madvise(&self, addr: u64, len: u64, advice: i32) -> Result<(), i32> {
        LocalSyscalls.madvise(addr, len, advice)
    }
    fn mlock(&self, addr: u64, len: u64) -> Result<(), i32> {
        self.mlocks.fetch_add(1, Ordering::Relaxed);
        if self.fail.load(Ordering::Relaxed) {
            // Lock part of it first, as a real partial failure would.
            let _ = LocalSyscalls.mlock(addr, len / 2);
            return Err(libc::ENOMEM);
        }
        LocalSyscalls.mlock(addr, len)
    }
    fn munlock(&self, addr: u64, len: u64) -> Result<(), i32> {
        LocalSyscalls.munlock(addr, len)
    }
}

#[test]
fn mlock_failure_rolls_back() {
    let a = Area::rw(16 * K4);
    let sc = Arc::new(FailingMlock {
        fail: AtomicBool::new(false),
        mlocks: AtomicUsize::new(0),
    });
    let m = HostMemory::for_pid(std::process::id() as i32, sc.clone());
    pin_runs(&m, a.at(4 * K4), 4 * K4, true).unwrap();
    sc.fail.store(true, Ordering::Relaxed);
    assert_eq!(pin_runs(&m, a.start, a.len, true), Err(MemError::NoMem));
    // Only the earlier pin's pages stay locked.
    assert_eq!(locked_pages(&a), 4);
    assert_eq!(locked_vma_bytes(a.at(4 * K4), a.at(8 * K4)), 4 * K4);
    assert_eq!(m.stats().pinned_pages, 4);
    sc.fail.store(false, Ordering::Relaxed);
    m.unpin(a.at(4 * K4), 4 * K4);
    assert_eq!(locked_pages(&a), 0);
    assert_eq!(sc.mlocks.load(Ordering::Relaxed), 2);
}

#[test]
fn on_run_error_rolls_back() {
    let a = Area::rw(16 * K4);
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() }.with_pfns(false);
    pin_runs(&m, a.start, 2 * K4, true).unwrap();
    let mut seen = 0;
    let r = m.pin(a.start, a.len, true, &mut |_| {
        seen += 1;
        if seen == 5 {
            Err(MemError::Injected)
        } else {
            Ok(())
        }
    });
    assert_eq!(r, Err(MemError::Injected));
    assert_eq!(locked_pages(&a), 2);
    let s = m.stats();
    assert_eq!((s.pinned_pages, s.pin_refs), (2, 2));
    m.unpin(a.start, 2 * K4);
    assert_eq!(locked_pages(&a), 0);
}

#[test]
fn runs_without_pfns_are_base_pages() {
    let a = Area::rw(64 * K4);
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() }.with_pfns(false);
    let runs = pin_runs(&m, a.start, a.len, true).unwrap();
    assert_eq!(runs.len(), 64);
    assert!(runs
        .iter()
        .all(|r| r.len == K4 && r.page_size == K4 && r.pfn.is_none()));
    // One pin operation, and one unpin, for the whole stretch of base pages.
    assert_eq!(m.stats().pin_ops, 1);
    m.unpin(a.start, a.len);
    assert_eq!(m.stats().unpin_ops, 1);
}

/// Raw /proc/self/pagemap entry of the page at `addr`.
fn pagemap_pfn(addr: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, addr / K4 * 8).unwrap();
    u64::from_ne_bytes(b) & ((1 << 55) - 1)
}

#[test]
fn runs_merge_contiguous_pfns_as_root() {
    let a = Area::rw(256 * K4);
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() };
    let runs = pin_runs(&m, a.start, a.len, true).unwrap();
    assert_cover(&runs, a.start, a.len);
    assert_eq!(m.stats().pin_ops, 1);
    if !is_root() || pagemap_pfn(a.start) == 0 {
        println!("skipped: PFN merging needs root (pagemap shows no PFNs)");
        assert!(runs.iter().all(|r| r.len == K4 && r.pfn.is_none()));
    } else {
        for r in &runs {
            let pfn = r.pfn.expect("root sees PFNs");
            for i in 0..r.len / K4 {
                assert_eq!(pagemap_pfn(r.vaddr + i * K4), pfn + i, "run {r:x?}");
            }
        }
        for w in runs.windows(2) {
            let end_pfn = w[0].pfn.unwrap() + w[0].len / K4;
            assert_ne!(
                w[1].pfn.unwrap(),
                end_pfn,
                "contiguous runs not merged: {w:x?}"
            );
        }
        println!("256 pages of fresh anonymous memory: {} runs", runs.len());
    }
    m.unpin(a.start, a.len);
    assert_eq!(locked_pages(&a), 0);
}

#[test]
fn dma_read_write_and_after_munmap() {
    let a = Area::rw(4 * K4);
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() };
    let data: Vec<u8> = (0..6000u32).map(|i| (i * 7) as u8).collect();
    m.write(a.at(K4 - 100), &data).unwrap();
    let mut back = vec![0u8; data.len()];
    m.read(a.at(K4 - 100), &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(sys::peek(a.at(K4 - 100)), data[0]);

    // A range whose tail is missing: error, no crash.
    sys::unmap(a.at(3 * K4), K4);
    let mut big = vec![0u8; 2 * K4 as usize];
    assert_eq!(m.read(a.at(2 * K4), &mut big), Err(MemError::Fault));
    assert_eq!(m.write(a.at(2 * K4), &big), Err(MemError::Fault));

    // Pinned, then unmapped by the user: DMA faults; unpin still works.
    pin_runs(&m, a.start, 2 * K4, true).unwrap();
    sys::unmap(a.start, 3 * K4);
    assert_eq!(m.read(a.start, &mut back), Err(MemError::Fault));
    assert_eq!(m.write(a.start, &data), Err(MemError::Fault));
    m.unpin(a.start, 2 * K4);
    assert_eq!(m.stats().pinned_pages, 0);

    // Read-only and PROT_NONE memory.
    let b = Area::rw(2 * K4);
    sys::protect(b.start, K4, libc::PROT_READ);
    sys::protect(b.at(K4), K4, libc::PROT_NONE);
    let mut one = [0u8; 16];
    m.read(b.start, &mut one).unwrap();
    assert_eq!(m.write(b.start, &one), Err(MemError::Fault));
    assert_eq!(m.read(b.at(K4), &mut one), Err(MemError::Fault));
}

#[test]
fn describe_and_policy_of_self() {
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() };
    assert!(m.describe().starts_with("host pid "));
    let p = m.lock_policy();
    if is_root() {
        assert!(p.cap_ipc_lock);
    }
}

/// What the child reports, as bytes.
fn child_report(cap: bool, limit_pages: u64, pin: Result<(), MemError>, vmlck_kb: u64) -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0] = cap as u8;
    b[1..9].copy_from_slice(&limit_pages.to_le_bytes());
    b[9] = match pin {
        Ok(()) => 0,
        Err(MemError::Fault) => 1,
        Err(MemError::NoMem) => 2,
        Err(_) => 3,
    };
    b[10..18].copy_from_slice(&vmlck_kb.to_le_bytes());
    b
}

fn vmlck_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmLck:"))
        .and_then(|l| l.split_ascii_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

/// In a child: drop CAP_IPC_LOCK from the effective set, set a small
/// RLIMIT_MEMLOCK, and look at the policy from inside and from the parent.
#[test]
fn lock_policy_without_cap_ipc_lock_in_child() {
    const LIMIT: u64 = 64 << 10;
    let a = Area::rw(256 * K4);
    sys::fill(a.start, a.len, 0xaa);
    let (res_r, res_w) = sys::pipe();
    let (go_r, go_w) = sys::pipe();
    let pid = sys::fork();
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // Child: no panics, no unwinding into the harness.
        let mut code = 0;
        if sys::drop_effective_cap(14).is_err() {
            code |= 1;
        }
        if sys::set_memlock_limit(LIMIT).is_err() {
            code |= 2;
        }
        // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
        // arguments, areas no Rust reference covers while the engine runs.
        let m = unsafe { HostMemory::current() };
        let p = m.lock_policy();
        let pin = m.pin(a.start, a.len, true, &mut |_| Ok(()));
        sys::fill(a.start, a.len, 0x55);
        let report = child_report(p.cap_ipc_lock, p.limit_pages, pin, vmlck_kb());
        if !sys::write_all(res_w, &report) {
            code |= 4;
        }
        let mut go = [0u8; 1];
        sys::read_full(go_r, &mut go);
        sys::exit_now(code);
    }
    let mut report = [0u8; 18];
    let n = sys::read_full(res_r, &mut report);
    // Seen from the parent, through /proc/<pid>/status and prlimit.
    let pm = HostMemory::for_pid(pid, Arc::new(LocalSyscalls));
    let seen = pm.lock_policy();
    let mut theirs = vec![0u8; a.len as usize];
    let read = pm.read(a.start, &mut theirs);
    sys::write_all(go_w, &[1]);
    let code = sys::wait_exit(pid);
    for fd in [res_r, res_w, go_r, go_w] {
        sys::close(fd);
    }
    assert_eq!(code, 0, "child setup failed: {code:#x}");
    assert_eq!(n, 18);
    assert_eq!(report[0], 0, "child still has CAP_IPC_LOCK");
    assert_eq!(
        u64::from_le_bytes(report[1..9].try_into().unwrap()),
        LIMIT / K4
    );
    assert_eq!(
        report[9], 2,
        "pin over RLIMIT_MEMLOCK without CAP_IPC_LOCK must be NoMem"
    );
    assert_eq!(
        u64::from_le_bytes(report[10..18].try_into().unwrap()),
        0,
        "VmLck after the failed pin"
    );
    assert!(!seen.cap_ipc_lock);
    assert_eq!(seen.limit_pages, LIMIT / K4);
    // process_vm_readv of the child's copy, which differs from ours.
    read.unwrap();
    assert!(theirs.iter().all(|&b| b == 0x55));
    assert_eq!(sys::peek(a.start), 0xaa);
}

/// Huge pages of one size in the kernel pool: grows the pool when too few
/// are free and gives it back on drop. Tests using it run one at a time.
struct HugePool {
    dir: String,
    old: Option<u64>,
}

static HUGE_POOL_LOCK: Mutex<()> = Mutex::new(());

fn read_num(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl HugePool {
    fn reserve(size_kb: u64, pages: u64) -> Result<HugePool, String> {
        let dir = format!("/sys/kernel/mm/hugepages/hugepages-{size_kb}kB");
        let nr_path = format!("{dir}/nr_hugepages");
        let free = read_num(&format!("{dir}/free_hugepages")).ok_or(format!("no {dir}"))?;
        let mut pool = HugePool { dir, old: None };
        if free >= pages {
            return Ok(pool);
        }
        if !is_root() {
            return Err(format!(
                "{free} free {size_kb} kB huge pages, {pages} needed, and not root to add more"
            ));
        }
        let nr = read_num(&nr_path).ok_or("nr_hugepages unreadable")?;
        std::fs::write(&nr_path, (nr + pages - free).to_string())
            .map_err(|e| format!("{nr_path}: {e}"))?;
        pool.old = Some(nr);
        let now = read_num(&format!("{}/free_hugepages", pool.dir)).unwrap_or(0);
        if now < pages {
            return Err(format!(
                "the kernel gave only {now} free {size_kb} kB pages, {pages} needed"
            ));
        }
        Ok(pool)
    }
}

impl Drop for HugePool {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            let _ = std::fs::write(format!("{}/nr_hugepages", self.dir), old.to_string());
        }
    }
}

/// A hugetlb memfd of `len` bytes mapped over a fresh area aligned to
/// `page_size`.
fn hugetlb_area(len: u64, page_size: u64, flags: u32) -> Result<Area, String> {
    let fd =
        sys::memfd_hugetlb(flags).map_err(|e| format!("memfd_create(MFD_HUGETLB): errno {e}"))?;
    let r = sys::ftruncate(fd, len)
        .map_err(|e| format!("ftruncate: errno {e}"))
        .map(|()| Area::with_guard(len, page_size, libc::PROT_NONE))
        .and_then(|a| {
            sys::map_fd_fixed(a.start, len, fd)
                .map(|()| a)
                .map_err(|e| format!("mmap hugetlb: errno {e}"))
        });
    sys::close(fd);
    r
}

#[test]
fn hugetlbfs_2m_one_op_per_huge_page() {
    let _serial = HUGE_POOL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let _pool = match HugePool::reserve(2048, 8) {
        Ok(p) => p,
        Err(why) => {
            println!("skipped: hugetlbfs 2M test: {why}");
            return;
        }
    };
    let a = match hugetlb_area(8 << 20, M2, libc::MFD_HUGE_2MB) {
        Ok(a) => a,
        Err(why) => {
            println!("skipped: hugetlbfs 2M test: {why}");
            return;
        }
    };
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() }.with_huge_pfns(true);
    let runs = pin_runs(&m, a.start, a.len, true).unwrap();
    assert_eq!(runs.len(), 4, "{runs:x?}");
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(
            (r.vaddr, r.len, r.page_size),
            (a.start + i as u64 * M2, M2, M2)
        );
        if pagemap_pfn(a.start) != 0 {
            let pfn = r.pfn.expect("root sees the PFN of a huge page");
            assert_eq!(pfn % (M2 / K4), 0, "a 2M page starts 2M aligned");
            assert_eq!(m.pfn_of(r.vaddr + 5 * K4), Some(pfn + 5));
        }
    }
    let s = m.stats();
    assert_eq!((s.pin_ops, s.pinned_pages, s.pin_refs), (4, 2048, 2048));
    // No lock state to read back: the kernel never swaps hugetlb pages, and
    // mlock leaves hugetlb VMAs without VM_LOCKED.

    // The same memory written through the backend and read back.
    m.write(a.at(M2 - 2), &[1, 2, 3, 4]).unwrap();
    assert_eq!(sys::peek(a.at(M2 + 1)), 4);

    m.unpin(a.start, a.len);
    let s = m.stats();
    assert_eq!(
        (s.unpin_ops, s.pinned_pages),
        (4, 0),
        "unpin is symmetric: one op per huge page"
    );

    // A range that starts and ends inside huge pages: still one op per
    // huge page touched, each run within its huge page.
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() };
    let runs = pin_runs(&m, a.at(M2 / 2), 2 * M2, false).unwrap();
    assert!(
        runs.iter().all(|r| r.pfn.is_none()),
        "no huge-page PFNs unless asked"
    );
    let shape: Vec<(u64, u64, u64)> = runs
        .iter()
        .map(|r| (r.vaddr - a.start, r.len, r.page_size))
        .collect();
    assert_eq!(
        shape,
        vec![(M2 / 2, M2 / 2, M2), (M2, M2, M2), (2 * M2, M2 / 2, M2)]
    );
    assert_eq!(m.stats().pin_ops, 3);
    // A second pin in the last huge page keeps its pages pinned after the
    // first pin goes.
    pin_runs(&m, a.at(2 * M2 + M2 / 2), M2 / 2, true).unwrap();
    m.unpin(a.at(M2 / 2), 2 * M2);
    assert_eq!(m.stats().unpin_ops, 3);
    assert_eq!(m.pin_count(a.at(2 * M2 + M2 / 2)), 1);
    assert_eq!(m.pin_count(a.at(2 * M2)), 0);
    assert_eq!(m.stats().pinned_pages, M2 / 2 / K4);
    m.unpin(a.at(2 * M2 + M2 / 2), M2 / 2);
    assert_eq!(m.stats().unpin_ops, 4);
    assert_eq!(m.stats().pinned_pages, 0);
}

#[test]
fn hugetlbfs_1g_is_one_run() {
    let _serial = HUGE_POOL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let _pool = match HugePool::reserve(1 << 20, 1) {
        Ok(p) => p,
        Err(why) => {
            println!("skipped: hugetlbfs 1G test: {why}");
            return;
        }
    };
    let a = match hugetlb_area(G1, G1, libc::MFD_HUGE_1GB) {
        Ok(a) => a,
        Err(why) => {
            println!("skipped: hugetlbfs 1G test: {why}");
            return;
        }
    };
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() };
    let runs = pin_runs(&m, a.start, a.len, true).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].len, runs[0].page_size), (G1, G1));
    assert_eq!(m.stats().pin_ops, 1);
    m.unpin(a.start, a.len);
    assert_eq!(m.stats().unpin_ops, 1);
    assert_eq!(m.stats().pinned_pages, 0);
}

#[test]
fn thp_runs_are_2m_when_the_kernel_gives_thp() {
    let a = Area::new(2 * M2, libc::PROT_READ | libc::PROT_WRITE);
    if let Err(e) = sys::madvise(a.start, a.len, libc::MADV_HUGEPAGE) {
        println!("skipped: THP test: MADV_HUGEPAGE: errno {e}");
        return;
    }
    sys::fill(a.start, a.len, 1);
    let anon_huge_kb: u64 = smaps(a.start, a.end())
        .iter()
        .map(|v| kb_field(&v.2, "AnonHugePages"))
        .sum();
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() };
    let runs = pin_runs(&m, a.start, a.len, true).unwrap();
    assert_cover(&runs, a.start, a.len);
    if anon_huge_kb * 1024 != a.len {
        println!(
            "THP not given by the kernel (AnonHugePages {anon_huge_kb} kB): runs are base pages"
        );
        assert!(runs.iter().all(|r| r.page_size == K4));
    } else {
        assert_eq!(runs.len(), 2, "{runs:x?}");
        assert!(runs.iter().all(|r| r.len == M2 && r.page_size == M2));
        assert_eq!(m.stats().pin_ops, 2);
        // mlock of whole huge pages keeps them huge.
        let after: u64 = smaps(a.start, a.end())
            .iter()
            .map(|v| kb_field(&v.2, "AnonHugePages"))
            .sum();
        assert_eq!(after, anon_huge_kb);
    }
    assert_eq!(locked_pages(&a), a.len / K4);
    m.unpin(a.start, a.len);
    assert_eq!(
        m.stats().unpin_ops,
        if anon_huge_kb * 1024 == a.len { 2 } else { 1 }
    );
    assert_eq!(locked_pages(&a), 0);
}

/// Bare floor of a pin: fault-in with write access, then mlock.
fn floor(start: u64, len: u64) -> Duration {
    let t = Instant::now();
    LocalSyscalls
        .madvise(start, len, libc::MADV_POPULATE_WRITE)
        .unwrap();
    LocalSyscalls.mlock(start, len).unwrap();
    let d = t.elapsed();
    LocalSyscalls.munlock(start, len).unwrap();
    d
}

/// A pin through the backend (runs counted); returns pin and unpin times.
fn timed_pin(m: &HostMemory, start: u64, len: u64) -> (Duration, Duration, u64) {
    let mut runs = 0;
    let t = Instant::now();
    m.pin(start, len, true, &mut |_| {
        runs += 1;
        Ok(())
    })
    .unwrap();
    let d = t.elapsed();
    let t = Instant::now();
    m.unpin(start, len);
    (d, t.elapsed(), runs)
}

fn perf_mib() -> u64 {
    std::env::var("SOFTVFIO_PERF_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Floor and pin of the same amount of memory, interleaved round by round
/// (the best of each), on fresh memory from `fresh` and then again on
/// memory already populated. Prints the ratios.
fn compare(what: &str, rounds: usize, fresh: impl Fn() -> Area) {
    let len = fresh().len;
    let mib = len >> 20;
    type Make = fn() -> HostMemory;
    /// This process's memory, as every configuration measures it.
    fn own() -> HostMemory {
        // SAFETY: the engine writes only the buffers this test maps for
        // DMA, areas no Rust reference covers meanwhile.
        unsafe { HostMemory::current() }
    }
    let configs: [(&str, Make); 3] = [
        ("default", own),
        ("all PFNs", || own().with_huge_pfns(true)),
        ("no PFNs", || own().with_pfns(false)),
    ];
    for (name, make) in configs {
        let (mut f, mut p, mut u, mut runs) = (Duration::MAX, Duration::MAX, Duration::MAX, 0);
        for _ in 0..rounds {
            let a = fresh();
            f = f.min(floor(a.start, len));
            drop(a);
            let a = fresh();
            let (pd, ud, n) = timed_pin(&make(), a.start, len);
            (p, u, runs) = (p.min(pd), u.min(ud), n);
        }
        println!(
            "{what} {mib} MiB fresh, {name}: floor {f:?}, pin {p:?} ({runs} runs), ratio {:.3}; unpin {u:?}",
            p.as_secs_f64() / f.as_secs_f64()
        );
        let a = fresh();
        sys::fill(a.start, len, 1);
        let m = make();
        // Warm up: the first fault-in after the fill is cheaper than any
        // later one (after an mlock/munlock cycle), for either side.
        floor(a.start, len);
        timed_pin(&m, a.start, len);
        let (mut f, mut p) = (Duration::MAX, Duration::MAX);
        for _ in 0..rounds {
            f = f.min(floor(a.start, len));
            p = p.min(timed_pin(&m, a.start, len).0);
        }
        println!(
            "{what} {mib} MiB populated, {name}: floor {f:?}, pin {p:?}, ratio {:.3}",
            p.as_secs_f64() / f.as_secs_f64()
        );
    }
}

/// The bare floor (populate + mlock) against a pin of the same amount of
/// memory. Run with `cargo test --release -p softvfio --test memory_host --
/// --ignored --nocapture perf`; SOFTVFIO_PERF_MIB sets the size (default
/// 1024).
#[test]
#[ignore]
fn perf_pin_vs_floor_4k() {
    let len = perf_mib() << 20;
    compare("4K", 5, || {
        Area::new(len, libc::PROT_READ | libc::PROT_WRITE)
    });
}

#[test]
#[ignore]
fn perf_pin_vs_floor_2m_hugetlb() {
    let _serial = HUGE_POOL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let len = perf_mib() << 20;
    let _pool = match HugePool::reserve(2048, len / M2) {
        Ok(p) => p,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    compare("2M hugetlb", 5, || {
        hugetlb_area(len, M2, libc::MFD_HUGE_2MB).unwrap()
    });
}

#[test]
#[ignore]
fn perf_pin_vs_floor_2m_thp() {
    let len = perf_mib() << 20;
    compare("2M THP", 5, || {
        let a = Area::new(len, libc::PROT_READ | libc::PROT_WRITE);
        let _ = sys::madvise(a.start, len, libc::MADV_HUGEPAGE);
        a
    });
}

/// `current` writes this process's memory: here a heap buffer with no
/// reference to it while the engine writes (its unsafe contract).
#[test]
fn current_writes_this_process() {
    let raw = Box::into_raw(vec![0u8; 8].into_boxed_slice());
    // SAFETY: `raw` is a heap buffer leaked from its Box: no reference to
    // it exists while the engine writes it; it is re-owned after.
    let own = unsafe { HostMemory::current() };
    assert_eq!(own.write(raw as *mut u8 as u64, &[9u8; 8]), Ok(()));
    // SAFETY: `raw` came from Box::into_raw above and is re-owned once.
    let back = unsafe { Box::from_raw(raw) };
    assert_eq!(*back, [9u8; 8]);
}

/// Issue 13: an unpin leaves the program's own mlock (made before the pin)
/// in place, as Linux's FOLL_LONGTERM pins never touch VM_LOCKED; pages it
/// did not lock are unlocked as before.
#[test]
fn unpin_keeps_the_programs_own_mlock() {
    let a = Area::rw(8 * K4);
    sys::fill(a.start, a.len, 1);
    sys::mlock(a.start, 4 * K4).unwrap();
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let m = unsafe { HostMemory::current() };
    for round in 0..2 {
        pin_runs(&m, a.start, a.len, true).unwrap();
        assert_eq!(locked_vma_bytes(a.start, a.start + a.len), 8 * K4);
        m.unpin(a.start, a.len);
        assert_eq!(
            locked_vma_bytes(a.start, a.start + 4 * K4),
            4 * K4,
            "round {round}: the program's lock is gone"
        );
        assert_eq!(
            locked_vma_bytes(a.start + 4 * K4, a.start + a.len),
            0,
            "round {round}: our lock stayed"
        );
    }
    assert_eq!(m.stats().pinned_pages, 0);
}

/// Issue 13, the security item: a backend made for a pid reaches the
/// address space that pid had, never the next process to get the pid.
/// The process dies and a new one (a fork of this test, with its own copy
/// of the memory, changed) is given the same pid: device DMA through the
/// old backend fails; it does not read or write the new process.
#[test]
fn dma_of_a_pid_backend_never_reaches_a_recycled_pid() {
    if !is_root() {
        eprintln!("skipped: clone3 with set_tid needs CAP_SYS_ADMIN");
        return;
    }
    let a = Area::rw(K4);
    sys::fill(a.start, a.len, 0xaa);
    let (go1_r, go1_w) = sys::pipe();
    let first = sys::fork();
    assert!(first >= 0, "fork failed");
    if first == 0 {
        let mut b = [0u8; 1];
        sys::read_full(go1_r, &mut b);
        sys::exit_now(0);
    }
    let m = HostMemory::for_pid(first, Arc::new(LocalSyscalls));
    let mut got = [0u8; 8];
    m.dma_read(a.start, &mut got).unwrap();
    assert_eq!(got, [0xaa; 8]);
    sys::write_all(go1_w, &[1]);
    assert_eq!(sys::wait_exit(first), 0);

    // The pid is free: a new process takes it, with other contents.
    sys::fill(a.start, a.len, 0x55);
    let (res_r, res_w) = sys::pipe();
    let (go2_r, go2_w) = sys::pipe();
    let second = match sys::fork_with_pid(first) {
        Ok(p) => p,
        Err(e) => panic!("clone3 with set_tid {first}: errno {e}"),
    };
    if second == 0 {
        let mut b = [0u8; 1];
        sys::read_full(go2_r, &mut b);
        sys::write_all(res_w, &[sys::peek(a.start)]);
        sys::exit_now(0);
    }
    assert_eq!(second, first);
    // What a pid-addressed read would see: the new process.
    let by_pid = HostMemory::for_pid(second, Arc::new(LocalSyscalls));
    by_pid.read(a.start, &mut got).unwrap();
    assert_eq!(got, [0x55; 8]);
    // The old backend: gone is gone.
    assert_eq!(m.dma_read(a.start, &mut got), Err(MemError::Unreachable));
    assert_eq!(m.dma_write(a.start, &[0x11; 8]), Err(MemError::Unreachable));
    // Retired (the supervisor saw the exit): nothing by pid either.
    m.retire();
    assert_eq!(m.read(a.start, &mut got), Err(MemError::Unreachable));
    assert_eq!(
        pin_runs(&m, a.start, a.len, false),
        Err(MemError::Unreachable)
    );
    sys::write_all(go2_w, &[1]);
    let mut seen = [0u8; 1];
    assert_eq!(sys::read_full(res_r, &mut seen), 1);
    assert_eq!(sys::wait_exit(second), 0);
    assert_eq!(
        seen[0], 0x55,
        "DMA reached the process with the recycled pid"
    );
    for fd in [go1_r, go1_w, res_r, res_w, go2_r, go2_w] {
        sys::close(fd);
    }
}

// ---- pinning in parallel (memory/host/parallel.rs) -------------------------

const M1: u64 = 1 << 20;

/// Local system calls that record the threads madvise ran on and count
/// the `mlock2(MLOCK_ONFAULT)` calls; the one given can fail on demand.
struct PoolSyscalls {
    onfaults: AtomicUsize,
    /// The `mlock_onfault` call (1-based) that fails with ENOMEM after
    /// locking half its range, as a partial failure would; 0: none.
    fail_onfault: AtomicUsize,
    threads: Mutex<Vec<String>>,
}

impl PoolSyscalls {
    fn new() -> Arc<Self> {
        Arc::new(PoolSyscalls {
            onfaults: AtomicUsize::new(0),
            fail_onfault: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
        })
    }
}

impl MmSyscalls for PoolSyscalls {
    fn madvise(&self, addr: u64, len: u64, advice: i32) -> Result<(), i32> {
        let name = std::thread::current().name().unwrap_or("").to_string();
        self.threads.lock().unwrap().push(name);
        LocalSyscalls.madvise(addr, len, advice)
    }
    fn mlock(&self, addr: u64, len: u64) -> Result<(), i32> {
        LocalSyscalls.mlock(addr, len)
    }
    fn munlock(&self, addr: u64, len: u64) -> Result<(), i32> {
        LocalSyscalls.munlock(addr, len)
    }
    fn mlock_onfault(&self, addr: u64, len: u64) -> Result<(), i32> {
        let n = self.onfaults.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.fail_onfault.load(Ordering::Relaxed) {
            let _ = LocalSyscalls.mlock_onfault(addr, len / 2);
            return Err(libc::ENOMEM);
        }
        LocalSyscalls.mlock_onfault(addr, len)
    }
    fn any_thread(&self) -> bool {
        true
    }
}

/// VmFlags words of the VMAs in `[start, end)`: (start, end, flags).
fn vma_flags(start: u64, end: u64) -> Vec<(u64, u64, String)> {
    smaps(start, end)
        .into_iter()
        .map(|(a, b, m)| (a, b, m.get("VmFlags").cloned().unwrap_or_default()))
        .collect()
}

fn has_flag(flags: &str, flag: &str) -> bool {
    flags.split_ascii_whitespace().any(|f| f == flag)
}

/// A fresh (never touched) read-write area.
fn fresh(len: u64) -> Area {
    Area::new(len, libc::PROT_READ | libc::PROT_WRITE)
}

/// The VMAs of an area, relative to its start (for comparing two areas).
fn shape(a: &Area) -> Vec<(u64, u64, bool, bool)> {
    vma_flags(a.start, a.end())
        .into_iter()
        .map(|(s, e, f)| {
            (
                s.max(a.start) - a.start,
                e.min(a.end()) - a.start,
                has_flag(&f, "lo"),
                has_flag(&f, "lf"),
            )
        })
        .collect()
}

/// A pin on the pool leaves the address space exactly as a pin on one
/// thread: one VM_LOCKED VMA (no VM_LOCKONFAULT left), every page locked
/// and counted once, the same runs; its unpin unlocks it all again. The
/// chunks ran on the pool's threads, with MLOCK_ONFAULT.
#[test]
fn parallel_pin_leaves_the_mm_as_one_thread_does() {
    const LEN: u64 = 32 * M1;
    for populated in [false, true] {
        let sc = PoolSyscalls::new();
        let par = HostMemory::for_pid(std::process::id() as i32, sc.clone()).with_pin_threads(2);
        let one = HostMemory::for_pid(std::process::id() as i32, Arc::new(LocalSyscalls))
            .with_pin_threads(1);
        let (a, b) = (fresh(LEN), fresh(LEN));
        if populated {
            sys::fill(a.start, LEN, 1);
            sys::fill(b.start, LEN, 1);
        }
        let runs_par = pin_runs(&par, a.start, LEN, true).unwrap();
        let runs_one = pin_runs(&one, b.start, LEN, true).unwrap();
        assert_cover(&runs_par, a.start, LEN);
        assert_cover(&runs_one, b.start, LEN);
        assert_eq!(
            shape(&a),
            vec![(0, LEN, true, false)],
            "populated {populated}"
        );
        assert_eq!(shape(&a), shape(&b));
        // Bytes in locked VMAs, not smaps' `Locked:` (a proportional
        // size, halved while another test's forked child shares the pages).
        assert_eq!(locked_vma_bytes(a.start, a.end()), LEN);
        assert_eq!(locked_vma_bytes(b.start, b.end()), LEN);
        assert_eq!(par.stats().pinned_pages, LEN / K4);
        assert_eq!(par.stats().locked_bytes, LEN);
        assert_eq!(par.pin_count(a.at(LEN - K4)), 1);
        // Locked on fault once, then faulted in as 4 chunks of 8 MiB.
        assert_eq!(sc.onfaults.load(Ordering::Relaxed), 1);
        let threads = sc.threads.lock().unwrap().clone();
        assert_eq!(threads.len(), 4);
        assert!(
            threads.iter().all(|t| t.starts_with("softvfio-pin-")),
            "{threads:?}"
        );
        par.unpin(a.start, LEN);
        one.unpin(b.start, LEN);
        assert_eq!(locked_pages(&a), 0);
        assert_eq!(shape(&a), vec![(0, LEN, false, false)]);
        assert_eq!(par.stats().pinned_pages, 0);
    }
}

/// Below the threshold, and with 1 thread, the pin stays on the calling
/// thread.
#[test]
fn small_pins_and_one_thread_stay_on_the_caller() {
    let sc = PoolSyscalls::new();
    let par = HostMemory::for_pid(std::process::id() as i32, sc.clone()).with_pin_threads(2);
    let a = fresh(8 * M1);
    pin_runs(&par, a.start, a.len, true).unwrap();
    par.unpin(a.start, a.len);
    let sc1 = PoolSyscalls::new();
    let one = HostMemory::for_pid(std::process::id() as i32, sc1.clone()).with_pin_threads(1);
    let b = fresh(32 * M1);
    pin_runs(&one, b.start, b.len, true).unwrap();
    one.unpin(b.start, b.len);
    for s in [sc, sc1] {
        assert_eq!(s.onfaults.load(Ordering::Relaxed), 0);
        let caller = std::thread::current().name().unwrap_or("").to_string();
        assert_eq!(*s.threads.lock().unwrap(), vec![caller]);
    }
}

/// A hole that only faulting in finds (a shared mapping past the end of
/// its file: the VMA is there, the pages are not) in the middle of a large
/// range: EFAULT as on one thread, and every chunk's lock undone, with or
/// without an earlier pin in the range (which keeps its lock).
#[test]
fn parallel_pin_over_a_hole_rolls_back() {
    const LEN: u64 = 32 * M1;
    for threads in [2, 1] {
        let m = HostMemory::for_pid(std::process::id() as i32, Arc::new(LocalSyscalls))
            .with_pin_threads(threads);
        let a = fresh(LEN);
        let fd = sys::memfd().unwrap();
        // The file is empty: every page of the mapping is past its end.
        sys::map_fd_fixed(a.at(20 * M1), 2 * M1, fd).unwrap();
        sys::close(fd);
        assert_eq!(
            pin_runs(&m, a.start, LEN, true),
            Err(MemError::Fault),
            "{threads} threads"
        );
        assert_eq!(locked_pages(&a), 0);
        assert!(vma_flags(a.start, a.end())
            .iter()
            .all(|(_, _, f)| !has_flag(f, "lo") && !has_flag(f, "lf")));
        assert_eq!(m.stats().pinned_pages, 0);
        // An earlier pin in the range keeps its pages locked.
        pin_runs(&m, a.start, M1, true).unwrap();
        assert_eq!(pin_runs(&m, a.start, LEN, true), Err(MemError::Fault));
        assert_eq!(locked_vma_bytes(a.start, a.end()), M1);
        assert!(vma_flags(a.start, a.end())
            .iter()
            .all(|(_, _, f)| !has_flag(f, "lf")));
        assert_eq!(m.stats().pinned_pages, M1 / K4);
        m.unpin(a.start, M1);
        assert_eq!(locked_pages(&a), 0);
        assert_eq!(m.stats().pinned_pages, 0);
    }
}

/// The lock fails (after locking part of the range): ENOMEM, and nothing
/// stays locked or counted.
#[test]
fn parallel_pin_lock_failure_rolls_back() {
    const LEN: u64 = 32 * M1;
    let sc = PoolSyscalls::new();
    sc.fail_onfault.store(1, Ordering::Relaxed);
    let m = HostMemory::for_pid(std::process::id() as i32, sc.clone()).with_pin_threads(2);
    let a = fresh(LEN);
    assert_eq!(pin_runs(&m, a.start, LEN, true), Err(MemError::NoMem));
    assert_eq!(sc.onfaults.load(Ordering::Relaxed), 1);
    assert_eq!(locked_pages(&a), 0);
    assert!(vma_flags(a.start, a.end())
        .iter()
        .all(|(_, _, f)| !has_flag(f, "lo") && !has_flag(f, "lf")));
    assert_eq!(m.stats().pinned_pages, 0);
    assert_eq!(m.stats().locked_bytes, 0);
    // The same memory pins afterwards.
    sc.fail_onfault.store(0, Ordering::Relaxed);
    pin_runs(&m, a.start, LEN, true).unwrap();
    assert_eq!(locked_vma_bytes(a.start, a.end()), LEN);
    m.unpin(a.start, LEN);
    assert_eq!(locked_pages(&a), 0);
}

/// RLIMIT_MEMLOCK runs out in the middle of a parallel pin (in a child
/// without CAP_IPC_LOCK; the test's hard limit, 8 MiB here, cannot be
/// raised): ENOMEM, VmLck back to 0, nothing counted; a pin within the limit
/// then works, and its unpin unlocks it.
#[test]
fn parallel_pin_over_rlimit_memlock_in_child() {
    const LIMIT: u64 = 4 << 20;
    let a = fresh(32 * M1);
    let (res_r, res_w) = sys::pipe();
    let pid = sys::fork();
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // Child: no panics, no unwinding into the harness. The report:
        // setup code, result of the failing pin, VmLck after it, pinned
        // pages after it, result of the small pin, VmLck after it and
        // after its unpin (kB).
        let mut out = Vec::new();
        let mut code = 0u64;
        if sys::drop_effective_cap(14).is_err() {
            code |= 1;
        }
        if sys::set_memlock_limit(LIMIT).is_err() {
            code |= 2;
        }
        let sc = PoolSyscalls::new();
        let m = HostMemory::for_pid(std::process::id() as i32, sc.clone()).with_pin_threads(2);
        let big = m.pin(a.start, a.len, true, &mut |_| Ok(()));
        if sc.onfaults.load(Ordering::Relaxed) != 1 {
            code |= 4;
        }
        let after_big = vmlck_kb();
        let pinned = m.stats().pinned_pages;
        let small = m.pin(a.start, 2 * M1, true, &mut |_| Ok(()));
        let after_small = vmlck_kb();
        m.unpin(a.start, 2 * M1);
        let after_unpin = vmlck_kb();
        let res = |r: Result<(), MemError>| match r {
            Ok(()) => 0u64,
            Err(MemError::NoMem) => 2,
            Err(_) => 3,
        };
        for v in [
            code,
            res(big),
            after_big,
            pinned,
            res(small),
            after_small,
            after_unpin,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        sys::write_all(res_w, &out);
        sys::exit_now(0);
    }
    let mut report = [0u8; 56];
    let n = sys::read_full(res_r, &mut report);
    assert_eq!(sys::wait_exit(pid), 0);
    sys::close(res_r);
    sys::close(res_w);
    assert_eq!(n, 56);
    let v: Vec<u64> = report
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(v[0], 0, "child setup failed (or the pin was not parallel)");
    assert_eq!(v[1], 2, "a pin past RLIMIT_MEMLOCK is NoMem");
    assert_eq!(v[2], 0, "VmLck after the failed pin");
    assert_eq!(v[3], 0, "pinned pages after the failed pin");
    assert_eq!(v[4], 0, "a pin within the limit works");
    assert_eq!(v[5], 2 << 10);
    assert_eq!(v[6], 0);
}

/// MAP_DMA of a large range through the engine (type1v2 container, VT-d
/// domain) over the pool: a hole in the middle fails with EFAULT and leaves
/// the account, the locks, the pins and the IOMMU page table as they were;
/// the same range without the hole maps (every page in the page table,
/// one accounting update) and unmaps back to nothing.
#[test]
fn parallel_map_dma_over_a_hole_is_all_or_nothing() {
    use soft_iommu::{Iommu, IommuConfig};
    use softvfio::container::{Container, ContainerConfig, TYPE1V2_IOMMU};
    use softvfio::iommu::Prot;
    const LEN: u64 = 32 * M1;
    const IOVA: u64 = 0x10_0000_0000;
    let mem = Arc::new(
        HostMemory::for_pid(std::process::id() as i32, Arc::new(LocalSyscalls)).with_pin_threads(2),
    );
    let iommu = Iommu::new(IommuConfig::default());
    let c = Container::new(ContainerConfig::default(), mem.clone());
    c.attach_group(&softvfio::testing::vtd_group(3, 0x18, &iommu))
        .unwrap();
    c.set_iommu(TYPE1V2_IOMMU).unwrap();
    let domain = iommu.device_domain(0x18).unwrap();
    let a = fresh(LEN);
    let fd = sys::memfd().unwrap();
    sys::map_fd_fixed(a.at(12 * M1), M1, fd).unwrap();
    let updates = mem.account().updates();
    let err = c.map(IOVA, a.start, LEN, Prot::RW).unwrap_err();
    assert_eq!(err.errno(), libc::EFAULT);
    assert_eq!(mem.account().locked_pages(), 0);
    assert_eq!(domain.leaf_counts(), (0, 0, 0));
    assert_eq!(mem.stats().pinned_pages, 0);
    assert_eq!(locked_vma_bytes(a.start, a.end()), 0);
    assert!(vma_flags(a.start, a.end())
        .iter()
        .all(|(_, _, f)| !has_flag(f, "lf")));
    // Charged once and given back once.
    assert_eq!(mem.account().updates(), updates + 2);
    // Memory where the hole was: the whole range maps.
    sys::map_anon_fixed(a.at(12 * M1), M1).unwrap();
    sys::close(fd);
    c.map(IOVA, a.start, LEN, Prot::RW).unwrap();
    assert_eq!(mem.account().updates(), updates + 3);
    assert_eq!(mem.account().locked_pages(), LEN / K4);
    let (l4k, l2m, _) = domain.leaf_counts();
    assert_eq!(l4k + l2m * 512, LEN / K4);
    assert_eq!(locked_vma_bytes(a.start, a.end()), LEN);
    assert_eq!(c.unmap(IOVA, LEN).unwrap(), LEN);
    assert_eq!(mem.account().locked_pages(), 0);
    assert_eq!(domain.leaf_counts(), (0, 0, 0));
    assert_eq!(locked_vma_bytes(a.start, a.end()), 0);
    assert_eq!(mem.stats().pinned_pages, 0);
}
