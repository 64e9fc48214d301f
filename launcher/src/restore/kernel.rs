//! The system calls the restore child makes before handing over to the
//! restorer, behind a trait: [`Linux`] makes them, the test-only
//! `Recording` kernel writes them down, so the set-up logic (which fd gets
//! which file, which region is mapped how) is unit-tested without a
//! process to restore.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub trait Kernel {
    fn mmap(&mut self, at: u64, len: u64, prot: i32, flags: i32, fd: i32, offset: u64) -> io::Result<()>;
    fn mprotect(&mut self, at: u64, len: u64, prot: i32) -> io::Result<()>;
    fn open(&mut self, path: &Path, flags: i32) -> io::Result<i32>;
    /// dup3: `from` onto `to`.
    fn dup_to(&mut self, from: i32, to: i32, cloexec: bool) -> io::Result<()>;
    /// F_DUPFD_CLOEXEC: a copy of `fd` at the lowest free number >= `min`.
    fn dup_above(&mut self, fd: i32, min: i32) -> io::Result<i32>;
    fn seek(&mut self, fd: i32, pos: u64) -> io::Result<()>;
    fn close(&mut self, fd: i32);
    fn chdir(&mut self, path: &Path) -> io::Result<()>;
    fn umask(&mut self, mask: u32);
    fn setrlimit(&mut self, resource: u32, cur: u64, max: u64) -> io::Result<()>;
    fn personality(&mut self, persona: u32) -> io::Result<()>;
}

fn cvt(r: libc::c_long) -> io::Result<libc::c_long> {
    crate::sys::check(r)
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

pub struct Linux;

impl Kernel for Linux {
    fn mmap(&mut self, at: u64, len: u64, prot: i32, flags: i32, fd: i32, offset: u64) -> io::Result<()> {
        // SAFETY: MAP_FIXED_NOREPLACE (set by every caller) never replaces an
        // existing mapping, so no memory in use can be disturbed.
        let r = unsafe { libc::mmap(at as *mut _, len as usize, prot, flags, fd, offset as libc::off_t) };
        if r == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if r as u64 != at {
            return Err(io::Error::other(format!("mapped at {:#x} instead of {at:#x}", r as u64)));
        }
        Ok(())
    }
    fn mprotect(&mut self, at: u64, len: u64, prot: i32) -> io::Result<()> {
        // SAFETY: only staged regions, which nothing else uses, are changed.
        cvt(unsafe { libc::mprotect(at as *mut _, len as usize, prot) } as _).map(drop)
    }
    fn open(&mut self, path: &Path, flags: i32) -> io::Result<i32> {
        let c = cpath(path)?;
        // SAFETY: c is NUL-terminated.
        cvt(unsafe { libc::open(c.as_ptr(), flags, 0) } as _).map(|fd| fd as i32)
    }
    fn dup_to(&mut self, from: i32, to: i32, cloexec: bool) -> io::Result<()> {
        if from == to {
            // SAFETY: fcntl on an fd we hold.
            return cvt(unsafe { libc::fcntl(to, libc::F_SETFD, if cloexec { libc::FD_CLOEXEC } else { 0 }) } as _)
                .map(drop);
        }
        // SAFETY: dup3 on fds we hold.
        cvt(unsafe { libc::dup3(from, to, if cloexec { libc::O_CLOEXEC } else { 0 }) } as _).map(drop)
    }
    fn dup_above(&mut self, fd: i32, min: i32) -> io::Result<i32> {
        // SAFETY: fcntl on an fd we hold.
        cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) } as _).map(|f| f as i32)
    }
    fn seek(&mut self, fd: i32, pos: u64) -> io::Result<()> {
        // SAFETY: lseek on an fd we hold.
        cvt(unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_SET) } as _).map(drop)
    }
    fn close(&mut self, fd: i32) {
        // SAFETY: closing an fd we hold.
        unsafe { libc::close(fd) };
    }
    fn chdir(&mut self, path: &Path) -> io::Result<()> {
        let c = cpath(path)?;
        // SAFETY: c is NUL-terminated.
        cvt(unsafe { libc::chdir(c.as_ptr()) } as _).map(drop)
    }
    fn umask(&mut self, mask: u32) {
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(mask) };
    }
    fn setrlimit(&mut self, resource: u32, cur: u64, max: u64) -> io::Result<()> {
        let l = libc::rlimit { rlim_cur: cur, rlim_max: max };
        // SAFETY: l is a valid rlimit.
        cvt(unsafe { libc::setrlimit(resource as _, &l) } as _).map(drop)
    }
    fn personality(&mut self, persona: u32) -> io::Result<()> {
        // SAFETY: personality takes an integer.
        cvt(unsafe { libc::personality(persona as libc::c_ulong) } as _).map(drop)
    }
}

