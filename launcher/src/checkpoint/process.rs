//! Per-process kernel state read from /proc and prlimit: identity, cwd,
//! umask, personality, limits (while stopped), and the memory layout
//! fields PR_SET_MM_MAP restores (from the snapshot).

use crate::image::manifest::{FileRef, MmFields, Rlimit};
use crate::sys::procfs::{
    self, file_stamp, parse_auxv, parse_stat, read, read_bytes, read_link, status_field, StatFields,
};
use anyhow::{anyhow, Context, Result};
use std::path::PathBuf;

pub struct ProcessState {
    pub stat: StatFields,
    pub cwd: PathBuf,
    pub umask: u32,
    pub personality: u32,
    pub rlimits: Vec<Rlimit>,
}

pub fn capture_state(pid: i32) -> Result<ProcessState> {
    let stat = parse_stat(&read(pid, "stat")?)?;
    let status = read(pid, "status")?;
    let umask = status_field(&status, "Umask")
        .and_then(|u| u32::from_str_radix(u, 8).ok())
        .ok_or_else(|| anyhow!("no Umask in /proc/{pid}/status"))?;
    let personality = u32::from_str_radix(read(pid, "personality")?.trim(), 16).context("parsing personality")?;
    let mut rlimits = Vec::new();
    // RLIMIT_CPU (0) .. RLIMIT_RTTIME (15).
    for res in 0..16 {
        let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: prlimit only writes `old`.
        if unsafe { libc::prlimit(pid, res, std::ptr::null(), &mut old) } == 0 {
            rlimits.push(Rlimit { resource: res, cur: old.rlim_cur, max: old.rlim_max });
        }
    }
    Ok(ProcessState { stat, cwd: read_link(pid, "cwd")?, umask, personality, rlimits })
}

/// Signals pending for the whole process (`tid`: any of its threads'
/// status shows them), minus the agent's own (`reserved`).
pub fn process_pending(tid: i32, reserved: u64) -> Result<u64> {
    Ok(sigset_field(&read(tid, "status")?, "ShdPnd") & !reserved)
}

/// Signals pending for thread `tid` of process `pid` only.
pub fn thread_pending(pid: i32, tid: i32, reserved: u64) -> u64 {
    sigset_field(&read(pid, &format!("task/{tid}/status")).unwrap_or_default(), "SigPnd") & !reserved
}

fn sigset_field(status: &str, key: &str) -> u64 {
    status_field(status, key).and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0)
}

pub struct MemoryLayout {
    pub exe: FileRef,
    pub mm: MmFields,
    pub auxv: Vec<u64>,
    pub maps: Vec<procfs::MapEntry>,
}

/// From the process holding the memory image (`source`: the snapshot
/// child, or the frozen process itself). `brk` comes from the agent.
pub fn capture_layout(source: i32, brk: u64) -> Result<MemoryLayout> {
    let s = parse_stat(&read(source, "stat")?)?;
    let exe_path = read_link(source, "exe")?;
    let (_, inode, size, mtime_ns) =
        file_stamp(&exe_path).with_context(|| format!("the program's executable {}", exe_path.display()))?;
    Ok(MemoryLayout {
        exe: FileRef { path: exe_path, size, mtime_ns, inode },
        mm: MmFields {
            start_code: s.start_code,
            end_code: s.end_code,
            start_data: s.start_data,
            end_data: s.end_data,
            start_brk: s.start_brk,
            brk,
            start_stack: s.start_stack,
            arg_start: s.arg_start,
            arg_end: s.arg_end,
            env_start: s.env_start,
            env_end: s.env_end,
        },
        auxv: parse_auxv(&read_bytes(source, "auxv")?),
        maps: procfs::maps(source)?,
    })
}
