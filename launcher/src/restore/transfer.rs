//! The conversation between the coordinator and a restore child, on the
//! connection that becomes the restored agent's: the child says which
//! process it restores, receives the tree objects it uses (fds passed with
//! SCM_RIGHTS), reports ready, takes back its semaphore undo
//! adjustments when told (after the commit), and waits for the go. Everything is made and
//! checked before any process of the tree becomes the program again, so a
//! failure anywhere aborts the whole restart with no half-restored tree.

use std::io;
use std::os::fd::RawFd;

/// child → coordinator: [`Hello`].
pub const RESTORE_HELLO: u32 = 200;
/// coordinator → child: u32 tags, and as many fds in SCM_RIGHTS.
pub const FDS: u32 = 201;
/// coordinator → child: all fds sent.
pub const FDS_END: u32 = 202;
/// child → coordinator: staged, about to hand over to the restorer.
pub const READY: u32 = 203;
/// coordinator → child: every process is ready; go.
pub const GO: u32 = 204;
/// child → coordinator: an i32 exit code, then a UTF-8 message.
pub const FAILED: u32 = 205;
/// coordinator → child, before FDS: (ID in the image, ID now) of SysV
/// shared memory segments, as i32 pairs.
pub const SEGMENT_IDS: u32 = 206;
/// coordinator → child, after READY, once the commit gave the SysV
/// semaphore sets their values: take back your undo adjustments.
pub const ADJUST: u32 = 207;
/// child → coordinator: adjustments taken back (or FAILED).
pub const ADJUSTED: u32 = 208;

/// Tag bit of a ghost file (else: an open file description).
pub const GHOST: u32 = 1 << 31;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Hello {
    pub index: u32,
    pub pid: i32,
}
// SAFETY: repr(C), two 4-byte integers, no padding.
unsafe impl ckrun_proto::Pod for Hello {}

/// Most fds in one message (the kernel takes at most 253).
const BATCH: usize = 200;

fn check(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

pub fn send(sock: RawFd, kind: u32, body: &[u8]) -> io::Result<()> {
    let mut msg = Vec::with_capacity(8 + body.len());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(body);
    // SAFETY: msg is readable for its length.
    check(unsafe { libc::send(sock, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) }).map(drop)
}

/// Sends `fds` with their `tags`, in batches, then FDS_END.
pub fn send_fds(sock: RawFd, tags: &[u32], fds: &[RawFd]) -> io::Result<()> {
    for (t, f) in tags.chunks(BATCH).zip(fds.chunks(BATCH)) {
        let mut body = Vec::with_capacity(8 + 4 * t.len());
        body.extend_from_slice(&FDS.to_ne_bytes());
        body.extend_from_slice(&(t.len() as u32).to_ne_bytes());
        for tag in t {
            body.extend_from_slice(&tag.to_ne_bytes());
        }
        let mut iov = libc::iovec { iov_base: body.as_mut_ptr().cast(), iov_len: body.len() };
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE((f.len() * 4) as u32) } as usize;
        let mut cbuf = vec![0u8; space];
        // SAFETY: msghdr is plain data; the pointers reference live buffers;
        // the cmsg header is written inside cbuf, sized by CMSG_SPACE.
        unsafe {
            let mut mh: libc::msghdr = std::mem::zeroed();
            mh.msg_iov = &mut iov;
            mh.msg_iovlen = 1;
            mh.msg_control = cbuf.as_mut_ptr().cast();
            mh.msg_controllen = space;
            let c = libc::CMSG_FIRSTHDR(&mh);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((f.len() * 4) as u32) as usize;
            std::ptr::copy_nonoverlapping(f.as_ptr(), libc::CMSG_DATA(c) as *mut RawFd, f.len());
            check(libc::sendmsg(sock, &mh, libc::MSG_NOSIGNAL))?;
        }
    }
    send(sock, FDS_END, &[])
}

/// Sends the segments' (ID in the image, ID now), in batches.
pub fn send_segment_ids(sock: RawFd, ids: &[(i32, i32)]) -> io::Result<()> {
    for batch in ids.chunks(4096) {
        let body: Vec<u8> =
            batch.iter().flat_map(|(a, b)| a.to_ne_bytes().into_iter().chain(b.to_ne_bytes())).collect();
        send(sock, SEGMENT_IDS, &body)?;
    }
    Ok(())
}

/// The pairs of a SEGMENT_IDS body.
pub fn segment_ids(body: &[u8]) -> impl Iterator<Item = (i32, i32)> + '_ {
    let int = |b: &[u8]| i32::from_ne_bytes(b.try_into().unwrap());
    body.chunks_exact(8).map(move |p| (int(&p[..4]), int(&p[4..])))
}

/// One message: its kind, its body, and any fds it carried.
pub fn recv(sock: RawFd) -> io::Result<(u32, Vec<u8>, Vec<RawFd>)> {
    let mut buf = vec![0u8; 65536];
    let (n, fds) = crate::sys::socket::recv_with_fds(sock, &mut buf, BATCH)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if n < 8 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "short message"));
    }
    let fds: Vec<RawFd> = fds.into_iter().map(std::os::fd::IntoRawFd::into_raw_fd).collect();
    let kind = u32::from_ne_bytes(buf[..4].try_into().unwrap());
    buf.truncate(n);
    Ok((kind, buf.split_off(8), fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn fds_cross_with_their_tags() {
        let (a, b) = crate::sys::socket::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        let fds: Vec<RawFd> = vec![f.as_raw_fd(); 250];
        let tags: Vec<u32> = (0..250).map(|i| if i % 2 == 0 { i } else { i | GHOST }).collect();
        send_fds(a.as_raw_fd(), &tags, &fds).unwrap();
        let mut got_tags = Vec::new();
        let mut got_fds = Vec::new();
        loop {
            let (kind, body, fds) = recv(b.as_raw_fd()).unwrap();
            if kind == FDS_END {
                break;
            }
            assert_eq!(kind, FDS);
            got_tags.extend(body.chunks(4).map(|c| u32::from_ne_bytes(c.try_into().unwrap())));
            got_fds.extend(fds);
        }
        assert_eq!(got_tags, tags);
        assert_eq!(got_fds.len(), 250);
        for fd in got_fds {
            // SAFETY: closing fds we received.
            unsafe { libc::close(fd) };
        }
    }
}
