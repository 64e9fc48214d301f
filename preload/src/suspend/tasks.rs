//! The threads of this process, read from /proc/self/task with raw
//! syscalls (the leader runs in a signal handler).

use crate::state::RacyCell;
use crate::sys;

/// getdents64 buffer; only the leading thread uses it.
static DENTS: RacyCell<[u8; 16384]> = RacyCell::new([0; 16384]);

/// Calls `f` with every thread id of this process. Only the thread leading
/// a checkpoint may call it (it owns [`DENTS`]).
pub fn for_each_task(mut f: impl FnMut(i32)) -> bool {
    let fd = sys::open(b"/proc/self/task\0", libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
    if fd < 0 {
        return false;
    }
    // SAFETY: the leader owns DENTS for the whole checkpoint.
    let buf = unsafe { &mut *DENTS.get() };
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { sys::syscall3(sys::SYS_getdents64, fd as u64, buf.as_mut_ptr() as u64, buf.len() as u64) };
        if n <= 0 {
            break;
        }
        let mut off = 0usize;
        while off + 19 < n as usize {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let name = &buf[off + 19..off + reclen];
            if let Some(tid) = parse_decimal(name) {
                f(tid);
            }
            if reclen == 0 {
                break;
            }
            off += reclen;
        }
    }
    sys::close(fd as i32);
    true
}

/// Parses a NUL-terminated decimal name (".", ".." and others give None).
pub fn parse_decimal(name: &[u8]) -> Option<i32> {
    let mut v: i32 = 0;
    let mut any = false;
    for &c in name {
        match c {
            b'0'..=b'9' => {
                v = v.checked_mul(10)?.checked_add((c - b'0') as i32)?;
                any = true;
            }
            0 => break,
            _ => return None,
        }
    }
    any.then_some(v)
}

/// The fields of `{prefix}{id}/stat` after the command name (which may
/// hold spaces and parentheses), read into `buf`: "S ppid pgrp ...".
fn stat_fields<'a>(prefix: &[u8], id: i32, buf: &'a mut [u8; 512]) -> Option<&'a [u8]> {
    let mut path = [0u8; 64];
    path[..prefix.len()].copy_from_slice(prefix);
    let digits = format_decimal(id as u32, &mut path[prefix.len()..prefix.len() + 10]);
    let end = prefix.len() + digits;
    path[end..end + 6].copy_from_slice(b"/stat\0");
    let fd = sys::open(&path[..end + 6], libc::O_RDONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return None;
    }
    let n = sys::read(fd as i32, buf);
    sys::close(fd as i32);
    if n <= 0 {
        return None;
    }
    let s = &buf[..n as usize];
    let after = s.iter().rposition(|&c| c == b')')? + 1;
    Some(s[after..].trim_ascii_start())
}

/// Whether thread `tid` of this process still runs (exists and is neither
/// a zombie nor dead). A zombie main thread (after `pthread_exit` in main)
/// can never park.
pub fn thread_alive(tid: i32) -> bool {
    let mut buf = [0u8; 512];
    match stat_fields(b"/proc/self/task/", tid, &mut buf) {
        Some(f) => !matches!(f.first(), None | Some(b'Z' | b'X' | b'x')),
        None => false,
    }
}

/// The parent of process `pid`; None if it is gone.
fn parent_of(pid: i32) -> Option<i32> {
    let mut buf = [0u8; 512];
    let mut fields = stat_fields(b"/proc/", pid, &mut buf)?.split(|&c| c == b' ').filter(|f| !f.is_empty());
    fields.next()?; // state
    parse_decimal(fields.next()?)
}

/// Whether `ancestor` is an ancestor of `pid`. Raw syscalls only.
pub fn descends_from(pid: i32, ancestor: i32) -> bool {
    // In a PID namespace ckrun is PID 1, the ancestor of everything.
    if ancestor <= 0 || pid <= 1 {
        return false;
    }
    let mut p = pid;
    for _ in 0..64 {
        match parent_of(p) {
            Some(pp) if pp == ancestor => return true,
            Some(pp) if pp > 1 => p = pp,
            _ => return false,
        }
    }
    false
}

/// Writes `v` in decimal at the start of `out`; returns the digit count.
pub(crate) fn format_decimal(mut v: u32, out: &mut [u8]) -> usize {
    let mut tmp = [0u8; 10];
    let mut n = 0;
    loop {
        tmp[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        out[i] = tmp[n - 1 - i];
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_names() {
        assert_eq!(parse_decimal(b"1234\0"), Some(1234));
        assert_eq!(parse_decimal(b".\0"), None);
        assert_eq!(parse_decimal(b"\0"), None);
        let mut out = [0u8; 10];
        assert_eq!(format_decimal(40517, &mut out), 5);
        assert_eq!(&out[..5], b"40517");
    }

    #[test]
    fn own_threads_are_seen_and_alive() {
        let me = sys::gettid();
        let mut seen = false;
        assert!(for_each_task(|t| seen |= t == me));
        assert!(seen);
        assert!(thread_alive(me));
        assert!(!thread_alive(i32::MAX - 1));
    }

    #[test]
    fn ancestry() {
        let me = sys::getpid();
        // SAFETY: getppid takes no arguments.
        let parent = unsafe { libc::getppid() };
        assert_eq!(parent_of(me), Some(parent));
        assert!(descends_from(me, parent));
        assert!(!descends_from(me, me + 1_000_000));
    }
}
