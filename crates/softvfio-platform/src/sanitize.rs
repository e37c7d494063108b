//! The DMA sanitizer's front-end half (issue 19; docs/SANITIZER.md): call
//! sites captured from the program (its memory map, a walk with the
//! objects' call frame information), symbolized lazily from the program's
//! ELF and DWARF, and the report that explains every DMA fault, stale
//! mapping, leak and device-side clamp.
//!
//! The engine half (`softvfio::sanitizer`) records the history; this module
//! only reads it. Symbolization happens when a report is written, never on
//! the map path: a frame keeps the file and file offset it lay in, so it can
//! be symbolized after the program is gone.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use softvfio::sanitizer::{
    CallSite, Event, EventKind, Frame, IovaHistory, RegionView, Sanitizer, StaleCause, StaleReport,
    Via,
};

use crate::report::human_bytes;
use crate::BuiltPlatform;

/// How `--sanitize` was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanitizeMode {
    /// Record and report.
    On,
    /// Also make any finding a non-zero exit status.
    Strict,
}

impl SanitizeMode {
    /// `on`/`strict` (as `--sanitize=` and `SOFTVFIO_SANITIZE` spell them).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "1" | "on" => Some(SanitizeMode::On),
            "strict" => Some(SanitizeMode::Strict),
            _ => None,
        }
    }

    /// The spelling [`parse`](Self::parse) reads.
    pub fn as_str(self) -> &'static str {
        match self {
            SanitizeMode::On => "on",
            SanitizeMode::Strict => "strict",
        }
    }
}

/// The exit status `--sanitize=strict` gives a run with findings whose
/// program itself succeeded (AddressSanitizer's default).
pub const STRICT_EXIT_STATUS: i32 = 1;

// ---- call sites ---------------------------------------------------------

#[derive(Debug, Clone)]
struct MapEntry {
    start: u64,
    end: u64,
    offset: u64,
    exec: bool,
    path: Arc<str>,
}

/// A process's file mappings (`/proc/<pid>/maps`), read once and again when
/// an address falls outside them (a library loaded later).
///
/// The same call sites recur (a driver maps from a few places), so the
/// unwind step of each instruction and the call site of each address tuple
/// are kept; both are dropped whenever the maps are read again (an object
/// may have moved).
pub struct ProcessMaps {
    path: String,
    entries: Vec<MapEntry>,
    names: HashMap<String, Arc<str>>,
    /// Call frame information by object, loaded on first use.
    cfi: HashMap<Arc<str>, Option<Cfi>>,
    /// The unwind step at each instruction looked up (`None`: no rule the
    /// walk understands).
    steps: HashMap<u64, Option<Step>, AddrHash>,
    /// In front of `steps`: the step of recent instructions, by a few bits
    /// of their address, two per set ([`recent_set`]; a capture takes about
    /// ten steps, each one a hash lookup otherwise).
    recent_steps: Box<[(u64, Option<Step>); RECENT_STEPS]>,
    /// Likewise for return addresses: whether each is code, with the step
    /// at its call, in one lookup per frame.
    recent_returns: Box<[(u64, ReturnInfo); RECENT_STEPS]>,
    /// The call site of each address tuple made.
    sites: HashMap<Vec<u64>, Arc<CallSite>, AddrHash>,
    /// In front of `sites`: the last few call sites made (a driver's calls
    /// alternate between a few: map, unmap, ...), compared frame by frame.
    recent_sites: [Option<Arc<CallSite>>; RECENT_SITES],
    /// Where in `recent_sites` the next new site goes.
    recent_next: usize,
    /// The index in `entries` of the last address found (the frames of a
    /// walk fall in a few objects, mostly the one before).
    last_entry: usize,
    /// The count of object unloads the entries were read after (see
    /// [`sync_unloads`](ProcessMaps::sync_unloads)).
    unloads: u64,
}

/// Slots of [`ProcessMaps`]' two-way step caches (a power of two).
const RECENT_STEPS: usize = 256;

/// Call sites [`ProcessMaps`] compares before hashing.
const RECENT_SITES: usize = 4;

/// A `recent_steps` slot that holds no instruction (no code is at the
/// last address).
const NO_PC: u64 = u64::MAX;

/// Entries kept in each of [`ProcessMaps`]' caches before it starts over
/// (a program with more distinct call sites than this is still served,
/// only slower).
const CACHE_LIMIT: usize = 4096;

/// A hasher for code addresses (keys made by this process, not by an
/// adversary): a multiply and a fold per word, instead of SipHash's rounds.
#[derive(Clone, Copy, Default)]
struct AddrHash;

impl std::hash::BuildHasher for AddrHash {
    type Hasher = AddrHasher;
    fn build_hasher(&self) -> AddrHasher {
        AddrHasher(0)
    }
}

struct AddrHasher(u64);

impl std::hash::Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

impl std::fmt::Debug for ProcessMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessMaps")
            .field("path", &self.path)
            .finish()
    }
}

impl ProcessMaps {
    /// The mappings of process `pid`, or of this process for `None`.
    pub fn new(pid: Option<i32>) -> Self {
        let path = match pid {
            Some(p) => format!("/proc/{p}/maps"),
            None => "/proc/self/maps".to_string(),
        };
        let mut m = Self::of_entries(Vec::new(), HashMap::new());
        m.path = path;
        m.reload();
        m
    }

    /// Maps of `entries` (reloaded from a path that does not exist).
    fn of_entries(entries: Vec<MapEntry>, names: HashMap<String, Arc<str>>) -> Self {
        Self {
            path: "/nonexistent".into(),
            entries,
            names,
            cfi: HashMap::new(),
            steps: HashMap::default(),
            recent_steps: Box::new([(NO_PC, None); RECENT_STEPS]),
            recent_returns: Box::new([(NO_PC, ReturnInfo::default()); RECENT_STEPS]),
            sites: HashMap::default(),
            recent_sites: Default::default(),
            recent_next: 0,
            last_entry: 0,
            unloads: 0,
        }
    }

    /// The process has unloaded objects `unloads` times (a count its
    /// `dlclose` bumps after each call): when that differs from the count
    /// the entries were read after, everything is read again. An unloaded
    /// object's addresses are otherwise still taken for its code (a miss
    /// reloads, a hit does not), and another object loaded at the same
    /// addresses would have its frames, steps and call sites named after
    /// the old one. One comparison when nothing was unloaded.
    #[inline]
    pub fn sync_unloads(&mut self, unloads: u64) {
        if unloads != self.unloads {
            self.read_after_unloads(unloads);
        }
    }

    #[inline(never)]
    fn read_after_unloads(&mut self, unloads: u64) {
        self.unloads = unloads;
        self.reload();
    }

    fn reload(&mut self) {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        self.entries = parse_maps(&text, &mut self.names);
        self.forget_derived();
    }

    /// Drops what was derived from the entries (they changed).
    fn forget_derived(&mut self) {
        self.steps.clear();
        self.recent_steps.fill((NO_PC, None));
        self.recent_returns.fill((NO_PC, ReturnInfo::default()));
        self.sites.clear();
        self.recent_sites = Default::default();
        self.last_entry = 0;
    }

    /// The index in `entries` of the mapping holding `addr`.
    fn find_index(&self, addr: u64) -> Option<usize> {
        let hit = |e: &MapEntry| e.start <= addr && addr < e.end;
        if self.entries.get(self.last_entry).is_some_and(hit) {
            return Some(self.last_entry);
        }
        let i = self.entries.partition_point(|e| e.end <= addr);
        self.entries
            .get(i)
            .is_some_and(|e| e.start <= addr)
            .then_some(i)
    }

    fn find(&self, addr: u64) -> Option<&MapEntry> {
        self.entries.get(self.find_index(addr)?)
    }

    /// Is `addr` in an executable file mapping? (Reloads once on a miss.)
    pub fn is_code(&mut self, addr: u64) -> bool {
        let mut found = self.find_index(addr);
        if found.is_none() {
            self.reload();
            found = self.find_index(addr);
        }
        match found {
            Some(i) => {
                self.last_entry = i;
                self.entries[i].exec
            }
            None => false,
        }
    }

    /// The addresses of the executable file mapping holding `addr` (all
    /// of an object's code: its one executable segment), without
    /// reloading.
    pub fn code_range(&self, addr: u64) -> Option<std::ops::Range<u64>> {
        self.find(addr).filter(|e| e.exec).map(|e| e.start..e.end)
    }

    /// `addr` with the file and file offset it lies in.
    pub fn frame(&mut self, addr: u64) -> Frame {
        match self.find(addr) {
            Some(e) => Frame {
                addr,
                object: Some(e.path.clone()),
                offset: addr - e.start + e.offset,
            },
            None => Frame {
                addr,
                object: None,
                offset: addr,
            },
        }
    }

    /// A call site of the addresses `addrs` (innermost first).
    pub fn site(&mut self, addrs: &[u64]) -> Arc<CallSite> {
        let recent = self.recent_sites.iter().flatten().find(|s| {
            s.frames.len() == addrs.len() && s.frames.iter().zip(addrs).all(|(f, a)| f.addr == *a)
        });
        if let Some(s) = recent {
            return s.clone();
        }
        let site = self.site_slow(addrs);
        self.recent_sites[self.recent_next] = Some(site.clone());
        self.recent_next = (self.recent_next + 1) % RECENT_SITES;
        site
    }

    fn site_slow(&mut self, addrs: &[u64]) -> Arc<CallSite> {
        if let Some(s) = self.sites.get(addrs) {
            return s.clone();
        }
        if addrs.iter().any(|a| self.find(*a).is_none()) {
            self.reload();
        }
        let site = Arc::new(CallSite {
            frames: addrs.iter().map(|a| self.frame(*a)).collect(),
        });
        if self.sites.len() >= CACHE_LIMIT {
            self.sites.clear();
        }
        self.sites.insert(addrs.to_vec(), site.clone());
        site
    }
}

/// What the walk needs to know of a return address.
#[derive(Debug, Clone, Copy, Default)]
struct ReturnInfo {
    /// It lies in an executable file mapping (`false`: not kept).
    code: bool,
    /// The unwind step at its call (the byte before it).
    step: Option<Step>,
}

/// The first of the two slots (`set` and `set | 1`) code address `pc` may
/// take in a two-way cache of [`RECENT_STEPS`] slots: instructions are
/// bytes apart, so the higher bits are folded in to spread the frames of
/// one path (in a few objects). Two ways, because with one, two of a
/// capture's ~15 addresses sharing a slot (likely: which ones do depends
/// on where the linker put the code) evicted each other on every capture
/// (measured: +1590 instructions a MAP+UNMAP pair after an unrelated
/// change moved the library's code).
fn recent_set(pc: u64) -> usize {
    ((pc ^ (pc >> 8) ^ (pc >> 16)) as usize) & (RECENT_STEPS - 2)
}

fn parse_maps(text: &str, names: &mut HashMap<String, Arc<str>>) -> Vec<MapEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(off), Some(_dev), Some(_inode)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let path: String = it.collect::<Vec<_>>().join(" ");
        if !path.starts_with('/') {
            continue;
        }
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(offset)) = (
            u64::from_str_radix(s, 16),
            u64::from_str_radix(e, 16),
            u64::from_str_radix(off, 16),
        ) else {
            continue;
        };
        let path = names
            .entry(path.clone())
            .or_insert_with(|| Arc::from(path.as_str()))
            .clone();
        out.push(MapEntry {
            start,
            end,
            offset,
            exec: perms.as_bytes().get(2) == Some(&b'x'),
            path,
        });
    }
    out.sort_by_key(|e| e.start);
    out
}

