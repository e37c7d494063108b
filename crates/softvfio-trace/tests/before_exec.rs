//! `Command::before_exec`: the hook runs in the child, after stdio
//! redirection and before `execve`, and what it changes (here the umask)
//! is what the program starts with.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use softvfio_trace::{exit_code, Command, PassThrough, Supervisor};

#[test]
fn hook_runs_in_the_child_before_exec() {
    let out_p =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("before-exec-{}", std::process::id()));
    let out = OwnedFd::from(std::fs::File::create(&out_p).unwrap());
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "umask"]).stdout(out);
    // SAFETY: the hook only makes async-signal-safe calls (umask, write).
    unsafe {
        cmd.before_exec(Arc::new(|| {
            libc::umask(0o027);
            libc::write(1, b"hook\n".as_ptr().cast(), 5);
        }));
    }
    let parent_umask = {
        // SAFETY: umask has no memory effects; restored at once.
        let m = unsafe { libc::umask(0o022) };
        // SAFETY: as above: puts the old mask back.
        unsafe { libc::umask(m) };
        m
    };
    let status = Supervisor::new().run(cmd, &mut PassThrough).unwrap();
    assert_eq!(exit_code(status), 0);
    let text = std::fs::read_to_string(&out_p).unwrap();
    let _ = std::fs::remove_file(&out_p);
    // The hook wrote to the redirected stdout, then the program saw its umask.
    assert_eq!(text, "hook\n0027\n");
    // The supervisor's own umask is untouched.
    // SAFETY: as above.
    let now = unsafe { libc::umask(parent_umask) };
    assert_eq!(now, parent_umask);
}
