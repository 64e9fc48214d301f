//! Sockets. A listening or bound socket is bound again to its address
//! (a stale unix socket file left by the dead original is replaced, and a
//! port that the killed run's connections hold in TIME_WAIT is taken
//! anyway, as the program could have with SO_REUSEADDR); a connection
//! inside the tree (a unix socket pair, or a TCP connection between two
//! sockets of the job: [`super::tcp`]) is made again, with the bytes (or
//! datagrams) queued in each end, peeked without consuming them, and EOF
//! where the other end had shut down writing; a connection to a peer
//! outside the tree, or to one that is gone, comes back as a socket whose
//! peer has closed, as after a network reset: what it had not read yet,
//! then EOF (writes see EPIPE). The coordinator reaches each socket with
//! pidfd_getfd and finds unix peers with sock_diag.

use super::ProcFd;
use crate::image::manifest::{OpenFile, SocketImage, SocketState};
use crate::restore::kernel::Kernel;
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// Integer options kept across a restart.
const OPTIONS: [(i32, i32); 5] = [
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_BROADCAST),
    (libc::SOL_SOCKET, libc::SO_PASSCRED),
];
/// TCP options kept on connections made again.
const TCP_OPTIONS: [(i32, i32); 1] = [(libc::IPPROTO_TCP, libc::TCP_NODELAY)];
/// IPV6_V6ONLY must be set before bind.
const V6ONLY: (i32, i32) = (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
/// Receive and send timeouts, kept (in milliseconds, rounded up) by every
/// socket, pairs too: a restored `recv` must not wait forever where the
/// original would have timed out.
const TIMEOUTS: [i32; 2] = [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO];

fn is_timeout(level: i32, opt: i32) -> bool {
    level == libc::SOL_SOCKET && TIMEOUTS.contains(&opt)
}

/// A socket timeout in milliseconds (0: none).
fn timeout_ms(fd: RawFd, opt: i32) -> Option<i32> {
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let mut len = size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most len bytes into tv.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, &mut tv as *mut _ as *mut _, &mut len) };
    (r == 0).then(|| {
        let ms = tv.tv_sec.saturating_mul(1000).saturating_add((tv.tv_usec + 999) / 1000);
        ms.clamp(0, i32::MAX as i64) as i32
    })
}

fn int_opt(fd: RawFd, level: i32, opt: i32) -> Option<i32> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most len bytes into v.
    (unsafe { libc::getsockopt(fd, level, opt, &mut v as *mut _ as *mut _, &mut len) } == 0).then_some(v)
}

fn name(fd: RawFd, peer: bool) -> Option<Vec<u8>> {
    // SAFETY: sockaddr_storage is plain data; the call writes at most len bytes.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let f = if peer { libc::getpeername } else { libc::getsockname };
        if f(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) != 0 {
            return None;
        }
        Some(std::slice::from_raw_parts(&ss as *const _ as *const u8, len as usize).to_vec())
    }
}

/// `pidfd_open` flag (Linux 6.9): a pidfd for one thread.
const PIDFD_THREAD: libc::c_long = libc::O_EXCL as libc::c_long;

/// A pidfd for `tid`, a thread that shares its process's fd table: the
/// checkpoint reads /proc through the thread that led it, which need not
/// be the main thread, and a plain pidfd_open takes process ids only.
fn pidfd_of(tid: i32) -> Result<OwnedFd> {
    let tgid = || {
        let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix("Tgid:"))?.trim().parse::<i32>().ok()
    };
    // A process id; a live thread (6.9+; the main thread may have ended);
    // the thread's process.
    let tries = [(tid, 0), (tid, PIDFD_THREAD), (tgid().unwrap_or(tid), 0)];
    let mut err = None;
    for (id, flags) in tries {
        // SAFETY: pidfd_open takes integers; the fd returned is ours.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, id, flags) };
        if pidfd >= 0 {
            // SAFETY: a fresh fd nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) });
        }
        err.get_or_insert_with(std::io::Error::last_os_error);
    }
    bail!("pidfd_open({tid}): {}", err.unwrap())
}

