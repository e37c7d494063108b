//! Fault queues: `IOMMU_FAULT_QUEUE_ALLOC` and the descriptor it returns
//! (Linux 6.12's `drivers/iommu/iommufd/fault.c`), answered as 6.12 does
//! (`tests-oracle/kernel-6.12-iommufd-fault.txt`).
//!
//! A fault queue is two things, as in the kernel: an object in the
//! context's table ([`Fault`], destroyed by `IOMMU_DESTROY`) and an open
//! file ([`FaultFile`], the program's descriptor: `read` delivers
//! `struct iommu_hwpt_pgfault` records, `write` takes
//! `struct iommu_hwpt_page_response` records, `poll` says which can go).
//!
//! # Invariants
//!
//! - A [`Fault`]'s `files` counts the [`FaultFile`]s naming it: exactly one
//!   from the allocation until the file's last close (the kernel's file
//!   holds a reference on `obj.users`). `IOMMU_DESTROY` is EBUSY while it
//!   is not zero.
//! - A [`FaultFile`] holds its context (the kernel's `iommufd_ctx_get`):
//!   the descriptor works after the program closed `/dev/iommu`.
//! - The queue is always empty and no response is ever awaited. A fault
//!   reaches a queue in 6.12 only through a HWPT allocated with
//!   `IOMMU_HWPT_FAULT_ID_VALID`, which only a nested HWPT takes (a paging
//!   HWPT refuses the flag: EOPNOTSUPP); a nested HWPT needs a nesting
//!   parent, which QEMU's VT-d (the model) cannot make. Nor has any
//!   emulated device PRI (edu and mdev-edu issue no page requests, and a
//!   DMA to an unmapped IOVA is an unrecoverable fault, which 6.12 reports
//!   to no queue). So `read` always finds nothing to deliver, `write`
//!   always finds no pending group for a cookie, and `poll` never says
//!   `POLLIN`: the answers below are the kernel's for exactly that state.

use std::sync::Arc;

use super::{Iommufd, Object};
use crate::error::{Result, VfioError};
use crate::memory::UserMemory;

/// `sizeof(struct iommu_hwpt_pgfault)`: `read` counts are multiples of it.
pub const PGFAULT_SIZE: u64 = 40;
/// `sizeof(struct iommu_hwpt_page_response)`: `write` counts are multiples
/// of it.
pub const PAGE_RESPONSE_SIZE: u64 = 8;
/// `IOMMUFD_PAGE_RESP_SUCCESS`.
pub const PAGE_RESP_SUCCESS: u32 = 0;
/// `IOMMUFD_PAGE_RESP_INVALID`.
pub const PAGE_RESP_INVALID: u32 = 1;

/// A fault object in a context's table.
pub(crate) struct Fault {
    /// Open files of this queue (see the module invariants).
    pub(crate) files: u32,
}

/// The open file behind a fault queue's descriptor.
pub struct FaultFile {
    ctx: Arc<Iommufd>,
    id: u32,
}

impl std::fmt::Debug for FaultFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultFile")
            .field("ctx", &self.ctx.id())
            .field("id", &self.id)
            .finish()
    }
}

fn espipe() -> VfioError {
    VfioError::Errno(libc::ESPIPE)
}

impl Iommufd {
    /// `IOMMU_FAULT_QUEUE_ALLOC` (after the ABI's checks): a new fault
    /// object (the lowest free id) and its open file.
    pub fn fault_alloc(self: &Arc<Self>) -> FaultFile {
        let mut st = self.lock();
        let id = st.next_id();
        st.objects.insert(id, Object::Fault(Fault { files: 1 }));
        FaultFile {
            ctx: self.clone(),
            id,
        }
    }

    /// The file of fault `id` was closed for the last time.
    fn fault_file_closed(&self, id: u32) {
        if let Some(Object::Fault(f)) = self.lock().objects.get_mut(&id) {
            f.files = f.files.saturating_sub(1);
        }
    }
}

