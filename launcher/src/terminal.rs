//! Terminal job control. An interactive shell (or any program that takes
//! the terminal with `tcsetpgrp`) runs in a process group of its own, the
//! terminal's foreground group; the image records that group
//! (`Manifest::foreground`). At restart the group exists again once its
//! processes are created, and ckrun makes it the foreground group of the
//! terminal ckrun itself runs in the foreground of, before the program
//! runs: else the restored shell reads in the background, gets EIO and
//! exits. ckrun takes the terminal back for its own group when the tree
//! has ended.
//!
//! `tcsetpgrp` from a process that is not in the foreground group raises
//! SIGTTOU unless the signal is blocked: ckrun blocks it for good (it
//! never reads the terminal; with TOSTOP its messages would stop it too).

use std::io;

/// A terminal ckrun's process group is the foreground group of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Foreground {
    /// ckrun's fd of it (0, 1 or 2).
    pub fd: i32,
    /// ckrun's group (as this PID namespace sees it).
    pub pgrp: i32,
}

/// The first of ckrun's fds 0..2 that is its controlling terminal, with
/// ckrun's group in the foreground.
pub fn ours() -> Option<Foreground> {
    // SAFETY: getpgrp cannot fail.
    let pgrp = unsafe { libc::getpgrp() };
    (0..3).find_map(|fd| {
        // SAFETY: tcgetpgrp takes an integer; on an fd that is no
        // terminal, or not ours, it fails.
        let fg = unsafe { libc::tcgetpgrp(fd) };
        (fg > 0 && fg == pgrp).then_some(Foreground { fd, pgrp })
    })
}

/// Blocks SIGTTOU in this thread (and in threads started later).
fn block_sigttou() {
    // SAFETY: a local sigset; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Makes `pgid` the foreground group of terminal `fd`.
pub fn hand_to(fd: i32, pgid: i32) -> io::Result<()> {
    block_sigttou();
    // SAFETY: integer arguments only.
    if unsafe { libc::tcsetpgrp(fd, pgid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the terminal back to ckrun's group if another has it.
pub fn take_back(t: Foreground) {
    // SAFETY: integer argument only.
    if unsafe { libc::tcgetpgrp(t.fd) } != t.pgrp {
        let _ = hand_to(t.fd, t.pgrp);
    }
}
