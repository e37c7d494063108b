//! For tests of [`UserMemory`] wrappers in this workspace:
//! [`Probe`], a memory that answers each call with values of its own and
//! logs it with its arguments, and [`check_forwarded`], which calls the
//! methods a wrapper passes on and checks that each reached the probe
//! unchanged. A wrapper that forgets a name in `forward_user_memory!`
//! silently keeps the trait's default; these checks catch that.

use std::sync::{Arc, Mutex, PoisonError};

use crate::account::MmAccount;
use crate::memory::{LockPolicy, MemError, MemResult, PinStats, PinnedRun, UserMemory, PAGE_SIZE};

/// Answers each call with values of its own and logs the call with its
/// arguments.
pub struct Probe {
    log: Mutex<Vec<String>>,
    account: Arc<MmAccount>,
}

impl Default for Probe {
    fn default() -> Self {
        Self::new()
    }
}

impl Probe {
    /// A probe with an empty log and an account of its own.
    pub fn new() -> Self {
        Self {
            log: Mutex::new(Vec::new()),
            account: Arc::new(MmAccount::new()),
        }
    }

    /// The calls so far, oldest first; the log is emptied.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The account [`UserMemory::account`] answers.
    pub fn account_handle(&self) -> &Arc<MmAccount> {
        &self.account
    }

    fn note(&self, call: String) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
    }

    /// A read named `call`: logged, `buf` filled with `byte`.
    fn fill(&self, call: &str, vaddr: u64, buf: &mut [u8], byte: u8) -> MemResult {
        self.note(format!("{call} {vaddr:#x} {}", buf.len()));
        buf.fill(byte);
        Ok(())
    }
}

impl UserMemory for Probe {
    fn pin(
        &self,
        vaddr: u64,
        len: u64,
        write: bool,
        on_run: &mut dyn FnMut(PinnedRun) -> MemResult,
    ) -> MemResult {
        self.note(format!("pin {vaddr:#x} {len:#x} {write}"));
        on_run(PinnedRun {
            vaddr,
            len,
            page_size: PAGE_SIZE,
            pfn: Some(7),
        })
        .and(Err(MemError::Fault))
    }
    fn is_device_range(&self, vaddr: u64, len: u64) -> bool {
        self.note(format!("is_device_range {vaddr:#x} {len:#x}"));
        true
    }
    fn device_bytes(&self, vaddr: u64, len: u64) -> u64 {
        self.note(format!("device_bytes {vaddr:#x} {len:#x}"));
        11
    }
    fn unpin(&self, vaddr: u64, len: u64) {
        self.note(format!("unpin {vaddr:#x} {len:#x}"));
    }
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> MemResult {
        self.fill("read", vaddr, buf, 1)
    }
    fn write(&self, vaddr: u64, data: &[u8]) -> MemResult {
        self.note(format!("write {vaddr:#x} {data:?}"));
        Ok(())
    }
    fn dma_read(&self, vaddr: u64, buf: &mut [u8]) -> MemResult {
        self.fill("dma_read", vaddr, buf, 2)
    }
    fn dma_write(&self, vaddr: u64, data: &[u8]) -> MemResult {
        self.note(format!("dma_write {vaddr:#x} {data:?}"));
        Err(MemError::Unreachable)
    }
    fn lock_policy(&self) -> LockPolicy {
        self.note("lock_policy".into());
        LockPolicy {
            cap_ipc_lock: false,
            limit_pages: 99,
        }
    }
    fn cap_sys_resource(&self) -> bool {
        self.note("cap_sys_resource".into());
        true
    }
    fn account(&self) -> &Arc<MmAccount> {
        self.note("account".into());
        &self.account
    }
    fn stats(&self) -> PinStats {
        self.note("stats".into());
        PinStats {
            pin_ops: 5,
            ..PinStats::default()
        }
    }
    fn describe(&self) -> String {
        self.note("describe".into());
        "probe".into()
    }
    fn svm_view(&self) -> Option<Arc<dyn UserMemory>> {
        self.note("svm_view".into());
        None
    }
    fn shared(&self) -> Option<Arc<dyn UserMemory>> {
        self.note("shared".into());
        None
    }
}

