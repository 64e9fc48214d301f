//! The fd table: each descriptor, grouped by open file description (kcmp),
//! with what is needed to reopen it. Captured while the program is
//! stopped, because file offsets are shared with the running program.

use crate::image::manifest::{FdImage, OpenFile, PathKind};
use crate::sys::proc::same_file_description;
use crate::sys::procfs::{parse_fdinfo, read, read_link};
use anyhow::{Context, Result};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

/// Major device numbers of terminals: pseudo-terminal slaves (136-143),
/// virtual consoles (4), /dev/tty and /dev/console (5).
fn is_terminal(rdev: u64) -> bool {
    let major = libc::major(rdev);
    matches!(major, 4 | 5 | 136..=143)
}

pub struct FdTable {
    pub fds: Vec<FdImage>,
    pub files: Vec<OpenFile>,
    /// Descriptors that will come back closed, for the checkpoint message.
    pub unsupported: Vec<String>,
}

/// Captures the fds of `pid`, except the agent's own connection.
pub fn capture(pid: i32, agent_fd: i32) -> Result<FdTable> {
    let mut nums: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd != agent_fd)
        .collect();
    nums.sort_unstable();
    let mut t = FdTable { fds: Vec::new(), files: Vec::new(), unsupported: Vec::new() };
    // One representative fd per description, to compare new fds against.
    let mut reps: Vec<i32> = Vec::new();
    for fd in nums {
        let Ok(target) = read_link(pid, &format!("fd/{fd}")) else {
            continue;
        }; // closed meanwhile
        let Ok(info) = read(pid, &format!("fdinfo/{fd}")).and_then(|s| parse_fdinfo(&s)) else {
            continue;
        };
        let cloexec = info.flags & libc::O_CLOEXEC != 0;
        let mut desc = None;
        for (i, &rep) in reps.iter().enumerate() {
            if same_file_description(pid, rep, pid, fd).unwrap_or(false) {
                desc = Some(i as u32);
                break;
            }
        }
        let desc = match desc {
            Some(d) => d,
            None => {
                let f = classify(fd, &target, info.flags & !libc::O_CLOEXEC, info.pos);
                if let OpenFile::Unsupported { what } = &f {
                    t.unsupported.push(format!("fd {fd} ({what})"));
                }
                t.files.push(f);
                reps.push(fd);
                (t.files.len() - 1) as u32
            }
        };
        t.fds.push(FdImage { fd, cloexec, desc });
    }
    Ok(t)
}

fn classify(fd: i32, target: &std::path::Path, flags: i32, pos: u64) -> OpenFile {
    let s = target.to_string_lossy();
    let stdio = (0..=2).contains(&fd);
    if !s.starts_with('/') {
        // pipe:[ino], socket:[ino], anon_inode:[eventfd], ...
        let what = s.split(':').next().unwrap_or("?").to_string();
        return if stdio && (what == "pipe" || what == "socket") {
            OpenFile::Inherited { fd, what: format!("{what} from outside") }
        } else {
            OpenFile::Unsupported { what: s.into_owned() }
        };
    }
    if s.ends_with(" (deleted)") {
        return OpenFile::Unsupported { what: format!("deleted file {s}") };
    }
    let meta = match std::fs::metadata(target) {
        Ok(m) => m,
        Err(_) => return OpenFile::Unsupported { what: format!("{s} (cannot stat)") },
    };
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        PathKind::Regular
    } else if ft.is_dir() {
        PathKind::Directory
    } else if ft.is_char_device() {
        use std::os::unix::fs::MetadataExt;
        if is_terminal(meta.rdev()) {
            return if stdio {
                OpenFile::Inherited { fd, what: format!("terminal {s}") }
            } else {
                OpenFile::Unsupported { what: format!("terminal {s}") }
            };
        }
        PathKind::CharDevice
    } else {
        return OpenFile::Unsupported { what: format!("{s} (fifo, socket or block device)") };
    };
    OpenFile::Path { path: PathBuf::from(target), flags, pos, kind }
}
