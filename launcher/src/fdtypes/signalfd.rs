//! signalfd: its signal mask. The signals themselves stay pending in the
//! process (see `PendingSignals`), where a signalfd reads them.

use super::{info_u64, ProcFd};
use crate::image::manifest::OpenFile;
use crate::restore::kernel::Kernel;
use anyhow::{anyhow, Result};

pub fn capture(f: &ProcFd) -> Result<OpenFile> {
    let mask = info_u64(&f.info, "sigmask", 16).ok_or_else(|| anyhow!("no sigmask in signalfd fdinfo"))?;
    let flags = if f.flags & libc::O_NONBLOCK != 0 { libc::SFD_NONBLOCK } else { 0 };
    Ok(OpenFile::SignalFd { mask, flags })
}

pub fn restore(k: &mut impl Kernel, mask: u64, flags: i32) -> Result<i32> {
    Ok(k.signalfd(mask, flags | libc::SFD_CLOEXEC)?)
}
