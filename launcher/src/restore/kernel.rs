//! The system calls the restore child makes before handing over to the
//! restorer, behind a trait: [`Linux`] makes them, the test-only
//! `Recording` kernel writes them down, so the set-up logic (which fd gets
//! which file, which region is mapped how) is unit-tested without a
//! process to restore.

use crate::creds::Identity;
use crate::image::manifest::{FileIdentity, FileLock, LockKind};
use crate::timens::{Clocks, Offsets, TimeError};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub trait Kernel {
    fn mmap(&mut self, at: u64, len: u64, prot: i32, flags: i32, fd: i32, offset: u64) -> io::Result<()>;
    fn mprotect(&mut self, at: u64, len: u64, prot: i32) -> io::Result<()>;
    fn madvise(&mut self, at: u64, len: u64, advice: i32) -> io::Result<()>;
    /// Opens `path` without following a symlink in its last component
    /// (paths from an image are resolved paths: a symlink there now was
    /// put there since).
    fn open(&mut self, path: &Path, flags: i32) -> io::Result<i32>;
    /// A new open file description of what `fd` refers to.
    fn reopen(&mut self, fd: i32, flags: i32) -> io::Result<i32>;
    /// Device and inode of the file `fd` refers to.
    fn identity_of(&mut self, fd: i32) -> io::Result<FileIdentity>;
    /// From now on, this thread's opens and creations are checked as
    /// `id` (file-system uid and gid, groups); `None`: as ckrun again.
    fn become_identity(&mut self, id: Option<&Identity>) -> io::Result<()>;
    fn pread(&mut self, fd: i32, len: usize, offset: u64) -> io::Result<Vec<u8>>;
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
    fn create(&mut self, path: &Path, flags: i32, mode: u32) -> io::Result<i32>;
    /// pipe2: (read end, write end).
    fn pipe(&mut self, flags: i32) -> io::Result<(i32, i32)>;
    fn write_all(&mut self, fd: i32, data: &[u8]) -> io::Result<()>;
    fn pwrite_all(&mut self, fd: i32, data: &[u8], offset: u64) -> io::Result<()>;
    fn truncate(&mut self, fd: i32, len: u64) -> io::Result<()>;
    fn file_size(&mut self, fd: i32) -> io::Result<u64>;
    fn fcntl(&mut self, fd: i32, cmd: i32, arg: i64) -> io::Result<i64>;
    fn lock(&mut self, fd: i32, lock: &FileLock) -> io::Result<()>;
    fn eventfd(&mut self, count: u32, flags: i32) -> io::Result<i32>;
    fn timerfd(&mut self, clock: i32, flags: i32, value_ns: u64, interval_ns: u64) -> io::Result<i32>;
    fn signalfd(&mut self, mask: u64, flags: i32) -> io::Result<i32>;
    fn epoll(&mut self, flags: i32) -> io::Result<i32>;
    fn epoll_add(&mut self, ep: i32, fd: i32, events: u32, data: u64) -> io::Result<()>;
    fn memfd(&mut self, name: &str, flags: u32) -> io::Result<i32>;
    fn unlink(&mut self, path: &Path) -> io::Result<()>;
    fn mkdir(&mut self, path: &Path, mode: u32) -> io::Result<()>;
    fn rmdir(&mut self, path: &Path) -> io::Result<()>;
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    /// The calling thread's name (comm), at most 15 bytes.
    fn set_name(&mut self, name: &[u8]) -> io::Result<()>;
    fn tcsetattr(&mut self, fd: i32, termios: &[u8]) -> io::Result<()>;
    fn socket(&mut self, domain: i32, stype: i32, protocol: i32) -> io::Result<i32>;
    fn socketpair(&mut self, domain: i32, stype: i32) -> io::Result<(i32, i32)>;
    /// Binds to a raw sockaddr.
    fn bind(&mut self, fd: i32, addr: &[u8]) -> io::Result<()>;
    fn listen(&mut self, fd: i32, backlog: i32) -> io::Result<()>;
    /// Connects to a raw sockaddr (blocking).
    fn connect(&mut self, fd: i32, addr: &[u8]) -> io::Result<()>;
    /// accept4 with `flags` (SOCK_CLOEXEC).
    fn accept(&mut self, fd: i32, flags: i32) -> io::Result<i32>;
    /// getsockname, as a raw sockaddr.
    fn local_addr(&mut self, fd: i32) -> io::Result<Vec<u8>>;
    fn shutdown(&mut self, fd: i32, how: i32) -> io::Result<()>;
    /// An integer option; SO_RCVTIMEO and SO_SNDTIMEO take milliseconds.
    fn setsockopt(&mut self, fd: i32, level: i32, opt: i32, value: i32) -> io::Result<()>;
    /// Makes `sig` pending again for the process.
    fn raise(&mut self, sig: i32) -> io::Result<()>;
    /// /proc/sys/kernel/pid_max of this PID namespace.
    fn pid_max(&mut self) -> io::Result<u32>;
    fn set_pid_max(&mut self, value: u32) -> io::Result<()>;
    /// Who holds each of `ids` in this PID namespace: as a process or
    /// thread, or as the group or session ID of a process.
    fn pid_uses(&mut self, ids: &[i32]) -> Vec<PidUse>;
    /// Waits (between two looks at exiting processes).
    fn pause(&mut self, d: std::time::Duration);
    /// CLOCK_MONOTONIC and CLOCK_BOOTTIME as this process sees them.
    fn clocks(&mut self) -> Clocks;
    /// The offsets of this process's time namespace from the machine's
    /// clocks; None: the kernel has no time namespaces.
    fn time_offsets(&mut self) -> Result<Option<Offsets>, TimeError>;
    /// An fd of this process's time namespace (`/proc/self/ns/time`).
    fn open_time_namespace(&mut self) -> io::Result<i32>;
    /// unshare(CLONE_NEWTIME): the children created from now on are born
    /// in a new time namespace (this process stays in its own).
    fn unshare_time(&mut self) -> io::Result<()>;
    /// The offsets of the time namespace the children will be born in
    /// (only while none is in it).
    fn set_time_offsets(&mut self, o: Offsets) -> io::Result<()>;
    /// setns into the time namespace `fd`, for this process and the
    /// children it creates from now on.
    fn set_time_namespace(&mut self, fd: i32) -> io::Result<()>;
    /// IPC_STAT of SysV shared memory segment `id`.
    fn shm_stat(&mut self, id: i32) -> io::Result<ShmStat>;
    /// A new segment (IPC_CREAT | IPC_EXCL), with ID `id` if given
    /// (root: /proc/sys/kernel/shm_next_id); returns the ID it got.
    fn shm_make(&mut self, key: i32, size: u64, mode: u32, id: Option<i32>) -> io::Result<i32>;
    /// IPC_SET: owner and mode.
    fn shm_set_owner(&mut self, id: i32, uid: u32, gid: u32, mode: u32) -> io::Result<()>;
    fn shm_remove(&mut self, id: i32) -> io::Result<()>;
    /// Attaches the segment for a moment and lets `fill` write its whole
    /// (page-rounded) content, emptied first if `clear`.
    fn shm_write(&mut self, id: i32, clear: bool, fill: &mut dyn FnMut(&mut [u8]) -> io::Result<()>) -> io::Result<()>;
    /// Attaches bytes `offset..offset + len` of segment `id` at `at`
    /// (free address space), one mapping, as the program had it.
    fn shm_attach(&mut self, id: i32, at: u64, offset: u64, len: u64, shmflg: i32) -> io::Result<()>;
    /// semctl(GETVAL): the value of semaphore `num` of set `id`.
    fn sem_value(&mut self, id: i32, num: u16) -> io::Result<u16>;
    /// semop: `ops` applied in order, all or none (this process's undo
    /// adjustments change with those that carry SEM_UNDO).
    fn semop(&mut self, id: i32, ops: &[ckrun_proto::semadj::SemOp]) -> io::Result<()>;
}

