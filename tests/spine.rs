//! The spine of ckrun's end-to-end tests: checkpoint a running program,
//! kill it, restart it from the image, and check that it ends exactly as an
//! uninterrupted run does: same stdout bytes, same files, same exit code.
//!
//! Needs the product built: `cargo build --workspace` first (the harness
//! panics with that hint otherwise).

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use ckrun_suite::{
    assert_same_files, assert_same_output, list_images, run_ckrun, Ckrun, ImageName, Program, SignalTarget, TestDir,
    TIMEOUT,
};

/// Ticks to let pass after a checkpoint before the SIGKILL, so that the
/// killed run has written output past the checkpoint, which the restored
/// run must then rewrite identically.
const RUN_ON: u64 = 5;

/// The full cycle, twice: launch, wait for tick 30, checkpoint (image 1),
/// run on, kill -9, restart from image 1, wait past what the killed run had
/// printed, checkpoint again (image 2), run on, kill -9, restart from
/// image 2, run to completion; compare with a bare run.
fn spine(test: &str, prog: Program, via: SignalTarget) {
    let dir = TestDir::new(test);
    let reference = prog.run_bare(&[], &dir.bare);

    let mut job = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &[]);
    job.wait_for_tick(30);
    let img1 = job.checkpoint_via(via, TIMEOUT);
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + RUN_ON);
    job.kill9();
    let killed_at = job.last_tick().unwrap();

    let mut job = Ckrun::restart(&img1, &dir.work, &[]);
    // Lines up to `killed_at` are already in out.txt: only a later tick
    // proves the restored program runs.
    job.wait_for_tick(killed_at + 10);
    let img2 = job.checkpoint_via(via, TIMEOUT);
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + RUN_ON);
    job.kill9();

    let name1 = ImageName::parse(&img1).unwrap();
    let name2 = ImageName::parse(&img2).unwrap();
    assert_eq!(name2.pid, name1.pid, "a restart must keep the pid: {img1:?} then {img2:?}");
    assert_eq!((name1.n, name2.n), (1, 2), "image numbers continue across restarts");

    let mut job = Ckrun::restart(&img2, &dir.work, &[]);
    let code = job.wait(TIMEOUT);
    assert_eq!(code, reference.code, "exit code after restart\n{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), test);
    assert_same_files(&dir.bare, &dir.work);
    // The program's own SIGUSR2s (examples/signals.c raises some) must not
    // have produced images.
    assert_eq!(list_images(&dir.img), vec![img1, img2], "only the requested images");
}

#[test]
fn counter_checkpoint_kill_restart_twice() {
    spine("spine-counter", Program::c("counter"), SignalTarget::Ckrun);
}

#[test]
fn signals_checkpoint_kill_restart_twice() {
    spine("spine-signals", Program::c("signals"), SignalTarget::Ckrun);
}

#[test]
fn python_checkpoint_kill_restart_twice() {
    spine("spine-python", Program::python("counter"), SignalTarget::Ckrun);
}

/// The trigger may go to the program itself rather than to ckrun, both on
/// the first run and on a restored one.
#[test]
fn checkpoint_by_signalling_the_program() {
    spine("spine-program-pid", Program::c("counter"), SignalTarget::Program);
}

/// `--restart DIR` takes the newest image of DIR. The older image is
/// truncated, so restoring from it instead would fail.
#[test]
fn restart_from_directory_takes_newest_image() {
    let dir = TestDir::new("spine-restart-dir");
    let prog = Program::c("counter");
    let reference = prog.run_bare(&[], &dir.bare);

    // Self-contained images: an incremental second image would rightly
    // refuse the damaged first one it takes pages from (tests/incremental.rs).
    let mut job = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &["--full"]);
    job.wait_for_tick(30);
    let img1 = job.checkpoint(TIMEOUT);
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + 20);
    let img2 = job.checkpoint(TIMEOUT);
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + RUN_ON);
    job.kill9();
    // Damage image 1 but keep its mtime, so that it stays the older image
    // whether "newest" is judged by sequence number or by mtime.
    truncate_keeping_mtime(&img1, 100);

    let mut job = Ckrun::restart(&dir.img, &dir.work, &[]);
    let code = job.wait(TIMEOUT);
    assert_eq!(code, reference.code, "exit code\n{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "restart from dir");
    assert_same_files(&dir.bare, &dir.work);
    assert_eq!(list_images(&dir.img), vec![img1, img2]);
}

/// Images go to disk with O_DIRECT where the file system takes it, and
/// through the page cache where it does not (tmpfs refused O_DIRECT until
/// recent kernels): either way, checkpointed twice into a tmpfs (here
/// /dev/shm), the second image restarts correctly. (Both write paths are
/// also unit-tested in `image::writer`.)
#[test]
fn images_on_a_file_system_without_direct_io() {
    let dir = TestDir::new("spine-tmpfs-images");
    let shm = Path::new("/dev/shm").join(format!("ckrun-e2e-{}", std::process::id()));
    fs::create_dir_all(&shm).unwrap_or_else(|e| panic!("create {}: {e}", shm.display()));
    let prog = Program::c("counter");
    let reference = prog.run_bare(&[], &dir.bare);

    let mut job = Ckrun::launch(&prog, &[], &dir.work, &shm, &[]);
    job.wait_for_tick(30);
    job.checkpoint(TIMEOUT);
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + 10);
    let img = job.checkpoint(TIMEOUT);
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + RUN_ON);
    job.kill9();

    let mut job = Ckrun::restart(&img, &dir.work, &[]);
    let code = job.wait(TIMEOUT);
    let _ = fs::remove_dir_all(&shm);
    assert_eq!(code, reference.code, "exit code\n{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "images on tmpfs");
    assert_same_files(&dir.bare, &dir.work);
}

