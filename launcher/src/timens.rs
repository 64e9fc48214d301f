//! Time namespaces: the program's CLOCK_MONOTONIC and CLOCK_BOOTTIME go
//! on from their values at the checkpoint after a restart, on another
//! machine, after a reboot or just later (deadlines, timeouts and elapsed
//! times the program computes stay right). CLOCK_REALTIME is the real
//! time, as after a suspend.
//!
//! **Capture.** The coordinator reads its own two clocks the moment every
//! process of the tree is stopped ([`now`]); the program's view is that,
//! moved from ckrun's time namespace to the program's ([`seen_by`]): the
//! offsets of a time namespace (`/proc/PID/timens_offsets`) are from the
//! machine's own clocks (its initial namespace's), so a program already in
//! one (it was restarted before) sees ckrun's clocks − ckrun's offsets +
//! its offsets. The image holds that view ([`Clocks`]).
//!
//! **Restore.** [`decide`] computes the offsets of a new time namespace:
//! the saved view − the machine's clocks now (negative on a machine booted
//! more recently). The kernel keeps a namespace's clocks ≥ 0 and below
//! `KTIME_SEC_MAX / 2` seconds (`proc_timens_set_offset`), which holds
//! since the saved values do ([`Clocks::usable`], checked with the image).
//! Offsets can only be written while no process is in the namespace, and
//! `unshare(CLONE_NEWTIME)` only puts the children created after it there;
//! a process whose children's time namespace is not its own cannot create
//! threads or `CLONE_VM` children (clone fails with EINVAL). So the
//! restore processes are *born* in the new namespace, which ckrun never
//! enters itself:
//! - in a new PID namespace (`restore::pidns`), the namespace's init (the
//!   coordinator) is forked into it, with the PID namespace; the ckrun the
//!   user started only forwards signals, with no thread;
//! - otherwise the coordinator unshares, creates the restore children of
//!   the tree's roots, and goes back to its own namespace at once
//!   ([`around_children`]; `setns` needs a single-threaded caller, which
//!   ckrun is there), so that its checkpoint threads can exist.
//!
//! The restore children exec a fresh ckrun in the namespace: its vDSO data
//! (`[vvar]`) is the namespace's, and the restorer moves it to the image's
//! address, so the program's vDSO `clock_gettime` shows the namespace's
//! time. CLOCK_MONOTONIC_RAW and _COARSE get the monotonic offset (the
//! kernel has two offsets only): RAW continues up to the difference between
//! the two machines' NTP corrections.
//!
//! Without time namespaces (no `/proc/self/ns/time`) a restart goes ahead
//! with a one-line warning that the clocks jump, and by how much.

use crate::error::CkError;
use crate::restore::kernel::Kernel;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;

/// CLOCK_MONOTONIC and CLOCK_BOOTTIME, as one process sees them, in
/// nanoseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Clocks {
    pub monotonic_ns: i64,
    pub boottime_ns: i64,
}

/// The offsets of a time namespace from the machine's clocks (the
/// initial time namespace's), in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub monotonic_ns: i64,
    pub boottime_ns: i64,
}

const NS: i64 = 1_000_000_000;
/// The kernel's `KTIME_SEC_MAX / 2`: a namespace's clocks stay below it.
const MAX_CLOCK_NS: i64 = (i64::MAX / NS / 2) * NS;

impl Clocks {
    /// The clocks a namespace with offsets `o` shows, from these machine clocks.
    fn plus(self, o: Offsets) -> Clocks {
        Clocks {
            monotonic_ns: self.monotonic_ns.saturating_add(o.monotonic_ns),
            boottime_ns: self.boottime_ns.saturating_add(o.boottime_ns),
        }
    }

    fn minus(self, o: Offsets) -> Clocks {
        Clocks {
            monotonic_ns: self.monotonic_ns.saturating_sub(o.monotonic_ns),
            boottime_ns: self.boottime_ns.saturating_sub(o.boottime_ns),
        }
    }

    /// From `other` to these.
    fn since(self, other: Clocks) -> Offsets {
        Offsets {
            monotonic_ns: self.monotonic_ns.saturating_sub(other.monotonic_ns),
            boottime_ns: self.boottime_ns.saturating_sub(other.boottime_ns),
        }
    }

