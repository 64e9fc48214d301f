//! Files of /proc the program opened: `/proc/self/maps`, `/proc/PID/status`,
//! `/proc/self/fd/` (a directory), `/proc/meminfo`. They are no files on a
//! disk: their inodes are made up anew by every boot and every process, so
//! they cannot be checked and reopened like [`super::file`]'s. Saved as
//! the process they describe (by its PID, which a restart gives back) and
//! the rest of the path, they are reopened at restart for the restored
//! process: `/proc/self/status` then tells the restored process's state,
//! as it told the running one's. A file of a process outside the job is
//! not restorable (that process does not come back).

use super::{file, ProcFd};
use crate::error::CkError;
use crate::image::manifest::OpenFile;
use crate::restore::kernel::Kernel;
use anyhow::Result;
use std::path::{Component, Path, PathBuf};

/// Whether an fd target is a file of /proc.
pub fn is_proc(target: &str) -> bool {
    target.starts_with("/proc/")
}

/// `target` is `/proc/...`; `tree` the PIDs of the job's processes.
pub fn capture(f: &ProcFd, tree: &[i32]) -> OpenFile {
    let rest = &f.target["/proc/".len()..];
    let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let pid = first.parse::<i32>().ok();
    if let Some(p) = pid {
        if !tree.contains(&p) {
            return OpenFile::Unsupported { what: format!("{}, a file of a process outside the job", f.target) };
        }
    }
    let rel = if pid.is_some() { tail } else { rest };
    OpenFile::Proc { pid, rel: PathBuf::from(rel), flags: f.flags, pos: f.pos }
}

/// The path to reopen: `/proc/PID/REL` or `/proc/REL`.
pub fn path_of(pid: Option<i32>, rel: &Path) -> PathBuf {
    let mut p = PathBuf::from("/proc");
    if let Some(pid) = pid {
        p.push(pid.to_string());
    }
    p.push(rel);
    p
}

/// Whether `rel` stays inside /proc (what an image may say).
pub fn rel_ok(rel: &Path) -> bool {
    rel.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Reopens the file with the process's rights (the caller has taken its
/// identity), at its offset where the file has one to go back to.
pub fn restore(k: &mut impl Kernel, pid: Option<i32>, rel: &Path, flags: i32, pos: u64) -> Result<i32> {
    let path = path_of(pid, rel);
    let fd = k
        .open(&path, file::reopen_flags(flags))
        .map_err(|e| CkError::Environment(format!("cannot reopen {} for the restored process: {e}", path.display())))?;
    // A generated file's offset is where the next read starts; its content
    // is today's, and a directory's is a cookie: both best kept if they can.
    if pos != 0 && k.seek(fd, pos).is_err() {
        let _ = k.seek(fd, 0);
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(target: &str) -> ProcFd {
        ProcFd { pid: 10, fd: 3, target: target.into(), flags: libc::O_RDONLY, pos: 7, info: String::new() }
    }

    #[test]
    fn own_and_global_files() {
        assert_eq!(
            capture(&fd("/proc/10/status"), &[10, 11]),
            OpenFile::Proc { pid: Some(10), rel: "status".into(), flags: libc::O_RDONLY, pos: 7 }
        );
        assert_eq!(
            capture(&fd("/proc/11/task/12/stat"), &[10, 11]),
            OpenFile::Proc { pid: Some(11), rel: "task/12/stat".into(), flags: libc::O_RDONLY, pos: 7 }
        );
        assert_eq!(
            capture(&fd("/proc/meminfo"), &[10]),
            OpenFile::Proc { pid: None, rel: "meminfo".into(), flags: libc::O_RDONLY, pos: 7 }
        );
        assert!(matches!(capture(&fd("/proc/99/maps"), &[10]), OpenFile::Unsupported { .. }));
        assert_eq!(path_of(Some(10), Path::new("fd")), PathBuf::from("/proc/10/fd"));
        assert!(rel_ok(Path::new("task/12/stat")));
        assert!(!rel_ok(Path::new("../etc/shadow")) && !rel_ok(Path::new("/etc/shadow")));
    }
}
