//! userfaultfd, for two jobs:
//! - filling fresh anonymous memory at restart ([`Userfault`]): UFFDIO_COPY
//!   allocates each page and copies into it in one step, without zeroing
//!   it first and without a page fault per page (measured on a 2-core VM,
//!   1 GiB: 0.39 s, against 0.69-1.0 s for page faults + memcpy);
//! - tracking which pages a process writes between two checkpoints
//!   ([`WriteTracker`]): its memory is write-protected in asynchronous
//!   mode, where the kernel itself lifts the protection of a page at its
//!   first write (nobody reads the fd, no fault waits), and PAGEMAP_SCAN
//!   (`super::mem::RemoteMemory::written`) lists the pages written and
//!   protects them again.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: i32 = 1;
// _IOWR(0xAA, 0x3F, struct uffdio_api) etc.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_aa01;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_REGISTER_MODE_WP: u64 = 2;
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xc018_aa06;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
#[cfg(test)]
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
#[cfg(test)]
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

#[repr(C)]
struct Api {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct Range {
    start: u64,
    len: u64,
}

#[repr(C)]
struct Register {
    range: Range,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct Copy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// A userfaultfd of this process with `features`, or None where the
/// kernel or the privileges forbid it. Without the privilege for
/// kernel-mode faults, one for user-mode faults only (all that filling
/// and asynchronous write-protection need).
fn open(features: u64) -> Option<OwnedFd> {
    for flags in [libc::O_CLOEXEC, libc::O_CLOEXEC | UFFD_USER_MODE_ONLY] {
        // SAFETY: userfaultfd takes flags only.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            continue;
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut api = Api { api: UFFD_API, features, ioctls: 0 };
        // SAFETY: UFFDIO_API reads and writes one struct uffdio_api.
        if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) } == 0 {
            return Some(fd);
        }
    }
    None
}

pub struct Userfault {
    fd: OwnedFd,
}

impl Userfault {
    /// A userfaultfd, or None where the kernel or the privileges forbid it
    /// (then memory is filled the ordinary way).
    pub fn new() -> Option<Userfault> {
        open(0).map(|fd| Userfault { fd })
    }

    /// Takes over missing-page handling of `[start, start+len)`.
    pub fn register(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = Register { range: Range { start, len }, mode: UFFDIO_REGISTER_MODE_MISSING, ioctls: 0 };
        // SAFETY: UFFDIO_REGISTER reads and writes one struct uffdio_register.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &mut r) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        let r = Range { start, len };
        // SAFETY: UFFDIO_UNREGISTER reads one struct uffdio_range.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_UNREGISTER, &r) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Fills the (registered, not yet present) pages at `dst` with `src`.
    pub fn copy(&self, dst: u64, src: &[u8]) -> io::Result<()> {
        let mut done = 0u64;
        while done < src.len() as u64 {
            let mut c = Copy {
                dst: dst + done,
                src: src.as_ptr() as u64 + done,
                len: src.len() as u64 - done,
                mode: 0,
                copy: 0,
            };
            // SAFETY: src is readable for its length; dst lies in a range
            // registered by this process; UFFDIO_COPY writes c.copy.
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, &mut c) };
            if c.copy > 0 {
                done += c.copy as u64;
            } else if r != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EAGAIN) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl Drop for WriteTracker {
    fn drop(&mut self) {
        HELD.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[repr(C)]
struct WriteProtect {
    range: Range,
    mode: u64,
}

/// A userfaultfd a process made for its own memory with asynchronous
/// write-protection (the agent's `tracker` module), held by the
/// coordinator: registering and protecting act on that process's memory,
/// whoever calls them.
pub struct WriteTracker {
    fd: OwnedFd,
}

/// Trackers held by this process: each is an fd, and a large tree must
/// not take the fds the coordinator needs for its own work.
static HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl WriteTracker {
    /// Takes `fd` if it is a userfaultfd (an agent's word is not trusted:
    /// anything else is refused, and dropped).
    pub fn from_fd(fd: OwnedFd) -> Option<WriteTracker> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        if link.as_os_str() != "anon_inode:[userfaultfd]" {
            return None;
        }
        HELD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(WriteTracker { fd })
    }

    /// Whether one more may be held: at most a quarter of this process's
    /// fd limit (256 of the usual 1024) goes to trackers; the processes
    /// beyond are deduplicated by content.
    pub fn room_for_one_more() -> bool {
        // SAFETY: getrlimit writes one struct rlimit.
        let limit = unsafe {
            let mut r: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                return false;
            }
            r.rlim_cur
        };
        (HELD.load(std::sync::atomic::Ordering::Relaxed) as u64) < limit / 4
    }

    /// A tracker of this process's own memory (for tests), or None where
    /// the kernel or the privileges forbid it.
    #[cfg(test)]
    pub fn of_this_process() -> Option<WriteTracker> {
        let fd = open(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)?;
        HELD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(WriteTracker { fd })
    }

    /// Starts tracking `[start, start+len)` (one mapping): registers it
    /// for write-protection and protects every page, populated or not.
    /// Fails for memory that cannot be tracked (EINVAL: a kind of mapping
    /// userfaultfd does not take; EBUSY: the program's own userfaultfd
    /// has it).
    pub fn track(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = Register { range: Range { start, len }, mode: UFFDIO_REGISTER_MODE_WP, ioctls: 0 };
        // SAFETY: UFFDIO_REGISTER reads and writes one struct uffdio_register.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &mut r) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let w = WriteProtect { range: Range { start, len }, mode: UFFDIO_WRITEPROTECT_MODE_WP };
        // SAFETY: UFFDIO_WRITEPROTECT reads one struct uffdio_writeprotect.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WRITEPROTECT, &w) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_registered_memory() {
        let Some(u) = Userfault::new() else { return }; // not allowed here: nothing to test
        let len = 4 * 4096;
        let p = crate::sys::mem::test_mapping(len, 0) as u64;
        u.register(p, len as u64).unwrap();
        let data = vec![0x42u8; 2 * 4096];
        u.copy(p + 4096, &data).unwrap();
        u.unregister(p, len as u64).unwrap();
        // SAFETY: reading our own mapping.
        unsafe {
            assert_eq!(*((p + 4096) as *const u8), 0x42);
            assert_eq!(*((p + 3 * 4096 - 1) as *const u8), 0x42);
            assert_eq!(*(p as *const u8), 0); // never filled: an ordinary zero page after unregister
            libc::munmap(p as *mut _, len);
        }
    }
}