/// How to find the caller's frame from one instruction (x86-64 `.eh_frame`
/// rules the walk understands). Offsets are those of a stack frame, well
/// within 32 bits (a rule with larger ones is not understood): small, so
/// that the walk's caches copy little per frame.
#[derive(Debug, Clone, Copy)]
struct FrameRule {
    /// The CFA is `rsp` (7) or `rbp` (6) plus `cfa_offset`.
    cfa_register: u16,
    cfa_offset: i32,
    /// The return address is saved at CFA + this.
    ra_offset: i32,
    /// The caller's `rbp` is saved at CFA + this (else unchanged).
    rbp_offset: Option<i32>,
}

/// What the call frame information says about one instruction's frame.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// How to find the caller.
    Caller(FrameRule),
    /// There is no caller: the return address is undefined (`_start`, a
    /// thread's start routine).
    Outermost,
}

/// An object's call frame information (`.eh_frame`, with its binary-search
/// table `.eh_frame_hdr` when present).
struct Cfi {
    eh_frame: Vec<u8>,
    eh_frame_addr: u64,
    hdr: Option<(Vec<u8>, u64)>,
    text_addr: u64,
    /// PT_LOAD segments: file offset, file size, virtual address.
    segments: Vec<(u64, u64, u64)>,
}

impl Cfi {
    fn load(path: &str) -> Option<Cfi> {
        use object::{Object, ObjectSection};
        let data = std::fs::read(path).ok()?;
        let file = object::File::parse(&*data).ok()?;
        let eh = file.section_by_name(".eh_frame")?;
        let hdr = file
            .section_by_name(".eh_frame_hdr")
            .and_then(|h| Some((h.data().ok()?.to_vec(), h.address())));
        Some(Cfi {
            eh_frame: eh.data().ok()?.to_vec(),
            eh_frame_addr: eh.address(),
            hdr,
            text_addr: file
                .section_by_name(".text")
                .map(|t| t.address())
                .unwrap_or(0),
            segments: load_segments(&file),
        })
    }

    fn svma(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(off, size, _)| offset >= *off && offset - off < *size)
            .map(|(off, _, vaddr)| vaddr + (offset - off))
    }

    fn rule(&self, svma: u64) -> Option<Step> {
        use gimli::{
            BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
            UnwindSection, X86_64,
        };
        let eh = EhFrame::new(&self.eh_frame, LittleEndian);
        let mut bases = BaseAddresses::default()
            .set_eh_frame(self.eh_frame_addr)
            .set_text(self.text_addr);
        if let Some((_, addr)) = &self.hdr {
            bases = bases.set_eh_frame_hdr(*addr);
        }
        let mut ctx = UnwindContext::new();
        let table_row = match &self.hdr {
            Some((data, _)) => {
                let parsed = EhFrameHdr::new(data, LittleEndian).parse(&bases, 8).ok()?;
                match parsed.table() {
                    Some(t) => t
                        .unwind_info_for_address(
                            &eh,
                            &bases,
                            &mut ctx,
                            svma,
                            EhFrame::cie_from_offset,
                        )
                        .ok()?
                        .clone(),
                    None => eh
                        .unwind_info_for_address(&bases, &mut ctx, svma, EhFrame::cie_from_offset)
                        .ok()?
                        .clone(),
                }
            }
            None => eh
                .unwind_info_for_address(&bases, &mut ctx, svma, EhFrame::cie_from_offset)
                .ok()?
                .clone(),
        };
        if let RegisterRule::Undefined = table_row.register(X86_64::RA) {
            return Some(Step::Outermost);
        }
        let CfaRule::RegisterAndOffset { register, offset } = *table_row.cfa() else {
            return None;
        };
        let RegisterRule::Offset(ra_offset) = table_row.register(X86_64::RA) else {
            return None;
        };
        let rbp_offset = match table_row.register(X86_64::RBP) {
            RegisterRule::Offset(n) => Some(i32::try_from(n).ok()?),
            _ => None,
        };
        Some(Step::Caller(FrameRule {
            cfa_register: register.0,
            cfa_offset: i32::try_from(offset).ok()?,
            ra_offset: i32::try_from(ra_offset).ok()?,
            rbp_offset,
        }))
    }
}

fn load_segments(file: &object::File<'_>) -> Vec<(u64, u64, u64)> {
    use object::{Object, ObjectSegment};
    file.segments()
        .filter_map(|s| {
            let (off, size) = s.file_range();
            (size > 0).then(|| (off, size, s.address()))
        })
        .collect()
}

impl ProcessMaps {
    /// The unwind step at instruction `pc` (kept: see [`ProcessMaps`]).
    #[inline]
    fn step(&mut self, pc: u64) -> Option<Step> {
        let set = recent_set(pc);
        let (key, step) = self.recent_steps[set];
        if key == pc {
            return step;
        }
        self.step_second_way(pc, set)
    }

    /// [`step`](Self::step) past the first way (out of line: without a
    /// collision the first way hits).
    #[inline(never)]
    fn step_second_way(&mut self, pc: u64, set: usize) -> Option<Step> {
        let (key, step) = self.recent_steps[set | 1];
        if key == pc {
            return step;
        }
        let step = self.step_slow(pc);
        // The newest in the first way, the one it displaces in the second.
        self.recent_steps[set | 1] = self.recent_steps[set];
        self.recent_steps[set] = (pc, step);
        step
    }

    /// Whether return address `ra` is code, and the step at its call
    /// (kept when it is code: an address that is not may become code when
    /// a library is loaded, see [`is_code`](Self::is_code)).
    #[inline]
    fn return_info(&mut self, ra: u64) -> ReturnInfo {
        let set = recent_set(ra);
        let (key, info) = self.recent_returns[set];
        if key == ra {
            return info;
        }
        self.return_info_slow(ra, set)
    }

    /// [`return_info`](Self::return_info) past the first way.
    #[inline(never)]
    fn return_info_slow(&mut self, ra: u64, set: usize) -> ReturnInfo {
        let (key, info) = self.recent_returns[set | 1];
        if key == ra {
            return info;
        }
        if !self.is_code(ra) {
            return ReturnInfo::default();
        }
        let info = ReturnInfo {
            code: true,
            step: self.step_slow(ra - 1),
        };
        // As in `step`: newest first.
        self.recent_returns[set | 1] = self.recent_returns[set];
        self.recent_returns[set] = (ra, info);
        info
    }

    #[inline(never)]
    fn step_slow(&mut self, pc: u64) -> Option<Step> {
        if let Some(s) = self.steps.get(&pc) {
            return *s;
        }
        let step = self.lookup_step(pc);
        if self.steps.len() >= CACHE_LIMIT {
            self.steps.clear();
        }
        self.steps.insert(pc, step);
        step
    }

    fn lookup_step(&mut self, pc: u64) -> Option<Step> {
        let e = self.find(pc)?.clone();
        let offset = pc - e.start + e.offset;
        let cfi = self
            .cfi
            .entry(e.path.clone())
            .or_insert_with(|| Cfi::load(&e.path))
            .as_ref()?;
        cfi.rule(cfi.svma(offset)?)
    }

    /// The frames of a thread stopped with registers `ip`, `sp`, `bp`:
    /// unwound with each object's call frame information (`.eh_frame`),
    /// falling back to the frame-pointer chain where an object has none.
    /// `read` reads a word of the thread's memory. At most `max` frames,
    /// innermost first.
    pub fn walk(
        &mut self,
        ip: u64,
        sp: u64,
        bp: u64,
        max: usize,
        read: impl FnMut(u64) -> Option<u64>,
    ) -> Vec<u64> {
        let mut out = vec![0; max.max(1)];
        let (n, _) = self.unwind(ip, sp, bp, &mut out, true, read);
        out.truncate(n);
        out
    }

    /// As [`walk`](Self::walk), with call frame information only: `None`
    /// when a frame could not be unwound by it before the outermost frame
    /// or `max` frames (no rule for an instruction, a rule the walk does
    /// not understand, an unreadable or implausible step): the caller then
    /// asks a complete unwinder. What it returns is what a CFI unwinder
    /// returns, frame pointers or not.
    pub fn walk_cfi(
        &mut self,
        ip: u64,
        sp: u64,
        bp: u64,
        max: usize,
        read: impl FnMut(u64) -> Option<u64>,
    ) -> Option<Vec<u64>> {
        let mut out = vec![0; max.max(1)];
        let n = self.walk_cfi_into(ip, sp, bp, &mut out, read)?;
        out.truncate(n);
        Some(out)
    }

    /// As [`walk_cfi`](Self::walk_cfi), into `out` (at most its length in
    /// frames, at least one): the count written. No allocation once the
    /// steps of the walk's instructions are known (the in-process front
    /// end captures a call site per VFIO call).
    pub fn walk_cfi_into(
        &mut self,
        ip: u64,
        sp: u64,
        bp: u64,
        out: &mut [u64],
        read: impl FnMut(u64) -> Option<u64>,
    ) -> Option<usize> {
        let (n, complete) = self.unwind(ip, sp, bp, out, false, read);
        complete.then_some(n)
    }

    /// As [`walk_cfi_into`](Self::walk_cfi_into), also when the walk
    /// stops at a frame it cannot unwind: the count written, and whether
    /// the walk was complete (the frames written are right either way; an
    /// incomplete walk lacks the outer ones).
    pub fn walk_cfi_frames_into(
        &mut self,
        ip: u64,
        sp: u64,
        bp: u64,
        out: &mut [u64],
        read: impl FnMut(u64) -> Option<u64>,
    ) -> (usize, bool) {
        self.unwind(ip, sp, bp, out, false, read)
    }

