//! Regular files, directories and devices: reopened by path with the same
//! flags, at the same offset, with the same locks. A path that is now a
//! symlink or another file (another inode) is refused before anything is
//! created or cut back. What the job wrote after the checkpoint is undone
//! only once the whole tree is ready to run (applied by `fdtypes::commit`):
//! a file it grew is cut back to its size then ([`CutBack`]); one it
//! rewrote in place, whose content the image holds (files open for
//! writing, within [`SAVE_BUDGET`]), gets that content back
//! ([`PutBack`]). A file beyond the budget that changed in place is
//! reopened as it is now (named in a warning at checkpoint time).

use super::ProcFd;
use crate::error::CkError;
use crate::image::manifest::{FileIdentity, FileLock, LockKind, OpenFile, PathKind, SavedContent};
use crate::image::{ImageReader, ImageWriter};
use crate::restore::kernel::Kernel;
use anyhow::{Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How many bytes of the files the job writes one checkpoint saves, all
/// files together, in the order met (`CKRUN_SAVE_WRITTEN_MIB` sets it;
/// they are read while the program is stopped, at page-cache speed). A
/// file beyond it is named in a warning: a restart then needs it where it
/// is.
pub const SAVE_BUDGET: u64 = 16 << 20;

/// [`SAVE_BUDGET`], or `CKRUN_SAVE_WRITTEN_MIB`.
pub fn save_budget() -> u64 {
    std::env::var("CKRUN_SAVE_WRITTEN_MIB").ok().and_then(|v| v.parse::<u64>().ok()).map_or(SAVE_BUDGET, |m| m << 20)
}

/// `budget`: what is left of [`SAVE_BUDGET`] for this checkpoint.
pub fn capture(
    f: &ProcFd,
    meta: &std::fs::Metadata,
    budget: &mut u64,
    out: &ImageWriter,
    warnings: &mut Vec<String>,
) -> Result<OpenFile> {
    let kind = if meta.is_file() {
        PathKind::Regular
    } else if meta.is_dir() {
        PathKind::Directory
    } else {
        PathKind::CharDevice
    };
    let writable = f.flags & libc::O_ACCMODE != libc::O_RDONLY;
    let written_size = (kind == PathKind::Regular && writable).then_some(meta.len());
    let mut content = None;
    if written_size.is_some() {
        if meta.len() <= *budget {
            let mut file = std::fs::File::open(f.proc_path())
                .with_context(|| format!("opening {} to save its content", f.target))?;
            let chunks = super::ghost::save_content(&mut file, meta.len(), out)
                .with_context(|| format!("saving the content of {}", f.target))?;
            *budget -= meta.len();
            content = Some(SavedContent { mode: meta.mode() & 0o777, size: meta.len(), chunks });
        } else {
            warnings.push(format!(
                "process {}: fd {} ({}, {} bytes) is beyond the {} MiB the checkpoint saves of written files \
                 (CKRUN_SAVE_WRITTEN_MIB); a restart needs it where it is",
                f.pid,
                f.fd,
                f.target,
                meta.len(),
                save_budget() >> 20
            ));
        }
    }
    Ok(OpenFile::Path {
        path: PathBuf::from(&f.target),
        flags: f.flags,
        pos: f.pos,
        kind,
        locks: locks(&f.info),
        written_size,
        identity: FileIdentity { dev: meta.dev(), inode: meta.ino() },
        content,
    })
}

/// Makes a file the job wrote and deleted since the checkpoint again, with
/// its content then, under a temporary name beside its own (given its
/// name once the restart goes ahead: `ghost::Rename`); returns the fd,
/// opened as the program had it.
pub fn recreate(
    k: &mut impl Kernel,
    img: &ImageReader,
    path: &Path,
    flags: i32,
    pos: u64,
    c: &SavedContent,
) -> Result<i32> {
    let temp = super::ghost::Rename::temp_name(path);
    let create = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let made = k.create(&temp, create, c.mode).map_err(|e| {
        CkError::Environment(format!("cannot make {} again (as {}): {e}", path.display(), temp.display()))
    })?;
    let mut fill = || -> Result<i32> {
        super::ghost::fill(k, img, made, &c.chunks, c.size)?;
        let fd = k.reopen(made, reopen_flags(flags))?;
        if pos != 0 {
            k.seek(fd, pos)?;
        }
        Ok(fd)
    };
    let r = fill();
    k.close(made);
    if r.is_err() {
        let _ = k.unlink(&temp);
    }
    r
}

/// The `lock:` lines of an fdinfo file: the locks held through this open
/// file description (flock, OFD) or by this process on its file (POSIX).
pub fn locks(info: &str) -> Vec<FileLock> {
    info.lines().filter_map(|l| parse_lock(l.strip_prefix("lock:")?)).collect()
}

/// `1: POSIX  ADVISORY  WRITE 17083 fe:00:10019130 10 29`; waiters ("->") skipped.
fn parse_lock(l: &str) -> Option<FileLock> {
    if l.contains("->") {
        return None;
    }
    let w: Vec<&str> = l.split_whitespace().collect();
    let kind = match *w.get(1)? {
        "POSIX" => LockKind::Posix,
        "FLOCK" => LockKind::Flock,
        "OFDLCK" => LockKind::Ofd,
        _ => return None, // leases, delegations
    };
    let write = *w.get(3)? == "WRITE";
    let start: u64 = w.get(6)?.parse().ok()?;
    let len = match *w.get(7)? {
        "EOF" => 0,
        end => end.parse::<u64>().ok()? - start + 1,
    };
    Some(FileLock { kind, write, start, len })
}

/// Flags that only matter when a file is created or must not be given again.
pub fn reopen_flags(flags: i32) -> i32 {
    flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) | libc::O_CLOEXEC
}

