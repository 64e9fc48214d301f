//! Open files, one module per kind, each with the same shape: `capture`
//! (in the coordinator, while the program is stopped, from /proc) builds an
//! [`OpenFile`] for the image; `restore` (in the restore child) makes an fd
//! of it again.
//!
//! | kind | module | restored as |
//! |---|---|---|
//! | regular file, directory, device | [`file`] | reopened by path, offset, locks |
//! | terminal or outside pipe on stdio | [`tty`] | ckrun's own fd, with the termios |
//! | deleted file, memfd | [`ghost`] | recreated from the image's copy |
//! | pipe, FIFO | [`pipe`] | new pipe, bytes in flight written back |
//! | eventfd, timerfd, signalfd | [`eventfd`], [`timerfd`], [`signalfd`] | new one, same state |
//! | epoll | [`epoll`] | new one, same interest list |
//! | anything else (sockets, inotify) | — | closed, named at checkpoint |
//!
//! This module groups fds by open file description (kcmp), so that fds
//! that shared one (dup, dup2) share one again after a restart, with its
//! offset, and places every fd at its number.

pub mod epoll;
pub mod eventfd;
pub mod file;
pub mod ghost;
pub mod pipe;
pub mod signalfd;
pub mod timerfd;
pub mod tty;

use crate::image::manifest::{FdImage, GhostFile, OpenFile, PipeImage, ProcessImage};
use crate::image::{ImageReader, ImageWriter};
use crate::restore::kernel::Kernel;
use crate::sys::proc::same_file_description;
use crate::sys::procfs::{parse_fdinfo, read, read_link, status_field};
use anyhow::{Context, Result};
use std::os::unix::fs::FileTypeExt;

/// One fd as /proc shows it.
pub struct ProcFd {
    pub pid: i32,
    pub fd: i32,
    /// `readlink /proc/PID/fd/N`: a path, or `pipe:[ino]`, `anon_inode:[eventfd]`...
    pub target: String,
    /// /proc/PID/fdinfo/N.
    pub info: String,
    /// Open flags without O_CLOEXEC (which is per fd, not per description).
    pub flags: i32,
    pub pos: u64,
}

impl ProcFd {
    /// The path that opens this fd's file from another process.
    pub fn proc_path(&self) -> String {
        format!("/proc/{}/fd/{}", self.pid, self.fd)
    }
}

/// The fd table of one process, as stored in the image.
#[derive(Default)]
pub struct FdTable {
    pub fds: Vec<FdImage>,
    pub files: Vec<OpenFile>,
    pub ghosts: Vec<GhostFile>,
    pub pipes: Vec<PipeImage>,
    /// "fd N (kind)" of each fd that cannot be restored.
    pub unsupported: Vec<String>,
}

/// Captures the fds of `pid` except the agent's own connection. Deleted
/// files' contents go to `out`.
pub fn capture(pid: i32, agent_fd: i32, out: &mut ImageWriter) -> Result<FdTable> {
    let mut nums: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd != agent_fd)
        .collect();
    nums.sort_unstable();
    let mut procfds = Vec::new();
    for fd in nums {
        let (Ok(target), Ok(info)) = (read_link(pid, &format!("fd/{fd}")), read(pid, &format!("fdinfo/{fd}"))) else {
            continue; // closed meanwhile (a thread between syscalls)
        };
        let fi = parse_fdinfo(&info)?;
        procfds.push((
            fi.flags & libc::O_CLOEXEC != 0,
            ProcFd {
                pid,
                fd,
                target: target.to_string_lossy().into_owned(),
                info,
                flags: fi.flags & !libc::O_CLOEXEC,
                pos: fi.pos,
            },
        ));
    }

    // Group by open file description: one representative each.
    let mut t = FdTable::default();
    let mut reps: Vec<usize> = Vec::new();
    let mut desc_of = Vec::with_capacity(procfds.len());
    for (i, (_, f)) in procfds.iter().enumerate() {
        let d = reps.iter().position(|&r| same_file_description(pid, procfds[r].1.fd, pid, f.fd).unwrap_or(false));
        desc_of.push(d.unwrap_or_else(|| {
            reps.push(i);
            reps.len() - 1
        }));
    }
    let ends = pipe::Ends::of(procfds.iter().map(|(_, f)| f));
    for &r in &reps {
        let f = &procfds[r].1;
        let file = classify(f, &ends, &mut t, out).with_context(|| format!("fd {} ({})", f.fd, f.target))?;
        if let OpenFile::Unsupported { what } = &file {
            t.unsupported.push(format!("fd {} ({what})", f.fd));
        }
        t.files.push(file);
    }
    for (i, (cloexec, f)) in procfds.iter().enumerate() {
        t.fds.push(FdImage { fd: f.fd, cloexec: *cloexec, desc: desc_of[i] as u32 });
    }
    Ok(t)
}