    /// The walk into `out`: the frames written, and whether it ended where
    /// the stack ends (or at `out`'s length) rather than at a frame it
    /// could not unwind.
    fn unwind(
        &mut self,
        ip: u64,
        sp: u64,
        bp: u64,
        out: &mut [u64],
        frame_pointers: bool,
        mut read: impl FnMut(u64) -> Option<u64>,
    ) -> (usize, bool) {
        let Some(first) = out.first_mut() else {
            return (0, false);
        };
        *first = ip;
        let mut n = 1;
        let (mut pc, mut sp, mut bp) = (ip, sp, bp);
        // `pc` is where its thread is (the first frame, a frame a signal
        // interrupted), not a return address.
        let mut exact = true;
        // The step at `pc`'s call when `pc` is a return address whose
        // step was looked up with it.
        let mut known: Option<Option<Step>> = None;
        while n < out.len() {
            // A return address points after its call: look up the call.
            let step = match known.take() {
                Some(step) => step,
                None if exact => self.step(pc),
                None => self.step(pc - 1),
            };
            if step.is_none() && !exact {
                if let Some((ip, caller_sp, caller_bp)) = signal_frame(pc, sp, &mut read) {
                    // The interrupted frame: on another stack, maybe.
                    if ip == 0 || !self.is_code(ip) {
                        return (n, false);
                    }
                    out[n] = ip;
                    n += 1;
                    (pc, sp, bp, exact) = (ip, caller_sp, caller_bp, true);
                    continue;
                }
            }
            exact = false;
            let (ra, cfa, caller_bp) = match step {
                Some(Step::Outermost) => return (n, true),
                Some(Step::Caller(r)) => {
                    let base = match r.cfa_register {
                        7 => sp,
                        6 => bp,
                        _ => return (n, false),
                    };
                    let cfa = base.wrapping_add_signed(r.cfa_offset.into());
                    let Some(ra) = read(cfa.wrapping_add_signed(r.ra_offset.into())) else {
                        return (n, false);
                    };
                    let caller_bp = match r.rbp_offset {
                        Some(off) => match read(cfa.wrapping_add_signed(off.into())) {
                            Some(v) => v,
                            None if frame_pointers => 0,
                            None => return (n, false),
                        },
                        None => bp,
                    };
                    (ra, cfa, caller_bp)
                }
                None if !frame_pointers => return (n, false),
                None => {
                    if bp < sp || !bp.is_multiple_of(8) {
                        break;
                    }
                    let (Some(caller_bp), Some(ra)) = (read(bp), read(bp.wrapping_add(8))) else {
                        break;
                    };
                    (ra, bp.wrapping_add(16), caller_bp)
                }
            };
            // A thread's first frame may return to 0.
            if ra == 0 {
                return (n, true);
            }
            // The stack unwinds upwards; anything else is a broken chain.
            if cfa <= sp {
                return (n, false);
            }
            let info = self.return_info(ra);
            if !info.code {
                return (n, false);
            }
            known = Some(info.step);
            out[n] = ra;
            n += 1;
            (pc, sp, bp) = (ra, cfa, caller_bp);
        }
        (n, true)
    }
}

/// When `pc` is x86-64 Linux's signal return trampoline (`mov $15, %rax;
/// syscall`: glibc's `__restore_rt`, where a handler returns), whose call
/// frame information is an expression the walk does not evaluate: the
/// interrupted frame's `rip`, `rsp` and `rbp` from the `ucontext` the
/// kernel put at `sp` (the handler's CFA), in `uc_mcontext.gregs` (at 40;
/// `REG_RIP` 16, `REG_RSP` 15, `REG_RBP` 10, as libgcc's unwinder reads
/// them).
fn signal_frame(
    pc: u64,
    sp: u64,
    read: &mut impl FnMut(u64) -> Option<u64>,
) -> Option<(u64, u64, u64)> {
    const MOV_RAX_15_SYSCALL: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05];
    let head = read(pc)?.to_le_bytes();
    let tail = read(pc.checked_add(8)?)?.to_le_bytes();
    if head[..] != MOV_RAX_15_SYSCALL[..8] || tail[0] != MOV_RAX_15_SYSCALL[8] {
        return None;
    }
    let gregs = sp.checked_add(40)?;
    let reg = |n: u64| gregs.checked_add(8 * n);
    Some((read(reg(16)?)?, read(reg(15)?)?, read(reg(10)?)?))
}

// ---- symbolization --------------------------------------------------------

/// One frame, symbolized.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameText {
    /// Function name, if known.
    pub function: Option<String>,
    /// Source file and line, if the object has line information.
    pub source: Option<String>,
    /// The object file and offset (`binary+0x1234`).
    pub object: String,
}

impl std::fmt::Display for FrameText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.function, &self.source) {
            (Some(func), Some(src)) => write!(f, "{func} ({src})"),
            (Some(func), None) => write!(f, "{func} ({})", self.object),
            (None, Some(src)) => write!(f, "{} ({src})", self.object),
            (None, None) => f.write_str(&self.object),
        }
    }
}

struct ObjectInfo {
    loader: Option<addr2line::Loader>,
    /// PT_LOAD segments: file offset, file size, virtual address.
    segments: Vec<(u64, u64, u64)>,
}

/// Symbolizes call sites from the objects' ELF symbols and DWARF lines
/// (each object loaded once, on first use).
#[derive(Default)]
pub struct Symbolizer {
    objects: HashMap<Arc<str>, Option<ObjectInfo>>,
}

/// Objects whose frames are not the program's own: libc's wrappers, the
/// dynamic loader, this preload library.
fn is_runtime_object(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    [
        "libc.so",
        "libc-",
        "ld-linux",
        "ld64.so",
        "libsoftvfio_preload",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// Functions that are libc's system-call wrappers (in a static program they
/// are in the program's own file) or its start-up code.
fn is_runtime_function(name: &str) -> bool {
    let name = name.trim_start_matches('_');
    matches!(
        name,
        "ioctl"
            | "syscall"
            | "munmap"
            | "mremap"
            | "mmap"
            | "mmap64"
            | "open"
            | "open64"
            | "openat"
            | "openat64"
            | "close"
            | "libc_start_call_main"
            | "libc_start_main"
            | "libc_start_main_impl"
            | "start"
    )
}

impl Symbolizer {
    /// A symbolizer with nothing loaded.
    pub fn new() -> Self {
        Self::default()
    }

    fn object(&mut self, path: &Arc<str>) -> Option<&ObjectInfo> {
        self.objects
            .entry(path.clone())
            .or_insert_with(|| load_object(path))
            .as_ref()
    }

    /// One frame; `return_address` looks up the call instruction before it.
    pub fn frame(&mut self, f: &Frame, return_address: bool) -> FrameText {
        let Some(path) = &f.object else {
            return FrameText {
                function: None,
                source: None,
                object: format!("{:#x}", f.addr),
            };
        };
        let short = path.rsplit('/').next().unwrap_or(path).to_string();
        let object = format!("{short}+{:#x}", f.offset);
        let mut text = FrameText {
            function: None,
            source: None,
            object,
        };
        let Some(info) = self.object(path) else {
            return text;
        };
        let Some(svma) = info
            .segments
            .iter()
            .find(|(off, size, _)| f.offset >= *off && f.offset - off < *size)
            .map(|(off, _, vaddr)| vaddr + (f.offset - off))
        else {
            return text;
        };
        let probe = if return_address {
            svma.saturating_sub(1)
        } else {
            svma
        };
        let Some(loader) = &info.loader else {
            return text;
        };
        if let Ok(mut frames) = loader.find_frames(probe) {
            // The innermost (inlined) frame names what ran.
            if let Ok(Some(fr)) = frames.next() {
                text.function = fr
                    .function
                    .as_ref()
                    .and_then(|n| n.demangle().ok().map(|c| c.into_owned()));
                if let Some(loc) = fr.location {
                    if let (Some(file), Some(line)) = (loc.file, loc.line) {
                        text.source = Some(format!("{file}:{line}"));
                    }
                }
            }
        }
        if text.function.is_none() {
            text.function = loader.find_symbol(probe).map(str::to_owned);
        }
        text
    }

    /// The program's own frames of `site`, innermost first: frames in libc,
    /// the loader and the preload library, and libc's wrappers linked into
    /// a static program, are left out.
    pub fn program_frames(&mut self, site: &CallSite) -> Vec<FrameText> {
        let mut out = Vec::new();
        for (i, f) in site.frames.iter().enumerate() {
            if f.object.as_deref().is_some_and(is_runtime_object) {
                continue;
            }
            let t = self.frame(f, i > 0);
            if t.function.as_deref().is_some_and(is_runtime_function) {
                continue;
            }
            out.push(t);
        }
        out
    }

    /// `f (file:line) <- g (file:line)`: at most `depth` program frames, or
    /// "an unknown call site".
    pub fn describe(&mut self, site: Option<&CallSite>, depth: usize) -> String {
        let frames = site.map(|s| self.program_frames(s)).unwrap_or_default();
        if frames.is_empty() {
            return "an unknown call site".to_string();
        }
        frames
            .iter()
            .take(depth.max(1))
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(" <- ")
    }
}

fn load_object(path: &str) -> Option<ObjectInfo> {
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let segments = load_segments(&file);
    Some(ObjectInfo {
        loader: addr2line::Loader::new(path).ok(),
        segments,
    })
}

// ---- the report -----------------------------------------------------------

/// One DMA fault, explained.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FaultFinding {
    /// Order in the fault log.
    pub seq: u64,
    /// Device name (BDF).
    pub device: String,
    /// Requester id.
    pub rid: u16,
    /// Faulting IOVA.
    pub iova: u64,
    /// "read" or "write" (the device's access).
    pub access: String,
    /// Bytes of the transfer, where the model says.
    pub len: Option<u64>,
    /// The IOMMU's reason.
    pub reason: String,
    /// The class: "use-after-unmap", "never-mapped", "read-only",
    /// "write-only", "stale-mapping", "owner-killed" (the memory's owner
    /// was killed before its pages could be kept), "memory-gone",
    /// "device-clamp", "mapped".
    pub class: String,
    /// The register write that started the DMA, where the model knows it.
    pub started_by: Option<String>,
    /// The explanation, one line each.
    pub lines: Vec<String>,
}

/// A stale mapping: memory behind a live mapping went away.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StaleFinding {
    /// `munmap`, `mremap`, `mmap(MAP_FIXED)`.
    pub syscall: String,
    /// User range affected.
    pub vaddr: u64,
    /// Bytes.
    pub len: u64,
    /// The mapping's IOVA.
    pub iova: u64,
    /// Where the program made the call.
    pub site: String,
    /// Where it mapped the memory for DMA.
    pub map_site: String,
    /// The report line.
    pub text: String,
}

/// Something the program left behind at exit.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LeakFinding {
    /// "mapping", "device", "interrupts", "container", "group",
    /// "iommufd".
    pub kind: String,
    /// What.
    pub what: String,
    /// Where the program created it.
    pub site: String,
    /// The process that created it, where the front end tells processes
    /// apart (then the leak is also in that process's section).
    #[serde(default)]
    pub pid: Option<i32>,
}

/// A device doing something its registers make it do, not the program.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeviceFinding {
    /// Device name.
    pub device: String,
    /// What it did.
    pub text: String,
}

/// One process of a multi-process run (a fork child, an exec'd image):
/// the history of what it mapped and unmapped, and what it left behind.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProcessFinding {
    /// Its pid.
    pub pid: i32,
    /// Its program (an exec'd image is a process of its own).
    pub program: String,
    /// How it ended, where the front end saw it ("exited with status 0",
    /// "killed by SIGKILL"); none for an image an exec replaced or a
    /// process still running at the report.
    #[serde(default)]
    pub end: Option<String>,
    /// Per IOVA region it touched, its events there, one line each.
    pub history: Vec<String>,
    /// What it created and left open at exit (also in the report's
    /// `leaks`).
    pub leaks: Vec<LeakFinding>,
}

/// Everything the sanitizer found in a run (`--report-json` writes it).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SanitizerReport {
    /// DMA faults with their history.
    pub faults: Vec<FaultFinding>,
    /// Stale mappings.
    pub stale: Vec<StaleFinding>,
    /// Leaks at exit.
    pub leaks: Vec<LeakFinding>,
    /// Device-side behaviour.
    pub device: Vec<DeviceFinding>,
    /// Per process, where the front end tells processes apart (trace
    /// mode): each one's history and leaks.
    #[serde(default)]
    pub processes: Vec<ProcessFinding>,
}