/// A file to cut back to its size at the checkpoint once the restart is
/// sure to go ahead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutBack {
    pub fd: i32,
    pub size: u64,
    pub path: PathBuf,
    /// The description's offset and whether it appends (where ckrun's own
    /// lines put back after the cut leave the program's next write).
    pub pos: u64,
    pub append: bool,
}

/// A file the job rewrote in place after the checkpoint: its content then,
/// written back once the restart is sure to go ahead (a [`CutBack`] of the
/// same file follows, for what lies past it).
#[derive(Clone, PartialEq, Eq)]
pub struct PutBack {
    pub fd: i32,
    pub path: PathBuf,
    pub content: Vec<u8>,
}

impl std::fmt::Debug for PutBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PutBack {{ fd: {}, path: {:?}, {} bytes }}", self.fd, self.path, self.content.len())
    }
}

/// The saved content of a file if the file (reopened as `fd`) no longer
/// holds it: the job changed it in place after the checkpoint, or someone
/// shortened it. Read through a description of ckrun's own (the program's
/// may be write-only).
pub fn put_back_if_changed(
    k: &mut impl Kernel,
    img: &ImageReader,
    fd: i32,
    path: &Path,
    c: &SavedContent,
) -> Result<Option<PutBack>> {
    let mut saved = vec![0u8; c.size as usize];
    super::ghost::each_piece(img, &c.chunks, |at, piece| {
        let at = (at as usize).min(saved.len());
        let n = piece.len().min(saved.len() - at);
        saved[at..at + n].copy_from_slice(&piece[..n]);
        Ok(())
    })?;
    let reader = k.reopen(fd, libc::O_RDONLY | libc::O_CLOEXEC)?;
    let now = k.pread(reader, saved.len(), 0);
    k.close(reader);
    let now = now.with_context(|| format!("reading {} to compare it with the checkpoint's", path.display()))?;
    Ok((now != saved).then(|| PutBack { fd, path: path.to_path_buf(), content: saved }))
}

/// Writes the checkpoint's content back, through a description of ckrun's
/// own without O_APPEND (a pwrite on an O_APPEND one goes to the end).
pub fn put_back(k: &mut impl Kernel, p: &PutBack) -> Result<()> {
    let writer = k.reopen(p.fd, libc::O_WRONLY | libc::O_CLOEXEC)?;
    let r = k.pwrite_all(writer, &p.content, 0);
    k.close(writer);
    r.map_err(|e| {
        CkError::Environment(format!(
            "cannot put {} back as it was at the checkpoint ({} bytes): {e}",
            p.path.display(),
            p.content.len()
        ))
        .into()
    })
}

/// How a restart compares a file with the one at the checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    pub identity: FileIdentity,
    /// Device numbers are only comparable on the machine that made the image.
    pub same_machine: bool,
}

impl Expect {
    pub fn matches(&self, now: FileIdentity) -> bool {
        now.inode == self.identity.inode && (!self.same_machine || now.dev == self.identity.dev)
    }
}