/// What IPC_STAT tells of a SysV shared memory segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShmStat {
    pub key: i32,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits and SHM_DEST (marked destroyed).
    pub mode: u32,
    pub nattch: u64,
}

/// Whether a PID or TID number can be chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PidUse {
    Free,
    /// Only by processes that are exiting: zombies, or SIGKILL pending.
    Exiting,
    Live,
}

const PID_MAX: &str = "/proc/sys/kernel/pid_max";

/// The task `id` (a process or a thread), if it exists: exiting or live.
fn task_use(id: i32) -> PidUse {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{id}/stat")) else { return PidUse::Free };
    let state = stat.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()).unwrap_or('R');
    if matches!(state, 'Z' | 'X') {
        // A process whose main thread ended shows as a zombie while its
        // other threads run on.
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{id}/task")) else { return PidUse::Exiting };
        let live = tasks.flatten().filter(|t| t.file_name().to_str() != Some(&id.to_string())).any(|t| {
            t.file_name().to_str().and_then(|n| n.parse().ok()).is_some_and(|tid: i32| task_use(tid) == PidUse::Live)
        });
        return if live { PidUse::Live } else { PidUse::Exiting };
    }
    let status = std::fs::read_to_string(format!("/proc/{id}/status")).unwrap_or_default();
    let pending = |key: &str| {
        crate::sys::procfs::status_field(&status, key)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .is_some_and(|bits| bits & (1 << (libc::SIGKILL - 1)) != 0)
    };
    if pending("SigPnd") || pending("ShdPnd") {
        PidUse::Exiting
    } else {
        PidUse::Live
    }
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as i64 }
}

