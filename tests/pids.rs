//! Issue 10, item 5: PIDs and TIDs. A restart chooses where to restore
//! from every ID the image needs: here when all are free and below this
//! machine's pid_max; after a short wait when only the killed job's
//! zombies hold them; else in a new PID namespace, whose pid_max ckrun
//! sets to this machine's, so that threads made there get TIDs a later
//! restart can give back outside a namespace.
//!
//! The namespace tests push the namespace's PID counter to the top of its
//! range by writing its `ns_last_pid` (nsenter into it), instead of making
//! 32768 threads first: the next thread's TID is what a long-running
//! program would get there after that many.
//!
//! Needs the product built: `cargo build --workspace` first; the namespace
//! tests need root (CAP_SYS_ADMIN to enter the namespace and write its
//! sysctls) and nsenter (util-linux).

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Instant;

use ckrun_suite::{
    assert_same_output, complete_lines, ns_pid, run_ckrun, sys, BareRun, Ckrun, Program, TestDir, POLL, TIMEOUT,
};

/// Ticks to let pass after a checkpoint before the SIGKILL.
const RUN_ON: u64 = 5;

fn reference(prog: &Program, dir: &Path) -> BareRun {
    let run = prog.run_bare(&[], dir);
    assert!(run.stderr.is_empty(), "bare run of {} wrote to stderr: {run:?}", prog.name());
    let last = complete_lines(&run.stdout).last().unwrap_or_default().to_string();
    assert!(last.starts_with("done "), "bare run of {}: last line {last:?}", prog.name());
    run
}

fn host_pid_max() -> u32 {
    fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap()
}

/// Waits for `ckrun: restarted ...` on the job's stderr.
fn wait_restarted(job: &mut Ckrun) {
    let deadline = Instant::now() + TIMEOUT;
    while !job.stderr().lines().any(|l| l.starts_with("ckrun: restarted ")) {
        if !job.is_running() || Instant::now() >= deadline {
            panic!("no `ckrun: restarted ...`\n{}", job.diagnostics());
        }
        thread::sleep(POLL);
    }
}

/// Waits until the job's stderr holds `what`.
fn wait_stderr(job: &mut Ckrun, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !job.stderr().contains(what) {
        if !job.is_running() || Instant::now() >= deadline {
            panic!("no {what:?} on ckrun's stderr\n{}", job.diagnostics());
        }
        thread::sleep(POLL);
    }
}

/// Every thread of process `pid` (a host pid), by its TID in its own
/// PID namespace.
fn ns_tids(pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return vec![] };
    tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|tid| {
            let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
            status.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().last()?.parse().ok()
        })
        .collect()
}

/// Runs `script` with sh inside the PID and mount namespaces of process
/// `pid` (its /proc is that namespace's).
fn in_namespace_of(pid: i32, script: &str) {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-p", "-m", "sh", "-c", script])
        .output()
        .expect("nsenter (util-linux) is needed");
    assert!(out.status.success(), "nsenter -t {pid} sh -c {script:?}: {out:?}");
}

/// Every TID (and PID) an image holds, from `--inspect --json`.
fn image_ids(image: &Path, cwd: &Path) -> Vec<i32> {
    let out = run_ckrun(&[OsStr::new("--inspect"), image.as_os_str(), OsStr::new("--json")], cwd, TIMEOUT);
    assert_eq!(out.code, 0, "--inspect --json {}: {out:#?}", image.display());
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("--inspect --json is JSON");
    let mut ids = Vec::new();
    for p in json["processes"].as_array().expect("processes") {
        ids.push(p["pid"].as_i64().expect("pid") as i32);
        for t in p["threads"].as_array().expect("threads") {
            ids.push(t["tid"].as_i64().expect("tid") as i32);
        }
    }
    ids
}

/// Whether some process or thread holds `id` on this machine.
fn taken_here(id: i32) -> bool {
    Path::new(&format!("/proc/{id}")).exists()
}

