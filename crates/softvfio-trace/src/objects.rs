//! Handler objects behind real file descriptors of the traced program.
//!
//! Each installed object is one `AF_UNIX` stream socket pair: the program
//! holds one end (a real descriptor: `dup`, `fcntl`, `fork` inheritance,
//! `SCM_RIGHTS` all work and follow kernel reference counting), the
//! supervisor holds the other (the *peer*). Identity: the program's end is
//! recognized by its socket inode (`/proc/<tid>/fd/N` reads
//! `socket:[INODE]`), which every duplicate shares. Lifetime: when the last
//! reference to the program's end goes, the kernel marks the peer
//! `EPOLLHUP`; every peer sits in one epoll set, so one non-blocking
//! `epoll_wait` finds every object whose last descriptor was closed,
//! however it was closed (`close`, `dup2` over it, close-on-exec, process
//! exit).
//!
//! The supervisor shuts down its sending side so that a stray `read()` by
//! the program sees end-of-file instead of blocking forever; not for an
//! object whose reads the handler serves (`Tracee::install_served_object`):
//! its socket then polls writable only, never readable.

use crate::errno::Errno;
use crate::handler::ObjectId;
use crate::sys;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

struct Endpoint {
    obj: ObjectId,
    peer: OwnedFd,
}

pub(crate) struct Objects {
    epoll: OwnedFd,
    by_ino: HashMap<u64, Endpoint>,
    refs: HashMap<ObjectId, usize>,
}

impl Objects {
    pub(crate) fn new() -> Result<Objects, Errno> {
        Ok(Objects {
            epoll: sys::epoll_create()?,
            by_ino: HashMap::new(),
            refs: HashMap::new(),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }

    /// Registers the program end with socket inode `ino` as a handle on
    /// `obj`; `peer` is the supervisor's end. `eof`: the peer stops
    /// sending, so that a stray `read()` gets end-of-file (else the program
    /// end never polls readable, for an object whose reads are served).
    pub(crate) fn add(
        &mut self,
        ino: u64,
        obj: ObjectId,
        peer: OwnedFd,
        eof: bool,
    ) -> Result<(), Errno> {
        if self.by_ino.contains_key(&ino) {
            return Err(Errno::EEXIST);
        }
        // A stray read() in the program gets EOF rather than blocking.
        if eof {
            let _ = sys::shutdown_write(peer.as_fd());
        }
        sys::epoll_add(self.epoll.as_fd(), peer.as_fd(), ino)?;
        self.by_ino.insert(ino, Endpoint { obj, peer });
        *self.refs.entry(obj).or_insert(0) += 1;
        Ok(())
    }

    pub(crate) fn lookup(&self, ino: u64) -> Option<ObjectId> {
        self.by_ino.get(&ino).map(|e| e.obj)
    }

    pub(crate) fn contains(&self, ino: u64) -> bool {
        self.by_ino.contains_key(&ino)
    }

    /// Live installations (program-side sockets) across all objects.
    pub(crate) fn endpoints(&self) -> usize {
        self.by_ino.len()
    }

    fn remove(&mut self, ino: u64, out: &mut Vec<ObjectId>) {
        if let Some(ep) = self.by_ino.remove(&ino) {
            let _ = sys::epoll_del(self.epoll.as_fd(), ep.peer.as_fd());
            drop(ep.peer);
            if let Some(n) = self.refs.get_mut(&ep.obj) {
                *n -= 1;
                if *n == 0 {
                    self.refs.remove(&ep.obj);
                    out.push(ep.obj);
                }
            }
        }
    }

    /// Undoes an [`add`](Self::add) whose descriptor never reached the
    /// program; the object is not reported (the caller releases it).
    pub(crate) fn withdraw(&mut self, ino: u64) {
        let mut ignored = Vec::new();
        self.remove(ino, &mut ignored);
    }

    /// Drops every endpoint whose program side is gone; returns the objects
    /// that lost their last endpoint (to be released), in no special order.
    pub(crate) fn sweep(&mut self) -> Vec<ObjectId> {
        let mut out = Vec::new();
        if self.by_ino.is_empty() {
            return out;
        }
        let mut keys = Vec::new();
        if sys::epoll_poll(self.epoll.as_fd(), &mut keys).is_err() {
            return out;
        }
        keys.sort_unstable();
        keys.dedup();
        for ino in keys {
            self.remove(ino, &mut out);
        }
        out
    }

    /// Forgets everything (end of the run); returns the objects to release.
    pub(crate) fn drain(&mut self) -> Vec<ObjectId> {
        let mut out = Vec::new();
        let inos: Vec<u64> = self.by_ino.keys().copied().collect();
        for ino in inos {
            self.remove(ino, &mut out);
        }
        out
    }
}

/// Parses the inode out of a `/proc/<tid>/fd/N` link of a socket.
pub(crate) fn socket_inode(link: &[u8]) -> Option<u64> {
    let rest = link.strip_prefix(b"socket:[")?;
    let digits = rest.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_links() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[x]"), None);
    }
}