/// `--no-fork`: the program stays stopped while its memory is copied
/// (instead of a copy-on-write snapshot); the result must be the same.
#[test]
fn no_fork_checkpoint_kill_restart() {
    let dir = TestDir::new("spine-no-fork");
    let prog = Program::c("counter");
    let reference = prog.run_bare(&[], &dir.bare);

    let mut job = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &["--no-fork"]);
    job.wait_for_tick(30);
    let img = job.checkpoint(TIMEOUT);
    let at = job.last_tick().unwrap();
    job.wait_for_tick(at + RUN_ON);
    job.kill9();

    let mut job = Ckrun::restart(&img, &dir.work, &[]);
    let code = job.wait(TIMEOUT);
    assert_eq!(code, reference.code, "exit code\n{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "--no-fork");
    assert_same_files(&dir.bare, &dir.work);
}

/// `--inspect IMAGE` describes a good image (mentioning the program's pid)
/// and exits 0; with `--json` its stdout is JSON that holds the pid.
#[test]
fn inspect_describes_an_image() {
    let dir = TestDir::new("spine-inspect");
    let prog = Program::c("counter");
    let mut job = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &[]);
    job.wait_for_tick(10);
    let img = job.checkpoint(TIMEOUT);
    let pid = job.program_pid();
    job.kill9();

    let text = run_ckrun(&[OsStr::new("--inspect"), img.as_os_str()], &dir.root, TIMEOUT);
    assert_eq!(text.code, 0, "{text:#?}");
    assert!(text.stdout.contains(&pid.to_string()), "pid {pid} not mentioned: {text:#?}");

    let args = [OsStr::new("--inspect"), img.as_os_str(), OsStr::new("--json")];
    let json = run_ckrun(&args, &dir.root, TIMEOUT);
    assert_eq!(json.code, 0, "{json:#?}");
    let value: serde_json::Value =
        serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("--inspect --json is not JSON ({e}): {json:#?}"));
    assert!(holds_number(&value, pid.into()), "pid {pid} not in the JSON: {value:#}");
}

/// Whether `value` holds the number `n` anywhere.
fn holds_number(value: &serde_json::Value, n: i64) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(x) => x.as_i64() == Some(n),
        Value::Array(items) => items.iter().any(|v| holds_number(v, n)),
        Value::Object(map) => map.values().any(|v| holds_number(v, n)),
        _ => false,
    }
}

/// Cuts `path` to `len` bytes without changing its modification time.
fn truncate_keeping_mtime(path: &Path, len: u64) {
    let file = fs::OpenOptions::new().write(true).open(path);
    file.and_then(|f| {
        let mtime = f.metadata()?.modified()?;
        f.set_len(len)?;
        f.set_modified(mtime)
    })
    .unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
}

/// `--signal USR1`: SIGUSR1 requests checkpoints, and a restart keeps the
/// setting without being told again.
#[test]
fn trigger_signal_setting_is_kept_across_restarts() {
    let dir = TestDir::new("spine-signal-setting");
    let prog = Program::c("counter");
    let reference = prog.run_bare(&[], &dir.bare);
    let mut job = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &["--signal", "USR1"]);
    job.wait_for_tick(20);
    let img1 = job.checkpoint_with(SignalTarget::Ckrun, ckrun_suite::sys::SIGUSR1, TIMEOUT);
    job.kill9();
    let mut job = Ckrun::restart(&img1, &dir.work, &[]);
    let at = job.last_tick().unwrap_or(0);
    job.wait_for_tick(at + 10);
    let img2 = job.checkpoint_with(SignalTarget::Program, ckrun_suite::sys::SIGUSR1, TIMEOUT);
    job.kill9();
    let mut job = Ckrun::restart(&img2, &dir.work, &[]);
    assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), "signal setting");
}

/// SIGTERM to ckrun reaches the program; ckrun exits as it did: killed by
/// signal 15, so 128 + 15.
#[test]
fn termination_signals_are_forwarded_and_the_status_is_128_plus_n() {
    let dir = TestDir::new("spine-forward-term");
    let mut job = Ckrun::launch(&Program::c("counter"), &[], &dir.work, &dir.img, &[]);
    job.wait_for_tick(5);
    ckrun_suite::sys::send_signal(job.ckrun_pid(), ckrun_suite::sys::SIGTERM).unwrap();
    assert_eq!(job.wait(TIMEOUT), 128 + 15, "{}", job.diagnostics());
}

/// Requests in a burst are merged into checkpoints, never lost in a crash
/// or a hang, and the program ends as it would have.
#[test]
fn a_burst_of_checkpoint_requests_is_coalesced() {
    let dir = TestDir::new("spine-burst");
    let prog = Program::c("counter");
    let reference = prog.run_bare(&[], &dir.bare);
    let mut job = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &[]);
    job.wait_for_tick(10);
    for _ in 0..5 {
        ckrun_suite::sys::send_signal(job.ckrun_pid(), ckrun_suite::sys::SIGUSR2).unwrap();
    }
    assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());
    let images = list_images(&dir.img).len();
    let stderr = job.stderr();
    assert!((1..=5).contains(&images), "{images} images for 5 requests\n{stderr}");
    assert!(!stderr.contains("failed"), "{stderr}");
    assert_same_output(&reference.stdout, &job.output(), "burst");
}
