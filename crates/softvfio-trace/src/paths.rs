//! Turning the path a program passes to `open` into the canonical form
//! handlers match on.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Joins `raw` to `base` when relative, folds `.`, `..` and repeated
/// slashes lexically, and rewrites `/proc/self` and `/proc/thread-self`
/// for the given process and thread.
pub(crate) fn normalize(base: Option<&[u8]>, raw: &[u8], pid: i32, tid: i32) -> PathBuf {
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut all: Vec<&[u8]> = Vec::new();
    if !raw.starts_with(b"/") {
        if let Some(b) = base {
            all.extend(b.split(|c| *c == b'/'));
        }
    }
    all.extend(raw.split(|c| *c == b'/'));
    for comp in all {
        match comp {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let pid_s = pid.to_string();
    let tid_s = tid.to_string();
    let mut out: Vec<&[u8]> = Vec::with_capacity(parts.len() + 2);
    if parts.first() == Some(&&b"proc"[..]) && parts.len() >= 2 {
        out.push(b"proc");
        match parts[1] {
            b"self" => out.push(pid_s.as_bytes()),
            b"thread-self" => {
                out.push(pid_s.as_bytes());
                out.push(b"task");
                out.push(tid_s.as_bytes());
            }
            other => out.push(other),
        }
        out.extend_from_slice(&parts[2..]);
    } else {
        out = parts;
    }
    let mut s = Vec::new();
    for p in &out {
        s.push(b'/');
        s.extend_from_slice(p);
    }
    if s.is_empty() {
        s.push(b'/');
    }
    PathBuf::from(OsStr::from_bytes(&s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn normalizes() {
        assert_eq!(
            normalize(None, b"/dev/vfio/vfio", 1, 1),
            Path::new("/dev/vfio/vfio")
        );
        assert_eq!(
            normalize(None, b"//dev/./vfio//3", 1, 1),
            Path::new("/dev/vfio/3")
        );
        assert_eq!(
            normalize(Some(b"/dev"), b"vfio/../vfio/3", 1, 1),
            Path::new("/dev/vfio/3")
        );
        assert_eq!(normalize(Some(b"/"), b"../..", 1, 1), Path::new("/"));
        assert_eq!(
            normalize(None, b"/proc/self/status", 42, 43),
            Path::new("/proc/42/status")
        );
        assert_eq!(
            normalize(None, b"/proc/thread-self/status", 42, 43),
            Path::new("/proc/42/task/43/status")
        );
        assert_eq!(
            normalize(Some(b"/proc/self"), b"status", 7, 8),
            Path::new("/proc/7/status")
        );
        assert_eq!(
            normalize(None, b"/proc/99/status", 7, 8),
            Path::new("/proc/99/status")
        );
    }
}
