//! Process trees (issue 5): one trigger checkpoints the whole tree below
//! ckrun into one image, and `ckrun --restart` rebuilds it: the same PIDs,
//! parents, process groups and sessions, zombies, pipes between processes
//! (bytes in flight included), shared descriptors and shared memory.
//!
//! The examples check themselves from the inside and print only values
//! that depend on their tick number, so a restored tree must print exactly
//! what a bare run does:
//! - `tree_pipeline.sh` (run by bash through `tree_sh.c`): a loop of
//!   pipelines of external commands, processes coming and going all the
//!   time;
//! - `tree_workers.c`: workers fed through pipes both ways, a zombie
//!   reaped only at the end, a shared anonymous mapping with a
//!   process-shared mutex and atomics, setpgid/setsid children, a SIGCHLD
//!   handler;
//! - `tree_pool.py`: a Python `multiprocessing.Pool(3)` (semaphores in
//!   deleted /dev/shm files, helper threads in the parent);
//! - `tree_signals.c`: processes that SIGUSR2 each other as their own
//!   protocol, which must never be taken for checkpoint requests.
//!
//! From the outside, the tests compare the processes an image holds
//! (`--inspect --json`) with the live tree at the checkpoint, and the
//! restored tree with both.
//!
//! Killing a tree: SIGKILL to the program and to ckrun does not kill the
//! program's children (they are re-parented), and a restart needs every
//! PID of the image free. [`kill_tree`] stops every descendant of ckrun,
//! kills them all, and waits until each PID is gone (not just a zombie):
//! the test process is a child subreaper (the harness makes it one), so
//! orphans come to it and it reaps them by PID.
//!
//! A restored process writes its stderr to the file its first run had,
//! i.e. the stderr file of an earlier ckrun; a failing test therefore
//! prints every stderr file of the work directory.
//!
//! Needs the product built: `cargo build --workspace` first.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::ops::{Deref, DerefMut};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use ckrun_suite::sys::{send_signal, try_reap, SIGKILL, SIGUSR2};
use ckrun_suite::{
    assert_same_files, assert_same_output, complete_lines, examples_src_dir, list_images, run_ckrun, BareRun, Ckrun,
    ImageName, Program, SignalTarget, TestDir, POLL, TIMEOUT,
};

/// `tree_workers` arguments for the same tree without memory shared
/// between its processes: the tests about something else than shared
/// memory use it, so that they fail only for their own reason.
const PRIVATE: [&str; 2] = ["150", "private"];

/// Ticks to let pass after a checkpoint before the kill (see spine.rs).
const RUN_ON: u64 = 5;

const SIGSTOP: i32 = 19;

// ---------------------------------------------------------------------------
// The examples
// ---------------------------------------------------------------------------

/// `examples/tree_pipeline.sh`, run by bash through `tree_sh` (the harness
/// runs compiled examples and Python scripts, not shell scripts).
fn pipeline() -> (Program, Vec<String>) {
    let script = examples_src_dir().join("tree_pipeline.sh");
    assert!(script.is_file(), "missing {}", script.display());
    (Program::c("tree_sh"), vec![script.to_string_lossy().into_owned()])
}

fn args_of(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A bare run that must be clean: nothing on stderr (where the examples
/// write their FAIL messages).
fn reference(prog: &Program, args: &[&str], dir: &Path) -> BareRun {
    let run = prog.run_bare(args, dir);
    assert!(run.stderr.is_empty(), "bare run of {} wrote to stderr: {run:?}", prog.name());
    let last = complete_lines(&run.stdout).last().unwrap_or_default().to_string();
    assert!(last.starts_with("done "), "bare run of {}: last line {last:?}", prog.name());
    run
}

// ---------------------------------------------------------------------------
// Processes seen from the outside
// ---------------------------------------------------------------------------

/// What /proc/PID/stat says about a process's place in the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    state: char,
    ppid: i32,
    pgrp: i32,
    session: i32,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: skip past the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
    })
}

