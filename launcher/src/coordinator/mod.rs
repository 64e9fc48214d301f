//! The coordinator: ckrun's event loop for the whole life of the program
//! (first run or restart). It owns the agents' connections, turns trigger
//! signals and agents' requests into checkpoints, forwards termination
//! signals, and exits with the program's status.

pub mod peers;
mod restoring;

pub use restoring::RestoreSession;

use crate::agent::{kind_of, Agent};
use crate::checkpoint;
use crate::error::EXIT_FAILURE;
use crate::image::inspect::bytes;
use crate::image::manifest::Settings;
use crate::image::manifest::Zombie;
use crate::proctree as tree;
use crate::restore::transfer;
use crate::sys::socket;
use anyhow::{Context, Result};
use ckrun_proto::{decode, kind, Hello, PROTOCOL_VERSION};
use nix::sys::signalfd::SignalFd;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How the program ended, or how a restart failed before it ran.
pub enum Ending {
    Exited(i32),
    Signaled(i32),
}

impl Ending {
    /// From a wait status.
    pub fn of_status(status: i32) -> Ending {
        if libc::WIFSIGNALED(status) {
            Ending::Signaled(libc::WTERMSIG(status))
        } else {
            Ending::Exited(libc::WEXITSTATUS(status))
        }
    }

    /// ckrun's own exit code: the program's, or 128+N for signal N.
    pub fn exit_code(&self) -> i32 {
        match *self {
            Ending::Exited(c) => c,
            Ending::Signaled(s) => 128 + s,
        }
    }
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
    restore: Option<RestoreSession>,
    /// The program's end, when seen outside the main loop's own check.
    ended: Option<Ending>,
    /// Connections that have not said what they are yet.
    pending: Vec<peers::Pending>,
    refusals: peers::Refusals,
    /// Restore failures already reported (by restore processes).
    failures_reported: u32,
    /// The last checkpoint attempt's request number (1..=127, wrapping).
    request: u32,
    /// The wait status of the program ckrun started, once it has ended
    /// (the rest of the tree may go on).
    root_status: Option<i32>,
    /// `--key-file`: images are sealed with it.
    key: Option<crate::image::seal::Key>,
    /// When the next `--interval` checkpoint is due.
    interval: crate::batch::Interval,
    /// The `--stop-signal` came while a checkpoint ran.
    stop_pending: bool,
    /// The job's newest image (the last one written, or the one the run
    /// restarted from): the next image takes from it what it holds.
    base: Option<checkpoint::dedup::Previous>,
    /// The next checkpoint tries copy-out (`checkpoint::copyout`): the
    /// last one read little of the memory.
    copy_out: bool,
}