/// A copy of another process's fd (same open file description); `pid` may
/// be any thread of the process.
fn steal(pid: i32, fd: i32) -> Result<OwnedFd> {
    let pidfd = pidfd_of(pid)?;
    // SAFETY: pidfd_getfd takes integers; the fd returned is ours.
    unsafe {
        let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if got < 0 {
            bail!("pidfd_getfd({pid}, {fd}): {}", std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(got as RawFd))
    }
}

/// Captures socket `f` (inode `inode`); `tree` holds the inodes of every
/// socket of the tree, to tell pairs inside it from connections outside.
pub fn capture(
    f: &ProcFd,
    inode: u64,
    tree: &HashSet<u64>,
    tcp: &std::cell::OnceCell<super::tcp::Table>,
    warnings: &mut Vec<String>,
) -> Result<OpenFile> {
    let s = steal(f.pid, f.fd)?;
    let fd = s.as_raw_fd();
    let domain = int_opt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(0);
    let stype = int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(0);
    let protocol = int_opt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
    let mut options: Vec<(i32, i32, i32)> =
        OPTIONS.iter().filter_map(|&(l, o)| int_opt(fd, l, o).filter(|&v| v != 0).map(|v| (l, o, v))).collect();
    for opt in TIMEOUTS {
        if let Some(ms) = timeout_ms(fd, opt).filter(|&ms| ms > 0) {
            options.push((libc::SOL_SOCKET, opt, ms));
        }
    }
    if domain != libc::AF_UNIX && stype == libc::SOCK_STREAM {
        options
            .extend(TCP_OPTIONS.iter().filter_map(|&(l, o)| int_opt(fd, l, o).filter(|&v| v != 0).map(|v| (l, o, v))));
    }
    if domain == libc::AF_INET6 {
        if let Some(v) = int_opt(fd, V6ONLY.0, V6ONLY.1) {
            options.push((V6ONLY.0, V6ONLY.1, v));
        }
    }
    let unsupported = |what: String| Ok(OpenFile::Unsupported { what });
    if ![libc::AF_UNIX, libc::AF_INET, libc::AF_INET6].contains(&domain) {
        return unsupported(format!("socket of family {domain}"));
    }
    let listening = int_opt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1);
    let own = name(fd, false).unwrap_or_default();
    let peer = name(fd, true);
    let bound = is_bound(domain, &own);
    let state = if listening {
        let backlog = if domain == libc::AF_UNIX { unix_diag(inode).map(|d| d.backlog) } else { None };
        SocketState::Bound { addr: absolute_unix(f.pid, own), backlog: Some(backlog.unwrap_or(libc::SOMAXCONN)) }
    } else if let Some(p) = peer {
        let is_tcp = domain != libc::AF_UNIX && stype == libc::SOCK_STREAM;
        let peer_ino = if domain == libc::AF_UNIX {
            unix_diag(inode).and_then(|d| d.peer)
        } else if is_tcp {
            tcp.get_or_init(super::tcp::Table::load).peer_in(inode, tree)
        } else {
            None
        };
        let waiting = || queued(fd, stype).with_context(|| format!("copying what waits in {}", f.target));
        if is_tcp {
            let late = super::tcp::unsent(fd);
            if late > 0 {
                warnings.push(format!(
                    "process {}: fd {} (TCP connection to {}): {late} bytes the program wrote were not sent yet \
                     (the peer's receive queue was full); a restart will not send them",
                    f.pid,
                    f.fd,
                    describe(domain, &p)
                ));
            }
        }
        match peer_ino {
            Some(peer_ino) if tree.contains(&peer_ino) => SocketState::Pair {
                key: inode.min(peer_ino),
                first: inode < peer_ino,
                queued: waiting()?,
                eof: peer_shut_down(fd),
            },
            _ => SocketState::Disconnected { peer: describe(domain, &p), queued: waiting()? },
        }
    } else if bound {
        SocketState::Bound { addr: absolute_unix(f.pid, own), backlog: None }
    } else {
        SocketState::Fresh
    };
    Ok(OpenFile::Socket(SocketImage { domain, stype, protocol, flags: f.flags, options, state }))
}

