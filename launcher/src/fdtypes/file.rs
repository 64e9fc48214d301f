//! Regular files, directories and devices: reopened by path with the same
//! flags, at the same offset, with the same locks. A file that changed
//! since the checkpoint is reopened as it is now.

use super::ProcFd;
use crate::image::manifest::{FileLock, LockKind, OpenFile, PathKind};
use crate::restore::kernel::Kernel;
use anyhow::Result;
use std::path::{Path, PathBuf};

pub fn capture(f: &ProcFd, meta: &std::fs::Metadata) -> Result<OpenFile> {
    let kind = if meta.is_file() {
        PathKind::Regular
    } else if meta.is_dir() {
        PathKind::Directory
    } else {
        PathKind::CharDevice
    };
    let writable = f.flags & libc::O_ACCMODE != libc::O_RDONLY;
    let written_size = (kind == PathKind::Regular && writable).then_some(meta.len());
    Ok(OpenFile::Path {
        path: PathBuf::from(&f.target),
        flags: f.flags,
        pos: f.pos,
        kind,
        locks: locks(&f.info),
        written_size,
    })
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

#[allow(clippy::too_many_arguments)]
pub fn restore(
    k: &mut impl Kernel,
    path: &Path,
    flags: i32,
    pos: u64,
    kind: PathKind,
    locks: &[FileLock],
    written_size: Option<u64>,
) -> Result<i32> {
    let fd = k
        .open(path, reopen_flags(flags))
        .map_err(|e| crate::error::CkError::Environment(format!("cannot reopen {}: {e}", path.display())))?;
    if let Some(size) = written_size {
        cut_back(k, fd, size, path)?;
    }
    if kind == PathKind::Regular && pos != 0 {
        k.seek(fd, pos)?;
    }
    take_locks(k, fd, locks, path)?;
    Ok(fd)
}

/// Cuts a file the job writes back to its size at the checkpoint, if it
/// grew since (only then: a file someone shortened meanwhile is left alone).
fn cut_back(k: &mut impl Kernel, fd: i32, size: u64, path: &Path) -> Result<()> {
    let now = k.file_size(fd)?;
    if now > size {
        k.truncate(fd, size).map_err(|e| {
            crate::error::CkError::Environment(format!(
                "cannot cut {} back to its size at the checkpoint ({size} bytes): {e}",
                path.display()
            ))
        })?;
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
