//! ckrun without privileges: launch, checkpoint, kill and restart as an
//! ordinary user (`nobody`). A restart then happens in a user and PID
//! namespace of ckrun's own, where it may choose PIDs; the program runs as
//! the same user, with no capabilities.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use ckrun_suite::{assert_same_output, ns_pid, Ckrun, Program, TestDir, TIMEOUT};

/// `nobody`, with no supplementary groups.
const NOBODY: [&str; 4] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];

/// The test's directories, writable by `nobody`.
fn open_to_everyone(dir: &TestDir) {
    for d in [&dir.root, &dir.work, &dir.img] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
    }
}

/// The files the harness (root) made for the program (its stdout, its
/// stderr), writable by `nobody`, who must reopen them at a restart.
fn open_files_to_everyone(dir: &TestDir) {
    for e in fs::read_dir(&dir.work).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            fs::set_permissions(e.path(), fs::Permissions::from_mode(0o666)).unwrap();
        }
    }
}

/// The spine cycle as `nobody`: checkpoint, kill, restart, checkpoint,
/// kill, restart to the end; the output must be the bare run's.
fn cycle(test: &str, prog: Program, args: &[&str]) {
    let dir = TestDir::new(test);
    open_to_everyone(&dir);
    let reference = prog.run_bare(args, &dir.bare);

    let mut job = Ckrun::launch_via(&NOBODY, &prog, args, &dir.work, &dir.img, &[]);
    open_files_to_everyone(&dir);
    job.wait_for_tick(20);
    let img1 = job.checkpoint(TIMEOUT);
    job.kill9();

    open_files_to_everyone(&dir);
    let mut job = Ckrun::restart_via(&NOBODY, &img1, &dir.work, &[]);
    let at = job.last_tick().unwrap_or(0);
    job.wait_for_tick(at + 10);
    assert!(job.stderr().contains("new user and PID namespace"), "{}", job.diagnostics());
    // The program runs as nobody, with no capabilities left, and with its
    // own pid inside the namespace.
    let pid = job.program_pid();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| status.lines().find(|l| l.starts_with(k)).unwrap_or_default().to_string();
    assert!(field("Uid:").contains("65534"), "{}", field("Uid:"));
    assert!(field("CapEff:").ends_with("0000000000000000"), "{}", field("CapEff:"));
    assert!(ns_pid(pid).is_some());
    // The namespace (in the user's own user namespace) hands out IDs up to
    // this machine's pid_max, no higher.
    assert!(!job.stderr().contains("pid_max"), "{}", job.diagnostics());
    let inside = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-p", "-m", "cat", "/proc/sys/kernel/pid_max"])
        .output()
        .expect("nsenter");
    let here = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap();
    assert_eq!(String::from_utf8_lossy(&inside.stdout).trim(), here.trim(), "pid_max in the namespace: {inside:?}");
    let img2 = job.checkpoint(TIMEOUT);
    job.kill9();

    open_files_to_everyone(&dir);
    let mut job = Ckrun::restart_via(&NOBODY, &img2, &dir.work, &[]);
    assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), test);
}

#[test]
fn unprivileged_checkpoint_kill_restart_twice() {
    cycle("rootless-counter", Program::c("counter"), &[]);
}

/// Mappings of a deleted file and of a memfd: without privileges
/// /proc/PID/map_files is closed, so what the mappings show is saved.
#[test]
fn unprivileged_deleted_and_memfd_mappings() {
    cycle("rootless-deleted", Program::c("fd_deleted"), &["mmap", "memfd"]);
}