/// The message for a path that is not the file it was.
pub fn changed(path: &Path, how: &str) -> CkError {
    CkError::Environment(format!(
        "{}: {how} since the checkpoint; the program had the file there open, and a restart \
         never uses another file in its place",
        path.display()
    ))
}

/// Reopens the file (no truncation yet: see [`CutBack`]).
#[allow(clippy::too_many_arguments)]
pub fn restore(
    k: &mut impl Kernel,
    path: &Path,
    flags: i32,
    pos: u64,
    kind: PathKind,
    locks: &[FileLock],
    expect: Expect,
) -> Result<i32> {
    let fd = k.open(path, reopen_flags(flags)).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => changed(path, "became a symbolic link"),
        _ => CkError::Environment(format!("cannot reopen {}: {e}", path.display())),
    })?;
    let now = k.identity_of(fd)?;
    if !expect.matches(now) {
        k.close(fd);
        return Err(changed(path, "was replaced by another file").into());
    }
    if kind == PathKind::Regular && pos != 0 {
        k.seek(fd, pos)?;
    }
    take_locks(k, fd, locks, path)?;
    Ok(fd)
}

/// Cuts a file the job writes back to its size at the checkpoint, if it
/// grew since (only then: a file someone shortened meanwhile is left
/// alone). When the file is also ckrun's own stderr (`ckrun prog >> log
/// 2>&1`), ckrun's lines written after the checkpoint are kept: they are
/// put back right after the cut.
pub fn cut_back(k: &mut impl Kernel, c: &CutBack, ours: Option<FileIdentity>) -> Result<()> {
    let now = k.file_size(c.fd)?;
    if now <= c.size {
        return Ok(());
    }
    let shared_with_ckrun = ours.is_some_and(|o| k.identity_of(c.fd).is_ok_and(|i| i == o));
    let kept: Vec<u8> = if shared_with_ckrun {
        // The program's description may be write-only: read through one of ours.
        let reader = k.reopen(c.fd, libc::O_RDONLY | libc::O_CLOEXEC)?;
        let tail = k.pread(reader, (now - c.size).min(16 << 20) as usize, c.size);
        k.close(reader);
        let tail = tail?;
        tail.split_inclusive(|&b| b == b'\n').filter(|l| l.starts_with(b"ckrun: ")).flatten().copied().collect()
    } else {
        Vec::new()
    };
    k.truncate(c.fd, c.size).map_err(|e| {
        CkError::Environment(format!(
            "cannot cut {} back to its size at the checkpoint ({} bytes): {e}",
            c.path.display(),
            c.size
        ))
    })?;
    if !kept.is_empty() {
        k.pwrite_all(c.fd, &kept, c.size)?;
        if !c.append && c.pos >= c.size {
            k.seek(c.fd, c.pos + kept.len() as u64)?;
        }
    }
    Ok(())
}

/// Instead of [`cut_back`] after a `--stop-signal` checkpoint
/// (`batch::stop_mark`): what the file holds beyond its size at the
/// checkpoint was written by others after the program ended (a batch
/// script's lines, Slurm's), and stays. A program that writes at the
/// end without `O_APPEND` goes on after those lines, as it would after
/// ckrun's own lines put back by a cut.
pub fn keep_after_stop(k: &mut impl Kernel, c: &CutBack) -> Result<()> {
    if c.append || c.pos < c.size {
        return Ok(());
    }
    let now = k.file_size(c.fd)?;
    if now > c.size {
        k.seek(c.fd, c.pos + (now - c.size))?;
    }
    Ok(())
}

pub fn take_locks(k: &mut impl Kernel, fd: i32, locks: &[FileLock], what: &Path) -> Result<()> {
    for l in locks {
        k.lock(fd, l).map_err(|e| {
            crate::error::CkError::Environment(format!(
                "cannot take back the lock on {} (another process holds it now?): {e}",
                what.display()
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines() {
        let info = "pos:\t0\nflags:\t02\nlock:\t1: FLOCK  ADVISORY  WRITE 17083 fe:00:10019130 0 EOF\n\
                    lock:\t2: POSIX  ADVISORY  READ 17083 fe:00:10019130 10 29\n\
                    lock:\t3: -> POSIX  ADVISORY  WRITE 9 fe:00:1 0 EOF\n";
        assert_eq!(
            locks(info),
            vec![
                FileLock { kind: LockKind::Flock, write: true, start: 0, len: 0 },
                FileLock { kind: LockKind::Posix, write: false, start: 10, len: 20 },
            ]
        );
    }
}