#[cfg(test)]
pub mod recording {
    use super::*;
    use std::path::PathBuf;

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Call {
        Mmap { at: u64, len: u64, prot: i32, flags: i32, fd: i32, offset: u64 },
        Mprotect { at: u64, len: u64, prot: i32 },
        Open { path: PathBuf, flags: i32, fd: i32 },
        DupTo { from: i32, to: i32, cloexec: bool },
        DupAbove { fd: i32, min: i32, got: i32 },
        Seek { fd: i32, pos: u64 },
        Close(i32),
        Chdir(PathBuf),
        Umask(u32),
        Setrlimit(u32, u64, u64),
        Personality(u32),
    }

    /// Writes every call down; hands out fds from 100 upwards.
    #[derive(Default)]
    pub struct Recording {
        pub calls: Vec<Call>,
        next_fd: i32,
    }

    impl Recording {
        fn fd(&mut self, min: i32) -> i32 {
            self.next_fd = self.next_fd.max(100).max(min);
            self.next_fd += 1;
            self.next_fd - 1
        }
    }

    impl Kernel for Recording {
        fn mmap(&mut self, at: u64, len: u64, prot: i32, flags: i32, fd: i32, offset: u64) -> io::Result<()> {
            self.calls.push(Call::Mmap { at, len, prot, flags, fd, offset });
            Ok(())
        }
        fn mprotect(&mut self, at: u64, len: u64, prot: i32) -> io::Result<()> {
            self.calls.push(Call::Mprotect { at, len, prot });
            Ok(())
        }
        fn open(&mut self, path: &Path, flags: i32) -> io::Result<i32> {
            let fd = self.fd(0);
            self.calls.push(Call::Open { path: path.into(), flags, fd });
            Ok(fd)
        }
        fn dup_to(&mut self, from: i32, to: i32, cloexec: bool) -> io::Result<()> {
            self.calls.push(Call::DupTo { from, to, cloexec });
            Ok(())
        }
        fn dup_above(&mut self, fd: i32, min: i32) -> io::Result<i32> {
            let got = self.fd(min);
            self.calls.push(Call::DupAbove { fd, min, got });
            Ok(got)
        }
        fn seek(&mut self, fd: i32, pos: u64) -> io::Result<()> {
            self.calls.push(Call::Seek { fd, pos });
            Ok(())
        }
        fn close(&mut self, fd: i32) {
            self.calls.push(Call::Close(fd));
        }
        fn chdir(&mut self, path: &Path) -> io::Result<()> {
            self.calls.push(Call::Chdir(path.into()));
            Ok(())
        }
        fn umask(&mut self, mask: u32) {
            self.calls.push(Call::Umask(mask));
        }
        fn setrlimit(&mut self, resource: u32, cur: u64, max: u64) -> io::Result<()> {
            self.calls.push(Call::Setrlimit(resource, cur, max));
            Ok(())
        }
        fn personality(&mut self, persona: u32) -> io::Result<()> {
            self.calls.push(Call::Personality(persona));
            Ok(())
        }
    }
}