fn proc_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The children of `pid`, over all its threads.
fn children(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return kids };
    for task in tasks.flatten() {
        if let Ok(list) = fs::read_to_string(task.path().join("children")) {
            kids.extend(list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    kids.sort_unstable();
    kids.dedup();
    kids
}

/// Every descendant of `pid` (not `pid` itself), parents first.
fn descendants(pid: i32) -> Vec<i32> {
    let mut out: Vec<i32> = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for c in children(p) {
            if !out.contains(&c) && c != pid {
                out.push(c);
                queue.insert(0, c);
            }
        }
    }
    out
}

/// `root` and its descendants with their /proc state.
fn tree_of(root: i32) -> BTreeMap<i32, Stat> {
    std::iter::once(root).chain(descendants(root)).filter_map(|p| stat(p).map(|s| (p, s))).collect()
}

/// The tree below `root`, read until two readings 20 ms apart agree
/// (processes may be starting or exiting).
fn stable_tree(root: i32) -> BTreeMap<i32, Stat> {
    let mut last = tree_of(root);
    for _ in 0..250 {
        thread::sleep(Duration::from_millis(20));
        let now = tree_of(root);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the tree below {root} keeps changing: {last:?}")
}

/// A process's relations, with ids outside the tree (ckrun's group and
/// session, which a restart may change) all written as `None`. Zombies
/// keep only their parent.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Relations {
    zombie: bool,
    ppid: Option<i32>,
    pgid: Option<i32>,
    sid: Option<i32>,
}

fn relations(tree: &BTreeMap<i32, Stat>) -> BTreeMap<i32, Relations> {
    let inside = |id: i32| tree.contains_key(&id).then_some(id);
    tree.iter()
        .map(|(&pid, s)| {
            let zombie = s.state == 'Z';
            let rel = Relations {
                zombie,
                ppid: inside(s.ppid),
                pgid: if zombie { None } else { inside(s.pgrp) },
                sid: if zombie { None } else { inside(s.session) },
            };
            (pid, rel)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Images seen from the outside
// ---------------------------------------------------------------------------

/// `ckrun --inspect IMAGE --json`, parsed.
fn inspect(image: &Path, cwd: &Path) -> serde_json::Value {
    let out = run_ckrun(&[OsStr::new("--inspect"), image.as_os_str(), OsStr::new("--json")], cwd, TIMEOUT);
    assert_eq!(out.code, 0, "--inspect --json {}: {out:#?}", image.display());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("--inspect --json is not JSON ({e}): {out:#?}"))
}

fn int(v: &serde_json::Value, key: &str) -> i32 {
    v[key].as_i64().unwrap_or_else(|| panic!("no integer {key:?} in {v}")) as i32
}

/// The tree an image holds, as [`relations`] sees a live one: its
/// processes (pid, ppid, pgid, sid) and its zombies (pid, ppid). Also
/// checks that `summary.pids` lists the processes.
fn image_relations(json: &serde_json::Value) -> BTreeMap<i32, Relations> {
    let processes = json["processes"].as_array().unwrap_or_else(|| panic!("no processes in the image: {json:#}"));
    let zombies = json["zombies"].as_array().cloned().unwrap_or_default();
    let mut pids: Vec<i32> = processes.iter().map(|p| int(p, "pid")).collect();
    let summary: Vec<i32> = json["summary"]["pids"]
        .as_array()
        .unwrap_or_else(|| panic!("no summary.pids in the image"))
        .iter()
        .map(|p| p.as_i64().expect("summary.pids holds numbers") as i32)
        .collect();
    assert_eq!(summary, pids, "summary.pids lists the image's processes");
    pids.extend(zombies.iter().map(|z| int(z, "pid")));
    let inside = |id: i32| pids.contains(&id).then_some(id);
    let mut out = BTreeMap::new();
    for p in processes {
        let rel = Relations {
            zombie: false,
            ppid: inside(int(p, "ppid")),
            pgid: inside(int(p, "pgid")),
            sid: inside(int(p, "sid")),
        };
        out.insert(int(p, "pid"), rel);
    }
    for z in &zombies {
        out.insert(int(z, "pid"), Relations { zombie: true, ppid: inside(int(z, "ppid")), pgid: None, sid: None });
    }
    out
}

// ---------------------------------------------------------------------------
// A tree under ckrun
// ---------------------------------------------------------------------------

/// A [`Ckrun`] whose whole tree is killed on drop (the harness's own
/// cleanup kills only the program and ckrun).
struct Tree {
    job: Ckrun,
}

impl Deref for Tree {
    type Target = Ckrun;
    fn deref(&self) -> &Ckrun {
        &self.job
    }
}

impl DerefMut for Tree {
    fn deref_mut(&mut self) -> &mut Ckrun {
        &mut self.job
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        kill_tree_quietly(&mut self.job);
    }
}

impl Tree {
    fn launch(prog: &Program, args: &[&str], dir: &TestDir) -> Tree {
        Tree { job: Ckrun::launch(prog, args, &dir.work, &dir.img, &[]) }
    }

    fn restart(image: &Path, dir: &TestDir, flags: &[&str]) -> Tree {
        Tree { job: Ckrun::restart(image, &dir.work, flags) }
    }

    /// SIGKILL to the whole tree and ckrun; returns once every one of
    /// their PIDs is gone (see [`kill_tree`]).
    fn kill(&mut self) {
        kill_tree(&mut self.job);
    }

    /// Waits for ckrun's `ckrun: restarted ... from IMAGE` line and returns it.
    fn wait_restarted(&mut self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let running = self.job.is_running();
            if let Some(line) = self.job.stderr().lines().find(|l| l.starts_with("ckrun: restarted ")) {
                return line.to_string();
            }
            if !running {
                panic!("ckrun exited without `ckrun: restarted ...`\n{}", self.job.diagnostics());
            }
            if Instant::now() >= deadline {
                panic!("no `ckrun: restarted ...` within {TIMEOUT:?}\n{}", self.job.diagnostics());
            }
            thread::sleep(POLL);
        }
    }

    /// Requests a checkpoint by sending SIGUSR2 to `pid` (any process of
    /// the tree, or ckrun), waits for the new image and ckrun's
    /// `ckrun: checkpoint ...` line naming it, and returns the image.
    fn checkpoint_by_signal(&mut self, pid: i32) -> PathBuf {
        let before = list_images(self.job.imgdir());
        if let Err(e) = send_signal(pid, SIGUSR2) {
            panic!("kill -USR2 {pid}: {e}\n{}", self.job.diagnostics());
        }
        let deadline = Instant::now() + TIMEOUT;
        let image = loop {
            let running = self.job.is_running();
            let new: Vec<PathBuf> =
                list_images(self.job.imgdir()).into_iter().filter(|p| !before.contains(p)).collect();
            if let Some(newest) = new.last() {
                break newest.clone();
            }
            if !running {
                panic!("ckrun exited instead of writing a checkpoint\n{}", self.job.diagnostics());
            }
            if Instant::now() >= deadline {
                panic!("no new image within {TIMEOUT:?} after SIGUSR2 to {pid}\n{}", self.job.diagnostics());
            }
            thread::sleep(POLL);
        };
        let file_name = image.file_name().unwrap().to_string_lossy().into_owned();
        while !self.job.stderr().lines().any(|l| l.starts_with("ckrun: checkpoint") && l.contains(&file_name)) {
            if Instant::now() >= deadline {
                panic!("ckrun did not print `ckrun: checkpoint ... {file_name}`\n{}", self.job.diagnostics());
            }
            thread::sleep(POLL);
        }
        image
    }

    /// The number of `ckrun: checkpoint ...` lines on this ckrun's stderr.
    fn checkpoint_lines(&self) -> usize {
        self.job.stderr().lines().filter(|l| l.starts_with("ckrun: checkpoint")).count()
    }
}

/// Kills every process below ckrun, and ckrun: SIGSTOP to ckrun and to
/// every descendant (re-listed until no new one appears: a stopped process
/// forks no more), then SIGKILL to all, then reaps ckrun through the
/// harness and waits until every PID is gone, reaping the orphans that
/// came to this process (a child subreaper) by their PIDs. Returns the
/// PIDs it killed.
fn kill_tree(job: &mut Ckrun) -> Vec<i32> {
    let killed = stop_and_kill(job);
    job.wait(TIMEOUT);
    let deadline = Instant::now() + TIMEOUT;
    for &pid in &killed {
        while proc_exists(pid) {
            try_reap(pid);
            if Instant::now() >= deadline {
                panic!("pid {pid} still exists after SIGKILL: {:?}\n{}", stat(pid), job.diagnostics());
            }
            thread::sleep(POLL);
        }
    }
    killed
}

/// [`kill_tree`] that never panics, for drops.
fn kill_tree_quietly(job: &mut Ckrun) {
    let Ok(running) = panic::catch_unwind(AssertUnwindSafe(|| job.is_running())) else { return };
    if !running {
        // ckrun was reaped: its pid may be anyone's now.
        return;
    }
    let killed = stop_and_kill(job);
    let deadline = Instant::now() + Duration::from_secs(10);
    for &pid in &killed {
        while proc_exists(pid) && Instant::now() < deadline {
            try_reap(pid);
            thread::sleep(POLL);
        }
    }
}

/// SIGSTOP, then SIGKILL, to ckrun and every descendant of it; returns
/// the descendants. ckrun itself is left to the harness to reap.
fn stop_and_kill(job: &mut Ckrun) -> Vec<i32> {
    let ckrun = job.ckrun_pid();
    if !job.is_running() {
        return Vec::new();
    }
    let _ = send_signal(ckrun, SIGSTOP);
    let mut seen: BTreeSet<i32> = BTreeSet::new();
    loop {
        let new: Vec<i32> = descendants(ckrun).into_iter().filter(|p| !seen.contains(p)).collect();
        if new.is_empty() {
            break;
        }
        for pid in new {
            let _ = send_signal(pid, SIGSTOP);
            seen.insert(pid);
        }
    }
    for &pid in &seen {
        let _ = send_signal(pid, SIGKILL);
    }
    let _ = send_signal(ckrun, SIGKILL);
    seen.into_iter().collect()
}

/// Runs `body`; if it panics, prints every `*.stderr` file of the work
/// directory first (see the module docs), then lets the panic go on.
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

/// Where the checkpoint requests of a cycle go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// ckrun (through the harness).
    Ckrun,
    /// The root of the tree, the program ckrun started (through the harness).
    Root,
    /// A child of the root: on the first run the one with its own session
    /// if there is one, after the restart the one in the root's group.
    Child,
}

/// Whether the tree's shape can be compared with the images'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// The tree keeps the same processes while it runs (after its start
    /// and before its end): the image must hold exactly the live tree, and
    /// the restored tree must be it again (PIDs, parents, groups,
    /// sessions, zombies).
    Stable,
    /// Processes come and go all the time (a shell running pipelines):
    /// only the output counts.
    Changing,
}

