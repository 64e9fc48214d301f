//! The agent's end of its connection to the coordinator: one
//! `SOCK_SEQPACKET` datagram per message, sent and received with raw
//! syscalls so that signal handlers can use it.

use crate::state::CTL_FD;
use crate::sys;
use ckrun_proto::{encode, MsgHeader, Pod};
use core::sync::atomic::Ordering::Relaxed;

/// Largest message the agent sends in one datagram.
pub const MAX_MSG: usize = 4096;

/// Sends `body` as one message of `kind`; false if it could not be sent
/// (too large, or the coordinator is gone).
pub fn send_msg<T: Pod>(kind: u32, body: &[T]) -> bool {
    let fd = CTL_FD.load(Relaxed);
    if fd < 0 {
        return false;
    }
    let mut buf = [0u8; MAX_MSG];
    match encode(&mut buf, kind, body) {
        Some(n) => {
            let r = retry_eintr(|| sys::send(fd, &buf[..n]));
            r == n as i64
        }
        None => false,
    }
}

/// Waits for the next message; returns its header and its body bytes
/// (within `buf`), or `None` when the coordinator closed the connection.
pub fn recv_msg(buf: &mut [u8]) -> Option<(MsgHeader, &[u8])> {
    let fd = CTL_FD.load(Relaxed);
    if fd < 0 {
        return None;
    }
    let n = retry_eintr(|| sys::read(fd, buf));
    if n <= 0 {
        return None;
    }
    let msg = &buf[..n as usize];
    let hdr: MsgHeader = ckrun_proto::read_pod(msg)?;
    Some((hdr, &msg[core::mem::size_of::<MsgHeader>()..]))
}

fn retry_eintr(mut f: impl FnMut() -> i64) -> i64 {
    loop {
        let r = f();
        if r != -(libc::EINTR as i64) {
            return r;
        }
    }
}
