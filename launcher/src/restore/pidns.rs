//! Restarting in a new PID namespace, when PIDs the image needs are taken
//! on this machine (the original program still runs, or other processes
//! got those numbers), or when ckrun runs without privileges. Inside, the
//! image's PIDs are free; ckrun's coordinator is the namespace's init
//! (PID 1) and the new namespace gets its own /proc, so that /proc/PID
//! paths, `getpid()` and the image agree. Outside, the ckrun the user
//! started forwards signals to it (the trigger included) and exits with its
//! status.
//!
//! Without privileges the PID namespace belongs to a new user namespace in
//! which the user keeps their own uid and gid (mapped to themselves) and
//! holds the capabilities choosing PIDs and restoring a process need. The
//! restore children get them as ambient capabilities; each restorer drops
//! all capabilities before the program resumes.
//!
//! The init is born in the restart's time namespace too (`crate::timens`),
//! owned by that user namespace.

use crate::error::CkError;
use crate::job::handled_signals;
use anyhow::{bail, Context, Result};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Whether this process may choose PIDs in the namespaces it is in.
pub fn privileged() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `inner` as PID 1 of a new PID namespace (with a private mount
/// namespace and a fresh /proc; with a user namespace too when not
/// privileged) whose pid_max is `pid_max` (where the kernel gives each
/// namespace its own: `host_pid_max` is this one's), and born in a new
/// time namespace with `clocks`' offsets, and returns its exit code.
pub fn run_in_new_namespace(
    trigger: i32,
    stop: Option<i32>,
    host_pid_max: u32,
    pid_max: u32,
    clocks: &crate::timens::ClockPlan,
    inner: impl FnOnce() -> Result<i32>,
) -> Result<i32> {
    let set = handled_signals(trigger, stop);
    set.thread_block().context("blocking signals")?;
    let sigfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).context("creating a signalfd")?;
    if !privileged() {
        own_user_namespace()?;
    }
    // SAFETY: unshare(CLONE_NEWPID) only affects the children created
    // after it.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        bail!("cannot create a PID namespace: {}", std::io::Error::last_os_error());
    }
    // After the user namespace, which then owns the time namespace (its
    // offsets need CAP_SYS_TIME there). From here on this process creates
    // no thread (it could not): it forks the init and forwards signals.
    let mut k = super::kernel::Linux::default();
    crate::timens::unshare_for_children(&mut k, clocks, &mut |w| eprintln!("ckrun: {w}")).map_err(CkError::from)?;
    // SAFETY: fork is called while this process is single-threaded.
    let child = unsafe { libc::fork() };
    if child < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if child == 0 {
        // The namespace's init dies with the ckrun the user started (the
        // only pid they know), and the whole namespace with it.
        // SAFETY: prctl with integers only.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        let limited = own_proc()
            .map(|_| super::placement::limit_namespace(&mut super::kernel::Linux::default(), host_pid_max, pid_max));
        let code = match limited.and_then(|_| pass_capabilities()).and_then(|_| inner()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ckrun: {e:#}");
                crate::error::exit_code_of(&e)
            }
        };
        std::process::exit(code);
    }
    // Outside: forward signals; end as the namespace's init ends.
    loop {
        let Some(si) = sigfd.read_signal().context("reading the signalfd")? else { continue };
        let sig = si.ssi_signo as i32;
        if sig == libc::SIGCHLD {
            let mut status = 0;
            // SAFETY: waitpid on our only child.
            if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == child {
                return Ok(if libc::WIFSIGNALED(status) {
                    128 + libc::WTERMSIG(status)
                } else {
                    libc::WEXITSTATUS(status)
                });
            }
        } else if si.ssi_code <= 0 {
            // SAFETY: plain kill of our child.
            unsafe { libc::kill(child, sig) };
        }
    }
}

/// A user namespace where this user keeps their uid and gid and holds
/// every capability (within the namespace only).
fn own_user_namespace() -> Result<()> {
    // SAFETY: getuid/getgid cannot fail; unshare takes flags.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        bail!(
            "cannot create a user namespace to choose PIDs without privileges ({}); run ckrun --restart as root",
            std::io::Error::last_os_error()
        );
    }
    let write = |f: &str, s: String| std::fs::write(f, s).with_context(|| format!("writing {f}"));
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    Ok(())
}

/// The capabilities restore children need, as ambient capabilities (a
/// non-root user loses its capabilities on exec otherwise). Only when not
/// privileged: root keeps them anyway.
fn pass_capabilities() -> Result<()> {
    if privileged() {
        return Ok(());
    }
    const NEEDED: [u32; 4] = [CAP_SYS_ADMIN, CAP_SYS_RESOURCE, CAP_SYS_PTRACE, CAP_CHECKPOINT_RESTORE];
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget fills two CapData for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } != 0 {
        bail!("capget: {}", std::io::Error::last_os_error());
    }
    for c in NEEDED {
        data[(c / 32) as usize].inheritable |= 1 << (c % 32);
    }
    // SAFETY: capset reads two CapData for version 3.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) } != 0 {
        bail!("capset: {}", std::io::Error::last_os_error());
    }
    for c in NEEDED {
        // SAFETY: prctl with integers only.
        unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, c as libc::c_ulong, 0, 0) };
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_CHECKPOINT_RESTORE: u32 = 40;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// A private mount namespace with a /proc of the new PID namespace.
fn own_proc() -> Result<()> {
    // SAFETY: mount-namespace calls with NUL-terminated literals; they only
    // change this (new, private) namespace.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            bail!("cannot create a mount namespace: {}", std::io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            bail!("cannot make mounts private: {}", std::io::Error::last_os_error());
        }
        if libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), 0, std::ptr::null()) != 0 {
            bail!("cannot mount /proc for the new PID namespace: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}