/// A child of `root` to send the trigger to (see [`Via::Child`]).
fn pick_child(root: i32, first_run: bool) -> i32 {
    let tree = stable_tree(root);
    let kids: Vec<(i32, Stat)> =
        tree.iter().filter(|(&p, s)| s.ppid == root && s.state != 'Z' && p != root).map(|(&p, &s)| (p, s)).collect();
    let own_session = kids.iter().find(|(p, s)| s.session == *p);
    let root_group = kids.iter().find(|(_, s)| s.pgrp == tree[&root].pgrp);
    let pick = if first_run { own_session.or(root_group) } else { root_group.or(own_session) };
    pick.or(kids.first()).unwrap_or_else(|| panic!("no live child of {root}: {tree:?}")).0
}

/// Sends one checkpoint request `via` and returns the image.
fn checkpoint(job: &mut Tree, via: Via, first_run: bool) -> PathBuf {
    match via {
        Via::Ckrun => job.checkpoint_via(SignalTarget::Ckrun, TIMEOUT),
        Via::Root => job.checkpoint_via(SignalTarget::Program, TIMEOUT),
        Via::Child => {
            let root = job.program_pid();
            let child = pick_child(root, first_run);
            let image = job.checkpoint_by_signal(child);
            let name = ImageName::parse(&image);
            assert_eq!(name.map(|n| n.pid), Some(root), "the image {} names the root {root}", image.display());
            image
        }
    }
}

