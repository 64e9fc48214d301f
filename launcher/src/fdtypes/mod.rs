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
//! | file of /proc (`/proc/self/maps`...) | [`procfile`] | reopened for the restored process |
//! | pipe, FIFO | [`pipe`] | new pipe, bytes in flight written back |
//! | eventfd, timerfd, signalfd | [`eventfd`], [`timerfd`], [`signalfd`] | new one, same state |
//! | epoll | [`epoll`] | new one, same interest list |
//! | socket | [`socket`], [`tcp`] | bound/listening again; connections inside the tree (unix pairs, TCP between two of the job's sockets) made again with their queued data and half-closes; connections outside or to a gone peer: unread data, then peer closed |
//! | anything else (inotify, netlink...) | — | closed, named at checkpoint |
//!
//! This module groups fds by open file description (kcmp), so that fds
//! that shared one (dup, dup2) share one again after a restart, with its
//! offset, and places every fd at its number.

pub mod epoll;
pub mod eventfd;
pub mod file;
pub mod ghost;
pub mod pipe;
pub mod procfile;
pub mod signalfd;
pub mod socket;
pub mod tcp;
pub mod timerfd;
pub mod tty;

use crate::image::manifest::{
    FdImage, FileLock, GhostFile, LockKind, Manifest, OpenFile, PipeImage, ProcessImage, RegionKind, SocketState,
};
use crate::image::{ImageReader, ImageWriter};
use crate::restore::kernel::Kernel;
use crate::sys::proc::same_file_description;
use crate::sys::procfs::{parse_fdinfo, read, read_link, status_field};
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

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

/// The fd tables of a tree of processes, as stored in the image.
#[derive(Default)]
pub struct FdTables {
    /// One table per process, in the order they were given.
    pub fds: Vec<Vec<FdImage>>,
    /// Open file descriptions, shared across the tree.
    pub files: Vec<OpenFile>,
    pub ghosts: Vec<GhostFile>,
    pub pipes: Vec<PipeImage>,
    /// "process P: fd N (kind)" of each fd that cannot be restored.
    pub unsupported: Vec<String>,
    /// What a restart will not give back in full, said at the checkpoint.
    pub warnings: Vec<String>,
    /// What is left of [`file::save_budget`].
    pub file_budget: u64,
}

/// Captures the fds of processes `(pid, agent fd)` (the agent's own
/// connection left out), grouping them by open file description across
/// the whole tree. Deleted files' contents go to `out`.
pub fn capture(procs: &[(i32, i32)], out: &ImageWriter) -> Result<FdTables> {
    let mut all: Vec<(usize, bool, ProcFd)> = Vec::new();
    for (pi, &(pid, agent_fd)) in procs.iter().enumerate() {
        let mut nums: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("listing /proc/{pid}/fd"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd != agent_fd)
            .collect();
        nums.sort_unstable();
        for fd in nums {
            let (Ok(target), Ok(info)) = (read_link(pid, &format!("fd/{fd}")), read(pid, &format!("fdinfo/{fd}")))
            else {
                continue; // closed meanwhile
            };
            let fi = parse_fdinfo(&info)?;
            let target = target.to_string_lossy().into_owned();
            let flags = fi.flags & !libc::O_CLOEXEC;
            all.push((pi, fi.flags & libc::O_CLOEXEC != 0, ProcFd { pid, fd, target, info, flags, pos: fi.pos }));
        }
    }

    // Group by open file description (only fds showing the same target can
    // share one): one representative each.
    let mut reps: Vec<usize> = Vec::new();
    let mut desc_of = Vec::with_capacity(all.len());
    for (i, (_, _, f)) in all.iter().enumerate() {
        let same = |&&r: &&usize| {
            let g = &all[r].2;
            g.target == f.target && same_file_description(g.pid, g.fd, f.pid, f.fd).unwrap_or(false)
        };
        desc_of.push(reps.iter().position(|r| same(&r)).unwrap_or_else(|| {
            reps.push(i);
            reps.len() - 1
        }));
    }
    let mut t = FdTables { fds: vec![Vec::new(); procs.len()], file_budget: file::save_budget(), ..Default::default() };
    let ends = pipe::Ends::of(all.iter().map(|(_, _, f)| f));
    let sockets: HashSet<u64> = all.iter().filter_map(|(_, _, f)| inode_of(&f.target, "socket:[")).collect();
    let pids = procs.iter().map(|&(pid, _)| pid).collect();
    // Read only if a TCP connection turns up: /proc/net/tcp takes ~4.5 ms
    // to generate here, while the program is stopped.
    let tcp = std::cell::OnceCell::new();
    // Files written through shared mappings: their fds go with the saved
    // copy the mappings get (one file again at restart).
    let mapped_writable = procs
        .iter()
        .flat_map(|&(pid, _)| crate::sys::procfs::maps(pid).unwrap_or_default())
        .filter(|m| {
            m.path.starts_with('/')
                && std::fs::metadata(&m.path).is_ok_and(|s| s.ino() == m.inode && ghost::saved_when_mapped(m, s.len()))
        })
        .map(|m| (m.dev, m.inode))
        .collect();
    let tree = Tree { ends, sockets, pids, tcp, mapped_writable, outside: own_stdio() };
    for &r in &reps {
        let f = &all[r].2;
        // An fd whose state cannot be read (not ours to open, say) comes
        // back closed, like any unrestorable fd, rather than failing the
        // whole checkpoint.
        let file = classify(f, &tree, &mut t, out)
            .unwrap_or_else(|e| OpenFile::Unsupported { what: format!("{}, which cannot be read: {e:#}", f.target) });
        if let OpenFile::Unsupported { what } = &file {
            t.unsupported.push(format!("process {}: fd {} ({what})", f.pid, f.fd));
        }
        t.files.push(file);
    }
    for (i, (pi, cloexec, f)) in all.iter().enumerate() {
        t.fds[*pi].push(FdImage { fd: f.fd, cloexec: *cloexec, desc: desc_of[i] as u32 });
    }
    Ok(t)
}