impl SanitizerReport {
    /// Findings that make `--sanitize=strict` fail: faults, stale
    /// mappings, leaks.
    pub fn errors(&self) -> usize {
        self.faults.len() + self.stale.len() + self.leaks.len()
    }
}

/// What a program left open, recorded at exit by a front end with the call
/// sites the sanitizer kept.
#[derive(Debug, Clone)]
pub struct LeakRecord {
    /// "mapping", "device", "interrupts", "container", "group",
    /// "iommufd".
    pub kind: &'static str,
    /// What.
    pub what: String,
    /// Where it was created.
    pub site: Option<Arc<CallSite>>,
    /// The process that created it (a [`Sanitizer::note_process`] index).
    pub process: Option<u32>,
}

/// The leaks of `obj` (the front end's object `key`), which the program had
/// open when it ended: its mappings (a container) or its interrupt
/// eventfds (a device), each with the call site that made it.
pub fn leaks_of(s: &Sanitizer, key: u64, obj: &softvfio::frontend::FileObject) -> Vec<LeakRecord> {
    use softvfio::frontend::FileObject;
    let mut out = Vec::new();
    let rec = s.object(key);
    match obj {
        FileObject::Container(c) => {
            let snap = c.container.snapshot();
            if let Some(r) = &rec {
                // Open with nothing mapped is a leak too (a file the program
                // forgot), as a device left open is.
                let what = if snap.mappings.is_empty() {
                    "container still open".to_string()
                } else {
                    format!(
                        "container still open with {} mapping(s)",
                        snap.mappings.len()
                    )
                };
                out.push(LeakRecord {
                    kind: "container",
                    what,
                    site: r.site.clone(),
                    process: r.process,
                });
            }
            for m in &snap.mappings {
                let map = s
                    .region(c.container.id(), m.iova)
                    .and_then(|r| r.last_map().map(|e| (e.site.clone(), e.process)));
                let (site, process) = map.unwrap_or_default();
                out.push(LeakRecord {
                    kind: "mapping",
                    what: format!(
                        "IOVA {:#x} size {} (vaddr {:#x}, {} page(s) pinned and accounted)",
                        m.iova,
                        human_bytes(m.size),
                        m.vaddr,
                        m.locked_pages
                    ),
                    site,
                    process,
                });
            }
        }
        FileObject::Device(_) | FileObject::Cdev(_) => {
            if let Some(r) = rec {
                out.push(LeakRecord {
                    kind: "device",
                    what: format!("{} still open", r.what),
                    site: r.site.clone(),
                    process: r.process,
                });
                if let Some((irqs, site)) = r.irqs {
                    out.push(LeakRecord {
                        kind: "interrupts",
                        what: format!("{}: {irqs} still installed", r.what),
                        site,
                        process: r.process,
                    });
                }
            }
        }
        FileObject::Iommufd(ctx) => {
            let snap = ctx.snapshot();
            let areas: usize = snap.ioas.iter().map(|i| i.areas.len()).sum();
            if let Some(r) = &rec {
                // Open with nothing mapped is a leak too (a file the program
                // forgot), as a device left open is.
                let what = if areas > 0 {
                    format!("iommufd still open with {areas} area(s)")
                } else {
                    "iommufd still open".to_string()
                };
                out.push(LeakRecord {
                    kind: "iommufd",
                    what,
                    site: r.site.clone(),
                    process: r.process,
                });
            }
            for ioas in &snap.ioas {
                for a in &ioas.areas {
                    let map = s
                        .region(ctx.history_key(ioas.id), a.iova)
                        .and_then(|r| r.last_map().map(|e| (e.site.clone(), e.process)));
                    let (site, process) = map.unwrap_or_default();
                    out.push(LeakRecord {
                        kind: "mapping",
                        what: format!(
                            "IOAS {} IOVA {:#x} size {} (uptr {:#x}, {}, {} page(s) accounted)",
                            ioas.id,
                            a.iova,
                            human_bytes(a.len()),
                            a.uptr,
                            if a.pinned { "pinned" } else { "not pinned" },
                            a.charged
                        ),
                        site,
                        process,
                    });
                }
            }
        }
        // A fault queue holds no memory and no interrupt: nothing leaks.
        FileObject::Fault(_) => {}
        FileObject::Group(_) => {
            if let Some(r) = rec {
                out.push(LeakRecord {
                    kind: "group",
                    what: format!("{} still open", r.what),
                    site: r.site,
                    process: r.process,
                });
            }
        }
    }
    out
}

/// Milliseconds since the sanitizer started, for people.
fn ms(s: &Sanitizer, at: Instant) -> String {
    let d = at.saturating_duration_since(s.start());
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn prot_text(p: softvfio::iommu::Prot) -> &'static str {
    match (p.read, p.write) {
        (true, true) => "rw",
        (true, false) => "r (read-only)",
        (false, true) => "w (write-only)",
        (false, false) => "none",
    }
}

/// One event of a region's history; `mapped` is the time of the map it
/// follows, shown as "+N ms" (the time since it was mapped).
fn event_line(s: &Sanitizer, sym: &mut Symbolizer, e: &Event, mapped: Option<Instant>) -> String {
    let site = sym.describe(e.site.as_deref(), 3);
    let at = match (e.kind, mapped) {
        (EventKind::Map { .. }, _) | (_, None) => ms(s, e.at),
        (_, Some(m)) => format!(
            "{} (+{:.3} ms after the map)",
            ms(s, e.at),
            e.at.saturating_duration_since(m).as_secs_f64() * 1e3
        ),
    };
    let call = e.call();
    match e.kind {
        EventKind::Map { vaddr, size, prot } => format!(
            "mapped at {at} by {call} (vaddr {vaddr:#x}, size {}, prot {}) from {site}",
            human_bytes(size),
            prot_text(prot)
        ),
        EventKind::Unmap => format!("unmapped at {at} by {call} from {site}"),
        EventKind::InvalidateVaddr => {
            format!("vaddr invalidated at {at} by UNMAP_DMA(FLAG_VADDR) from {site}")
        }
        EventKind::UpdateVaddr { vaddr } => {
            format!("vaddr updated to {vaddr:#x} at {at} by MAP_DMA(FLAG_VADDR) from {site}")
        }
        EventKind::Released if e.via == Via::Type1 => {
            format!("unmapped at {at} when the container was released")
        }
        EventKind::Released => format!("unmapped at {at} when the iommufd was closed"),
        EventKind::Stale { cause, vaddr, len } => format!(
            "its memory {vaddr:#x}-{:#x} went away at {at} by {} from {site} while still mapped for DMA",
            vaddr.saturating_add(len).saturating_sub(1),
            cause.syscall()
        ),
    }
}

fn region_brief(s: &Sanitizer, sym: &mut Symbolizer, r: &RegionView) -> String {
    let from = r
        .last_map()
        .map(|e| {
            format!(
                ", mapped at {} from {}",
                ms(s, e.at),
                sym.describe(e.site.as_deref(), 2)
            )
        })
        .unwrap_or_default();
    let state = if r.mapped { "" } else { ", since unmapped" };
    format!(
        "IOVA {:#x}-{:#x} ({}{from}{state})",
        r.iova,
        r.iova.saturating_add(r.size).saturating_sub(1),
        human_bytes(r.size)
    )
}

/// Explains one fault.
fn explain_fault(
    s: &Sanitizer,
    sym: &mut Symbolizer,
    f: &soft_iommu::Fault,
    device: String,
) -> FaultFinding {
    let access = format!("{:?}", f.access).to_lowercase();
    let mut lines = Vec::new();
    let mut class = String::from("mapped");
    let started_by = f.origin.as_deref().map(|o| {
        let dir = if f.access == soft_iommu::Access::Write {
            "device buffer to RAM"
        } else {
            "RAM to device buffer"
        };
        format!(
            "{} DMA command register write ({:#x} <- {:#x}): {} bytes, {dir}, RAM address {:#x}",
            o.model, o.register, o.value, o.len, o.requested
        )
    });
    let mut clamped = false;
    if let Some(o) = f.origin.as_deref() {
        if let Some(mask) = o.mask {
            if o.requested != o.used {
                clamped = true;
                lines.push(format!(
                    "device behaviour: {} drives only the address bits of its DMA mask {mask:#x} ({} bits): the program programmed {:#x}, the device sent {:#x}",
                    o.model,
                    64 - mask.leading_zeros(),
                    o.requested,
                    o.used
                ));
            }
        }
    }
    match s.explain(f.iova, f.time) {
        IovaHistory::NeverMapped { nearest } => {
            class = "never-mapped".into();
            if nearest.is_empty() {
                lines.push(format!(
                    "IOVA {:#x} was never mapped; nothing was ever mapped",
                    f.iova
                ));
            } else {
                let near: Vec<String> = nearest.iter().map(|r| region_brief(s, sym, r)).collect();
                lines.push(format!(
                    "IOVA {:#x} was never mapped; nearest mappings: {}",
                    f.iova,
                    near.join("; ")
                ));
            }
        }
        IovaHistory::Known(regions) => {
            let r = &regions[0];
            let map = r.last_map();
            let stale = r.after_map(|k| matches!(k, EventKind::Stale { .. }));
            if !r.mapped {
                class = "use-after-unmap".into();
                lines.push(format!(
                    "DMA after unmap: IOVA {:#x} lies in IOVA {:#x}-{:#x} ({}), no longer mapped:",
                    f.iova,
                    r.iova,
                    r.iova.saturating_add(r.size).saturating_sub(1),
                    human_bytes(r.size)
                ));
            } else if let (Some(m), soft_iommu::FaultReason::NoWrite) = (map, f.reason) {
                class = "read-only".into();
                let _ = m;
                lines.push(format!(
                    "IOVA {:#x} is mapped read-only: the device wrote to it:",
                    f.iova
                ));
            } else if let (Some(_), soft_iommu::FaultReason::NoRead) = (map, f.reason) {
                class = "write-only".into();
                lines.push(format!(
                    "IOVA {:#x} is mapped write-only: the device read it",
                    f.iova
                ));
            } else if stale.is_some() {
                class = "stale-mapping".into();
            } else if f.reason == soft_iommu::FaultReason::MemoryError {
                // Mapped, and the IOMMU translated it: the memory behind
                // it refused. Whose was it, and is that process gone?
                let owner = r
                    .events
                    .iter()
                    .rev()
                    .find(|e| {
                        matches!(
                            e.kind,
                            EventKind::Map { .. } | EventKind::UpdateVaddr { .. }
                        )
                    })
                    .and_then(|e| e.process)
                    .and_then(|p| s.processes().get(p as usize).cloned());
                match owner {
                    Some(p) if p.end.is_some_and(|e| e.was_killed()) => {
                        class = "owner-killed".into();
                        lines.push(format!(
                            "IOVA {:#x} is mapped, but the memory behind it is gone: its owner, process {} ({}), was {} before its pinned pages could be kept (Linux keeps pinned pages past their process; softvfio keeps them only when it hears of the end while the memory is still there: docs/RELIABILITY.md)",
                            f.iova,
                            p.pid,
                            p.program,
                            p.end.map(|e| e.to_string()).unwrap_or_default()
                        ));
                    }
                    Some(p) => {
                        class = "memory-gone".into();
                        lines.push(format!(
                            "IOVA {:#x} is mapped, but the memory behind it could not be reached (its owner: process {} ({}){})",
                            f.iova,
                            p.pid,
                            p.program,
                            p.end.map(|e| format!(", {e}")).unwrap_or_default()
                        ));
                    }
                    None => {
                        class = "memory-gone".into();
                        lines.push(format!(
                            "IOVA {:#x} is mapped, but the memory behind it could not be reached",
                            f.iova
                        ));
                    }
                }
            }
            // The history of the region, oldest first.
            if r.dropped > 0 {
                lines.push(format!("({} older event(s) not kept)", r.dropped));
            }
            let last = r.events.last().map(|e| e.at);
            let mut mapped = None;
            for e in &r.events {
                if let EventKind::Map { .. } = e.kind {
                    mapped = Some(e.at);
                }
                lines.push(event_line(s, sym, e, mapped));
            }
            if let (false, Some(t)) = (r.mapped, last) {
                let ago = f.time.saturating_duration_since(t);
                lines.push(format!(
                    "the fault came {:.3} ms after the last event",
                    ago.as_secs_f64() * 1e3
                ));
            }
        }
    }
    if clamped && class != "mapped" {
        class = format!("device-clamp/{class}");
    } else if clamped {
        class = "device-clamp".into();
    }
    FaultFinding {
        seq: f.seq,
        device,
        rid: f.rid,
        iova: f.iova,
        access,
        len: f.origin.as_ref().map(|o| o.len),
        reason: f.reason.to_string(),
        class,
        started_by,
        lines,
    }
}