/// With [`Shape::Stable`]: the image holds exactly the live tree, which
/// is read right after the checkpoint (the tree does not change).
fn assert_image_is_live_tree(image: &Path, root: i32, dir: &TestDir) -> BTreeMap<i32, Relations> {
    let live = relations(&stable_tree(root));
    let saved = image_relations(&inspect(image, &dir.root));
    assert_eq!(saved, live, "the tree in {} (left) vs the live tree at the checkpoint (right)", image.display());
    saved
}

/// With [`Shape::Stable`]: once restarted, the live tree is the image's.
fn assert_restored_tree(job: &mut Tree, expected: &BTreeMap<i32, Relations>, root: i32, line: &str) {
    let restored = relations(&stable_tree(root));
    if restored.is_empty() {
        panic!("the restored tree is gone already (root {root})\n{}", job.diagnostics());
    }
    assert_eq!(&restored, expected, "the restored tree (left) vs the image's (right)");
    let live = expected.values().filter(|r| !r.zombie).count();
    let what = if live == 1 { format!("process {root}") } else { format!("{live} processes") };
    assert!(line.starts_with(&format!("ckrun: restarted {what} from ")), "restart line {line:?}, expected {what}");
}

/// The spine's cycle (see tests/spine.rs) for a tree: bare run; launch,
/// tick 30, checkpoint (image 1), run on, kill the tree; restart from
/// image 1, checkpoint (image 2), run on, kill the tree; restart from
/// image 2 to completion; same output, files and exit code as the bare
/// run, and no images but the two requested (the program's own SIGUSR2s
/// make none).
fn cycle(test: &str, prog: &Program, args: &[&str], via: Via, shape: Shape) {
    let dir = TestDir::new(test);
    with_stderr_dump(&dir, || {
        let reference = reference(prog, args, &dir.bare);

        let mut job = Tree::launch(prog, args, &dir);
        job.wait_for_tick(30);
        let img1 = checkpoint(&mut job, via, true);
        let root = job.program_pid();
        let saved1 = (shape == Shape::Stable).then(|| assert_image_is_live_tree(&img1, root, &dir));
        let at = job.last_tick().unwrap();
        job.wait_for_tick(at + RUN_ON);
        assert_eq!(job.checkpoint_lines(), 1, "one checkpoint requested\n{}", job.diagnostics());
        job.kill();
        let killed_at = job.last_tick().unwrap();

        let mut job = Tree::restart(&img1, &dir, &[]);
        let line = job.wait_restarted();
        assert!(!job.stderr().contains("PID namespace"), "the PIDs were free\n{}", job.diagnostics());
        if let Some(saved) = &saved1 {
            assert_restored_tree(&mut job, saved, root, &line);
        }
        // Lines up to `killed_at` are already in out.txt: only a later
        // tick proves the restored tree runs.
        job.wait_for_tick(killed_at + 10);
        let img2 = checkpoint(&mut job, via, false);
        let saved2 = (shape == Shape::Stable).then(|| assert_image_is_live_tree(&img2, root, &dir));
        let at = job.last_tick().unwrap();
        job.wait_for_tick(at + RUN_ON);
        assert_eq!(job.checkpoint_lines(), 1, "one checkpoint requested\n{}", job.diagnostics());
        job.kill();

        let name1 = ImageName::parse(&img1).unwrap();
        let name2 = ImageName::parse(&img2).unwrap();
        assert_eq!(name2.pid, name1.pid, "a restart must keep the root's pid: {img1:?} then {img2:?}");
        assert_eq!((name1.n, name2.n), (1, 2), "image numbers continue across restarts");

        let mut job = Tree::restart(&img2, &dir, &[]);
        let line = job.wait_restarted();
        // The tree changes at its end: compare it only when far from it.
        if let Some(saved) = &saved2 {
            if job.last_tick().is_some_and(|t| t + 20 < reference_ticks(&reference)) {
                assert_restored_tree(&mut job, saved, root, &line);
            }
        }
        let code = job.wait(TIMEOUT);
        assert_eq!(code, reference.code, "exit code after restart\n{}", job.diagnostics());
        assert_same_output(&reference.stdout, &job.output(), test);
        assert_same_files(&dir.bare, &dir.work);
        assert_eq!(list_images(&dir.img), vec![img1, img2], "only the requested images");
    });
}

