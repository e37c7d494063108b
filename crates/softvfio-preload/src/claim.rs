//! Group ownership across the processes of one `softvfio run`.
//!
//! In preload mode every process runs its own engine, so an engine alone
//! cannot see that another process of the same program holds a group. The
//! kernel lets one open file own a group at a time: a second `open` of
//! `/dev/vfio/<N>`, from any process, answers EBUSY until the owner's file
//! and the device files taken from it are all closed.
//!
//! A claim is an `AF_UNIX` socket bound to an abstract address named after
//! the run (`SOFTVFIO_PRELOAD_TOP`, the pid of `softvfio run`) and the group.
//! Binding fails with EADDRINUSE while any process holds the bound socket,
//! and the kernel drops the binding with the socket's last reference,
//! however that goes (close, exit, kill). A forked child inherits the socket
//! as it inherits the group's descriptor, so the group stays claimed while
//! either holds it, as a shared group file does. The socket is close-on-exec:
//! after exec the new image has no engine state for the group.
//!
//! Invariant: a process holds at most one claim per group, from the first
//! open of the group in this process until its last group or device object
//! for that group is released.
//!
//! Without `SOFTVFIO_PRELOAD_TOP` (the library loaded by hand) there is no
//! run to name: nothing is claimed and groups are exclusive per process only.

use std::ffi::c_int;

/// The run's name for claims, read once.
fn run_name() -> Option<String> {
    std::env::var("SOFTVFIO_PRELOAD_TOP")
        .ok()
        .filter(|v| !v.is_empty())
}

/// What claiming a group gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// This process now owns the group: keep the descriptor until release.
    Held(c_int),
    /// Another process of the run owns it.
    Busy,
    /// Claims are off (no run name) or the socket could not be made: the
    /// engine's own per-process check is all there is.
    Unchecked,
}

/// Claims group `id` for this process.
pub fn claim(id: u32) -> Claim {
    let Some(run) = run_name() else {
        return Claim::Unchecked;
    };
    claim_in(&run, id)
}

fn claim_in(run: &str, id: u32) -> Claim {
    match crate::real::bind_abstract_unix(&format!("softvfio-{run}-group-{id}")) {
        Ok(fd) => Claim::Held(fd),
        Err(libc::EADDRINUSE) => Claim::Busy,
        Err(_) => Claim::Unchecked,
    }
}

/// Gives a claim up (this process's last object of the group is gone).
pub fn release(fd: c_int) {
    crate::real::close_own(fd);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_exclusive_until_released() {
        let run = format!("unit-{}", std::process::id());
        let Claim::Held(fd) = claim_in(&run, 7) else {
            panic!("first claim not held");
        };
        assert_eq!(claim_in(&run, 7), Claim::Busy);
        // Another group, another run: independent.
        let Claim::Held(other) = claim_in(&run, 8) else {
            panic!("other group not held");
        };
        let Claim::Held(other_run) = claim_in(&format!("{run}-b"), 7) else {
            panic!("other run not held");
        };
        release(fd);
        let Claim::Held(again) = claim_in(&run, 7) else {
            panic!("not free after release");
        };
        for fd in [other, other_run, again] {
            release(fd);
        }
        // In the same test: a child forked by a concurrent test would keep
        // copies of these sockets.
        a_forked_child_keeps_the_claim_until_it_exits();
    }

    fn a_forked_child_keeps_the_claim_until_it_exits() {
        let run = format!("unit-fork-{}", std::process::id());
        let Claim::Held(fd) = claim_in(&run, 3) else {
            panic!("claim not held");
        };
        let (mut r, mut w) = ([0 as c_int; 2], 0u8);
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(r.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes async-signal-safe system calls and
        // _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: plain system calls on our own descriptors.
            unsafe {
                libc::close(r[1]);
                libc::read(r[0], (&mut w as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        assert!(pid > 0);
        release(fd);
        // The child's inherited socket still holds the binding.
        assert_eq!(claim_in(&run, 3), Claim::Busy);
        // SAFETY: closing our write end lets the child read EOF and exit.
        unsafe { libc::close(r[1]) };
        let mut st = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
        let Claim::Held(again) = claim_in(&run, 3) else {
            panic!("not free after the child exited");
        };
        release(again);
        // SAFETY: our own descriptor.
        unsafe { libc::close(r[0]) };
    }
}