fn stale_finding(s: &Sanitizer, sym: &mut Symbolizer, r: &StaleReport) -> StaleFinding {
    let site = sym.describe(r.site.as_deref(), 3);
    let map_site = sym.describe(r.region.last_map().and_then(|e| e.site.as_deref()), 3);
    let mut text = format!(
        "stale mapping: {} of {:#x}-{:#x} at {} from {site}; IOVA {:#x} ({}) still maps it for DMA, mapped from {map_site}: devices reach pages the program no longer sees",
        r.cause.syscall(),
        r.vaddr,
        r.vaddr.saturating_add(r.len).saturating_sub(1),
        ms(s, r.at),
        r.region.iova,
        human_bytes(r.region.size),
    );
    // madvise: softvfio's answer differs from Linux's; say what a real
    // host would have done.
    if let Some(note) = r.cause.linux_note() {
        text.push_str(" (");
        text.push_str(note);
        text.push(')');
    }
    StaleFinding {
        syscall: r.cause.syscall().to_string(),
        vaddr: r.vaddr,
        len: r.len,
        iova: r.region.iova,
        site,
        map_site,
        text,
    }
}

/// The report of a run: every fault of the platform's IOMMU explained with
/// the history, the stale mappings seen, the leaks the front end found at
/// exit, and what devices did on their own (address clamps).
pub fn build_report(built: &BuiltPlatform, s: &Sanitizer, leaks: &[LeakRecord]) -> SanitizerReport {
    let mut sym = Symbolizer::new();
    let mut report = SanitizerReport::default();
    for f in built.iommu.faults() {
        let device = built
            .devices
            .iter()
            .find(|d| d.rid == Some(f.rid))
            .map(|d| d.name.clone())
            .unwrap_or_else(|| format!("rid {:#06x}", f.rid));
        report.faults.push(explain_fault(s, &mut sym, &f, device));
    }
    for r in s.stale_reports() {
        report.stale.push(stale_finding(s, &mut sym, &r));
    }
    let processes = s.processes();
    for l in leaks {
        report.leaks.push(LeakFinding {
            kind: l.kind.to_string(),
            what: l.what.clone(),
            site: sym.describe(l.site.as_deref(), 3),
            pid: l
                .process
                .and_then(|p| processes.get(p as usize))
                .map(|p| p.pid),
        });
    }
    report.processes = process_sections(s, &mut sym, leaks, &report.leaks);
    for d in &built.devices {
        if let Some(ioat) = &d.ioat {
            // The channel refuses what its registers do not allow (a
            // count over XFERCAP, an unknown operation) and halts on a DMA
            // the IOMMU faulted: the device's side of those errors.
            let snap = ioat.snapshot();
            for e in &snap.error_log {
                report.device.push(DeviceFinding {
                    device: d.name.clone(),
                    text: format!(
                        "{} halted its DMA channel (device behaviour: CHANERR set, the descriptor not carried out): {e}",
                        d.name
                    ),
                });
            }
        }
        let Some(edu) = &d.edu else { continue };
        let snap = edu.snapshot();
        if snap.stats.dma_clamps == 0 {
            continue;
        }
        let mut text = format!(
            "{} clamped {} DMA address(es) to its DMA mask {:#x} (device behaviour, not the program's)",
            d.name, snap.stats.dma_clamps, snap.registers.dma_mask
        );
        if let Some(line) = snap.log.iter().rev().find(|l| l.contains("clamping")) {
            let _ = write!(text, "; last: {line}");
        }
        report.device.push(DeviceFinding {
            device: d.name.clone(),
            text,
        });
    }
    report
}

/// The per-process sections: for each process the front end noted, its
/// events per region and its leaks (`found`: `leaks` as reported).
fn process_sections(
    s: &Sanitizer,
    sym: &mut Symbolizer,
    leaks: &[LeakRecord],
    found: &[LeakFinding],
) -> Vec<ProcessFinding> {
    let processes = s.processes();
    if processes.is_empty() {
        return Vec::new();
    }
    let regions = s.regions();
    (0u32..)
        .zip(&processes)
        .map(|(p, info)| {
            let history = regions
                .iter()
                .filter_map(|r| {
                    let events: Vec<String> = r
                        .events
                        .iter()
                        .filter(|e| e.process == Some(p))
                        .map(|e| event_line(s, sym, e, None))
                        .collect();
                    (!events.is_empty()).then(|| {
                        format!(
                            "IOVA {:#x}-{:#x} ({}): {}",
                            r.iova,
                            r.iova.saturating_add(r.size).saturating_sub(1),
                            human_bytes(r.size),
                            events.join("; ")
                        )
                    })
                })
                .collect();
            let leaks = leaks
                .iter()
                .zip(found)
                .filter(|(l, _)| l.process == Some(p))
                .map(|(_, f)| f.clone())
                .collect();
            ProcessFinding {
                pid: info.pid,
                program: info.program.clone(),
                end: info.end.map(|e| e.to_string()),
                history,
                leaks,
            }
        })
        .collect()
}

/// The page-rounded range `[start, end)` Linux's `madvise(addr, len, _)`
/// walks, or `None` when it walks nothing: Linux 6.1's `do_madvise` answers
/// EINVAL up front for an unaligned `addr`, a `len` that wraps when
/// rounded up to pages, or a range that runs past the end of the address
/// space, and 0 for `len == 0`, before looking at any mapping.
pub fn madvise_range(addr: u64, len: u64) -> Option<(u64, u64)> {
    if !addr.is_multiple_of(PAGE) || len == 0 {
        return None;
    }
    let len = len.checked_next_multiple_of(PAGE)?;
    let end = addr.checked_add(len)?;
    Some((addr, end))
}

/// The page size of Linux's madvise checks (x86-64).
const PAGE: u64 = 4096;

/// The pieces of `[addr, addr + len)` whose pages went away on Linux when
/// the program's `madvise(addr, len, advice)` (advice of `cause`) answered
/// `errno` under softvfio (0: success) in process `pid` (`None`: this
/// one). Nothing when Linux walks no mapping ([`madvise_range`]). On
/// success the whole range went (the walk met no mapping it refuses). On
/// an error, only if the walk got as far as the range's mappings: EINVAL is
/// the pin's mlock refusing what Linux does, unless the program locks
/// memory itself (`own_locks`: then Linux may refuse it too, and nothing
/// is reported); for `MADV_REMOVE`, ENOMEM (a hole) and EACCES (a mapping
/// of another kind) also come from the walk. What the walk took is then
/// read from `/proc/<pid>/maps` ([`madvise_walk_in`]); nothing when the
/// maps cannot be read. `device(start, end)` is the first address of
/// `[start, end)` in a BAR mapping softvfio emulates (anonymous memory in
/// the maps, which the kernel may merge with a neighbouring anonymous
/// mapping into one line; a `VM_PFNMAP` mapping on Linux, where the walk
/// stops).
pub fn madvise_taken(
    pid: Option<i32>,
    cause: StaleCause,
    addr: u64,
    len: u64,
    errno: i32,
    own_locks: bool,
    device: &dyn Fn(u64, u64) -> Option<u64>,
) -> Vec<(u64, u64)> {
    let Some((start, end)) = madvise_range(addr, len) else {
        return Vec::new();
    };
    let walked = match errno {
        0 => true,
        libc::EINVAL => !own_locks,
        libc::ENOMEM | libc::EACCES => cause == StaleCause::MadvRemove,
        _ => false,
    };
    if !walked {
        return Vec::new();
    }
    let path = match pid {
        Some(p) => format!("/proc/{p}/maps"),
        None => "/proc/self/maps".to_string(),
    };
    // On success the real walk refused no mapping of the range; the maps
    // still say which of it is hugetlb memory (Linux 6.1 drops whole huge
    // pages only: the end rounded down), so they are read then too.
    match std::fs::read_to_string(path) {
        Ok(maps) => madvise_walk_in(&maps, cause, start, end, device),
        Err(_) if errno == 0 && cause != StaleCause::MadvRemove => vec![(start, end - start)],
        Err(_) => Vec::new(),
    }
}

/// The huge page size of a hugetlb mapping named `name` in the maps
/// (`None`: not hugetlb memory): anonymous hugetlb memory
/// (`/anon_hugepage`, `MAP_HUGETLB`) is taken to have the default huge
/// page size (`Hugepagesize` in `/proc/meminfo`; a `MAP_HUGE_1GB` mapping
/// is not told apart), a file on a hugetlbfs mount that mount's
/// `pagesize` (`/proc/self/mountinfo`).
fn hugetlb_page_size(name: &str) -> Option<u64> {
    if name.starts_with("/anon_hugepage") {
        return default_huge_page_size();
    }
    if !name.starts_with('/') {
        return None;
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut r = right.split_ascii_whitespace();
            (r.next()? == "hugetlbfs").then_some(())?;
            let options = r.nth(1).unwrap_or("");
            let point = left.split_ascii_whitespace().nth(4)?;
            let inside = name.strip_prefix(point)?;
            (inside.starts_with('/') || point == "/").then_some(())?;
            let size = options
                .split(',')
                .find_map(|o| o.strip_prefix("pagesize="))
                .and_then(parse_size)
                .or_else(default_huge_page_size)?;
            Some((point.len(), size))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, size)| size)
}

/// `2M`, `1G`, `2048k` in bytes (`None` for anything else).
fn parse_size(text: &str) -> Option<u64> {
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return None,
    };
    n.checked_shl(shift)
}

/// The system's default huge page size (`Hugepagesize` in
/// `/proc/meminfo`).
fn default_huge_page_size() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("Hugepagesize:"))?;
    let kib: u64 = line.split_ascii_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// What Linux's walk over the mappings of `[start, end)` (page-aligned)