    /// Values a time namespace can be given (the kernel refuses others).
    pub fn usable(&self) -> bool {
        (0..MAX_CLOCK_NS).contains(&self.monotonic_ns) && (0..MAX_CLOCK_NS).contains(&self.boottime_ns)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TimeError {
    #[error("reading {what}: {source}")]
    Read { what: String, source: io::Error },
    #[error("{what}: unexpected content {text:?}")]
    Malformed { what: String, text: String },
    #[error(
        "{who} is in another time namespace than the one its children get (made with unshare(CLONE_NEWTIME) \
         and not entered; `unshare --time` needs --fork): its clocks cannot be told"
    )]
    ForChildren { who: String },
    #[error("cannot set the time namespace's offsets: {0}")]
    SetOffsets(io::Error),
    #[error("cannot go back to ckrun's own time namespace: {0}")]
    Rejoin(io::Error),
}

// ---------------------------------------------------------------------------
// Capture
// ---------------------------------------------------------------------------

/// CLOCK_MONOTONIC and CLOCK_BOOTTIME as this process sees them now.
pub fn now() -> Clocks {
    let read = |clock| {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: t is a writable timespec; both clocks exist on Linux.
        unsafe { libc::clock_gettime(clock, &mut t) };
        t.tv_sec * NS + t.tv_nsec
    };
    Clocks { monotonic_ns: read(libc::CLOCK_MONOTONIC), boottime_ns: read(libc::CLOCK_BOOTTIME) }
}

/// The clocks process `pid` saw when ckrun's were `ours`.
pub fn seen_by(pid: i32, ours: Clocks) -> Result<Clocks, TimeError> {
    let theirs = namespace_of(&pid.to_string())?;
    let mine = namespace_of("self")?;
    if theirs == mine {
        return Ok(ours);
    }
    let (Some(own), Some(program)) = (offsets_of("self")?, offsets_of(&pid.to_string())?) else {
        return Ok(ours);
    };
    Ok(ours.minus(own).plus(program))
}

/// The clocks of the tree `pids` (parents first) when ckrun's were
/// `ours`: the first process's. A restart puts the whole tree in one time
/// namespace: a process in another than the first's is named in
/// `warnings`, and so is one whose clocks cannot be told (ckrun's then
/// stand for them).
pub fn capture(pids: &[i32], ours: Clocks, warnings: &mut Vec<String>) -> Clocks {
    let Some(&first) = pids.first() else { return ours };
    let clocks = seen_by(first, ours).unwrap_or_else(|e| {
        warnings.push(format!("{e}; a restart continues ckrun's clocks for the program"));
        ours
    });
    let namespace = |p: i32| namespace_of(&p.to_string()).ok().flatten();
    let theirs = namespace(first);
    for &p in &pids[1..] {
        if namespace(p) != theirs {
            warnings.push(format!(
                "process {p} is in another time namespace than process {first}: after a restart it sees the clocks of {first}"
            ));
        }
    }
    clocks
}

/// The time namespace of a process (`self` or a pid), as its
/// /proc/PID/ns/time link names it; None without time namespaces.
fn namespace_of(who: &str) -> Result<Option<String>, TimeError> {
    let link = format!("/proc/{who}/ns/time");
    match std::fs::read_link(&link) {
        Ok(t) => Ok(Some(t.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TimeError::Read { what: link, source: e }),
    }
}

/// The offsets of the time namespace of a process (`self` or a pid);
/// None if the kernel has no time namespaces. `/proc/PID/timens_offsets`
/// shows the namespace of its *children*: one that differs from its own
/// is an error.
pub fn offsets_of(who: &str) -> Result<Option<Offsets>, TimeError> {
    let Some(own) = namespace_of(who)? else { return Ok(None) };
    let link = format!("/proc/{who}/ns/time_for_children");
    let children = std::fs::read_link(&link).map_err(|e| TimeError::Read { what: link, source: e })?;
    if children.to_string_lossy() != own {
        let who = if who == "self" { "ckrun".to_string() } else { format!("process {who}") };
        return Err(TimeError::ForChildren { who });
    }
    let what = format!("/proc/{who}/timens_offsets");
    let text = std::fs::read_to_string(&what).map_err(|e| TimeError::Read { what: what.clone(), source: e })?;
    parse_offsets(&text).map(Some).ok_or(TimeError::Malformed { what, text })
}

/// `monotonic SEC NSEC` and `boottime SEC NSEC` lines, as the kernel
/// prints them (SEC may be negative, NSEC is in [0, 1e9)).
fn parse_offsets(text: &str) -> Option<Offsets> {
    let mut o = (None, None);
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (name, sec, nsec) = (w.next()?, w.next()?.parse::<i64>().ok()?, w.next()?.parse::<i64>().ok()?);
        let ns = sec.checked_mul(NS)?.checked_add(nsec)?;
        match name {
            "monotonic" => o.0 = Some(ns),
            "boottime" => o.1 = Some(ns),
            _ => {}
        }
    }
    Some(Offsets { monotonic_ns: o.0?, boottime_ns: o.1? })
}

