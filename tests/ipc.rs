//! SysV IPC comes back as SysV IPC (issue 11): `examples/sysv_ipc.c`, a
//! semaphore set and a message queue shared by two processes, and
//! `examples/sysv_shm.c`, shared memory segments shared by two processes
//! (one marked destroyed while attached, one attached read-only, one
//! split by mprotect), through two rounds of checkpoint -> kill -9 ->
//! restart, once with the objects still there (as the killed run left
//! them: the restart gives them the checkpoint's state in place), once
//! with them gone before each restart (as after a reboot: made again with
//! their IDs). `examples/sysv_undo.c`: four processes hold semaphore undo
//! adjustments (SEM_UNDO) across both rounds, one of them a forked child
//! that starts with none, one made by two threads, one partly zeroed by
//! another process's SETVAL, and exit one by one after the last restart;
//! the values printed after each exit must be a bare run's.

use ckrun_suite::{assert_same_output, run_ckrun, Ckrun, Program, TestDir, TIMEOUT};
use std::path::Path;

const RUN_ON: u64 = 5;

/// The SysV IDs an image holds, from `--inspect`: (semaphore sets, queues).
fn sysv_ids(image: &Path, cwd: &Path) -> (Vec<i32>, Vec<i32>) {
    let out = run_ckrun(&[std::ffi::OsStr::new("--inspect"), image.as_os_str()], cwd, TIMEOUT);
    let id_of = |l: &str| l.rsplit_once("(ID ").and_then(|(_, r)| r.trim_end_matches(')').parse().ok());
    let sems = out.stdout.lines().filter(|l| l.contains("SysV semaphore set")).filter_map(id_of).collect();
    let queues = out.stdout.lines().filter(|l| l.contains("SysV message queue")).filter_map(id_of).collect();
    (sems, queues)
}

fn remove(ids: &(Vec<i32>, Vec<i32>)) {
    for &s in &ids.0 {
        // SAFETY: IPC_RMID of the killed job's own semaphore set.
        unsafe { libc::semctl(s, 0, libc::IPC_RMID) };
    }
    for &q in &ids.1 {
        // SAFETY: IPC_RMID of the killed job's own queue.
        unsafe { libc::msgctl(q, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

/// The IDs of the shared memory segments an image holds, from
/// `--inspect`: (marked destroyed, not).
fn segment_ids(image: &Path, cwd: &Path) -> (Vec<i32>, Vec<i32>) {
    let out = run_ckrun(&[std::ffi::OsStr::new("--inspect"), image.as_os_str()], cwd, TIMEOUT);
    let id_of = |l: &str| l.rsplit_once("(ID ").and_then(|(_, r)| r.trim_end_matches(')').parse().ok());
    // Attachments carry no flag the program did not set (the snapshot's
    // own detaching is no MADV_DONTFORK).
    let flagged: Vec<&str> = out.stdout.lines().filter(|l| l.contains("sysv-shm") && l.contains('[')).collect();
    assert!(flagged.is_empty(), "{flagged:?}");
    let lines: Vec<&str> = out.stdout.lines().filter(|l| l.contains("SysV shared memory segment")).collect();
    let destroyed = lines.iter().filter(|l| l.contains("marked destroyed")).filter_map(|l| id_of(l)).collect();
    let live = lines.iter().filter(|l| !l.contains("marked destroyed")).filter_map(|l| id_of(l)).collect();
    (destroyed, live)
}

fn cycle(test: &str, gone: bool) {
    cycle_of("sysv_ipc", test, gone, &|image, root, round| {
        let ids = sysv_ids(image, root);
        assert_eq!((ids.0.len(), ids.1.len()), (1, 1), "round {round}: the image holds the job's set and queue");
        Box::new(move || remove(&ids))
    });
}

/// A restart from an image whose objects `check` checks (it returns
/// what removes them, for `gone`): two rounds, the output as a bare run's.
type Check = dyn Fn(&Path, &Path, u32) -> Box<dyn FnOnce()>;

fn cycle_of(program: &str, test: &str, gone: bool, check: &Check) {
    let dir = TestDir::new(test);
    let prog = Program::c(program);
    let reference = prog.run_bare(&[], &dir.bare);
    assert_eq!(reference.code, 0, "bare run: {}", String::from_utf8_lossy(&reference.stderr));

    let mut job = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &[]);
    job.wait_for_tick(30);
    let mut image = job.checkpoint(TIMEOUT);
    for round in 1..=2 {
        let remove = check(&image, &dir.root, round);
        let at = job.last_tick().unwrap();
        job.wait_for_tick(at + RUN_ON);
        job.kill9();
        if gone {
            remove();
        }
        job = Ckrun::restart(&image, &dir.work, &[]);
        if round == 1 {
            let killed_at = job.last_tick().unwrap_or(0);
            job.wait_for_tick(killed_at + 10);
            image = job.checkpoint(TIMEOUT);
        }
    }
    let code = job.wait(TIMEOUT);
    assert_eq!(code, reference.code, "exit code after two restarts\n{}", job.diagnostics());
    assert_same_output(&reference.stdout, &job.output(), test);
}

#[test]
fn sysv_objects_left_by_the_killed_run_get_the_checkpoints_state() {
    cycle("ipc-sysv-left", false);
}

#[test]
fn sysv_objects_gone_before_the_restart_are_made_again_with_their_ids() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can choose SysV IDs");
        return;
    }
    cycle("ipc-sysv-gone", true);
}

fn shm_cycle(test: &str, gone: bool) {
    cycle_of("sysv_shm", test, gone, &|image, root, round| {
        let (destroyed, live) = segment_ids(image, root);
        assert_eq!(
            (destroyed.len(), live.len()),
            (1, 2),
            "round {round}: the image holds the job's three segments, one marked destroyed"
        );
        Box::new(move || {
            for id in live {
                // SAFETY: IPC_RMID of the killed job's own segment (left
                // with no attachment by the kill).
                assert_eq!(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) }, 0, "ipcrm -m {id}");
            }
            for id in destroyed {
                // SAFETY: IPC_STAT into a shmid_ds on the stack.
                let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
                // SAFETY: as above.
                let there = unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == 0;
                assert!(!there, "segment {id}, marked destroyed, went with the killed run");
            }
        })
    });
}