/// Runs the job to its end: coordinates its tree (and the restart in
/// progress, if any), checkpoints it on request, and returns ckrun's exit
/// code.
pub fn run(job: crate::job::Job) -> Result<i32> {
    let mut c = Coordinator::new(job.settings, job.command, job.listener, job.sigfd, job.root, job.sequence);
    c.program_ended(job.root_status);
    c.seal_with(job.key);
    if let Some(base) = &job.base {
        c.continue_from(base);
    }
    if let Some(r) = job.restore {
        c.start_restore(RestoreSession::from(r));
    }
    let end = c.run();
    // The program may have taken the terminal (an interactive shell).
    if let Some(t) = job.terminal {
        crate::terminal::take_back(t);
    }
    Ok(end?.exit_code())
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
        crate::created::start(&crate::created::journal_path(&settings.dir, &settings.image_name, program), sequence);
        let interval = crate::batch::Interval::new(&settings);
        Coordinator {
            settings,
            command,
            listener,
            sigfd,
            agents: Vec::new(),
            program,
            sequence,
            restore: None,
            ended: None,
            pending: Vec::new(),
            refusals: peers::Refusals::default(),
            failures_reported: 0,
            request: 0,
            root_status: None,
            key: None,
            interval,
            stop_pending: false,
            base: None,
            copy_out: false,
        }
    }

    /// The run continues image `path`: the next image is deduplicated
    /// against it.
    pub fn continue_from(&mut self, path: &std::path::Path) {
        self.base = Some(checkpoint::dedup::Previous::Image(path.to_owned()));
    }

    /// Seals every image with `key`.
    pub fn seal_with(&mut self, key: Option<crate::image::seal::Key>) {
        self.key = key;
    }

    /// Coordinates a restart: restore children will connect.
    pub fn start_restore(&mut self, r: RestoreSession) {
        self.restore = Some(r);
    }

    /// Runs until the program ends; returns how it ended.
    pub fn run(&mut self) -> Result<Ending> {
        loop {
            if let Some(end) = self.ended.take() {
                return Ok(end);
            }
            if std::mem::take(&mut self.stop_pending) {
                return Ok(self.checkpoint_and_stop());
            }
            if self.interval.due() {
                self.checkpoint();
                continue;
            }
            let mut fds = vec![
                libc::pollfd { fd: self.sigfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            let npending = self.pending.len();
            fds.extend(self.pending.iter().map(|p| libc::pollfd {
                fd: p.conn.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }));
            fds.extend(self.agents.iter().map(|a| libc::pollfd {
                fd: a.conn.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }));
            let timeout = match (self.pending_timeout(), self.interval.timeout_ms()) {
                (-1, t) | (t, -1) => t,
                (a, b) => a.min(b),
            };
            // SAFETY: fds is a valid array of pollfd.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("poll");
            }
            if fds[0].revents != 0 {
                if let (_, Some(end)) = self.on_signals(false)? {
                    return Ok(end);
                }
            }
            let ready: Vec<i32> = fds[2 + npending..]
                .iter()
                .zip(&self.agents)
                .filter(|(p, _)| p.revents != 0)
                .map(|(_, a)| a.pid)
                .collect();
            let pending_ready: Vec<bool> = fds[2..2 + npending].iter().map(|p| p.revents != 0).collect();
            self.on_pending(&pending_ready);
            if fds[1].revents != 0 {
                self.on_connection();
            }
            for pid in ready {
                self.on_agent(pid);
            }
        }
    }

    /// Milliseconds until the first pending connection's deadline (-1: none).
    fn pending_timeout(&self) -> i32 {
        self.pending
            .iter()
            .map(|p| p.deadline.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as i32 + 1)
            .min()
            .unwrap_or(-1)
    }

    /// Waits up to `timeout_ms` for connections only (new ones and pending
    /// ones), and handles what arrives: agents checking in while a
    /// checkpoint waits for them.
    fn service_connections(&mut self, timeout_ms: i32) {
        let mut fds = vec![libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        fds.extend(self.pending.iter().map(|p| libc::pollfd {
            fd: p.conn.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: fds is a valid array of pollfd.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) } < 0 {
            return;
        }
        let ready: Vec<bool> = fds[1..].iter().map(|p| p.revents != 0).collect();
        self.on_pending(&ready);
        if fds[0].revents != 0 {
            self.on_connection();
        }
    }

    /// Handles pending signals; during a checkpoint (`after_checkpoint`)
    /// trigger signals are counted, not acted on. Returns that count and
    /// the program's end, if it ended.
    fn on_signals(&mut self, after_checkpoint: bool) -> Result<(u32, Option<Ending>)> {
        let mut merged = 0;
        while let Some(si) = self.sigfd.read_signal().context("reading the signalfd")? {
            let sig = si.ssi_signo as i32;
            // Sent by a process (kill, sigqueue), not by the kernel (a
            // terminal's ^C reaches the program directly, being in our group).
            let from_user = si.ssi_code <= 0;
            if Some(sig) == self.settings.stop_signal && from_user {
                if after_checkpoint {
                    self.stop_pending = true;
                } else {
                    return Ok((merged, Some(self.checkpoint_and_stop())));
                }
            } else if sig == libc::SIGCHLD {
                if let Some(end) = self.reap() {
                    return Ok((merged, Some(end)));
                }
            } else if sig == self.settings.trigger {
                if after_checkpoint {
                    merged += 1;
                } else if from_user {
                    self.checkpoint();
                }
            } else if from_user {
                self.forward(sig);
            }
        }
        Ok((merged, None))
    }

    /// A termination signal for the program: to the program, or once it
    /// has ended, to the processes of the tree that are ckrun's children
    /// (each the top of what is left of the tree).
    fn forward(&self, sig: i32) {
        if self.root_status.is_none() {
            // SAFETY: plain kill.
            unsafe { libc::kill(self.program, sig) };
            return;
        }
        let me = std::process::id() as i32;
        for m in tree::descendants(me, &[]).iter().filter(|m| m.ppid == me && !m.zombie) {
            // SAFETY: plain kill of a child of ours.
            unsafe { libc::kill(m.pid, sig) };
        }
    }

    /// Reaps children. The tree is the job: the run ends when its last
    /// process has, with the status of the program ckrun started (which
    /// may have ended long before: a launcher that forks workers and exits).
    fn reap(&mut self) -> Option<Ending> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes status.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return self.tree_ended();
            }
            if pid == self.program {
                let end = Ending::of_status(status);
                if self.restore.is_some() {
                    // Its report may still wait behind the SIGCHLD.
                    let reported = self.drain_restore_reports();
                    self.abort_restore();
                    return Some(restore_failure(&end, reported));
                }
                self.root_status = Some(status);
            }
        }
    }

    /// The program's end, once it and every other process of the tree are gone.
    fn tree_ended(&self) -> Option<Ending> {
        let status = self.root_status?;
        let me = std::process::id() as i32;
        if tree::descendants(me, &[]).iter().any(|m| !m.zombie) {
            return None;
        }
        Some(Ending::of_status(status))
    }

    /// The program ckrun started had ended (`status`) before the image
    /// this run restarts was taken.
    pub fn program_ended(&mut self, status: Option<i32>) {
        self.root_status = status;
    }

    /// Accepts connections, keeping those of the job's own processes
    /// (checked by the kernel's credentials, [`peers`]) until they say what
    /// they are.
    fn on_connection(&mut self) {
        while let Ok(conn) = socket::accept(&self.listener) {
            let peer = match peers::peer_of(&conn) {
                Ok(p) => p,
                Err(_) => continue,
            };
            match peers::authorize(peer) {
                Ok(()) => self.pending.push(peers::Pending::new(conn, peer)),
                // A short-lived command of the job that connected and ended
                // before it was heard: nothing to say about it.
                Err(_) if !peers::alive(peer.pid) => {}
                Err(why) => self.refusals.report(peer, why),
            }
        }
    }

    /// Handles the first message of each pending connection that has one
    /// (`ready`, in the order of `self.pending`); drops those past their
    /// deadline.
    fn on_pending(&mut self, ready: &[bool]) {
        let now = Instant::now();
        let all = std::mem::take(&mut self.pending);
        for (i, p) in all.into_iter().enumerate() {
            if !ready.get(i).copied().unwrap_or(false) {
                if p.deadline > now {
                    self.pending.push(p);
                }
                continue;
            }
            let probe = Agent {
                pid: p.peer.pid,
                agent_fd: -1,
                conn: p.conn,
                running: true,
                restoring: false,
                passed: Default::default(),
                tracker: Default::default(),
            };
            let Ok(Some(msg)) = probe.recv_within(Duration::ZERO) else { continue };
            if kind_of(&msg) == transfer::RESTORE_HELLO {
                self.on_restore_child(probe, &msg);
            } else if kind_of(&msg) == kind::HELLO {
                self.on_hello(probe, &msg);
            }
        }
    }

    fn on_hello(&mut self, probe: Agent, msg: &[u8]) {
        let Some((_, v)) = decode::<Hello>(msg) else { return };
        let Some(h) = v.first() else { return };
        if h.version != PROTOCOL_VERSION {
            eprintln!("ckrun: process {} runs an agent of another ckrun build; it cannot be checkpointed", probe.pid);
            return;
        }
        if h.pid != probe.pid {
            // In a PID namespace of its own (its pids differ from ours),
            // or lying: either way not a process ckrun can checkpoint.
            let peer = peers::Peer { pid: probe.pid, uid: 0 };
            self.refusals.report(peer, "says it is another process");
            return;
        }
        if !(0..1 << 30).contains(&h.agent_fd) {
            return;
        }
        // A process that exec'd reconnects with the same pid.
        self.agents.retain(|a| a.pid != h.pid);
        self.agents.push(Agent { agent_fd: h.agent_fd, ..probe });
    }

    /// Handles the reports restore processes sent before they ended;
    /// returns whether there was a failure among them.
    fn drain_restore_reports(&mut self) -> bool {
        let restoring: Vec<i32> = self.agents.iter().filter(|a| a.restoring).map(|a| a.pid).collect();
        let before = self.failures_reported;
        for pid in restoring {
            self.on_agent(pid);
        }
        self.failures_reported > before
    }

    fn on_agent(&mut self, pid: i32) {
        let Some(i) = self.agents.iter().position(|a| a.pid == pid) else {
            return;
        };
        let restoring = self.agents[i].restoring;
        match self.agents[i].recv_within(Duration::ZERO) {
            // A restore child or restored process speaks of the restart
            // only; a running agent only asks for checkpoints.
            Ok(Some(msg)) => match kind_of(&msg) {
                kind::CHECKPOINT_REQUEST if !restoring => {
                    self.checkpoint();
                }
                kind::SUSPENDED if !restoring => {
                    let pids: Vec<i32> = self.agents.iter().map(|a| a.pid).collect();
                    checkpoint::discard_late_report(&self.agents[i], &msg, &pids);
                }
                kind::RESTORED if restoring => self.on_restored(i),
                kind::RESTORE_FAILED if restoring => {
                    if let Some((_, v)) = decode::<ckrun_proto::RestoreFailure>(&msg) {
                        if let Some(f) = v.first() {
                            eprintln!("ckrun: {}", crate::restore::describe_failure(f));
                            self.failures_reported += 1;
                        }
                    }
                }
                transfer::READY if restoring => self.on_ready(pid),
                transfer::ADJUSTED if restoring => self.on_adjusted(pid),
                transfer::FAILED if restoring => {
                    let code = msg.get(8..12).map_or(EXIT_FAILURE, |c| i32::from_ne_bytes(c.try_into().unwrap()));
                    eprintln!("ckrun: process {pid}: {}", String::from_utf8_lossy(msg.get(12..).unwrap_or_default()));
                    self.failures_reported += 1;
                    self.abort_restore();
                    self.ended = Some(Ending::Exited(code));
                }
                _ => {}
            },
            Ok(None) => {}
            Err(_) => {
                self.agents.remove(i);
                if self.restore.as_ref().is_some_and(|r| !r.go) && self.ended.is_none() {
                    eprintln!("ckrun: restore failed: process {pid} ended before it was restored");
                    self.failures_reported += 1;
                    self.abort_restore();
                    self.ended = Some(Ending::Exited(EXIT_FAILURE));
                }
            }
        }
    }

    /// `--stop-signal`: a checkpoint, then the end of the tree; ckrun's
    /// status says whether the image is durable (85) or not (86).
    fn checkpoint_and_stop(&mut self) -> Ending {
        // The program may have ended just before (Slurm signals every
        // process of a job at once): its end is the job's, and there is
        // nothing to checkpoint.
        if let Some(end) = self.reap() {
            eprintln!("ckrun: the program had ended when the stop signal came: no checkpoint");
            return end;
        }
        let ok = self.checkpoint_then(true);
        let me = std::process::id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<i32> = tree::descendants(me, &[]).iter().map(|m| m.pid).collect();
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                // SAFETY: plain kill of our own descendants (the job).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            // SAFETY: reaping our own children; the status is not needed.
            while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
            std::thread::sleep(Duration::from_millis(5));
        }
        if ok {
            crate::batch::mark_stopped(&self.settings, self.program, self.sequence);
            eprintln!("ckrun: checkpointed and stopped (exit {})", crate::batch::EXIT_CHECKPOINTED);
            Ending::Exited(crate::batch::EXIT_CHECKPOINTED)
        } else {
            eprintln!("ckrun: stopped without a new checkpoint (exit {})", crate::batch::EXIT_STOP_FAILED);
            Ending::Exited(crate::batch::EXIT_STOP_FAILED)
        }
    }

    /// Takes a checkpoint; returns whether a new image is durable.
    fn checkpoint(&mut self) -> bool {
        self.checkpoint_then(false)
    }

    /// Takes a checkpoint, after which the tree is killed instead of
    /// resumed when `end` (`--stop-signal`).
    fn checkpoint_then(&mut self, end: bool) -> bool {
        let ok = self.checkpoint_once(end);
        self.interval.restart();
        ok
    }

    fn checkpoint_once(&mut self, end: bool) -> bool {
        if self.restore.is_some() || self.agents.iter().any(|a| !a.running) {
            eprintln!("ckrun: the program is still being restored; checkpoint request ignored");
            return false;
        }
        let seq = self.sequence + 1;
        let mut result = Err(anyhow::anyhow!("no attempt"));
        // A shell running pipelines forks and execs every few milliseconds:
        // the tree may change under several attempts in a row.
        for _ in 0..20 {
            result = match self.await_agents() {
                Ok(zombies) => {
                    self.request = self.request % ckrun_proto::SUSPEND_REQUEST_MASK as u32 + 1;
                    let live = self.live_agents();
                    if live.is_empty() {
                        // An image without a process could only fail a restart.
                        Err(anyhow::anyhow!("no process of the program is left to checkpoint"))
                    } else {
                        let tree = checkpoint::Tree {
                            live,
                            zombies,
                            root: self.program,
                            root_status: self.root_status,
                            request: self.request,
                            end_after_capture: end,
                            copy_out: self.copy_out,
                        };
                        checkpoint::take(
                            &tree,
                            &self.settings,
                            &self.command,
                            seq,
                            self.key.as_ref(),
                            self.base.as_ref(),
                        )
                    }
                }
                Err(e) => Err(e),
            };
            // Copy-out found more written than it takes: again, with snapshots.
            if matches!(&result, Err(e) if e.is::<checkpoint::copyout::Declined>()) {
                self.copy_out = false;
                continue;
            }
            // A process forked or exited while the tree was being stopped: again.
            if !matches!(&result, Err(e) if e.is::<checkpoint::TreeChanged>()) {
                break;
            }
        }
        // Requests that arrived while it was being taken are merged into it,
        // before it is announced: one sent after seeing the announcement
        // gets a checkpoint of its own.
        let merged = self.drain_requests() + result.as_ref().map_or(0, |o| o.merged_requests);
        match result {
            Ok(mut o) => {
                self.sequence = o.sequence;
                self.base = Some(o.take_next_base());
                self.copy_out = checkpoint::copyout::worth_trying(o.memory_bytes, o.unread_bytes);
                match self.copy_out {
                    true => checkpoint::copyout::prepare(o.memory_bytes.saturating_sub(o.unread_bytes)),
                    false => checkpoint::copyout::release(),
                }
                crate::created::checkpointed(o.sequence);
                if let Some(why) = &o.whole_because {
                    eprintln!("ckrun: warning: checkpoint {} is self-contained: {why}", o.sequence);
                }
                for w in &o.warnings {
                    eprintln!("ckrun: warning: {w}");
                }
                if merged > 0 {
                    eprintln!("ckrun: {merged} checkpoint request(s) arrived during checkpoint {seq}; merged into it");
                }
                let taken = if o.parents > 0 {
                    let unread = match o.unread_bytes {
                        0 => String::new(),
                        n => format!(", {} known unchanged by the dirty tracker", bytes(n)),
                    };
                    let unread = match o.copied_out {
                        Some(n) => format!("{unread}, {} copied out while stopped (no snapshot)", bytes(n)),
                        None => unread,
                    };
                    format!(", {} of it in {} earlier image(s){unread}", bytes(o.taken_bytes), o.parents)
                } else {
                    String::new()
                };
                eprintln!(
                    "ckrun: checkpoint {}: {} (memory {}{taken}, image {}, paused {:.1} ms, total {:.0} ms)",
                    o.sequence,
                    o.path.display(),
                    bytes(o.memory_bytes),
                    bytes(o.image_bytes),
                    o.paused.as_secs_f64() * 1000.0,
                    o.total.as_secs_f64() * 1000.0
                );
                crate::batch::retain(&self.settings, self.program, o.sequence);
                true
            }
            Err(e) => {
                eprintln!("ckrun: checkpoint failed: {e:#}");
                false
            }
        }
    }

    /// Waits (briefly) until every live process of the tree has its agent
    /// connected: one that just forked or exec'd is about to check in.
    /// Returns the tree's zombies.
    fn await_agents(&mut self) -> Result<Vec<Zombie>> {
        let me = std::process::id() as i32;
        // No checkpoint runs: a snapshot still there belongs to one that was
        // abandoned (its report never came).
        for pid in tree::snapshots(me) {
            // SAFETY: plain signal to a snapshot child of ours; reaped with
            // the other children on SIGCHLD.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        self.refresh_agents();
        loop {
            let members = tree::descendants(me, &[]);
            let missing = members.iter().find(|m| !m.zombie && !self.agents.iter().any(|a| a.pid == m.pid));
            let Some(m) = missing else {
                return Ok(members
                    .iter()
                    .filter(|m| m.zombie)
                    .map(|m| Zombie { pid: m.pid, ppid: m.ppid, status: tree::exit_status(m.pid) })
                    .collect());
            };
            if Instant::now() > deadline {
                let comm = crate::sys::procfs::read(m.pid, "comm").unwrap_or_default();
                anyhow::bail!(
                    "process {} ({}) of the tree runs without ckrun's agent ({}); it cannot be checkpointed",
                    m.pid,
                    comm.trim(),
                    why_no_agent(m.pid)
                );
            }
            self.service_connections(20);
        }
    }

    /// Before stopping the tree: forgets agents whose connection closed
    /// (their process exited or exec'd) and takes in the agents waiting to
    /// check in (a program just exec'd), so that none is signalled through
    /// a stale entry. Requests read meanwhile are kept for `drain_requests`.
    fn refresh_agents(&mut self) {
        let mut gone = Vec::new();
        for a in &self.agents {
            let mut p = libc::pollfd { fd: a.conn.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut p, 1, 0) } > 0 && p.revents & libc::POLLHUP != 0 {
                gone.push(a.pid);
            }
        }
        self.agents.retain(|a| !gone.contains(&a.pid));
        self.service_connections(0);
    }

    /// The agents of the tree's live processes, parents first.
    fn live_agents(&self) -> Vec<&Agent> {
        let members = tree::descendants(std::process::id() as i32, &[]);
        members.iter().filter(|m| !m.zombie).filter_map(|m| self.agents.iter().find(|a| a.pid == m.pid)).collect()
    }

    /// Takes the requests that queued up while a checkpoint ran (agents'
    /// requests and trigger signals); returns how many.
    fn drain_requests(&mut self) -> u32 {
        let mut merged = 0;
        let pids: Vec<i32> = self.agents.iter().map(|a| a.pid).collect();
        for a in &self.agents {
            while let Ok(Some(m)) = a.recv_within(Duration::ZERO) {
                match kind_of(&m) {
                    kind::CHECKPOINT_REQUEST => merged += 1,
                    kind::SUSPENDED => checkpoint::discard_late_report(a, &m, &pids),
                    _ => {}
                }
            }
        }
        // Pending trigger signals too (SIGCHLD among them is handled as usual).
        match self.on_signals(true) {
            Ok((n, end)) => {
                if end.is_some() {
                    self.ended = end;
                }
                merged + n
            }
            Err(_) => merged,
        }
    }
}

