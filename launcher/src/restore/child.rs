//! The restore child: a fresh ckrun process, created with the PID of the
//! process it restores (by the coordinator for the tree's roots, by its
//! restored parent for the others), that
//!
//! 1. connects to the coordinator, receives the tree objects it uses;
//! 2. takes its session and process group, creates its own children
//!    (and zombies) with their PIDs, each a restore child in turn;
//! 3. stages its memory, places its fds, takes its settings;
//! 4. reports ready, waits for the whole tree to be (taking back its
//!    semaphore undo adjustments when told, `crate::sysv::semundo`), and
//!    hands over to the restorer, becoming the program.
//!
//! Until step 4 nothing of the program runs, so any error leaves no
//! half-restored process: the coordinator aborts the whole tree.
//!
//! The image comes as an fd the coordinator opened and checked (never by
//! path again: the file at a path may be replaced meanwhile). Once its
//! own children exist, the child takes the process's users and groups
//! (`creds::become_process`), so everything it opens for the program is
//! opened with the program's rights.

use super::kernel::{Kernel, Linux};
use super::plan::RestorePlan;
use super::transfer::{self, GHOST};
use super::{memory, restorer, settings};
use crate::error::exit_code_of;
use crate::fdtypes;
use crate::image::manifest::{Manifest, ProcessImage};
use crate::image::ImageReader;
use crate::sys::{proc::fork_with_pid, procfs};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub fn main(image_fds: &[i32], index: usize, socket: &str) -> Result<i32> {
    let conn = crate::sys::socket::connect(socket).context("cannot reach the coordinator")?;
    let fd = conn.as_raw_fd();
    match restore(image_fds, index, fd) {
        Ok(never) => match never {},
        Err(e) => {
            let e = e.context("restore failed");
            let code = exit_code_of(&e);
            // The coordinator reports it (once, for the whole restart);
            // only if it cannot hear us do we say it ourselves.
            match transfer::send(fd, transfer::FAILED, &failure_body(&e)) {
                Ok(()) => Ok(code),
                Err(_) => Err(e),
            }
        }
    }
}

/// A FAILED message's body: the exit code, then the message.
fn failure_body(e: &anyhow::Error) -> Vec<u8> {
    let mut body = exit_code_of(e).to_ne_bytes().to_vec();
    body.extend_from_slice(format!("{e:#}").as_bytes());
    body
}

fn restore(image_fds: &[i32], index: usize, ctl: i32) -> Result<std::convert::Infallible> {
    let &image_fd = image_fds.first().ok_or_else(|| anyhow!("no image fd"))?;
    let mut files = image_fds.iter().map(|&fd| {
        // SAFETY: the coordinator (or the parent restore child) passed its
        // image fd and those of the image's parents down to us; nothing
        // else in this process owns them, and each is taken once.
        unsafe { std::fs::File::from_raw_fd(fd) }
    });
    let file = files.next().expect("one fd at least");
    let img = ImageReader::from_files(file, Path::new(&format!("/proc/self/fd/{image_fd}")), files.collect())?;
    let m = &img.manifest;
    let p = m.processes.get(index).ok_or_else(|| anyhow!("the image has no process #{index}"))?.clone();
    let hello = transfer::Hello { index: index as u32, pid: p.pid };
    transfer::send(ctl, transfer::RESTORE_HELLO, ckrun_proto::bytes_of(&hello))?;
    let (files, ghosts, segment_ids) = receive_objects(ctl, m)?;

    join_session_and_group(m, &p);
    start_children(m, &p, image_fds, ctl)?;
    crate::creds::become_process(&p.creds)?;

    let plan = RestorePlan::build(&p, &procfs::maps(std::process::id() as i32)?)?;
    let mut k = Linux::default();
    memory::map(&mut k, &plan, &p, &ghosts, &segment_ids)?;
    memory::fill(&img, &plan, &p)?;
    memory::protect(&mut k, &plan, &p)?;
    for g in ghosts.iter().filter(|&&g| g >= 0) {
        k.close(*g);
    }

    // Nothing of ours may stay at a number the program's fds take.
    let descriptions = m.files.clone();
    let undo = crate::sysv::semundo::of_process(&m.sysv, p.pid);
    drop(img);
    settings::apply(&mut k, &p)?;
    let have = fdtypes::place(&mut k, &p, &descriptions, &files, ctl)?;
    let exe = k
        .open(&p.exe.path, libc::O_RDONLY | libc::O_CLOEXEC)
        .with_context(|| format!("opening {}", p.exe.path.display()))?;
    let exe_fd = k.dup_above(exe, have.iter().copied().max().unwrap_or(2) + 1)?;
    k.close(exe);
    let enc = restorer::encode(&plan, &p, exe_fd, p.agent_fd)?;
    close_other_fds(&have, exe_fd)?;
    fdtypes::take_own_locks(&mut k, &p, &descriptions)?;

    // Wait for the whole tree, on the connection now at the agent's fd.
    transfer::send(p.agent_fd, transfer::READY, &[])?;
    loop {
        match transfer::recv(p.agent_fd) {
            Ok((transfer::GO, _, _)) => break,
            // After the commit: this process (a new one, with its PID) gives
            // itself the undo adjustments it had; nothing of the tree runs.
            Ok((transfer::ADJUST, _, _)) => {
                if let Err(e) = crate::sysv::semundo::take_back(&mut k, p.pid, &undo) {
                    // The connection main() knows is closed by now.
                    let e = anyhow::Error::new(e).context("restore failed");
                    let _ = transfer::send(p.agent_fd, transfer::FAILED, &failure_body(&e));
                    std::process::exit(exit_code_of(&e));
                }
                transfer::send(p.agent_fd, transfer::ADJUSTED, &[])?;
            }
            _ => bail!("the restart was called off"),
        }
    }
    block_all_signals();
    raise_pending(&mut k, p.pending);
    unregister_rseq();
    // SAFETY: single-threaded (the fill threads were joined), all signals
    // blocked, rseq unregistered: the restorer may take the process over.
    unsafe { restorer::launch(&plan, &enc) }
}