#[test]
fn sysv_segments_left_by_the_killed_run_get_the_checkpoints_content() {
    shm_cycle("ipc-shm-left", false);
}

#[test]
fn sysv_segments_gone_before_the_restart_are_made_again_with_their_ids() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can choose SysV IDs");
        return;
    }
    shm_cycle("ipc-shm-gone", true);
}

/// The processes an image says hold undo adjustments, from `--inspect`.
fn undo_holders(image: &Path, cwd: &Path) -> Vec<String> {
    let out = run_ckrun(&[std::ffi::OsStr::new("--inspect"), image.as_os_str()], cwd, TIMEOUT);
    out.stdout.lines().filter(|l| l.contains("undo adjustments of process")).map(|l| l.trim().to_string()).collect()
}

fn undo_cycle(test: &str, gone: bool) {
    cycle_of("sysv_undo", test, gone, &|image, root, round| {
        let ids = sysv_ids(image, root);
        assert_eq!(ids.0.len(), 1, "round {round}: the image holds the job's set");
        let holders = undo_holders(image, root);
        // W1 (#0 +3, #1 -2), W2 (#0 +1, #2 +2: SETVAL zeroed its +4),
        // W3 (#3 +4, from two threads), W1c (#1 +1, none of W1's).
        let mut adjustments: Vec<&str> = holders.iter().map(|l| l.rsplit_once(": ").unwrap().1).collect();
        adjustments.sort_unstable();
        assert_eq!(
            adjustments,
            ["semaphore 0 +1, semaphore 2 +2", "semaphore 0 +3, semaphore 1 -2", "semaphore 1 +1", "semaphore 3 +4"],
            "round {round}: {holders:?}"
        );
        Box::new(move || remove(&ids))
    });
}

#[test]
fn semaphore_undo_adjustments_come_back_with_each_process() {
    undo_cycle("ipc-semundo-left", false);
}

#[test]
fn semaphore_undo_adjustments_come_back_in_sets_made_again() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can choose SysV IDs");
        return;
    }
    undo_cycle("ipc-semundo-gone", true);
}
