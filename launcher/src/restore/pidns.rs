//! Restarting in a new PID namespace, when PIDs the image needs are taken
//! on this machine (the original program still runs, or other processes
//! got those numbers). Inside, the image's PIDs are free; ckrun's
//! coordinator is the namespace's init (PID 1) and the new namespace gets
//! its own /proc, so that /proc/PID paths, `getpid()` and the image agree.
//! Outside, the ckrun the user started forwards signals to it (the trigger
//! included) and exits with its status.

use crate::coordinator::handled_signals;
use anyhow::{bail, Context, Result};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Runs `inner` as PID 1 of a new PID namespace (with a private mount
/// namespace and a fresh /proc) and returns its exit code.
pub fn run_in_new_namespace(trigger: i32, inner: impl FnOnce() -> Result<i32>) -> Result<i32> {
    let set = handled_signals(trigger);
    set.thread_block().context("blocking signals")?;
    let sigfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).context("creating a signalfd")?;
    // SAFETY: unshare(CLONE_NEWPID) only affects the children created
    // after it; fork is called while this process is single-threaded.
    let child = unsafe {
        if libc::unshare(libc::CLONE_NEWPID) != 0 {
            bail!("cannot create a PID namespace: {}", std::io::Error::last_os_error());
        }
        libc::fork()
    };
    if child < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if child == 0 {
        let code = match own_proc().and_then(|_| inner()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ckrun: {e:#}");
                crate::error::exit_code_of(&e)
            }
        };
        std::process::exit(code);
    }
    // Outside: forward signals; end as the namespace's init ends.
    loop {
        let Some(si) = sigfd.read_signal().context("reading the signalfd")? else { continue };
        let sig = si.ssi_signo as i32;
        if sig == libc::SIGCHLD {
            let mut status = 0;
            // SAFETY: waitpid on our only child.
            if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == child {
                return Ok(if libc::WIFSIGNALED(status) {
                    128 + libc::WTERMSIG(status)
                } else {
                    libc::WEXITSTATUS(status)
                });
            }
        } else if si.ssi_code <= 0 {
            // SAFETY: plain kill of our child.
            unsafe { libc::kill(child, sig) };
        }
    }
}

/// A private mount namespace with a /proc of the new PID namespace.
fn own_proc() -> Result<()> {
    // SAFETY: mount-namespace calls with NUL-terminated literals; they only
    // change this (new, private) namespace.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            bail!("cannot create a mount namespace: {}", std::io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            bail!("cannot make mounts private: {}", std::io::Error::last_os_error());
        }
        if libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), 0, std::ptr::null()) != 0 {
            bail!("cannot mount /proc for the new PID namespace: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}