/// Whether the other end shut down writing (or closed): reads here see EOF
/// once the queue is drained.
fn peer_shut_down(fd: RawFd) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut p, 1, 0) };
    ready > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

fn is_bound(domain: i32, addr: &[u8]) -> bool {
    match domain {
        // An unbound unix socket's name is just the family.
        libc::AF_UNIX => addr.len() > size_of::<libc::sa_family_t>(),
        // Port 0: not bound.
        _ => addr.len() >= 4 && (addr[2] != 0 || addr[3] != 0),
    }
}

/// A unix socket path bound relative to the process's cwd, made absolute.
fn absolute_unix(pid: i32, addr: Vec<u8>) -> Vec<u8> {
    let off = size_of::<libc::sa_family_t>();
    if addr.len() <= off + 1
        || addr[off] == 0
        || addr[off] == b'/'
        || u16::from_ne_bytes([addr[0], addr[1]]) != libc::AF_UNIX as u16
    {
        return addr;
    }
    let rel = &addr[off..];
    let rel = &rel[..rel.iter().position(|&b| b == 0).unwrap_or(rel.len())];
    let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else { return addr };
    let mut out = addr[..off].to_vec();
    out.extend_from_slice(cwd.join(std::ffi::OsStr::from_bytes(rel)).as_os_str().as_bytes());
    out.push(0);
    out
}

fn describe(domain: i32, addr: &[u8]) -> String {
    match domain {
        libc::AF_INET if addr.len() >= 8 => {
            let port = u16::from_be_bytes([addr[2], addr[3]]);
            format!("{}.{}.{}.{}:{port}", addr[4], addr[5], addr[6], addr[7])
        }
        libc::AF_INET6 if addr.len() >= 24 => {
            let port = u16::from_be_bytes([addr[2], addr[3]]);
            let ip: [u8; 16] = addr[8..24].try_into().unwrap();
            format!("[{}]:{port}", std::net::Ipv6Addr::from(ip))
        }
        libc::AF_UNIX => {
            let p = &addr[size_of::<libc::sa_family_t>().min(addr.len())..];
            if p.first() == Some(&0) {
                format!("@{}", String::from_utf8_lossy(&p[1..]))
            } else {
                String::from_utf8_lossy(p.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
            }
        }
        _ => "?".into(),
    }
}

/// What waits in the receive queue, left in place: one entry per datagram,
/// or one for a stream. Peeks with SO_PEEK_OFF to walk past each datagram,
/// and puts the socket's own peek offset back.
fn queued(fd: RawFd, stype: i32) -> Result<Vec<Vec<u8>>> {
    let mut avail: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut avail) };
    if stype == libc::SOCK_STREAM {
        if avail <= 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; avail as usize];
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n < 0 {
            bail!("peek: {}", std::io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        return Ok(vec![buf]);
    }
    let old = int_opt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    let set = |v: libc::c_int| {
        // SAFETY: setsockopt reads one int.
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, &v as *const _ as *const _, 4) }
    };
    set(0);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n < 0 {
            break;
        }
        out.push(buf[..n as usize].to_vec());
        if out.len() > 100_000 {
            break;
        }
    }
    set(old);
    Ok(out)
}

struct UnixDiag {
    peer: Option<u64>,
    backlog: i32,
}

