//! Who may talk to the coordinator. Its socket has an abstract name, which
//! anyone on the machine can see (/proc/net/unix) and connect to, so every
//! connection is authenticated by the kernel's word, never by what the
//! peer says: SO_PEERCRED gives the pid and uid of the process that
//! connected, and only a process of the job's own tree (a descendant of
//! this coordinator: the program's processes, and the restore processes
//! ckrun itself starts) is heard. A coordinator that runs as a user also
//! requires the peer to be that user; one that runs as root hears the
//! processes of its tree whatever user they run as (a program may change
//! users; a restored program runs as the image's owner).
//!
//! A connection is then *pending* until its first message says what it
//! is (an agent's HELLO or a restore child's RESTORE_HELLO), with a
//! deadline; the event loop never waits for one peer.

use crate::sys::procfs::{parse_stat, read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long a connection may take to say what it is.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the kernel says about the process at the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
}

/// SO_PEERCRED of a connected unix socket.
pub fn peer_of(fd: &OwnedFd) -> std::io::Result<Peer> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Peer { pid: cred.pid, uid: cred.uid })
}

/// Whether `pid` descends from `root` (walking parents in /proc; a
/// process cannot make itself anyone's descendant).
pub fn descends_from(pid: i32, root: i32) -> bool {
    let mut p = pid;
    for _ in 0..4096 {
        if p == root {
            return p != pid;
        }
        if p <= 1 {
            return false;
        }
        match read(p, "stat").ok().and_then(|t| parse_stat(&t).ok()) {
            Some(s) => p = s.ppid,
            None => return false,
        }
    }
    false
}

/// Whether `pid` is still there (not yet reaped).
pub fn alive(pid: i32) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether a peer may talk to this coordinator (see the module docs), or
/// why not.
pub fn authorize(peer: Peer) -> Result<(), &'static str> {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if me != 0 && peer.uid != me {
        return Err("another user");
    }
    if peer.pid <= 0 || !descends_from(peer.pid, std::process::id() as i32) {
        return Err("not a process of this job");
    }
    Ok(())
}

/// A connection that has not said what it is yet.
pub struct Pending {
    pub conn: OwnedFd,
    pub peer: Peer,
    pub deadline: Instant,
}

impl Pending {
    pub fn new(conn: OwnedFd, peer: Peer) -> Self {
        Pending { conn, peer, deadline: Instant::now() + HELLO_TIMEOUT }
    }
}

/// Refusals are reported, but a flood of them is not repeated line by line.
#[derive(Default)]
pub struct Refusals(u32);

impl Refusals {
    pub fn report(&mut self, peer: Peer, why: &str) {
        self.0 += 1;
        if self.0 <= 3 {
            eprintln!(
                "ckrun: refused a connection from process {} (uid {}): {why}{}",
                peer.pid,
                peer.uid,
                if self.0 == 3 { " (further refusals are not reported)" } else { "" }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_descendants_descend() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert!(descends_from(child.id() as i32, me));
        assert!(!descends_from(me, me), "a process is not its own descendant");
        assert!(!descends_from(1, me));
        // SAFETY: getppid cannot fail.
        assert!(!descends_from(unsafe { libc::getppid() }, me));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
