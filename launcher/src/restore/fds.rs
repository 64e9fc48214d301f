//! Re-creating the program's fd table in the restore child: one open per
//! open file description (so fds that shared one still share it, with its
//! offset), ckrun's own stdio for the terminal or outside pipes, the agent's
//! connection to the new coordinator at its old number.

use super::kernel::Kernel;
use crate::error::CkError;
use crate::image::manifest::{OpenFile, PathKind, ProcessImage};
use anyhow::Result;

/// Restores every fd of `p`; `ctl` is this child's connection to the
/// coordinator, which becomes the agent's fd. Returns the fds the program
/// now has (for closing everything else).
pub fn restore(k: &mut impl Kernel, p: &ProcessImage, ctl: i32) -> Result<Vec<i32>> {
    // Temporaries go above every number the program uses, so that placing
    // one fd never clobbers a source still needed.
    let high = p.fds.iter().map(|f| f.fd).chain([p.agent_fd, ctl, 2]).max().unwrap_or(2) + 1;
    let mut temp: Vec<Option<i32>> = vec![None; p.files.len()];
    for (d, f) in p.files.iter().enumerate() {
        if !p.fds.iter().any(|x| x.desc as usize == d) {
            continue;
        }
        temp[d] = match f {
            OpenFile::Path { path, flags, pos, kind } => {
                let open_flags =
                    flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) | libc::O_CLOEXEC;
                let fd = k
                    .open(path, open_flags)
                    .map_err(|e| CkError::Environment(format!("cannot reopen {}: {e}", path.display())))?;
                if *kind == PathKind::Regular && *pos != 0 {
                    k.seek(fd, *pos)?;
                }
                let hi = k.dup_above(fd, high)?;
                k.close(fd);
                Some(hi)
            }
            OpenFile::Inherited { fd, .. } => Some(k.dup_above(*fd, high)?),
            OpenFile::Unsupported { .. } => None,
        };
    }
    let ctl_hi = k.dup_above(ctl, high)?;
    let mut have = Vec::new();
    for f in &p.fds {
        if let Some(src) = temp[f.desc as usize] {
            k.dup_to(src, f.fd, f.cloexec)?;
            have.push(f.fd);
        }
    }
    k.dup_to(ctl_hi, p.agent_fd, true)?;
    have.push(p.agent_fd);
    for t in temp.into_iter().flatten().chain([ctl_hi]) {
        k.close(t);
    }
    Ok(have)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::FdImage;
    use crate::restore::kernel::recording::{Call, Recording};
    use crate::restore::plan::tests::process;

    #[test]
    fn shared_descriptions_are_opened_once_and_duplicated() {
        let mut p = process(vec![], &[100]);
        p.files = vec![
            OpenFile::Inherited { fd: 0, what: "terminal".into() },
            OpenFile::Path {
                path: "/tmp/out".into(),
                flags: libc::O_WRONLY | libc::O_TRUNC,
                pos: 42,
                kind: PathKind::Regular,
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
        let have = restore(&mut k, &p, 3).unwrap();
        assert_eq!(have, vec![0, 1, 5, 1000]);
        // Terminal copied from our own fd 0, file opened once (no O_TRUNC!),
        // positioned, both fds 1 and 5 from the same open.
        assert_eq!(
            k.calls,
            vec![
                Call::DupAbove { fd: 0, min: 1001, got: 1001 },
                Call::Open { path: "/tmp/out".into(), flags: libc::O_WRONLY | libc::O_CLOEXEC, fd: 1002 },
                Call::Seek { fd: 1002, pos: 42 },
                Call::DupAbove { fd: 1002, min: 1001, got: 1003 },
                Call::Close(1002),
                Call::DupAbove { fd: 3, min: 1001, got: 1004 },
                Call::DupTo { from: 1001, to: 0, cloexec: false },
                Call::DupTo { from: 1003, to: 1, cloexec: false },
                Call::DupTo { from: 1003, to: 5, cloexec: true },
                Call::DupTo { from: 1004, to: 1000, cloexec: true },
                Call::Close(1001),
                Call::Close(1003),
                Call::Close(1004),
            ]
        );
    }
}