/// takes away for the advice of `cause`, by the text of a maps file (its
/// lines are in address order, as the kernel writes them). Linux skips a
/// hole (answering ENOMEM at the end) and stops at the first mapping the
/// advice refuses: what lies before it went, nothing after it did
/// (tests-oracle/kernel-6.1-procmodel-madvise-spans.txt).
///
/// `MADV_REMOVE` punches the pages of each shared writable mapping (`rw?s`)
/// out of the object behind it; it stops at a mapping of another kind
/// (EINVAL for private anonymous memory, EACCES for a read-only or private
/// file mapping) and at one whose object cannot be punched (`vfs_fallocate`:
/// ENODEV for a device or anonymous inode, [`unpunchable`]).
/// `MADV_DONTNEED` stops at a mapping of raw page frames (`VM_PFNMAP`:
/// EINVAL, [`frame_mapping`], or a BAR mapping softvfio emulates: `device`
/// of the line's part in the range, anywhere in it: what lies before the
/// BAR went). Memory the program locked is refused too, which the maps do
/// not show (the caller reports nothing then).
fn madvise_walk_in(
    maps: &str,
    cause: StaleCause,
    start: u64,
    end: u64,
    device: &dyn Fn(u64, u64) -> Option<u64>,
) -> Vec<(u64, u64)> {
    let mut taken = Vec::new();
    for l in maps.lines() {
        let mut f = l.split_ascii_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let name = mapping_name(l);
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) else {
            continue;
        };
        if hi <= start || hi <= lo {
            continue;
        }
        if lo >= end {
            break;
        }
        let p = perms.as_bytes();
        let from = lo.max(start);
        let refused = if cause == StaleCause::MadvRemove {
            p.get(1) != Some(&b'w') || p.get(3) != Some(&b's') || unpunchable(name)
        } else {
            frame_mapping(name)
        };
        if refused {
            break;
        }
        let mut to = hi.min(end);
        // hugetlb memory (Linux 6.1, `madvise_dontneed_free_valid_vma`):
        // EINVAL unless the walk reaches it at a huge page boundary, and
        // only whole huge pages go (the end rounded down).
        if cause != StaleCause::MadvRemove {
            if let Some(huge) = hugetlb_page_size(name).filter(|h| h.is_power_of_two()) {
                if !from.is_multiple_of(huge) {
                    break;
                }
                to &= !(huge - 1);
                if to <= from {
                    break;
                }
            }
        }
        if let Some(bar) = device(from, to) {
            if bar > from {
                taken.push((from, bar - from));
            }
            break;
        }
        taken.push((from, to - from));
    }
    taken
}

/// The name of the mapping of a maps line: what follows its five fields
/// (range, permissions, offset, device, inode); it may hold spaces.
fn mapping_name(line: &str) -> &str {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        rest = rest.find(' ').map_or("", |at| &rest[at..]);
    }
    rest.trim()
}

/// Whether the object behind a shared mapping named `name` (in the maps
/// file) is one `fallocate(FALLOC_FL_PUNCH_HOLE)` refuses: a device file
/// (ENODEV; shared `/dev/zero` memory is shmem, and `/dev/shm` and
/// `/dev/hugepages` hold file systems that punch) or an anonymous inode
/// (ENODEV: a VFIO device file's BAR mapping, `anon_inode:[vfio-device]`).
/// A regular file on a file system without hole punching (EOPNOTSUPP) is
/// not seen here (docs/SANITIZER.md).
fn unpunchable(name: &str) -> bool {
    name.starts_with("anon_inode:") || device_file(name)
}

/// Whether a mapping named `name` maps raw page frames (`VM_PFNMAP`), which
/// `MADV_DONTNEED` refuses: the vDSO's data pages (`[vvar]`, and
/// `[vvar_vclock]` on later kernels), a VFIO BAR (`anon_inode:[vfio-device]`)
/// and, taken as such, any mapping of a device file (`/dev/mem`, a
/// driver's registers).
fn frame_mapping(name: &str) -> bool {
    name.starts_with("[vvar") || name == "anon_inode:[vfio-device]" || device_file(name)
}

/// A file under `/dev` that is a device, not memory: not `/dev/zero`
/// (shared: shmem; private: anonymous) nor the memory file systems
/// mounted at `/dev/shm` and `/dev/hugepages`.
fn device_file(name: &str) -> bool {
    name.starts_with("/dev/")
        && !name.starts_with("/dev/zero")
        && !name.starts_with("/dev/shm/")
        && !name.starts_with("/dev/hugepages/")
}
#[cfg(test)]
mod shared_tests {
    use super::{madvise_range, madvise_taken, madvise_walk_in, mapping_name, StaleCause};

    const MAPS: &str = "7f0000000000-7f0000002000 rw-s 00000000 00:01 1234 /memfd:x (deleted)\n\
                        7f0000002000-7f0000003000 rw-p 00000000 00:00 0\n\
                        7f0000003000-7f0000004000 r--s 00000000 00:01 1235 /dev/shm/y\n\
                        7f0000005000-7f0000006000 rw-s 00000000 00:01 1236 /dev/zero (deleted)\n\
                        7f0000006000-7f0000007000 rw-s 00000000 00:01 1237 /dev/zero (deleted)\n\
                        7f0000007000-7f0000008000 rw-p 00000000 00:00 0\n";

    const BASE: u64 = 0x7f00_0000_0000;
    const PAGE: u64 = 0x1000;

    /// What Linux's walk takes for `madvise(addr, len, cause)` on `maps`.
    fn walk(maps: &str, cause: StaleCause, addr: u64, len: u64) -> Vec<(u64, u64)> {
        madvise_range(addr, len)
            .map(|(start, end)| madvise_walk_in(maps, cause, start, end, &|_, _| None))
            .unwrap_or_default()
    }

    /// What Linux's walk takes: shared writable mappings up to the first
    /// mapping of another kind, holes skipped, clipped to the range.
    #[test]
    fn madv_remove_takes_shared_writable_pages_up_to_another_kind() {
        let remove = |addr, len| walk(MAPS, StaleCause::MadvRemove, addr, len);
        // Within one shared writable mapping.
        assert_eq!(remove(BASE, PAGE), [(BASE, PAGE)]);
        assert_eq!(remove(BASE + PAGE, 1), [(BASE + PAGE, PAGE)]);
        // Shared, then private: the shared part only.
        assert_eq!(remove(BASE, 3 * PAGE), [(BASE, 2 * PAGE)]);
        // Starts in private or read-only shared memory: nothing.
        assert_eq!(remove(BASE + 2 * PAGE, 4 * PAGE), []);
        assert_eq!(remove(BASE + 3 * PAGE, PAGE), []);
        // A hole, then two shared mappings, then private memory.
        assert_eq!(
            remove(BASE + 4 * PAGE, 4 * PAGE),
            [(BASE + 5 * PAGE, PAGE), (BASE + 6 * PAGE, PAGE)]
        );
        // Nothing mapped at all.
        assert_eq!(remove(BASE + 0x10_0000, PAGE), []);
        assert_eq!(
            walk("garbage\n- rw-s\n", StaleCause::MadvRemove, 0, PAGE),
            []
        );
    }

    /// `vfs_fallocate` refuses to punch a device file or an anonymous
    /// inode (ENODEV): MADV_REMOVE stops there though the mapping is
    /// shared and writable; shmem behind `/dev/zero`, tmpfs at `/dev/shm`
    /// and hugetlbfs at `/dev/hugepages` punch.
    #[test]
    fn madv_remove_stops_at_a_mapping_that_cannot_be_punched() {
        let maps = |second: &str| {
            format!(
                "7f0000000000-7f0000001000 rw-s 00000000 00:01 1 /memfd:a (deleted)\n\
                 7f0000001000-7f0000002000 rw-s 00000000 00:05 2   {second}\n\
                 7f0000002000-7f0000003000 rw-s 00000000 00:01 3 /memfd:b (deleted)\n"
            )
        };
        for stop in [
            "anon_inode:[vfio-device]",
            "/dev/vfio/devices/vfio0",
            "/dev/mem",
            "/dev/fb0",
        ] {
            assert_eq!(
                walk(&maps(stop), StaleCause::MadvRemove, BASE, 3 * PAGE),
                [(BASE, PAGE)],
                "{stop}"
            );
        }
        for goes in [
            "/dev/zero (deleted)",
            "/dev/shm/ring",
            "/dev/hugepages/buf",
            "/tmp/file with spaces",
        ] {
            assert_eq!(
                walk(&maps(goes), StaleCause::MadvRemove, BASE, 3 * PAGE),
                [(BASE, PAGE), (BASE + PAGE, PAGE), (BASE + 2 * PAGE, PAGE)],
                "{goes}"
            );
        }
    }

    /// MADV_DONTNEED zaps every kind of mapping up to one of raw page
    /// frames (`VM_PFNMAP`: EINVAL), which it does not pass.
    #[test]
    fn madv_dontneed_stops_at_a_frame_mapping() {
        let maps = "7f0000000000-7f0000001000 rw-p 00000000 00:00 0\n\
                    7f0000001000-7f0000002000 r--p 00000000 08:01 7 /usr/lib/libc.so.6\n\
                    7f0000003000-7f0000004000 rw-s 00000000 00:05 8 /dev/mem\n\
                    7f0000004000-7f0000005000 rw-p 00000000 00:00 0\n\
                    7ffff7fc1000-7ffff7fc5000 r--p 00000000 00:00 0 [vvar]\n\
                    7ffff7fc5000-7ffff7fc7000 r-xp 00000000 00:00 0 [vdso]\n";
        let dontneed = |addr, len| walk(maps, StaleCause::MadvDontneed, addr, len);
        // Anonymous and file memory, a hole, then /dev/mem.
        assert_eq!(
            dontneed(BASE, 5 * PAGE),
            [(BASE, PAGE), (BASE + PAGE, PAGE)]
        );
        // From after /dev/mem up to [vvar].
        assert_eq!(
            dontneed(BASE + 4 * PAGE, 0x10_0000_0000),
            [(BASE + 4 * PAGE, PAGE)]
        );
        assert_eq!(dontneed(0x7fff_f7fc_1000, PAGE), []);
        // A BAR softvfio emulates (anonymous memory in the maps) stops it
        // too: the second page here.
        let bar_at = |at: u64| move |s: u64, e: u64| (s <= at && at < e).then_some(s.max(at));
        assert_eq!(
            madvise_walk_in(
                maps,
                StaleCause::MadvDontneed,
                BASE,
                BASE + 5 * PAGE,
                &bar_at(BASE + PAGE)
            ),
            [(BASE, PAGE)]
        );
        // Also inside a line: an emulated BAR (anonymous `PROT_NONE`
        // memory) merged by the kernel with the reserved page before it;
        // on Linux the BAR is a mapping of its own (`VM_PFNMAP`) where the
        // walk stops (tests-oracle/kernel-6.1-dma-bugs-madvise.txt,
        // madv-dontneed-bar-merged: EINVAL, the page after it kept).
        let merged = "7f0000000000-7f0000002000 ---p 00000000 00:00 0\n\
                      7f0000002000-7f0000003000 rw-p 00000000 00:00 0\n";
        assert_eq!(
            madvise_walk_in(
                merged,
                StaleCause::MadvDontneed,
                BASE,
                BASE + 3 * PAGE,
                &bar_at(BASE + PAGE)
            ),
            [(BASE, PAGE)]
        );
        // A BAR at the line's start takes nothing.
        assert_eq!(
            madvise_walk_in(
                merged,
                StaleCause::MadvDontneed,
                BASE + PAGE,
                BASE + 3 * PAGE,
                &bar_at(BASE + PAGE)
            ),
            []
        );
    }