/// The killed job's zombie holds the image's PID when the restart starts:
/// ckrun says it waits, and once the zombie is reaped restores the program
/// here with its PID (no PID namespace). Two rounds; the output must be a
/// bare run's.
#[test]
fn a_restart_waits_for_the_killed_jobs_zombie() {
    let dir = TestDir::new("pids-zombie");
    let prog = Program::c("counter");
    let bare = reference(&prog, &dir.bare);

    let mut job = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &[]);
    job.wait_for_tick(20);
    let mut image = job.checkpoint(TIMEOUT);
    let mut at = job.last_tick().unwrap();
    job.wait_for_tick(at + RUN_ON);
    for round in 1..=2 {
        let zombie = job.kill9_leaving_zombie();
        let killed_at = job.last_tick().unwrap();
        drop(job);
        if round == 1 {
            let plan =
                run_ckrun(&[OsStr::new("--restart"), image.as_os_str(), OsStr::new("--dry-run")], &dir.root, TIMEOUT);
            let first = plan.stdout.lines().next().unwrap_or_default().to_string();
            let want = format!("restore here, after waiting (at most 5 s) for exiting processes holding PID {zombie}");
            assert_eq!(first, want, "--dry-run with the zombie there: {plan:#?}");
        }
        job = Ckrun::restart(&image, &dir.work, &[]);
        wait_stderr(&mut job, "held by exiting processes");
        assert!(taken_here(zombie), "the zombie went before the restart looked");
        // The killed job's new parent (this process) gets to it.
        let deadline = Instant::now() + TIMEOUT;
        while !sys::try_reap(zombie) {
            assert!(Instant::now() < deadline, "cannot reap zombie {zombie}");
            thread::sleep(POLL);
        }
        wait_restarted(&mut job);
        let stderr = job.stderr();
        assert!(stderr.contains(&format!("PID {zombie} free now")), "round {round}: {stderr}");
        assert!(!stderr.contains("namespace"), "round {round}: restarted in a namespace: {stderr}");
        let pid = job.program_pid();
        assert_eq!((pid, ns_pid(pid)), (zombie, Some(zombie)), "round {round}: not restored here with its PID");
        job.wait_for_tick(killed_at + 5);
        if round == 1 {
            image = job.checkpoint(TIMEOUT);
            at = job.last_tick().unwrap();
            job.wait_for_tick(at + RUN_ON);
        }
    }
    assert_eq!(job.wait(TIMEOUT), bare.code, "exit code\n{}", job.diagnostics());
    assert_same_output(&bare.stdout, &job.output(), "counter after two restarts past zombies");
}

/// A restart in a new PID namespace (the original still runs), in which
/// the program's next threads come after the top of the namespace's range
/// (its ns_last_pid pushed there): with the namespace's pid_max set to
/// this machine's, their TIDs wrap below it, so the image taken there
/// restarts here, outside any namespace, once the original is gone.
#[test]
fn threads_made_in_a_pid_namespace_restart_outside_one() {
    let dir = TestDir::new("pids-ns-tids");
    let prog = Program::c("pid_relay");
    let bare = reference(&prog, &dir.bare);
    let limit = host_pid_max();

    let mut original = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &[]);
    original.wait_for_tick(20);
    let img1 = original.checkpoint(TIMEOUT);
    let mut restored = Ckrun::restart(&img1, &dir.work, &[]);
    wait_restarted(&mut restored);
    assert!(restored.stderr().contains("in use here: restarting in a new PID namespace"), "{}", restored.diagnostics());
    original.kill9();

    let pid = restored.program_pid();
    in_namespace_of(pid, &format!("cat /proc/sys/kernel/pid_max > {}/ns_pid_max", dir.root.display()));
    let ns_max: u32 = fs::read_to_string(dir.root.join("ns_pid_max")).unwrap().trim().parse().unwrap();
    assert_eq!(ns_max, limit, "the new PID namespace's pid_max");
    in_namespace_of(pid, &format!("echo {} > /proc/sys/kernel/ns_last_pid", limit - 1));
    let at = restored.last_tick().unwrap();
    // Each tick makes a thread: a few ticks on, every live thread was
    // made after the push.
    restored.wait_for_tick(at + 3);
    for tid in ns_tids(pid) {
        assert!((tid as u32) < limit, "thread {tid} in the namespace: at or above this machine's pid_max {limit}");
    }
    let img2 = restored.checkpoint(TIMEOUT);
    let ids = image_ids(&img2, &dir.root);
    assert!(ids.iter().all(|&t| (t as u32) < limit), "image TIDs {ids:?}, pid_max {limit}");
    let at = restored.last_tick().unwrap();
    restored.wait_for_tick(at + RUN_ON);
    restored.kill9();

    let mut job = Ckrun::restart(&img2, &dir.work, &[]);
    wait_restarted(&mut job);
    let busy: Vec<i32> = ids.iter().copied().filter(|&i| taken_here(i) && ns_pid(i) != Some(i)).collect();
    if busy.is_empty() {
        assert!(!job.stderr().contains("namespace"), "restarted in a namespace\n{}", job.diagnostics());
    }
    assert!(!job.stderr().contains("pid_max"), "{}", job.diagnostics());
    assert_eq!(job.wait(TIMEOUT), bare.code, "exit code\n{}", job.diagnostics());
    assert_same_output(&bare.stdout, &job.output(), "pid_relay after a restart in a namespace and one outside");
}