impl FaultFile {
    /// The fault object's id in its context.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The context the queue belongs to.
    pub fn context(&self) -> &Arc<Iommufd> {
        &self.ctx
    }

    /// Undoes [`Iommufd::fault_alloc`] when the front end could not give
    /// the file a descriptor: the object goes too (the kernel's
    /// `iommufd_object_abort_and_destroy`).
    pub fn abort(self) {
        let (ctx, id) = (self.ctx.clone(), self.id);
        drop(self);
        ctx.lock().objects.remove(&id);
    }

    /// `read(2)` of `len` bytes into `buf`: ESPIPE unless `len` is a
    /// multiple of [`PGFAULT_SIZE`] (the file has no position: its
    /// position is always 0); else the records delivered, none (see the
    /// module invariants), so 0 without touching `buf`, at once, also
    /// without `O_NONBLOCK`.
    pub fn read(&self, _user: &dyn UserMemory, _buf: u64, len: u64) -> Result<i64> {
        if !len.is_multiple_of(PGFAULT_SIZE) {
            return Err(espipe());
        }
        Ok(0)
    }

    /// `write(2)` of `len` bytes of page responses at `buf`: ESPIPE unless
    /// `len` is a multiple of [`PAGE_RESPONSE_SIZE`]; 0 for none. Each
    /// response is copied in (EFAULT), its code checked (EINVAL unless
    /// SUCCESS or INVALID), and its cookie looked up among the groups
    /// awaiting a response (EINVAL: there are none). The count of the
    /// responses taken before an error, or the error when none was.
    pub fn write(&self, user: &dyn UserMemory, buf: u64, len: u64) -> Result<i64> {
        if !len.is_multiple_of(PAGE_RESPONSE_SIZE) {
            return Err(espipe());
        }
        if len == 0 {
            return Ok(0);
        }
        // The kernel takes responses in order and returns the count taken
        // before the first error, or that error when none was. The first
        // response never matches a group (none awaits one: module
        // invariants), so its error is the answer.
        let mut rec = [0u8; PAGE_RESPONSE_SIZE as usize];
        user.read(buf, &mut rec).map_err(|_| VfioError::Fault)?;
        let code = u32::from_ne_bytes([rec[4], rec[5], rec[6], rec[7]]);
        if code != PAGE_RESP_SUCCESS && code != PAGE_RESP_INVALID {
            return Err(VfioError::Invalid("page response code"));
        }
        Err(VfioError::Invalid("no fault group awaits this cookie"))
    }

    /// `poll(2)`'s events: `POLLOUT` always (a response can always be
    /// written), `POLLIN | POLLRDNORM` never (nothing is ever queued).
    pub fn poll(&self) -> i16 {
        libc::POLLOUT
    }

    /// `pread(2)`/`pwrite(2)`: ESPIPE (the file is not positioned).
    pub fn positioned_io(&self) -> Result<i64> {
        Err(espipe())
    }
}

