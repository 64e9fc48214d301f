//! A checkpoint must not change what the program's calls return (issue 10):
//! blocking calls that the kernel never restarts after a signal handler
//! (poll, select, epoll_wait, SysV IPC, sleeps, pause, sigsuspend,
//! sigtimedwait, sockets with timeouts, sem_timedwait, io_getevents) are
//! resumed by the agent with the time they had left, after a checkpoint
//! and after a restart, while the program's own signals still interrupt
//! them.
//!
//! `examples/eintr.c` spends nearly all its time in those calls and dies
//! on any EINTR or early return it did not cause itself; it also checks
//! that its own SIGUSR1 still makes them fail with EINTR, and that
//! `sigaction`/`signal` report its own handlers. So most checkpoints land
//! inside one of the calls, and the output comparison with a bare run
//! says whether any of them noticed.
//!
//! Needs the product built: `cargo build --workspace` first.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;

use ckrun_suite::{assert_same_output, list_images, Ckrun, ImageName, Program, SignalTarget, TestDir, TIMEOUT};

/// Back-to-back checkpoints of the live program.
const CHECKPOINTS: u32 = 20;

/// Ticks (about 60 ms each, in the calls) for the checkpoint test: far
/// more than 20 checkpoints need, even on a loaded machine.
const LONG_RUN: &str = "150";

/// Ticks to let pass after a checkpoint before the SIGKILL.
const RUN_ON: u64 = 3;

/// Runs `body`; if it panics, prints every stderr file of the work
/// directory first: a restored program writes to its first run's stderr
/// file, where its own "eintr: tick N: CALL: rc = ..." line would be.
fn with_stderr_dump(dir: &TestDir, body: impl FnOnce()) {
    if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(body)) {
        let mut files: Vec<PathBuf> =
            fs::read_dir(&dir.work).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|x| x == "stderr"));
        files.sort();
        for f in files {
            let text = fs::read_to_string(&f).unwrap_or_default();
            let start = text.len().saturating_sub(6000);
            let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
            eprintln!("--- {} ---\n{}", f.display(), &text[start..]);
        }
        panic::resume_unwind(panic);
    }
}

/// The program run bare, which must succeed on its own.
fn reference(prog: &Program, args: &[&str], dir: &TestDir) -> Vec<u8> {
    let run = prog.run_bare(args, &dir.bare);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.code, 0, "bare run of eintr {args:?} failed: {stderr}");
    assert!(stderr.is_empty(), "bare run of eintr {args:?} wrote to stderr: {stderr}");
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(out.lines().last().is_some_and(|l| l.starts_with("done ")), "no done line: {out}");
    run.stdout
}

/// Twenty checkpoints in a row while the program sits in its blocking
/// calls (System V IPC and libaio included), requested from ckrun and
/// from the program in turn, then it runs to the end: the same output as a
/// bare run, exit code 0.
#[test]
fn twenty_checkpoints_in_a_row_change_no_call_result() {
    let test = "eintr-checkpoints";
    let dir = TestDir::new(test);
    let prog = Program::c("eintr");
    let args = [LONG_RUN, "aio"];
    with_stderr_dump(&dir, || {
        let expected = reference(&prog, &args, &dir);
        let mut job = Ckrun::launch(&prog, &args, &dir.work, &dir.img, &[]);
        job.wait_for_tick(2);
        let mut images = Vec::new();
        for n in 1..=CHECKPOINTS {
            // Every other request goes to the program: a signal for its
            // whole process, which any of its threads may take.
            let via = if n % 2 == 0 { SignalTarget::Program } else { SignalTarget::Ckrun };
            let image = job.checkpoint_via(via, TIMEOUT);
            assert_eq!(ImageName::parse(&image).map(|i| i.n), Some(n), "image {}", image.display());
            images.push(image);
        }
        let code = job.wait(TIMEOUT);
        assert_eq!(code, 0, "exit code under checkpoints\n{}", job.diagnostics());
        assert_same_output(&expected, &job.output(), test);
        assert_eq!(list_images(&dir.img), images, "only the requested images");
    });
}

/// Checkpoint, kill -9, restart, twice: every restored thread returns to
/// its interrupted call, which must go on as if nothing happened. (No
/// System V IPC: ckrun does not restore semaphores or message queues.)
#[test]
fn restarts_change_no_call_result() {
    let test = "eintr-restarts";
    let dir = TestDir::new(test);
    let prog = Program::c("eintr");
    let args = ["60", "nosysv"];
    with_stderr_dump(&dir, || {
        let expected = reference(&prog, &args, &dir);

        let mut job = Ckrun::launch(&prog, &args, &dir.work, &dir.img, &[]);
        job.wait_for_tick(5);
        let img1 = job.checkpoint(TIMEOUT);
        let at = job.last_tick().unwrap();
        job.wait_for_tick(at + RUN_ON);
        job.kill9();
        let killed_at = job.last_tick().unwrap();

        let mut job = Ckrun::restart(&img1, &dir.work, &[]);
        // Lines up to `killed_at` are in out.txt already: only a later tick
        // shows the restored program runs.
        job.wait_for_tick(killed_at + RUN_ON);
        let img2 = job.checkpoint(TIMEOUT);
        let at = job.last_tick().unwrap();
        job.wait_for_tick(at + RUN_ON);
        job.kill9();

        let mut job = Ckrun::restart(&img2, &dir.work, &[]);
        let code = job.wait(TIMEOUT);
        assert_eq!(code, 0, "exit code after two restarts\n{}", job.diagnostics());
        assert_same_output(&expected, &job.output(), test);
        assert_eq!(list_images(&dir.img), vec![img1, img2], "only the requested images");
    });
}