/// What `/proc/self/timens_offsets` takes for `o` (one write, both clocks).
pub fn offsets_text(o: Offsets) -> String {
    let line = |name: &str, ns: i64| format!("{name} {} {}\n", ns.div_euclid(NS), ns.rem_euclid(NS));
    format!("{}{}", line("monotonic", o.monotonic_ns), line("boottime", o.boottime_ns))
}

// ---------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------

/// What a restart does about the clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockPlan {
    /// The program's clocks at the checkpoint.
    pub saved: Clocks,
    /// This machine's clocks now (its initial time namespace's).
    pub machine: Clocks,
    /// The new time namespace's offsets; None: this kernel has no time
    /// namespaces, and the program's clocks jump.
    pub offsets: Option<Offsets>,
}

/// The plan for clocks saved as `saved`, decided now.
pub fn decide(k: &mut impl Kernel, saved: Clocks) -> Result<ClockPlan, TimeError> {
    let here = k.clocks();
    let Some(own) = k.time_offsets()? else {
        return Ok(ClockPlan { saved, machine: here, offsets: None });
    };
    let machine = here.minus(own);
    Ok(ClockPlan { saved, machine, offsets: Some(saved.since(machine)) })
}

/// The clock plan of a restart, decided now; a kernel without time
/// namespaces gets its warning through `warn`.
pub fn plan_restart(k: &mut impl Kernel, saved: Clocks, warn: &mut dyn FnMut(String)) -> Result<ClockPlan, CkError> {
    let plan = decide(k, saved)?;
    if let Some(w) = plan.warning() {
        warn(w);
    }
    Ok(plan)
}

impl ClockPlan {
    /// How far the program's clocks jump (forward if positive) at this
    /// restart without a namespace.
    pub fn jump(&self) -> Offsets {
        self.machine.since(self.saved)
    }

    /// The one-line warning for a kernel without time namespaces.
    pub fn warning(&self) -> Option<String> {
        self.offsets.is_none().then(|| {
            let j = self.jump();
            format!(
                "warning: this kernel has no time namespaces (no /proc/self/ns/time): the program's CLOCK_MONOTONIC \
                 jumps by {} and CLOCK_BOOTTIME by {} at this restart",
                seconds(j.monotonic_ns),
                seconds(j.boottime_ns)
            )
        })
    }
}

impl fmt::Display for ClockPlan {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let s = &self.saved;
        match self.offsets {
            Some(o) => write!(
                f,
                "clocks: a new time namespace, offsets CLOCK_MONOTONIC {} and CLOCK_BOOTTIME {} from this machine's: \
                 the program's go on from {} and {}",
                seconds(o.monotonic_ns),
                seconds(o.boottime_ns),
                seconds(s.monotonic_ns).trim_start_matches('+'),
                seconds(s.boottime_ns).trim_start_matches('+')
            ),
            None => {
                let j = self.jump();
                write!(
                    f,
                    "clocks: no time namespaces on this kernel: CLOCK_MONOTONIC jumps by {}, CLOCK_BOOTTIME by {}",
                    seconds(j.monotonic_ns),
                    seconds(j.boottime_ns)
                )
            }
        }
    }
}

/// Signed seconds with milliseconds: `+86400.012 s`.
fn seconds(ns: i64) -> String {
    let sign = if ns < 0 { '-' } else { '+' };
    let a = ns.unsigned_abs();
    format!("{sign}{}.{:03} s", a / NS as u64, a % NS as u64 / 1_000_000)
}

/// Runs `create` (which creates the restore processes of the tree's
/// roots, forks only) so that what it creates is born in a new time
/// namespace with `plan`'s offsets, while this process stays in its own.
/// With no offsets (no time namespaces), or if the kernel refuses a new
/// namespace (said through `warn`), it just runs `create`.
pub fn around_children<T, E: From<CkError>>(
    k: &mut impl Kernel,
    plan: &ClockPlan,
    warn: &mut dyn FnMut(String),
    create: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    if plan.offsets.is_none() {
        return create();
    }
    let own = k
        .open_time_namespace()
        .map_err(|e| CkError::from(TimeError::Read { what: "/proc/self/ns/time".into(), source: e }))?;
    match unshare_for_children(k, plan, warn) {
        Ok(true) => {}
        Ok(false) => {
            k.close(own);
            return create();
        }
        Err(e) => {
            k.close(own);
            return Err(CkError::from(e).into());
        }
    }
    let made = create();
    let back = k.set_time_namespace(own).map_err(TimeError::Rejoin);
    k.close(own);
    let made = made?;
    back.map_err(CkError::from)?;
    Ok(made)
}

