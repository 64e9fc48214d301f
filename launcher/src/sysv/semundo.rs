//! SysV semaphore undo adjustments (SEM_UNDO) of the job's processes:
//! capture → image → restore side by side.
//!
//! Each process has, per semaphore it changed with SEM_UNDO, an
//! adjustment (semadj) the kernel adds to the value when the process
//! exits: a process holding a lock taken with SEM_UNDO gives it back by
//! dying. A restart that left them out would make every such exit leave
//! the semaphore as if the lock were still held.
//!
//! **Capture: the kernel's own numbers.** No interface shows semadj, but a
//! process can test its own with semop calls that fail either way,
//! changing nothing, with ERANGE or EAGAIN as the adjustment is above or
//! below a threshold (`ckrun_proto::semadj`). While the tree is stopped
//! the coordinator asks each process's agent (`kind::SEM_PROBE`) for its
//! adjustments of the job's semaphore sets (those the image saves), and
//! the agent finds each by bisection: two calls per 16 semaphores when a
//! process has none, 17 more per semaphore where it has one. This
//! replaces the design first proposed, where the agent would count its
//! own SEM_UNDO operations in a table with their times, and the
//! coordinator would drop the entries older than a SETVAL/SETALL of any
//! process: that cannot be exact (operations on both sides of another
//! process's SETVAL between two checkpoints), misses resets by processes
//! outside the tree and adjustments made through raw syscalls, loses the
//! table across exec (the kernel keeps the adjustments) and compares
//! clocks across a reboot. Probing reads what the kernel will apply, and
//! costs the program nothing between checkpoints (the semop wrappers are
//! unchanged).
//!
//! **Image.** Each semaphore set carries its non-zero adjustments, by
//! process and semaphore ([`Undo`]).
//!
//! **Restore.** Only a process can give itself an adjustment, by a semop
//! with SEM_UNDO, and a SETVAL/SETALL zeroes everybody's: so each restored
//! process takes its own back after the sets got their values (the
//! commit, `fdtypes::Deferred::Sysv`, which SETALLs), and before any
//! process of the tree runs. The coordinator, once every process is ready
//! and the commit is done, asks those that hold adjustments to take them
//! (`transfer::ADJUST`); each restore process (already the process, with
//! its PID and the program's credentials, a new process whose undo list is
//! empty) makes one semop per adjustment, `semadj::shift`: pairs `+c`,
//! `-c`, one with SEM_UNDO, so the value ends as the commit set it and
//! the adjustment is the image's; and answers (`transfer::ADJUSTED`). Only
//! when all have, does any process go.
//!
//! Why this is right: each call is atomic and leaves every value as it
//! found it, so neither the order of the processes nor a process outside
//! the tree using the set meanwhile sees a difference; each keeps the
//! value in [0, SEMVMX] at every step and carries IPC_NOWAIT, so it never
//! blocks; it happens after the last SETALL of the restart and before the
//! first instruction of the program, so no reset of the program's can
//! come in between, and no process can exit before all have theirs. The
//! restored threads share the process's undo list (`CLONE_SYSVSEM`, as
//! pthreads do). A call that fails because a process outside the tree
//! changed the value between the read and the call is made again, three
//! times at most; then the restart fails, naming the semaphore.
//!
//! Not seen: processes that share one undo list without being threads of
//! one process (`clone` with `CLONE_SYSVSEM` but not `CLONE_THREAD`) each
//! come back with the list as their own.

use super::SysvObject;
use crate::agent::{kind_of, Agent};
use crate::error::CkError;
use crate::restore::kernel::Kernel;
use anyhow::Result;
use ckrun_proto::semadj::{self, SemOp, MAX_SHIFT_OPS};
use ckrun_proto::{decode, kind, SemProbeEnd, SemSet, SemUndo, MAX_PROBE_SETS};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Process `pid`'s adjustment of semaphore `num` of the set that holds it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Undo {
    pub pid: i32,
    pub num: u16,
    pub adj: i16,
}

/// What the capture of the adjustments found wrong with an agent's answer.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("process {pid} did not report its semaphore undo adjustments within {}s", WAIT.as_secs())]
    Silent { pid: i32 },
    #[error("process {pid} ended while its semaphore undo adjustments were read")]
    Gone { pid: i32 },
    #[error("process {pid} reported {why}; checkpoint abandoned")]
    BadReport { pid: i32, why: String },
}

/// How long an agent may take to answer (it is stopped, probing only).
const WAIT: Duration = Duration::from_secs(30);

