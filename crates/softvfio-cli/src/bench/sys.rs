//! The system calls of the host benchmarks, each in a small helper, and the
//! memory areas and huge-page pool they use.

const M2: u64 = 2 << 20;

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn check(r: i32, what: &str) -> Result<(), String> {
    if r == 0 {
        Ok(())
    } else {
        Err(format!("{what}: errno {}", errno()))
    }
}

/// `madvise(addr, len, advice)`.
pub fn madvise(addr: u64, len: u64, advice: i32) -> Result<(), String> {
    // SAFETY: callers pass ranges of an `Area` they own and advice that does
    // not discard contents (POPULATE_WRITE, HUGEPAGE); the kernel checks the
    // range.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, advice) };
    check(r, "madvise")
}

/// `mlock(addr, len)`.
pub fn mlock(addr: u64, len: u64) -> Result<(), String> {
    // SAFETY: mlock changes residency only, never contents.
    let r = unsafe { libc::mlock(addr as *const libc::c_void, len as usize) };
    check(r, "mlock")
}

/// `munlock(addr, len)`.
pub fn munlock(addr: u64, len: u64) -> Result<(), String> {
    // SAFETY: as for mlock.
    let r = unsafe { libc::munlock(addr as *const libc::c_void, len as usize) };
    check(r, "munlock")
}

/// The bare floor of a pin and unpin: fault-in with write access, mlock,
/// munlock. Returns nanoseconds.
pub fn floor_ns(addr: u64, len: u64) -> Result<f64, String> {
    let t = std::time::Instant::now();
    madvise(addr, len, libc::MADV_POPULATE_WRITE)?;
    mlock(addr, len)?;
    munlock(addr, len)?;
    Ok(t.elapsed().as_nanos() as f64)
}

/// `mmap` of `len` bytes; `fd` -1 for anonymous private memory.
fn mmap(len: u64, fd: i32) -> Result<u64, String> {
    let flags = if fd < 0 {
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
    } else {
        libc::MAP_SHARED
    };
    // SAFETY: a new mapping at an address the kernel picks; nothing else
    // refers to it until it is returned.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(format!("mmap of {len} bytes: errno {}", errno()))
    } else {
        Ok(p as u64)
    }
}

/// `munmap(addr, len)` of a mapping made by [`mmap`].
fn munmap(addr: u64, len: u64) {
    if len == 0 {
        return;
    }
    // SAFETY: only called on (parts of) mappings this module created and
    // owns; no reference into them outlives the `Area`.
    unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) };
}

/// A hugetlb memfd of `len` bytes (2 MiB pages).
fn memfd_hugetlb_2m(len: u64) -> Result<i32, String> {
    // SAFETY: memfd_create reads a NUL-terminated name; flags are constants.
    let fd = unsafe {
        libc::memfd_create(
            c"softvfio-bench".as_ptr(),
            libc::MFD_HUGETLB | libc::MFD_HUGE_2MB | libc::MFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!("memfd_create(MFD_HUGETLB): errno {}", errno()));
    }
    // SAFETY: fd is the memfd just created.
    let r = unsafe { libc::ftruncate(fd, len as libc::off_t) };
    if r != 0 {
        let e = errno();
        close(fd);
        return Err(format!("ftruncate of a hugetlb memfd: errno {e}"));
    }
    Ok(fd)
}

fn close(fd: i32) {
    // SAFETY: closing an fd this module opened.
    unsafe { libc::close(fd) };
}

/// Writes `byte` over `[addr, addr + len)` of an `Area`.
fn fill(addr: u64, len: u64, byte: u8) {
    // SAFETY: the range lies inside a live read-write `Area`.
    unsafe { std::ptr::write_bytes(addr as *mut u8, byte, len as usize) };
}

/// Memory the benchmarks map: unmapped on drop.
#[derive(Debug)]
pub struct Area {
    base: u64,
    total: u64,
    pub start: u64,
    pub len: u64,
}

