//! Where a restart restores the tree: here, with the image's PIDs and TIDs,
//! or in a new PID namespace. Decided before anything is created, from
//! every ID the image needs (processes, threads, zombies):
//!
//! - an ID at or above this machine's `pid_max` cannot be chosen here
//!   (clone3 fails with EINVAL): the image was taken in a PID namespace
//!   with a larger range. A new namespace is given a `pid_max` above it.
//! - an ID held by a live process (the original still runs, or another
//!   process got the number; held also as another process's group or
//!   session ID) cannot be chosen either.
//! - an ID held only by processes that are exiting (the killed job's
//!   zombies, not yet reaped; a process with SIGKILL pending) will be free
//!   in a moment: the restart waits for them, a bounded time, polling.
//!
//! A new PID namespace gets the `pid_max` of this one (or above the
//! image's highest ID), so that the IDs it hands out to threads and
//! processes created after the restart stay restorable here. Since Linux
//! 6.14 pid_max is per PID namespace and a new one starts at 4194304;
//! before, it is one global value, which ckrun never writes.
//!
//! The decisions are plain functions of what the [`Kernel`] reports, unit
//! tested with the recording kernel; `--dry-run` prints them.

use super::kernel::{Kernel, PidUse};
use crate::error::CkError;
use crate::image::manifest::Manifest;
use std::fmt;
use std::time::Duration;

/// How long a restart waits for exiting processes to release the image's
/// IDs, and how often it looks.
pub const EXIT_WAIT: Duration = Duration::from_secs(5);
pub const EXIT_POLL: Duration = Duration::from_millis(20);

/// One ID the image needs, and what it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Process(i32),
    /// A thread (not the main one) of process `pid`.
    Thread {
        tid: i32,
        pid: i32,
    },
    Zombie(i32),
}

impl Need {
    pub fn id(&self) -> i32 {
        match *self {
            Need::Process(p) | Need::Zombie(p) => p,
            Need::Thread { tid, .. } => tid,
        }
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Need::Process(p) => write!(f, "PID {p}"),
            Need::Zombie(p) => write!(f, "PID {p} (a zombie)"),
            Need::Thread { tid, pid } => write!(f, "TID {tid} (a thread of process {pid})"),
        }
    }
}

/// Every ID a restore of `m` chooses.
pub fn needs(m: &Manifest) -> Vec<Need> {
    let mut v = Vec::new();
    for p in &m.processes {
        v.push(Need::Process(p.pid));
        v.extend(p.threads.iter().filter(|t| t.tid != p.pid).map(|t| Need::Thread { tid: t.tid, pid: p.pid }));
    }
    v.extend(m.zombies.iter().map(|z| Need::Zombie(z.pid)));
    v
}

/// What this machine says of the IDs, at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    /// /proc/sys/kernel/pid_max here.
    pub pid_max: u32,
    /// IDs at or above it.
    pub above: Vec<Need>,
    /// IDs held by live processes.
    pub live: Vec<Need>,
    /// IDs held only by exiting processes.
    pub exiting: Vec<Need>,
}

pub fn assess(k: &mut impl Kernel, needs: &[Need]) -> Result<Assessment, PlaceError> {
    let pid_max = k.pid_max().map_err(PlaceError::PidMax)?;
    let above: Vec<Need> = needs.iter().copied().filter(|n| n.id() as i64 >= pid_max as i64).collect();
    let ids: Vec<i32> = needs.iter().map(Need::id).collect();
    let uses = k.pid_uses(&ids);
    let pick = |u: PidUse| needs.iter().zip(&uses).filter(|(_, &x)| x == u).map(|(n, _)| *n).collect::<Vec<_>>();
    Ok(Assessment { pid_max, above, live: pick(PidUse::Live), exiting: pick(PidUse::Exiting) })
}