    /// hugetlb memory (Linux 6.1: tests-oracle/kernel-6.1-dma-bugs-madvise.txt,
    /// madv-dontneed-huge): `MADV_DONTNEED` from inside a huge page is
    /// EINVAL with nothing gone; otherwise only whole huge pages go, the
    /// end rounded down (4 KiB of a 2 MiB page: nothing). Before, the range
    /// was taken as it was asked for.
    #[test]
    fn madv_dontneed_of_hugetlb_memory_takes_whole_huge_pages() {
        let Some(huge) = super::default_huge_page_size() else {
            panic!("no Hugepagesize in /proc/meminfo");
        };
        let maps = format!(
            "7f0000000000-{:x} rw-p 00000000 00:0f 99 /anon_hugepage (deleted)\n\
             {:x}-{:x} rw-p 00000000 00:00 0\n",
            BASE + 2 * huge,
            BASE + 2 * huge,
            BASE + 2 * huge + PAGE
        );
        let dontneed = |addr, len| walk(&maps, StaleCause::MadvDontneed, addr, len);
        assert_eq!(dontneed(BASE + PAGE, PAGE), []);
        assert_eq!(dontneed(BASE, PAGE), []);
        assert_eq!(dontneed(BASE, huge + PAGE), [(BASE, huge)]);
        // Whole huge pages, then the plain page after them.
        assert_eq!(
            dontneed(BASE + huge, huge + PAGE),
            [(BASE + huge, huge), (BASE + 2 * huge, PAGE)]
        );
        // MADV_REMOVE is not modelled so (the hole punched is hugetlbfs's).
        assert_eq!(super::parse_size("2M"), Some(2 << 20));
        assert_eq!(super::parse_size("1G"), Some(1 << 30));
        assert_eq!(super::parse_size("2048k"), Some(2 << 20));
        assert_eq!(super::parse_size("12"), None);
    }

    /// Linux 6.1's `do_madvise` checks before any walk: an unaligned
    /// address, a length that wraps when rounded up to pages and a range
    /// past the end of the address space are EINVAL, a zero length is 0;
    /// none takes anything, whatever the answer (no overflow either).
    #[test]
    fn madvise_walks_nothing_when_linux_refuses_up_front() {
        let addr = BASE;
        assert_eq!(madvise_range(addr, 1), Some((addr, addr + PAGE)));
        assert_eq!(madvise_range(addr, 1 << 63), Some((addr, addr + (1 << 63))));
        assert_eq!(madvise_range(addr + 1, PAGE), None);
        assert_eq!(madvise_range(addr, 0), None);
        // Wraps when rounded up.
        assert_eq!(madvise_range(addr, u64::MAX), None);
        assert_eq!(madvise_range(addr, u64::MAX - PAGE + 2), None);
        // Rounds up to the last page, then the end overflows.
        assert_eq!(madvise_range(addr, u64::MAX - PAGE + 1), None);
        assert_eq!(madvise_range(addr, 0u64.wrapping_sub(PAGE)), None);
        // The end exactly at 2^64 overflows too (Linux: end < start).
        assert_eq!(madvise_range(0u64.wrapping_sub(PAGE), PAGE), None);
        assert_eq!(
            madvise_range(0u64.wrapping_sub(2 * PAGE), PAGE),
            Some((0u64.wrapping_sub(2 * PAGE), 0u64.wrapping_sub(PAGE)))
        );
        for cause in [StaleCause::MadvDontneed, StaleCause::MadvRemove] {
            for errno in [0, libc::EINVAL, libc::ENOMEM] {
                for len in [0, u64::MAX, 0u64.wrapping_sub(PAGE), u64::MAX - PAGE + 2] {
                    assert_eq!(
                        madvise_taken(None, cause, addr, len, errno, false, &|_, _| None),
                        [],
                        "{cause:?} {len:#x} {errno}"
                    );
                }
                assert_eq!(
                    madvise_taken(None, cause, addr + 8, PAGE, errno, false, &|_, _| None),
                    []
                );
            }
        }
    }

    /// Linux 6.1's answers (tests-oracle/kernel-6.1-madvise-lengths.txt):
    /// a length Linux walks zapped the probe's first page (`kept=0`), one
    /// it refused up front left it (`kept=1`); `madvise_range` agrees on
    /// each.
    #[test]
    fn madvise_range_is_linuxs_up_front_check() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests-oracle/kernel-6.1-madvise-lengths.txt"
        );
        let linux = std::fs::read_to_string(path).expect("the oracle file");
        let mut seen = 0;
        for l in linux.lines() {
            let mut f = l.split(' ');
            let (Some(case), Some(errno), Some(kept)) = (f.next(), f.next(), f.next()) else {
                panic!("line {l:?}");
            };
            let len = match case.split_once("-len-").map(|(_, len)| len) {
                Some("2^63") => 1 << 63,
                Some("minus-page") => 0u64.wrapping_sub(PAGE),
                Some("max") => u64::MAX,
                Some("max-minus-page-plus-2") => u64::MAX - PAGE + 2,
                Some("0") => 0,
                Some("8193") => 8193,
                other => panic!("case {other:?}"),
            };
            let walked = kept == "kept=0";
            assert_eq!(madvise_range(BASE, len).is_some(), walked, "{l}");
            // Refused up front: EINVAL, or 0 for a zero length.
            if !walked {
                assert_eq!(errno, if len == 0 { "0" } else { "22" }, "{l}");
            }
            seen += 1;
        }
        assert_eq!(seen, 9);
    }

    /// Which answers come from the walk: success and EINVAL (the pin's
    /// mlock) for both; ENOMEM and EACCES for MADV_REMOVE only; EINVAL not
    /// when the program locks memory itself.
    #[test]
    fn madvise_taken_by_the_answer() {
        // This process's maps: its own (private, anonymous) page.
        let page = Box::new([0u8; 0x2000]);
        let mine = (page.as_ptr() as u64).next_multiple_of(PAGE);
        let addr = mine;
        let no_bar = |_, _| None;
        let dontneed = |errno, own| {
            madvise_taken(
                None,
                StaleCause::MadvDontneed,
                addr,
                10,
                errno,
                own,
                &no_bar,
            )
        };
        assert_eq!(dontneed(0, false), [(addr, PAGE)]);
        assert_eq!(dontneed(0, true), [(addr, PAGE)]);
        assert_eq!(dontneed(libc::EINVAL, true), []);
        assert_eq!(dontneed(libc::ENOMEM, false), []);
        assert_eq!(dontneed(libc::EAGAIN, false), []);
        let einval = |cause, bar: &dyn Fn(u64, u64) -> Option<u64>| {
            madvise_taken(None, cause, mine, PAGE, libc::EINVAL, false, bar)
        };
        assert_eq!(einval(StaleCause::MadvDontneed, &no_bar), [(mine, PAGE)]);
        // Unless softvfio emulates a BAR there.
        assert_eq!(
            einval(StaleCause::MadvDontneed, &|s, _| (s == mine).then_some(s)),
            []
        );
        // MADV_REMOVE of private memory: Linux stops at once.
        assert_eq!(einval(StaleCause::MadvRemove, &no_bar), []);
    }

    #[test]
    fn mapping_name_keeps_spaces_and_may_be_empty() {
        assert_eq!(
            mapping_name("7f-80 rw-s 00000000 00:01 12    /tmp/a b (deleted)"),
            "/tmp/a b (deleted)"
        );
        assert_eq!(mapping_name("7f-80 rw-p 00000000 00:00 0 "), "");
        assert_eq!(mapping_name("7f-80 rw-p 00000000 00:00 0"), "");
        assert_eq!(mapping_name("7f-80 rw-p"), "");
    }
}

/// Writes a stale-mapping line the moment it is found.
pub fn write_stale_now(w: &mut dyn Write, s: &Sanitizer, r: &StaleReport) -> io::Result<()> {
    let mut sym = Symbolizer::new();
    writeln!(
        w,
        "softvfio sanitizer: {}",
        stale_finding(s, &mut sym, r).text
    )
}

/// The report, readably.
pub fn write_report(w: &mut dyn Write, r: &SanitizerReport) -> io::Result<()> {
    writeln!(w, "--- softvfio sanitizer ---")?;
    for f in &r.faults {
        let len = f.len.map(|l| format!(" of {l} bytes")).unwrap_or_default();
        writeln!(
            w,
            "DMA fault #{} [{}]: device {} (rid {:#06x}) {}{len} at IOVA {:#x}: {}",
            f.seq, f.class, f.device, f.rid, f.access, f.iova, f.reason
        )?;
        if let Some(s) = &f.started_by {
            writeln!(w, "  started by: {s}")?;
        }
        for l in &f.lines {
            writeln!(w, "  {l}")?;
        }
    }
    for s in &r.stale {
        writeln!(w, "{}", s.text)?;
    }
    // With processes told apart, each leak is in its process's section.
    for l in r.leaks.iter().filter(|l| l.pid.is_none()) {
        writeln!(w, "leak: {}, created from {}", l.what, l.site)?;
    }
    for p in &r.processes {
        writeln!(
            w,
            "process {} ({}): {} region(s) in its history, {} leak(s)",
            p.pid,
            p.program,
            p.history.len(),
            p.leaks.len()
        )?;
        if let Some(end) = p.end.as_deref().filter(|e| !e.starts_with("exited")) {
            writeln!(w, "  ended: {end}")?;
        }
        for h in &p.history {
            writeln!(w, "  history: {h}")?;
        }
        for l in &p.leaks {
            writeln!(w, "  leak: {}, created from {}", l.what, l.site)?;
        }
    }
    for d in &r.device {
        writeln!(w, "device: {}", d.text)?;
    }
    writeln!(
        w,
        "sanitizer: {} fault(s), {} stale mapping(s), {} leak(s), {} device note(s)",
        r.faults.len(),
        r.stale.len(),
        r.leaks.len(),
        r.device.len()
    )
}

/// Writes the report as JSON to `path`.
pub fn write_json(path: &std::path::Path, r: &SanitizerReport) -> io::Result<()> {
    let text = serde_json::to_string_pretty(r).map_err(io::Error::other)?;
    std::fs::write(path, text)
}

