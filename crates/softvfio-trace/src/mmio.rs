//! Trapped MMIO in trace mode: a load or store on a memory-mapped device
//! region, resolved at the thread's SIGSEGV signal-delivery stop.
//!
//! The handler maps a device region as inaccessible anonymous memory
//! (`Handler::memory_call`), so every access to it raises SIGSEGV. At the
//! signal-delivery stop the supervisor asks the handler whether the fault
//! address is one of its mappings ([`Handler::is_mmio_address`]); if so it
//! reads the thread's registers (`PTRACE_GETREGS`, plus the XSAVE area with
//! `PTRACE_GETREGSET NT_X86_XSTATE` when the instruction may use vector
//! registers) and the instruction bytes, and lets the handler perform the
//! instruction ([`Handler::mmio_fault`]). Then, by the handler's answer:
//!
//! - performed: the registers are written back and the thread resumes with
//!   no signal (the SIGSEGV is suppressed);
//! - not a device access: the SIGSEGV is delivered unchanged;
//! - refused as the kernel refuses it: that signal is delivered instead
//!   (SIGBUS with `BUS_ADRERR` for a page vfio-pci does not serve, SIGSEGV
//!   with the kernel's own siginfo for an access the protection forbids);
//! - not performable (an instruction the emulator does not know): the
//!   report goes to stderr and the process is killed with SIGKILL, so that
//!   it never continues with a wrong value.
//!
//! Invariants: only kernel-generated SIGSEGVs (`si_code > 0`) are looked
//! at; a signal sent by a process is never taken for a fault. The register
//! file is written back only after a successful emulation.

use crate::handler::Handler;
use crate::supervisor::Core;
use crate::sys::{self, SigInfo};
pub use softvfio_mmio::Registers;
use softvfio_mmio::{gpr, ProgramMemory};

/// What the handler made of a fault on one of its mappings.
#[derive(Debug)]
pub enum FaultReply {
    /// Not a device access: deliver the SIGSEGV as it is.
    NotOurs,
    /// Performed: `regs` hold the thread's new state.
    Done {
        /// A vector register changed (write the XSAVE area back).
        vector_written: bool,
    },
    /// Deliver this signal instead (the kernel's answer for the access).
    Signal {
        /// `SIGSEGV` or `SIGBUS`.
        signo: i32,
        /// Its `si_code`.
        code: i32,
        /// Its `si_addr`.
        address: u64,
    },
    /// Stop the program with this report.
    Fatal(String),
}

/// The traced thread's memory, for the memory operand of a string move.
pub struct TracedMemory {
    tid: i32,
}

