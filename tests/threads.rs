//! Multi-threaded programs (issue 3): every thread is suspended, captured
//! and restored with its own TID.
//!
//! Each program checks itself from the inside (its threads compare their
//! TIDs, TLS, held locks... with what they recorded before) and prints
//! only values that depend on its tick number, so a restored run must
//! print exactly what a bare run does. From the outside, the tests also
//! compare the threads the image holds (`--inspect --json`) with the
//! program's `/proc/PID/task`, before the checkpoint and after a restart:
//! same TIDs, same names.
//!
//! The examples: `threads.c` (pthreads: condition variables, TLS,
//! error-checking and robust mutexes, exiting, cancelled and signalled
//! threads), `blocked.c` (threads blocked in futex, read, poll, accept,
//! nanosleep; a sigaltstack; all signals blocked; a raw `clone()` thread),
//! `omp.c` (OpenMP), `threads.py` (CPython threading), `Workers.java`
//! (JVM) and `stress.c` (16 threads, 50 checkpoints in a row).
//!
//! A restored program writes its stderr to the file its first run had
//! (reopened at the checkpoint's offset), i.e. the stderr file of an
//! earlier ckrun; a failing test therefore prints every stderr file of the
//! work directory, where a program's own "FAIL" message may be.
//!
//! Needs the product built: `cargo build --workspace` first.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::Instant;

use ckrun_suite::{
    assert_same_files, assert_same_output, e2e_tmp_root, examples_bin_dir, examples_src_dir, list_images, run_ckrun,
    Ckrun, ImageName, Program, TestDir, TIMEOUT,
};

/// Ticks to let pass after a checkpoint before the SIGKILL (see spine.rs).
const RUN_ON: u64 = 5;

/// Number of back-to-back checkpoints of the stress test.
const STRESS_CHECKPOINTS: u32 = 50;

// ---------------------------------------------------------------------------
// Threads seen from the outside
// ---------------------------------------------------------------------------

/// TID -> name (`comm`) of every running thread of `pid`: not the ended
/// ones (a main thread that called pthread_exit stays listed as a zombie
/// while the process lives).
fn live_threads(pid: i32) -> BTreeMap<i32, String> {
    let dir = format!("/proc/{pid}/task");
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir}: {e}"));
    let mut threads = BTreeMap::new();
    for entry in entries {
        let name = entry.expect("task entry").file_name();
        let Some(tid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        // A thread may exit between the listing and these reads.
        if thread_state(pid, tid).is_some_and(|s| s != 'Z' && s != 'X') {
            if let Ok(comm) = fs::read_to_string(format!("{dir}/{tid}/comm")) {
                threads.insert(tid, comm.trim_end_matches('\n').to_string());
            }
        }
    }
    threads
}

/// The state letter of thread `tid` of `pid` (R, S, D, Z...), if it exists.
fn thread_state(pid: i32, tid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// TID -> name of every thread recorded in `image`, from `--inspect --json`.
fn image_threads(image: &Path, cwd: &Path) -> BTreeMap<i32, String> {
    let out = run_ckrun(&[OsStr::new("--inspect"), image.as_os_str(), OsStr::new("--json")], cwd, TIMEOUT);
    assert_eq!(out.code, 0, "--inspect --json {}: {out:#?}", image.display());
    let json: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("--inspect --json is not JSON ({e}): {out:#?}"));
    let processes = json["processes"].as_array().unwrap_or_else(|| panic!("no processes in {json:#}"));
    assert_eq!(
        processes.len(),
        1,
        "one process expected in {} (zombies recorded: {})",
        image.display(),
        json.get("zombies").unwrap_or(&serde_json::Value::Null)
    );
    let threads = processes[0]["threads"].as_array().unwrap_or_else(|| panic!("no threads in {json:#}"));
    threads
        .iter()
        .map(|t| {
            let tid = t["tid"].as_i64().unwrap_or_else(|| panic!("thread without tid: {t}")) as i32;
            (tid, comm_of(&t["comm"]))
        })
        .collect()
}