/// Asks sock_diag about unix socket `inode`: its peer, and for a listening
/// socket its backlog.
fn unix_diag(inode: u64) -> Option<UnixDiag> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_PEER: u32 = 0x04;
    const UDIAG_SHOW_RQLEN: u32 = 0x10;
    const UNIX_DIAG_PEER: u16 = 2;
    const UNIX_DIAG_RQLEN: u16 = 4;
    // SAFETY: a netlink socket of our own; the request and the reply are
    // plain byte buffers read within their lengths.
    unsafe {
        let s = libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG);
        if s < 0 {
            return None;
        }
        let s = OwnedFd::from_raw_fd(s);
        const LEN: usize = 16 + 24;
        let mut req = [0u8; LEN];
        req[..4].copy_from_slice(&(LEN as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        req[16] = libc::AF_UNIX as u8;
        req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // all states
        req[24..28].copy_from_slice(&(inode as u32).to_ne_bytes());
        req[28..32].copy_from_slice(&(UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN).to_ne_bytes());
        req[32..40].copy_from_slice(&[0xff; 8]); // no cookie
        if libc::send(s.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) < 0 {
            return None;
        }
        let mut buf = [0u8; 8192];
        let n = libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < 16 + 16 {
            return None;
        }
        let typ = u16::from_ne_bytes([buf[4], buf[5]]);
        if typ != SOCK_DIAG_BY_FAMILY {
            return None;
        }
        let mut d = UnixDiag { peer: None, backlog: libc::SOMAXCONN };
        // nlmsghdr (16) + unix_diag_msg (16), then attributes.
        let mut off = 32;
        while off + 4 <= n as usize {
            let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
            let kind = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]);
            if len < 4 || off + len > n as usize {
                break;
            }
            let v = &buf[off + 4..off + len];
            match kind {
                UNIX_DIAG_PEER if v.len() >= 4 => d.peer = Some(u32::from_ne_bytes(v[..4].try_into().unwrap()) as u64),
                UNIX_DIAG_RQLEN if v.len() >= 8 => {
                    d.backlog = u32::from_ne_bytes(v[4..8].try_into().unwrap()).max(1) as i32
                }
                _ => {}
            }
            off += (len + 3) & !3;
        }
        Some(d)
    }
}

/// The timeouts among `s`'s options (the others are for sockets made anew).
fn set_timeouts(k: &mut impl Kernel, fd: i32, s: &SocketImage) -> Result<()> {
    for &(l, o, v) in s.options.iter().filter(|&&(l, o, _)| is_timeout(l, o)) {
        k.setsockopt(fd, l, o, v)?;
    }
    Ok(())
}

/// Two connected sockets to stand for a connection: a TCP one over
/// loopback for a TCP socket, a unix socket pair for anything else.
fn connected(k: &mut impl Kernel, domain: i32, base_type: i32, stype: i32) -> Result<(i32, i32)> {
    if base_type == libc::SOCK_STREAM && (domain == libc::AF_INET || domain == libc::AF_INET6) {
        return super::tcp::pair(k, domain, stype);
    }
    let domain = if domain == libc::AF_UNIX { domain } else { libc::AF_UNIX };
    Ok(k.socketpair(domain, stype)?)
}

/// A connection's own options (TCP_NODELAY) on the end made again.
fn set_tcp_options(k: &mut impl Kernel, fd: i32, s: &SocketImage) -> Result<()> {
    for &(l, o, v) in s.options.iter().filter(|&&(l, _, _)| l == libc::IPPROTO_TCP) {
        k.setsockopt(fd, l, o, v)?;
    }
    Ok(())
}

/// The sockets made so far in a restore: both ends of each pair.
#[derive(Default)]
pub struct Restored {
    pairs: HashMap<u64, (i32, i32)>,
}

