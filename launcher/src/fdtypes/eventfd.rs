//! eventfd: the counter and the semaphore/non-blocking flags.

use super::{info_u64, ProcFd};
use crate::image::manifest::OpenFile;
use crate::restore::kernel::Kernel;
use anyhow::{anyhow, Result};

pub fn capture(f: &ProcFd) -> Result<OpenFile> {
    let count = info_u64(&f.info, "eventfd-count", 16).ok_or_else(|| anyhow!("no eventfd-count in fdinfo"))?;
    let mut flags = 0;
    if info_u64(&f.info, "eventfd-semaphore", 10) == Some(1) {
        flags |= libc::EFD_SEMAPHORE;
    }
    if f.flags & libc::O_NONBLOCK != 0 {
        flags |= libc::EFD_NONBLOCK;
    }
    Ok(OpenFile::EventFd { count, flags })
}

pub fn restore(k: &mut impl Kernel, count: u64, flags: i32) -> Result<i32> {
    // eventfd() takes an unsigned int; larger counts are added by a write.
    let initial = count.min(u32::MAX as u64);
    let fd = k.eventfd(initial as u32, flags | libc::EFD_CLOEXEC)?;
    if count > initial {
        k.write_all(fd, &(count - initial).to_ne_bytes())?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_and_flags() {
        let f = ProcFd {
            pid: 1,
            fd: 3,
            target: "anon_inode:[eventfd]".into(),
            info: "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t20\neventfd-count:               1a\neventfd-id: 1\neventfd-semaphore: 1\n"
                .into(),
            flags: 0o4002,
            pos: 0,
        };
        assert_eq!(
            capture(&f).unwrap(),
            OpenFile::EventFd { count: 26, flags: libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK }
        );
    }
}