/// Makes the children this process creates from now on be born in a new
/// time namespace with `plan`'s offsets (nothing is in it before they
/// are). Ok(false): no namespace, the clocks jump: this kernel has none,
/// or it refused one (a container's seccomp filter, the user namespace's
/// `max_time_namespaces`), which `warn` is told.
pub fn unshare_for_children(
    k: &mut impl Kernel,
    plan: &ClockPlan,
    warn: &mut dyn FnMut(String),
) -> Result<bool, TimeError> {
    let Some(offsets) = plan.offsets else { return Ok(false) };
    if let Err(e) = k.unshare_time() {
        let j = plan.jump();
        warn(format!(
            "warning: cannot create a time namespace ({e}): the program's CLOCK_MONOTONIC jumps by {} and \
             CLOCK_BOOTTIME by {} at this restart",
            seconds(j.monotonic_ns),
            seconds(j.boottime_ns)
        ));
        return Ok(false);
    }
    k.set_time_offsets(offsets).map_err(TimeError::SetOffsets)?;
    Ok(true)
}

/// A time namespace ckrun cannot set up is a problem of this machine.
impl From<TimeError> for CkError {
    fn from(e: TimeError) -> CkError {
        CkError::Environment(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::kernel::recording::{Call, Recording};

    const DAY: i64 = 86_400 * NS;

    #[test]
    fn offsets_are_read_as_the_kernel_prints_them() {
        let text = "monotonic        -100         0\nboottime        86400 500000000\n";
        assert_eq!(parse_offsets(text), Some(Offsets { monotonic_ns: -100 * NS, boottime_ns: DAY + NS / 2 }));
        assert_eq!(parse_offsets("monotonic 1 0\n"), None);
        assert_eq!(parse_offsets("monotonic x 0\nboottime 0 0\n"), None);
    }

    #[test]
    fn negative_offsets_are_written_with_positive_nanoseconds() {
        let o = Offsets { monotonic_ns: -NS / 2 - 3 * NS, boottime_ns: DAY };
        assert_eq!(offsets_text(o), "monotonic -4 500000000\nboottime 86400 0\n");
        assert_eq!(parse_offsets(&offsets_text(o)), Some(o));
    }

    #[test]
    fn a_machine_that_ran_longer_gets_a_negative_offset() {
        let mut k = Recording::default();
        k.clocks_value = Clocks { monotonic_ns: 2 * DAY, boottime_ns: 2 * DAY + 7 * NS };
        k.offsets_value = Some(Offsets::default());
        let saved = Clocks { monotonic_ns: 100 * NS, boottime_ns: 150 * NS };
        let plan = decide(&mut k, saved).unwrap();
        let o = plan.offsets.unwrap();
        assert_eq!(o, Offsets { monotonic_ns: 100 * NS - 2 * DAY, boottime_ns: 150 * NS - 2 * DAY - 7 * NS });
        // The namespace shows the saved clocks.
        assert_eq!(plan.machine.plus(o), saved);
        assert!(plan.warning().is_none());
        assert!(plan.to_string().contains("CLOCK_MONOTONIC -172700.000 s"), "{plan}");
    }

    #[test]
    fn a_machine_booted_more_recently_gets_a_positive_offset() {
        let mut k = Recording::default();
        k.clocks_value = Clocks { monotonic_ns: 10 * NS, boottime_ns: 10 * NS };
        k.offsets_value = Some(Offsets::default());
        let saved = Clocks { monotonic_ns: DAY, boottime_ns: DAY };
        let o = decide(&mut k, saved).unwrap().offsets.unwrap();
        assert_eq!(o.monotonic_ns, DAY - 10 * NS);
    }

    /// ckrun itself in a time namespace (`unshare --time`, or the init of
    /// ckrun's own PID namespace): the offsets are from the machine's
    /// clocks, not from ckrun's.
    #[test]
    fn ckruns_own_namespace_is_taken_out() {
        let mut k = Recording::default();
        k.clocks_value = Clocks { monotonic_ns: DAY + 50 * NS, boottime_ns: DAY + 60 * NS };
        k.offsets_value = Some(Offsets { monotonic_ns: DAY, boottime_ns: DAY });
        let saved = Clocks { monotonic_ns: 40 * NS, boottime_ns: 40 * NS };
        let plan = decide(&mut k, saved).unwrap();
        assert_eq!(plan.machine, Clocks { monotonic_ns: 50 * NS, boottime_ns: 60 * NS });
        assert_eq!(plan.offsets, Some(Offsets { monotonic_ns: -10 * NS, boottime_ns: -20 * NS }));
    }

    #[test]
    fn without_time_namespaces_the_jump_is_named() {
        let mut k = Recording::default();
        k.clocks_value = Clocks { monotonic_ns: DAY, boottime_ns: DAY };
        k.offsets_value = None;
        let plan = decide(&mut k, Clocks { monotonic_ns: 0, boottime_ns: DAY - NS }).unwrap();
        assert_eq!(plan.offsets, None);
        let w = plan.warning().unwrap();
        assert!(w.contains("CLOCK_MONOTONIC jumps by +86400.000 s and CLOCK_BOOTTIME by +1.000 s"), "{w}");
        let mut calls = Vec::new();
        let r: Result<(), CkError> = around_children(&mut k, &plan, &mut |w| panic!("{w}"), || {
            calls.push("create");
            Ok(())
        });
        r.unwrap();
        assert_eq!(calls, ["create"]);
        assert!(k.calls.is_empty(), "{:?}", k.calls);
    }

    /// The namespace exists, with its offsets, before the children are
    /// created, and ckrun is back in its own namespace after (also when
    /// creating them failed).
    #[test]
    fn children_are_born_in_the_namespace_and_ckrun_goes_back() {
        for fails in [false, true] {
            let mut k = Recording::default();
            let plan = ClockPlan {
                saved: Clocks::default(),
                machine: Clocks::default(),
                offsets: Some(Offsets { monotonic_ns: 5, boottime_ns: 6 }),
            };
            let r: Result<(), CkError> = around_children(&mut k, &plan, &mut |w| panic!("{w}"), || {
                if fails {
                    Err(CkError::Environment("PID 7 in use".into()))
                } else {
                    Ok(())
                }
            });
            assert_eq!(r.is_err(), fails);
            assert_eq!(
                k.calls,
                vec![
                    Call::OpenTimeNamespace(100),
                    Call::UnshareTime,
                    Call::SetTimeOffsets(Offsets { monotonic_ns: 5, boottime_ns: 6 }),
                    Call::SetTimeNamespace(100),
                    Call::Close(100),
                ]
            );
        }
    }

    /// A kernel that refuses the namespace (a container's seccomp filter):
    /// the restart goes on in ckrun's namespace, saying the clocks jump.
    #[test]
    fn a_refused_namespace_is_a_warning() {
        let mut k = Recording::default();
        k.refuse_time_namespace = true;
        let plan = ClockPlan {
            saved: Clocks { monotonic_ns: NS, boottime_ns: NS },
            machine: Clocks { monotonic_ns: DAY + NS, boottime_ns: DAY + NS },
            offsets: Some(Offsets { monotonic_ns: -DAY, boottime_ns: -DAY }),
        };
        let mut warnings = Vec::new();
        let mut created = false;
        let r: Result<(), CkError> = around_children(&mut k, &plan, &mut |w| warnings.push(w), || {
            created = true;
            Ok(())
        });
        r.unwrap();
        assert!(created);
        assert_eq!(k.calls, vec![Call::OpenTimeNamespace(100), Call::Close(100)]);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("cannot create a time namespace (Operation not permitted")
                && warnings[0].contains("CLOCK_MONOTONIC jumps by +86400.000 s"),
            "{warnings:?}"
        );
    }

    #[test]
    fn clocks_a_namespace_refuses_are_unusable() {
        assert!(Clocks { monotonic_ns: 0, boottime_ns: DAY }.usable());
        assert!(!Clocks { monotonic_ns: -1, boottime_ns: DAY }.usable());
        assert!(!Clocks { monotonic_ns: 0, boottime_ns: i64::MAX }.usable());
    }

    /// This process's own view, through /proc: as `now` reads it.
    #[test]
    fn a_process_in_ckruns_namespace_sees_ckruns_clocks() {
        let ours = now();
        let me = std::process::id() as i32;
        assert_eq!(seen_by(me, ours).unwrap(), ours);
    }
}
