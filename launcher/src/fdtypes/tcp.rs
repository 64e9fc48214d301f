//! TCP connections. The kernel keeps their state (sequence numbers,
//! windows, the peer's address); without privileges a restart cannot put
//! that back (CRIU's TCP_REPAIR needs CAP_NET_ADMIN), and it need not: a
//! connection whose two ends are both sockets of the job comes back as a
//! new connection between the same two fds, made over loopback at restart
//! (as the peer checkpointer does), with the bytes that waited in each
//! end's receive queue, and EOF after them where the other end had shut
//! down writing. The addresses are then loopback ones of the restart.
//!
//! Which connections are inside the job: /proc/net/tcp and tcp6 list every
//! socket with its inode and both addresses; two sockets of the tree whose
//! addresses are each other's, mirrored, are the two ends of one.
//!
//! A connection whose peer is outside the job, or gone (it closed, its
//! process exited), comes back as one whose peer has closed: its unread
//! bytes first, then EOF (see `SocketState::Disconnected`).

use crate::restore::kernel::Kernel;
use anyhow::{Context, Result};
use std::collections::HashMap;

/// One line of /proc/net/tcp{,6}: both addresses (as the file shows them,
/// hex), by socket inode.
#[derive(Default)]
pub struct Table {
    ends: HashMap<u64, (String, String)>,
}

impl Table {
    /// Reads the tables of the caller's network namespace (the job's).
    pub fn load() -> Self {
        let mut ends = HashMap::new();
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(file) else { continue };
            for line in text.lines().skip(1) {
                let w: Vec<&str> = line.split_whitespace().collect();
                // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
                if let (Some(local), Some(remote), Some(inode)) = (w.get(1), w.get(2), w.get(9)) {
                    if let Ok(ino) = inode.parse::<u64>() {
                        if ino != 0 {
                            ends.insert(ino, (local.to_string(), remote.to_string()));
                        }
                    }
                }
            }
        }
        Table { ends }
    }

    /// The other end of connection `inode`, if it is one of `tree`'s
    /// sockets.
    pub fn peer_in(&self, inode: u64, tree: &std::collections::HashSet<u64>) -> Option<u64> {
        let (local, remote) = self.ends.get(&inode)?;
        self.ends
            .iter()
            .find(|(ino, (l, r))| **ino != inode && l == remote && r == local && tree.contains(ino))
            .map(|(ino, _)| *ino)
    }
}

/// Bytes the program wrote that TCP has not sent yet (SIOCOUTQNSD): on
/// loopback, what did not fit in the peer's full receive queue. (Bytes
/// sent but not yet acknowledged are in the peer's receive queue already,
/// and saved from there.) They cannot be read back without TCP_REPAIR;
/// the checkpoint names them.
pub fn unsent(fd: i32) -> u32 {
    const SIOCOUTQNSD: libc::c_ulong = 0x894B;
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQNSD writes one int.
    let r = unsafe { libc::ioctl(fd, SIOCOUTQNSD, &mut n) };
    if r == 0 {
        n.max(0) as u32
    } else {
        0
    }
}

/// A connected pair of TCP sockets of `domain` (`stype` carries the flags
/// to create them with), over loopback: (connecting end, accepted end).
pub fn pair(k: &mut impl Kernel, domain: i32, stype: i32) -> Result<(i32, i32)> {
    let loopback = loopback(domain);
    let listener = k.socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)?;
    let made = (|| -> Result<(i32, i32)> {
        k.bind(listener, &loopback).context("binding a loopback listener")?;
        k.listen(listener, 1)?;
        let at = k.local_addr(listener)?;
        let a = k.socket(domain, stype, 0)?;
        if let Err(e) = k.connect(a, &at) {
            k.close(a);
            return Err(anyhow::Error::new(e).context("connecting over loopback"));
        }
        let b = k.accept(listener, stype & libc::SOCK_CLOEXEC).context("accepting over loopback")?;
        Ok((a, b))
    })();
    k.close(listener);
    made.context("making a TCP connection again")
}

/// 127.0.0.1:0 or [::1]:0, as a raw sockaddr.
fn loopback(domain: i32) -> Vec<u8> {
    if domain == libc::AF_INET6 {
        let mut a = vec![0u8; std::mem::size_of::<libc::sockaddr_in6>()];
        a[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        a[8 + 15] = 1; // ::1
        a
    } else {
        let mut a = vec![0u8; std::mem::size_of::<libc::sockaddr_in>()];
        a[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        a[4..8].copy_from_slice(&[127, 0, 0, 1]);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;

    #[test]
    fn a_loopback_pair_is_connected_both_ways() {
        let mut k = crate::restore::kernel::Linux::default();
        for domain in [libc::AF_INET, libc::AF_INET6] {
            let (a, b) = pair(&mut k, domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC).unwrap();
            // SAFETY: fresh fds of our own.
            let (mut a, mut b) = unsafe { (std::net::TcpStream::from_raw_fd(a), std::net::TcpStream::from_raw_fd(b)) };
            a.write_all(b"ping").unwrap();
            let mut got = [0u8; 4];
            b.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"ping");
            b.write_all(b"pong").unwrap();
            a.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"pong");
        }
    }

    #[test]
    fn the_two_ends_of_a_connection_are_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let ino = |fd: i32| {
            let t = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
            let t = t.to_string_lossy().into_owned();
            t.trim_start_matches("socket:[").trim_end_matches(']').parse::<u64>().unwrap()
        };
        use std::os::fd::AsRawFd;
        let (ci, si, li) = (ino(c.as_raw_fd()), ino(s.as_raw_fd()), ino(l.as_raw_fd()));
        let table = Table::load();
        let tree: std::collections::HashSet<u64> = [ci, si].into();
        assert_eq!(table.peer_in(ci, &tree), Some(si));
        assert_eq!(table.peer_in(si, &tree), Some(ci));
        assert_eq!(table.peer_in(ci, &[ci].into()), None, "the peer is not in that tree");
        assert_eq!(table.peer_in(li, &[li, ci, si].into()), None, "a listener has no peer");
    }
}