/// An image whose threads have TIDs above this machine's pid_max (taken in
/// a namespace with the kernel's whole range, as a namespace made without
/// ckrun's limit has): `--dry-run` and `--no-pidns` say so, and a restart
/// goes to a new PID namespace with room for them, where it runs to the
/// end.
#[test]
fn an_image_with_tids_above_pid_max_restarts_in_a_namespace() {
    let dir = TestDir::new("pids-above-max");
    let prog = Program::c("pid_relay");
    let bare = reference(&prog, &dir.bare);
    let limit = host_pid_max();
    // The kernel's largest pid_max (PID_MAX_LIMIT on 64-bit).
    let big = 4_194_304u32;
    if limit >= big - 2000 {
        eprintln!("this machine's pid_max is the kernel's maximum: no TID can be above it; nothing to test");
        return;
    }

    let mut original = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &[]);
    original.wait_for_tick(20);
    let img1 = original.checkpoint(TIMEOUT);
    let mut restored = Ckrun::restart(&img1, &dir.work, &[]);
    wait_restarted(&mut restored);
    original.kill9();
    let pid = restored.program_pid();
    in_namespace_of(
        pid,
        &format!("echo {big} > /proc/sys/kernel/pid_max; echo {} > /proc/sys/kernel/ns_last_pid", limit + 1000),
    );
    let deadline = Instant::now() + TIMEOUT;
    while !ns_tids(pid).iter().any(|&t| t as u32 > limit) {
        assert!(
            restored.is_running() && Instant::now() < deadline,
            "no thread above {limit}\n{}",
            restored.diagnostics()
        );
        thread::sleep(POLL);
    }
    let img2 = restored.checkpoint(TIMEOUT);
    let high: Vec<i32> = image_ids(&img2, &dir.root).into_iter().filter(|&t| t as u32 >= limit).collect();
    assert!(!high.is_empty(), "the image has no TID above {limit}");
    let at = restored.last_tick().unwrap();
    restored.wait_for_tick(at + RUN_ON);
    restored.kill9();

    let plan = run_ckrun(&[OsStr::new("--restart"), img2.as_os_str(), OsStr::new("--dry-run")], &dir.root, TIMEOUT);
    assert_eq!(plan.code, 0, "{plan:#?}");
    let first = plan.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("restore a new PID namespace with pid_max ")
            && first.contains("at or above this machine's pid_max"),
        "--dry-run: {first:?}"
    );
    let refused = run_ckrun(&[OsStr::new("--restart"), img2.as_os_str(), OsStr::new("--no-pidns")], &dir.root, TIMEOUT);
    refused.assert_error(5, Some(&format!("at or above this machine's pid_max ({limit})")));
    assert!(refused.stderr.contains(&high[0].to_string()), "{refused:#?}");

    let mut job = Ckrun::restart(&img2, &dir.work, &[]);
    wait_restarted(&mut job);
    assert!(
        job.stderr().contains(&format!("at or above this machine's pid_max ({limit}; the image was taken in a PID namespace): restarting in a new PID namespace")),
        "{}",
        job.diagnostics()
    );
    assert_eq!(job.wait(TIMEOUT), bare.code, "exit code\n{}", job.diagnostics());
    assert_same_output(&bare.stdout, &job.output(), "pid_relay restarted with TIDs above pid_max");
}
