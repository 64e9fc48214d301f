//! SysV IPC comes back as SysV IPC (issue 11): `examples/sysv_ipc.c`, a
//! semaphore set and a message queue shared by two processes, through two
//! rounds of checkpoint -> kill -9 -> restart, once with the objects still
//! there (as the killed run left them: the restart gives them the
//! checkpoint's state in place), once with them gone before each restart
//! (as after a reboot: made again with their IDs).

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

fn cycle(test: &str, gone: bool) {
    let dir = TestDir::new(test);
    let prog = Program::c("sysv_ipc");
    let reference = prog.run_bare(&[], &dir.bare);
    assert_eq!(reference.code, 0, "bare run: {}", String::from_utf8_lossy(&reference.stderr));

    let mut job = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &[]);
    job.wait_for_tick(30);
    let mut image = job.checkpoint(TIMEOUT);
    for round in 1..=2 {
        let ids = sysv_ids(&image, &dir.root);
        assert_eq!((ids.0.len(), ids.1.len()), (1, 1), "round {round}: the image holds the job's set and queue");
        let at = job.last_tick().unwrap();
        job.wait_for_tick(at + RUN_ON);
        job.kill9();
        if gone {
            remove(&ids);
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