impl Restored {
    pub fn make(&mut self, k: &mut impl Kernel, s: &SocketImage) -> Result<i32> {
        let stype = s.stype | libc::SOCK_CLOEXEC;
        let fd = match &s.state {
            SocketState::Pair { key, first, queued, eof } => {
                let (a, b) = match self.pairs.get(key) {
                    Some(&p) => p,
                    None => {
                        let p = connected(k, s.domain, s.stype, stype)?;
                        self.pairs.insert(*key, p);
                        p
                    }
                };
                let (mine, theirs) = if *first { (a, b) } else { (b, a) };
                // What waited for this end is sent again by the other end.
                for q in queued {
                    k.write_all(theirs, q).context("refilling a socket pair")?;
                }
                if *eof {
                    k.shutdown(theirs, libc::SHUT_WR)?;
                }
                let fd = k.dup_above(mine, 0)?;
                set_tcp_options(k, fd, s)?;
                set_timeouts(k, fd, s)?;
                fd
            }
            SocketState::Disconnected { queued, .. } => {
                // Its peer closed: what it had not read yet, then EOF.
                let (a, b) = connected(k, s.domain, s.stype, stype)?;
                for q in queued {
                    if let Err(e) = k.write_all(b, q) {
                        k.close(a);
                        k.close(b);
                        return Err(anyhow::Error::new(e).context("refilling a socket whose peer closed"));
                    }
                }
                k.close(b);
                set_tcp_options(k, a, s)?;
                set_timeouts(k, a, s)?;
                a
            }
            SocketState::Fresh | SocketState::Bound { .. } => {
                let fd = k.socket(s.domain, stype, s.protocol)?;
                for &(l, o, v) in &s.options {
                    k.setsockopt(fd, l, o, v)?;
                }
                if let SocketState::Bound { addr, backlog } = &s.state {
                    let listening = bind_again(k, fd, addr, s)?;
                    if let (Some(b), false) = (backlog, listening) {
                        k.listen(fd, *b)?;
                    }
                }
                fd
            }
        };
        k.fcntl(fd, libc::F_SETFL, s.flags as i64)?;
        Ok(fd)
    }

    /// Drops ckrun's own ends of the pairs.
    pub fn finish(self, k: &mut impl Kernel) {
        for (_, (a, b)) in self.pairs {
            k.close(a);
            k.close(b);
        }
    }
}