/// The last tick of a complete run.
fn reference_ticks(run: &BareRun) -> u64 {
    ckrun_suite::last_tick(&run.stdout).expect("the bare run printed ticks")
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// The examples print the same bytes, leave the same files and exit with
/// the same code in three bare runs (side by side), and print nothing on
/// stderr: otherwise no comparison with a restored run would mean much.
#[test]
fn tree_examples_are_deterministic_when_run_bare() {
    let (sh, sh_args) = pipeline();
    let cases: Vec<(Program, Vec<String>, i32)> = vec![
        (sh, sh_args, 3),
        (Program::c("tree_workers"), vec![], 0),
        (Program::c("tree_workers"), PRIVATE.iter().map(|a| a.to_string()).collect(), 0),
        (Program::python("tree_pool"), vec![], 0),
        (Program::c("tree_signals"), vec![], 0),
    ];
    for (prog, args, code) in cases {
        let args = args_of(&args);
        let name = format!("trees-bare-{}{}", prog.name(), args.len());
        let dirs: Vec<TestDir> = (1..=3).map(|i| TestDir::new(&format!("{name}-{i}"))).collect();
        let runs: Vec<BareRun> = thread::scope(|s| {
            let handles: Vec<_> = dirs.iter().map(|d| s.spawn(|| reference(&prog, &args, &d.bare))).collect();
            handles.into_iter().map(|h| h.join().expect("bare run")).collect()
        });
        for (run, d) in runs.iter().zip(&dirs) {
            assert_eq!(run.code, code, "{}: {run:?}", prog.name());
            assert_same_output(&runs[0].stdout, &run.stdout, prog.name());
            assert_same_files(&dirs[0].bare, &d.bare);
            assert!(run.elapsed < Duration::from_secs(30), "{} too slow: {run:?}", prog.name());
        }
    }
}

/// A shell loop of pipelines of external commands: processes are forked,
/// exec'd and exit all the time, with pipes between them.
#[test]
fn pipeline_checkpoint_kill_restart_twice() {
    let (prog, args) = pipeline();
    cycle("trees-pipeline", &prog, &args_of(&args), Via::Ckrun, Shape::Changing);
}

/// Workers fed through pipes, a zombie, shared memory with a
/// process-shared mutex, setpgid/setsid children; the trigger goes to the
/// root of the tree.
#[test]
fn workers_checkpoint_kill_restart_twice() {
    cycle("trees-workers", &Program::c("tree_workers"), &[], Via::Root, Shape::Stable);
}

/// The same tree with its page mapped MAP_PRIVATE: separates failures
/// about the tree (pipes, zombie, groups, sessions) from failures about
/// memory shared between processes.
#[test]
fn workers_without_shared_memory_checkpoint_kill_restart_twice() {
    cycle("trees-workers-private", &Program::c("tree_workers"), &PRIVATE, Via::Root, Shape::Stable);
}

/// A Python multiprocessing pool.
#[test]
fn python_pool_checkpoint_kill_restart_twice() {
    cycle("trees-pool", &Program::python("tree_pool"), &[], Via::Ckrun, Shape::Stable);
}

/// The trigger sent to a child of the tree (a worker in its own session,
/// then, after the restart, one in the root's group) checkpoints the whole
/// tree: the image holds every process, named after the root. (The tree
/// without shared memory: see [`PRIVATE`].)
#[test]
fn checkpoint_by_signalling_a_child() {
    cycle("trees-child-signal", &Program::c("tree_workers"), &PRIVATE, Via::Child, Shape::Stable);
}

/// Processes of the tree send each other SIGUSR2 (ckrun's trigger) every
/// tick: their handlers count exactly as in a bare run, and those signals
/// make no images; only the two requests from outside do.
#[test]
fn sigusr2_between_processes_of_the_tree_is_not_a_trigger() {
    cycle("trees-own-sigusr2", &Program::c("tree_signals"), &[], Via::Ckrun, Shape::Stable);
}

/// A restart while the original tree still runs, its PIDs taken:
/// `--no-pidns` refuses (exit 5, naming a PID) and leaves the original
/// alone; without it, ckrun says it restarts in a new PID namespace and
/// does. Both trees write the same bytes to the same out.txt, so the
/// original is killed once the restart is confirmed, and the restored tree
/// runs on. It is checkpointed again inside its namespace (same PIDs
/// there), killed, and restarted from that image (its PIDs now free) to
/// completion; the output must be the bare run's. (The tree without
/// shared memory: see [`PRIVATE`].)
#[test]
fn restart_while_the_original_runs_uses_a_new_pid_namespace() {
    let dir = TestDir::new("trees-pidns");
    with_stderr_dump(&dir, || {
        let prog = Program::c("tree_workers");
        let reference = reference(&prog, &PRIVATE, &dir.bare);

        let mut original = Tree::launch(&prog, &PRIVATE, &dir);
        original.wait_for_tick(30);
        let img1 = original.checkpoint(TIMEOUT);
        let root = original.program_pid();
        let pids: Vec<i32> = stable_tree(root).into_keys().collect();

        let refused =
            run_ckrun(&[OsStr::new("--restart"), img1.as_os_str(), OsStr::new("--no-pidns")], &dir.root, TIMEOUT);
        refused.assert_error(5, None);
        assert!(
            pids.iter().any(|p| refused.stderr.contains(&p.to_string())),
            "--no-pidns: stderr names none of the taken PIDs {pids:?}: {refused:#?}"
        );
        // The original went on undisturbed.
        let at = original.last_tick().unwrap();
        original.wait_for_tick(at + RUN_ON);

        let mut restored = Tree::restart(&img1, &dir, &[]);
        let line = restored.wait_restarted();
        assert!(
            restored.stderr().contains("new PID namespace"),
            "ckrun must say it restarts in a new PID namespace\n{}",
            restored.diagnostics()
        );
        assert!(line.starts_with("ckrun: restarted 4 processes from "), "restart line {line:?}");
        original.kill();
        let killed_at = original.last_tick().unwrap();
        restored.wait_for_tick(killed_at + 10);

        // A checkpoint of the tree inside its namespace: the same PIDs there.
        let ckrun = restored.ckrun_pid();
        let img2 = restored.checkpoint_by_signal(ckrun);
        assert_eq!(ImageName::parse(&img2).map(|n| n.pid), Some(root), "image {}", img2.display());
        let json = inspect(&img2, &dir.root);
        let mut saved: Vec<i32> =
            json["processes"].as_array().expect("processes").iter().map(|p| int(p, "pid")).collect();
        saved.extend(json["zombies"].as_array().cloned().unwrap_or_default().iter().map(|z| int(z, "pid")));
        saved.sort_unstable();
        assert_eq!(saved, pids, "the PIDs in the namespace are the original ones");
        let at = restored.last_tick().unwrap();
        restored.wait_for_tick(at + RUN_ON);
        restored.kill();

        let mut last = Tree::restart(&img2, &dir, &[]);
        last.wait_restarted();
        let code = last.wait(TIMEOUT);
        assert_eq!(code, reference.code, "exit code after restart\n{}", last.diagnostics());
        assert_same_output(&reference.stdout, &last.output(), "restart beside the original");
        assert_same_files(&dir.bare, &dir.work);
    });
}

// ---------------------------------------------------------------------------
// The tree is the job; failed checkpoints (issue 10)
// ---------------------------------------------------------------------------

/// Waits until `path` ends with a `done` line (a bare run whose program
/// ends before the rest of its tree), and returns its content.
fn finished_output(path: &Path) -> Vec<u8> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let out = fs::read(path).unwrap_or_default();
        if complete_lines(&out).last().is_some_and(|l| l.starts_with("done ")) {
            return out;
        }
        assert!(Instant::now() < deadline, "{} never got its done line", path.display());
        thread::sleep(POLL);
    }
}