/// Who is deciding: the ckrun the user started, or the one already in the
/// namespace it made (where a failure is final).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// May choose PIDs here (root).
    pub privileged: bool,
    /// `--no-pidns`: never a new namespace.
    pub no_pidns: bool,
    /// Already in the new namespace ckrun made for this restart.
    pub inside_namespace: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// Not root: only a user namespace of its own lets ckrun choose PIDs.
    Unprivileged,
    /// These IDs are at or above this machine's pid_max.
    AboveLimit { ids: Vec<Need>, pid_max: u32 },
    /// These IDs are taken (by live processes, or by exiting ones that did
    /// not go within the wait).
    InUse(Vec<Need>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Every ID is free and below pid_max: restore here.
    Here,
    /// Only exiting processes hold these IDs: wait for them.
    Wait(Vec<Need>),
    /// Restore in a new PID namespace whose pid_max is `pid_max`.
    Namespace { why: Why, pid_max: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("{} is at or above this machine's pid_max ({pid_max}): the image was taken in a PID namespace \
             with a larger range; cannot restore it here (--no-pidns; without it ckrun restarts in a new PID namespace)",
            list(ids))]
    AboveLimit { ids: Vec<Need>, pid_max: u32 },
    #[error(
        "{} is at or above the pid_max of the new PID namespace ({pid_max}), which ckrun could not raise",
        list(ids)
    )]
    AboveNamespaceLimit { ids: Vec<Need>, pid_max: u32 },
    #[error(
        "{} is in use by another process (is the original program still running?); \
             cannot restore it with its PID (--no-pidns)",
        list(ids)
    )]
    InUse { ids: Vec<Need> },
    #[error("{} is in use in the new PID namespace", list(.0))]
    InUseInNamespace(Vec<Need>),
    #[error("reading /proc/sys/kernel/pid_max: {0}")]
    PidMax(std::io::Error),
}

impl From<PlaceError> for CkError {
    fn from(e: PlaceError) -> CkError {
        CkError::Environment(e.to_string())
    }
}

/// At most four, then a count.
pub fn list(ids: &[Need]) -> String {
    let mut s: Vec<String> = ids.iter().take(4).map(Need::to_string).collect();
    if ids.len() > 4 {
        s.push(format!("and {} more", ids.len() - 4));
    }
    s.join(", ")
}

/// The pid_max a new namespace needs: this machine's, or just above the
/// image's highest ID if that is higher.
fn namespace_pid_max(a: &Assessment, needs: &[Need]) -> u32 {
    let top = needs.iter().map(|n| n.id().max(0) as u32 + 1).max().unwrap_or(0);
    a.pid_max.max(top)
}

/// What to do, given an assessment; `waited`: the wait for exiting
/// processes is over (they count as holders now).
pub fn decide(a: &Assessment, needs: &[Need], policy: Policy, waited: bool) -> Result<Decision, PlaceError> {
    let pid_max = namespace_pid_max(a, needs);
    if !a.above.is_empty() {
        let ids = a.above.clone();
        return match (policy.inside_namespace, policy.no_pidns) {
            (true, _) => Err(PlaceError::AboveNamespaceLimit { ids, pid_max: a.pid_max }),
            (false, true) => Err(PlaceError::AboveLimit { ids, pid_max: a.pid_max }),
            (false, false) => Ok(Decision::Namespace { why: Why::AboveLimit { ids, pid_max: a.pid_max }, pid_max }),
        };
    }
    if !policy.privileged && !policy.no_pidns && !policy.inside_namespace {
        return Ok(Decision::Namespace { why: Why::Unprivileged, pid_max });
    }
    if a.live.is_empty() && !a.exiting.is_empty() && !waited {
        return Ok(Decision::Wait(a.exiting.clone()));
    }
    let mut taken = a.live.clone();
    taken.extend(a.exiting.iter().copied());
    if taken.is_empty() {
        return Ok(Decision::Here);
    }
    taken.sort_by_key(Need::id);
    match (policy.inside_namespace, policy.no_pidns) {
        (true, _) => Err(PlaceError::InUseInNamespace(taken)),
        (false, true) => Err(PlaceError::InUse { ids: taken }),
        (false, false) => Ok(Decision::Namespace { why: Why::InUse(taken), pid_max }),
    }
}

/// Decides, waiting (at most `wait`, polling every [`EXIT_POLL`]) for
/// exiting processes that hold IDs; `say` gets ckrun's messages.
pub fn place(
    k: &mut impl Kernel,
    needs: &[Need],
    policy: Policy,
    wait: Duration,
    say: &mut dyn FnMut(String),
) -> Result<Decision, PlaceError> {
    let mut a = assess(k, needs)?;
    let first = decide(&a, needs, policy, false)?;
    let Decision::Wait(ids) = first else { return Ok(first) };
    say(format!(
        "{} held by exiting processes (the killed job's, not yet reaped?): waiting up to {} s for them to go",
        list(&ids),
        wait.as_secs()
    ));
    let polls = (wait.as_millis() / EXIT_POLL.as_millis()).max(1);
    for _ in 0..polls {
        k.pause(EXIT_POLL);
        a = assess(k, needs)?;
        match decide(&a, needs, policy, false)? {
            Decision::Wait(_) => continue,
            Decision::Here => {
                say(format!("{} free now", list(&ids)));
                return Ok(Decision::Here);
            }
            other => return Ok(other),
        }
    }
    decide(&a, needs, policy, true)
}