/// While the tree is stopped: each process's adjustments of the job's
/// semaphore sets in `objects`, added to them. All agents probe at once;
/// checkpoint requests that arrive meanwhile are counted in `merged`.
pub fn capture(
    agents: &[&Agent],
    objects: &mut [SysvObject],
    warnings: &mut Vec<String>,
    merged: &mut u32,
) -> Result<()> {
    let sets: Vec<SemSet> = objects
        .iter()
        .filter_map(|o| match o {
            SysvObject::Semaphores { id, values, .. } => Some(SemSet { id: *id, nsems: values.len() as u32 }),
            _ => None,
        })
        .collect();
    if sets.is_empty() {
        return Ok(());
    }
    let probes = sets.chunks(MAX_PROBE_SETS).count();
    for a in agents {
        for chunk in sets.chunks(MAX_PROBE_SETS) {
            a.send(kind::SEM_PROBE, chunk).map_err(|_| CaptureError::Gone { pid: a.pid })?;
        }
    }
    let deadline = Instant::now() + WAIT;
    for a in agents {
        let bad = |why: String| CaptureError::BadReport { pid: a.pid, why };
        let mut reports = Vec::new();
        let mut ends = 0;
        while ends < probes {
            let msg = match a.recv(Some(deadline)) {
                Ok(Some(m)) => m,
                Ok(None) => return Err(CaptureError::Silent { pid: a.pid }.into()),
                Err(_) => return Err(CaptureError::Gone { pid: a.pid }.into()),
            };
            match kind_of(&msg) {
                kind::SEM_UNDO => {
                    reports.extend(decode::<SemUndo>(&msg).ok_or_else(|| bad("a bad SEM_UNDO message".into()))?.1)
                }
                kind::SEM_UNDO_END => {
                    let (_, end) = decode::<SemProbeEnd>(&msg).ok_or_else(|| bad("a bad SEM_UNDO_END".into()))?;
                    let end = end.first().copied().unwrap_or_default();
                    if end.errno != 0 {
                        warnings.push(format!(
                            "process {}: its SEM_UNDO adjustments of SysV semaphore set {} cannot be read ({}); \
                             a restart gives it none there",
                            a.pid,
                            end.unreadable_id,
                            std::io::Error::from_raw_os_error(end.errno)
                        ));
                    }
                    ends += 1;
                }
                kind::CHECKPOINT_REQUEST => *merged += 1,
                _ => {}
            }
        }
        attach(objects, a.pid, &reports).map_err(bad)?;
    }
    Ok(())
}

/// Adds process `pid`'s reported adjustments to the sets they belong to.
/// Err: a report for a set or semaphore the agent was not asked about,
/// twice for one semaphore, or out of range (an agent lying, or broken).
pub fn attach(objects: &mut [SysvObject], pid: i32, reports: &[SemUndo]) -> Result<(), String> {
    for r in reports {
        let set = objects.iter_mut().find_map(|o| match o {
            SysvObject::Semaphores { id, values, undo, .. } if *id == r.id => Some((values.len(), undo)),
            _ => None,
        });
        let Some((nsems, undo)) = set else {
            return Err(format!("undo adjustments of semaphore set {}, which is not the job's", r.id));
        };
        if r.num as usize >= nsems || !(semadj::ADJ_MIN..=semadj::ADJ_MAX).contains(&r.adj) {
            return Err(format!("an undo adjustment {} of semaphore {} of set {}", r.adj, r.num, r.id));
        }
        if undo.iter().any(|u| u.pid == pid && u.num as u32 == r.num) {
            return Err(format!("two undo adjustments of semaphore {} of set {}", r.num, r.id));
        }
        if r.adj != 0 {
            undo.push(Undo { pid, num: r.num as u16, adj: r.adj as i16 });
        }
    }
    Ok(())
}

/// One adjustment a restored process takes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: i32,
    pub num: u16,
    pub adj: i16,
}

/// What process `pid` takes back, set by set.
pub fn of_process(objects: &[SysvObject], pid: i32) -> Vec<Entry> {
    let mut out = Vec::new();
    for o in objects {
        if let SysvObject::Semaphores { id, undo, .. } = o {
            out.extend(undo.iter().filter(|u| u.pid == pid).map(|u| Entry { id: *id, num: u.num, adj: u.adj }));
        }
    }
    out
}