fn classify(f: &ProcFd, ends: &pipe::Ends, t: &mut FdTable, out: &mut ImageWriter) -> Result<OpenFile> {
    let target = f.target.as_str();
    let stdio = (0..=2).contains(&f.fd);
    if let Some(ino) = target.strip_prefix("pipe:[").and_then(|s| s.strip_suffix(']')).and_then(|s| s.parse().ok()) {
        // A stdio pipe whose other end is not ours comes from outside.
        if stdio && !ends.both(ino) {
            return Ok(tty::inherited(f, "pipe from outside"));
        }
        return pipe::capture(f, ino, None, &mut t.pipes);
    }
    if target.starts_with("socket:") {
        return Ok(if stdio { tty::inherited(f, "socket from outside") } else { unsupported("socket") });
    }
    match target {
        "anon_inode:[eventfd]" => return eventfd::capture(f),
        "anon_inode:[timerfd]" => return timerfd::capture(f),
        "anon_inode:[signalfd]" => return signalfd::capture(f),
        "anon_inode:[eventpoll]" => return epoll::capture(f),
        _ => {}
    }
    if !target.starts_with('/') {
        return Ok(unsupported(target));
    }
    if ghost::is_ghost(target) {
        return ghost::capture_fd(f, &mut t.ghosts, out);
    }
    let meta = match std::fs::metadata(target) {
        Ok(m) => m,
        Err(e) => return Ok(unsupported(&format!("{target}, which cannot be reached: {e}"))),
    };
    let ft = meta.file_type();
    if ft.is_fifo() {
        use std::os::unix::fs::MetadataExt;
        return pipe::capture(f, meta.ino(), Some(target.into()), &mut t.pipes);
    }
    if ft.is_char_device() && tty::is_terminal(&meta) {
        return Ok(if stdio { tty::capture(f) } else { unsupported(&format!("terminal {target}")) });
    }
    if ft.is_file() || ft.is_dir() || ft.is_char_device() {
        return file::capture(f, &meta);
    }
    Ok(unsupported(&format!("{target} (socket or block device)")))
}

fn unsupported(what: &str) -> OpenFile {
    OpenFile::Unsupported { what: what.to_string() }
}

/// A hexadecimal or decimal `key: value` of an fdinfo file.
pub fn info_u64(info: &str, key: &str, radix: u32) -> Option<u64> {
    u64::from_str_radix(status_field(info, key)?.trim(), radix).ok()
}

/// Restores every fd of `p`; `ctl` is the restore child's connection to
/// the coordinator, which becomes the agent's fd; `ghosts` are the fds of
/// the recreated ghost files. Returns the fds the program now has.
pub fn restore(k: &mut impl Kernel, p: &ProcessImage, ctl: i32, ghosts: &[i32]) -> Result<Vec<i32>> {
    // Temporaries go above every number the program uses, so that placing
    // one fd never clobbers a source still needed.
    let high =
        p.fds.iter().map(|f| f.fd).chain([p.agent_fd, ctl, 2]).chain(ghosts.iter().copied()).max().unwrap_or(2) + 1;
    let used = |d: usize| p.fds.iter().any(|x| x.desc as usize == d);
    let mut pipes = pipe::Restored::default();
    let mut temp: Vec<Option<i32>> = vec![None; p.files.len()];
    for (d, f) in p.files.iter().enumerate() {
        if !used(d) || matches!(f, OpenFile::Epoll { .. }) {
            continue;
        }
        let fd = match f {
            OpenFile::Path { path, flags, pos, kind, locks } => {
                Some(file::restore(k, path, *flags, *pos, *kind, locks)?)
            }
            OpenFile::Inherited { fd, .. } => Some(k.dup_above(*fd, high)?),
            OpenFile::Ghost { ghost, flags, pos, locks } => {
                Some(ghost::reopen(k, ghosts[*ghost as usize], *flags, *pos, locks)?)
            }
            OpenFile::Pipe { pipe, write, flags } => {
                Some(pipes.end(k, &p.pipes[*pipe as usize], *pipe, *write, *flags)?)
            }
            OpenFile::EventFd { count, flags } => Some(eventfd::restore(k, *count, *flags)?),
            OpenFile::TimerFd { clock, flags, value_ns, interval_ns, ticks } => {
                Some(timerfd::restore(k, *clock, *flags, *value_ns, *interval_ns, *ticks)?)
            }
            OpenFile::SignalFd { mask, flags } => Some(signalfd::restore(k, *mask, *flags)?),
            OpenFile::Epoll { .. } | OpenFile::Unsupported { .. } => None,
        };
        temp[d] = match fd {
            Some(fd) if fd >= high => Some(fd),
            Some(fd) => {
                let hi = k.dup_above(fd, high)?;
                k.close(fd);
                Some(hi)
            }
            None => None,
        };
    }
    pipes.finish(k);
    let ctl_hi = k.dup_above(ctl, high)?;
    let mut have = Vec::new();
    for (d, src) in temp.iter().enumerate() {
        place(k, p, d, *src, &mut have)?;
    }
    // epoll last: its interest list names the other fds by their numbers.
    for (d, f) in p.files.iter().enumerate() {
        if let OpenFile::Epoll { flags, items } = f {
            if used(d) {
                let ep = epoll::restore(k, *flags, items, &have)?;
                let hi = k.dup_above(ep, high)?;
                k.close(ep);
                temp[d] = Some(hi);
                place(k, p, d, Some(hi), &mut have)?;
            }
        }
    }
    k.dup_to(ctl_hi, p.agent_fd, true)?;
    have.push(p.agent_fd);
    // Terminal settings once the terminal is in place.
    for (d, f) in p.files.iter().enumerate() {
        if let OpenFile::Inherited { termios: Some(t), .. } = f {
            for x in p.fds.iter().filter(|x| x.desc as usize == d) {
                tty::apply(k, x.fd, t);
            }
        }
    }
    for t in temp.into_iter().flatten().chain([ctl_hi]) {
        k.close(t);
    }
    have.sort_unstable();
    Ok(have)
}