/// Binds to the address the socket had. A unix socket file left behind by
/// the dead original (nobody listens on it) is replaced. Returns whether
/// the socket listens already (taking a port from TIME_WAIT does both).
fn bind_again(k: &mut impl Kernel, fd: i32, addr: &[u8], s: &SocketImage) -> Result<bool> {
    let family = u16::from_ne_bytes([addr[0], addr[1]]) as i32;
    let listens = matches!(s.state, SocketState::Bound { backlog: Some(_), .. });
    match k.bind(fd, addr) {
        Ok(()) => Ok(false),
        // The killed run's connections on this port wait in TIME_WAIT:
        // bind (and listen) as SO_REUSEADDR allows, then take the option
        // back to what the program had.
        Err(e)
            if e.raw_os_error() == Some(libc::EADDRINUSE)
                && (family == libc::AF_INET || family == libc::AF_INET6)
                && !s.options.iter().any(|&(l, o, _)| l == libc::SOL_SOCKET && o == libc::SO_REUSEADDR) =>
        {
            k.setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
            let bound = k.bind(fd, addr).and_then(|()| match &s.state {
                SocketState::Bound { backlog: Some(b), .. } => k.listen(fd, *b),
                _ => Ok(()),
            });
            k.setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0)?;
            bound.map(|()| listens).map_err(|_| {
                anyhow::Error::new(crate::error::CkError::Environment(format!(
                    "the address the program listened on, {}, is in use now",
                    describe(family, addr)
                )))
            })
        }
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
            let off = size_of::<libc::sa_family_t>();
            let path = &addr[off.min(addr.len())..];
            let path =
                std::path::Path::new(std::ffi::OsStr::from_bytes(path.split(|&b| b == 0).next().unwrap_or_default()));
            let stale = u16::from_ne_bytes([addr[0], addr[1]]) == libc::AF_UNIX as u16
                && path.is_absolute()
                && std::os::unix::net::UnixStream::connect(path).is_err();
            if !stale {
                bail!(crate::error::CkError::Environment(format!(
                    "the address the program listened on, {}, is in use now",
                    describe(u16::from_ne_bytes([addr[0], addr[1]]) as i32, addr)
                )));
            }
            k.unlink(path)?;
            k.bind(fd, addr)?;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::kernel::recording::{Call, Recording};

    fn image(state: SocketState) -> SocketImage {
        SocketImage {
            domain: libc::AF_UNIX,
            stype: libc::SOCK_STREAM,
            protocol: 0,
            flags: libc::O_RDWR | libc::O_NONBLOCK,
            options: vec![(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)],
            state,
        }
    }

    #[test]
    fn a_pair_is_made_once_and_each_end_gets_what_waited_for_it() {
        let mut k = Recording::default();
        let mut r = Restored::default();
        let first = r
            .make(&mut k, &image(SocketState::Pair { key: 7, first: true, queued: vec![b"abc".to_vec()], eof: false }))
            .unwrap();
        let second =
            r.make(&mut k, &image(SocketState::Pair { key: 7, first: false, queued: vec![], eof: false })).unwrap();
        r.finish(&mut k);
        let pairs: Vec<_> = k.calls.iter().filter(|c| matches!(c, Call::SocketPair { .. })).collect();
        assert_eq!(pairs.len(), 1);
        let Call::SocketPair { a, b } = *pairs[0] else { unreachable!() };
        // "abc" waited in the first end: the second end sends it again.
        assert!(k.calls.contains(&Call::Write { fd: b, data: b"abc".to_vec() }));
        assert!(k.calls.contains(&Call::DupAbove { fd: a, min: 0, got: first }));
        assert!(k.calls.contains(&Call::DupAbove { fd: b, min: 0, got: second }));
        assert!(
            k.calls.ends_with(&[Call::Close(a), Call::Close(b)])
                || k.calls.ends_with(&[Call::Close(b), Call::Close(a)])
        );
    }

    #[test]
    fn a_pair_end_keeps_its_timeouts() {
        let mut k = Recording::default();
        let mut img = image(SocketState::Pair { key: 3, first: true, queued: vec![], eof: false });
        img.options.push((libc::SOL_SOCKET, libc::SO_RCVTIMEO, 2));
        let fd = Restored::default().make(&mut k, &img).unwrap();
        let set: Vec<_> = k.calls.iter().filter(|c| matches!(c, Call::SetSockOpt { .. })).collect();
        assert_eq!(set, [&Call::SetSockOpt { fd, level: libc::SOL_SOCKET, opt: libc::SO_RCVTIMEO, value: 2 }]);
    }

    #[test]
    fn timeouts_are_read_in_milliseconds_rounded_up() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let tv = libc::timeval { tv_sec: 1, tv_usec: 1500 };
        // SAFETY: setsockopt reads one timeval.
        let r = unsafe {
            libc::setsockopt(a.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv as *const _ as *const _, 16)
        };
        assert_eq!(r, 0);
        // The kernel keeps jiffies: at least what was set, at most a jiffy more.
        let ms = timeout_ms(a.as_raw_fd(), libc::SO_RCVTIMEO).unwrap();
        assert!((1002..=1012).contains(&ms), "{ms}");
        assert_eq!(timeout_ms(a.as_raw_fd(), libc::SO_SNDTIMEO), Some(0));
    }

    #[test]
    fn a_listener_gets_its_options_address_and_backlog() {
        let mut k = Recording::default();
        let addr = vec![1, 0, b'@', b'x'];
        let fd = Restored::default()
            .make(&mut k, &image(SocketState::Bound { addr: addr.clone(), backlog: Some(16) }))
            .unwrap();
        assert_eq!(
            k.calls,
            vec![
                Call::Socket { domain: libc::AF_UNIX, stype: libc::SOCK_STREAM | libc::SOCK_CLOEXEC, fd },
                Call::SetSockOpt { fd, level: libc::SOL_SOCKET, opt: libc::SO_REUSEADDR, value: 1 },
                Call::Bind { fd, addr },
                Call::Listen { fd, backlog: 16 },
                Call::Fcntl { fd, cmd: libc::F_SETFL, arg: (libc::O_RDWR | libc::O_NONBLOCK) as i64 },
            ]
        );
    }
}
