//! The batch-job workflow (issue 12): periodic checkpoints kept across
//! restarts (`--interval`), retention (`--keep`), checkpoint-and-stop
//! (`--stop-signal`, exit 85; 86 when the checkpoint fails) and
//! start-or-resume (`--resume`, falling back past a damaged newest image).
//! Every run ends with the bare run's output. Synchronised on images
//! appearing and on the program's output, never on sleeps.

use ckrun_suite::{assert_same_output, list_images, sys, Ckrun, Program, TestDir, POLL, TIMEOUT};
use std::path::PathBuf;
use std::time::Instant;

fn wait_until(what: &str, job: &mut Ckrun, mut cond: impl FnMut(&mut Ckrun) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond(job) {
        assert!(Instant::now() < deadline, "{what} within {TIMEOUT:?}\n{}", job.diagnostics());
        std::thread::sleep(POLL);
    }
}

/// The number N of an image NAME.PID.N.ckimg.
fn number(p: &std::path::Path) -> u32 {
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    name.trim_end_matches(".ckimg").rsplit('.').next().unwrap().parse().unwrap()
}

#[test]
fn interval_checkpoints_go_on_after_a_restart() {
    let dir = TestDir::new("batch-interval");
    let prog = Program::c("counter");
    let reference = prog.run_bare(&["400"], &dir.bare);
    let mut job = Ckrun::launch(&prog, &["400"], &dir.work, &dir.img, &["--interval", "500ms"]);
    wait_until("two periodic images", &mut job, |_| list_images(&dir.img).len() >= 2);
    job.kill9();
    let newest = list_images(&dir.img).pop().unwrap();
    let n = number(&newest);
    // No trigger is sent: the restarted run keeps the interval it had.
    let mut job = Ckrun::restart(&newest, &dir.work, &[]);
    wait_until("a periodic image after the restart", &mut job, |_| {
        list_images(&dir.img).iter().any(|p| number(p) > n + 1)
    });
    job.kill9();
    let mut job = Ckrun::restart(&list_images(&dir.img).pop().unwrap(), &dir.work, &[]);
    assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "batch-interval");
}

#[test]
fn keep_leaves_the_newest_images_only() {
    let dir = TestDir::new("batch-keep");
    let prog = Program::c("counter");
    let reference = prog.run_bare(&["300"], &dir.bare);
    let mut job = Ckrun::launch(&prog, &["300"], &dir.work, &dir.img, &["--interval", "300ms", "--keep", "2"]);
    wait_until("five periodic images", &mut job, |_| list_images(&dir.img).iter().any(|p| number(p) >= 5));
    assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "batch-keep");
    let left: Vec<u32> = list_images(&dir.img).iter().map(|p| number(p)).collect();
    let newest = *left.iter().max().unwrap();
    assert_eq!(left, vec![newest - 1, newest], "the two newest are kept\n{}", job.diagnostics());
    assert!(job.stderr().contains("(--keep 2)"), "{}", job.diagnostics());
}

/// A batch script's command line: resume if there is an image, checkpoint
/// and stop on USR1.
const STOP_AND_RESUME: [&str; 3] = ["--resume", "--stop-signal", "USR1"];

/// `counter 300` under [`STOP_AND_RESUME`], stopped by USR1 at tick 30 (exit 85).
fn run_until_stopped(prog: &Program, dir: &TestDir) -> Ckrun {
    let mut job = Ckrun::launch_appending(prog, &["300"], &dir.work, &dir.img, &STOP_AND_RESUME);
    job.wait_for_tick(30);
    sys::send_signal(job.ckrun_pid(), sys::SIGUSR1).unwrap();
    assert_eq!(job.wait(TIMEOUT), 85, "checkpointed and stopped\n{}", job.diagnostics());
    job
}