/// Ends a sanitized run: builds the report, prints it on `w` (unless
/// `quiet`), writes the JSON file if asked; returns the number of errors
/// (what `--sanitize=strict` fails on).
pub fn finish(
    w: &mut dyn Write,
    built: &BuiltPlatform,
    s: &Sanitizer,
    leaks: &[LeakRecord],
    json: Option<&std::path::Path>,
    quiet: bool,
) -> usize {
    let report = build_report(built, s, leaks);
    if !quiet {
        let _ = write_report(w, &report);
    }
    if let Some(path) = json {
        if let Err(e) = write_json(path, &report) {
            let _ = writeln!(
                w,
                "softvfio: cannot write the report to {}: {e}",
                path.display()
            );
        }
    }
    report.errors()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_parsed_and_addresses_resolved() {
        let text = "\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 42 /usr/bin/prog
55d0c0001000-55d0c0002000 r-xp 00001000 08:01 42 /usr/bin/prog
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 [heap]
";
        let mut names = HashMap::new();
        let e = parse_maps(text, &mut names);
        assert_eq!(e.len(), 2);
        let mut m = ProcessMaps::of_entries(e, names);
        assert!(m.is_code(0x55d0c0001234));
        assert!(!m.is_code(0x55d0c0000234));
        let f = m.frame(0x55d0c0001234);
        assert_eq!(f.object.as_deref(), Some("/usr/bin/prog"));
        assert_eq!(f.offset, 0x1234);
    }

    /// A stack of two frames linked by rbp (at 0x2000, then 0x2100, whose
    /// link is null), returning into the program at 0x55d0c0001100 and
    /// 0x55d0c0001200.
    fn frame_pointer_stack() -> HashMap<u64, u64> {
        [
            (0x2000, 0x2100),
            (0x2008, 0x55d0c0001100),
            (0x2100, 0),
            (0x2108, 0x55d0c0001200),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn frame_pointer_chain_where_there_is_no_cfi() {
        // Addresses outside any object: no call frame information, so
        // the walk follows rbp (two frames), and stops at a null link.
        let mem = frame_pointer_stack();
        let mut names = HashMap::new();
        let text = "55d0c0001000-55d0c0002000 r-xp 00001000 08:01 42 /nonexistent/prog\n";
        let mut m = ProcessMaps::of_entries(parse_maps(text, &mut names), names);
        let frames = m.walk(0x55d0c0001000, 0x1f00, 0x2000, 8, |a| mem.get(&a).copied());
        assert_eq!(frames, vec![0x55d0c0001000, 0x55d0c0001100, 0x55d0c0001200]);
    }

    #[test]
    fn cfi_only_walk_refuses_what_it_cannot_unwind_exactly() {
        // The same frame-pointer chain as above, in an object without call
        // frame information: the CFI-only walk gives up (its caller then
        // asks glibc) instead of trusting the chain.
        let mem: HashMap<u64, u64> = [(0x2000, 0x2100), (0x2008, 0x55d0c0001100)]
            .into_iter()
            .collect();
        let mut names = HashMap::new();
        let text = "55d0c0001000-55d0c0002000 r-xp 00001000 08:01 42 /nonexistent/prog\n";
        let mut m = ProcessMaps::of_entries(parse_maps(text, &mut names), names);
        let read = |a: u64| mem.get(&a).copied();
        assert_eq!(m.walk_cfi(0x55d0c0001000, 0x1f00, 0x2000, 8, read), None);
        // Within `max`, the one frame it was given is complete.
        assert_eq!(
            m.walk_cfi(0x55d0c0001000, 0x1f00, 0x2000, 1, read),
            Some(vec![0x55d0c0001000])
        );
    }

    #[test]
    fn signal_frames_lead_to_the_interrupted_frame() {
        // A handler (frame pointers) returns to the signal trampoline at
        // 0x...1800; the kernel's ucontext above it holds the interrupted
        // rip 0x...1900, rsp 0x3000 and rbp 0 (where the walk ends).
        let tramp = 0x55d0c0001800u64;
        let code = [
            0x48u8, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05, 0, 0, 0, 0, 0, 0, 0,
        ];
        let uc = 0x2010u64;
        let mut mem: HashMap<u64, u64> = [
            (0x2000, 0x2ff0),
            (0x2008, tramp),
            (tramp, u64::from_le_bytes(code[..8].try_into().unwrap())),
            (tramp + 8, u64::from_le_bytes(code[8..].try_into().unwrap())),
            (uc + 40 + 8 * 16, 0x55d0c0001900),
            (uc + 40 + 8 * 15, 0x3000),
            (uc + 40 + 8 * 10, 0),
        ]
        .into_iter()
        .collect();
        let mut names = HashMap::new();
        let text = "55d0c0001000-55d0c0002000 r-xp 00001000 08:01 42 /nonexistent/prog\n";
        let mut m = ProcessMaps::of_entries(parse_maps(text, &mut names), names);
        let frames = m.walk(0x55d0c0001000, 0x1f00, 0x2000, 8, |a| mem.get(&a).copied());
        assert_eq!(frames, vec![0x55d0c0001000, tramp, 0x55d0c0001900]);
        // Not the trampoline's bytes: no signal frame (the chain ends).
        mem.insert(tramp + 8, 0);
        let frames = m.walk(0x55d0c0001000, 0x1f00, 0x2000, 8, |a| mem.get(&a).copied());
        assert_eq!(frames, vec![0x55d0c0001000, tramp]);
    }

    #[test]
    fn a_new_count_of_unloads_reads_the_maps_again() {
        let text = "55d0c0001000-55d0c0002000 r-xp 00001000 08:01 42 /usr/lib/a.so\n";
        let mut names = HashMap::new();
        let mut m = ProcessMaps::of_entries(parse_maps(text, &mut names), names);
        let a = m.site(&[0x55d0c0001234]);
        assert_eq!(a.frames[0].object.as_deref(), Some("/usr/lib/a.so"));
        // The same count: the kept site (no read).
        m.sync_unloads(0);
        assert!(Arc::ptr_eq(&a, &m.site(&[0x55d0c0001234])));
        // An unload: the same address is looked up again (here the maps
        // read again hold nothing: the object is gone), not taken from
        // the site kept for it.
        m.sync_unloads(1);
        let after = m.site(&[0x55d0c0001234]);
        assert!(!Arc::ptr_eq(&a, &after));
        assert_eq!(after.frames[0].object, None);
        assert!(!m.is_code(0x55d0c0001234));
    }

    #[test]
    fn call_sites_are_kept_until_the_maps_are_read_again() {
        let text = "55d0c0001000-55d0c0002000 r-xp 00001000 08:01 42 /usr/bin/prog\n";
        let mut names = HashMap::new();
        let mut m = ProcessMaps::of_entries(parse_maps(text, &mut names), names);
        let a = m.site(&[0x55d0c0001234, 0x55d0c0001400]);
        let b = m.site(&[0x55d0c0001234, 0x55d0c0001400]);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.frames[1].offset, 0x1400);
        assert_eq!(a.frames[1].object.as_deref(), Some("/usr/bin/prog"));
        let other = m.site(&[0x55d0c0001234]);
        assert!(!Arc::ptr_eq(&a, &other));
        // An address outside the maps reads them again (here: none left),
        // and the kept sites go with them.
        let outside = m.site(&[0x1000]);
        assert_eq!(outside.frames[0].object, None);
        let again = m.site(&[0x55d0c0001234, 0x55d0c0001400]);
        assert!(!Arc::ptr_eq(&a, &again));
        assert_eq!(again.frames[1].object, None);
    }

    #[test]
    fn recent_call_sites_are_told_apart_by_every_frame() {
        // More sites than the recent ones compared first, some a prefix
        // of another: each answer has exactly the addresses asked for, and
        // the same addresses again give the same site.
        let text = "55d0c0001000-55d0c0002000 r-xp 00001000 08:01 42 /usr/bin/prog\n";
        let mut names = HashMap::new();
        let mut m = ProcessMaps::of_entries(parse_maps(text, &mut names), names);
        let tuples: Vec<Vec<u64>> = vec![
            vec![0x55d0c0001100],
            vec![0x55d0c0001100, 0x55d0c0001200],
            vec![0x55d0c0001100, 0x55d0c0001200, 0x55d0c0001300],
            vec![0x55d0c0001100, 0x55d0c0001201],
            vec![0x55d0c0001101, 0x55d0c0001200],
            vec![0x55d0c0001200, 0x55d0c0001100],
        ];
        let first: Vec<Arc<CallSite>> = tuples.iter().map(|t| m.site(t)).collect();
        for round in 0..3 {
            for (i, t) in tuples.iter().enumerate().rev() {
                let s = m.site(t);
                let addrs: Vec<u64> = s.frames.iter().map(|f| f.addr).collect();
                assert_eq!(&addrs, t, "round {round}, site {i}");
                assert!(Arc::ptr_eq(&s, &first[i]), "round {round}, site {i}");
            }
        }
    }

    #[test]
    fn kept_steps_follow_the_stack_read_each_time() {
        // The frame-pointer chain of `frame_pointer_chain_where_there_is_no_cfi`
        // walked again after its second return address changed: what was
        // kept of an address (its step, that it is code) never stands in
        // for what the stack holds; a return address in data ends the walk,
        // and is not kept as code.
        let mut mem = frame_pointer_stack();
        let mut names = HashMap::new();
        let text = "\
55d0c0001000-55d0c0002000 r-xp 00001000 08:01 42 /nonexistent/prog
55d0c0002000-55d0c0003000 rw-p 00002000 08:01 42 /nonexistent/prog
";
        let mut m = ProcessMaps::of_entries(parse_maps(text, &mut names), names);
        let walk = |m: &mut ProcessMaps, mem: &HashMap<u64, u64>| {
            m.walk(0x55d0c0001000, 0x1f00, 0x2000, 8, |a| mem.get(&a).copied())
        };
        let expected = vec![0x55d0c0001000, 0x55d0c0001100, 0x55d0c0001200];
        assert_eq!(walk(&mut m, &mem), expected);
        assert_eq!(walk(&mut m, &mem), expected);
        mem.insert(0x2108, 0x55d0c0001300);
        assert_eq!(
            walk(&mut m, &mem),
            vec![0x55d0c0001000, 0x55d0c0001100, 0x55d0c0001300]
        );
        mem.insert(0x2108, 0x55d0c0002100);
        assert_eq!(walk(&mut m, &mem), vec![0x55d0c0001000, 0x55d0c0001100]);
        assert_eq!(walk(&mut m, &mem), vec![0x55d0c0001000, 0x55d0c0001100]);
        // Into a caller's buffer: at most its length, none into an empty one.
        // (No call frame information in this object: the CFI-only walk
        // refuses to go past the first frame.)
        let mut two = [0u64; 2];
        assert_eq!(
            m.walk_cfi_into(0x55d0c0001000, 0x1f00, 0x2000, &mut two, |a| mem
                .get(&a)
                .copied()),
            None
        );
        let mut none: [u64; 0] = [];
        assert_eq!(
            m.walk_cfi_into(0x55d0c0001000, 0x1f00, 0x2000, &mut none, |a| mem
                .get(&a)
                .copied()),
            None
        );
        let mut single = [0u64; 1];
        assert_eq!(
            m.walk_cfi_into(0x55d0c0001000, 0x1f00, 0x2000, &mut single, |a| mem
                .get(&a)
                .copied()),
            Some(1)
        );
        assert_eq!(single, [0x55d0c0001000]);
    }

    #[test]
    fn this_test_binary_symbolizes_itself() {
        // A function of this binary, symbolized from its own file.
        #[inline(never)]
        fn marker() -> u64 {
            marker as *const () as u64
        }
        let addr = marker();
        let mut maps = ProcessMaps::new(None);
        let site = maps.site(&[addr]);
        let mut sym = Symbolizer::new();
        let t = sym.frame(&site.frames[0], false);
        assert!(
            t.function.as_deref().is_some_and(|f| f.contains("marker")),
            "{t:?}"
        );
    }
}