impl Area {
    /// Anonymous read-write memory at a 2 MiB aligned address.
    pub fn anon(len: u64) -> Result<Area, String> {
        let total = len + M2;
        let base = mmap(total, -1)?;
        let start = base.next_multiple_of(M2);
        // Trim to the aligned part, so THP can back all of it.
        munmap(base, start - base);
        munmap(start + len, base + total - (start + len));
        Ok(Area {
            base: start,
            total: len,
            start,
            len,
        })
    }

    /// Anonymous memory advised MADV_HUGEPAGE.
    pub fn thp(len: u64) -> Result<Area, String> {
        let a = Area::anon(len)?;
        madvise(a.start, a.len, libc::MADV_HUGEPAGE)?;
        Ok(a)
    }

    /// A shared mapping of a fresh hugetlb memfd (2 MiB pages).
    pub fn hugetlb_2m(len: u64) -> Result<Area, String> {
        let fd = memfd_hugetlb_2m(len)?;
        let r = mmap(len, fd);
        close(fd);
        let start = r?;
        Ok(Area {
            base: start,
            total: len,
            start,
            len,
        })
    }

    /// Writes every page once (the memory is then populated).
    pub fn touch(&self) {
        fill(self.start, self.len, 0x5a);
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        munmap(self.base, self.total);
    }
}

/// Bytes of `[start, end)` that smaps shows as `AnonHugePages` (THP).
pub fn anon_huge_bytes(start: u64, end: u64) -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut inside = false;
    let mut total = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                inside = a < end && b > start;
                continue;
            }
        }
        if inside && first == "AnonHugePages:" {
            total += words
                .next()
                .and_then(|k| k.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
        }
    }
    total
}

fn read_num(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// At least `pages` free 2 MiB huge pages: grows the kernel pool when too
/// few are free (root only) and restores its size on drop.
pub struct HugePool {
    nr_path: String,
    old: Option<u64>,
}

const HP_DIR: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

impl HugePool {
    pub fn reserve(pages: u64) -> Result<HugePool, String> {
        let free = read_num(&format!("{HP_DIR}/free_hugepages"))
            .ok_or_else(|| format!("no {HP_DIR} (no 2 MiB huge page support)"))?;
        let mut pool = HugePool {
            nr_path: format!("{HP_DIR}/nr_hugepages"),
            old: None,
        };
        if free >= pages {
            return Ok(pool);
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(format!(
                "{free} free 2 MiB huge pages, {pages} needed, and not root to add more"
            ));
        }
        let nr = read_num(&pool.nr_path).ok_or("nr_hugepages unreadable")?;
        std::fs::write(&pool.nr_path, (nr + pages - free).to_string())
            .map_err(|e| format!("{}: {e}", pool.nr_path))?;
        pool.old = Some(nr);
        let now = read_num(&format!("{HP_DIR}/free_hugepages")).unwrap_or(0);
        if now < pages {
            // `pool` is dropped here and restores the old size.
            return Err(format!(
                "the kernel gave only {now} free 2 MiB pages, {pages} needed"
            ));
        }
        Ok(pool)
    }

    /// The pool size to restore, when this pool changed it.
    pub fn raised_from(&self) -> Option<u64> {
        self.old
    }
}

impl Drop for HugePool {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            if let Err(e) = std::fs::write(&self.nr_path, old.to_string()) {
                eprintln!("could not restore {} to {old}: {e}", self.nr_path);
            }
        }
    }
}

/// Sets every bit of `buf` and copies it to `dst` (the
/// dirty-bitmap baseline: produce the bits, copy them out).
pub fn fill_and_copy(buf: &mut [u64], dst: &mut [u64]) {
    buf.fill(u64::MAX);
    let n = buf.len().min(dst.len());
    dst[..n].copy_from_slice(&buf[..n]);
    std::hint::black_box(&dst);
}

/// [`floor_ns`] on a fresh area from `make`, unmapped afterwards (not
/// timed).
pub fn floor_ns_fresh(make: impl FnOnce() -> Result<Area, String>) -> Result<f64, String> {
    let a = make()?;
    floor_ns(a.start, a.len)
}

/// SIGKILL to process group `pgid` (a benchmark's own child group).
pub fn kill_group(pgid: u32) {
    // SAFETY: kill takes no pointers; a negative pid names the group.
    unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
}