/// What the tree as a whole has, to tell its own pipes and sockets from
/// ones shared with the outside.
struct Tree {
    ends: pipe::Ends,
    sockets: HashSet<u64>,
    pids: Vec<i32>,
    tcp: std::cell::OnceCell<tcp::Table>,
    /// (device, inode) of the files written through shared mappings.
    mapped_writable: HashSet<((u32, u32), u64)>,
    /// What ckrun's own fds 0..2 are (`pipe:[N]`, `socket:[N]`): the only
    /// way a pipe or socket of the outside reaches the tree.
    outside: HashSet<String>,
}

/// The targets of ckrun's own stdio. The tree got its outside pipes and
/// sockets from ckrun (a restart gives the program ckrun's fds 0..2 in their
/// place), so a stdio pipe of the tree is the outside's exactly when it is
/// one of these. Telling them apart by "no process of the tree holds the
/// other end" is wrong: in `a | b` inside the job, once `a` has written
/// its last bytes and exited, `b`'s stdin has no writer in the tree, and
/// the bytes still in the pipe would be lost (a restarted `b` would read
/// ckrun's stdin instead).
fn own_stdio() -> HashSet<String> {
    (0..=2)
        .filter_map(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .collect()
}

/// The inode in a target like `pipe:[123]`.
fn inode_of(target: &str, prefix: &str) -> Option<u64> {
    target.strip_prefix(prefix)?.strip_suffix(']')?.parse().ok()
}

fn classify(f: &ProcFd, tree: &Tree, t: &mut FdTables, out: &ImageWriter) -> Result<OpenFile> {
    let target = f.target.as_str();
    let stdio = (0..=2).contains(&f.fd);
    if let Some(ino) = inode_of(target, "pipe:[") {
        // A stdio pipe that is ckrun's own comes from outside; one whose
        // other end the tree closed is the tree's (its bytes are saved).
        if stdio && tree.outside.contains(target) && !tree.ends.both(ino) {
            return Ok(tty::inherited(f, "pipe from outside"));
        }
        return pipe::capture(f, ino, None, &mut t.pipes);
    }
    if let Some(ino) = inode_of(target, "socket:[") {
        let s = socket::capture(f, ino, &tree.sockets, &tree.tcp, &mut t.warnings)?;
        // A stdio socket that is ckrun's own, connected outside the tree, is
        // whoever started us.
        let outside = tree.outside.contains(target)
            && matches!(&s, OpenFile::Socket(x) if !matches!(x.state, SocketState::Pair { .. }));
        return Ok(if stdio && outside { tty::inherited(f, "socket from outside") } else { s });
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
    if procfile::is_proc(target) {
        return Ok(procfile::capture(f, &tree.pids));
    }
    if ghost::is_ghost(target) || ghost::is_shm_object(target) {
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
    let dev = (libc::major(meta.dev()), libc::minor(meta.dev()));
    if ft.is_file() && tree.mapped_writable.contains(&(dev, meta.ino())) {
        return ghost::capture_fd(f, &mut t.ghosts, out);
    }
    if ft.is_file() || ft.is_dir() || ft.is_char_device() {
        return file::capture(f, &meta, &mut t.file_budget, out, &mut t.warnings);
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

/// The objects a restart makes once, in the coordinator, for the whole
/// tree: one fd per open file description (epoll aside: each process makes
/// its own) and one per ghost file. Restore children receive the ones they
/// use over their connection (SCM_RIGHTS), so that descriptions shared
/// between processes are shared again.
#[derive(Default)]
pub struct Objects {
    pub files: Vec<Option<i32>>,
    pub ghosts: Vec<i32>,
    /// What waits until the whole tree is ready ([`commit`]).
    pub deferred: Vec<Deferred>,
    /// (ID in the image, ID now) of each SysV shared memory segment.
    pub segment_ids: Vec<(i32, i32)>,
}

/// What a restart does only once it is sure to go ahead: before, a failed
/// restart must leave every file as it found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deferred {
    /// A file the job rewrote in place, given its content back.
    PutBack(file::PutBack),
    /// A file the job writes, cut back to its size at the checkpoint.
    CutBack(file::CutBack),
    /// The same after a `--stop-signal` checkpoint: not cut, what others
    /// wrote since stays (`file::keep_after_stop`).
    KeepAfterStop(file::CutBack),
    /// A POSIX shared memory object, or a file made again, named again.
    Rename(ghost::Rename),
    /// A SysV semaphore set or message queue given its state back.
    Sysv(crate::sysv::SysvObject),
    /// A SysV shared memory segment, attached by every process by now:
    /// marked destroyed again if it was.
    Segment(crate::sysv::shm::Placed),
    /// A file the killed run made after the checkpoint, renamed aside.
    SetAside(crate::created::SetAside),
}

/// Whether nothing is at `path` any more (the caller has the process's
/// identity: what it cannot see is not gone).
fn gone(path: &std::path::Path) -> bool {
    std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// The process whose rights open description `desc` or ghost `ghost`: the
/// first (parents first) that has it.
fn user_of(m: &Manifest, uses: impl Fn(&ProcessImage) -> bool) -> Option<&ProcessImage> {
    m.processes.iter().find(|p| uses(p))
}

/// Makes the tree's objects, each with the rights of the process that
/// uses it (its file-system identity, taken for the time of the open), so
/// that a restart by root never opens or creates for a user what the user
/// could not. POSIX locks are left to the processes that own them
/// ([`place`]); flock and OFD locks belong to the description and are
/// taken here. Nothing is cut back yet.
pub fn create_objects(k: &mut impl Kernel, img: &ImageReader) -> Result<Objects> {
    let m = &img.manifest;
    let mut o = Objects::default();
    let mut result = Ok(());
    for x in &m.sysv {
        match x {
            // Made or found now: the restore processes attach it.
            crate::sysv::SysvObject::Segment(s) => match crate::sysv::shm::place(k, img, s) {
                Ok(p) => {
                    o.segment_ids.push((p.image_id, p.id));
                    o.deferred.push(Deferred::Segment(p));
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            },
            other => o.deferred.push(Deferred::Sysv(other.clone())),
        }
    }
    let result = result.and_then(|_| create_objects_as_users(k, img, m, &mut o));
    k.become_identity(None).context("taking back ckrun's own identity")?;
    if let Err(e) = result {
        for fd in o.files.iter().flatten().chain(&o.ghosts) {
            k.close(*fd);
        }
        abandon(k, &o.deferred);
        return Err(e);
    }
    Ok(o)
}

fn create_objects_as_users(k: &mut impl Kernel, img: &ImageReader, m: &Manifest, o: &mut Objects) -> Result<()> {
    let same_machine = m.info.hostname == crate::sys::machine::uname().0;
    let mut who = Acting::default();
    for (i, g) in m.ghosts.iter().enumerate() {
        let user = user_of(m, |p| {
            p.regions.iter().any(|r| matches!(r.kind, RegionKind::Ghost { ghost, .. } if ghost as usize == i))
                || p.fds
                    .iter()
                    .any(|f| matches!(m.files[f.desc as usize], OpenFile::Ghost { ghost, .. } if ghost as usize == i))
        });
        who.become_user(k, user)?;
        let fd = ghost::recreate(k, img, g)?;
        o.ghosts.push(fd);
        if g.named {
            o.deferred.push(Deferred::Rename(ghost::Rename { path: g.path.clone(), identity: who.0.clone() }));
        }
    }
    let shared_locks =
        |l: &[FileLock]| -> Vec<FileLock> { l.iter().filter(|l| l.kind != LockKind::Posix).copied().collect() };
    let mut pipes = pipe::Restored::default();
    let mut sockets = socket::Restored::default();
    for (d, f) in m.files.iter().enumerate() {
        let user = user_of(m, |p| p.fds.iter().any(|f| f.desc as usize == d));
        if user.is_none() {
            o.files.push(None);
            continue;
        }
        who.become_user(k, user)?;
        let fd = match f {
            OpenFile::Path { path, flags, pos, content: Some(c), .. } if gone(path) => {
                let fd = file::recreate(k, img, path, *flags, *pos, c)?;
                o.deferred.push(Deferred::Rename(ghost::Rename { path: path.clone(), identity: who.0.clone() }));
                Some(fd)
            }
            OpenFile::Path { path, flags, pos, kind, locks, written_size, identity, content } => {
                let expect = file::Expect { identity: *identity, same_machine };
                let fd = file::restore(k, path, *flags, *pos, *kind, &shared_locks(locks), expect)?;
                if let Some(c) = content {
                    if let Some(p) = file::put_back_if_changed(k, img, fd, path, c)? {
                        o.deferred.push(Deferred::PutBack(p));
                    }
                }
                if let Some(size) = written_size {
                    let append = flags & libc::O_APPEND != 0;
                    let c = file::CutBack { fd, size: *size, path: path.clone(), pos: *pos, append };
                    o.deferred.push(Deferred::CutBack(c));
                }
                Some(fd)
            }
            OpenFile::Inherited { fd, termios, .. } => {
                let mine = k.dup_above(*fd, 3)?;
                if let Some(t) = termios {
                    tty::apply(k, mine, t);
                }
                Some(mine)
            }
            OpenFile::Ghost { ghost, flags, pos, locks } => {
                Some(ghost::reopen(k, o.ghosts[*ghost as usize], *flags, *pos, &shared_locks(locks))?)
            }
            OpenFile::Pipe { pipe, write, flags } => {
                Some(pipes.end(k, &m.pipes[*pipe as usize], *pipe, *write, *flags)?)
            }
            OpenFile::EventFd { count, flags } => Some(eventfd::restore(k, *count, *flags)?),
            OpenFile::TimerFd { clock, flags, value_ns, interval_ns, ticks } => {
                Some(timerfd::restore(k, *clock, *flags, *value_ns, *interval_ns, *ticks)?)
            }
            OpenFile::SignalFd { mask, flags } => Some(signalfd::restore(k, *mask, *flags)?),
            OpenFile::Socket(s) => Some(sockets.make(k, s)?),
            // Made by each process itself (`place`).
            OpenFile::Epoll { .. } | OpenFile::Proc { .. } | OpenFile::Unsupported { .. } => None,
        };
        o.files.push(fd);
    }
    pipes.finish(k);
    sockets.finish(k);
    Ok(())
}

/// The identity this thread opens files with, changed only when needed.
#[derive(Default)]
struct Acting(Option<crate::creds::Identity>);

impl Acting {
    fn become_user(&mut self, k: &mut impl Kernel, p: Option<&ProcessImage>) -> Result<()> {
        let want = p.map(|p| p.creds.identity());
        if want != self.0 {
            k.become_identity(want.as_ref()).context("taking the program's identity to open its files")?;
            self.0 = want;
        }
        Ok(())
    }
}

/// The last step before the restored tree runs: cuts the files the job
/// writes back to their size at the checkpoint (keeping ckrun's own lines
/// where ckrun's stderr is one of them), and names its POSIX shared memory
/// objects again.
/// A restart called off: the files made under ckrun's temporary names go.
pub fn abandon(k: &mut impl Kernel, deferred: &[Deferred]) {
    for d in deferred {
        match d {
            Deferred::Rename(r) => r.abandon(k),
            Deferred::Segment(p) => crate::sysv::shm::abandon(k, p),
            _ => {}
        }
    }
}

pub fn commit(k: &mut impl Kernel, deferred: &[Deferred]) -> Result<()> {
    let ours = k.identity_of(2).ok();
    for d in deferred {
        match d {
            Deferred::PutBack(p) => file::put_back(k, p)?,
            Deferred::CutBack(c) => file::cut_back(k, c, ours)?,
            Deferred::KeepAfterStop(c) => file::keep_after_stop(k, c)?,
            Deferred::Rename(r) => r.apply(k)?,
            Deferred::Sysv(o) => crate::sysv::restore(o)?,
            Deferred::Segment(p) => crate::sysv::shm::commit(k, p)?,
            Deferred::SetAside(s) => s.apply(k)?,
        }
    }
    Ok(())
}

/// Takes the process's own (POSIX) locks, on one of its fds of each file.
/// Last of all: closing any fd of a file drops the process's POSIX locks on
/// it, so no temporary fd of it may be closed afterwards.
pub fn take_own_locks(k: &mut impl Kernel, p: &ProcessImage, files: &[OpenFile]) -> Result<()> {
    for f in &p.fds {
        let locks = match &files[f.desc as usize] {
            OpenFile::Path { locks, .. } | OpenFile::Ghost { locks, .. } => locks,
            _ => continue,
        };
        if p.fds.iter().find(|x| x.desc == f.desc).map(|x| x.fd) != Some(f.fd) {
            continue;
        }
        let own: Vec<FileLock> = locks.iter().filter(|l| l.kind == LockKind::Posix).copied().collect();
        file::take_locks(k, f.fd, &own, std::path::Path::new(&format!("fd {}", f.fd)))?;
    }
    Ok(())
}

/// In a restore child: puts the received descriptions (`received[desc]`)
/// at the fd numbers process `p` had, takes its POSIX locks, makes its
/// epoll instances, and puts `ctl` (the connection to the coordinator) at
/// the agent's fd. Returns the fds the program now has.
pub fn place(
    k: &mut impl Kernel,
    p: &ProcessImage,
    files: &[OpenFile],
    received: &HashMap<u32, i32>,
    ctl: i32,
) -> Result<Vec<i32>> {
    // Work above every number the program uses, so that placing one fd
    // never replaces a source still needed.
    let high =
        p.fds.iter().map(|f| f.fd).chain([p.agent_fd, ctl, 2]).chain(received.values().copied()).max().unwrap_or(2) + 1;
    let mut temp: HashMap<u32, i32> = HashMap::new();
    for (&d, &fd) in received {
        temp.insert(d, k.dup_above(fd, high)?);
        k.close(fd);
    }
    let ctl_hi = k.dup_above(ctl, high)?;
    let mut have = Vec::new();
    for f in &p.fds {
        if let Some(&src) = temp.get(&f.desc) {
            k.dup_to(src, f.fd, f.cloexec)?;
            have.push(f.fd);
        }
    }
    // Files of /proc, opened by the restore child, which is the process
    // they describe (or one of its relatives, all there by now), in the
    // /proc of its PID namespace.
    let mut made = Vec::new();
    for f in &p.fds {
        if let OpenFile::Proc { pid, rel, flags, pos } = &files[f.desc as usize] {
            let fd = match made.iter().find(|(d, _)| *d == f.desc) {
                Some(&(_, fd)) => fd,
                None => {
                    let fd = procfile::restore(k, *pid, rel, *flags, *pos)?;
                    let hi = k.dup_above(fd, high)?;
                    k.close(fd);
                    made.push((f.desc, hi));
                    hi
                }
            };
            k.dup_to(fd, f.fd, f.cloexec)?;
            have.push(f.fd);
        }
    }
    // epoll last: its interest list names the other fds by their numbers.
    for f in &p.fds {
        if let OpenFile::Epoll { flags, items } = &files[f.desc as usize] {
            let ep = match made.iter().find(|(d, _)| *d == f.desc) {
                Some(&(_, ep)) => ep,
                None => {
                    let ep = epoll::restore(k, *flags, items, &have)?;
                    let hi = k.dup_above(ep, high)?;
                    k.close(ep);
                    made.push((f.desc, hi));
                    hi
                }
            };
            k.dup_to(ep, f.fd, f.cloexec)?;
            have.push(f.fd);
        }
    }
    k.dup_to(ctl_hi, p.agent_fd, true)?;
    have.push(p.agent_fd);
    for t in temp.into_values().chain(made.into_iter().map(|(_, ep)| ep)).chain([ctl_hi]) {
        k.close(t);
    }
    have.sort_unstable();
    Ok(have)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::{FileIdentity, FileLock, LockKind, PathKind};
    use crate::restore::kernel::recording::{Call, Recording};
    use crate::restore::plan::tests::process;

    #[test]
    fn descriptions_are_placed_at_every_number_that_had_them() {
        let mut p = process(vec![], &[100]);
        let files = vec![
            OpenFile::Inherited { fd: 0, what: "terminal".into(), termios: None },
            OpenFile::Path {
                path: "/tmp/out".into(),
                flags: libc::O_WRONLY,
                pos: 42,
                kind: PathKind::Regular,
                locks: vec![
                    FileLock { kind: LockKind::Flock, write: true, start: 0, len: 0 },
                    FileLock { kind: LockKind::Posix, write: true, start: 10, len: 5 },
                ],
                written_size: None,
                identity: FileIdentity::default(),
                content: None,
            },
            OpenFile::Unsupported { what: "socket".into() },
        ];
        p.fds = vec![
            FdImage { fd: 0, cloexec: false, desc: 0 },
            FdImage { fd: 1, cloexec: false, desc: 1 },
            FdImage { fd: 5, cloexec: true, desc: 1 },
            FdImage { fd: 7, cloexec: false, desc: 2 },
        ];
        let received: HashMap<u32, i32> = [(1, 4)].into_iter().collect();
        let mut k = Recording::default();
        let have = place(&mut k, &p, &files, &received, 3).unwrap();
        assert_eq!(have, vec![1, 5, 1000]);
        // The process's own lock comes last, once no temporary fd of the
        // file remains to be closed; the flock came with the description.
        let placed = k.calls.len();
        take_own_locks(&mut k, &p, &files).unwrap();
        assert_eq!(
            k.calls[placed..],
            [Call::Lock { fd: 1, lock: FileLock { kind: LockKind::Posix, write: true, start: 10, len: 5 } }]
        );
        k.calls.truncate(placed);
        assert_eq!(
            k.calls,
            vec![
                Call::DupAbove { fd: 4, min: 1001, got: 1001 },
                Call::Close(4),
                Call::DupAbove { fd: 3, min: 1001, got: 1002 },
                // One description, both numbers.
                Call::DupTo { from: 1001, to: 1, cloexec: false },
                Call::DupTo { from: 1001, to: 5, cloexec: true },
                Call::DupTo { from: 1002, to: 1000, cloexec: true },
                Call::Close(1001),
                Call::Close(1002),
            ]
        );
    }

    #[test]
    fn files_reopen_without_truncating_and_are_cut_back_only_at_commit() {
        let mut k = Recording::default();
        k.sizes = 500;
        k.identity = FileIdentity { dev: 7, inode: 9 };
        let expect = file::Expect { identity: k.identity, same_machine: true };
        let flock = FileLock { kind: LockKind::Flock, write: true, start: 0, len: 0 };
        let path = std::path::Path::new("/tmp/out");
        let fd = file::restore(&mut k, path, libc::O_WRONLY | libc::O_TRUNC, 42, PathKind::Regular, &[flock], expect)
            .unwrap();
        assert_eq!(
            k.calls,
            vec![
                Call::Open { path: "/tmp/out".into(), flags: libc::O_WRONLY | libc::O_CLOEXEC, fd },
                Call::Seek { fd, pos: 42 },
                Call::Lock { fd, lock: flock },
            ]
        );
        k.calls.clear();
        let cut = file::CutBack { fd, size: 420, path: path.into(), pos: 42, append: false };
        commit(&mut k, &[Deferred::CutBack(cut.clone())]).unwrap();
        assert_eq!(k.calls, vec![Call::FileSize(fd), Call::Truncate { fd, len: 420 }]);
        // A file that did not grow is left as it is.
        k.calls.clear();
        k.sizes = 300;
        commit(&mut k, &[Deferred::CutBack(cut)]).unwrap();
        assert!(!k.calls.iter().any(|c| matches!(c, Call::Truncate { .. })));
    }

    #[test]
    fn another_file_at_the_path_is_refused_before_anything_changes() {
        let mut k = Recording::default();
        k.identity = FileIdentity { dev: 7, inode: 10 };
        let expect = file::Expect { identity: FileIdentity { dev: 7, inode: 9 }, same_machine: false };
        let path = std::path::Path::new("/tmp/out");
        let e = file::restore(&mut k, path, libc::O_WRONLY, 42, PathKind::Regular, &[], expect).unwrap_err();
        assert!(format!("{e:#}").contains("replaced by another file"), "{e:#}");
        assert!(!k.calls.iter().any(|c| matches!(c, Call::Truncate { .. } | Call::Seek { .. })));
        // Another machine: only the inode counts.
        k.identity = FileIdentity { dev: 8, inode: 9 };
        assert!(file::restore(&mut k, path, libc::O_WRONLY, 0, PathKind::Regular, &[], expect).is_ok());
    }

    #[test]
    fn ckruns_own_lines_survive_the_cut_back_of_its_stderr() {
        let mut k = Recording::default();
        k.identity = FileIdentity { dev: 1, inode: 2 };
        k.stderr_identity = k.identity; // the file is ckrun's stderr
        k.tail = b"tick 3\nckrun: checkpoint 1: x\ntick 4\n".to_vec();
        k.sizes = 10 + k.tail.len() as u64;
        let cut = file::CutBack { fd: 5, size: 10, path: "/log".into(), pos: 10, append: false };
        commit(&mut k, &[Deferred::CutBack(cut)]).unwrap();
        assert_eq!(
            k.calls,
            vec![
                Call::FileSize(5),
                Call::Reopen { from: 5, flags: libc::O_RDONLY | libc::O_CLOEXEC, fd: 100 },
                Call::Close(100),
                Call::Truncate { fd: 5, len: 10 },
                Call::Pwrite { fd: 5, len: "ckrun: checkpoint 1: x\n".len(), offset: 10 },
                Call::Seek { fd: 5, pos: 10 + "ckrun: checkpoint 1: x\n".len() as u64 },
            ]
        );
    }

    #[test]
    fn after_a_stop_nothing_is_cut_and_the_program_writes_after_what_others_wrote() {
        let mut k = Recording::default();
        k.sizes = 700; // a batch script's and Slurm's lines after the checkpoint's 420 bytes
        let at_end = file::CutBack { fd: 5, size: 420, path: "/job.out".into(), pos: 420, append: false };
        commit(&mut k, &[Deferred::KeepAfterStop(at_end.clone())]).unwrap();
        assert_eq!(k.calls, vec![Call::FileSize(5), Call::Seek { fd: 5, pos: 700 }]);
        // Appending, or writing inside the file: nothing to do.
        k.calls.clear();
        let appending = file::CutBack { append: true, ..at_end.clone() };
        let inside = file::CutBack { pos: 100, ..at_end };
        commit(&mut k, &[Deferred::KeepAfterStop(appending), Deferred::KeepAfterStop(inside)]).unwrap();
        assert!(k.calls.is_empty(), "{:?}", k.calls);
    }
}