/// A launcher that forks a worker and exits (status 3): ckrun stays while
/// the worker runs, checkpoints and restarts it (twice), and exits with the
/// launcher's status once the worker is gone too.
#[test]
fn the_tree_outlives_the_program_ckrun_started() {
    let dir = TestDir::new("trees-launcher");
    with_stderr_dump(&dir, || {
        let prog = Program::c("tree_launcher");
        let bare = prog.run_bare(&[], &dir.bare);
        assert_eq!(bare.code, 3, "{bare:?}");
        let reference = finished_output(&dir.bare.join(ckrun_suite::OUT_FILE));

        let mut job = Tree::launch(&prog, &[], &dir);
        let root = job.program_pid();
        job.wait_for_tick(20);
        // The launcher is gone (ckrun reaped it); ckrun is still there.
        assert!(!Path::new(&format!("/proc/{root}")).exists(), "the launcher still runs");
        assert!(job.is_running(), "ckrun ended with the launcher\n{}", job.diagnostics());
        let ckrun = job.ckrun_pid();
        let img1 = job.checkpoint_by_signal(ckrun);
        assert_eq!(ImageName::parse(&img1).map(|n| n.pid), Some(root), "named after the launcher");
        let at = job.last_tick().unwrap();
        job.wait_for_tick(at + RUN_ON);
        job.kill();
        let killed_at = job.last_tick().unwrap();

        let mut job = Tree::restart(&img1, &dir, &[]);
        job.wait_restarted();
        job.wait_for_tick(killed_at + 5);
        let ckrun = job.ckrun_pid();
        let img2 = job.checkpoint_by_signal(ckrun);
        let at = job.last_tick().unwrap();
        job.wait_for_tick(at + RUN_ON);
        job.kill();

        let mut job = Tree::restart(&img2, &dir, &[]);
        job.wait_restarted();
        assert_eq!(job.wait(TIMEOUT), 3, "the launcher's status\n{}", job.diagnostics());
        assert_same_output(&reference, &job.output(), "the worker's output");
    });
}

