//! The restore child: a fresh ckrun process (exec'd into the PID of the
//! program it restores) that stages the image's memory, rebuilds the fd
//! table and settings, and hands over to the restorer, becoming the
//! program. Until that hand-over nothing of the program runs, so any error
//! here leaves no half-restored process behind.

use super::kernel::{Kernel, Linux};
use super::plan::RestorePlan;
use super::{memory, restorer, settings};
use crate::fdtypes;
use crate::image::manifest::PendingSignals;
use crate::image::ImageReader;
use crate::sys::procfs;
use anyhow::{anyhow, Context, Result};
use std::fs::File;
use std::os::fd::FromRawFd;

pub fn main(image_fd: i32, index: usize, ctl_fd: i32) -> Result<i32> {
    restore(image_fd, index, ctl_fd).context("restore failed")
}

fn restore(image_fd: i32, index: usize, ctl_fd: i32) -> Result<i32> {
    let path = std::fs::read_link(format!("/proc/self/fd/{image_fd}")).unwrap_or_else(|_| "image".into());
    // SAFETY: the coordinator passed us this fd, open on the image, for us to own.
    let file = unsafe { File::from_raw_fd(image_fd) };
    let img = ImageReader::from_file(file, &path)?;
    let p = img.manifest.processes.get(index).ok_or_else(|| anyhow!("the image has no process #{index}"))?.clone();
    let plan = RestorePlan::build(&p, &procfs::maps(std::process::id() as i32)?)?;
    let mut k = Linux;

    let ghosts = fdtypes::recreate_ghosts(&mut k, &img, &p)?;
    let ghost_fds: Vec<i32> = ghosts.iter().map(|g| g.fd).collect();
    memory::map(&mut k, &plan, &p, &ghost_fds)?;
    memory::fill(&img, &plan, &p)?;
    memory::protect(&mut k, &plan, &p)?;
    drop(img);

    settings::apply(&mut k, &p)?;
    let have = fdtypes::restore(&mut k, &p, ctl_fd, &ghost_fds)?;
    fdtypes::settle_ghosts(&mut k, ghosts);
    let exe = k
        .open(&p.exe.path, libc::O_RDONLY | libc::O_CLOEXEC)
        .with_context(|| format!("opening {}", p.exe.path.display()))?;
    let exe_fd = k.dup_above(exe, have.iter().copied().max().unwrap_or(2) + 1)?;
    k.close(exe);
    let enc = restorer::encode(&plan, &p, exe_fd, p.agent_fd)?;
    close_other_fds(&have, exe_fd)?;

    block_all_signals();
    raise_pending(&mut k, &p.pending);
    unregister_rseq();
    // SAFETY: single-threaded (the fill threads were joined), all signals
    // blocked, rseq unregistered: the restorer may take the process over.
    match unsafe { restorer::launch(&plan, &enc) }? {}
}

/// Closes every fd that is neither the program's nor needed by the restorer.
fn close_other_fds(keep: &[i32], exe_fd: i32) -> Result<()> {
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .context("listing /proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if fd != exe_fd && !keep.contains(&fd) {
            // SAFETY: closing an fd of ours that nothing will use again (the
            // read_dir handle is already dropped; closing it twice is harmless).
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Signals pending at the checkpoint are pending again (all signals are
/// blocked now; the restored threads' masks decide when they arrive).
fn raise_pending(k: &mut impl Kernel, p: &PendingSignals) {
    for sig in 1..=64 {
        let bit = 1u64 << (sig - 1);
        if p.process & bit != 0 {
            let _ = k.raise(sig, false);
        }
        if p.main_thread & bit != 0 {
            let _ = k.raise(sig, true);
        }
    }
}

fn block_all_signals() {
    // SAFETY: a full set on the stack; pthread_sigmask only reads it.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
}

extern "C" {
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// glibc registered this thread's rseq area in ckrun's TLS, which the
/// restorer unmaps; the kernel would then fault writing to it.
fn unregister_rseq() {
    // SAFETY: glibc (2.35+) exports both as constants set at start-up.
    let (off, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        return;
    }
    let tp: u64;
    // SAFETY: fs:0 holds the thread pointer on x86-64 (TCB self-pointer).
    unsafe { std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly)) };
    let area = tp.wrapping_add(off as u64);
    // SAFETY: unregisters exactly the area glibc registered (length 32,
    // glibc's signature); the kernel only reads the arguments.
    unsafe { libc::syscall(libc::SYS_rseq, area, 32u32, 1i32, 0x5305_3053u32) };
}