#[test]
fn stop_signal_checkpoints_stops_and_resume_continues() {
    let dir = TestDir::new("batch-stop-resume");
    let prog = Program::c("counter");
    let reference = prog.run_bare(&["300"], &dir.bare);
    // The same command line each time, as in a batch script.
    let flags = STOP_AND_RESUME;
    let mut job = run_until_stopped(&prog, &dir);
    assert_eq!(list_images(&dir.img).len(), 1, "{}", job.diagnostics());
    let mut job = Ckrun::launch_appending(&prog, &["300"], &dir.work, &dir.img, &flags);
    wait_until("the resume", &mut job, |j| j.stderr().contains("ckrun: resuming from "));
    let at = job.last_tick().unwrap_or(0);
    job.wait_for_tick(at + 20);
    sys::send_signal(job.ckrun_pid(), sys::SIGUSR1).unwrap();
    assert_eq!(job.wait(TIMEOUT), 85, "checkpointed and stopped again\n{}", job.diagnostics());
    let mut job = Ckrun::launch_appending(&prog, &["300"], &dir.work, &dir.img, &flags);
    assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());
    assert!(job.stderr().contains("resuming from"), "{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "batch-stop-resume");
}

#[test]
fn a_failed_checkpoint_at_the_stop_signal_exits_86_without_an_image() {
    let dir = TestDir::new("batch-stop-failed");
    let prog = Program::c("counter");
    let mut job = Ckrun::launch_via(
        &["env", "CKRUN_TEST_FAIL=create"],
        &prog,
        &["300"],
        &dir.work,
        &dir.img,
        &["--stop-signal", "USR1"],
    );
    job.wait_for_tick(20);
    sys::send_signal(job.ckrun_pid(), sys::SIGUSR1).unwrap();
    assert_eq!(job.wait(TIMEOUT), 86, "{}", job.diagnostics());
    assert!(list_images(&dir.img).is_empty());
    assert!(job.stderr().contains("stopped without a new checkpoint"), "{}", job.diagnostics());
}

#[test]
fn resume_falls_back_past_a_damaged_newest_image_and_starts_without_one() {
    let dir = TestDir::new("batch-resume-damaged");
    let prog = Program::c("counter");
    let reference = prog.run_bare(&["300"], &dir.bare);
    // No image yet: --resume starts the program.
    let mut job = Ckrun::launch_appending(&prog, &["300"], &dir.work, &dir.img, &["--resume"]);
    job.wait_for_tick(30);
    assert!(!job.stderr().contains("resuming"), "{}", job.diagnostics());
    job.checkpoint(TIMEOUT);
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + 10);
    let second: PathBuf = job.checkpoint(TIMEOUT);
    job.kill9();
    // The newest image loses its end (a copy cut short, a full disk).
    let len = std::fs::metadata(&second).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&second).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let mut job = Ckrun::launch_appending(&prog, &["300"], &dir.work, &dir.img, &["--resume"]);
    assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());
    let said = job.stderr();
    assert!(said.contains("trying an older image") && said.contains(".1.ckimg"), "{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "batch-resume-damaged");
}

#[test]
fn what_others_append_to_the_output_after_a_stop_stays() {
    let dir = TestDir::new("batch-stop-others");
    let prog = Program::c("counter");
    let reference = prog.run_bare(&["300"], &dir.bare);
    let flags = STOP_AND_RESUME;
    let mut job = run_until_stopped(&prog, &dir);
    // The program was ended at the checkpoint: its output is the bare
    // run's up to there, not a line more.
    let at_stop = job.output();
    assert_eq!(at_stop[..], reference.stdout[..at_stop.len()], "{}", job.diagnostics());
    // What a batch script and slurmstepd write to the job's output file
    // between the stop and the requeued run.
    let others: &[u8] = b"script: ckrun exited 85\nslurmstepd: *** JOB 7 ON node CANCELLED DUE TO JOB REQUEUE ***\n";
    let mut f = std::fs::OpenOptions::new().append(true).open(dir.work.join(ckrun_suite::OUT_FILE)).unwrap();
    std::io::Write::write_all(&mut f, others).unwrap();
    drop(f);
    let mut job = Ckrun::launch_appending(&prog, &["300"], &dir.work, &dir.img, &flags);
    assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());
    assert!(job.stderr().contains("resuming from"), "{}", job.diagnostics());
    let mut expected = at_stop.clone();
    expected.extend_from_slice(others);
    expected.extend_from_slice(&reference.stdout[at_stop.len()..]);
    assert_same_output(&expected, &job.output(), "batch-stop-others");
    // The mark is taken by the restart: a second restart from the same
    // image cuts back what the first wrote, as always.
    assert!(!std::fs::read_dir(&dir.img).unwrap().flatten().any(|e| e.path().extension() == Some("stopped".as_ref())));
}