/// A checkpoint that fails at `step` (injected: `CKRUN_TEST_FAIL`) lets
/// every process of the tree go on, leaves no snapshot behind, and the next
/// checkpoint succeeds; the image restarts to the bare run's end.
fn a_failed_checkpoint_harms_nothing(step: &str) {
    let dir = TestDir::new(&format!("trees-fail-{step}"));
    with_stderr_dump(&dir, || {
        let prog = Program::c("tree_workers");
        let reference = reference(&prog, &PRIVATE, &dir.bare);
        let env = format!("CKRUN_TEST_FAIL={step}");
        let mut job = Tree { job: Ckrun::launch_via(&["env", &env], &prog, &PRIVATE, &dir.work, &dir.img, &[]) };
        job.wait_for_tick(20);
        let ckrun = job.ckrun_pid();
        send_signal(ckrun, SIGUSR2).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while !job.stderr().lines().any(|l| l.starts_with("ckrun: checkpoint failed") && l.contains(step)) {
            assert!(Instant::now() < deadline, "no injected failure at {step}\n{}", job.diagnostics());
            thread::sleep(POLL);
        }
        assert!(list_images(&dir.img).is_empty(), "a failed checkpoint left an image");
        // Every process goes on: the workers' results keep coming.
        let at = job.last_tick().unwrap();
        job.wait_for_tick(at + RUN_ON);
        let img = job.checkpoint_by_signal(ckrun);
        let root = job.program_pid();
        let snapshots = |ck: i32| {
            descendants(ck)
                .into_iter()
                .filter(|&p| fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "ckrun-snapshot"))
                .count()
        };
        let deadline = Instant::now() + TIMEOUT;
        while snapshots(ckrun) > 0 {
            assert!(Instant::now() < deadline, "snapshot children left behind\n{}", job.diagnostics());
            thread::sleep(POLL);
        }
        assert_image_is_live_tree(&img, root, &dir);
        let at = job.last_tick().unwrap();
        job.wait_for_tick(at + RUN_ON);
        job.kill();
        let mut job = Tree::restart(&img, &dir, &[]);
        job.wait_restarted();
        assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());
        assert_same_output(&reference.stdout, &job.output(), step);
    });
}