/// What the coordinator made for the tree, as this process gets it.
type Received = (HashMap<u32, i32>, Vec<i32>, Vec<(i32, i32)>);

/// The descriptions (by id) and ghost fds (by index; -1 if not sent) the
/// coordinator sends this process, and the IDs SysV shared memory
/// segments have now.
fn receive_objects(ctl: i32, m: &Manifest) -> Result<Received> {
    let mut files = HashMap::new();
    let mut ghosts = vec![-1; m.ghosts.len()];
    let mut segment_ids = Vec::new();
    loop {
        let (kind, body, fds) = transfer::recv(ctl).context("receiving fds from the coordinator")?;
        match kind {
            transfer::FDS_END => return Ok((files, ghosts, segment_ids)),
            transfer::SEGMENT_IDS => segment_ids.extend(transfer::segment_ids(&body)),
            transfer::FDS => {
                let tags = body.chunks_exact(4).map(|c| u32::from_ne_bytes(c.try_into().unwrap()));
                for (tag, fd) in tags.zip(fds) {
                    if tag & GHOST != 0 {
                        ghosts[(tag & !GHOST) as usize] = fd;
                    } else {
                        files.insert(tag, fd);
                    }
                }
            }
            _ => bail!("unexpected message {kind} from the coordinator"),
        }
    }
}

/// Session and group as the image had them: a session or group leader
/// makes its own again; a member joins its group if its parent was not in
/// it (the group's leader, an older sibling, exists by then).
fn join_session_and_group(m: &Manifest, p: &ProcessImage) {
    let parent = m.processes.iter().find(|q| q.pid == p.ppid);
    // SAFETY: setsid and setpgid take integers only.
    unsafe {
        if p.sid == p.pid {
            libc::setsid();
        } else if p.pgid == p.pid {
            libc::setpgid(0, 0);
        } else if parent.is_some_and(|q| q.pgid != p.pgid) && libc::setpgid(0, p.pgid) != 0 {
            eprintln!("ckrun: warning: process {} cannot join process group {}", p.pid, p.pgid);
        }
    }
}

/// Creates this process's children (restore children themselves) and its
/// unreaped zombies, each with its PID, before this process restores
/// anything (children are copies of it: better small).
fn start_children(m: &Manifest, p: &ProcessImage, image_fds: &[i32], ctl: i32) -> Result<()> {
    let exe = CString::new(std::env::current_exe()?.as_os_str().as_bytes())?;
    let socket = crate::sys::socket::name_of(ctl).context("the coordinator socket's name")?;
    let fds_arg = crate::restore::fd_list(image_fds);
    for (i, q) in m.processes.iter().enumerate().filter(|(_, q)| q.ppid == p.pid) {
        let args: Vec<CString> =
            ["ckrun".as_bytes(), b"--restore-child", fds_arg.as_bytes(), i.to_string().as_bytes(), socket.as_bytes()]
                .iter()
                .map(|a| CString::new(*a).unwrap())
                .collect();
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        fork_with_pid(q.pid, || {
            // SAFETY: fcntl and execv with NUL-terminated strings prepared
            // before the fork; async-signal-safe. The image fds stay open
            // across the exec in the child only.
            unsafe {
                for &fd in image_fds {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                }
                libc::execv(exe.as_ptr(), argv.as_ptr());
            }
        })
        .map_err(|e| crate::restore::pid_error(q.pid, e))?;
    }
    for z in m.zombies.iter().filter(|z| z.ppid == p.pid) {
        let status = z.status;
        fork_with_pid(z.pid, || {
            // SAFETY: ends this new process the way the zombie ended.
            unsafe {
                if libc::WIFSIGNALED(status) {
                    libc::signal(libc::WTERMSIG(status), libc::SIG_DFL);
                    libc::kill(libc::getpid(), libc::WTERMSIG(status));
                }
                libc::_exit(libc::WEXITSTATUS(status));
            }
        })
        .map_err(|e| crate::restore::pid_error(z.pid, e))?;
    }
    Ok(())
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

/// Signals pending for the whole process at the checkpoint are pending
/// again (all signals are blocked now; the restored threads' masks decide
/// when they arrive). Each thread's own come with the restorer's steps.
fn raise_pending(k: &mut impl Kernel, pending: u64) {
    for sig in (1..=64).filter(|s| pending & (1u64 << (s - 1)) != 0) {
        let _ = k.raise(sig);
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