/// What to do with the pid_max of a new PID namespace: `host` is this
/// machine's (read before the namespace was made), `inside` what the new
/// namespace reads, `wanted` what it needs. A namespace that reads the
/// host's value may share it (before Linux 6.14 pid_max is global, and
/// writing it would change the whole machine's): it is never written then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PidMaxAction {
    Keep,
    Write(u32),
    /// The namespace's range is too small and may not be its own.
    CannotRaise,
}

pub fn pid_max_action(host: u32, inside: u32, wanted: u32) -> PidMaxAction {
    if inside == wanted {
        PidMaxAction::Keep
    } else if inside != host {
        PidMaxAction::Write(wanted)
    } else if inside > wanted {
        PidMaxAction::Keep
    } else {
        PidMaxAction::CannotRaise
    }
}

/// Sets the new namespace's pid_max (called in it, as its init).
pub fn limit_namespace(k: &mut impl Kernel, host: u32, wanted: u32) {
    let inside = match k.pid_max() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ckrun: warning: cannot read the new PID namespace's pid_max: {e}");
            return;
        }
    };
    match pid_max_action(host, inside, wanted) {
        PidMaxAction::Keep => {}
        PidMaxAction::Write(n) => {
            if let Err(e) = k.set_pid_max(n) {
                eprintln!(
                    "ckrun: warning: cannot set the new PID namespace's pid_max to {n} ({e}): threads and \
                     processes made after this restart may get IDs up to {inside}, which only a restart in a \
                     PID namespace can give back"
                );
            }
        }
        PidMaxAction::CannotRaise => eprintln!(
            "ckrun: warning: the new PID namespace shares this machine's pid_max ({inside}); the image needs {wanted}"
        ),
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Decision::Here => write!(f, "here: every PID and TID of the image is free and below pid_max"),
            Decision::Wait(ids) => {
                write!(
                    f,
                    "here, after waiting (at most {} s) for exiting processes holding {}",
                    EXIT_WAIT.as_secs(),
                    list(ids)
                )
            }
            Decision::Namespace { why, pid_max } => {
                write!(f, "a new PID namespace with pid_max {pid_max}: ")?;
                match why {
                    Why::Unprivileged => write!(f, "not root (a user namespace of its own lets ckrun choose PIDs)"),
                    Why::AboveLimit { ids, pid_max } => {
                        write!(f, "{} at or above this machine's pid_max {pid_max}", list(ids))
                    }
                    Why::InUse(ids) => write!(f, "{} in use here", list(ids)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::kernel::recording::Recording;

    const ROOT: Policy = Policy { privileged: true, no_pidns: false, inside_namespace: false };

    fn kernel(pid_max: u32) -> Recording {
        let mut k = Recording::default();
        k.pid_max_value = pid_max;
        k
    }

    fn tree() -> Vec<Need> {
        vec![Need::Process(100), Need::Thread { tid: 101, pid: 100 }, Need::Process(200), Need::Zombie(300)]
    }

    fn placed(k: &mut Recording, policy: Policy) -> (Result<Decision, PlaceError>, Vec<String>) {
        let mut said = Vec::new();
        let d = place(k, &tree(), policy, EXIT_WAIT, &mut |s| said.push(s));
        (d, said)
    }

    #[test]
    fn free_ids_below_pid_max_restore_here() {
        let mut k = kernel(32768);
        let (d, said) = placed(&mut k, ROOT);
        assert_eq!(d.unwrap(), Decision::Here);
        assert!(said.is_empty());
        assert_eq!(k.pauses, 0);
    }

    #[test]
    fn a_tid_above_pid_max_needs_a_namespace_with_room_for_it() {
        let mut k = kernel(150);
        let (d, _) = placed(&mut k, ROOT);
        let Decision::Namespace { why: Why::AboveLimit { ids, pid_max: 150 }, pid_max } = d.unwrap() else { panic!() };
        assert_eq!(ids, vec![Need::Process(200), Need::Zombie(300)]);
        assert_eq!(pid_max, 301);
        // Refused outright with --no-pidns, and inside the namespace.
        let no = Policy { no_pidns: true, ..ROOT };
        let e = placed(&mut k, no).0.unwrap_err();
        assert!(
            e.to_string().contains("PID 200, PID 300 (a zombie) is at or above this machine's pid_max (150)"),
            "{e}"
        );
        let inside = Policy { no_pidns: true, inside_namespace: true, ..ROOT };
        assert!(matches!(placed(&mut k, inside).0, Err(PlaceError::AboveNamespaceLimit { .. })));
    }

    #[test]
    fn a_namespace_keeps_the_hosts_pid_max() {
        let mut k = kernel(32768);
        k.uses.insert(200, vec![PidUse::Live]);
        let (d, said) = placed(&mut k, ROOT);
        assert_eq!(d.unwrap(), Decision::Namespace { why: Why::InUse(vec![Need::Process(200)]), pid_max: 32768 });
        assert!(said.is_empty(), "no wait for a live process: {said:?}");
        assert_eq!(k.pauses, 0);
        let e = placed(&mut k, Policy { no_pidns: true, ..ROOT }).0.unwrap_err();
        assert!(e.to_string().starts_with("PID 200 is in use by another process"), "{e}");
    }

    #[test]
    fn unprivileged_always_takes_a_namespace() {
        let mut k = kernel(32768);
        let user = Policy { privileged: false, ..ROOT };
        assert_eq!(placed(&mut k, user).0.unwrap(), Decision::Namespace { why: Why::Unprivileged, pid_max: 32768 });
        let inside = Policy { privileged: false, no_pidns: true, inside_namespace: true };
        assert_eq!(placed(&mut k, inside).0.unwrap(), Decision::Here);
    }

    #[test]
    fn exiting_holders_are_waited_for() {
        let mut k = kernel(32768);
        // A zombie of the killed job holds 100, and a thread of it 101,
        // for three looks; then both are gone.
        k.uses.insert(100, vec![PidUse::Exiting, PidUse::Exiting, PidUse::Exiting, PidUse::Free]);
        k.uses.insert(101, vec![PidUse::Exiting, PidUse::Free]);
        let (d, said) = placed(&mut k, ROOT);
        assert_eq!(d.unwrap(), Decision::Here);
        assert_eq!(k.pauses, 3);
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].starts_with("PID 100, TID 101 (a thread of process 100) held by exiting processes"),
            "{said:?}"
        );
        assert!(said[0].contains("waiting up to 5 s"), "{said:?}");
    }

    #[test]
    fn exiting_holders_that_stay_mean_a_namespace_after_the_wait() {
        let mut k = kernel(32768);
        k.uses.insert(300, vec![PidUse::Exiting]);
        let (d, _) = placed(&mut k, ROOT);
        assert_eq!(d.unwrap(), Decision::Namespace { why: Why::InUse(vec![Need::Zombie(300)]), pid_max: 32768 });
        assert_eq!(k.pauses as u128, EXIT_WAIT.as_millis() / EXIT_POLL.as_millis());
        // With --no-pidns: the error after the wait.
        let mut k = kernel(32768);
        k.uses.insert(300, vec![PidUse::Exiting]);
        assert!(matches!(placed(&mut k, Policy { no_pidns: true, ..ROOT }).0, Err(PlaceError::InUse { .. })));
    }

    #[test]
    fn a_number_taken_by_a_new_process_during_the_wait_ends_it() {
        let mut k = kernel(32768);
        k.uses.insert(200, vec![PidUse::Exiting, PidUse::Live]);
        let (d, _) = placed(&mut k, ROOT);
        assert!(matches!(d.unwrap(), Decision::Namespace { why: Why::InUse(_), .. }));
        assert_eq!(k.pauses, 1);
    }

    #[test]
    fn dry_run_wording() {
        let mut k = kernel(32768);
        k.uses.insert(100, vec![PidUse::Exiting]);
        let a = assess(&mut k, &tree()).unwrap();
        let d = decide(&a, &tree(), ROOT, false).unwrap();
        assert_eq!(d.to_string(), "here, after waiting (at most 5 s) for exiting processes holding PID 100");
        let d = Decision::Namespace {
            why: Why::AboveLimit { ids: vec![Need::Thread { tid: 40001, pid: 7 }], pid_max: 32768 },
            pid_max: 40002,
        };
        assert_eq!(
            d.to_string(),
            "a new PID namespace with pid_max 40002: TID 40001 (a thread of process 7) at or above this machine's pid_max 32768"
        );
    }

    #[test]
    fn pid_max_is_written_only_where_it_is_the_namespaces_own() {
        // Linux >= 6.14: a new namespace reads 4194304 while the host has 32768.
        assert_eq!(pid_max_action(32768, 4194304, 32768), PidMaxAction::Write(32768));
        assert_eq!(pid_max_action(32768, 4194304, 40002), PidMaxAction::Write(40002));
        // Same value: maybe one global sysctl; never written.
        assert_eq!(pid_max_action(32768, 32768, 32768), PidMaxAction::Keep);
        assert_eq!(pid_max_action(4194304, 4194304, 32768), PidMaxAction::Keep);
        assert_eq!(pid_max_action(32768, 32768, 40002), PidMaxAction::CannotRaise);
        let mut k = kernel(4194304);
        limit_namespace(&mut k, 32768, 32768);
        assert_eq!(k.calls, vec![crate::restore::kernel::recording::Call::SetPidMax(32768)]);
        let mut k = kernel(32768);
        limit_namespace(&mut k, 32768, 32768);
        assert!(k.calls.is_empty());
    }
}
