//! userfaultfd, for filling fresh anonymous memory at restart: UFFDIO_COPY
//! allocates each page and copies into it in one step, without zeroing it
//! first and without a page fault per page (measured on a 2-core VM, 1 GiB:
//! 0.39 s, against 0.69-1.0 s for page faults + memcpy).

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

pub struct Userfault {
    fd: OwnedFd,
}

impl Userfault {
    /// A userfaultfd, or None where the kernel or the privileges forbid it
    /// (then memory is filled the ordinary way).
    pub fn new() -> Option<Userfault> {
        for flags in [libc::O_CLOEXEC, libc::O_CLOEXEC | UFFD_USER_MODE_ONLY] {
            // SAFETY: userfaultfd takes flags only.
            let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
            if fd < 0 {
                continue;
            }
            // SAFETY: a fresh fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let mut api = Api { api: UFFD_API, features: 0, ioctls: 0 };
            // SAFETY: UFFDIO_API reads and writes one struct uffdio_api.
            if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) } == 0 {
                return Some(Userfault { fd });
            }
        }
        None
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_registered_memory() {
        let Some(u) = Userfault::new() else { return }; // not allowed here: nothing to test
        let len = 4 * 4096;
        // SAFETY: a fresh private anonymous mapping, used only here.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
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
