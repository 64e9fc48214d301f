//! The agent's part of dirty tracking (`launcher/src/checkpoint/dirty.rs`):
//! when the coordinator asks ([`ckrun_proto::SUSPEND_TRACKER`]), the
//! process makes a userfaultfd for its own memory (only a process can make
//! one for its own address space) with asynchronous write-protection,
//! passes it to the coordinator, and closes its own copy at once. The
//! coordinator registers and write-protects the memory and reads what was
//! written since through /proc/PID/pagemap (PAGEMAP_SCAN); the program
//! never holds the fd, and no page fault of it ever waits for anyone:
//! asynchronous write-protection is resolved by the kernel itself.
//!
//! Runs in the suspend handler: raw syscalls only.

use crate::state::CTL_FD;
use crate::sys;
use ckrun_proto::{encode, kind};
use core::sync::atomic::Ordering::Relaxed;

const UFFD_USER_MODE_ONLY: u64 = 1;
const UFFD_API: u64 = 0xaa;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

/// A userfaultfd with asynchronous write-protection of unpopulated memory
/// too (the features PAGEMAP_SCAN's write tracking needs), or a negative
/// errno. Without the privilege (vm.unprivileged_userfaultfd=0 and no
/// CAP_SYS_PTRACE), one for user-mode faults only: asynchronous
/// write-protection never delivers a fault anyway.
fn make() -> i64 {
    let mut err = -(libc::ENOSYS as i64);
    for extra in [0, UFFD_USER_MODE_ONLY] {
        let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | extra;
        // SAFETY: userfaultfd takes flags only.
        let fd = unsafe { sys::syscall1(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            err = fd;
            continue;
        }
        let mut api = [UFFD_API, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, 0u64];
        // SAFETY: UFFDIO_API reads and writes one struct uffdio_api (three
        // u64: api, features, ioctls), here a local array.
        let r = unsafe { sys::syscall3(libc::SYS_ioctl, fd as u64, UFFDIO_API, api.as_mut_ptr() as u64) };
        if r == 0 {
            return fd;
        }
        sys::close(fd as i32);
        err = r;
    }
    err
}

/// Makes a tracker and passes it to the coordinator ([`kind::TRACKER`]);
/// nothing is sent when the kernel refuses one (the coordinator then
/// falls back to content dedup for this process).
pub fn offer() {
    let conn = CTL_FD.load(Relaxed);
    let fd = make();
    if conn < 0 || fd < 0 {
        return;
    }
    let mut body = [0u8; 8];
    let Some(n) = encode::<u8>(&mut body, kind::TRACKER, &[]) else {
        sys::close(fd as i32);
        return;
    };
    // struct cmsghdr { size_t len; int level; int type; } + one int:
    // CMSG_LEN(4) = 20, CMSG_SPACE(4) = 24.
    let control: [u64; 3] = [20, libc::SOL_SOCKET as u64 | (libc::SCM_RIGHTS as u64) << 32, fd as u64];
    let iov = libc::iovec { iov_base: body.as_mut_ptr().cast(), iov_len: n };
    // SAFETY: msghdr is plain data; zeroed is a valid empty one.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &iov as *const libc::iovec as *mut libc::iovec;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_ptr() as *mut libc::c_void;
    msg.msg_controllen = core::mem::size_of_val(&control);
    loop {
        // SAFETY: msg points to the iovec, body and control above, all
        // live across the call; the kernel only reads them.
        let r = unsafe {
            sys::syscall3(libc::SYS_sendmsg, conn as u64, &msg as *const libc::msghdr as u64, libc::MSG_NOSIGNAL as u64)
        };
        if r != -(libc::EINTR as i64) {
            break;
        }
    }
    // The coordinator holds it now (or, gone, nobody needs it).
    sys::close(fd as i32);
}
