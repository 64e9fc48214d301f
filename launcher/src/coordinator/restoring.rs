//! The restart phase of the coordinator: restore children connect, get
//! their share of the tree's objects (fds passed with SCM_RIGHTS), report
//! ready; when all are, the deferred steps are done (files cut back, SysV
//! objects given their state), the processes that held semaphore undo
//! adjustments take them back, and all of them go at once. Until then nothing of the
//! program runs, so a failure anywhere calls the whole restart off.

use super::{tree, Coordinator};
use crate::agent::Agent;
use crate::restore::transfer;
use ckrun_proto::{kind, Config};
use std::os::fd::AsRawFd;
use std::time::Instant;

/// A restart in progress: the restore children connect, get their share
/// of the tree's objects, and report ready; once all are, they all go.
pub struct RestoreSession {
    /// What the restart made and is to hand out (`restore::prepare`).
    made: crate::job::Restoring,
    started: Instant,
    ready: Vec<i32>,
    restored: Vec<i32>,
    /// Processes (by index) whose objects were sent.
    handed: Vec<usize>,
    /// The deferred steps are done.
    committed: bool,
    /// Processes still taking back their semaphore undo adjustments.
    adjusting: Vec<i32>,
    pub(super) go: bool,
}

impl From<crate::job::Restoring> for RestoreSession {
    fn from(made: crate::job::Restoring) -> Self {
        RestoreSession {
            made,
            started: Instant::now(),
            ready: vec![],
            restored: vec![],
            handed: vec![],
            committed: false,
            adjusting: vec![],
            go: false,
        }
    }
}

impl Coordinator {
    /// A restore child connected: send it what it needs.
    pub(super) fn on_restore_child(&mut self, conn: Agent, msg: &[u8]) {
        let Some(r) = self.restore.as_mut() else { return };
        let Some(h) = msg.get(8..).and_then(ckrun_proto::read_pod::<transfer::Hello>) else { return };
        let i = h.index as usize;
        // The kernel says who connected: it must be the process it claims
        // to restore (each restore child has the PID it restores).
        if r.made.pids.get(i) != Some(&h.pid) || h.pid != conn.pid {
            self.refusals.report(super::peers::Peer { pid: conn.pid, uid: 0 }, "not the restore process it claims");
            return;
        }
        if r.handed.contains(&i) {
            return; // each process's objects go out once
        }
        r.handed.push(i);
        let (tags, fds) = &r.made.sends[i];
        if transfer::send_segment_ids(conn.conn.as_raw_fd(), &r.made.segment_ids).is_err()
            || transfer::send_fds(conn.conn.as_raw_fd(), tags, fds).is_err()
        {
            return;
        }
        let agent_fd = r.made.agent_fds[i];
        self.agents.retain(|a| a.pid != h.pid);
        self.agents.push(Agent { pid: h.pid, agent_fd, running: false, restoring: true, ..conn });
    }

    pub(super) fn on_ready(&mut self, pid: i32) {
        let Some(r) = self.restore.as_mut() else { return };
        if !r.ready.contains(&pid) {
            r.ready.push(pid);
        }
        if r.ready.len() == r.made.pids.len() && !r.committed {
            let mut k = crate::restore::kernel::Linux::default();
            if let Err(e) = crate::fdtypes::commit(&mut k, &r.made.deferred) {
                eprintln!("ckrun: restore failed: {e:#}");
                let code = crate::error::exit_code_of(&e);
                self.abort_restore();
                self.ended = Some(super::Ending::Exited(code));
                return;
            }
            r.committed = true;
            // The sets have their values (SETALL zeroed every undo
            // adjustment): each process that had some takes them back,
            // before any goes (`crate::sysv::semundo`).
            let sysv = r.made.deferred.iter().filter_map(|d| match d {
                crate::fdtypes::Deferred::Sysv(o) => Some(o),
                _ => None,
            });
            r.adjusting = crate::sysv::semundo::holders(sysv);
            let pids = r.made.pids.clone();
            r.adjusting.retain(|p| pids.contains(p));
            for a in self.agents.iter().filter(|a| r.adjusting.contains(&a.pid)) {
                let _ = transfer::send(a.conn.as_raw_fd(), transfer::ADJUST, &[]);
            }
            self.go_if_adjusted();
        }
    }

    /// A restore process took back its semaphore undo adjustments.
    pub(super) fn on_adjusted(&mut self, pid: i32) {
        let Some(r) = self.restore.as_mut() else { return };
        r.adjusting.retain(|&p| p != pid);
        self.go_if_adjusted();
    }

    /// Once committed and adjusted: the terminal, then every process goes.
    fn go_if_adjusted(&mut self) {
        let Some(r) = self.restore.as_mut() else { return };
        if r.committed && r.adjusting.is_empty() && !r.go {
            if let Some((fd, pgid)) = r.made.foreground {
                if let Err(e) = crate::terminal::hand_to(fd, pgid) {
                    eprintln!("ckrun: warning: cannot make process group {pgid} the terminal's foreground group: {e}");
                }
            }
            r.go = true;
            for a in self.agents.iter().filter(|a| r.made.pids.contains(&a.pid)) {
                let _ = transfer::send(a.conn.as_raw_fd(), transfer::GO, &[]);
            }
            for fd in r.made.objects.drain(..) {
                // SAFETY: the objects' fds are ours; every process has its copies.
                unsafe { libc::close(fd) };
            }
        }
    }

    pub(super) fn on_restored(&mut self, i: usize) {
        let pid = self.agents[i].pid;
        let config = Config::new(self.settings.trigger, std::process::id() as i32, &self.settings.socket_name);
        let _ = self.agents[i].send(kind::CONFIG, &[config]);
        self.agents[i].running = true;
        self.agents[i].restoring = false;
        let Some(r) = self.restore.as_mut() else { return };
        if !r.restored.contains(&pid) {
            r.restored.push(pid);
        }
        if r.restored.len() == r.made.pids.len() {
            let n = r.made.pids.len();
            let what = if n == 1 { format!("process {pid}") } else { format!("{n} processes") };
            let ms = r.started.elapsed().as_secs_f64() * 1000.0;
            eprintln!("ckrun: restarted {what} from {} in {ms:.1} ms", r.made.image.display());
            self.restore = None;
        }
    }

    /// Calls a restart off. Nothing of the new tree reached the restorer
    /// without the go, so every process of it is still ckrun code: killing
    /// them leaves nothing half-restored.
    pub(super) fn abort_restore(&mut self) {
        let Some(r) = self.restore.take() else { return };
        if r.go {
            return;
        }
        for m in tree::descendants(std::process::id() as i32, &[]) {
            // SAFETY: plain kill of our own descendants.
            unsafe { libc::kill(m.pid, libc::SIGKILL) };
        }
        for fd in r.made.objects {
            // SAFETY: closing our own fds.
            unsafe { libc::close(fd) };
        }
        crate::fdtypes::abandon(&mut crate::restore::kernel::Linux::default(), &r.made.deferred);
    }
}
