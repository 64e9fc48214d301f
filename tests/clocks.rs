//! Clocks continue across a restart (issue 12): `examples/clocks.c` sleeps
//! to absolute CLOCK_MONOTONIC deadlines and checks, every tick, that
//! CLOCK_MONOTONIC, CLOCK_BOOTTIME, _RAW and _COARSE moved forward by less
//! than 120 s and that its vDSO agrees with the kernel; it prints `clocks:
//! FAIL ...` and exits 3 otherwise. It is checkpointed, killed and
//! restarted on "another machine" whose clocks are elsewhere: `ckrun
//! --restart` runs inside `unshare --time --fork --monotonic=S
//! --boottime=S` (util-linux, as root), first with S = +1 day (a machine
//! that has run longer), then, from an image taken of the restored program
//! (already in a time namespace), with S negative (one booted more
//! recently). The output must be the bare run's.
//!
//! Root restarts here and in a new PID namespace (the original still
//! runs), and as `nobody` (a user namespace of ckrun's own).

use std::ffi::OsString;
use std::fs;
use std::process::{Command, Stdio};

use ckrun_suite::{
    assert_same_output, can_switch_users, ckrun_bin, open_to_everyone, Ckrun, Program, SignalTarget, TestDir, NOBODY,
    TIMEOUT,
};

const DAY: i64 = 86_400;
/// Ticks to let pass after a checkpoint before the SIGKILL.
const RUN_ON: u64 = 5;
/// The program's ticks (20 ms each).
const TICKS: &str = "250";

/// The command that runs the rest in a new time namespace whose clocks are
/// `secs` off this one's.
fn another_machine(secs: i64) -> Vec<String> {
    let s = format!("{secs:+}");
    vec!["unshare".into(), "--time".into(), "--fork".into(), format!("--monotonic={s}"), format!("--boottime={s}")]
}

/// An offset for a machine booted more recently than this one: back by
/// half of this machine's uptime (at most a day), far more than the
/// program's step bound only if the machine has been up long enough.
fn booted_later() -> Option<i64> {
    let up: f64 = fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
    let back = ((up / 2.0) as i64).min(DAY);
    (back > 130).then_some(-back)
}

fn root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let is = unsafe { libc::geteuid() } == 0;
    if !is {
        eprintln!("{test}: SKIPPED: util-linux unshare --time needs root");
    }
    is
}

fn with<'a>(prefix: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    prefix.iter().map(String::as_str).chain(more.iter().copied()).collect()
}

/// `ckrun --restart IMAGE --dry-run` through `prefix`: its stdout.
fn dry_run(prefix: &[String], image: &std::path::Path, cwd: &std::path::Path) -> String {
    let mut args: Vec<OsString> = prefix[1..].iter().map(OsString::from).collect();
    args.extend([ckrun_bin().into_os_string(), "--restart".into(), image.into(), "--dry-run".into()]);
    let out = Command::new(&prefix[0]).args(&args).current_dir(cwd).stdin(Stdio::null()).output().expect("unshare");
    assert!(out.status.success(), "dry run: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checkpoint, kill, restart on a machine a day ahead, checkpoint, kill,
/// restart on one behind; `via` runs each ckrun (as `nobody`, say).
fn two_machines(test: &str, via: &[&str], in_pid_namespace: bool) {
    let Some(behind) = booted_later() else {
        eprintln!("{test}: SKIPPED: this machine has not been up long enough to play one booted later");
        return;
    };
    let dir = TestDir::new(test);
    let prog = Program::c("clocks");
    let reference = prog.run_bare(&[TICKS], &dir.bare);
    assert_eq!(reference.code, 0, "bare run: {}", String::from_utf8_lossy(&reference.stdout));
    if !via.is_empty() {
        open_to_everyone(&dir.root);
        open_to_everyone(&dir.work);
        open_to_everyone(&dir.img);
    }

    let mut original = Ckrun::launch_via(via, &prog, &[TICKS], &dir.work, &dir.img, &[]);
    if !via.is_empty() {
        open_to_everyone(&dir.work);
    }
    original.wait_for_tick(20);
    let img1 = original.checkpoint(TIMEOUT);
    if !in_pid_namespace {
        original.kill9();
    }

    let ahead = another_machine(DAY);
    let plan = dry_run(&ahead, &img1, &dir.root);
    assert!(plan.contains("clocks: a new time namespace, offsets CLOCK_MONOTONIC"), "{plan}");
    let mut job = Ckrun::restart_via(&with(&ahead, via), &img1, &dir.work, &[]);
    if in_pid_namespace {
        // The original, still running, is killed once the restored program
        // exists (its ticks are in the same out.txt).
        job.program_pid();
        assert!(job.stderr().contains("restarting in a new"), "{}", job.diagnostics());
        original.kill9();
    }
    let at = job.last_tick().unwrap_or(0);
    job.wait_for_tick(at + 10);
    assert!(!job.stderr().contains("warning"), "{}", job.diagnostics());
    if !via.is_empty() {
        assert!(job.stderr().contains("new user and PID namespace"), "{}", job.diagnostics());
    }
    // The program runs in a time namespace of its own, not in the one
    // ckrun was started in (unshare's children's).
    let pid = job.program_pid();
    let program_ns = fs::read_link(format!("/proc/{pid}/ns/time")).unwrap();
    let ckruns = fs::read_link(format!("/proc/{}/ns/time_for_children", job.ckrun_pid())).unwrap();
    assert_ne!(program_ns, ckruns, "{}", job.diagnostics());
    // To the program: ckrun runs under unshare, which does not pass signals on.
    let img2 = job.checkpoint_via(SignalTarget::Program, TIMEOUT);
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + RUN_ON);
    job.kill9();

    if !via.is_empty() {
        open_to_everyone(&dir.work);
    }
    let mut job = Ckrun::restart_via(&with(&another_machine(behind), via), &img2, &dir.work, &[]);
    let code = job.wait(TIMEOUT);
    assert_eq!(code, reference.code, "exit code after two restarts\n{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), test);
}

#[test]
fn clocks_continue_on_a_machine_a_day_ahead_then_on_one_booted_later() {
    if root("clocks-here") {
        two_machines("clocks-here", &[], false);
    }
}

#[test]
fn clocks_continue_in_a_new_pid_namespace() {
    if root("clocks-pidns") {
        two_machines("clocks-pidns", &[], true);
    }
}

#[test]
fn clocks_continue_without_root() {
    if can_switch_users("clocks-rootless") {
        two_machines("clocks-rootless", &NOBODY, false);
    }
}