/// Every method of [`UserMemory`], by name.
pub const METHODS: [&str; 15] = [
    "pin",
    "is_device_range",
    "device_bytes",
    "unpin",
    "read",
    "write",
    "dma_read",
    "dma_write",
    "lock_policy",
    "cap_sys_resource",
    "account",
    "stats",
    "describe",
    "svm_view",
    "shared",
];

/// Calls each method of `wrapper` named in `methods` (of [`METHODS`]) with
/// arguments of its own and checks that it answered the [`Probe`]'s answer
/// and that `probe`, the memory `wrapper` wraps, logged the same call with
/// the same arguments, in order. Returns a description of the first
/// difference (for the test's assertion).
pub fn check_forwarded(
    wrapper: &dyn UserMemory,
    probe: &Probe,
    methods: &[&str],
) -> Result<(), String> {
    probe.take_log();
    let mut expected = Vec::new();
    for &m in methods {
        let answer_ok = match m {
            "pin" => {
                let mut runs = Vec::new();
                let pinned = wrapper.pin(0x1000, 0x2000, true, &mut |r| {
                    runs.push((r.vaddr, r.len, r.page_size, r.pfn));
                    Ok(())
                });
                expected.push("pin 0x1000 0x2000 true".to_string());
                pinned == Err(MemError::Fault) && runs == [(0x1000, 0x2000, PAGE_SIZE, Some(7))]
            }
            "is_device_range" => {
                expected.push("is_device_range 0x3000 0x10".into());
                wrapper.is_device_range(0x3000, 0x10)
            }
            "device_bytes" => {
                expected.push("device_bytes 0x4000 0x20".into());
                wrapper.device_bytes(0x4000, 0x20) == 11
            }
            "unpin" => {
                expected.push("unpin 0x5000 0x1000".into());
                wrapper.unpin(0x5000, 0x1000);
                true
            }
            "read" => {
                let mut buf = [0u8; 3];
                expected.push("read 0x6000 3".into());
                wrapper.read(0x6000, &mut buf) == Ok(()) && buf == [1; 3]
            }
            "write" => {
                expected.push("write 0x7000 [9, 8]".into());
                wrapper.write(0x7000, &[9, 8]) == Ok(())
            }
            "dma_read" => {
                let mut buf = [0u8; 3];
                expected.push("dma_read 0x8000 3".into());
                wrapper.dma_read(0x8000, &mut buf) == Ok(()) && buf == [2; 3]
            }
            "dma_write" => {
                expected.push("dma_write 0x9000 [7]".into());
                wrapper.dma_write(0x9000, &[7]) == Err(MemError::Unreachable)
            }
            "lock_policy" => {
                expected.push("lock_policy".into());
                let p = wrapper.lock_policy();
                !p.cap_ipc_lock && p.limit_pages == 99
            }
            "cap_sys_resource" => {
                expected.push("cap_sys_resource".into());
                wrapper.cap_sys_resource()
            }
            "account" => {
                expected.push("account".into());
                Arc::ptr_eq(wrapper.account(), &probe.account)
            }
            "stats" => {
                expected.push("stats".into());
                wrapper.stats().pin_ops == 5
            }
            "describe" => {
                expected.push("describe".into());
                wrapper.describe() == "probe"
            }
            "svm_view" => {
                expected.push("svm_view".into());
                wrapper.svm_view().is_none()
            }
            "shared" => {
                expected.push("shared".into());
                wrapper.shared().is_none()
            }
            other => return Err(format!("no method {other}")),
        };
        if !answer_ok {
            return Err(format!("{m}: not the inner memory's answer"));
        }
    }
    let log = probe.take_log();
    if log != expected {
        return Err(format!(
            "calls reaching the inner memory: {log:?}, expected {expected:?}"
        ));
    }
    Ok(())
}