impl Drop for FaultFile {
    fn drop(&mut self) {
        self.ctx.fault_file_closed(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::VecMemory;

    const BASE: u64 = 0x7000_0000_0000;

    fn ctx() -> (Arc<Iommufd>, Arc<VecMemory>) {
        let mem = VecMemory::new(BASE, 4096);
        (Iommufd::new(mem.clone()), mem)
    }

    fn errno(r: Result<impl Sized>) -> i32 {
        match r {
            Ok(_) => 0,
            Err(e) => e.errno(),
        }
    }

    #[test]
    fn alloc_takes_the_lowest_free_id_and_destroy_waits_for_the_file() {
        let (ctx, _) = ctx();
        let ioas = ctx.ioas_alloc();
        let f = ctx.fault_alloc();
        assert_eq!((ioas, f.id()), (1, 2));
        assert_eq!(errno(ctx.destroy(2)), libc::EBUSY);
        drop(f);
        assert_eq!(errno(ctx.destroy(2)), 0);
        assert_eq!(errno(ctx.destroy(2)), libc::ENOENT);
        // The id is free again.
        assert_eq!(ctx.fault_alloc().id(), 2);
    }

    #[test]
    fn abort_removes_the_object() {
        let (ctx, _) = ctx();
        let f = ctx.fault_alloc();
        f.abort();
        assert_eq!(errno(ctx.destroy(1)), libc::ENOENT);
        assert!(ctx.lock().objects.is_empty());
    }

    #[test]
    fn the_file_outlives_its_context_handle() {
        let (ctx, mem) = ctx();
        let f = ctx.fault_alloc();
        let weak = Arc::downgrade(&ctx);
        drop(ctx);
        assert!(weak.upgrade().is_some());
        assert_eq!(f.read(mem.as_ref(), 0, 40).unwrap(), 0);
        drop(f);
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn read_answers_espipe_for_partial_records_and_0_otherwise() {
        let (ctx, mem) = ctx();
        let f = ctx.fault_alloc();
        let buf = BASE;
        mem.write(buf, &[0x5a; 128]).unwrap();
        for (len, want) in [
            (0, Ok(0)),
            (40, Ok(0)),
            (80, Ok(0)),
            (1, Err(libc::ESPIPE)),
            (32, Err(libc::ESPIPE)),
            (48, Err(libc::ESPIPE)),
            (64, Err(libc::ESPIPE)),
        ] {
            assert_eq!(
                f.read(mem.as_ref(), buf, len).map_err(|e| e.errno()),
                want,
                "{len}"
            );
        }
        // A bad buffer is never touched: nothing to copy.
        assert_eq!(f.read(mem.as_ref(), 0, 40).unwrap(), 0);
        let mut back = [0u8; 128];
        mem.read(buf, &mut back).unwrap();
        assert_eq!(back, [0x5a; 128]);
    }

    #[test]
    fn write_checks_size_then_copy_then_code_then_cookie() {
        let (ctx, mem) = ctx();
        let f = ctx.fault_alloc();
        let buf = BASE;
        let rec = |cookie: u32, code: u32| {
            let mut b = cookie.to_ne_bytes().to_vec();
            b.extend_from_slice(&code.to_ne_bytes());
            b
        };
        let w = |bytes: &[u8], len: u64| {
            mem.write(buf, bytes).unwrap();
            f.write(mem.as_ref(), buf, len).map_err(|e| e.errno())
        };
        assert_eq!(w(&[], 0), Ok(0));
        assert_eq!(w(&rec(1, 0), 7), Err(libc::ESPIPE));
        assert_eq!(w(&rec(1, 0), 9), Err(libc::ESPIPE));
        assert_eq!(w(&rec(1, PAGE_RESP_SUCCESS), 8), Err(libc::EINVAL));
        assert_eq!(w(&rec(2, PAGE_RESP_INVALID), 8), Err(libc::EINVAL));
        assert_eq!(w(&rec(1, 2), 8), Err(libc::EINVAL));
        assert_eq!(w(&[rec(1, 0), rec(2, 1)].concat(), 16), Err(libc::EINVAL));
        assert_eq!(
            f.write(mem.as_ref(), 0, 8).map_err(|e| e.errno()),
            Err(libc::EFAULT)
        );
        // The size is checked before the buffer.
        assert_eq!(
            f.write(mem.as_ref(), 0, 9).map_err(|e| e.errno()),
            Err(libc::ESPIPE)
        );
    }

    #[test]
    fn poll_is_pollout_only_and_positioned_io_espipe() {
        let (ctx, _) = ctx();
        let f = ctx.fault_alloc();
        assert_eq!(f.poll(), libc::POLLOUT);
        assert_eq!(errno(f.positioned_io()), libc::ESPIPE);
    }
}
