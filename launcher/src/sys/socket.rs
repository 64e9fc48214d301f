//! The coordinator's listening socket: abstract unix, SOCK_SEQPACKET, so
//! messages keep their boundaries and nothing appears in the file system.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn abstract_addr(name: &str) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as u16;
    if name.len() + 1 > addr.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket name too long"));
    }
    for (i, b) in name.bytes().enumerate() {
        addr.sun_path[i + 1] = b as libc::c_char;
    }
    Ok((addr, (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as libc::socklen_t))
}

fn seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes integers; the fd is owned right away.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Listens on the abstract name `name`; `AddrInUse` if another process
/// has it. Non-blocking: the event loop accepts until nothing is left.
pub fn listen(name: &str) -> io::Result<OwnedFd> {
    let (addr, len) = abstract_addr(name)?;
    let fd = seqpacket()?;
    // SAFETY: fcntl on our own socket; only the status flags change.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    // SAFETY: bind and listen on our socket with a valid address.
    unsafe {
        if libc::bind(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) != 0
            || libc::listen(fd.as_raw_fd(), 64) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// Connects to the coordinator listening on `name`.
pub fn connect(name: &str) -> io::Result<OwnedFd> {
    let (addr, len) = abstract_addr(name)?;
    let fd = seqpacket()?;
    // SAFETY: connect our socket with a valid address.
    unsafe {
        if libc::connect(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// The abstract name of the socket `fd` is connected to.
pub fn name_of(fd: std::os::fd::RawFd) -> io::Result<String> {
    // SAFETY: sockaddr_un is plain data; getpeername fills at most len bytes.
    unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::getpeername(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let n = len as usize - std::mem::size_of::<libc::sa_family_t>();
        let bytes: Vec<u8> = addr.sun_path[1..n].iter().map(|&c| c as u8).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

pub fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: accept4 with null address arguments; the fd is owned right away.
    let fd =
        unsafe { libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: fd is a fresh descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Receives one datagram into `buf` with the fds it carries (SCM_RIGHTS,
/// close-on-exec, at most `max_fds`: the kernel closes any beyond), owned:
/// whatever the caller does not keep is closed. Returns the datagram's
/// length (0: the peer is gone).
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8], max_fds: usize) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((max_fds * 4) as u32) } as usize;
    // u64 words: the control buffer must be aligned for struct cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; zeroed is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg points to buf and control, writable for their lengths,
    // which outlive the call.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* walk stays within msg_control/msg_controllen,
    // which recvmsg filled; each SCM_RIGHTS payload is an array of fds
    // now open in this process, owned by nobody else.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for k in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(k))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, fds))
}

#[cfg(test)]
/// A connected pair; the second end is inheritable (no CLOEXEC), for a child.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors we own.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: setting FD_CLOEXEC on our own end only.
    unsafe { libc::fcntl(a.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok((a, b))
}

/// A name no other coordinator uses: ckrun.PID.RANDOM.
pub fn fresh_name() -> String {
    let mut r = [0u8; 8];
    // SAFETY: getrandom writes at most r.len() bytes.
    unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    format!("ckrun.{}.{:016x}", std::process::id(), u64::from_ne_bytes(r))
}