#[test]
fn a_checkpoint_failing_at_creation_harms_nothing() {
    a_failed_checkpoint_harms_nothing("create");
}

#[test]
fn a_checkpoint_failing_with_a_process_still_stopping_harms_nothing() {
    a_failed_checkpoint_harms_nothing("late");
}

#[test]
fn a_checkpoint_failing_once_stopped_harms_nothing() {
    a_failed_checkpoint_harms_nothing("stopped");
}

#[test]
fn a_checkpoint_failing_after_the_fds_harms_nothing() {
    a_failed_checkpoint_harms_nothing("fds");
}

#[test]
fn a_checkpoint_failing_after_the_capture_harms_nothing() {
    a_failed_checkpoint_harms_nothing("captured");
}

#[test]
fn a_checkpoint_failing_after_the_resume_harms_nothing() {
    a_failed_checkpoint_harms_nothing("resumed");
}

#[test]
fn a_checkpoint_failing_after_the_memory_harms_nothing() {
    a_failed_checkpoint_harms_nothing("memory");
}

#[test]
fn a_checkpoint_failing_before_the_image_is_named_harms_nothing() {
    a_failed_checkpoint_harms_nothing("finish");
}

/// 50 checkpoints in a row of a shell loop of pipelines of short-lived
/// external commands: each succeeds (a snapshot child is never taken for a
/// process of the program), and the last one restarts to the bare run's end.
#[test]
fn fifty_checkpoints_in_a_row_of_a_pipeline_loop() {
    let dir = TestDir::new("trees-pipeline-50");
    with_stderr_dump(&dir, || {
        let (prog, args) = pipeline();
        let mut args = args_of(&args);
        args.push("400");
        let reference = reference(&prog, &args, &dir.bare);
        let mut job = Tree::launch(&prog, &args, &dir);
        job.wait_for_tick(10);
        let ckrun = job.ckrun_pid();
        let mut last = None;
        for _ in 0..50 {
            last = Some(job.checkpoint_by_signal(ckrun));
        }
        assert!(!job.stderr().contains("checkpoint failed"), "{}", job.diagnostics());
        job.kill();
        let mut job = Tree::restart(&last.unwrap(), &dir, &[]);
        job.wait_restarted();
        assert_eq!(job.wait(TIMEOUT), reference.code, "{}", job.diagnostics());
        assert_same_output(&reference.stdout, &job.output(), "after 50 checkpoints");
    });
}