impl ProgramMemory for TracedMemory {
    fn read(&mut self, addr: u64, data: &mut [u8]) -> std::io::Result<()> {
        sys::process_vm_read(self.tid, addr, data)
            .map_err(|e| std::io::Error::from_raw_os_error(e.0))
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> std::io::Result<()> {
        sys::process_vm_write(self.tid, addr, data)
            .map_err(|e| std::io::Error::from_raw_os_error(e.0))
    }
}

/// Can the instruction at the start of `code` use a vector register? False
/// only for the general-purpose forms (legacy one-byte opcodes, and the
/// two-byte `movzx`/`movsx`/`movnti`/`movbe`/`cmpxchg`/`xadd`/bit-test
/// opcodes), so that their faults skip the XSAVE transfer; anything else
/// (VEX, EVEX, other `0F` opcodes) is assumed to.
pub fn may_use_vector(code: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = code.get(i) {
        match b {
            0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => i += 1,
            0x40..=0x4f => i += 1,
            _ => break,
        }
    }
    match code.get(i) {
        Some(0x0f) => match code.get(i + 1) {
            Some(0xb6 | 0xb7 | 0xbe | 0xbf | 0xc3 | 0xb0 | 0xb1 | 0xc0 | 0xc1) => false,
            Some(0xa3 | 0xab | 0xb3 | 0xbb | 0xba) => false,
            Some(0x38) => !matches!(code.get(i + 2), Some(0xf0 | 0xf1)),
            _ => true,
        },
        Some(0xc4 | 0xc5 | 0x62) => true,
        Some(_) => false,
        None => true,
    }
}

fn regs_in(r: &sys::Regs) -> Registers {
    let mut regs = Registers::default();
    regs.gpr[gpr::RAX] = r.rax;
    regs.gpr[gpr::RCX] = r.rcx;
    regs.gpr[gpr::RDX] = r.rdx;
    regs.gpr[gpr::RBX] = r.rbx;
    regs.gpr[gpr::RSP] = r.rsp;
    regs.gpr[gpr::RBP] = r.rbp;
    regs.gpr[gpr::RSI] = r.rsi;
    regs.gpr[gpr::RDI] = r.rdi;
    regs.gpr[gpr::R8] = r.r8;
    regs.gpr[gpr::R9] = r.r9;
    regs.gpr[gpr::R10] = r.r10;
    regs.gpr[gpr::R11] = r.r11;
    regs.gpr[gpr::R12] = r.r12;
    regs.gpr[gpr::R13] = r.r13;
    regs.gpr[gpr::R14] = r.r14;
    regs.gpr[gpr::R15] = r.r15;
    regs.rip = r.rip;
    regs.rflags = r.eflags;
    regs.fs_base = r.fs_base;
    regs.gs_base = r.gs_base;
    regs
}

fn regs_out(regs: &Registers, r: &mut sys::Regs) {
    r.rax = regs.gpr[gpr::RAX];
    r.rcx = regs.gpr[gpr::RCX];
    r.rdx = regs.gpr[gpr::RDX];
    r.rbx = regs.gpr[gpr::RBX];
    r.rsp = regs.gpr[gpr::RSP];
    r.rbp = regs.gpr[gpr::RBP];
    r.rsi = regs.gpr[gpr::RSI];
    r.rdi = regs.gpr[gpr::RDI];
    r.r8 = regs.gpr[gpr::R8];
    r.r9 = regs.gpr[gpr::R9];
    r.r10 = regs.gpr[gpr::R10];
    r.r11 = regs.gpr[gpr::R11];
    r.r12 = regs.gpr[gpr::R12];
    r.r13 = regs.gpr[gpr::R13];
    r.r14 = regs.gpr[gpr::R14];
    r.r15 = regs.gpr[gpr::R15];
    r.rip = regs.rip;
    r.eflags = regs.rflags;
}

/// Up to 15 instruction bytes at `rip` (fewer when the code ends at an
/// inaccessible page).
fn read_code(tid: i32, rip: u64) -> Vec<u8> {
    let to_page_end = (4096 - (rip & 4095)).min(15) as usize;
    let mut code = vec![0u8; to_page_end];
    if sys::process_vm_read(tid, rip, &mut code).is_err() {
        return Vec::new();
    }
    if to_page_end < 15 {
        let mut rest = vec![0u8; 15 - to_page_end];
        if sys::process_vm_read(tid, rip + to_page_end as u64, &mut rest).is_ok() {
            code.extend_from_slice(&rest);
        }
    }
    code
}

/// `si_addr` of a SIGSEGV/SIGBUS siginfo (after signo, errno, code and
/// padding: byte 16).
fn si_addr(si: &SigInfo) -> u64 {
    u64::from(si.0[4]) | (u64::from(si.0[5]) << 32)
}

fn fault_siginfo(signo: i32, code: i32, address: u64) -> SigInfo {
    let mut si = SigInfo::default();
    si.0[0] = signo as u32;
    si.0[2] = code as u32;
    si.0[4] = address as u32;
    si.0[5] = (address >> 32) as u32;
    si
}

/// At a SIGSEGV signal-delivery stop of `tid`: resolves a fault on a device
/// mapping and resumes the thread. Returns false (nothing done, the thread
/// still stopped) when the signal is not such a fault.
pub(crate) fn on_sigsegv(core: &mut Core, h: &mut dyn Handler, tid: i32) -> bool {
    let Ok(si) = sys::ptrace_getsiginfo(tid) else {
        return false;
    };
    if si.signo() != libc::SIGSEGV || si.code() <= 0 {
        return false;
    }
    let address = si_addr(&si);
    let pid = core.tgid_of(tid);
    if !h.is_mmio_address(pid, address) {
        return false;
    }
    let Ok(mut raw) = sys::ptrace_getregs(tid) else {
        return false;
    };
    let code = read_code(tid, raw.rip);
    let mut regs = regs_in(&raw);
    let mut xsave = Vec::new();
    if may_use_vector(&code) {
        xsave = vec![0u8; 16384];
        match sys::ptrace_get_xstate(tid, &mut xsave) {
            Ok(n) => {
                xsave.truncate(n);
                softvfio_mmio::xsave::load(&xsave, &mut regs);
            }
            Err(_) => xsave.clear(),
        }
    }
    let mut mem = TracedMemory { tid };
    let reply = h.mmio_fault(pid, address, &code, &mut regs, &mut mem);
    match reply {
        FaultReply::NotOurs => return false,
        FaultReply::Done { vector_written } => {
            regs_out(&regs, &mut raw);
            let mut ok = sys::ptrace_setregs(tid, &raw).is_ok();
            if vector_written {
                if xsave.is_empty() {
                    ok = false;
                } else {
                    softvfio_mmio::xsave::store(&regs, &mut xsave);
                    ok &= sys::ptrace_set_xstate(tid, &xsave).is_ok();
                }
            }
            if !ok {
                eprintln!(
                    "softvfio: cannot write the registers of thread {tid} after an MMIO access at {address:#x}; stopping the program"
                );
                let _ = sys::kill(pid, libc::SIGKILL);
            }
            let _ = sys::ptrace_cont(tid, 0);
        }
        FaultReply::Signal {
            signo,
            code,
            address: at,
        } => {
            if signo != libc::SIGSEGV || at != address {
                let _ = sys::ptrace_setsiginfo(tid, &fault_siginfo(signo, code, at));
            }
            let _ = sys::ptrace_cont(tid, signo);
        }
        FaultReply::Fatal(report) => {
            eprintln!("softvfio: {report}; stopping the program (SIGKILL)");
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::ptrace_cont(tid, 0);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_guess() {
        // mov [rdi], eax; mov rax, [rsi]; movzx eax, byte [rdi]; rep movsb;
        // lock xadd [rdi], eax; movbe eax, [rdi]
        for code in [
            &[0x89, 0x07][..],
            &[0x48, 0x8b, 0x06],
            &[0x0f, 0xb6, 0x07],
            &[0xf3, 0xa4],
            &[0xf0, 0x0f, 0xc1, 0x07],
            &[0x0f, 0x38, 0xf0, 0x07],
        ] {
            assert!(!may_use_vector(code), "{code:02x?}");
        }
        // movdqu [rdi], xmm0; vmovdqu [rdi], ymm0; movd [rdi], xmm0;
        // an EVEX move; nothing at all
        for code in [
            &[0xf3, 0x0f, 0x7f, 0x07][..],
            &[0xc5, 0xfe, 0x7f, 0x07],
            &[0x66, 0x0f, 0x7e, 0x07],
            &[0x62, 0xf1, 0x7e, 0x48, 0x7f, 0x07],
            &[],
        ] {
            assert!(may_use_vector(code), "{code:02x?}");
        }
    }

    #[test]
    fn gprs_roundtrip() {
        let mut raw = sys::Regs {
            rax: 1,
            r15: 15,
            rsp: 4,
            rip: 0x1000,
            eflags: 0x202,
            ..Default::default()
        };
        let mut regs = regs_in(&raw);
        assert_eq!((regs.gpr[0], regs.gpr[15], regs.gpr[4]), (1, 15, 4));
        regs.gpr[gpr::RDI] = 7;
        regs_out(&regs, &mut raw);
        assert_eq!((raw.rdi, raw.rip, raw.eflags), (7, 0x1000, 0x202));
    }
}
