//! The coordinator: ckrun's event loop for the whole life of the program
//! (first run or restart). It owns the agents' connections, turns trigger
//! signals and agents' requests into checkpoints, forwards termination
//! signals, and exits with the program's status.

pub mod agent;
pub mod socket;

use crate::checkpoint;
use crate::image::inspect::bytes;
use crate::image::manifest::Settings;
use agent::{kind_of, Agent};
use anyhow::{Context, Result};
use ckrun_proto::{decode, kind, Config, Hello, PROTOCOL_VERSION};
use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How the program ended, or how a restart failed before it ran.
pub enum Ending {
    Exited(i32),
    Signaled(i32),
}

impl Ending {
    /// ckrun's own exit code: the program's, or 128+N for signal N.
    pub fn exit_code(&self) -> i32 {
        match *self {
            Ending::Exited(c) => c,
            Ending::Signaled(s) => 128 + s,
        }
    }
}

/// A restored process whose agent has not reported back yet.
pub struct PendingRestore {
    pub pid: i32,
    pub started: Instant,
    pub image: std::path::PathBuf,
}

pub struct Coordinator {
    pub settings: Settings,
    pub command: Vec<String>,
    listener: OwnedFd,
    sigfd: SignalFd,
    agents: Vec<Agent>,
    program: i32,
    /// Number of the last image written (the next is sequence + 1).
    sequence: u32,
    pending: Vec<PendingRestore>,
    /// The program's end, when seen outside the main loop's own check.
    ended: Option<Ending>,
}

/// Signals the coordinator handles through its signalfd. They are blocked
/// in ckrun; children start with an empty mask.
pub fn handled_signals(trigger: i32) -> SigSet {
    // SAFETY: sigemptyset/sigaddset initialise and edit a local sigset_t,
    // which then holds only valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, trigger] {
            libc::sigaddset(&mut set, sig);
        }
        SigSet::from_sigset_t_unchecked(set)
    }
}

/// Blocks the handled signals and returns a signalfd for them. Call before
/// starting children, so that no signal is lost in between.
pub fn signal_fd(trigger: i32) -> Result<SignalFd> {
    let set = handled_signals(trigger);
    set.thread_block().context("blocking signals")?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).context("creating a signalfd")
}

impl Coordinator {
    pub fn new(
        settings: Settings,
        command: Vec<String>,
        listener: OwnedFd,
        sigfd: SignalFd,
        program: i32,
        sequence: u32,
    ) -> Self {
        Coordinator {
            settings,
            command,
            listener,
            sigfd,
            agents: Vec::new(),
            program,
            sequence,
            pending: Vec::new(),
            ended: None,
        }
    }

    /// Registers a restored process's connection, made before it existed.
    pub fn add_restored(&mut self, agent: Agent, image: std::path::PathBuf) {
        self.pending.push(PendingRestore { pid: agent.pid, started: Instant::now(), image });
        self.agents.push(agent);
    }