/// Why a process of the tree has no agent, as far as /proc tells.
fn why_no_agent(pid: i32) -> &'static str {
    let status = crate::sys::procfs::read(pid, "status").unwrap_or_default();
    let differ = |key: &str| {
        crate::sys::procfs::status_field(&status, key).is_some_and(|v| {
            let ids: Vec<&str> = v.split_whitespace().collect();
            ids.windows(2).any(|w| w[0] != w[1])
        })
    };
    if differ("Uid") || differ("Gid") {
        "a set-user-ID or set-group-ID program: the dynamic loader ignores LD_PRELOAD for it"
    } else {
        "a static binary, or one started with an environment without LD_PRELOAD?"
    }
}

/// The program died before the restart completed; `reported`: the
/// failure was already said (by a restore child or the restorer).
fn restore_failure(end: &Ending, reported: bool) -> Ending {
    match *end {
        // The restorer reported the failed step over the agent connection.
        Ending::Exited(crate::restore::RESTORER_FAILED) => {
            if !reported {
                eprintln!("ckrun: restore failed in the restorer");
            }
            Ending::Exited(crate::error::EXIT_FAILURE)
        }
        // The restore child exits with ckrun's codes.
        Ending::Exited(c) if c != 0 => {
            if !reported {
                eprintln!("ckrun: restore failed: the restore process exited with status {c}");
            }
            Ending::Exited(c)
        }
        Ending::Signaled(s) => {
            eprintln!("ckrun: restore failed: the program died of signal {s} before it resumed");
            Ending::Exited(crate::error::EXIT_FAILURE)
        }
        Ending::Exited(c) => Ending::Exited(c),
    }
}