fn cvt(r: libc::c_long) -> io::Result<libc::c_long> {
    crate::sys::check(r)
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

#[derive(Default)]
pub struct Linux {
    /// ckrun's own groups, while this thread has taken another identity.
    own_groups: Option<Vec<u32>>,
}

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
    fn madvise(&mut self, at: u64, len: u64, advice: i32) -> io::Result<()> {
        // SAFETY: callers only pass flag-setting advice (MADV_DONTFORK,
        // MADV_WIPEONFORK) for staged regions: no content changes.
        cvt(unsafe { libc::madvise(at as *mut _, len as usize, advice) } as _).map(drop)
    }
    fn open(&mut self, path: &Path, flags: i32) -> io::Result<i32> {
        // O_NOFOLLOW itself would stay in the file's flags (F_GETFL shows
        // it to the program): pin the file with an O_PATH handle that does
        // not follow a symlink, refuse a symlink, then open what it pins.
        // A program that opened it with O_NOFOLLOW (SQLite does) gets it
        // opened so directly: reopening through /proc/self/fd, a symlink,
        // would fail with ELOOP.
        let c = cpath(path)?;
        if flags & libc::O_NOFOLLOW != 0 {
            // SAFETY: c is NUL-terminated.
            return cvt(unsafe { libc::open(c.as_ptr(), flags) } as _).map(|fd| fd as i32);
        }
        // SAFETY: c is NUL-terminated.
        let handle =
            cvt(unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) } as _)? as i32;
        // SAFETY: stat is plain data; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: st is a valid stat buffer; handle is ours.
        let r = cvt(unsafe { libc::fstat(handle, &mut st) } as _);
        let fd = match r {
            Ok(_) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => Err(io::Error::from_raw_os_error(libc::ELOOP)),
            Ok(_) => self.reopen(handle, flags),
            Err(e) => Err(e),
        };
        self.close(handle);
        fd
    }
    fn reopen(&mut self, fd: i32, flags: i32) -> io::Result<i32> {
        let c = CString::new(format!("/proc/self/fd/{fd}")).unwrap();
        // The /proc link is a symlink: O_NOFOLLOW would refuse it (ELOOP).
        // A deleted file's description comes back without that flag.
        let flags = flags & !libc::O_NOFOLLOW;
        // SAFETY: c is NUL-terminated; the /proc link names our own fd.
        cvt(unsafe { libc::open(c.as_ptr(), flags, 0) } as _).map(|fd| fd as i32)
    }
    fn identity_of(&mut self, fd: i32) -> io::Result<FileIdentity> {
        // SAFETY: stat is plain data; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: st is a valid stat buffer.
        cvt(unsafe { libc::fstat(fd, &mut st) } as _)?;
        Ok(FileIdentity { dev: st.st_dev, inode: st.st_ino })
    }
    fn become_identity(&mut self, id: Option<&Identity>) -> io::Result<()> {
        use crate::creds::raw;
        match id {
            Some(id) => {
                if self.own_groups.is_none() {
                    self.own_groups = Some(crate::creds::current_groups());
                }
                // Without privileges (a user namespace that denies
                // setgroups) the groups stay the user's own.
                match raw::setgroups(&id.groups) {
                    Err(e) if e.raw_os_error() != Some(libc::EPERM) => return Err(e),
                    _ => {}
                }
                raw::setfsgid(id.gid)?;
                raw::setfsuid(id.uid)
            }
            None => {
                // SAFETY: geteuid/getegid cannot fail.
                let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
                raw::setfsuid(uid)?;
                raw::setfsgid(gid)?;
                match self.own_groups.take() {
                    Some(g) => {
                        raw::setgroups(&g).or_else(
                            |e| {
                                if e.raw_os_error() == Some(libc::EPERM) {
                                    Ok(())
                                } else {
                                    Err(e)
                                }
                            },
                        )
                    }
                    None => Ok(()),
                }
            }
        }
    }
    fn pread(&mut self, fd: i32, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            // SAFETY: buf[got..] is writable for len - got bytes.
            let n = cvt(unsafe {
                libc::pread(fd, buf[got..].as_mut_ptr().cast(), len - got, (offset + got as u64) as libc::off_t)
            } as _)?;
            if n == 0 {
                break;
            }
            got += n as usize;
        }
        buf.truncate(got);
        Ok(buf)
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
    fn create(&mut self, path: &Path, flags: i32, mode: u32) -> io::Result<i32> {
        let c = cpath(path)?;
        // SAFETY: c is NUL-terminated.
        cvt(unsafe { libc::open(c.as_ptr(), flags, mode) } as _).map(|fd| fd as i32)
    }
    fn pipe(&mut self, flags: i32) -> io::Result<(i32, i32)> {
        let mut fds = [0; 2];
        // SAFETY: fds holds two ints.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) } as _)?;
        Ok((fds[0], fds[1]))
    }
    fn write_all(&mut self, fd: i32, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            // SAFETY: data is readable for its length.
            let n = cvt(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) } as _)?;
            data = &data[n as usize..];
        }
        Ok(())
    }
    fn pwrite_all(&mut self, fd: i32, mut data: &[u8], mut offset: u64) -> io::Result<()> {
        while !data.is_empty() {
            // SAFETY: data is readable for its length.
            let n = cvt(unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), offset as libc::off_t) } as _)?;
            data = &data[n as usize..];
            offset += n as u64;
        }
        Ok(())
    }
    fn truncate(&mut self, fd: i32, len: u64) -> io::Result<()> {
        // SAFETY: ftruncate on an fd we hold.
        cvt(unsafe { libc::ftruncate(fd, len as libc::off_t) } as _).map(drop)
    }
    fn file_size(&mut self, fd: i32) -> io::Result<u64> {
        // SAFETY: stat is plain data; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: st is a valid stat buffer.
        cvt(unsafe { libc::fstat(fd, &mut st) } as _)?;
        Ok(st.st_size as u64)
    }
    fn fcntl(&mut self, fd: i32, cmd: i32, arg: i64) -> io::Result<i64> {
        // SAFETY: the commands used take an integer argument.
        cvt(unsafe { libc::fcntl(fd, cmd, arg as libc::c_long) } as _)
    }
    fn lock(&mut self, fd: i32, l: &FileLock) -> io::Result<()> {
        if l.kind == LockKind::Flock {
            let op = if l.write { libc::LOCK_EX } else { libc::LOCK_SH };
            // SAFETY: flock on an fd we hold.
            return cvt(unsafe { libc::flock(fd, op | libc::LOCK_NB) } as _).map(drop);
        }
        // SAFETY: struct flock is plain data.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = if l.write { libc::F_WRLCK } else { libc::F_RDLCK } as _;
        fl.l_whence = libc::SEEK_SET as _;
        fl.l_start = l.start as _;
        fl.l_len = l.len as _;
        let cmd = if l.kind == LockKind::Ofd { libc::F_OFD_SETLK } else { libc::F_SETLK };
        // SAFETY: fl is a valid struct flock.
        cvt(unsafe { libc::fcntl(fd, cmd, &fl) } as _).map(drop)
    }
    fn eventfd(&mut self, count: u32, flags: i32) -> io::Result<i32> {
        // SAFETY: integer arguments only.
        cvt(unsafe { libc::eventfd(count, flags) } as _).map(|fd| fd as i32)
    }
    fn timerfd(&mut self, clock: i32, flags: i32, value_ns: u64, interval_ns: u64) -> io::Result<i32> {
        // SAFETY: integer arguments only.
        let fd = cvt(unsafe { libc::timerfd_create(clock, flags) } as _)? as i32;
        let its = libc::itimerspec { it_interval: timespec(interval_ns), it_value: timespec(value_ns) };
        // SAFETY: its is a valid itimerspec; no old value wanted.
        cvt(unsafe { libc::timerfd_settime(fd, 0, &its, std::ptr::null_mut()) } as _)?;
        Ok(fd)
    }
    fn signalfd(&mut self, mask: u64, flags: i32) -> io::Result<i32> {
        // SAFETY: a sigset_t whose first word holds signals 1..64.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            *(&mut set as *mut libc::sigset_t as *mut u64) = mask;
            cvt(libc::signalfd(-1, &set, flags) as _).map(|fd| fd as i32)
        }
    }
    fn epoll(&mut self, flags: i32) -> io::Result<i32> {
        // SAFETY: integer argument only.
        cvt(unsafe { libc::epoll_create1(flags) } as _).map(|fd| fd as i32)
    }
    fn epoll_add(&mut self, ep: i32, fd: i32, events: u32, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: ev is a valid epoll_event.
        cvt(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } as _).map(drop)
    }
    fn memfd(&mut self, name: &str, flags: u32) -> io::Result<i32> {
        let c = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in memfd name"))?;
        // SAFETY: c is NUL-terminated.
        cvt(unsafe { libc::memfd_create(c.as_ptr(), flags) } as _).map(|fd| fd as i32)
    }
    fn unlink(&mut self, path: &Path) -> io::Result<()> {
        let c = cpath(path)?;
        // SAFETY: c is NUL-terminated.
        cvt(unsafe { libc::unlink(c.as_ptr()) } as _).map(drop)
    }
    fn mkdir(&mut self, path: &Path, mode: u32) -> io::Result<()> {
        let c = cpath(path)?;
        // SAFETY: c is NUL-terminated.
        cvt(unsafe { libc::mkdir(c.as_ptr(), mode) } as _).map(drop)
    }
    fn rmdir(&mut self, path: &Path) -> io::Result<()> {
        let c = cpath(path)?;
        // SAFETY: c is NUL-terminated.
        cvt(unsafe { libc::rmdir(c.as_ptr()) } as _).map(drop)
    }
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let (a, b) = (cpath(from)?, cpath(to)?);
        // SAFETY: both paths are NUL-terminated.
        cvt(unsafe { libc::rename(a.as_ptr(), b.as_ptr()) } as _).map(drop)
    }
    fn set_name(&mut self, name: &[u8]) -> io::Result<()> {
        let mut comm = [0u8; 16];
        let n = name.iter().position(|&b| b == 0).unwrap_or(name.len()).min(15);
        comm[..n].copy_from_slice(&name[..n]);
        // SAFETY: comm is a NUL-terminated 16-byte buffer, as PR_SET_NAME reads.
        cvt(unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) } as _).map(drop)
    }
    fn tcsetattr(&mut self, fd: i32, termios: &[u8]) -> io::Result<()> {
        if termios.len() != std::mem::size_of::<libc::termios>() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "termios of another size"));
        }
        // SAFETY: the bytes are a termios saved from tcgetattr (size checked);
        // read_unaligned has no alignment requirement.
        let t: libc::termios = unsafe { std::ptr::read_unaligned(termios.as_ptr() as *const libc::termios) };
        // SAFETY: t is a valid termios.
        cvt(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } as _).map(drop)
    }
    fn socket(&mut self, domain: i32, stype: i32, protocol: i32) -> io::Result<i32> {
        // SAFETY: integer arguments only.
        cvt(unsafe { libc::socket(domain, stype, protocol) } as _).map(|fd| fd as i32)
    }
    fn socketpair(&mut self, domain: i32, stype: i32) -> io::Result<(i32, i32)> {
        let mut fds = [0; 2];
        // SAFETY: fds holds two ints.
        cvt(unsafe { libc::socketpair(domain, stype, 0, fds.as_mut_ptr()) } as _)?;
        Ok((fds[0], fds[1]))
    }
    fn bind(&mut self, fd: i32, addr: &[u8]) -> io::Result<()> {
        // SAFETY: addr is a sockaddr of addr.len() bytes, as getsockname gave it.
        cvt(unsafe { libc::bind(fd, addr.as_ptr().cast(), addr.len() as libc::socklen_t) } as _).map(drop)
    }
    fn listen(&mut self, fd: i32, backlog: i32) -> io::Result<()> {
        // SAFETY: integer arguments only.
        cvt(unsafe { libc::listen(fd, backlog) } as _).map(drop)
    }
    fn connect(&mut self, fd: i32, addr: &[u8]) -> io::Result<()> {
        // SAFETY: addr is a sockaddr of addr.len() bytes.
        cvt(unsafe { libc::connect(fd, addr.as_ptr().cast(), addr.len() as libc::socklen_t) } as _).map(drop)
    }
    fn accept(&mut self, fd: i32, flags: i32) -> io::Result<i32> {
        // SAFETY: no address is asked for.
        cvt(unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), flags) } as _).map(|fd| fd as i32)
    }
    fn local_addr(&mut self, fd: i32) -> io::Result<Vec<u8>> {
        // SAFETY: sockaddr_storage is plain data; getsockname writes at most len bytes.
        unsafe {
            let mut ss: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            cvt(libc::getsockname(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) as _)?;
            Ok(std::slice::from_raw_parts(&ss as *const _ as *const u8, len as usize).to_vec())
        }
    }
    fn shutdown(&mut self, fd: i32, how: i32) -> io::Result<()> {
        // SAFETY: integer arguments only.
        cvt(unsafe { libc::shutdown(fd, how) } as _).map(drop)
    }
    fn setsockopt(&mut self, fd: i32, level: i32, opt: i32, value: i32) -> io::Result<()> {
        if level == libc::SOL_SOCKET && (opt == libc::SO_RCVTIMEO || opt == libc::SO_SNDTIMEO) {
            let tv = libc::timeval { tv_sec: (value / 1000) as _, tv_usec: (value % 1000 * 1000) as _ };
            let len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
            // SAFETY: setsockopt reads one timeval.
            return cvt(unsafe { libc::setsockopt(fd, level, opt, &tv as *const libc::timeval as *const _, len) } as _)
                .map(drop);
        }
        // SAFETY: setsockopt reads one int.
        cvt(unsafe { libc::setsockopt(fd, level, opt, &value as *const i32 as *const _, 4) } as _).map(drop)
    }
    fn raise(&mut self, sig: i32) -> io::Result<()> {
        // SAFETY: integer arguments only.
        cvt(unsafe { libc::kill(libc::getpid(), sig) } as _).map(drop)
    }
    fn pid_max(&mut self) -> io::Result<u32> {
        std::fs::read_to_string(PID_MAX)?
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pid_max is not a number"))
    }
    fn set_pid_max(&mut self, value: u32) -> io::Result<()> {
        std::fs::write(PID_MAX, value.to_string())
    }
    fn pid_uses(&mut self, ids: &[i32]) -> Vec<PidUse> {
        let mut uses: Vec<PidUse> = ids.iter().map(|&id| task_use(id)).collect();
        // Group and session IDs keep a number taken after its process is
        // gone, as long as a member lives.
        let Ok(dir) = std::fs::read_dir("/proc") else { return uses };
        for e in dir.flatten() {
            let Some(q) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let Ok(text) = std::fs::read_to_string(e.path().join("stat")) else { continue };
            let Ok(st) = crate::sys::procfs::parse_stat(&text) else { continue };
            for (id, u) in ids.iter().zip(uses.iter_mut()) {
                if *id != q && (st.pgrp == *id || st.session == *id) && *u != PidUse::Live {
                    *u = (*u).max(task_use(q));
                }
            }
        }
        uses
    }
    fn pause(&mut self, d: std::time::Duration) {
        std::thread::sleep(d);
    }
    fn shm_stat(&mut self, id: i32) -> io::Result<ShmStat> {
        // SAFETY: shmid_ds is plain data; IPC_STAT fills it.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: ds is a valid shmid_ds.
        cvt(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } as _)?;
        let p = &ds.shm_perm;
        Ok(ShmStat {
            key: p.__key,
            size: ds.shm_segsz as u64,
            uid: p.uid,
            gid: p.gid,
            mode: p.mode as u32,
            nattch: ds.shm_nattch as u64,
        })
    }
    fn shm_make(&mut self, key: i32, size: u64, mode: u32, id: Option<i32>) -> io::Result<i32> {
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32;
        // SAFETY: integer arguments only.
        let create = || unsafe { libc::shmget(key, size as usize, flags) };
        // SAFETY: IPC_RMID of the segment just made with the wrong ID.
        let remove = |other: i32| unsafe {
            libc::shmctl(other, libc::IPC_RMID, std::ptr::null_mut());
        };
        // Only root of the first user namespace may choose: elsewhere the
        // kernel hands out the next free ID, which the caller checks.
        crate::sysv::make_with_id("shm_next_id", id, create, remove)
    }
    fn shm_set_owner(&mut self, id: i32, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        // SAFETY: shmid_ds is plain data; IPC_STAT fills it, IPC_SET reads
        // it back with the owner and mode changed.
        unsafe {
            let mut ds: libc::shmid_ds = std::mem::zeroed();
            cvt(libc::shmctl(id, libc::IPC_STAT, &mut ds) as _)?;
            ds.shm_perm.uid = uid;
            ds.shm_perm.gid = gid;
            ds.shm_perm.mode = (mode & 0o777) as _;
            cvt(libc::shmctl(id, libc::IPC_SET, &mut ds) as _).map(drop)
        }
    }
    fn shm_remove(&mut self, id: i32) -> io::Result<()> {
        // SAFETY: IPC_RMID takes no buffer.
        cvt(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } as _).map(drop)
    }
    fn shm_write(&mut self, id: i32, clear: bool, fill: &mut dyn FnMut(&mut [u8]) -> io::Result<()>) -> io::Result<()> {
        let size = self.shm_stat(id)?.size.div_ceil(crate::sys::PAGE_SIZE) * crate::sys::PAGE_SIZE;
        // SAFETY: attaches where the kernel finds room; nothing else of
        // ckrun uses that address range until the shmdt below.
        let at = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        if at as isize == -1 {
            return Err(io::Error::last_os_error());
        }
        // What the killed run wrote after the checkpoint goes: the pages
        // are given back to the kernel (holes read as zeros), not written.
        // SAFETY: the range is the attachment made above.
        if clear && unsafe { libc::madvise(at, size as usize, libc::MADV_REMOVE) } != 0 {
            // SAFETY: as above; writable.
            unsafe { std::ptr::write_bytes(at as *mut u8, 0, size as usize) };
        }
        // SAFETY: the attachment is `size` bytes, writable, and stays
        // attached until after `fill` returns; no processes of the job run.
        let r = fill(unsafe { std::slice::from_raw_parts_mut(at as *mut u8, size as usize) });
        // SAFETY: detaches the attachment made above.
        unsafe { libc::shmdt(at) };
        r
    }
    fn shm_attach(&mut self, id: i32, at: u64, offset: u64, len: u64, shmflg: i32) -> io::Result<()> {
        let page = crate::sys::PAGE_SIZE;
        let size = self.shm_stat(id)?.size.div_ceil(page) * page;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(io::Error::other(format!("the segment has {size} bytes, the mapping ends beyond")));
        }
        // `at` is taken first, so that the kernel cannot put the whole
        // attachment over it; the part the program had mapped then moves
        // there (mremap keeps it one attachment of the segment, which
        // shm_nattch counts once) and the rest goes.
        self.mmap(
            at,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )?;
        // SAFETY: attaches where the kernel finds room.
        let base = unsafe { libc::shmat(id, std::ptr::null(), shmflg) } as u64;
        if base as i64 == -1 {
            let e = io::Error::last_os_error();
            // SAFETY: the placeholder mapped above.
            unsafe { libc::munmap(at as *mut _, len as usize) };
            return Err(e);
        }
        let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        // SAFETY: moves part of the attachment made above over the
        // placeholder; both are this process's own and unused.
        let moved = unsafe { libc::mremap((base + offset) as *mut _, len as usize, len as usize, flags, at) };
        let e = io::Error::last_os_error();
        // SAFETY: what is left of the temporary attachment; unused.
        unsafe {
            if offset > 0 {
                libc::munmap(base as *mut _, offset as usize);
            }
            if offset + len < size {
                libc::munmap((base + offset + len) as *mut _, (size - offset - len) as usize);
            }
        }
        if moved as u64 != at {
            // SAFETY: the placeholder or the moved part, ours.
            unsafe { libc::munmap(at as *mut _, len as usize) };
            return Err(e);
        }
        Ok(())
    }
    fn clocks(&mut self) -> Clocks {
        crate::timens::now()
    }
    fn time_offsets(&mut self) -> Result<Option<Offsets>, TimeError> {
        crate::timens::offsets_of("self")
    }
    fn open_time_namespace(&mut self) -> io::Result<i32> {
        // SAFETY: a NUL-terminated literal.
        cvt(unsafe { libc::open(c"/proc/self/ns/time".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) } as _)
            .map(|fd| fd as i32)
    }
    fn unshare_time(&mut self) -> io::Result<()> {
        // SAFETY: unshare takes flags only; CLONE_NEWTIME changes the
        // namespace of this process's future children, nothing of its own.
        cvt(unsafe { libc::unshare(libc::CLONE_NEWTIME) } as _).map(drop)
    }
    fn set_time_offsets(&mut self, o: Offsets) -> io::Result<()> {
        // One write: the kernel takes both lines at once, or neither.
        std::fs::write("/proc/self/timens_offsets", crate::timens::offsets_text(o))
    }
    fn set_time_namespace(&mut self, fd: i32) -> io::Result<()> {
        // SAFETY: setns with an fd we hold; the kernel checks it is a time
        // namespace and that this process is single-threaded.
        cvt(unsafe { libc::setns(fd, libc::CLONE_NEWTIME) } as _).map(drop)
    }
    fn sem_value(&mut self, id: i32, num: u16) -> io::Result<u16> {
        // SAFETY: GETVAL takes no argument beyond the integers.
        cvt(unsafe { libc::semctl(id, num as i32, libc::GETVAL) } as _).map(|v| v as u16)
    }
    fn semop(&mut self, id: i32, ops: &[ckrun_proto::semadj::SemOp]) -> io::Result<()> {
        // SAFETY: SemOp has the layout of struct sembuf (size checked by
        // the agent's tests); the kernel reads ops.len() of them.
        cvt(unsafe { libc::semop(id, ops.as_ptr() as *mut libc::sembuf, ops.len()) } as _).map(drop)
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
        Madvise { at: u64, len: u64, advice: i32 },
        Open { path: PathBuf, flags: i32, fd: i32 },
        Reopen { from: i32, flags: i32, fd: i32 },
        Become(Option<u32>),
        DupTo { from: i32, to: i32, cloexec: bool },
        DupAbove { fd: i32, min: i32, got: i32 },
        Seek { fd: i32, pos: u64 },
        Close(i32),
        Chdir(PathBuf),
        Umask(u32),
        Setrlimit(u32, u64, u64),
        Personality(u32),
        Create { path: PathBuf, flags: i32, mode: u32, fd: i32 },
        Pipe { r: i32, w: i32 },
        Write { fd: i32, data: Vec<u8> },
        Pwrite { fd: i32, len: usize, offset: u64 },
        Truncate { fd: i32, len: u64 },
        FileSize(i32),
        Fcntl { fd: i32, cmd: i32, arg: i64 },
        Lock { fd: i32, lock: FileLock },
        EventFd { count: u32, flags: i32, fd: i32 },
        TimerFd { clock: i32, flags: i32, value_ns: u64, interval_ns: u64, fd: i32 },
        SignalFd { mask: u64, flags: i32, fd: i32 },
        Epoll { flags: i32, fd: i32 },
        EpollAdd { ep: i32, fd: i32, events: u32, data: u64 },
        Memfd { name: String, fd: i32 },
        Unlink(PathBuf),
        Mkdir(PathBuf),
        Rmdir(PathBuf),
        SetName(Vec<u8>),
        Connect { fd: i32, addr: Vec<u8> },
        Accept { listener: i32, fd: i32 },
        Shutdown { fd: i32, how: i32 },
        Rename { from: PathBuf, to: PathBuf },
        Tcsetattr(i32),
        Raise(i32),
        Socket { domain: i32, stype: i32, fd: i32 },
        SocketPair { a: i32, b: i32 },
        Bind { fd: i32, addr: Vec<u8> },
        Listen { fd: i32, backlog: i32 },
        SetSockOpt { fd: i32, level: i32, opt: i32, value: i32 },
        SetPidMax(u32),
        ShmMake { key: i32, size: u64, mode: u32, id: Option<i32> },
        ShmSetOwner { id: i32, uid: u32, gid: u32, mode: u32 },
        ShmRemove(i32),
        ShmWrite { id: i32, clear: bool },
        ShmAttach { id: i32, at: u64, offset: u64, len: u64, shmflg: i32 },
        OpenTimeNamespace(i32),
        UnshareTime,
        SetTimeOffsets(Offsets),
        SetTimeNamespace(i32),
        Semop { id: i32, ops: Vec<ckrun_proto::semadj::SemOp> },
    }

    /// Writes every call down; hands out fds from 100 upwards.
    #[derive(Default)]
    pub struct Recording {
        pub calls: Vec<Call>,
        next_fd: i32,
        /// What file_size answers.
        pub sizes: u64,
        /// What identity_of answers (for fd 2: `stderr_identity`).
        pub identity: FileIdentity,
        pub stderr_identity: FileIdentity,
        /// What pread answers.
        pub tail: Vec<u8>,
        /// What pid_max answers (set_pid_max changes it).
        pub pid_max_value: u32,
        /// What pid_uses answers for an ID, look after look (the last
        /// answer stays); Free for IDs not named.
        pub uses: std::collections::HashMap<i32, Vec<PidUse>>,
        /// How many times pause was called.
        pub pauses: u32,
        /// The SysV segments there are, by ID.
        pub segments: std::collections::HashMap<i32, ShmStat>,
        /// The ID shm_make gives when none is asked for, or the one asked
        /// for is taken.
        pub next_shm_id: i32,
        /// What shm_write's fill wrote, by segment.
        pub written: std::collections::HashMap<i32, Vec<u8>>,
        /// What clocks answers.
        pub clocks_value: Clocks,
        /// What time_offsets answers (None: no time namespaces).
        pub offsets_value: Option<Offsets>,
        /// unshare_time fails with EPERM (a seccomp filter's answer).
        pub refuse_time_namespace: bool,
        /// What sem_value answers, by (set, semaphore).
        pub sem_values: std::collections::HashMap<(i32, u16), u16>,
        /// The errors the next semop calls fail with, in order.
        pub semop_errors: Vec<i32>,
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
        fn madvise(&mut self, at: u64, len: u64, advice: i32) -> io::Result<()> {
            self.calls.push(Call::Madvise { at, len, advice });
            Ok(())
        }
        fn open(&mut self, path: &Path, flags: i32) -> io::Result<i32> {
            let fd = self.fd(0);
            self.calls.push(Call::Open { path: path.into(), flags, fd });
            Ok(fd)
        }
        fn reopen(&mut self, from: i32, flags: i32) -> io::Result<i32> {
            let fd = self.fd(0);
            self.calls.push(Call::Reopen { from, flags, fd });
            Ok(fd)
        }
        fn identity_of(&mut self, fd: i32) -> io::Result<FileIdentity> {
            Ok(if fd == 2 { self.stderr_identity } else { self.identity })
        }
        fn become_identity(&mut self, id: Option<&Identity>) -> io::Result<()> {
            self.calls.push(Call::Become(id.map(|i| i.uid)));
            Ok(())
        }
        fn pread(&mut self, _fd: i32, len: usize, _offset: u64) -> io::Result<Vec<u8>> {
            Ok(self.tail.iter().copied().take(len).collect())
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
        fn create(&mut self, path: &Path, flags: i32, mode: u32) -> io::Result<i32> {
            let fd = self.fd(0);
            self.calls.push(Call::Create { path: path.into(), flags, mode, fd });
            Ok(fd)
        }
        fn pipe(&mut self, _flags: i32) -> io::Result<(i32, i32)> {
            let (r, w) = (self.fd(0), self.fd(0));
            self.calls.push(Call::Pipe { r, w });
            Ok((r, w))
        }
        fn write_all(&mut self, fd: i32, data: &[u8]) -> io::Result<()> {
            self.calls.push(Call::Write { fd, data: data.to_vec() });
            Ok(())
        }
        fn pwrite_all(&mut self, fd: i32, data: &[u8], offset: u64) -> io::Result<()> {
            self.calls.push(Call::Pwrite { fd, len: data.len(), offset });
            Ok(())
        }
        fn truncate(&mut self, fd: i32, len: u64) -> io::Result<()> {
            self.calls.push(Call::Truncate { fd, len });
            Ok(())
        }
        fn file_size(&mut self, fd: i32) -> io::Result<u64> {
            self.calls.push(Call::FileSize(fd));
            Ok(self.sizes)
        }
        fn fcntl(&mut self, fd: i32, cmd: i32, arg: i64) -> io::Result<i64> {
            self.calls.push(Call::Fcntl { fd, cmd, arg });
            Ok(0)
        }
        fn lock(&mut self, fd: i32, lock: &FileLock) -> io::Result<()> {
            self.calls.push(Call::Lock { fd, lock: *lock });
            Ok(())
        }
        fn eventfd(&mut self, count: u32, flags: i32) -> io::Result<i32> {
            let fd = self.fd(0);
            self.calls.push(Call::EventFd { count, flags, fd });
            Ok(fd)
        }
        fn timerfd(&mut self, clock: i32, flags: i32, value_ns: u64, interval_ns: u64) -> io::Result<i32> {
            let fd = self.fd(0);
            self.calls.push(Call::TimerFd { clock, flags, value_ns, interval_ns, fd });
            Ok(fd)
        }
        fn signalfd(&mut self, mask: u64, flags: i32) -> io::Result<i32> {
            let fd = self.fd(0);
            self.calls.push(Call::SignalFd { mask, flags, fd });
            Ok(fd)
        }
        fn epoll(&mut self, flags: i32) -> io::Result<i32> {
            let fd = self.fd(0);
            self.calls.push(Call::Epoll { flags, fd });
            Ok(fd)
        }
        fn epoll_add(&mut self, ep: i32, fd: i32, events: u32, data: u64) -> io::Result<()> {
            self.calls.push(Call::EpollAdd { ep, fd, events, data });
            Ok(())
        }
        fn memfd(&mut self, name: &str, _flags: u32) -> io::Result<i32> {
            let fd = self.fd(0);
            self.calls.push(Call::Memfd { name: name.into(), fd });
            Ok(fd)
        }
        fn unlink(&mut self, path: &Path) -> io::Result<()> {
            self.calls.push(Call::Unlink(path.into()));
            Ok(())
        }
        fn mkdir(&mut self, path: &Path, _mode: u32) -> io::Result<()> {
            self.calls.push(Call::Mkdir(path.into()));
            Ok(())
        }
        fn rmdir(&mut self, path: &Path) -> io::Result<()> {
            self.calls.push(Call::Rmdir(path.into()));
            Ok(())
        }
        fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
            self.calls.push(Call::Rename { from: from.into(), to: to.into() });
            Ok(())
        }
        fn set_name(&mut self, name: &[u8]) -> io::Result<()> {
            self.calls.push(Call::SetName(name.to_vec()));
            Ok(())
        }
        fn tcsetattr(&mut self, fd: i32, _termios: &[u8]) -> io::Result<()> {
            self.calls.push(Call::Tcsetattr(fd));
            Ok(())
        }
        fn socket(&mut self, domain: i32, stype: i32, _protocol: i32) -> io::Result<i32> {
            let fd = self.fd(0);
            self.calls.push(Call::Socket { domain, stype, fd });
            Ok(fd)
        }
        fn socketpair(&mut self, _domain: i32, _stype: i32) -> io::Result<(i32, i32)> {
            let (a, b) = (self.fd(0), self.fd(0));
            self.calls.push(Call::SocketPair { a, b });
            Ok((a, b))
        }
        fn bind(&mut self, fd: i32, addr: &[u8]) -> io::Result<()> {
            self.calls.push(Call::Bind { fd, addr: addr.to_vec() });
            Ok(())
        }
        fn listen(&mut self, fd: i32, backlog: i32) -> io::Result<()> {
            self.calls.push(Call::Listen { fd, backlog });
            Ok(())
        }
        fn connect(&mut self, fd: i32, addr: &[u8]) -> io::Result<()> {
            self.calls.push(Call::Connect { fd, addr: addr.to_vec() });
            Ok(())
        }
        fn accept(&mut self, listener: i32, _flags: i32) -> io::Result<i32> {
            let fd = self.fd(0);
            self.calls.push(Call::Accept { listener, fd });
            Ok(fd)
        }
        fn local_addr(&mut self, _fd: i32) -> io::Result<Vec<u8>> {
            Ok(vec![2, 0, 0x30, 0x39, 127, 0, 0, 1])
        }
        fn shutdown(&mut self, fd: i32, how: i32) -> io::Result<()> {
            self.calls.push(Call::Shutdown { fd, how });
            Ok(())
        }
        fn setsockopt(&mut self, fd: i32, level: i32, opt: i32, value: i32) -> io::Result<()> {
            self.calls.push(Call::SetSockOpt { fd, level, opt, value });
            Ok(())
        }
        fn raise(&mut self, sig: i32) -> io::Result<()> {
            self.calls.push(Call::Raise(sig));
            Ok(())
        }
        fn pid_max(&mut self) -> io::Result<u32> {
            Ok(self.pid_max_value)
        }
        fn set_pid_max(&mut self, value: u32) -> io::Result<()> {
            self.calls.push(Call::SetPidMax(value));
            self.pid_max_value = value;
            Ok(())
        }
        fn pid_uses(&mut self, ids: &[i32]) -> Vec<PidUse> {
            ids.iter()
                .map(|id| match self.uses.get_mut(id) {
                    Some(v) if v.len() > 1 => v.remove(0),
                    Some(v) => v.first().copied().unwrap_or(PidUse::Free),
                    None => PidUse::Free,
                })
                .collect()
        }
        fn pause(&mut self, _d: std::time::Duration) {
            self.pauses += 1;
        }
        fn shm_stat(&mut self, id: i32) -> io::Result<ShmStat> {
            self.segments.get(&id).copied().ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
        }
        fn shm_make(&mut self, key: i32, size: u64, mode: u32, id: Option<i32>) -> io::Result<i32> {
            self.calls.push(Call::ShmMake { key, size, mode, id });
            let got = match id {
                Some(id) if !self.segments.contains_key(&id) => id,
                _ => self.next_shm_id,
            };
            self.segments.insert(got, ShmStat { key, size, mode, ..Default::default() });
            Ok(got)
        }
        fn shm_set_owner(&mut self, id: i32, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
            self.calls.push(Call::ShmSetOwner { id, uid, gid, mode });
            Ok(())
        }
        fn shm_remove(&mut self, id: i32) -> io::Result<()> {
            self.calls.push(Call::ShmRemove(id));
            self.segments.remove(&id);
            Ok(())
        }
        fn shm_write(
            &mut self,
            id: i32,
            clear: bool,
            fill: &mut dyn FnMut(&mut [u8]) -> io::Result<()>,
        ) -> io::Result<()> {
            self.calls.push(Call::ShmWrite { id, clear });
            let size = self.shm_stat(id)?.size.div_ceil(crate::sys::PAGE_SIZE) * crate::sys::PAGE_SIZE;
            let mut buf = vec![0u8; size as usize];
            fill(&mut buf)?;
            self.written.insert(id, buf);
            Ok(())
        }
        fn shm_attach(&mut self, id: i32, at: u64, offset: u64, len: u64, shmflg: i32) -> io::Result<()> {
            self.calls.push(Call::ShmAttach { id, at, offset, len, shmflg });
            Ok(())
        }
        fn clocks(&mut self) -> Clocks {
            self.clocks_value
        }
        fn time_offsets(&mut self) -> Result<Option<Offsets>, TimeError> {
            Ok(self.offsets_value)
        }
        fn open_time_namespace(&mut self) -> io::Result<i32> {
            let fd = self.fd(0);
            self.calls.push(Call::OpenTimeNamespace(fd));
            Ok(fd)
        }
        fn unshare_time(&mut self) -> io::Result<()> {
            if self.refuse_time_namespace {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            self.calls.push(Call::UnshareTime);
            Ok(())
        }
        fn set_time_offsets(&mut self, o: Offsets) -> io::Result<()> {
            self.calls.push(Call::SetTimeOffsets(o));
            Ok(())
        }
        fn set_time_namespace(&mut self, fd: i32) -> io::Result<()> {
            self.calls.push(Call::SetTimeNamespace(fd));
            Ok(())
        }
        fn sem_value(&mut self, id: i32, num: u16) -> io::Result<u16> {
            self.sem_values.get(&(id, num)).copied().ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
        }
        fn semop(&mut self, id: i32, ops: &[ckrun_proto::semadj::SemOp]) -> io::Result<()> {
            self.calls.push(Call::Semop { id, ops: ops.to_vec() });
            match self.semop_errors.is_empty() {
                true => Ok(()),
                false => Err(io::Error::from_raw_os_error(self.semop_errors.remove(0))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child is live, then (killed, not reaped) exiting, then (reaped)
    /// free; and the number of a thread of ours is live.
    #[test]
    fn pid_uses_tell_live_from_exiting() {
        let mut k = Linux::default();
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        assert_eq!(k.pid_uses(&[pid]), vec![PidUse::Live]);
        child.kill().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while k.pid_uses(&[pid]) != vec![PidUse::Exiting] {
            assert!(std::time::Instant::now() < deadline, "the killed child never showed as exiting");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert_eq!(k.pid_uses(&[pid]), vec![PidUse::Free]);
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid cannot fail.
            tx.send(unsafe { libc::gettid() }).unwrap();
            std::thread::park();
        });
        let tid = rx.recv().unwrap();
        assert_eq!(k.pid_uses(&[tid]), vec![PidUse::Live]);
        t.thread().unpark();
        t.join().unwrap();
        assert!(k.pid_max().unwrap() >= 301);
    }

    /// Part of a segment attached at a chosen address is one attachment
    /// (counted once), with that part's content, and nothing else of the
    /// segment stays mapped.
    #[test]
    fn part_of_a_segment_attaches_where_asked() {
        let mut k = Linux::default();
        let page = crate::sys::PAGE_SIZE;
        // SAFETY: a segment of this test, removed at the end; a free
        // address found by mapping and unmapping a reservation.
        unsafe {
            let id = libc::shmget(libc::IPC_PRIVATE, 3 * page as usize, libc::IPC_CREAT | 0o600);
            assert!(id >= 0);
            k.shm_write(id, false, &mut |m| {
                m[page as usize] = 42;
                Ok(())
            })
            .unwrap();
            let hole = libc::mmap(std::ptr::null_mut(), 1 << 20, 0, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            libc::munmap(hole, 1 << 20);
            let at = hole as u64 + page;
            k.shm_attach(id, at, page, page, libc::SHM_RDONLY).unwrap();
            assert_eq!(*(at as *const u8), 42);
            assert_eq!(k.shm_stat(id).unwrap().nattch, 1);
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let ours: Vec<&str> = maps.lines().filter(|l| l.contains("/SYSV")).collect();
            assert!(ours.iter().any(|l| l.starts_with(&format!("{at:x}-{:x} r--s 00001000", at + page))), "{ours:?}");
            libc::munmap(at as *mut _, page as usize);
            assert_eq!(k.shm_stat(id).unwrap().nattch, 0);
            k.shm_remove(id).unwrap();
        }
    }

    /// A group leader that is gone keeps its number taken while a member
    /// of its group lives.
    #[test]
    fn a_process_group_holds_its_leaders_number() {
        use std::os::unix::process::CommandExt;
        let mut k = Linux::default();
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $!"])
            .process_group(0)
            .output()
            .unwrap();
        // `output` reaped the shell: only the sleep is left in its group.
        let sleep: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let leader = crate::sys::procfs::parse_stat(&std::fs::read_to_string(format!("/proc/{sleep}/stat")).unwrap())
            .unwrap()
            .pgrp;
        assert_ne!(leader, sleep);
        assert!(!std::path::Path::new(&format!("/proc/{leader}")).exists());
        assert_eq!(k.pid_uses(&[leader]), vec![PidUse::Live]);
        // SAFETY: plain kill of the sleep we started.
        unsafe { libc::kill(sleep, libc::SIGKILL) };
    }
}