/// Puts description `desc` at each fd number that had it.
fn place(k: &mut impl Kernel, p: &ProcessImage, desc: usize, src: Option<i32>, have: &mut Vec<i32>) -> Result<()> {
    let Some(src) = src else { return Ok(()) };
    for f in p.fds.iter().filter(|f| f.desc as usize == desc) {
        k.dup_to(src, f.fd, f.cloexec)?;
        have.push(f.fd);
    }
    Ok(())
}

/// Makes the image's ghost files exist again (before memory is staged:
/// mappings of them need them). Returns one fd per ghost.
pub fn recreate_ghosts(k: &mut impl Kernel, img: &ImageReader, p: &ProcessImage) -> Result<Vec<ghost::Recreated>> {
    // Above every fd number the program uses: placing its fds must not
    // replace them.
    let high = p.fds.iter().map(|f| f.fd).chain([p.agent_fd, 2]).max().unwrap_or(2) + 1;
    let mut out = Vec::new();
    for g in &p.ghosts {
        let mut r = ghost::recreate(k, img, g)?;
        let hi = k.dup_above(r.fd, high)?;
        k.close(r.fd);
        r.fd = hi;
        out.push(r);
    }
    Ok(out)
}

/// Once every fd and mapping of the ghosts exists: unlink the names they
/// were recreated under and close ckrun's own fds of them.
pub fn settle_ghosts(k: &mut impl Kernel, ghosts: Vec<ghost::Recreated>) {
    for g in ghosts {
        if let Some(p) = &g.unlink {
            let _ = k.unlink(p);
        }
        k.close(g.fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::{FileLock, LockKind, PathKind};
    use crate::restore::kernel::recording::{Call, Recording};
    use crate::restore::plan::tests::process;

    #[test]
    fn shared_descriptions_are_opened_once_and_duplicated() {
        let mut p = process(vec![], &[100]);
        p.files = vec![
            OpenFile::Inherited { fd: 0, what: "terminal".into(), termios: None },
            OpenFile::Path {
                path: "/tmp/out".into(),
                flags: libc::O_WRONLY | libc::O_TRUNC,
                pos: 42,
                kind: PathKind::Regular,
                locks: vec![FileLock { kind: LockKind::Flock, write: true, start: 0, len: 0 }],
            },
            OpenFile::Unsupported { what: "socket".into() },
        ];
        p.fds = vec![
            FdImage { fd: 0, cloexec: false, desc: 0 },
            FdImage { fd: 1, cloexec: false, desc: 1 },
            FdImage { fd: 5, cloexec: true, desc: 1 },
            FdImage { fd: 7, cloexec: false, desc: 2 },
        ];
        let mut k = Recording::default();
        let have = restore(&mut k, &p, 3, &[]).unwrap();
        assert_eq!(have, vec![0, 1, 5, 1000]);
        // Terminal copied from our own fd 0; the file opened once (without
        // O_TRUNC!), positioned, locked, then both fds 1 and 5 made from it.
        assert_eq!(
            k.calls,
            vec![
                Call::DupAbove { fd: 0, min: 1001, got: 1001 },
                Call::Open { path: "/tmp/out".into(), flags: libc::O_WRONLY | libc::O_CLOEXEC, fd: 1002 },
                Call::Seek { fd: 1002, pos: 42 },
                Call::Lock { fd: 1002, lock: FileLock { kind: LockKind::Flock, write: true, start: 0, len: 0 } },
                Call::DupAbove { fd: 3, min: 1001, got: 1003 },
                Call::DupTo { from: 1001, to: 0, cloexec: false },
                Call::DupTo { from: 1002, to: 1, cloexec: false },
                Call::DupTo { from: 1002, to: 5, cloexec: true },
                Call::DupTo { from: 1003, to: 1000, cloexec: true },
                Call::Close(1001),
                Call::Close(1002),
                Call::Close(1003),
            ]
        );
    }
}
