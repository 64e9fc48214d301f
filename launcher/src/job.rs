//! What a launch or a restart hands the coordinator: the tree it started
//! (the program ckrun launched, or the restore processes of an image's
//! roots), the settings the job runs under, the socket and signalfd made
//! before any child existed, and, for a restart, the objects the restore
//! processes are still to receive. `main` takes a [`Job`] from
//! `launch::start` or `restore::prepare` and gives it to
//! `coordinator::run`: neither of them runs a coordinator itself, and the
//! coordinator knows nothing of how its tree was made.

use crate::image::manifest::Settings;
use anyhow::{Context, Result};
use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

pub struct Job {
    pub settings: Settings,
    /// ckrun's command line, as images record it.
    pub command: Vec<String>,
    pub listener: OwnedFd,
    pub sigfd: SignalFd,
    /// The program ckrun started (the image's root, for a restart).
    pub root: i32,
    /// Number of the last image written (the next is sequence + 1).
    pub sequence: u32,
    /// The root's wait status, if it had ended before the image was taken.
    pub root_status: Option<i32>,
    pub key: Option<crate::image::seal::Key>,
    /// The image the job continues from: the next image takes its pages
    /// from it (incremental images).
    pub base: Option<PathBuf>,
    pub restore: Option<Restoring>,
    /// ckrun's terminal, taken back once the job ends (the program may have
    /// taken it).
    pub terminal: Option<crate::terminal::Foreground>,
}

/// A restart's objects, made before the restore processes were started:
/// what each receives and what waits until all are ready.
pub struct Restoring {
    pub image: PathBuf,
    /// What each process of the image receives: (tags, fds).
    pub sends: Vec<(Vec<u32>, Vec<i32>)>,
    /// The image's pids, and each process's agent fd.
    pub pids: Vec<i32>,
    pub agent_fds: Vec<i32>,
    /// The objects' fds, closed once everyone has them.
    pub objects: Vec<i32>,
    /// What waits until every process is ready (nothing is cut back or
    /// renamed before a restart is sure to go ahead).
    pub deferred: Vec<crate::fdtypes::Deferred>,
    /// (ID in the image, ID now) of the SysV shared memory segments.
    pub segment_ids: Vec<(i32, i32)>,
    /// ckrun's terminal (fd) and the tree's group to get it once every
    /// process is ready.
    pub foreground: Option<(i32, i32)>,
}

/// Signals the coordinator handles through its signalfd. They are blocked
/// in ckrun; children start with an empty mask.
pub fn handled_signals(trigger: i32, stop: Option<i32>) -> SigSet {
    // SAFETY: sigemptyset/sigaddset initialise and edit a local sigset_t,
    // which then holds only valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, trigger] {
            libc::sigaddset(&mut set, sig);
        }
        if let Some(s) = stop {
            libc::sigaddset(&mut set, s);
        }
        SigSet::from_sigset_t_unchecked(set)
    }
}

/// Blocks the handled signals and returns a signalfd for them. Call before
/// starting children, so that no signal is lost in between.
pub fn signal_fd(trigger: i32, stop: Option<i32>) -> Result<SignalFd> {
    let set = handled_signals(trigger, stop);
    set.thread_block().context("blocking signals")?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).context("creating a signalfd")
}