    /// Runs until the program ends; returns how it ended.
    pub fn run(&mut self) -> Result<Ending> {
        loop {
            if let Some(end) = self.ended.take() {
                return Ok(end);
            }
            let mut fds = vec![
                libc::pollfd { fd: self.sigfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            fds.extend(self.agents.iter().map(|a| libc::pollfd {
                fd: a.conn.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }));
            // SAFETY: fds is a valid array of pollfd.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("poll");
            }
            if fds[0].revents != 0 {
                if let Some(end) = self.on_signals(false)? {
                    return Ok(end);
                }
            }
            if fds[1].revents != 0 {
                self.on_connection();
            }
            let ready: Vec<i32> =
                fds[2..].iter().zip(&self.agents).filter(|(p, _)| p.revents != 0).map(|(_, a)| a.pid).collect();
            for pid in ready {
                self.on_agent(pid);
            }
        }
    }

    fn on_signals(&mut self, after_checkpoint: bool) -> Result<Option<Ending>> {
        let mut merged = 0;
        while let Some(si) = self.sigfd.read_signal().context("reading the signalfd")? {
            let sig = si.ssi_signo as i32;
            // Sent by a process (kill, sigqueue), not by the kernel (a
            // terminal's ^C reaches the program directly, being in our group).
            let from_user = si.ssi_code <= 0;
            if sig == libc::SIGCHLD {
                if let Some(end) = self.reap() {
                    return Ok(Some(end));
                }
            } else if sig == self.settings.trigger {
                if after_checkpoint {
                    merged += 1;
                } else if from_user {
                    self.checkpoint();
                }
            } else if from_user {
                // SAFETY: plain kill.
                unsafe { libc::kill(self.program, sig) };
            }
        }
        if merged > 0 {
            eprintln!(
                "ckrun: {merged} checkpoint request(s) arrived during checkpoint {}; merged into it",
                self.sequence
            );
        }
        Ok(None)
    }

    /// Reaps children; the program's end ends the run.
    fn reap(&mut self) -> Option<Ending> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes status.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return None;
            }
            if pid == self.program {
                let end = if libc::WIFSIGNALED(status) {
                    Ending::Signaled(libc::WTERMSIG(status))
                } else {
                    Ending::Exited(libc::WEXITSTATUS(status))
                };
                if let Some(p) = self.pending.iter().find(|p| p.pid == pid) {
                    return Some(restore_failure(p, &end));
                }
                return Some(end);
            }
        }
    }

    fn on_connection(&mut self) {
        let Ok(conn) = socket::accept(&self.listener) else {
            return;
        };
        let probe = Agent { pid: 0, agent_fd: -1, conn, running: true };
        let Ok(Some(msg)) = probe.recv_within(Duration::from_secs(5)) else {
            return;
        };
        let Some((_, v)) = decode::<Hello>(&msg) else {
            return;
        };
        let Some(h) = v.first() else { return };
        if h.version != PROTOCOL_VERSION {
            eprintln!("ckrun: process {} runs an agent of another ckrun build; it cannot be checkpointed", h.pid);
            return;
        }
        // A process that exec'd reconnects with the same pid.
        self.agents.retain(|a| a.pid != h.pid);
        self.agents.push(Agent { pid: h.pid, agent_fd: h.agent_fd, ..probe });
    }

    fn on_agent(&mut self, pid: i32) {
        let Some(i) = self.agents.iter().position(|a| a.pid == pid) else {
            return;
        };
        match self.agents[i].recv_within(Duration::ZERO) {
            Ok(Some(msg)) => match kind_of(&msg) {
                kind::CHECKPOINT_REQUEST => self.checkpoint(),
                kind::RESTORED => self.on_restored(i),
                kind::RESTORE_FAILED => self.on_restore_failed(i, &msg),
                _ => {}
            },
            Ok(None) => {}
            Err(_) => {
                self.agents.remove(i);
            }
        }
    }

    fn on_restored(&mut self, i: usize) {
        let pid = self.agents[i].pid;
        let _ = self.agents[i].send(kind::CONFIG, &[Config { trigger: self.settings.trigger, _pad: 0 }]);
        self.agents[i].running = true;
        if let Some(k) = self.pending.iter().position(|p| p.pid == pid) {
            let p = self.pending.remove(k);
            eprintln!(
                "ckrun: restarted process {pid} from {} in {:.1} ms",
                p.image.display(),
                p.started.elapsed().as_secs_f64() * 1000.0
            );
        }
    }

    fn on_restore_failed(&mut self, i: usize, msg: &[u8]) {
        if let Some((_, v)) = decode::<ckrun_proto::RestoreFailure>(msg) {
            if let Some(f) = v.first() {
                eprintln!("ckrun: {}", crate::restore::describe_failure(f));
            }
        }
        let _ = i;
    }

    fn checkpoint(&mut self) {
        if !self.pending.is_empty() || self.agents.iter().any(|a| !a.running) {
            eprintln!("ckrun: the program is still being restored; checkpoint request ignored");
            return;
        }
        let seq = self.sequence + 1;
        match checkpoint::take(&self.agents, &self.settings, &self.command, seq) {
            Ok(o) => {
                self.sequence = seq;
                for w in &o.warnings {
                    eprintln!("ckrun: warning: {w}");
                }
                eprintln!(
                    "ckrun: checkpoint {seq}: {} (memory {}, image {}, paused {:.1} ms, total {:.0} ms)",
                    o.path.display(),
                    bytes(o.memory_bytes),
                    bytes(o.image_bytes),
                    o.paused.as_secs_f64() * 1000.0,
                    o.total.as_secs_f64() * 1000.0
                );
                if o.merged_requests > 0 {
                    eprintln!(
                        "ckrun: {} checkpoint request(s) arrived during checkpoint {seq}; merged into it",
                        o.merged_requests
                    );
                }
            }
            Err(e) => eprintln!("ckrun: checkpoint failed: {e:#}"),
        }
        self.drain_requests();
    }

    /// Requests that queued up while a checkpoint ran are merged into it.
    fn drain_requests(&mut self) {
        let mut merged = 0;
        for a in &self.agents {
            while let Ok(Some(m)) = a.recv_within(Duration::ZERO) {
                if kind_of(&m) == kind::CHECKPOINT_REQUEST {
                    merged += 1;
                }
            }
        }
        if merged > 0 {
            eprintln!(
                "ckrun: {merged} checkpoint request(s) arrived during checkpoint {}; merged into it",
                self.sequence
            );
        }
        // Pending trigger signals too (SIGCHLD among them is handled as usual).
        if let Ok(Some(end)) = self.on_signals(true) {
            self.ended = Some(end);
        }
    }
}

/// A restored process died before its agent reported back.
fn restore_failure(p: &PendingRestore, end: &Ending) -> Ending {
    match *end {
        // The restorer reported the failed step over the agent connection.
        Ending::Exited(crate::restore::RESTORER_FAILED) => Ending::Exited(crate::error::EXIT_FAILURE),
        // The restore child reports its own errors and exits with ckrun's codes.
        Ending::Exited(c) if c != 0 => Ending::Exited(c),
        Ending::Signaled(s) => {
            eprintln!("ckrun: the process restored from {} died of signal {s} before it resumed", p.image.display());
            Ending::Exited(crate::error::EXIT_FAILURE)
        }
        Ending::Exited(c) => Ending::Exited(c),
    }
}