/// A thread name from the image: a string, or the kernel's 16 bytes
/// (NUL-padded) as an array of numbers.
fn comm_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(bytes) => {
            let bytes: Vec<u8> =
                bytes.iter().map_while(|b| b.as_u64()).map(|b| b as u8).take_while(|&b| b != 0).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        other => panic!("unexpected thread name in the image: {other}"),
    }
}

/// The threads of the running program, read twice around a short pause
/// until two readings agree (threads may be starting or exiting).
fn stable_threads(pid: i32) -> BTreeMap<i32, String> {
    let mut last = live_threads(pid);
    for _ in 0..100 {
        thread::sleep(std::time::Duration::from_millis(20));
        let now = live_threads(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the threads of {pid} keep changing: {last:?}")
}

/// Every thread of `image` (those whose name passes `lasting`) runs again
/// in the restored process `pid`, with its TID and its name.
fn assert_threads_restored(image: &Path, pid: i32, cwd: &Path, lasting: impl Fn(&str) -> bool) {
    let mut saved = image_threads(image, cwd);
    saved.retain(|_, name| lasting(name));
    let live = live_threads(pid);
    let missing: Vec<_> = saved.iter().filter(|(tid, _)| !live.contains_key(tid)).collect();
    assert!(
        missing.is_empty(),
        "threads of {} missing after the restart (TID, name): {missing:?}\nsaved: {saved:?}\nrunning: {live:?}",
        image.display()
    );
    for (tid, name) in &saved {
        assert_eq!(&live[tid], name, "name of thread {tid} after the restart (saved: {saved:?}, running: {live:?})");
    }
    // A main thread that had ended before the checkpoint stays ended.
    if !saved.contains_key(&pid) {
        assert_eq!(
            thread_state(pid, pid),
            Some('Z'),
            "the main thread had ended at the checkpoint, yet runs after the restart"
        );
    }
}

// ---------------------------------------------------------------------------
// Failure reports
// ---------------------------------------------------------------------------

/// Runs `body`; if it panics, prints every `*.stderr` file of `dir.work`
/// first (see the module docs), then lets the panic go on.
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

// ---------------------------------------------------------------------------
// The cycle
// ---------------------------------------------------------------------------

/// What the cycle checks from the outside besides the output.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ThreadCheck {
    /// The image's threads equal the program's stable thread set at the
    /// checkpoint, and all of them run again after each restart.
    Exact,
    /// The runtime starts and stops threads on its own (the JVM's compiler
    /// threads come and go): only the program's own checks count.
    ProgramOnly,
}

/// The spine's cycle (see tests/spine.rs), for a multi-threaded program:
/// bare run; launch, tick 30, checkpoint (image 1), run on, kill -9;
/// restart from image 1, checkpoint (image 2), run on, kill -9; restart
/// from image 2 to completion; same output, files and exit code as the bare
/// run. `flags` go to the launch (restarts keep the image's settings).
/// With [`ThreadCheck::Exact`], also compares the threads of each
/// image with those of the running program, before and after restarts.
fn cycle(test: &str, prog: &Program, args: &[&str], flags: &[&str], check: ThreadCheck) {
    let dir = TestDir::new(test);
    with_stderr_dump(&dir, || {
        let reference = prog.run_bare(args, &dir.bare);
        assert!(
            reference.stderr.is_empty() && reference.code == 0,
            "bare run of {} failed: code {}, stderr:\n{}",
            prog.name(),
            reference.code,
            String::from_utf8_lossy(&reference.stderr)
        );

        let mut job = Ckrun::launch(prog, args, &dir.work, &dir.img, flags);
        job.wait_for_tick(30);
        let pid = job.program_pid();
        let before = (check == ThreadCheck::Exact).then(|| stable_threads(pid));
        let img1 = job.checkpoint(TIMEOUT);
        if let Some(before) = &before {
            let saved = image_threads(&img1, &dir.root);
            assert_eq!(&saved, before, "threads in {} vs. the program's before the checkpoint", img1.display());
            assert_eq!(&live_threads(pid), before, "the checkpoint changed the program's threads");
        }
        let at = job.last_tick().unwrap();
        job.wait_for_tick(at + RUN_ON);
        job.kill9();
        let killed_at = job.last_tick().unwrap();

        let mut job = Ckrun::restart(&img1, &dir.work, &[]);
        assert_eq!(job.program_pid(), pid, "a restart must keep the pid");
        job.wait_for_tick(killed_at + 1);
        if check == ThreadCheck::Exact {
            assert_threads_restored(&img1, pid, &dir.root, |_| true);
        }
        job.wait_for_tick(killed_at + 10);
        let img2 = job.checkpoint(TIMEOUT);
        let at = job.last_tick().unwrap();
        job.wait_for_tick(at + RUN_ON);
        job.kill9();
        assert_eq!(ImageName::parse(&img2).unwrap().n, 2, "image numbers continue across restarts");

        let mut job = Ckrun::restart(&img2, &dir.work, &[]);
        if check == ThreadCheck::Exact {
            let killed_at = job.last_tick().unwrap();
            job.wait_for_tick(killed_at + 1);
            assert_threads_restored(&img2, pid, &dir.root, |_| true);
        }
        let code = job.wait(TIMEOUT);
        assert_eq!(code, reference.code, "exit code after the restart\n{}", job.diagnostics());
        assert_same_output(&reference.stdout, &job.output(), test);
        assert_same_files(&dir.bare, &dir.work);
        // The programs send themselves SIGUSR2 (ckrun's trigger): no image
        // may come of it.
        assert_eq!(list_images(&dir.img), vec![img1, img2], "only the requested images");
    });
}

// ---------------------------------------------------------------------------
// The examples, one test each
// ---------------------------------------------------------------------------

/// pthreads: turn-taking on a condition variable, TLS, an error-checking
/// mutex held across checkpoints, robust mutexes (one held across ticks,
/// one whose owner exits after the restart: EOWNERDEAD needs the restored
/// robust list), a thread that exited before the checkpoint and is joined
/// after the restart, a reader blocked on a pipe, pthread_kill and
/// pthread_cancel after the restart, thread names.
#[test]
fn pthreads_checkpoint_kill_restart_twice() {
    cycle("threads-pthreads", &Program::c("threads"), &[], &[], ThreadCheck::Exact);
}

/// The same without the pipe-reading thread, so that a problem with pipes
/// (fd restoration) and one with threads tell apart.
#[test]
fn pthreads_without_pipe_checkpoint_kill_restart_twice() {
    cycle("threads-pthreads-nopipe", &Program::c("threads"), &["nopipe"], &[], ThreadCheck::Exact);
}

/// The same with `--no-fork`: the threads stay parked while ckrun copies
/// the memory of the process itself (no copy-on-write snapshot).
#[test]
fn pthreads_no_fork_checkpoint_kill_restart_twice() {
    cycle("threads-pthreads-no-fork", &Program::c("threads"), &[], &["--no-fork"], ThreadCheck::Exact);
}

/// The same, run by a "ticker" thread after the main thread has ended with
/// pthread_exit(): another thread must lead the checkpoint, and the
/// restored process must have an ended main thread again.
#[test]
fn pthreads_after_main_thread_exit_checkpoint_kill_restart_twice() {
    cycle("threads-pthreads-mainexit", &Program::c("threads"), &["mainexit"], &[], ThreadCheck::Exact);
}

/// Threads blocked in futex, read, poll, accept and nanosleep, one with a
/// sigaltstack, one with every signal blocked (and a pending SIGTERM), one
/// made with a raw clone().
#[test]
fn blocked_threads_checkpoint_kill_restart_twice() {
    cycle("threads-blocked", &Program::c("blocked"), &[], &[], ThreadCheck::Exact);
}

/// The same without the threads blocked on fds (pipes, a listening unix
/// socket), which need ckrun to restore those fds.
#[test]
fn blocked_threads_without_fds_checkpoint_kill_restart_twice() {
    cycle("threads-blocked-nofd", &Program::c("blocked"), &["nofd"], &[], ThreadCheck::Exact);
}

/// An OpenMP program with 4 threads (set from argv: the harness passes no
/// environment, so no OMP_NUM_THREADS).
#[test]
fn openmp_checkpoint_kill_restart_twice() {
    cycle("threads-omp", &Program::c("omp"), &["4"], &[], ThreadCheck::Exact);
}

/// CPython threads with a Condition, Queues, an Event and a Lock.
#[test]
fn python_threads_checkpoint_kill_restart_twice() {
    cycle("threads-python", &Program::python("threads"), &[], &[], ThreadCheck::Exact);
}

/// A JVM running threads with synchronized/wait/notifyAll and
/// java.util.concurrent, besides its own dozen. Plain `java`, no extra
/// flags: none were needed (class data sharing, the default GC, the JIT
/// and the JVM's perf-data file in /tmp all survive the cycle).
#[test]
fn java_threads_checkpoint_kill_restart_twice() {
    java_cycle("threads-java", &[]);
}

/// The same with JFR sampling every 1 ms. HotSpot installs a handler for
/// SIGUSR2, ckrun's default trigger, as its suspend/resume signal (SR
/// signal, unless `_JAVA_SR_SIGNUM` says otherwise), which JFR's sampler
/// uses all the time: it sends SIGUSR2 to a thread, which suspends itself in
/// its handler (sigsuspend) until a second SIGUSR2 resumes it (strace of a
/// bare run: ~450 `tgkill(..., SIGUSR2)`). ckrun's agent keeps the JVM's
/// handler virtual and must hand it every SIGUSR2 the JVM sends itself,
/// none of which may become a checkpoint; a checkpoint may also find a
/// thread suspended by the sampler. (-Xlog:jfr+startup=error keeps JFR's
/// start-up message, which holds the pid and a time, off stdout.)
#[test]
fn java_threads_with_jfr_sampling_checkpoint_kill_restart_twice() {
    java_cycle(
        "threads-java-jfr",
        &[
            "-XX:StartFlightRecording:disk=false,settings=profile,jdk.ExecutionSample#period=1ms",
            "-Xlog:jfr+startup=error",
        ],
    );
}

/// [`cycle`] for `examples/Workers.java`, with `jvm_flags` before the class.
fn java_cycle(test: &str, jvm_flags: &[&str]) {
    let Some((prog, classes)) = java_program(&format!("{test}-classes")) else {
        return;
    };
    let cp = classes.to_str().expect("UTF-8 class path");
    let mut args = jvm_flags.to_vec();
    args.extend(["-cp", cp, "Workers"]);
    cycle(test, &prog, &args, &[], ThreadCheck::ProgramOnly);
    let _ = fs::remove_dir_all(&classes);
}

/// 16 threads moving money between accounts under locks, checkpointed 50
/// times in a row while they run, killed, and restarted from the last
/// image: the run completes with its own consistency checks passing and
/// prints what a bare run prints.
#[test]
fn stress_sixteen_threads_fifty_checkpoints() {
    let test = "threads-stress";
    let dir = TestDir::new(test);
    let prog = Program::c("stress");
    with_stderr_dump(&dir, || {
        let reference = prog.run_bare(&[], &dir.bare);
        assert_eq!(reference.code, 0, "bare run failed: {}", String::from_utf8_lossy(&reference.stderr));

        let mut job = Ckrun::launch(&prog, &[], &dir.work, &dir.img, &[]);
        job.wait_for_tick(10);
        let pid = job.program_pid();
        let first_tick = job.last_tick().unwrap();
        let started = Instant::now();
        let mut images = Vec::new();
        for n in 1..=STRESS_CHECKPOINTS {
            let image = job.checkpoint(TIMEOUT);
            assert_eq!(ImageName::parse(&image).map(|i| i.n), Some(n), "image {}", image.display());
            images.push(image);
        }
        let elapsed = started.elapsed();
        let last_tick = job.last_tick().unwrap();
        eprintln!(
            "{test}: {STRESS_CHECKPOINTS} checkpoints in {elapsed:?} ({:?} each), ticks {first_tick}..{last_tick}",
            elapsed / STRESS_CHECKPOINTS
        );
        assert!(last_tick > first_tick, "the program made no progress during the checkpoints");
        let last = images.last().unwrap().clone();
        let saved = image_threads(&last, &dir.root);
        // A short-lived thread is named "spawner" (its creator's name) until
        // it renames itself "ephemeral": count the workers and main only.
        let workers = saved.values().filter(|name| lasting(name)).count();
        assert_eq!(workers, 17, "main and the 16 workers in {}: {saved:?}", last.display());
        assert!(saved.values().any(|n| n == "spawner"), "no spawner in {}: {saved:?}", last.display());
        job.wait_for_tick(last_tick + RUN_ON);
        job.kill9();

        let mut job = Ckrun::restart(&last, &dir.work, &[]);
        let killed_at = job.last_tick().unwrap();
        job.wait_for_tick(killed_at + 1);
        // The short-lived threads of the image may have ended since.
        assert_threads_restored(&last, pid, &dir.root, lasting);
        let code = job.wait(TIMEOUT);
        assert_eq!(code, reference.code, "exit code after the restart\n{}", job.diagnostics());
        assert_same_output(&reference.stdout, &job.output(), test);
        assert_eq!(list_images(&dir.img), images, "only the requested images");
    });
}

/// A multi-threaded event loop (epoll over a timerfd, an eventfd and a
/// pipe fed by 4 worker threads, `examples/event_loop.c`, which treats
/// every EINTR as fatal) through 20 rounds of checkpoint -> kill -9 ->
/// restart from the image just taken: each restart must make progress
/// (a tick past the one it was killed at) within the harness's timeout,
/// and the last run ends with what a bare run prints.
#[test]
fn event_loop_twenty_rounds_of_checkpoint_kill_restart() {
    const ROUNDS: u32 = 20;
    let test = "threads-event-loop";
    let dir = TestDir::new(test);
    let prog = Program::c("event_loop");
    with_stderr_dump(&dir, || {
        let reference = prog.run_bare(&["800"], &dir.bare);
        assert_eq!(reference.code, 0, "bare run failed: {}", String::from_utf8_lossy(&reference.stderr));

        let mut job = Ckrun::launch(&prog, &["800"], &dir.work, &dir.img, &[]);
        job.wait_for_tick(5);
        for round in 1..=ROUNDS {
            let image = job.checkpoint(TIMEOUT);
            let after = job.last_tick().unwrap();
            job.wait_for_tick(after + 2);
            job.kill9();
            job = Ckrun::restart(&image, &dir.work, &[]);
            let killed_at = job.last_tick().unwrap_or(0);
            // Progress: the restored loop ticks on.
            job.wait_for_tick(killed_at + 1);
            eprintln!("{test}: round {round}: killed at tick {killed_at}, restarted from {}", image.display());
        }
        let code = job.wait(TIMEOUT);
        assert_eq!(code, reference.code, "exit code after {ROUNDS} restarts\n{}", job.diagnostics());
        assert_same_output(&reference.stdout, &job.output(), test);
    });
}

/// The threads of `examples/stress.c` that live as long as the program:
/// main (named after the program) and the workers.
fn lasting(name: &str) -> bool {
    name == "stress" || name.starts_with("worker-")
}

/// The examples must be deterministic on their own, or no comparison
/// above would mean anything: two bare runs side by side print the same
/// bytes, exit 0 with an empty stderr, and end with a `done` line.
#[test]
fn examples_are_deterministic() {
    let mut progs: Vec<(Program, Vec<&str>)> = vec![
        (Program::c("threads"), vec![]),
        (Program::c("threads"), vec!["mainexit"]),
        (Program::c("blocked"), vec![]),
        (Program::c("omp"), vec!["4"]),
        (Program::c("stress"), vec![]),
        (Program::c("event_loop"), vec!["300"]),
        (Program::python("threads"), vec![]),
    ];
    let java = java_program("threads-determinism-java-classes");
    if let Some((prog, classes)) = &java {
        progs.push((prog.clone(), vec!["-cp", classes.to_str().unwrap(), "Workers"]));
    }
    for (prog, args) in &progs {
        let first = TestDir::new(&format!("threads-selftest-{}-1", prog.name()));
        let second = TestDir::new(&format!("threads-selftest-{}-2", prog.name()));
        let (a, b) = thread::scope(|s| {
            let a = s.spawn(|| prog.run_bare(args, &first.bare));
            let b = prog.run_bare(args, &second.bare);
            (a.join().expect("first run"), b)
        });
        for run in [&a, &b] {
            let what = format!("{} {args:?}", prog.name());
            assert_eq!(run.code, 0, "{what}: {}", String::from_utf8_lossy(&run.stderr));
            assert!(run.stderr.is_empty(), "{what}: stderr {}", String::from_utf8_lossy(&run.stderr));
            let text = String::from_utf8_lossy(&run.stdout);
            assert!(text.lines().last().is_some_and(|l| l.starts_with("done ")), "{what}: no done line");
        }
        assert_same_output(&a.stdout, &b.stdout, prog.name());
    }
    if let Some((_, classes)) = java {
        let _ = fs::remove_dir_all(classes);
    }
}

// ---------------------------------------------------------------------------
// Java
// ---------------------------------------------------------------------------

/// `java` as a [`Program`] and the directory of the compiled
/// `examples/Workers.java`, or `None` (with a message) without a JDK.
///
/// The harness only makes programs of compiled C examples and Python
/// scripts, so the JVM is offered to it as a C example: a symlink
/// `$OUT_DIR/examples/java` to the real `java` (the launcher finds its JDK
/// through /proc/self/exe, which names the real file). The link is made
/// once per test process, atomically (rename), so that test processes
/// running at once never see it half-made.
fn java_program(classes_name: &str) -> Option<(Program, PathBuf)> {
    static LINKED: OnceLock<()> = OnceLock::new();
    let (Some(java), Some(javac)) = (find_in_path("java"), find_in_path("javac")) else {
        eprintln!("skipped: no java/javac on PATH (install a JDK to run the Java test)");
        return None;
    };
    LINKED.get_or_init(|| {
        let java = fs::canonicalize(&java).unwrap_or_else(|e| panic!("resolve {}: {e}", java.display()));
        let link = examples_bin_dir().join("java");
        if fs::read_link(&link).ok().as_deref() != Some(java.as_path()) {
            let tmp = examples_bin_dir().join(format!(".java-link-{}", std::process::id()));
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&java, &tmp).unwrap_or_else(|e| panic!("symlink {}: {e}", tmp.display()));
            fs::rename(&tmp, &link).unwrap_or_else(|e| panic!("rename to {}: {e}", link.display()));
        }
    });

    let classes = e2e_tmp_root().join(format!("{classes_name}-{}", std::process::id()));
    fs::create_dir_all(&classes).unwrap_or_else(|e| panic!("create {}: {e}", classes.display()));
    let source = examples_src_dir().join("Workers.java");
    let out = Command::new(&javac)
        .arg("-d")
        .arg(&classes)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", javac.display()));
    assert!(out.status.success(), "javac {} failed: {}", source.display(), String::from_utf8_lossy(&out.stderr));
    Some((Program::c("java"), classes))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
