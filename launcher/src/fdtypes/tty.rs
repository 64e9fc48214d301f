//! Standard input/output that pointed outside the tree: a terminal, or a
//! pipe or socket from whoever started ckrun. At restart the program gets
//! ckrun's own fd of the same number; a terminal gets back the settings
//! (termios) the program had put on its terminal, so that a full-screen or
//! raw-mode program keeps working.

use super::ProcFd;
use crate::image::manifest::OpenFile;
use crate::restore::kernel::Kernel;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

/// Terminals: virtual consoles (major 4), /dev/tty and /dev/console (5),
/// pseudo-terminal slaves (136-143).
pub fn is_terminal(meta: &std::fs::Metadata) -> bool {
    matches!(libc::major(meta.rdev()), 4 | 5 | 136..=143)
}

pub fn inherited(f: &ProcFd, what: &str) -> OpenFile {
    OpenFile::Inherited { fd: f.fd, what: what.to_string(), termios: None }
}

/// A terminal on fd 0..2, with its settings.
pub fn capture(f: &ProcFd) -> OpenFile {
    let termios = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(f.proc_path())
        .ok()
        .and_then(|t| {
            // SAFETY: termios is plain data; tcgetattr fills it.
            let mut tio: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: t is an open terminal fd, tio a valid termios.
            (unsafe { libc::tcgetattr(t.as_raw_fd(), &mut tio) } == 0).then(|| {
                // SAFETY: viewing a plain-data struct as its bytes.
                unsafe {
                    std::slice::from_raw_parts(&tio as *const _ as *const u8, std::mem::size_of::<libc::termios>())
                }
                .to_vec()
            })
        });
    OpenFile::Inherited { fd: f.fd, what: format!("terminal {}", f.target), termios }
}

/// Puts the saved settings on fd `fd` if it is a terminal now (a restart
/// whose output goes to a file just skips it).
pub fn apply(k: &mut impl Kernel, fd: i32, termios: &[u8]) {
    if termios.len() == std::mem::size_of::<libc::termios>() {
        let _ = k.tcsetattr(fd, termios);
    }
}
