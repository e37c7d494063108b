//! x86-64 MMIO instruction emulation for memory-mapped emulated BARs.
//!
//! A BAR of an emulated device is mapped inaccessible in the program; each
//! load or store on it faults. A front end (the trace supervisor at the
//! SIGSEGV stop, or the preload library's SIGSEGV handler) hands the
//! faulting instruction's bytes, the thread's registers and the fault
//! address to [`emulate`], which decodes the instruction (iced-x86),
//! performs its memory access(es) on the device model through [`MmioSpace`]
//! and on ordinary memory through [`ProgramMemory`], writes the
//! destination and steps RIP past the instruction.
//!
//! Invariants:
//! - Every device access has the instruction's exact width and happens in
//!   the instruction's order (read before write; string elements in the
//!   direction of RFLAGS.DF). Accesses wider than 8 bytes (SSE/AVX moves)
//!   are split into 8-byte accesses in ascending address order.
//! - An access must lie within one BAR mapping; one that crosses a BAR's
//!   end, or an instruction this crate does not know, is refused with an
//!   error naming the instruction, address and BAR offset — never a guess.
//! - On any error the register file is left as it was (device side effects
//!   already performed, e.g. the first half of a split access, remain).
//! - No panics on any input: instruction bytes, registers and addresses
//!   are untrusted.

#![forbid(unsafe_code)]

mod alu;
mod exec;
mod regs;
pub mod xsave;

use std::fmt;
use std::io;

pub use exec::{emulate, warm_up, Emulated, MAX_STRING_ITERATIONS};
pub use regs::{flags, gpr, Registers};

/// Identifies one BAR mapping (the front end's choice, e.g. the region index).
pub type BarId = u32;

/// The emulated BAR mappings of the program and the device models behind them.
pub trait MmioSpace {
    /// The BAR mapping containing `addr` and the offset of `addr` in it.
    fn bar_at(&self, addr: u64) -> Option<(BarId, u64)>;
    /// Reads `data.len()` (1, 2, 4 or 8) bytes at `offset` of `bar`.
    fn read(&mut self, bar: BarId, offset: u64, data: &mut [u8]) -> io::Result<()>;
    /// Writes `data` (1, 2, 4 or 8 bytes) at `offset` of `bar`.
    fn write(&mut self, bar: BarId, offset: u64, data: &[u8]) -> io::Result<()>;
}

/// The program's ordinary memory (the non-BAR operand of a string move).
/// Trace mode: process_vm_readv/writev or /proc/PID/mem; preload: the
/// handler's own address space.
pub trait ProgramMemory {
    /// Reads `data.len()` bytes at `addr`.
    fn read(&mut self, addr: u64, data: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `addr`.
    fn write(&mut self, addr: u64, data: &[u8]) -> io::Result<()>;
}

/// Where a refused access was: the address and, if it is in a BAR, which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The address accessed.
    pub address: u64,
    /// The BAR and the offset in it, when the address is in one.
    pub bar: Option<(BarId, u64)>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bar {
            Some((bar, offset)) => write!(
                f,
                "address {:#x} (BAR {bar} offset {offset:#x})",
                self.address
            ),
            None => write!(f, "address {:#x} (not in a BAR)", self.address),
        }
    }
}

/// Why a fault was not emulated.
#[derive(Debug, thiserror::Error)]
pub enum EmulationError {
    /// The fault address is not in any BAR mapping: not ours, the front end
    /// delivers the signal to the program (chains to its handler).
    #[error("fault at {address:#x} is not in an emulated BAR")]
    NotMmio {
        /// The fault address.
        address: u64,
    },
    /// RIP itself is in a BAR: the program jumped into device memory.
    #[error("instruction fetch from {at}")]
    Execute {
        /// Where RIP points.
        at: Location,
    },
    /// The bytes at RIP do not decode to an instruction.
    #[error("undecodable instruction at rip {rip:#x} ({bytes:02x?}) faulting at {at}")]
    Decode {
        /// Its address.
        rip: u64,
        /// The bytes at RIP.
        bytes: Vec<u8>,
        /// The faulting address and its BAR.
        at: Location,
    },
    /// A valid instruction this emulator does not perform on a BAR.
    #[error("cannot emulate `{instruction}` at rip {rip:#x} on {at}")]
    Unsupported {
        /// The instruction, as the formatter prints it.
        instruction: String,
        /// Its address.
        rip: u64,
        /// The faulting address and its BAR.
        at: Location,
    },
    /// The access runs past the end of the BAR mapping it starts in (or into one).
    #[error("`{instruction}` at rip {rip:#x}: {len}-byte access at {at} crosses a BAR boundary")]
    Straddle {
        /// The instruction, as the formatter prints it.
        instruction: String,
        /// Its address.
        rip: u64,
        /// The faulting address and its BAR.
        at: Location,
        /// Bytes the access spans.
        len: usize,
    },
    /// An alignment-checked move (movdqa, movaps, movnt*) at a misaligned
    /// address: the CPU raises #GP for it.
    #[error("`{instruction}` at rip {rip:#x}: misaligned {len}-byte access at {at}")]
    Misaligned {
        /// The instruction, as the formatter prints it.
        instruction: String,
        /// Its address.
        rip: u64,
        /// The faulting address and its BAR.
        at: Location,
        /// Bytes the access spans.
        len: usize,
    },
    /// The device model refused the access.
    #[error("`{instruction}` at rip {rip:#x}: device access at {at} failed: {source}")]
    Device {
        /// The instruction, as the formatter prints it.
        instruction: String,
        /// Its address.
        rip: u64,
        /// The faulting address and its BAR.
        at: Location,
        /// The underlying error.
        source: io::Error,
    },
    /// The ordinary-memory operand is not accessible: the program gets the
    /// SIGSEGV the CPU would have raised for that address.
    #[error(
        "`{instruction}` at rip {rip:#x}: program memory at {address:#x} not accessible: {source}"
    )]
    Memory {
        /// The instruction, as the formatter prints it.
        instruction: String,
        /// Its address.
        rip: u64,
        /// The address.
        address: u64,
        /// The underlying error.
        source: io::Error,
    },
}
