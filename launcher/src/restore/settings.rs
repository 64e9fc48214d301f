//! Per-process settings the restore child takes on before the restorer
//! runs (they survive it): cwd, umask, personality, resource limits, and
//! the name of the main thread (before the files of /proc are opened: a
//! /proc/self/status the program read partway is generated at its
//! reopening, and must start with the program's name to continue at the
//! right offset).

use super::kernel::Kernel;
use crate::error::CkError;
use crate::image::manifest::ProcessImage;
use anyhow::{Context, Result};

pub fn apply(k: &mut impl Kernel, p: &ProcessImage) -> Result<()> {
    k.chdir(&p.cwd).map_err(|e| CkError::Environment(format!("working directory {}: {e}", p.cwd.display())))?;
    k.umask(p.umask);
    k.personality(p.personality).context("setting the personality")?;
    if let Some(main) = p.threads.iter().find(|t| t.tid == p.pid) {
        k.set_name(&main.comm).context("naming the process")?;
    }
    for l in &p.rlimits {
        // Raising a hard limit needs privilege; keep going with a warning.
        if let Err(e) = k.setrlimit(l.resource, l.cur, l.max) {
            eprintln!("ckrun: warning: cannot restore resource limit {}: {e}", l.resource);
        }
    }
    Ok(())
}