/// The processes that hold adjustments (the restart asks each to take
/// them back before any goes).
pub fn holders<'a>(objects: impl IntoIterator<Item = &'a SysvObject>) -> Vec<i32> {
    let mut pids: Vec<i32> = objects
        .into_iter()
        .flat_map(|o| match o {
            SysvObject::Semaphores { undo, .. } => undo.iter().map(|u| u.pid).collect(),
            _ => vec![],
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The operations that give this process adjustment `adj` of semaphore
/// `num`, whose value is `value`, leaving the value.
fn operations(num: u16, value: u16, adj: i16) -> Vec<SemOp> {
    let mut ops = [SemOp::default(); MAX_SHIFT_OPS];
    let n = semadj::shift(num, value, adj as i32, &mut ops).expect("an adjustment is within a shift's reach");
    ops[..n].to_vec()
}

/// Tries per adjustment: the value read, then the call made with it (a
/// process outside the tree may change the value in between).
const TRIES: u32 = 3;

/// In restore process `pid`, after the commit, before the go: takes back
/// each of its adjustments (see the module doc).
pub fn take_back(k: &mut impl Kernel, pid: i32, entries: &[Entry]) -> Result<(), CkError> {
    for e in entries {
        let mut tries = 0;
        loop {
            let r = k.sem_value(e.id, e.num).and_then(|v| k.semop(e.id, &operations(e.num, v, e.adj)));
            match r {
                Ok(()) => break,
                Err(x) if matches!(x.raw_os_error(), Some(libc::EAGAIN | libc::ERANGE)) && tries + 1 < TRIES => {
                    tries += 1
                }
                Err(x) => {
                    return Err(CkError::Environment(format!(
                        "process {pid}: cannot take back its undo adjustment {:+} of semaphore {} of SysV semaphore set {}: {x}",
                        e.adj, e.num, e.id
                    )))
                }
            }
        }
    }
    Ok(())
}

/// `--dry-run`: who takes back what, with the calls they would make at
/// the checkpoint's values (which the commit sets).
pub fn plan_lines(objects: &[SysvObject]) -> Vec<String> {
    let mut out = Vec::new();
    for o in objects {
        let SysvObject::Semaphores { id, values, undo, .. } = o else { continue };
        for u in undo {
            let value = values.get(u.num as usize).copied().unwrap_or(0);
            let ops: Vec<String> = operations(u.num, value, u.adj).iter().map(describe_op).collect();
            out.push(format!(
                "semaphore set {id}: process {} takes back its undo adjustment {:+} of semaphore {} once the tree is ready: semop {}",
                u.pid,
                u.adj,
                u.num,
                ops.join(" ")
            ));
        }
    }
    out
}

fn describe_op(o: &SemOp) -> String {
    let undo = if o.flg & semadj::SEM_UNDO != 0 { " SEM_UNDO" } else { "" };
    format!("[{} {:+}{undo}]", o.num, o.op)
}

/// `--inspect`: a set's adjustments, one line per process.
pub fn inspect_lines(o: &SysvObject) -> Vec<String> {
    let SysvObject::Semaphores { undo, .. } = o else { return vec![] };
    holders([o])
        .into_iter()
        .map(|pid| {
            let adj: Vec<String> =
                undo.iter().filter(|u| u.pid == pid).map(|u| format!("semaphore {} {:+}", u.num, u.adj)).collect();
            format!("undo adjustments of process {pid}: {}", adj.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::kernel::recording::{Call, Recording};
    use crate::sysv::Owner;

    fn set(id: i32, values: Vec<u16>) -> SysvObject {
        SysvObject::Semaphores { id, key: 0, owner: Owner { uid: 0, gid: 0, mode: 0o600 }, values, undo: vec![] }
    }

    fn undo_of(o: &SysvObject) -> &[Undo] {
        match o {
            SysvObject::Semaphores { undo, .. } => undo,
            _ => &[],
        }
    }

    #[test]
    fn reports_go_to_their_sets_and_bad_ones_are_refused() {
        let mut objects = vec![set(7, vec![1, 2, 3]), set(9, vec![0])];
        let r = |id, num, adj| SemUndo { id, num, adj };
        attach(&mut objects, 100, &[r(7, 0, 3), r(7, 2, -1), r(9, 0, 0)]).unwrap();
        attach(&mut objects, 101, &[r(7, 0, 1)]).unwrap();
        assert_eq!(
            undo_of(&objects[0]),
            [Undo { pid: 100, num: 0, adj: 3 }, Undo { pid: 100, num: 2, adj: -1 }, Undo { pid: 101, num: 0, adj: 1 }]
        );
        assert!(undo_of(&objects[1]).is_empty(), "zero adjustments are not kept");
        assert_eq!(holders(&objects), vec![100, 101]);
        assert_eq!(of_process(&objects, 101), vec![Entry { id: 7, num: 0, adj: 1 }]);

        for bad in [r(8, 0, 1), r(7, 3, 1), r(7, 0, 40000), r(7, 1, semadj::ADJ_MIN - 1)] {
            assert!(attach(&mut objects, 102, &[bad]).is_err(), "{bad:?}");
        }
        assert!(attach(&mut objects, 102, &[r(7, 1, 1), r(7, 1, 2)]).is_err(), "twice for one semaphore");
    }

    /// The kernel's semop on one semaphore (sequential, all or nothing).
    fn apply(value: &mut i32, adj: &mut i32, ops: &[SemOp]) -> bool {
        let (v0, a0) = (*value, *adj);
        for o in ops {
            *value += o.op as i32;
            if o.flg & semadj::SEM_UNDO != 0 {
                *adj -= o.op as i32;
            }
            if !(0..=semadj::SEMVMX).contains(value) || !(semadj::ADJ_MIN..=semadj::ADJ_MAX).contains(adj) {
                (*value, *adj) = (v0, a0);
                return false;
            }
        }
        true
    }

    #[test]
    fn each_adjustment_is_taken_back_by_one_call_that_leaves_the_value() {
        let mut k = Recording::default();
        k.sem_values.insert((7, 0), 5);
        k.sem_values.insert((7, 1), 32767);
        k.sem_values.insert((9, 4), 0);
        let entries = [
            Entry { id: 7, num: 0, adj: 3 },        // held a lock: -3 with SEM_UNDO
            Entry { id: 7, num: 1, adj: -2 },       // +2 with SEM_UNDO: no room above
            Entry { id: 9, num: 4, adj: i16::MAX }, // two pairs
        ];
        take_back(&mut k, 42, &entries).unwrap();
        let calls: Vec<(i32, Vec<SemOp>)> = k
            .calls
            .iter()
            .filter_map(|c| match c {
                Call::Semop { id, ops } => Some((*id, ops.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(calls.len(), 3, "one call per adjustment: {calls:?}");
        for ((id, ops), e) in calls.iter().zip(&entries) {
            assert_eq!(*id, e.id);
            assert!(ops.iter().all(|o| o.num == e.num && o.op != 0 && o.flg & semadj::IPC_NOWAIT != 0));
            let mut value = k.sem_values[&(e.id, e.num)] as i32;
            let before = value;
            let mut adj = 0;
            assert!(apply(&mut value, &mut adj, ops), "{ops:?} would fail");
            assert_eq!((value, adj), (before, e.adj as i32), "{ops:?}");
        }
        assert_eq!(
            calls[0].1,
            [
                SemOp { num: 0, op: 3, flg: semadj::IPC_NOWAIT },
                SemOp { num: 0, op: -3, flg: semadj::IPC_NOWAIT | semadj::SEM_UNDO }
            ]
        );
        assert_eq!(
            calls[1].1,
            [
                SemOp { num: 1, op: -2, flg: semadj::IPC_NOWAIT },
                SemOp { num: 1, op: 2, flg: semadj::IPC_NOWAIT | semadj::SEM_UNDO }
            ],
            "down first at the top of the range"
        );
    }

    #[test]
    fn a_value_changed_under_the_call_is_tried_again_then_named() {
        let mut k = Recording::default();
        k.sem_values.insert((7, 0), 5);
        k.semop_errors = vec![libc::EAGAIN];
        take_back(&mut k, 42, &[Entry { id: 7, num: 0, adj: 1 }]).unwrap();
        assert_eq!(k.calls.iter().filter(|c| matches!(c, Call::Semop { .. })).count(), 2);
        k.semop_errors = vec![libc::EAGAIN; 3];
        let e = take_back(&mut k, 42, &[Entry { id: 7, num: 0, adj: 1 }]).unwrap_err();
        assert!(e.to_string().contains("process 42: cannot take back its undo adjustment +1 of semaphore 0"), "{e}");
        k.semop_errors = vec![libc::EIDRM];
        assert!(take_back(&mut k, 42, &[Entry { id: 7, num: 0, adj: 1 }]).is_err(), "not tried again");
    }

    #[test]
    fn the_dry_run_names_each_adjustment_and_its_call() {
        let mut objects = vec![set(7, vec![5, 0])];
        attach(&mut objects, 100, &[SemUndo { id: 7, num: 1, adj: -4 }]).unwrap();
        assert_eq!(
            plan_lines(&objects),
            ["semaphore set 7: process 100 takes back its undo adjustment -4 of semaphore 1 once the tree is ready: \
              semop [1 +4 SEM_UNDO] [1 -4]"]
        );
        assert_eq!(inspect_lines(&objects[0]), ["undo adjustments of process 100: semaphore 1 -4"]);
    }
}
